//! Closed-form tests of the model (no snapshots). The device-generic ones
//! call the library's `checks` on flex, in f64 (the spec's 1e-5) and f32.

use burn::tensor::{DType, Device};
use mrbm_core::checks;
use mrbm_core::layer::{tensor_from, to_f64, LayerKind, LayerSpec, Rbm};
use mrbm_core::sample::{chi_square, Sampler, UnitSampler};
use mrbm_core::stack::{default_k, Dbn, StackParams};
use mrbm_core::train::{train_images, GradientMode, OptimParams, Trainer};
use mrbm_core::unit::UnitType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn dev() -> Device {
    Device::flex()
}

fn assert_check(r: checks::CheckReport) {
    println!("{r}");
    assert!(r.passed(), "{r}");
}

/// All configurations of `len` units with values 0..=n.
fn all_states(len: usize, n: u32) -> Vec<Vec<f64>> {
    let mut out = vec![vec![]];
    for _ in 0..len {
        out = out
            .into_iter()
            .flat_map(|s| (0..=n).map(move |x| [s.clone(), vec![x as f64]].concat()))
            .collect();
    }
    out
}

/// F(v) = -log sum_s exp(-E(v, s)) by enumerating every hidden sub-unit
/// state, with E(v, s) = -a.v - sum_j sum_n (x_j(v) - o_n) s_jn.
fn brute_force_free_energy(layer: &Rbm, v: &[f64]) -> f64 {
    let host = mrbm_core::reference::HostRbm::from_rbm(layer);
    let x = host.pre_hidden(v);
    let av: f64 = v.iter().zip(&host.a).map(|(a, b)| a * b).sum();
    let offsets = layer.spec.hidden_unit.offsets();
    let subunits = x.len() * offsets.len();
    let mut terms = Vec::new();
    for s in all_states(subunits, 1) {
        let mut neg_e = av;
        for (j, xj) in x.iter().enumerate() {
            for (n, o) in offsets.iter().enumerate() {
                neg_e += (xj - o) * s[j * offsets.len() + n];
            }
        }
        terms.push(neg_e);
    }
    let m = terms.iter().cloned().fold(f64::MIN, f64::max);
    -(m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln())
}

fn tiny_dense(vu: UnitType, hu: UnitType, seed: u64) -> Rbm {
    let spec = LayerSpec {
        kind: LayerKind::Dense {
            visible: 4,
            hidden: 3,
        },
        visible_unit: vu,
        hidden_unit: hu,
    };
    checks::random_layer(spec, seed, &dev(), DType::F64)
}

#[test]
fn free_energy_equals_brute_force_binary() {
    let layer = tiny_dense(UnitType::BINARY, UnitType::BINARY, 1);
    let vs = all_states(4, 1);
    let t = tensor_from(vs.concat(), [vs.len(), 4, 1, 1], &dev(), DType::F64);
    let smooth = to_f64(&layer.free_energy(t.clone()));
    let exact = to_f64(&layer.exact_free_energy(t));
    for (i, v) in vs.iter().enumerate() {
        let bf = brute_force_free_energy(&layer, v);
        assert!(
            (smooth[i] - bf).abs() < 1e-10,
            "smooth {} vs brute force {bf}",
            smooth[i]
        );
        assert!(
            (exact[i] - bf).abs() < 1e-10,
            "exact {} vs brute force {bf}",
            exact[i]
        );
    }
}

