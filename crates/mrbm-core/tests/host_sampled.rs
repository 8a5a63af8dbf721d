//! The sampled rules on the host (`host_sampled`): the statistics against
//! the tensor path's definitions, Gibbs chains against an enumerated model,
//! and the states against the thread count.

use burn::tensor::{DType, Device, Tensor};
use mrbm_core::checks;
use mrbm_core::host_sampled::{sampled_grads, Draws, Start};
use mrbm_core::layer::{tensor_from, to_f64, LayerKind, LayerSpec, Rbm};
use mrbm_core::unit::UnitType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn dev() -> Device {
    Device::flex()
}

fn layer_and_batch(
    kind: LayerKind,
    vu: UnitType,
    hu: UnitType,
    scale: f64,
    seed: u64,
) -> (Rbm, Tensor<4>) {
    let spec = LayerSpec {
        kind,
        visible_unit: vu,
        hidden_unit: hu,
    };
    let mut layer = checks::random_layer(spec.clone(), seed, &dev(), DType::F32);
    let nc = spec.visible_channels();
    layer.a = tensor_from(
        (0..nc).map(|i| 0.1 * (i % 7) as f64 - 0.2).collect(),
        [nc],
        &dev(),
        DType::F32,
    );
    let [c, h, w] = spec.visible_shape();
    let batch = 12;
    let mut rng = ChaCha8Rng::seed_from_u64(40 + seed);
    let v: Vec<f64> = (0..batch * c * h * w)
        .map(|_| (rng.random_range(0.0..1.0) * scale).round())
        .collect();
    (layer, tensor_from(v, [batch, c, h, w], &dev(), DType::F32))
}

