//! Device-generic model checks: each runs on any burn device and compares
//! with the naive f64 host reference ([`crate::reference`]) or with a
//! closed form, returning the largest error found. The unit tests call them
//! on flex; `mrbm devices --check` (issue 9) calls them on wgpu and cuda.

use burn::tensor::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::layer::{tensor_from, to_f64, LayerKind, LayerSpec, Rbm};
use crate::reference::{rel_error, HostRbm};
use crate::sample::{gibbs, Sampler};
use crate::stack::{Dbn, StackParams};
use crate::train::{
    Algorithm, GradientMode, Momentum, OptimParams, OptimizerKind, Reconstruction, Schedule,
    Trainer,
};
use crate::unit::UnitType;

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub name: String,
    /// Largest error found (relative unless the name says otherwise).
    pub max_error: f64,
    pub tolerance: f64,
    pub detail: String,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.max_error.is_finite() && self.max_error <= self.tolerance
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: max error {:.3e} (tolerance {:.1e}){}",
            if self.passed() { "ok  " } else { "FAIL" },
            self.name,
            self.max_error,
            self.tolerance,
            if self.detail.is_empty() {
                String::new()
            } else {
                format!(" -- {}", self.detail)
            }
        )
    }
}

/// Relative tolerance of the gradient, free-energy and adjoint checks: the
/// spec's 1e-5 in f64 and in f32 alike (f32 on flex errs by about 5e-7 on
/// these tiny layers).
pub fn grad_tolerance(_dtype: DType) -> f64 {
    1e-5
}

/// Tiny multinary layers with random weights and biases: dense 7-5, or a
/// conv 2x7x7 -> 3 channels, kernel 3, stride 2, padding 1 (odd size, so
/// the transposed convolution needs output padding).
pub fn tiny_spec(conv: bool, visible_unit: UnitType, hidden_unit: UnitType) -> LayerSpec {
    let kind = if conv {
        LayerKind::Conv {
            input: [2, 7, 7],
            out_channels: 3,
            kernel: 3,
            stride: 2,
            padding: 1,
        }
    } else {
        LayerKind::Dense {
            visible: 7,
            hidden: 5,
        }
    };
    LayerSpec {
        kind,
        visible_unit,
        hidden_unit,
    }
}

/// A layer with N(0, 0.3^2) weights and biases, from a seeded host RNG.
pub fn random_layer(spec: LayerSpec, seed: u64, device: &Device, dtype: DType) -> Rbm {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut r = Rbm::init(spec.clone(), 0.3, &mut rng, device, dtype);
    let a: Vec<f64> = (0..spec.visible_channels())
        .map(|_| rng.random_range(-0.5..0.5))
        .collect();
    let b: Vec<f64> = (0..spec.hidden_channels())
        .map(|_| rng.random_range(-0.5..0.5))
        .collect();
    r.a = tensor_from(a, [spec.visible_channels()], device, dtype);
    r.b = tensor_from(b, [spec.hidden_channels()], device, dtype);
    r
}

/// Random visible levels 0..=N for `batch` rows.
pub fn random_visible(spec: &LayerSpec, batch: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let len: usize = spec.visible_shape().iter().product();
    let n = spec.visible_unit.n;
    (0..batch)
        .map(|_| (0..len).map(|_| rng.random_range(0..=n) as f64).collect())
        .collect()
}

fn batch_tensor(spec: &LayerSpec, rows: &[Vec<f64>], device: &Device, dtype: DType) -> Tensor<4> {
    let [c, h, w] = spec.visible_shape();
    tensor_from(rows.concat(), [rows.len(), c, h, w], device, dtype)
}

fn units() -> (UnitType, UnitType) {
    (UnitType::new(3, 0.8), UnitType::new(2, 1.3))
}

