//! The RBM toolbox against closed forms and exhaustive enumeration: AIS
//! log Z against the exact partition function, CD-k against the exact
//! likelihood gradient, PCD chains against the model's distribution, the
//! greedy schedule, and the N = 255 / binary reparametrisation.

use burn::tensor::{DType, Device};
use mrbm_core::ais::{sm_betas, HostDense};
use mrbm_core::layer::{tensor_from, to_f64, LayerKind, LayerSpec, Rbm};
use mrbm_core::sample::chi_square;
use mrbm_core::stack::{Dbn, StackParams};
use mrbm_core::stages::extract_features;
use mrbm_core::train::{train_images, Algorithm, LrMode, OptimParams, Schedule, Trainer};
use mrbm_core::unit::UnitType;
use mrbm_data::artifact::ImageSet;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn dev() -> Device {
    Device::flex()
}

fn random_dense(
    d: usize,
    h: usize,
    vu: UnitType,
    hu: UnitType,
    scale: f64,
    seed: u64,
) -> HostDense {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut u = |s: f64| (rng.random::<f64>() * 2.0 - 1.0) * s;
    let w: Vec<f64> = (0..d * h).map(|_| u(scale)).collect();
    let a: Vec<f64> = (0..d).map(|_| u(0.5)).collect();
    let b: Vec<f64> = (0..h).map(|_| u(0.5)).collect();
    HostDense::new(w, a, b, vu, hu)
}

fn ais_error(m: &HostDense, betas: usize, runs: usize, seed: u64) -> (f64, f64) {
    let exact = m.exact_log_z().unwrap();
    // A flat base rate (all biases 0) is a valid base model too.
    let base = vec![0.0; m.d];
    let est = m
        .ais(&base, &sm_betas(betas), runs, seed, &|_| {}, &|| false)
        .unwrap();
    (est.log_z - exact, est.log_z_std)
}

#[test]
fn ais_matches_exact_log_z_on_enumerable_rbms() {
    let cases = [
        (
            "binary 12x8",
            random_dense(12, 8, UnitType::BINARY, UnitType::BINARY, 1.0, 1),
        ),
        (
            "multinary N=3 6x4",
            random_dense(6, 4, UnitType::new(3, 0.8), UnitType::new(3, 0.8), 0.6, 2),
        ),
        (
            "levels N=3 6x4",
            random_dense(6, 4, UnitType::levels(3), UnitType::levels(3), 1.5, 3),
        ),
    ];
    println!("| model | exact log Z | AIS error (10000 betas, 100 runs) | AIS std |");
    for (name, m) in &cases {
        let (err, std) = ais_error(m, 10_000, 100, 7);
        println!(
            "| {name} | {:.4} | {err:+.4} | {std:.4} |",
            m.exact_log_z().unwrap()
        );
        assert!(err.abs() < 0.05, "{name}: AIS off by {err}");
        // Same seed, same answer.
        assert_eq!(ais_error(m, 10_000, 100, 7).0, err);
    }
}

#[test]
fn ais_spread_shrinks_as_runs_grow() {
    let m = random_dense(12, 8, UnitType::BINARY, UnitType::BINARY, 1.5, 4);
    let (_, s_small) = ais_error(&m, 200, 20, 1);
    let (_, s_big) = ais_error(&m, 200, 500, 1);
    println!("log Z std: 20 runs {s_small:.4}, 500 runs {s_big:.4}");
    assert!(s_big < s_small * 0.5, "{s_small} -> {s_big}");
}

