//! The DCIM's maths against closed forms and enumeration: approximation
//! (2) on a tiny binary net, Remark 2 (one layer under (21) is an RBM's
//! pseudo-likelihood), and the transposed-weight tying after an update.

use burn::tensor::Device;
use mrbm_dcim::model::{
    host, image_nll, one_hot, scalar, tensor, total, Act, Dcim, LayerDef, Objective, Spec, Trainer,
    Weight,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn dev() -> Device {
    Device::flex()
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A dense model with the given host weights ([in, out] row-major) and biases.
fn dense_model(sizes: &[usize], ws: &[Vec<f32>], cs: &[Vec<f32>]) -> Dcim {
    let spec = Spec {
        input: [sizes[0], 1, 1],
        layers: sizes[1..].iter().map(|&n| LayerDef::Dense(n)).collect(),
    };
    let mut m = Dcim::init(spec, 0, &dev()).unwrap();
    for (k, w) in ws.iter().enumerate() {
        m.weights[k] = Weight::Dense(tensor(w.clone(), [sizes[k], sizes[k + 1]], &dev()));
    }
    for (k, c) in cs.iter().enumerate() {
        m.biases[k] = tensor(c.clone(), [c.len()], &dev());
    }
    m
}

fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * scale) as f32)
        .collect()
}

/// p(y | x0) of the 3-3-K net: exactly (sum over the 2^3 states of x1) and
/// by approximation (2) written as its own formula (sums over each x1_i's
/// two values, weighted by p(x1_i)).
fn exact_and_formula(
    x0: &[f64],
    w1: &[f32],
    c1: &[f32],
    w2: &[f32],
    c2: &[f32],
    k: usize,
) -> (Vec<f64>, Vec<f64>) {
    let n1 = c1.len();
    let p1: Vec<f64> = (0..n1)
        .map(|i| {
            sig((0..x0.len())
                .map(|j| x0[j] * w1[j * n1 + i] as f64)
                .sum::<f64>()
                + c1[i] as f64)
        })
        .collect();
    let softmax = |a: Vec<f64>| {
        let m = a.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = a.iter().map(|v| (v - m).exp()).sum();
        a.iter().map(|v| (v - m).exp() / z).collect::<Vec<f64>>()
    };
    let mut exact = vec![0.0; k];
    for s in 0..(1usize << n1) {
        let x1: Vec<f64> = (0..n1).map(|i| ((s >> i) & 1) as f64).collect();
        let prob: f64 = (0..n1)
            .map(|i| if x1[i] > 0.5 { p1[i] } else { 1.0 - p1[i] })
            .product();
        let a: Vec<f64> = (0..k)
            .map(|y| (0..n1).map(|i| x1[i] * w2[i * k + y] as f64).sum::<f64>() + c2[y] as f64)
            .collect();
        for (e, p) in exact.iter_mut().zip(softmax(a)) {
            *e += prob * p;
        }
    }
    // (2): p(y) ∝ exp Σ_i Σ_{x_i} p(x_i) u_i(x_i, y), u_i(x_i, y) = x_i W_iy + c_y / n.
    let a: Vec<f64> = (0..k)
        .map(|y| {
            (0..n1)
                .map(|i| {
                    [0.0, 1.0]
                        .iter()
                        .map(|&xi| {
                            let p = if xi > 0.5 { p1[i] } else { 1.0 - p1[i] };
                            p * (xi * w2[i * k + y] as f64 + c2[y] as f64 / n1 as f64)
                        })
                        .sum::<f64>()
                })
                .sum()
        })
        .collect();
    (exact, softmax(a))
}

#[test]
fn forward_pass_is_approximation_2_and_close_to_exact_enumeration() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (k, n0, n1) = (3usize, 3usize, 3usize);
    let w1 = randn(&mut rng, n0 * n1, 1.5);
    let c1 = randn(&mut rng, n1, 0.5);
    let w2_unit = randn(&mut rng, n1 * k, 1.0);
    let c2 = randn(&mut rng, k, 0.5);
    let x0 = [1.0, 0.0, 1.0];
    let mut errs = Vec::new();
    for scale in [0.8f32, 0.4, 0.2] {
        let w2: Vec<f32> = w2_unit.iter().map(|v| v * scale).collect();
        let m = dense_model(
            &[n0, n1, k],
            &[w1.clone(), w2.clone()],
            &[vec![0.0; n0], c1.clone(), c2.clone()],
        );
        let x = tensor(
            x0.iter().map(|&v| v as f32).collect(),
            [1, n0, 1, 1],
            &dev(),
        );
        let ours: Vec<f64> = host(&m.predict(x)).iter().map(|&v| v as f64).collect();
        let (exact, formula) = exact_and_formula(&x0, &w1, &c1, &w2, &c2, k);
        for y in 0..k {
            // The network computes (2) itself ...
            assert!(
                (ours[y] - formula[y]).abs() < 1e-6,
                "y={y}: {} vs (2) {}",
                ours[y],
                formula[y]
            );
        }
        // ... which approximates the exact marginal, not equals it.
        let err: f64 = (0..k).map(|y| (formula[y] - exact[y]).abs()).sum();
        assert!(
            err > 1e-7,
            "approximation (2) should differ from the exact marginal"
        );
        errs.push(err);
    }
    // First-order Taylor: the error is second order in the top weights.
    for pair in errs.windows(2) {
        let r = pair[0] / pair[1];
        assert!(
            (2.8..6.0).contains(&r),
            "halving the weights cut the error by {r}, expected about 4 ({errs:?})"
        );
    }
}

