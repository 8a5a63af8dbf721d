//! The Gaussian-Bernoulli RBM of Liao et al. 2022 (`langevin`): the
//! Gibbs-Langevin chains' stationary distribution against the exact
//! Gaussian mixture of a tiny model, the energy gradients and the training
//! gradient against finite differences, gradient clipping, determinism, and
//! the rule and sampler through the `train` and `sample` stages.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device};
use mrbm_core::langevin::{
    clip_grads, grad_norm, Acceptance, HostGrbm, LangevinGradient, LangevinParams,
};
use mrbm_core::layer::{tensor_from, to_f64, LayerGrads, LayerKind, LayerSpec, Rbm};
use mrbm_core::unit::UnitType;
use mrbm_data::artifact::ImageSet;
use mrbm_stage::{DeviceId, Metrics, StageError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A small GRBM with well-separated but overlapping mixture components.
fn tiny() -> HostGrbm {
    HostGrbm {
        d: 2,
        h: 3,
        w: vec![1.2, -0.8, 0.5, 0.3, 1.0, -1.1],
        a: vec![0.2, -0.4],
        b: vec![-0.5, 0.3, 0.1],
        sigma: vec![0.7, 1.3],
    }
}

/// The exact distribution of the tiny model: p(h) over the 2^H hidden
/// states and E[v], E[v_i v_j]. With this energy, v | h ~ N(a + sigma W h,
/// sigma^2) and p(h) is proportional to exp(b.h + (a / sigma).(W h) + |W h|^2 / 2).
fn exact(m: &HostGrbm) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (d, h) = (m.d, m.h);
    let mut logp = Vec::new();
    let mut means = Vec::new();
    for s in 0..(1usize << h) {
        let hs: Vec<f64> = (0..h).map(|j| ((s >> j) & 1) as f64).collect();
        let c: Vec<f64> = (0..d)
            .map(|i| (0..h).map(|j| m.w[i * h + j] as f64 * hs[j]).sum())
            .collect();
        let mut lp: f64 = (0..h).map(|j| m.b[j] as f64 * hs[j]).sum();
        for ((a, sg), c) in m.a.iter().zip(&m.sigma).zip(&c) {
            lp += *a as f64 / *sg as f64 * c + 0.5 * c * c;
        }
        logp.push(lp);
        means.push(
            (0..d)
                .map(|i| m.a[i] as f64 + m.sigma[i] as f64 * c[i])
                .collect::<Vec<f64>>(),
        );
    }
    let mx = logp.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = logp.iter().map(|l| (l - mx).exp()).sum();
    let p: Vec<f64> = logp.iter().map(|l| (l - mx).exp() / z).collect();
    let mut ev = vec![0.0; d];
    let mut evv = vec![0.0; d * d];
    for (ph, mu) in p.iter().zip(&means) {
        for i in 0..d {
            ev[i] += ph * mu[i];
            for j in 0..d {
                let cov = if i == j {
                    (m.sigma[i] as f64).powi(2)
                } else {
                    0.0
                };
                evv[i * d + j] += ph * (mu[i] * mu[j] + cov);
            }
        }
    }
    (p, ev, evv)
}

/// Run `chains` noise-started chains for `steps`; the final v and the last h.
fn run(
    m: &HostGrbm,
    p: &LangevinParams,
    chains: usize,
    steps: usize,
    seed: u64,
) -> (Vec<f32>, Vec<f32>, Acceptance) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = mrbm_core::langevin::noise(chains, m.d, &mut rng);
    let mut acc = Acceptance::default();
    let h = m
        .run_chains((&mut v, chains), steps, p, &mut rng, &mut acc, |_| true)
        .unwrap();
    (v, h, acc)
}