fn max_rel(a: Vec<f64>, b: Vec<f64>) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Loss, gradients and hidden means of a host step equal the tensor path's
/// `free_energy_with_x` and `stats_grads` on the same data and the negative
/// states the host step drew, for dense and conv layers and every visible
/// unit kind; every rule's start runs.
#[test]
fn sampled_step_statistics_equal_the_tensor_definitions() {
    let conv = |c: usize, hw: usize, o: usize| LayerKind::Conv {
        input: [c, hw, hw],
        out_channels: o,
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let dense = LayerKind::Dense {
        visible: 40,
        hidden: 16,
    };
    let multinary = UnitType::new(255, 4.0 / 255.0);
    let cases = [
        (conv(3, 12, 8), multinary, UnitType::new(3, 0.5), 255.0),
        (conv(2, 9, 5), UnitType::gaussian(), UnitType::BINARY, 1.0),
        (dense.clone(), UnitType::BINARY, UnitType::BINARY, 1.0),
        (dense.clone(), UnitType::levels(4), UnitType::BINARY, 1.0),
        (
            dense.clone(),
            UnitType::discrete_gaussian(255, 5.0),
            UnitType::BINARY,
            5.0,
        ),
        (dense, UnitType::gaussian(), UnitType::new(3, 0.5), 1.0),
    ];
    for (seed, (kind, vu, hu, scale)) in cases.into_iter().enumerate() {
        let (layer, v) = layer_and_batch(kind, vu, hu, scale, seed as u64);
        let what = layer.spec.describe();
        let params = layer.host_params(&v).expect("a host layer");
        let host = params.layer(&layer.spec);
        let vh: Vec<f32> = to_f64(&v).iter().map(|&x| x as f32).collect();
        let dims = v.dims();
        let chain = vh.iter().rev().copied().collect::<Vec<f32>>();
        for (name, start) in [
            ("data", Start::Data),
            ("chain", Start::Chain(&chain)),
            ("noise", Start::Noise),
        ] {
            let mut draws = Draws::new(seed as u64 + 7);
            let out = sampled_grads(&host, &host, &vh, dims[0], (start, 2), &mut draws);
            assert!(
                out.v_neg.iter().all(|x| x.is_finite()),
                "{what} {name}: states"
            );
            let v_neg = tensor_from(
                out.v_neg.iter().map(|&x| x as f64).collect(),
                dims,
                &dev(),
                DType::F32,
            );
            let x = layer.pre_hidden(v.clone());
            let h = hu.mean(x.clone());
            let x_neg = layer.pre_hidden(v_neg.clone());
            let h_neg = hu.mean(x_neg.clone());
            let loss = (layer.free_energy_with_x(v.clone(), x)
                - layer.free_energy_with_x(v_neg.clone(), x_neg))
            .mean();
            let g = layer.stats_grads(v.clone(), h.clone(), v_neg, h_neg);
            let errs = [
                ("loss", max_rel(vec![out.loss], to_f64(&loss))),
                (
                    "w",
                    max_rel(out.gw.iter().map(|&x| x as f64).collect(), to_f64(&g.w)),
                ),
                (
                    "a",
                    max_rel(out.ga.iter().map(|&x| x as f64).collect(), to_f64(&g.a)),
                ),
                (
                    "b",
                    max_rel(out.gb.iter().map(|&x| x as f64).collect(), to_f64(&g.b)),
                ),
                (
                    "hidden",
                    max_rel(out.hidden.iter().map(|&x| x as f64).collect(), to_f64(&h)),
                ),
            ];
            for (part, e) in errs {
                assert!(
                    e < 2e-4,
                    "{what} {name}: {part} differs by {e:e} (relative)"
                );
            }
        }
    }
}

/// Every visible state's probability of a small RBM whose hidden units are
/// `hu`'s exact sub-units: p(v) proportional to exp(a.v + sum_j sum_n
/// softplus(x_j(v) - o_n)), for binary visible units.
fn exact_visible_marginals(layer: &Rbm) -> Vec<f64> {
    let host = mrbm_core::reference::HostRbm::from_rbm(layer);
    let nv = host.a.len();
    let offsets = layer.spec.hidden_unit.offsets();
    let mut log_p = Vec::new();
    let mut states = Vec::new();
    for bits in 0..1usize << nv {
        let v: Vec<f64> = (0..nv).map(|i| ((bits >> i) & 1) as f64).collect();
        let x = host.pre_hidden(&v);
        let mut t: f64 = v.iter().zip(&host.a).map(|(a, b)| a * b).sum();
        for xj in &x {
            for o in &offsets {
                t += mrbm_core::unit::softplus_f64(xj - o);
            }
        }
        log_p.push(t);
        states.push(v);
    }
    let m = log_p.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = log_p.iter().map(|l| (l - m).exp()).sum();
    let mut marg = vec![0.0; nv];
    for (l, v) in log_p.iter().zip(&states) {
        let p = (l - m).exp() / z;
        for (mi, vi) in marg.iter_mut().zip(v) {
            *mi += p * vi;
        }
    }
    marg
}

/// 4,000 independent persistent chains of 40 Gibbs steps on the host reach
/// the visible marginals of an enumerated model (binary and 3-sub-unit
/// hidden units), within 5 standard errors.
#[test]
fn host_gibbs_chains_reach_the_enumerated_marginals() {
    for (seed, hu) in [(3u64, UnitType::BINARY), (4, UnitType::new(3, 1.0))] {
        let spec = LayerSpec {
            kind: LayerKind::Dense {
                visible: 5,
                hidden: 3,
            },
            visible_unit: UnitType::BINARY,
            hidden_unit: hu,
        };
        let mut layer = checks::random_layer(spec, seed, &dev(), DType::F32);
        // Strong enough weights that the marginals are far from 1/2.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w: Vec<f64> = (0..15).map(|_| rng.random_range(-1.5..1.5)).collect();
        layer.w = tensor_from(w, [5, 3, 1, 1], &dev(), DType::F32);
        layer.a = tensor_from(vec![0.8, -0.6, 0.1, -1.2, 0.5], [5], &dev(), DType::F32);
        layer.b = tensor_from(vec![-0.4, 0.3, 0.0], [3], &dev(), DType::F32);
        let exact = exact_visible_marginals(&layer);
        let chains = 4000;
        let start = vec![0.0f32; chains * 5];
        let v = tensor_from(vec![0.0; chains * 5], [chains, 5, 1, 1], &dev(), DType::F32);
        let params = layer.host_params(&v).unwrap();
        let host = params.layer(&layer.spec);
        let mut draws = Draws::new(seed);
        let out = sampled_grads(
            &host,
            &host,
            &start,
            chains,
            (Start::Chain(&start), 40),
            &mut draws,
        );
        for (i, e) in exact.iter().enumerate() {
            let m = out
                .v_neg
                .iter()
                .skip(i)
                .step_by(5)
                .map(|&x| x as f64)
                .sum::<f64>()
                / chains as f64;
            let se = (e * (1.0 - e) / chains as f64).sqrt();
            assert!(
                (m - e).abs() < 5.0 * se,
                "hidden {hu:?}, unit {i}: chains {m:.4}, exact {e:.4}"
            );
        }
    }
}

/// A dense step's states, loss and gradients are the same bits on 1, 2 and
/// 3 threads (the draws are counter-based; the products split the same
/// way). A conv step's states, loss and bias gradients are too; its weight
/// gradient only to rounding (README "Reproducibility").
#[test]
fn sampled_step_is_identical_across_thread_counts() {
    let kinds = [
        LayerKind::Dense {
            visible: 300,
            hidden: 70,
        },
        LayerKind::Conv {
            input: [3, 16, 16],
            out_channels: 8,
            kernel: 4,
            stride: 2,
            padding: 1,
        },
    ];
    for (seed, kind) in kinds.into_iter().enumerate() {
        let (layer, v) =
            layer_and_batch(kind, UnitType::BINARY, UnitType::BINARY, 1.0, seed as u64);
        let vh: Vec<f32> = to_f64(&v).iter().map(|&x| x as f32).collect();
        let run = |threads: usize| {
            mrbm_stage::in_pool(threads, || {
                let params = layer.host_params(&v).unwrap();
                let host = params.layer(&layer.spec);
                let mut draws = Draws::new(99);
                let o = sampled_grads(&host, &host, &vh, v.dims()[0], (Start::Data, 3), &mut draws);
                (o.loss.to_bits(), o.gw, o.ga, o.gb, o.v_neg)
            })
            .unwrap()
        };
        let one = run(1);
        for t in [2, 3] {
            let other = run(t);
            if seed == 0 {
                assert!(one == other, "dense: 1 and {t} threads differ");
            } else {
                // Conv: the weight gradient sums per-thread partials, so it
                // moves in the last bits; everything else is identical.
                assert_eq!(
                    (one.0, &one.2, &one.3, &one.4),
                    (other.0, &other.2, &other.3, &other.4),
                    "conv: 1 and {t} threads"
                );
                let gw = |g: &[f32]| g.iter().map(|&x| x as f64).collect::<Vec<f64>>();
                let e = max_rel(gw(&one.1), gw(&other.1));
                assert!(
                    e < 1e-5,
                    "conv: weight gradients on 1 and {t} threads differ by {e:e}"
                );
            }
        }
    }
}

/// The fused host SGD step gives the bits of the tensor path's operations
/// (`Trainer::apply`'s SGD branch: g + w wd, v m + g, w - v lr, each a burn
/// op with the scalar cast to f32), with and without a velocity.
#[test]
fn fused_sgd_equals_the_tensor_ops_bit_for_bit() {
    let n = 5_000;
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut vals = || -> Vec<f64> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
    let (w, g, v) = (vals(), vals(), vals());
    let t = |x: &[f64]| tensor_from::<1>(x.to_vec(), [n], &dev(), DType::F32);
    let (wd, m, lr) = (0.0002f64, 0.9f64, 0.005f64 * 0.7);
    for with_v in [false, true] {
        let mut g2 = t(&g) + t(&w).mul_scalar(wd);
        if with_v {
            g2 = t(&v).mul_scalar(m) + g2;
        }
        let w2 = t(&w) - g2.clone().mul_scalar(lr);
        let f = |x: &[f64]| x.iter().map(|&y| y as f32).collect::<Vec<f32>>();
        let (mut wh, mut gh, vh) = (f(&w), f(&g), f(&v));
        let finite = mrbm_core::train::sgd_fused(
            &mut wh,
            &mut gh,
            with_v.then_some(&vh[..]),
            Some(wd as f32),
            m as f32,
            lr as f32,
        );
        assert!(finite);
        let bits = |x: Vec<f32>| x.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
        let tensor_bits = |x: Tensor<1>| bits(mrbm_core::layer::values_f32(&x));
        assert_eq!(bits(wh), tensor_bits(w2), "weights, velocity {with_v}");
        assert_eq!(bits(gh), tensor_bits(g2), "velocity, velocity {with_v}");
    }
}

/// The fused host Adam step gives the bits of burn's `Adam::step` (the
/// trainer's configuration: PyTorch's betas and epsilon), over 4 steps.
#[test]
fn fused_adam_equals_burn_adam_bit_for_bit() {
    use burn::optim::{AdamConfig, Optimizer};
    let n = 3_000;
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let mut vals = |s: f64| -> Vec<f64> { (0..n).map(|_| rng.random_range(-s..s)).collect() };
    let w0 = vals(1.0);
    let t = |x: &[f64]| tensor_from::<1>(x.to_vec(), [n], &dev(), DType::F32);
    let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-8f64, 0.003f64);
    let adam = AdamConfig::new()
        .with_beta_1(b1 as f32)
        .with_beta_2(b2 as f32)
        .with_epsilon(eps as f32)
        .build();
    let mut w = t(&w0);
    let mut state = None;
    let mut wh: Vec<f32> = w0.iter().map(|&x| x as f32).collect();
    let mut m = mrbm_core::train::HostMoments::default();
    for step in 0..4 {
        let g = vals(0.5 / (step + 1) as f64);
        let (w2, s2) = adam.step(lr, w, t(&g), state);
        (w, state) = (w2, s2);
        let gh: Vec<f32> = g.iter().map(|&x| x as f32).collect();
        assert!(mrbm_core::train::adam_fused(
            &mut wh,
            &gh,
            &mut m,
            (b1 as f32, b2 as f32, eps as f32),
            lr as f32
        ));
        let want: Vec<u32> = mrbm_core::layer::values_f32(&w)
            .into_iter()
            .map(f32::to_bits)
            .collect();
        let got: Vec<u32> = wh.iter().map(|x| x.to_bits()).collect();
        assert!(
            want == got,
            "step {}: the fused Adam step differs from burn's",
            step + 1
        );
    }
}