#[test]
fn free_energy_equals_brute_force_n3() {
    // N = 3 hidden (k = 0.4) and N = 3 visible: enumerate the 2^(3*3)
    // sub-unit states of the hidden layer for every visible state.
    let layer = tiny_dense(UnitType::new(3, 0.7), UnitType::new(3, 0.4), 2);
    let vs = all_states(4, 3);
    let t = tensor_from(vs.concat(), [vs.len(), 4, 1, 1], &dev(), DType::F64);
    let exact = to_f64(&layer.exact_free_energy(t.clone()));
    let smooth = to_f64(&layer.free_energy(t));
    let mut worst_gap: f64 = 0.0;
    for (i, v) in vs.iter().enumerate() {
        let bf = brute_force_free_energy(&layer, v);
        assert!(
            (exact[i] - bf).abs() < 1e-9 * bf.abs().max(1.0),
            "exact {} vs brute force {bf}",
            exact[i]
        );
        worst_gap = worst_gap.max((smooth[i] - bf).abs());
    }
    // The paper's smooth form is the continuum limit of the sub-unit model:
    // close (a fraction of a unit per hidden unit here), not equal.
    println!("largest |smooth - exact| over all v: {worst_gap:.4}");
    assert!(
        worst_gap < 3.0 * 1.0,
        "smooth free energy strays {worst_gap} from the exact one"
    );
}

#[test]
fn smooth_mean_tracks_subunit_mean_for_default_k() {
    // With the default k = 4/N the sub-unit mean follows N sigmoid(k x);
    // with k = 1 at N = 255 it would be 22 levels off (see `stack::default_k`).
    for n in [2u32, 3, 16, 255] {
        let u = UnitType::new(n, default_k(n));
        let off = u.offsets();
        let worst = (-400..=400)
            .map(|i| i as f64 * 0.05 / u.k)
            .map(|x| (u.exact_mean_f64(x, &off) - u.mean_f64(x)).abs())
            .fold(0.0, f64::max);
        println!("N={n}: max |exact mean - N sigmoid(kx)| = {worst:.4}");
        // Within half a level for large N (0.2% of N at N = 255); the
        // staircase of a few sub-units is coarser (16% of N at N = 2).
        let bound = if n >= 16 { 0.02 } else { 0.2 };
        assert!(worst < bound * n as f64, "N={n}: {worst}");
    }
}

#[test]
fn gradient_equals_minus_cd1_dense_and_conv_f64() {
    assert_check(checks::grad_equals_cd1(&dev(), DType::F64, false));
    assert_check(checks::grad_equals_cd1(&dev(), DType::F64, true));
}

#[test]
fn gradient_equals_minus_cd1_f32() {
    assert_check(checks::grad_equals_cd1(&dev(), DType::F32, false));
    assert_check(checks::grad_equals_cd1(&dev(), DType::F32, true));
}

#[test]
fn conv_down_pass_is_adjoint_of_up_pass() {
    assert_check(checks::conv_adjoint(&dev(), DType::F64));
    assert_check(checks::conv_adjoint(&dev(), DType::F32));
}

#[test]
fn free_energy_matches_host_reference() {
    for conv in [false, true] {
        assert_check(checks::free_energy_matches_host(&dev(), DType::F64, conv));
    }
}

#[test]
fn backprop_coupling_sends_upper_gradient_into_lower_layer() {
    // With backprop coupling the lower layer's gradient is that of the sum
    // of both losses; detached, it is its own loss's only.
    let params = StackParams {
        conv_channels: vec![],
        dense: vec![5, 3],
        ..StackParams::default()
    };
    let spec = params.build_spec([1, 3, 3]).unwrap();
    let dbn = Dbn::init(spec, 0.3, 3, &dev(), DType::F64);
    let px: Vec<u8> = (0..4 * 9).map(|i| ((i * 37) % 256) as u8).collect();
    let v = dbn.pixels_to_visible(&px, 4, &dev(), DType::F64);
    let grad0 = |coupling| {
        let tr = Trainer::new(
            dbn.clone(),
            OptimParams {
                coupling,
                gradient: GradientMode::Autodiff,
                ..OptimParams::default()
            },
        );
        let (_, g) = tr.gradients(v.clone());
        to_f64(&g[0].w)
    };
    let det = grad0(mrbm_core::Coupling::Detached);
    let bp = grad0(mrbm_core::Coupling::Backprop);
    let closed = {
        let tr = Trainer::new(
            dbn.clone(),
            OptimParams {
                gradient: GradientMode::ClosedForm,
                ..OptimParams::default()
            },
        );
        to_f64(&tr.gradients(v.clone()).1[0].w)
    };
    let diff = det
        .iter()
        .zip(&bp)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff > 1e-6, "backprop coupling changed nothing");
    let same = det
        .iter()
        .zip(&closed)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        same < 1e-10,
        "detached autodiff and closed form differ by {same}"
    );
}