/// The autodiff gradient of the loss equals minus the CD-1 mean-field
/// update (host f64 reference), and so does the closed-form gradient.
pub fn grad_equals_cd1(device: &Device, dtype: DType, conv: bool) -> CheckReport {
    let (vu, hu) = units();
    let spec = tiny_spec(conv, vu, hu);
    let layer = random_layer(spec.clone(), 11, device, dtype);
    let rows = random_visible(&spec, 4, 12);
    let host = HostRbm::from_rbm(&layer);
    let upd = host.cd1_update(&rows);
    let neg = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<_>>();
    // Autodiff.
    let ad = device.clone().autodiff();
    let tracked = layer.tracked();
    let v = batch_tensor(&spec, &rows, &ad, dtype);
    let out = tracked.loss(v);
    let grads = out.loss.backward();
    let gw = tracked
        .w
        .grad(&grads)
        .map(|g| to_f64(&g))
        .unwrap_or_default();
    let ga = tracked
        .a
        .grad(&grads)
        .map(|g| to_f64(&g))
        .unwrap_or_default();
    let gb = tracked
        .b
        .grad(&grads)
        .map(|g| to_f64(&g))
        .unwrap_or_default();
    let e_ad = rel_error(&gw, &neg(&upd.w))
        .max(rel_error(&ga, &neg(&upd.a)))
        .max(rel_error(&gb, &neg(&upd.b)));
    // Closed form.
    let (loss, g, _) = layer.cd_grads(batch_tensor(&spec, &rows, device, dtype));
    let e_cf = rel_error(&to_f64(&g.w), &neg(&upd.w))
        .max(rel_error(&to_f64(&g.a), &neg(&upd.a)))
        .max(rel_error(&to_f64(&g.b), &neg(&upd.b)));
    let host_loss = host.loss(&rows);
    let e_loss = (to_f64(&loss)[0] - host_loss).abs() / host_loss.abs().max(1.0);
    CheckReport {
        name: format!(
            "gradient = -CD-1 ({}, {:?})",
            if conv { "conv" } else { "dense" },
            dtype
        ),
        max_error: e_ad.max(e_cf).max(e_loss),
        tolerance: grad_tolerance(dtype),
        detail: format!("autodiff {e_ad:.2e}, closed form {e_cf:.2e}, loss {e_loss:.2e}"),
    }
}

/// The conv down pass is the adjoint of the up pass: <W v, h> = <v, W^T h>,
/// and both match the host reference.
pub fn conv_adjoint(device: &Device, dtype: DType) -> CheckReport {
    let (vu, hu) = units();
    let spec = tiny_spec(true, vu, hu);
    let layer = random_layer(spec.clone(), 21, device, dtype);
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let b = 3;
    let [vc, vh, vw] = spec.visible_shape();
    let [hc, hh, hw] = spec.hidden_shape();
    let v: Vec<f64> = (0..b * vc * vh * vw)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let h: Vec<f64> = (0..b * hc * hh * hw)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let wv = to_f64(&layer.apply_w(tensor_from(v.clone(), [b, vc, vh, vw], device, dtype)));
    let wth = to_f64(&layer.apply_wt(tensor_from(h.clone(), [b, hc, hh, hw], device, dtype)));
    let lhs: f64 = wv.iter().zip(&h).map(|(x, y)| x * y).sum();
    let rhs: f64 = v.iter().zip(&wth).map(|(x, y)| x * y).sum();
    let e_adj = (lhs - rhs).abs() / lhs.abs().max(rhs.abs()).max(1e-30);
    // Against the host loops (biases zeroed by apply_w / apply_wt).
    let mut host = HostRbm::from_rbm(&layer);
    host.a.iter_mut().for_each(|x| *x = 0.0);
    host.b.iter_mut().for_each(|x| *x = 0.0);
    let (vl, hl) = (vc * vh * vw, hc * hh * hw);
    let mut e_ref: f64 = 0.0;
    for i in 0..b {
        e_ref = e_ref.max(rel_error(
            &wv[i * hl..(i + 1) * hl],
            &host.pre_hidden(&v[i * vl..(i + 1) * vl]),
        ));
        e_ref = e_ref.max(rel_error(
            &wth[i * vl..(i + 1) * vl],
            &host.pre_visible(&h[i * hl..(i + 1) * hl]),
        ));
    }
    CheckReport {
        name: format!("conv adjoint <Wv,h> = <v,W^T h> ({dtype:?})"),
        max_error: e_adj.max(e_ref),
        tolerance: grad_tolerance(dtype),
        detail: format!("adjoint {e_adj:.2e}, vs host {e_ref:.2e}"),
    }
}