/// Largest deviation of the chains' moments from the exact ones, in
/// standard errors (first and second moments of v), and the chi-square
/// statistic of the last h's states against p(h) with its degrees of freedom.
fn deviations(m: &HostGrbm, v: &[f32], h: &[f32], n: usize) -> (f64, f64, usize) {
    let (p, ev, evv) = exact(m);
    let d = m.d;
    let mut worst: f64 = 0.0;
    // E[v_i] and E[v_i v_j], each with the sample's own standard error.
    let mut stats: Vec<(Vec<f64>, f64)> = (0..d)
        .map(|i| ((0..n).map(|c| v[c * d + i] as f64).collect(), ev[i]))
        .collect();
    for i in 0..d {
        for j in i..d {
            stats.push((
                (0..n)
                    .map(|c| v[c * d + i] as f64 * v[c * d + j] as f64)
                    .collect(),
                evv[i * d + j],
            ));
        }
    }
    for (xs, want) in stats {
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se = (var / n as f64).sqrt();
        worst = worst.max((mean - want).abs() / se);
    }
    let mut counts = vec![0u64; p.len()];
    for c in 0..n {
        let s: usize = (0..m.h).map(|j| (h[c * m.h + j] as usize) << j).sum();
        counts[s] += 1;
    }
    let (chi, dof) = mrbm_core::sample::chi_square(&counts, &p);
    (worst, chi, dof)
}

/// With the Metropolis adjustment, the chains sample the model exactly:
/// v's first and second moments match the Gaussian mixture's, and the
/// hidden states drawn at stationarity follow p(h), for the conditional
/// and the marginal gradient alike.
#[test]
fn adjusted_chains_sample_the_exact_mixture() {
    let m = tiny();
    let n = 20_000;
    for gradient in [LangevinGradient::Conditional, LangevinGradient::Marginal] {
        let p = LangevinParams {
            steps: 3,
            step_size: 0.5,
            adjust: true,
            gradient,
            clip_norm: None,
        };
        let (v, h, acc) = run(&m, &p, n, 60, 7);
        let (worst, chi, dof) = deviations(&m, &v, &h, n);
        // chi-square with 7 dof: the 99.99 % quantile is about 27.9.
        assert!(worst < 4.5, "{gradient:?}: a moment {worst:.2} SE off");
        assert!(chi < 28.0, "{gradient:?}: chi2 {chi:.1} on {dof} dof");
        let rate = acc.rate();
        assert!(
            (0.3..1.0).contains(&rate),
            "{gradient:?}: acceptance {rate}"
        );
    }
}

/// The same check fails for a chain that is known to be wrong: unadjusted
/// Langevin with a large step overestimates the variance (for the
/// conditional Gaussian, by 1 / (1 - step / 2): 2x at step 1), so the test
/// above can fail.
#[test]
fn unadjusted_large_steps_are_detected_as_biased() {
    let m = tiny();
    let n = 20_000;
    let p = LangevinParams {
        steps: 3,
        step_size: 1.0,
        adjust: false,
        gradient: LangevinGradient::Conditional,
        clip_norm: None,
    };
    let (v, h, acc) = run(&m, &p, n, 60, 7);
    assert_eq!(
        acc.proposed, 0,
        "unadjusted chains propose nothing to accept"
    );
    let (worst, _, _) = deviations(&m, &v, &h, n);
    assert!(worst > 10.0, "biased chains went unnoticed ({worst:.2} SE)");
    // A small unadjusted step is close (bias O(step)): within a looser bound.
    let p = LangevinParams {
        step_size: 0.02,
        steps: 50,
        ..p
    };
    let (v, h, _) = run(&m, &p, n, 40, 8);
    let (_, chi, _) = deviations(&m, &v, &h, n);
    assert!(chi < 40.0, "chi2 {chi:.1}");
}