#[test]
fn exact_multinary_sampler_matches_exact_distribution() {
    // Chi-square of 1e5 draws against the Poisson-binomial pmf, at the
    // 0.999 quantile (Wilson-Hilferty); seeded, so deterministic.
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    for (u, x) in [
        (UnitType::new(3, 0.4), 0.7),
        (UnitType::new(3, 1.0), -1.2),
        (UnitType::new(255, 4.0 / 255.0), 20.0),
        (UnitType::new(255, 1.0), 0.3),
    ] {
        let s = UnitSampler::new(u, Sampler::Exact);
        let mut counts = vec![0u64; u.n as usize + 1];
        for _ in 0..100_000 {
            counts[s.draw(x, &mut rng) as usize] += 1;
        }
        let (stat, dof) = chi_square(&counts, &u.exact_pmf(x));
        let d = dof as f64;
        let crit = d * (1.0 - 2.0 / (9.0 * d) + 3.09 * (2.0 / (9.0 * d)).sqrt()).powi(3);
        println!(
            "N={} k={} x={x}: chi2 {stat:.1} on {dof} dof (critical {crit:.1})",
            u.n, u.k
        );
        assert!(stat < crit, "N={} x={x}: chi2 {stat} >= {crit}", u.n);
    }
}

#[test]
fn gaussian_sampler_has_smooth_moments() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let u = UnitType::new(255, 4.0 / 255.0);
    let s = UnitSampler::new(u, Sampler::Gaussian);
    let x = 15.0;
    let draws: Vec<f64> = (0..50_000).map(|_| s.draw(x, &mut rng)).collect();
    let mean = draws.iter().sum::<f64>() / draws.len() as f64;
    let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
    assert!(
        (mean - u.mean_f64(x)).abs() < 0.1,
        "mean {mean} vs {}",
        u.mean_f64(x)
    );
    assert!(
        (var - u.mean_slope_f64(x)).abs() / u.mean_slope_f64(x) < 0.1,
        "var {var} vs {}",
        u.mean_slope_f64(x)
    );
}

/// Exact average log-likelihood of `data` under a binary dense RBM.
fn exact_log_likelihood(layer: &Rbm, data: &[Vec<f64>]) -> f64 {
    let nv = data[0].len();
    let all = all_states(nv, 1);
    let f_all = to_f64(&layer.free_energy(tensor_from(
        all.concat(),
        [all.len(), nv, 1, 1],
        &dev(),
        DType::F64,
    )));
    let m = f_all.iter().map(|f| -f).fold(f64::MIN, f64::max);
    let log_z = m + f_all.iter().map(|f| (-f - m).exp()).sum::<f64>().ln();
    let f_data = to_f64(&layer.free_energy(tensor_from(
        data.concat(),
        [data.len(), nv, 1, 1],
        &dev(),
        DType::F64,
    )));
    f_data.iter().map(|f| -f - log_z).sum::<f64>() / data.len() as f64
}