/// The free energy on the device matches the host reference.
pub fn free_energy_matches_host(device: &Device, dtype: DType, conv: bool) -> CheckReport {
    let (vu, hu) = units();
    let spec = tiny_spec(conv, vu, hu);
    let layer = random_layer(spec.clone(), 31, device, dtype);
    let rows = random_visible(&spec, 5, 32);
    let host = HostRbm::from_rbm(&layer);
    let f = to_f64(&layer.free_energy(batch_tensor(&spec, &rows, device, dtype)));
    let r: Vec<f64> = rows.iter().map(|v| host.free_energy(v)).collect();
    CheckReport {
        name: format!(
            "free energy vs host ({}, {dtype:?})",
            if conv { "conv" } else { "dense" }
        ),
        max_error: rel_error(&f, &r),
        tolerance: grad_tolerance(dtype),
        detail: String::new(),
    }
}

/// A small conv+dense stack and a fixed batch of toy images.
fn toy_stack(device: &Device, dtype: DType, n: u32) -> (Dbn, Vec<u8>, usize) {
    let params = StackParams {
        conv_channels: vec![4],
        dense: vec![6],
        n,
        ..StackParams::default()
    };
    let spec = params.build_spec([3, 8, 8]).expect("toy spec");
    let dbn = Dbn::init(spec, 0.05, 5, device, dtype);
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let count = 16;
    // Two kinds of images: bright top half or bright left half, plus noise.
    let mut px = Vec::with_capacity(count * 3 * 64);
    for i in 0..count {
        for _c in 0..3 {
            for y in 0..8 {
                for x in 0..8 {
                    let on = if i % 2 == 0 { y < 4 } else { x < 4 };
                    let base: i32 = if on { 220 } else { 30 };
                    px.push((base + rng.random_range(-20..=20)).clamp(0, 255) as u8);
                }
            }
        }
    }
    (dbn, px, count)
}

/// A few Adam steps on a fixed batch lower the loss, with both gradient
/// modes, and the two modes agree on the first loss.
pub fn training_lowers_loss(device: &Device, dtype: DType) -> CheckReport {
    let mut worst: f64 = 0.0;
    let mut detail = Vec::new();
    let mut first_losses = Vec::new();
    for mode in [GradientMode::ClosedForm, GradientMode::Autodiff] {
        let (dbn, px, count) = toy_stack(device, dtype, 1);
        let v = dbn.pixels_to_visible(&px, count, device, dtype);
        let params = OptimParams {
            lr: 0.01,
            gradient: mode,
            ..OptimParams::default()
        };
        let mut tr = Trainer::new(dbn, params);
        let mut losses = Vec::new();
        for s in 0..25 {
            match tr.step(v.clone(), 1, s + 1) {
                Ok(l) => losses.push(l.iter().sum::<f64>()),
                Err(e) => {
                    return CheckReport {
                        name: "training lowers the loss".into(),
                        max_error: f64::INFINITY,
                        tolerance: 1.0,
                        detail: e.to_string(),
                    }
                }
            }
        }
        // Ratio of the final loss to the first: below 1 means it went down.
        let (l0, l1) = (losses[0], *losses.last().unwrap_or(&f64::INFINITY));
        let ratio = if l0 > 0.0 { l1 / l0 } else { f64::INFINITY };
        worst = worst.max(ratio);
        first_losses.push(l0);
        detail.push(format!("{mode:?}: {l0:.4} -> {l1:.4}"));
    }
    let agree = (first_losses[0] - first_losses[1]).abs() / first_losses[0].abs().max(1e-12);
    detail.push(format!("modes agree to {agree:.1e}"));
    CheckReport {
        name: format!("a few Adam steps lower the loss ({dtype:?})"),
        // Must fall below 0.9 of the start and the modes must agree.
        max_error: if agree < 1e-3 { worst } else { f64::INFINITY },
        tolerance: 0.9,
        detail: detail.join("; "),
    }
}