/// grad_v F(v) (the marginal Langevin drift) against central differences
/// of the free energy, and the conditional drift (v - E[v | h]) / sigma^2
/// against differences of the joint energy E(v, h).
#[test]
fn energy_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (d, h) = (5, 4);
    let m = HostGrbm {
        d,
        h,
        w: (0..d * h).map(|_| rng.random::<f32>() - 0.5).collect(),
        a: (0..d).map(|_| rng.random::<f32>() - 0.5).collect(),
        b: (0..h).map(|_| rng.random::<f32>() - 0.5).collect(),
        sigma: (0..d).map(|_| 0.5 + rng.random::<f32>()).collect(),
    };
    let v: Vec<f32> = (0..d).map(|_| 2.0 * rng.random::<f32>() - 1.0).collect();
    let hs: Vec<f32> = (0..h).map(|j| (j % 2) as f32).collect();
    let f = |v: &[f32]| m.free_energy_with_x(v, &m.hidden_input(v, 1));
    let (g, _) = m.free_energy_grad(&v, 1);
    let mean = m.visible_mean(&hs, 1);
    let eps = 1e-2f32;
    for i in 0..d {
        let (mut up, mut dn) = (v.clone(), v.clone());
        up[i] += eps;
        dn[i] -= eps;
        let num = (f(&up) - f(&dn)) / (2.0 * eps as f64);
        assert!(
            (num - g[i] as f64).abs() < 2e-3,
            "dF/dv{i}: {num} vs {}",
            g[i]
        );
        let num_e = (m.energy(&up, &hs) - m.energy(&dn, &hs)) / (2.0 * eps as f64);
        let drift = (v[i] - mean[i]) as f64 / (m.sigma[i] as f64).powi(2);
        assert!((num_e - drift).abs() < 2e-3, "dE/dv{i}: {num_e} vs {drift}");
    }
}