#[test]
fn training_raises_exact_log_likelihood() {
    // Toy distribution on 8 binary pixels: two prototypes with 5% bit flips.
    let protos = [[1u8, 1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0, 1]];
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let n = 256;
    let mut px = Vec::new();
    for i in 0..n {
        for &b in &protos[i % 2] {
            let flip = rng.random::<f64>() < 0.05;
            px.push(if (b == 1) != flip { 255 } else { 0 });
        }
    }
    let params = StackParams {
        conv_channels: vec![],
        dense: vec![4],
        ..StackParams::default()
    };
    let spec = params.build_spec([1, 1, 8]).unwrap();
    let dbn = Dbn::init(spec, 0.01, 1, &dev(), DType::F64);
    let data: Vec<Vec<f64>> = px
        .chunks(8)
        .map(|c| c.iter().map(|&p| p as f64 / 255.0).collect())
        .collect();
    let before = exact_log_likelihood(&dbn.layers[0], &data);
    let mut tr = Trainer::new(
        dbn,
        OptimParams {
            lr: 0.03,
            batch_size: 32,
            epochs: 30,
            ..OptimParams::default()
        },
    );
    train_images(&mut tr, &px, n, DType::F64, |_, _, _| Ok(())).unwrap();
    let after = exact_log_likelihood(&tr.dbn.layers[0], &data);
    println!(
        "exact log-likelihood per example: {before:.4} -> {after:.4} (entropy bound ~ {:.4})",
        -(8.0 * 0.2864 + 0.693)
    );
    assert!(after > before + 1.0, "log-likelihood {before} -> {after}");
}

#[test]
fn a_few_training_steps_lower_the_loss() {
    assert_check(checks::training_lowers_loss(&dev(), DType::F32));
}

#[test]
fn sampling_shapes_ranges_repeatability() {
    assert_check(checks::sampling_shapes_and_ranges(&dev(), DType::F32));
}

#[test]
fn checkpoint_round_trip_is_bit_identical() {
    assert_check(checks::checkpoint_round_trip(&dev()));
}

fn toy_images(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * 3 * 8 * 8).map(|_| rng.random::<u8>()).collect()
}