/// Gibbs sampling returns the right shape, values in the visible range,
/// and is repeatable for a seed; for N = 1 and N = 5, both samplers.
pub fn sampling_shapes_and_ranges(device: &Device, dtype: DType) -> CheckReport {
    let mut bad = Vec::new();
    for n in [1u32, 5] {
        for sampler in [Sampler::Exact, Sampler::Gaussian] {
            let (dbn, _, _) = toy_stack(device, dtype, n);
            let a = gibbs(&dbn, 3, 4, sampler, 9, |_| true);
            let b = gibbs(&dbn, 3, 4, sampler, 9, |_| true);
            if a.dims() != [3, 3, 8, 8] {
                bad.push(format!("N={n} {sampler:?}: shape {:?}", a.dims()));
            }
            let va = to_f64(&a);
            let top = n as f64 + 1e-9;
            if va
                .iter()
                .any(|x| !(x.is_finite() && *x >= -1e-9 && *x <= top))
            {
                bad.push(format!("N={n} {sampler:?}: values outside [0, {n}]"));
            }
            if va != to_f64(&b) {
                bad.push(format!("N={n} {sampler:?}: not repeatable for a seed"));
            }
        }
    }
    CheckReport {
        name: format!("sampling shapes, ranges, repeatability ({dtype:?})"),
        max_error: bad.len() as f64,
        tolerance: 0.0,
        detail: bad.join("; "),
    }
}