/// A dense layer with given parameters on the flex device, in f64.
fn layer_from(h: &[f64], d: usize, hh: usize, seed: u64) -> Rbm {
    let spec = LayerSpec {
        kind: LayerKind::Dense {
            visible: d,
            hidden: hh,
        },
        visible_unit: UnitType::BINARY,
        hidden_unit: UnitType::BINARY,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut r = Rbm::init(spec, 1.0, &mut rng, &dev(), DType::F64);
    r.w = tensor_from(h.to_vec(), [d, hh, 1, 1], &dev(), DType::F64);
    r.a = tensor_from(
        (0..d).map(|i| 0.3 - 0.2 * i as f64).collect(),
        [d],
        &dev(),
        DType::F64,
    );
    r.b = tensor_from(
        (0..hh).map(|j| -0.1 + 0.2 * j as f64).collect(),
        [hh],
        &dev(),
        DType::F64,
    );
    r
}

/// All binary vectors of length d.
fn configs(d: usize) -> Vec<Vec<f64>> {
    (0..1usize << d)
        .map(|c| (0..d).map(|i| ((c >> i) & 1) as f64).collect())
        .collect()
}

/// Exact p(v) of a binary RBM by enumeration.
fn exact_pv(r: &Rbm) -> Vec<f64> {
    let d = r.spec.visible_shape()[0];
    let vs = configs(d);
    let rows: Vec<f64> = vs.iter().flatten().cloned().collect();
    let v = tensor_from(rows, [vs.len(), d, 1, 1], &dev(), DType::F64);
    let f = to_f64(&r.free_energy(v));
    let m = f.iter().cloned().fold(f64::INFINITY, f64::min);
    let z: f64 = f.iter().map(|x| (m - x).exp()).sum();
    f.iter().map(|x| (m - x).exp() / z).collect()
}

fn trainer_with(r: &Rbm, algorithm: Algorithm, cd_k: usize, batch: usize) -> Trainer {
    Trainer::new(
        Dbn::of_dense_layer(r.clone(), 1.0 / 255.0),
        OptimParams {
            algorithm,
            cd_k,
            batch_size: batch,
            ..OptimParams::default()
        },
    )
}

#[test]
fn cd_k_with_large_k_approaches_the_exact_likelihood_gradient() {
    let (d, h) = (4, 3);
    let w = [
        0.8, -0.5, 0.3, -0.7, 0.6, 0.2, 0.4, 0.9, -0.6, -0.3, -0.4, 0.7,
    ];
    let r = layer_from(&w, d, h, 1);
    // Data: two patterns, each repeated.
    let pats = [[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]];
    let copies = 4000;
    let rows: Vec<f64> = (0..copies).flat_map(|i| pats[i % 2].to_vec()).collect();
    let v = tensor_from(rows.clone(), [copies, d, 1, 1], &dev(), DType::F64);
    // Exact gradient of the mean log-likelihood in W: <v h>_data - <v h>_model.
    let pv = exact_pv(&r);
    let hmean = |vv: &[f64]| -> Vec<f64> {
        let t = tensor_from(vv.to_vec(), [1, d, 1, 1], &dev(), DType::F64);
        to_f64(&r.up(t))
    };
    let mut exact = vec![0.0; d * h];
    for p in &pats {
        let hm = hmean(p);
        for i in 0..d {
            for j in 0..h {
                exact[i * h + j] += 0.5 * p[i] * hm[j];
            }
        }
    }
    for (c, prob) in configs(d).iter().zip(&pv) {
        let hm = hmean(c);
        for i in 0..d {
            for j in 0..h {
                exact[i * h + j] -= prob * c[i] * hm[j];
            }
        }
    }
    let err_of = |k: usize| -> f64 {
        let mut tr = trainer_with(&r, Algorithm::Cd, k, copies);
        let (_, g, _) = tr.layer_step_grads(0, v.clone());
        // The loss gradient is minus the update.
        let gw: Vec<f64> = to_f64(&g.w).iter().map(|x| -x).collect();
        gw.iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    let (e1, e50) = (err_of(1), err_of(50));
    println!("max |CD-k - exact| in dW: k=1 {e1:.4}, k=50 {e50:.4}");
    assert!(e50 < 0.02, "CD-50 is {e50} from the exact gradient");
    assert!(
        e1 > 2.0 * e50,
        "CD-1 ({e1}) should be further off than CD-50 ({e50})"
    );
}

#[test]
fn pcd_chains_sample_the_models_distribution() {
    let (d, h) = (3, 2);
    let w = [1.2, -0.8, -0.9, 0.7, 0.5, 1.1];
    let r = layer_from(&w, d, h, 2);
    let chains = 3000;
    // Start every chain at one state: mixing has to do the work.
    let v0 = tensor_from(vec![1.0; chains * d], [chains, d, 1, 1], &dev(), DType::F64);
    let mut tr = trainer_with(&r, Algorithm::Pcd, 1, chains);
    let mut last = v0.clone();
    for _ in 0..60 {
        last = tr.negative_phase(0, &v0);
    }
    let states = to_f64(&last);
    let mut counts = vec![0u64; 1 << d];
    for row in states.chunks(d) {
        let code: usize = row
            .iter()
            .enumerate()
            .map(|(i, &x)| (x as usize) << i)
            .sum();
        counts[code] += 1;
    }
    let (stat, df) = chi_square(&counts, &exact_pv(&r));
    println!("PCD chains vs exact p(v): chi-square {stat:.2} on {df} df");
    // 99.9 % quantile of chi-square with 7 df is 24.3.
    assert!(stat < 24.3, "chi-square {stat} on {df} df");
}

fn stripes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .flat_map(|i| {
            let row: Vec<u8> = (0..16)
                .map(|p| {
                    let on = (p / 4 + i) % 2 == 0;
                    let flip = rng.random::<f64>() < 0.1;
                    if on != flip {
                        230
                    } else {
                        20
                    }
                })
                .collect();
            row
        })
        .collect()
}

fn train_stack(dense: Vec<usize>, opt: OptimParams, n_units: u32, px: &[u8], n: usize) -> Trainer {
    let params = StackParams {
        conv_channels: vec![],
        dense,
        n: n_units,
        ..StackParams::default()
    };
    let spec = params.build_spec([1, 4, 4]).unwrap();
    let dbn = Dbn::init(spec, 0.05, 3, &dev(), DType::F32);
    let mut tr = Trainer::new(dbn, opt);
    train_images(&mut tr, px, n, DType::F32, |_, _, _| Ok(())).unwrap();
    tr
}

#[test]
fn greedy_freezes_each_layer_after_its_epochs_and_equals_joint_for_one_layer() {
    let n = 256;
    let px = stripes(n, 1);
    for algorithm in [Algorithm::Paper, Algorithm::Pcd] {
        let opt = |schedule| OptimParams {
            lr: 0.01,
            batch_size: 32,
            epochs: 3,
            schedule,
            algorithm,
            ..OptimParams::default()
        };
        let one_joint = train_stack(vec![6], opt(Schedule::Joint), 1, &px, n);
        let one_greedy = train_stack(vec![6], opt(Schedule::Greedy), 1, &px, n);
        let two_greedy = train_stack(vec![6, 5], opt(Schedule::Greedy), 1, &px, n);
        let w = |t: &Trainer, i: usize| to_f64(&t.dbn.layers[i].w);
        assert_eq!(w(&one_joint, 0), w(&one_greedy, 0), "{algorithm:?}");
        // Layer 1 of the two-layer stack trained after layer 0 was frozen:
        // layer 0 is exactly what training it alone gives.
        assert_eq!(w(&two_greedy, 0), w(&one_greedy, 0), "{algorithm:?}");
        let two_joint = train_stack(vec![6, 5], opt(Schedule::Joint), 1, &px, n);
        assert_ne!(w(&two_joint, 1), w(&two_greedy, 1));
    }
}

#[test]
fn n255_with_binary_equivalent_steps_is_the_binary_rbm_reparametrised() {
    let n = 256;
    let px = stripes(n, 2);
    let opt = |lr_mode| OptimParams {
        lr: 0.01,
        batch_size: 32,
        epochs: 3,
        lr_mode,
        ..OptimParams::default()
    };
    let build = |n_units: u32| {
        let params = StackParams {
            conv_channels: vec![],
            dense: vec![6],
            n: n_units,
            ..StackParams::default()
        };
        let spec = params.build_spec([1, 4, 4]).unwrap();
        Dbn::init(spec, 0.05, 3, &dev(), DType::F32)
    };
    let bin = build(1);
    let mut multi = build(255);
    // Map the binary initialisation: W = W_bin / (N k), a = a_bin / k, b = b_bin / k.
    let k = multi.layers[0].spec.hidden_unit.k;
    multi.layers[0].w = bin.layers[0].w.clone().div_scalar(255.0 * k);
    let mut tb = Trainer::new(bin, opt(LrMode::Plain));
    let mut tm = Trainer::new(multi, opt(LrMode::BinaryEquivalent));
    train_images(&mut tb, &px, n, DType::F32, |_, _, _| Ok(())).unwrap();
    train_images(&mut tm, &px, n, DType::F32, |_, _, _| Ok(())).unwrap();
    let set = ImageSet::new(px.clone(), n, 1, 4, 4, vec![0; n]);
    let fb = extract_features(&tb.dbn, &set, 0, 64, &dev(), |_| {});
    let fm: Vec<f32> = extract_features(&tm.dbn, &set, 0, 64, &dev(), |_| {})
        .iter()
        .map(|x| x / 255.0)
        .collect();
    let diff = fb
        .iter()
        .zip(&fm)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("max feature difference, N=255 binary_equivalent vs binary: {diff:e}");
    assert!(diff < 1e-4, "{diff}");
}

/// exp(-F(v)) of a Gaussian-visible RBM integrated numerically over a grid
/// equals the closed-form partition function
/// (2 pi)^(D/2) prod_i sigma_i sum_h exp(b.h + sum_i (a_i c_i / sigma_i + c_i^2 / 2)),
/// c = W h, in one and two dimensions, with unit variance and with a
/// learned sigma other than 1.
#[test]
fn gaussian_visible_free_energy_integrates_to_the_closed_form() {
    use mrbm_core::stack::VisibleKind;
    for (d, sigmas) in [
        (1usize, None),
        (2, None),
        (1, Some(vec![0.6])),
        (2, Some(vec![0.6, 1.7])),
    ] {
        let params = StackParams {
            conv_channels: vec![],
            dense: vec![2],
            visible: VisibleKind::Gaussian,
            ..StackParams::default()
        };
        let spec = params.build_spec([d, 1, 1]).unwrap();
        let mut dbn = Dbn::init(spec, 0.7, 4, &dev(), DType::F64);
        let layer = &mut dbn.layers[0];
        layer.a = tensor_from(vec![0.3, -0.4][..d].to_vec(), [d], &dev(), DType::F64);
        layer.b = tensor_from(vec![-0.2, 0.5], [2], &dev(), DType::F64);
        let sigma: Vec<f64> = sigmas.clone().unwrap_or(vec![1.0; d]);
        if let Some(s) = &sigmas {
            let z: Vec<f64> = s.iter().map(|x| x.ln()).collect();
            layer.log_sigma = Some(tensor_from(z, [d], &dev(), DType::F64));
        }
        let w = to_f64(&layer.w);
        let a = to_f64(&layer.a);
        let b = to_f64(&layer.b);
        // Closed form over the 4 hidden states.
        let mut z = 0.0;
        for hs in 0..4usize {
            let h = [(hs & 1) as f64, ((hs >> 1) & 1) as f64];
            let c: Vec<f64> = (0..d)
                .map(|i| w[i * 2] * h[0] + w[i * 2 + 1] * h[1])
                .collect();
            let bh = b[0] * h[0] + b[1] * h[1];
            let ac: f64 = (0..d).map(|i| a[i] * c[i] / sigma[i]).sum();
            let cc: f64 = c.iter().map(|x| x * x).sum();
            z += (bh + ac + cc / 2.0).exp();
        }
        z *= (2.0 * std::f64::consts::PI).powf(d as f64 / 2.0) * sigma.iter().product::<f64>();
        // Numerical integration on a grid (midpoint rule).
        let (lo, hi, steps) = (-14.0, 14.0, if d == 1 { 4000 } else { 560 });
        let dx = (hi - lo) / steps as f64;
        let axis: Vec<f64> = (0..steps).map(|i| lo + (i as f64 + 0.5) * dx).collect();
        let points: Vec<f64> = if d == 1 {
            axis.clone()
        } else {
            axis.iter()
                .flat_map(|&x| axis.iter().flat_map(move |&y| [x, y]))
                .collect()
        };
        let n = points.len() / d;
        let v = tensor_from(points, [n, d, 1, 1], &dev(), DType::F64);
        let f = to_f64(&dbn.layers[0].free_energy(v));
        let integral: f64 = f.iter().map(|x| (-x).exp()).sum::<f64>() * dx.powi(d as i32);
        println!(
            "D = {d}, sigma {sigma:?}: log Z closed form {:.6}, by integration {:.6}",
            z.ln(),
            integral.ln()
        );
        assert!(
            (z.ln() - integral.ln()).abs() < 1e-6,
            "D = {d}, sigma {sigma:?}"
        );
    }
}

/// With a learned sigma, `Rbm::stats_grads` (the gradient every training
/// rule uses) equals central finite differences of the loss
/// mean F(v) - mean F(v_neg) in a, W, b and log sigma, on a dense and a
/// conv layer.
#[test]
fn learned_sigma_gradients_match_finite_differences() {
    use mrbm_core::unit::UnitKind;
    let gauss = UnitType {
        kind: UnitKind::Gaussian,
        ..UnitType::BINARY
    };
    let specs = [
        LayerSpec {
            kind: LayerKind::Dense {
                visible: 3,
                hidden: 2,
            },
            visible_unit: gauss,
            hidden_unit: UnitType::new(3, 0.8),
        },
        LayerSpec {
            kind: LayerKind::Conv {
                input: [2, 4, 4],
                out_channels: 2,
                kernel: 2,
                stride: 2,
                padding: 0,
            },
            visible_unit: gauss,
            hidden_unit: UnitType::BINARY,
        },
    ];
    for spec in specs {
        let mut r = mrbm_core::checks::random_layer(spec.clone(), 3, &dev(), DType::F64);
        let c = spec.visible_channels();
        let z0: Vec<f64> = (0..c).map(|i| 0.4 - 0.5 * i as f64).collect();
        r.log_sigma = Some(tensor_from(z0.clone(), [c], &dev(), DType::F64));
        let [vc, vh, vw] = spec.visible_shape();
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let mut draw = |n: usize| {
            let vals: Vec<f64> = (0..n * vc * vh * vw)
                .map(|_| rng.random::<f64>() * 3.0 - 1.5)
                .collect();
            tensor_from(vals, [n, vc, vh, vw], &dev(), DType::F64)
        };
        let (v, vn) = (draw(3), draw(3));
        let loss = |r: &Rbm| -> f64 {
            to_f64(&(r.free_energy(v.clone()).mean() - r.free_energy(vn.clone()).mean()))[0]
        };
        let g = r.stats_grads(v.clone(), r.up(v.clone()), vn.clone(), r.up(vn.clone()));
        let eps = 1e-6;
        let check =
            |name: &str, analytic: Vec<f64>, set: &dyn Fn(&mut Rbm, Vec<f64>), base: Vec<f64>| {
                for k in 0..base.len() {
                    let mut p = base.clone();
                    p[k] += eps;
                    let mut rp = r.clone();
                    set(&mut rp, p.clone());
                    p[k] -= 2.0 * eps;
                    let mut rm = r.clone();
                    set(&mut rm, p);
                    let fd = (loss(&rp) - loss(&rm)) / (2.0 * eps);
                    assert!(
                        (fd - analytic[k]).abs() < 1e-6 * (1.0 + fd.abs()),
                        "{}: {name}[{k}]: analytic {} vs finite differences {fd}",
                        spec.describe(),
                        analytic[k]
                    );
                }
            };
        let ws = spec.weight_shape();
        check(
            "log_sigma",
            to_f64(g.log_sigma.as_ref().unwrap()),
            &|r, p| r.log_sigma = Some(tensor_from(p, [c], &dev(), DType::F64)),
            z0.clone(),
        );
        check(
            "a",
            to_f64(&g.a),
            &|r, p| r.a = tensor_from(p, [c], &dev(), DType::F64),
            to_f64(&r.a),
        );
        check(
            "w",
            to_f64(&g.w),
            &|r, p| r.w = tensor_from(p, ws, &dev(), DType::F64),
            to_f64(&r.w),
        );
        check(
            "b",
            to_f64(&g.b),
            &|r, p| r.b = tensor_from(p, [spec.hidden_channels()], &dev(), DType::F64),
            to_f64(&r.b),
        );
    }
}

/// Data whose pixels have different spreads (std 8, 16, 32, 48 grey levels
/// around 128), standardised globally: Gaussian units with a learned sigma
/// recover each pixel's own scale, std_i / global std, within 10 %.
#[test]
fn learned_sigma_recovers_a_known_per_pixel_scale() {
    use mrbm_core::stack::VisibleKind;
    let stds = [8.0, 16.0, 32.0, 48.0];
    let n = 2048;
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let mut px = Vec::with_capacity(n * 4);
    for _ in 0..n {
        for s in stds {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
            let g = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            px.push((128.0 + s * g).round().clamp(0.0, 255.0) as u8);
        }
    }
    let mean = px.iter().map(|&x| x as f64).sum::<f64>() / px.len() as f64;
    let std = (px.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / px.len() as f64).sqrt();
    // (The paper's loss with sampled reconstructions is CD-1 exactly.)
    for algorithm in [Algorithm::Cd, Algorithm::Pcd, Algorithm::Fpcd] {
        let params = StackParams {
            conv_channels: vec![],
            dense: vec![2],
            visible: VisibleKind::Gaussian,
            ..StackParams::default()
        };
        let mut spec = params.build_spec([4, 1, 1]).unwrap();
        spec.visible_scale = 1.0 / std;
        spec.visible_offset = mean / std;
        let mut dbn = Dbn::init(spec, 0.01, 3, &dev(), DType::F32);
        dbn.layers[0].log_sigma = Some(tensor_from(vec![0.0; 4], [4], &dev(), DType::F32));
        let mut tr = Trainer::new(
            dbn,
            OptimParams {
                lr: 0.01,
                batch_size: 64,
                epochs: 25,
                algorithm,
                reconstruction: mrbm_core::train::Reconstruction::Sample,
                ..OptimParams::default()
            },
        );
        train_images(&mut tr, &px, n, DType::F32, |_, _, _| Ok(())).unwrap();
        let sigma: Vec<f64> = to_f64(tr.dbn.layers[0].log_sigma.as_ref().unwrap())
            .iter()
            .map(|z| z.exp())
            .collect();
        for (i, s) in stds.iter().enumerate() {
            let want = s / std;
            println!(
                "{algorithm:?}: pixel {i}: sigma {:.4}, want {want:.4}",
                sigma[i]
            );
            assert!(
                (sigma[i] / want - 1.0).abs() < 0.1,
                "{algorithm:?}: pixel {i}: learned sigma {} vs {want}",
                sigma[i]
            );
        }
    }
}

#[test]
fn gaussian_visible_units_train_and_sample() {
    use mrbm_core::stack::VisibleKind;
    let n = 128;
    let px = stripes(n, 5);
    for algorithm in [Algorithm::Paper, Algorithm::Pcd] {
        let params = StackParams {
            conv_channels: vec![],
            dense: vec![6],
            visible: VisibleKind::Gaussian,
            ..StackParams::default()
        };
        let mut spec = params.build_spec([1, 4, 4]).unwrap();
        // Standardise as the train stage does.
        let mean = px.iter().map(|&x| x as f64).sum::<f64>() / px.len() as f64;
        let std =
            (px.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / px.len() as f64).sqrt();
        spec.visible_scale = 1.0 / std;
        spec.visible_offset = mean / std;
        let dbn = Dbn::init(spec, 0.05, 3, &dev(), DType::F32);
        let mut tr = Trainer::new(
            dbn,
            OptimParams {
                lr: 0.01,
                batch_size: 32,
                epochs: 3,
                algorithm,
                ..OptimParams::default()
            },
        );
        train_images(&mut tr, &px, n, DType::F32, |_, _, _| Ok(())).unwrap();
        // A Gaussian visible draw has mean a + W h and unit variance.
        let v = tr
            .dbn
            .pixels_to_visible(&px[..16 * 16], 16, &dev(), DType::F32);
        let round = tr.dbn.visible_to_pixels(&v);
        assert_eq!(
            round,
            px[..16 * 16].to_vec(),
            "standardisation must round-trip"
        );
        let layer = &tr.dbn.layers[0];
        let y = layer.pre_visible(layer.up(v));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut diffs = Vec::new();
        for _ in 0..200 {
            let s = mrbm_core::sample::draw_states(layer.spec.visible_unit, y.clone(), &mut rng);
            diffs.extend(to_f64(&s).iter().zip(to_f64(&y)).map(|(a, b)| a - b));
        }
        let m = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let var = diffs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / diffs.len() as f64;
        assert!(
            m.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{algorithm:?}: mean {m}, var {var}"
        );
    }
}

/// A two-layer DBN's variational lower bound (Salakhutdinov & Murray 2008,
/// sec. 4) against enumeration: it is below the exact log-likelihood and
/// close to it; its Monte Carlo estimate agrees with its exact
/// expectation; and it equals log p(v) exactly when the top RBM is the
/// bottom one turned over (q is then the true posterior).
#[test]
fn dbn_lower_bound_against_enumeration() {
    use mrbm_core::ais::HostDbn2;
    let units = [
        ("binary", UnitType::new(1, 1.0), UnitType::new(1, 1.0)),
        ("subunits N=2", UnitType::new(2, 1.0), UnitType::new(2, 0.7)),
        ("levels N=2", UnitType::levels(2), UnitType::levels(2)),
    ];
    let (d, h1, h2) = (5usize, 4usize, 3usize);
    for (name, vu, hu) in units {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut normal = |s: f64| -> f64 {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
            s * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        };
        let w1: Vec<f64> = (0..d * h1).map(|_| normal(0.5)).collect();
        let a1: Vec<f64> = (0..d).map(|_| normal(0.5)).collect();
        let b1: Vec<f64> = (0..h1).map(|_| normal(0.5)).collect();
        let w2: Vec<f64> = (0..h1 * h2).map(|_| normal(0.5)).collect();
        let a2: Vec<f64> = (0..h1).map(|_| normal(0.5)).collect();
        let b2: Vec<f64> = (0..h2).map(|_| normal(0.5)).collect();
        let bottom = HostDense::new(w1.clone(), a1.clone(), b1.clone(), vu, hu);
        let top = HostDense::new(w2, a2, b2, hu, hu);
        let dbn = HostDbn2::new(bottom.clone(), top.clone()).unwrap();
        let log_z = top.exact_log_z().unwrap();
        // Turned over: W_top = W^T, top visible bias = b, top hidden bias = a.
        let w1t: Vec<f64> = (0..h1 * d).map(|k| w1[(k % d) * h1 + k / d]).collect();
        let tied = HostDbn2::new(bottom.clone(), HostDense::new(w1t, b1, a1, hu, vu)).unwrap();
        let log_z_tied = tied.top.exact_log_z().unwrap();
        let log_z_rbm = bottom.exact_log_z().unwrap();
        assert!(
            (log_z_tied - log_z_rbm).abs() < 1e-5,
            "{name}: {log_z_tied} vs {log_z_rbm}"
        );
        let top_val = vu.level_value(vu.n);
        let images: Vec<Vec<f32>> = (0..6)
            .map(|i| {
                (0..d)
                    .map(|j| vu.level_value(((i * 7 + j * 3) % (vu.n as usize + 1)) as u32) as f32)
                    .collect()
            })
            .collect();
        let mut gaps = Vec::new();
        for v in &images {
            assert!(v.iter().all(|&x| x as f64 <= top_val));
            let (lp, bound) = dbn.exact(v).unwrap();
            let (lp, bound) = (lp - log_z, bound - log_z);
            assert!(bound < lp, "{name}: bound {bound} above log p {lp}");
            gaps.push(lp - bound);
            let mc = dbn.bound_plus_log_z(v, 1, 20_000, 3)[0] - log_z;
            assert!(
                (mc - bound).abs() < 0.05,
                "{name}: MC {mc} vs exact {bound}"
            );
            // The tied DBN is the bottom RBM: exact log p(v) and a tight bound.
            let (lpt, bt) = tied.exact(v).unwrap();
            let rbm = bottom.log_unnormalised(v, 1)[0] - log_z_rbm;
            assert!((lpt - log_z_tied - rbm).abs() < 1e-5, "{name}");
            assert!((bt - lpt).abs() < 1e-5, "{name}: tied bound {bt} vs {lpt}");
            let mct = tied.bound_plus_log_z(v, 1, 50, 4)[0];
            assert!((mct - lpt).abs() < 1e-4, "{name}: tied MC {mct} vs {lpt}");
        }
        let mean_gap = gaps.iter().sum::<f64>() / gaps.len() as f64;
        println!("{name}: mean gap log p(v) - bound = {mean_gap:.4} nats");
        // Weights of std 0.5: q is close to the posterior, the bound tight.
        assert!(mean_gap < 0.6, "{name}: the bound is loose by {mean_gap}");
    }
}