#[test]
fn training_is_bit_for_bit_repeatable() {
    let params = StackParams {
        conv_channels: vec![4],
        dense: vec![8],
        ..StackParams::default()
    };
    let px = toy_images(64, 9);
    let run = || {
        let spec = params.build_spec([3, 8, 8]).unwrap();
        let dbn = Dbn::init(spec, 0.01, 5, &dev(), DType::F32);
        let mut tr = Trainer::new(
            dbn,
            OptimParams {
                batch_size: 16,
                epochs: 2,
                seed: 5,
                ..OptimParams::default()
            },
        );
        mrbm_stage::in_pool(2, || {
            train_images(&mut tr, &px, 64, DType::F32, |_, _, _| Ok(()))
        })
        .unwrap()
        .unwrap();
        tr.dbn
            .layers
            .iter()
            .flat_map(|l| to_f64(&l.w).into_iter().chain(to_f64(&l.b)))
            .map(|x| x.to_bits())
            .collect::<Vec<u64>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn non_finite_loss_names_epoch_batch_and_layer() {
    let params = StackParams {
        conv_channels: vec![],
        dense: vec![4],
        visible_scale: Some(1e308),
        ..StackParams::default()
    };
    let spec = params.build_spec([3, 8, 8]).unwrap();
    let dbn = Dbn::init(spec, 0.01, 5, &dev(), DType::F32);
    let mut tr = Trainer::new(
        dbn,
        OptimParams {
            batch_size: 16,
            epochs: 1,
            ..OptimParams::default()
        },
    );
    let err = train_images(
        &mut tr,
        &toy_images(32, 1),
        32,
        DType::F32,
        |_, _, _| Ok(()),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("epoch 1") && msg.contains("batch 1") && msg.contains("layer 1"),
        "{msg}"
    );
}

#[test]
fn paper_generation_stack_shapes() {
    let spec = StackParams::default().build_spec([3, 64, 64]).unwrap();
    let shapes: Vec<[usize; 3]> = spec.layers.iter().map(|l| l.hidden_shape()).collect();
    assert_eq!(
        shapes,
        vec![
            [64, 32, 32],
            [128, 16, 16],
            [256, 8, 8],
            [256, 4, 4],
            [1000, 1, 1],
            [500, 1, 1],
            [200, 1, 1],
            [100, 1, 1]
        ]
    );
    assert_eq!(spec.layers[4].visible_shape(), [4096, 1, 1]);
    for l in &spec.layers[..4] {
        assert_eq!(l.output_padding(), [0, 0]);
    }
    // MNIST 28x28: 28 -> 14 -> 7 -> 3, the last needs output padding 1.
    let p = StackParams {
        conv_channels: vec![16, 32, 32],
        dense: vec![],
        n: 1,
        ..StackParams::default()
    };
    let s = p.build_spec([1, 28, 28]).unwrap();
    assert_eq!(s.layers[2].hidden_shape(), [32, 3, 3]);
    assert_eq!(s.layers[2].output_padding(), [1, 1]);
    // A classification stack without dense layers, and one without convs.
    assert!(StackParams {
        dense: vec![],
        ..StackParams::default()
    }
    .build_spec([3, 16, 16])
    .is_ok());
    assert!(StackParams {
        conv_channels: vec![],
        dense: vec![],
        ..StackParams::default()
    }
    .build_spec([3, 16, 16])
    .is_err());
}

#[test]
fn python_checkpoint_check_agrees() {
    // $PYTHON, else the project's venv (tools/reference-env.sh), else python3.
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/python");
    let from_env = std::env::var("PYTHON").ok();
    let candidates: Vec<&str> = from_env
        .as_deref()
        .into_iter()
        .chain([venv, "python3"])
        .collect();
    let py = candidates.into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import numpy, safetensors"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    let Some(py) = py else {
        println!("note: skipped: no python with numpy and safetensors (pip install -r tools/requirements-checkpoint.txt)");
        return;
    };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/check_checkpoint.py");
    let dir = tempfile::tempdir().unwrap();
    let params = StackParams {
        conv_channels: vec![4, 5],
        dense: vec![6],
        n: 255,
        ..StackParams::default()
    };
    let spec = params.build_spec([3, 9, 9]).unwrap();
    let mut dbn = Dbn::init(spec, 0.05, 2, &dev(), DType::F32);
    // Non-zero biases so they are checked too.
    for l in &mut dbn.layers {
        l.a = l.a.clone().add_scalar(0.1);
        l.b = l.b.clone().sub_scalar(0.2);
    }
    let model = dir.path().join("model.safetensors");
    mrbm_core::checkpoint::save(&dbn, &model).unwrap();
    let px = toy_images(3, 4);
    let mut px9 = Vec::new();
    for i in 0..3 * 3 * 81 {
        px9.push(px[i % px.len()]);
    }
    let v = dbn.pixels_to_visible(&px9, 3, &dev(), DType::F32);
    for layer in 0..dbn.layers.len() {
        let input = if layer == 0 {
            v.clone()
        } else {
            dbn.as_visible_of(layer, dbn.up_to(v.clone(), layer - 1))
        };
        let f = to_f64(&dbn.layers[layer].free_energy(input.clone()));
        let inputs = dir.path().join(format!("inputs{layer}.safetensors"));
        let vals: Vec<f32> = to_f64(&input).iter().map(|&x| x as f32).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            input.dims().to_vec(),
            &bytes,
        )
        .unwrap();
        safetensors::serialize_to_file(vec![("v", view)], None, &inputs).unwrap();
        let out = std::process::Command::new(py)
            .arg(&script)
            .arg(&model)
            .arg("--layer")
            .arg(layer.to_string())
            .arg("--inputs")
            .arg(&inputs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let py_f: Vec<f64> = serde_json::from_str::<serde_json::Value>(&text).unwrap()
            ["free_energy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (a, b) in f.iter().zip(&py_f) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "layer {layer}: rust {a} vs python {b}"
            );
        }
        println!("layer {layer}: rust {f:?} python {py_f:?}");
    }
}