/// Saving and loading a checkpoint gives bit-identical outputs.
pub fn checkpoint_round_trip(device: &Device) -> CheckReport {
    let (dbn, px, count) = toy_stack(device, DType::F32, 1);
    let dir = std::env::temp_dir().join(format!(
        "mrbm-ckpt-check-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| -> Result<f64, String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join("model.safetensors");
        crate::checkpoint::save(&dbn, &path).map_err(|e| e.to_string())?;
        let back = crate::checkpoint::load(&path, device).map_err(|e| e.to_string())?;
        if back.spec != dbn.spec {
            return Err("spec differs after loading".into());
        }
        let v = dbn.pixels_to_visible(&px, count, device, DType::F32);
        let bits = |t: Tensor<4>| -> Vec<u32> {
            t.to_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        let depth = dbn.layers.len();
        let same_up =
            bits(dbn.up_to(v.clone(), depth - 1)) == bits(back.up_to(v.clone(), depth - 1));
        let same_rec = bits(dbn.reconstruct(v.clone(), depth)) == bits(back.reconstruct(v, depth));
        Ok(if same_up && same_rec { 0.0 } else { 1.0 })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(e) => CheckReport {
            name: "checkpoint round trip is bit-identical".into(),
            max_error: e,
            tolerance: 0.0,
            detail: String::new(),
        },
        Err(m) => CheckReport {
            name: "checkpoint round trip is bit-identical".into(),
            max_error: f64::INFINITY,
            tolerance: 0.0,
            detail: m,
        },
    }
}

/// The toolbox's update rules (sampled paper reconstruction, CD-2, PCD,
/// FPCD; Adam and SGD with momentum and weight decay; the greedy schedule)
/// run a few steps on the device, for binary and multinary units: losses
/// and parameters stay finite, every layer's weights move, and they stay
/// on the device.
pub fn toolbox_rules_run(device: &Device, dtype: DType) -> CheckReport {
    let mut bad = Vec::new();
    let mut runs = 0;
    let rules = [
        (Algorithm::Paper, Reconstruction::Sample, 1),
        (Algorithm::Cd, Reconstruction::Mean, 2),
        (Algorithm::Pcd, Reconstruction::Mean, 1),
        (Algorithm::Fpcd, Reconstruction::Mean, 1),
    ];
    for n in [1u32, 5] {
        for (algorithm, reconstruction, cd_k) in rules {
            for (optimizer, schedule) in [
                (OptimizerKind::Adam, Schedule::Joint),
                (OptimizerKind::Sgd, Schedule::Greedy),
            ] {
                runs += 1;
                let (dbn, px, count) = toy_stack(device, dtype, n);
                let before: Vec<Vec<f64>> = dbn.layers.iter().map(|l| to_f64(&l.w)).collect();
                let v = dbn.pixels_to_visible(&px, count, device, dtype);
                let params = OptimParams {
                    lr: 0.01,
                    algorithm,
                    reconstruction,
                    cd_k,
                    optimizer,
                    momentum: Momentum::Constant(0.5),
                    weight_decay: 1e-4,
                    ..OptimParams::default()
                };
                let what = format!(
                    "N={n} {algorithm:?}/{reconstruction:?} k={cd_k} {optimizer:?} {schedule:?}"
                );
                let mut tr = Trainer::new(dbn, params);
                let layers = tr.dbn.layers.len();
                let phases: Vec<Option<usize>> = match schedule {
                    Schedule::Joint => vec![None],
                    Schedule::Greedy => (0..layers).map(Some).collect(),
                };
                for active in phases {
                    tr.active = active;
                    for s in 0..3 {
                        if let Err(e) = tr.step(v.clone(), 1, s + 1) {
                            bad.push(format!("{what}: {e}"));
                        }
                    }
                }
                for (i, l) in tr.dbn.layers.iter().enumerate() {
                    if l.w.device() != *device {
                        bad.push(format!("{what}: layer {} left the device", i + 1));
                    }
                    let layer = format!("{what}: layer {}", i + 1);
                    finite_and_moved(&mut bad, &layer, &before[i], &to_f64(&l.w));
                }
            }
        }
    }
    problems_report(
        format!("toolbox update rules run ({dtype:?})"),
        bad,
        format!("{runs} rule/optimiser/schedule combinations"),
    )
}

/// `what` (a parameter after some training steps) must be finite and must
/// differ from `before`; each failure is one entry of `bad`.
fn finite_and_moved(bad: &mut Vec<String>, what: &str, before: &[f64], after: &[f64]) {
    if after.iter().any(|x| !x.is_finite()) {
        bad.push(format!("{what} not finite"));
    }
    if after == before {
        bad.push(format!("{what} did not move"));
    }
}

/// A check that passes when `bad` (its problems) is empty, with the detail
/// `ok` then, and the problems otherwise.
fn problems_report(name: String, bad: Vec<String>, ok: String) -> CheckReport {
    CheckReport {
        name,
        max_error: bad.len() as f64,
        tolerance: 0.5,
        detail: if bad.is_empty() { ok } else { bad.join("; ") },
    }
}

/// Gaussian pixel units with a learned sigma on `device`: the layer's
/// gradient (log sigma included) agrees with the same layer in f64 on the
/// CPU, and every training rule with either optimiser moves log sigma and
/// keeps it finite and on the device.
pub fn learned_sigma_run(device: &Device, dtype: DType) -> CheckReport {
    let params = StackParams {
        conv_channels: vec![4],
        dense: vec![6],
        visible: crate::stack::VisibleKind::Gaussian,
        ..StackParams::default()
    };
    let mut spec = params.build_spec([3, 8, 8]).expect("toy spec");
    spec.visible_scale = 1.0 / 80.0;
    spec.visible_offset = 1.5;
    let (_, px, count) = toy_stack(device, dtype, 1);
    let with_sigma = |device: &Device, dtype: DType| {
        let mut dbn = Dbn::init(spec.clone(), 0.05, 5, device, dtype);
        let z: Vec<f64> = (0..3).map(|i| 0.3 - 0.25 * i as f64).collect();
        dbn.layers[0].log_sigma = Some(tensor_from(z, [3], device, dtype));
        dbn
    };
    let mut bad = Vec::new();
    // Gradient against the CPU in f64.
    let grads = |device: &Device, dtype: DType| {
        let dbn = with_sigma(device, dtype);
        let l = &dbn.layers[0];
        let v = dbn.pixels_to_visible(&px, count, device, dtype);
        let v_neg = l.down(l.up(v.clone()));
        let g = l.stats_grads(v.clone(), l.up(v), v_neg.clone(), l.up(v_neg));
        (
            to_f64(g.log_sigma.as_ref().expect("sigma gradient")),
            to_f64(&g.w),
            to_f64(&g.a),
        )
    };
    let cpu = grads(&Device::flex(), DType::F64);
    let dev = grads(device, dtype);
    let mut worst: f64 = 0.0;
    for (x, y) in [(&cpu.0, &dev.0), (&cpu.1, &dev.1), (&cpu.2, &dev.2)] {
        worst = worst.max(rel_error(x, y));
    }
    let tol = if dtype == DType::F64 { 1e-9 } else { 2e-3 };
    if worst.is_nan() || worst > tol {
        bad.push(format!("gradient differs from the CPU's by {worst:.3e}"));
    }
    let mut runs = 0;
    for algorithm in [
        Algorithm::Paper,
        Algorithm::Cd,
        Algorithm::Pcd,
        Algorithm::Fpcd,
    ] {
        for optimizer in [OptimizerKind::Adam, OptimizerKind::Sgd] {
            runs += 1;
            let dbn = with_sigma(device, dtype);
            let before = to_f64(dbn.layers[0].log_sigma.as_ref().expect("sigma"));
            let v = dbn.pixels_to_visible(&px, count, device, dtype);
            let mut tr = Trainer::new(
                dbn,
                OptimParams {
                    lr: 0.01,
                    algorithm,
                    reconstruction: Reconstruction::Sample,
                    optimizer,
                    momentum: Momentum::Constant(0.5),
                    ..OptimParams::default()
                },
            );
            let what = format!("{algorithm:?} {optimizer:?}");
            for s in 0..3 {
                if let Err(e) = tr.step(v.clone(), 1, s + 1) {
                    bad.push(format!("{what}: {e}"));
                }
            }
            let z = tr.dbn.layers[0].log_sigma.as_ref().expect("sigma");
            if z.device() != *device {
                bad.push(format!("{what}: log sigma left the device"));
            }
            let sigma = format!("{what}: log sigma");
            finite_and_moved(&mut bad, &sigma, &before, &to_f64(z));
        }
    }
    problems_report(
        format!("learned sigma: gradient and rules ({dtype:?})"),
        bad,
        format!("gradient within {worst:.1e} of the CPU's; {runs} rule/optimiser runs"),
    )
}

/// Every device check, in f32 (and f64 where the device supports it).
pub fn run_all(device: &Device, with_f64: bool) -> Vec<CheckReport> {
    let mut dtypes = vec![DType::F32];
    if with_f64 {
        dtypes.push(DType::F64);
    }
    let mut out = Vec::new();
    for &dt in &dtypes {
        out.push(free_energy_matches_host(device, dt, false));
        out.push(free_energy_matches_host(device, dt, true));
        out.push(grad_equals_cd1(device, dt, false));
        out.push(grad_equals_cd1(device, dt, true));
        out.push(conv_adjoint(device, dt));
    }
    out.push(training_lowers_loss(device, DType::F32));
    out.push(toolbox_rules_run(device, DType::F32));
    out.push(learned_sigma_run(device, DType::F32));
    out.push(sampling_shapes_and_ranges(device, DType::F32));
    out.push(checkpoint_round_trip(device));
    out
}