fn dense_grbm(d: usize, h: usize, seed: u64, dtype: DType) -> Rbm {
    let spec = LayerSpec {
        kind: LayerKind::Dense {
            visible: d,
            hidden: h,
        },
        visible_unit: UnitType::gaussian(),
        hidden_unit: UnitType::new(1, 1.0),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dev = Device::flex();
    let mut r = Rbm::init(spec, 0.5, &mut rng, &dev, dtype);
    let u = |rng: &mut ChaCha8Rng, n: usize, s: f64| -> Vec<f64> {
        (0..n).map(|_| (rng.random::<f64>() - 0.5) * s).collect()
    };
    r.a = tensor_from(u(&mut rng, d, 1.0), [d], &dev, dtype);
    r.b = tensor_from(u(&mut rng, h, 1.0), [h], &dev, dtype);
    r.log_sigma = Some(tensor_from(u(&mut rng, d, 0.8), [d], &dev, dtype));
    r
}

/// F(v) of one row in f64 from the parameters: the reference the training
/// gradient is differenced against.
fn free_energy_f64(w: &[f64], a: &[f64], b: &[f64], z: &[f64], v: &[f64]) -> f64 {
    let (d, h) = (a.len(), b.len());
    let mut f = 0.0;
    for ((v, a), z) in v.iter().zip(a).zip(z) {
        let r = (v - a) / z.exp();
        f += 0.5 * r * r;
    }
    for j in 0..h {
        let x = b[j]
            + (0..d)
                .map(|i| v[i] / z[i].exp() * w[i * h + j])
                .sum::<f64>();
        f -= mrbm_core::unit::softplus_f64(x);
    }
    f
}

/// The training rule's gradient (the statistics of the data and of the
/// noise-started chains, with the learned log sigma) is the gradient of
/// mean F(v) - mean F(v_neg) with v_neg held fixed: checked against central
/// differences in every parameter, log sigma included.
#[test]
fn training_gradient_matches_finite_differences_of_the_free_energy() {
    let (d, h, n) = (4, 3, 6);
    let layer = dense_grbm(d, h, 11, DType::F64);
    let dev = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let vals: Vec<f64> = (0..n * d)
        .map(|_| rng.random::<f64>() * 2.0 - 1.0)
        .collect();
    let v = tensor_from(vals.clone(), [n, d, 1, 1], &dev, DType::F64);
    let p = LangevinParams::default();
    let v_neg = mrbm_core::langevin::noise_start_negative(&layer, &v, 3, &p, &mut rng).unwrap();
    assert_eq!(v_neg.dims(), [n, d, 1, 1]);
    let neg = to_f64(&v_neg);
    let hm = |t| layer.up(t);
    let g = layer.stats_grads(v.clone(), hm(v.clone()), v_neg.clone(), hm(v_neg.clone()));
    let (w, a, b, z) = (
        to_f64(&layer.w),
        to_f64(&layer.a),
        to_f64(&layer.b),
        to_f64(layer.log_sigma.as_ref().unwrap()),
    );
    let loss = |w: &[f64], a: &[f64], b: &[f64], z: &[f64]| {
        let mean = |x: &[f64]| {
            x.chunks(d)
                .map(|r| free_energy_f64(w, a, b, z, r))
                .sum::<f64>()
                / n as f64
        };
        mean(&vals) - mean(&neg)
    };
    let eps = 1e-5;
    let check = |name: &str, analytic: Vec<f64>, which: usize| {
        for (k, &g_k) in analytic.iter().enumerate() {
            let mut ps = [w.clone(), a.clone(), b.clone(), z.clone()];
            ps[which][k] += eps;
            let up = loss(&ps[0], &ps[1], &ps[2], &ps[3]);
            ps[which][k] -= 2.0 * eps;
            let dn = loss(&ps[0], &ps[1], &ps[2], &ps[3]);
            let num = (up - dn) / (2.0 * eps);
            assert!(
                (num - g_k).abs() < 1e-6 * (1.0 + num.abs()),
                "{name}[{k}]: finite difference {num}, rule {g_k}"
            );
        }
    };
    check("W", to_f64(&g.w), 0);
    check("a", to_f64(&g.a), 1);
    check("b", to_f64(&g.b), 2);
    check("log sigma", to_f64(g.log_sigma.as_ref().unwrap()), 3);
}

/// Clipping rescales a long gradient to the bound (same direction), and
/// leaves a short one, or any with no bound, unchanged.
#[test]
fn clipping_bounds_the_gradient_norm() {
    let dev = Device::flex();
    let t = |v: Vec<f64>| tensor_from(v.clone(), [v.len()], &dev, DType::F64);
    let g = LayerGrads {
        w: tensor_from(vec![3.0, 0.0, 0.0, 0.0], [2, 2, 1, 1], &dev, DType::F64),
        a: t(vec![0.0, 4.0]),
        b: t(vec![0.0]),
        log_sigma: Some(t(vec![0.0, 0.0])),
    };
    assert!((grad_norm(&g) - 5.0).abs() < 1e-12);
    let c = clip_grads(g.clone(), Some(1.0));
    assert!((grad_norm(&c) - 1.0).abs() < 1e-12);
    assert!((to_f64(&c.w)[0] - 0.6).abs() < 1e-12);
    assert!((to_f64(&c.a)[1] - 0.8).abs() < 1e-12);
    let same = clip_grads(g.clone(), Some(10.0));
    assert_eq!(to_f64(&same.w), to_f64(&g.w));
    assert_eq!(to_f64(&same.a), to_f64(&g.a));
    let none = clip_grads(g.clone(), None);
    assert_eq!(to_f64(&none.a), to_f64(&g.a));
    // The log sigma part counts and is scaled too.
    let g2 = LayerGrads {
        log_sigma: Some(t(vec![0.0, 12.0])),
        ..g
    };
    assert!((grad_norm(&g2) - 13.0).abs() < 1e-12);
    let c2 = clip_grads(g2, Some(1.3));
    assert!((to_f64(c2.log_sigma.as_ref().unwrap())[1] - 1.2).abs() < 1e-12);
}

/// A seed fixes the chains exactly, whatever the number of threads; another
/// seed gives other chains.
#[test]
fn chains_are_deterministic_for_a_seed() {
    let layer = dense_grbm(12, 5, 2, DType::F32);
    let m = HostGrbm::from_rbm(&layer).unwrap();
    for gradient in [LangevinGradient::Conditional, LangevinGradient::Marginal] {
        let p = LangevinParams {
            gradient,
            ..Default::default()
        };
        let go = |threads: usize, seed: u64| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| run(&m, &p, 9, 7, seed))
        };
        let (v1, h1, a1) = go(1, 4);
        let (v2, h2, a2) = go(2, 4);
        assert_eq!(v1, v2, "{gradient:?}");
        assert_eq!(h1, h2);
        assert_eq!(a1, a2);
        let (v3, _, _) = go(2, 5);
        assert_ne!(v1, v3);
    }
}