#[test]
fn remark_2_one_layer_under_21_is_the_rbm_pseudo_likelihood() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (nv, k, batch) = (6usize, 4usize, 5usize);
    let w = randn(&mut rng, nv * k, 1.0);
    let c0 = randn(&mut rng, nv, 0.5);
    let c1 = randn(&mut rng, k, 0.5);
    let m = dense_model(
        &[nv, k],
        std::slice::from_ref(&w),
        &[c0.clone(), c1.clone()],
    );
    let v: Vec<f32> = (0..batch * nv)
        .map(|_| (rng.random::<f64>() < 0.5) as u8 as f32)
        .collect();
    let ys: Vec<usize> = (0..batch).map(|i| (i * 3 + 1) % k).collect();
    let x0 = tensor(v.clone(), [batch, nv, 1, 1], &dev());
    let y = one_hot(&ys, k, &dev());
    let terms = m.terms(x0, y, Objective::Generative, &mut |a| a);
    // reverse_weight = number of pixels: the sum over pixels, the paper's (21).
    let ours = scalar(&total(&terms, nv as f64, nv));
    // The RBM with a K-valued (softmax) hidden unit and binary visibles:
    // E(v, y) = -(c0.v + c1_y + Σ_i v_i W_iy). Its pseudo-likelihood of a
    // fully observed (v, y): log p(y | v) + Σ_i log p(v_i | v_-i, y), each
    // conditional from the energies of the states it compares.
    let energy = |vv: &[f64], yy: usize| -> f64 {
        -((0..nv)
            .map(|i| vv[i] * (c0[i] as f64 + w[i * k + yy] as f64))
            .sum::<f64>()
            + c1[yy] as f64)
    };
    let mut pl = 0.0;
    for b in 0..batch {
        let vv: Vec<f64> = v[b * nv..(b + 1) * nv].iter().map(|&x| x as f64).collect();
        let e: Vec<f64> = (0..k).map(|yy| energy(&vv, yy)).collect();
        let lz = e.iter().map(|x| (-x).exp()).sum::<f64>().ln();
        pl += -e[ys[b]] - lz;
        for i in 0..nv {
            let mut f = vv.clone();
            f[i] = 1.0 - f[i];
            let (e0, e1) = (energy(&vv, ys[b]), energy(&f, ys[b]));
            pl += -e0 - ((-e0).exp() + (-e1).exp()).ln();
        }
    }
    let neg_pl = -pl / batch as f64;
    assert!(
        (ours - neg_pl).abs() < 1e-4 * neg_pl.abs().max(1.0),
        "(21) loss {ours} vs -pseudo-likelihood {neg_pl}"
    );
}