#[test]
fn toolbox_update_rules_run_on_the_cpu() {
    assert_check(checks::toolbox_rules_run(&dev(), DType::F32));
}

#[test]
fn learned_sigma_runs_on_the_cpu() {
    assert_check(checks::learned_sigma_run(&dev(), DType::F32));
}

/// The closed-form step on the host (`host_cd`: f32 on flex) equals the
/// same step composed from the layer's tensor ops (up, down, free energy,
/// `stats_grads`), for conv and dense layers, multinary and Gaussian
/// visible units, and a batch that splits into several chunks and threads.
#[test]
fn host_cd_step_equals_the_tensor_composition() {
    let conv = |c: usize, hw: usize, o: usize| LayerKind::Conv {
        input: [c, hw, hw],
        out_channels: o,
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let dense = LayerKind::Dense {
        visible: 50,
        hidden: 20,
    };
    let multinary = UnitType::new(255, 4.0 / 255.0);
    let cases = [
        (conv(3, 12, 8), multinary, UnitType::new(3, 0.5), 255.0),
        (conv(2, 9, 5), UnitType::gaussian(), UnitType::BINARY, 1.0),
        (dense.clone(), multinary, UnitType::new(3, 0.5), 255.0),
        (dense, UnitType::gaussian(), UnitType::BINARY, 1.0),
    ];
    for (seed, (kind, vu, hu, scale)) in cases.into_iter().enumerate() {
        let spec = LayerSpec {
            kind,
            visible_unit: vu,
            hidden_unit: hu,
        };
        let mut layer = checks::random_layer(spec.clone(), seed as u64, &dev(), DType::F32);
        // Visible biases that matter for the free energy's visible term.
        let nc = spec.visible_channels();
        layer.a = tensor_from(
            (0..nc).map(|i| 0.1 * i as f64 - 0.2).collect(),
            [nc],
            &dev(),
            DType::F32,
        );
        let [c, h, w] = spec.visible_shape();
        let batch = 20;
        let mut rng = ChaCha8Rng::seed_from_u64(40 + seed as u64);
        let v: Vec<f64> = (0..batch * c * h * w)
            .map(|_| rng.random_range(0.0..1.0) * scale)
            .collect();
        let v = tensor_from(v, [batch, c, h, w], &dev(), DType::F32);
        let (host, tensors) = mrbm_stage::in_pool(2, || {
            let host = layer.cd_grads(v.clone());
            let x = layer.pre_hidden(v.clone());
            let hm = hu.mean(x.clone());
            let v_rec = layer.down(hm.clone());
            let x_rec = layer.pre_hidden(v_rec.clone());
            let h_rec = hu.mean(x_rec.clone());
            let loss = (layer.free_energy_with_x(v.clone(), x)
                - layer.free_energy_with_x(v_rec.clone(), x_rec))
            .mean();
            let g = layer.stats_grads(v.clone(), hm.clone(), v_rec, h_rec);
            (host, (loss, g, hm))
        })
        .unwrap();
        let rel = |a: Vec<f64>, b: Vec<f64>| {
            assert_eq!(a.len(), b.len());
            let scale = b.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
            a.iter()
                .zip(&b)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
                / scale
        };
        let what = spec.describe();
        let errs = [
            rel(to_f64(&host.0), to_f64(&tensors.0)),
            rel(to_f64(&host.1.w), to_f64(&tensors.1.w)),
            rel(to_f64(&host.1.a), to_f64(&tensors.1.a)),
            rel(to_f64(&host.1.b), to_f64(&tensors.1.b)),
            rel(to_f64(&host.2), to_f64(&tensors.2)),
        ];
        println!("{what} {vu:?}: loss, w, a, b, h errors {errs:?}");
        assert!(errs.iter().all(|e| *e < 1e-4), "{what}: {errs:?}");
    }
}