/// A layer the sampler cannot run gives a clear error, not a panic.
#[test]
fn non_grbm_layers_are_refused() {
    let spec = LayerSpec {
        kind: LayerKind::Dense {
            visible: 4,
            hidden: 2,
        },
        visible_unit: UnitType::new(1, 1.0),
        hidden_unit: UnitType::new(1, 1.0),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let r = Rbm::init(spec, 0.1, &mut rng, &Device::flex(), DType::F32);
    let e = HostGrbm::from_rbm(&r).unwrap_err();
    assert!(e.to_string().contains("Gaussian visible"), "{e}");
}

// ------------------------------------------------------------ the stages

fn stage_run(
    kind: &str,
    params: &str,
    inputs: &[(&str, PathBuf)],
    out: &Path,
) -> Result<Metrics, StageError> {
    let s = mrbm_core::stages()
        .into_iter()
        .find(|s| s.kind() == kind)
        .unwrap();
    let device = mrbm_device::choose(DeviceId::Cpu).map_err(StageError::User)?;
    let raw: toml::Table = toml::from_str(params).unwrap();
    let canon = s
        .params(&raw)
        .map_err(|e| StageError::User(e.to_string()))?;
    let inputs: Vec<(&str, &Path)> = inputs.iter().map(|(k, v)| (*k, v.as_path())).collect();
    mrbm_stage::run_detached(&*s, &canon, &inputs, out, &device)
}

/// Two kinds of 4x4 grey images: a bright left half or a bright right half.
fn halves(dir: &Path) -> PathBuf {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (n, h, w) = (200, 4, 4);
    let mut px = Vec::new();
    for i in 0..n {
        for _ in 0..h {
            for x in 0..w {
                let on = (x < 2) == (i % 2 == 0);
                let base: f64 = if on { 200.0 } else { 40.0 };
                px.push((base + rng.random::<f64>() * 30.0) as u8);
            }
        }
    }
    let set = ImageSet::new(px, n, 1, h, w, (0..n as i64).map(|i| i % 2).collect());
    let p = dir.join("data.safetensors");
    set.write(&p).unwrap();
    p
}

const RULE: &str = "conv_channels = []\ndense = [8]\nvisible = \"gaussian\"\nlearn_sigma = true\nalgorithm = \"gibbs_langevin\"\ncd_k = 10\nepochs = 15\nbatch_size = 20\nlr = 0.01\ninit_std = 0.1\nseed = 3\nlangevin = { steps = 3, step_size = 0.2, clip_norm = 10.0 }";

/// `algorithm = "gibbs_langevin"` trains through the `train` stage, the
/// model samples through `sampler = "gibbs_langevin"` from noise to both
/// kinds of image (bright left and bright right halves), the same seed
/// gives the same bytes, and the misuses are clear errors.
#[test]
fn gibbs_langevin_through_train_and_sample() {
    let dir = tempfile::tempdir().unwrap();
    let data = halves(dir.path());
    let train = |params: &str, out: &str| {
        stage_run(
            "train",
            params,
            &[("data", data.clone())],
            &dir.path().join(out),
        )
    };
    let m = train(RULE, "t").unwrap();
    assert!(m["final_loss"].is_finite(), "{m:?}");
    let sample = |model: &str, params: &str, out: &str| {
        let inputs = [
            ("model", dir.path().join(model)),
            ("reference", data.clone()),
        ];
        let m = stage_run("sample", params, &inputs, &dir.path().join(out))?;
        let s = ImageSet::read(&dir.path().join(out).join("samples.safetensors")).unwrap();
        Ok::<_, StageError>((m, s))
    };
    let params = "sampler = \"gibbs_langevin\"\nsteps = 50\nchains = 40\nseed = 1\nlangevin = { steps = 5, step_size = 0.2 }";
    let (m, s) = sample("t", params, "s1").unwrap();
    assert!((0.1..=1.0).contains(&m["acceptance"]), "{m:?}");
    // Each sample: which half is brighter; both kinds drawn, with contrast.
    let (mut left, mut right) = (0, 0);
    for i in 0..s.n {
        let img = s.image(i);
        let l: f64 = (0..16).filter(|p| p % 4 < 2).map(|p| img[p] as f64).sum();
        let r: f64 = (0..16).filter(|p| p % 4 >= 2).map(|p| img[p] as f64).sum();
        if l > r + 8.0 * 60.0 {
            left += 1;
        } else if r > l + 8.0 * 60.0 {
            right += 1;
        }
    }
    assert!(
        left >= 8 && right >= 8 && left + right >= 32,
        "left {left}, right {right} of {}",
        s.n
    );
    let (_, again) = sample("t", params, "s2").unwrap();
    assert_eq!(s.pixels(), again.pixels());
    // The same training seed: the same model, byte for byte.
    train(RULE, "t2").unwrap();
    let read = |p: &str| std::fs::read(dir.path().join(p).join("model.safetensors")).unwrap();
    assert_eq!(read("t"), read("t2"));
    // Misuses.
    for (bad, key) in [
        (
            RULE.replace("visible = \"gaussian\"\nlearn_sigma = true\n", ""),
            "gaussian",
        ),
        (
            RULE.replace("dense = [8]", "dense = [8, 4]"),
            "one dense RBM",
        ),
        (
            RULE.replace("conv_channels = []", "conv_channels = [4]"),
            "one dense RBM",
        ),
        (format!("{RULE}\nn_hidden = 3"), "binary hidden"),
        (RULE.replace("gibbs_langevin", "cd"), "langevin table"),
        (
            RULE.replace("step_size = 0.2", "step_size = -1"),
            "step_size",
        ),
    ] {
        let e = train(&bad, "bad").unwrap_err();
        assert!(
            e.is_user_error() && e.to_string().contains(key),
            "{key}: {e}"
        );
    }
    for (bad, key) in [
        ("langevin = { steps = 2 }".to_string(), "langevin table"),
        (format!("{params}\nanneal_steps = 10"), "no annealed start"),
        (
            params.replace("step_size = 0.2", "clip_norm = 1.0"),
            "training setting",
        ),
    ] {
        let e = sample("t", &bad, "bad_s").unwrap_err();
        assert!(
            e.is_user_error() && e.to_string().contains(key),
            "{key}: {e}"
        );
    }
}

/// The new keys leave every existing key unchanged at their defaults.
#[test]
fn defaults_leave_keys_unchanged() {
    let canon = |kind: &str, text: &str| {
        let s = mrbm_core::stages()
            .into_iter()
            .find(|s| s.kind() == kind)
            .unwrap();
        s.params(&toml::from_str(text).unwrap()).unwrap()
    };
    let t = canon("train", "");
    assert!(t.get("langevin").is_none(), "{t}");
    let s = canon("sample", "");
    assert!(s.get("langevin").is_none(), "{s}");
    let gl = canon("train", "algorithm = \"gibbs_langevin\"\nvisible = \"gaussian\"\nconv_channels = []\ndense = [4]\nlangevin = {}");
    assert_eq!(gl["langevin"]["steps"], 5);
    assert!(gl["langevin"].get("clip_norm").is_none());
}