#[test]
fn a_gradient_step_keeps_q_the_transpose_of_p() {
    let spec = Spec {
        input: [1, 6, 6],
        layers: vec![
            LayerDef::Conv([3, 1, 2]),
            LayerDef::Conv([2, 2, 2]),
            LayerDef::Dense(5),
            LayerDef::Dense(3),
        ],
    };
    let m = Dcim::init(spec, 9, &dev()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x: Vec<u8> = (0..4 * 36).map(|_| rng.random::<u8>()).collect();
    let x0 = mrbm_dcim::model::images_tensor(&x, 4, [1, 6, 6], &dev());
    let y = one_hot(&[0, 1, 2, 1], 3, &dev());
    let mut t = Trainer::new(m.clone(), Objective::Generative, 0.05, 1.0);
    for _ in 0..3 {
        t.step(x0.clone(), y.clone(), &mut rng).unwrap();
    }
    let m2 = &t.model;
    // The step moved the weights ...
    let (Weight::Dense(w_old), Weight::Dense(w_new)) = (&m.weights[3], &m2.weights[3]) else {
        panic!("dense top")
    };
    let moved: f32 = host(w_old)
        .iter()
        .zip(host(w_new))
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(moved > 1e-3);
    // ... and q still reads them transposed: q's pre-activation of x^(d-1)
    // from a class is the class's row of W (stored [in, out]: its column)
    // plus the shared bias c^(d-1), and p's pre-activation of the classes
    // from x^(d-1) is x W + c^d.
    let w = host(w_new);
    let (n_in, k) = (5usize, 3usize);
    let c3 = host(&m2.biases[3]);
    let q = host(&m2.pre_down(4, Act::Flat(one_hot(&[2], 3, &dev()))).flat());
    for i in 0..n_in {
        assert!((q[i] - (w[i * k + 2] + c3[i])).abs() < 1e-6);
    }
    let h: Vec<f32> = vec![0.3, -1.0, 0.5, 2.0, 0.1];
    let p = host(
        &m2.pre_up(4, Act::Flat(tensor(h.clone(), [1, 5], &dev())))
            .flat(),
    );
    let c4 = host(&m2.biases[4]);
    for yy in 0..k {
        let want: f32 = (0..n_in).map(|i| h[i] * w[i * k + yy]).sum::<f32>() + c4[yy];
        assert!((p[yy] - want).abs() < 1e-5);
    }
    // The strided conv (layer 2, 4x4 -> 2x2, 2 channels): the reverse map
    // is the adjoint of the forward one with the updated kernel,
    // <conv(a), z> = <a, convT(z)> with the biases set apart.
    let mut zb = m2.clone();
    for b in zb.biases.iter_mut() {
        *b = b.clone().zeros_like();
    }
    let a = tensor(randn(&mut rng, 2 * 4 * 4, 1.0), [1, 2, 4, 4], &dev());
    let z = tensor(randn(&mut rng, 2 * 2 * 2, 1.0), [1, 2, 2, 2], &dev());
    let fwd = zb.pre_up(2, Act::Map(a.clone())).map(zb.shapes[2]);
    let back = zb.pre_down(2, Act::Map(z.clone())).map(zb.shapes[1]);
    let lhs: f32 = host(&(fwd * z).sum()).iter().sum();
    let rhs: f32 = host(&(a * back).sum()).iter().sum();
    assert!(
        (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
        "{lhs} vs {rhs}"
    );
    // Both directions' gradients land in the one tensor: under (21) the
    // top weight's gradient is that of (16) plus the reverse term's.
    let g16 = Trainer::new(m2.clone(), Objective::Discriminative, 0.05, 1.0)
        .gradients(x0.clone(), y.clone(), &mut |a| a)
        .1;
    let g21 = Trainer::new(m2.clone(), Objective::Generative, 0.05, 1.0)
        .gradients(x0.clone(), y.clone(), &mut |a| a)
        .1;
    let rev_only = {
        let tr = m2.tracked();
        let ad = dev().autodiff();
        let x = x0.clone().to_device(&ad);
        let eta = tr.reverse_from(4, Act::Flat(y.clone().to_device(&ad)));
        let l = image_nll(eta, x).div_scalar(36.0);
        let g = l.backward();
        let Weight::Dense(t) = &tr.weights[3] else {
            unreachable!()
        };
        host(&t.grad(&g).unwrap())
    };
    let (Weight::Dense(a16), Weight::Dense(a21)) = (&g16[3], &g21[3]) else {
        unreachable!()
    };
    let (a16, a21) = (host(a16), host(a21));
    let mut rev_norm = 0.0f32;
    for i in 0..a16.len() {
        assert!((a21[i] - (a16[i] + rev_only[i])).abs() < 1e-5);
        rev_norm += rev_only[i].abs();
    }
    assert!(
        rev_norm > 1e-4,
        "the reverse term must reach the shared weight"
    );
}

#[test]
fn layers_that_do_not_fit_are_a_clear_error() {
    let bad = |layers: Vec<LayerDef>| {
        Spec {
            input: [1, 5, 5],
            layers,
        }
        .shapes()
        .unwrap_err()
        .to_string()
    };
    assert!(bad(vec![LayerDef::Conv([7, 1, 2]), LayerDef::Dense(3)]).contains("larger"));
    assert!(bad(vec![
        LayerDef::Dense(4),
        LayerDef::Conv([2, 1, 2]),
        LayerDef::Dense(3)
    ])
    .contains("cannot follow"));
    assert!(bad(vec![LayerDef::Conv([2, 1, 2])]).contains("must be dense"));
}
