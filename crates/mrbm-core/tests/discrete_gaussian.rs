//! The discrete Gaussian pixel unit and the noise-start CD rule, checked
//! against exhaustive enumeration of a tiny RBM.

use burn::tensor::{DType, Device};
use mrbm_core::layer::{tensor_from, to_f64, LayerKind, LayerSpec, Rbm};
use mrbm_core::sample::chi_square;
use mrbm_core::stack::{Dbn, StackParams, VisibleKind};
use mrbm_core::train::{data_visible_bias, Algorithm, OptimParams, Trainer};
use mrbm_core::unit::UnitType;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn dev() -> Device {
    Device::flex()
}

/// 2 discrete Gaussian pixels with N = 3 levels over [0, 2] (values 0,
/// 2/3, 4/3, 2), 2 binary hidden units, fixed parameters.
fn tiny() -> Rbm {
    let spec = LayerSpec {
        kind: LayerKind::Dense {
            visible: 2,
            hidden: 2,
        },
        visible_unit: UnitType::discrete_gaussian(3, 2.0),
        hidden_unit: UnitType::BINARY,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut r = Rbm::init(spec, 1.0, &mut rng, &dev(), DType::F64);
    r.w = tensor_from(vec![1.1, -0.9, -0.7, 1.3], [2, 2, 1, 1], &dev(), DType::F64);
    r.a = tensor_from(vec![0.4, 1.2], [2], &dev(), DType::F64);
    r.b = tensor_from(vec![-0.3, 0.2], [2], &dev(), DType::F64);
    r
}

const VALUES: [f64; 4] = [0.0, 2.0 / 3.0, 4.0 / 3.0, 2.0];

/// p(v) over the 16 visible states by summing exp(-E(v, h)) over h, with
/// E = -a.v + |v|^2 / 2 - b.h - v W h written out here.
fn brute_pv() -> Vec<f64> {
    let (w, a, b) = ([[1.1, -0.9], [-0.7, 1.3]], [0.4, 1.2], [-0.3, 0.2]);
    let mut p = Vec::new();
    for i in 0..16 {
        let v = [VALUES[i % 4], VALUES[i / 4]];
        let mut s = 0.0;
        for hc in 0..4 {
            let h = [(hc & 1) as f64, (hc >> 1) as f64];
            let mut e = -(a[0] * v[0] + a[1] * v[1]) + (v[0] * v[0] + v[1] * v[1]) / 2.0;
            for j in 0..2 {
                e -= b[j] * h[j] + (v[0] * w[0][j] + v[1] * w[1][j]) * h[j];
            }
            s += (-e).exp();
        }
        p.push(s);
    }
    let z: f64 = p.iter().sum();
    p.iter().map(|x| x / z).collect()
}

fn state_index(row: &[f64]) -> usize {
    let level = |x: f64| (x * 1.5).round() as usize;
    level(row[0]) + 4 * level(row[1])
}

fn trainer(r: &Rbm, algorithm: Algorithm, cd_k: usize, batch: usize, seed: u64) -> Trainer {
    Trainer::new(
        Dbn::of_dense_layer(r.clone(), 2.0 / 255.0),
        OptimParams {
            algorithm,
            cd_k,
            batch_size: batch,
            seed,
            ..OptimParams::default()
        },
    )
}

#[test]
fn free_energy_has_the_quadratic_term() {
    let r = tiny();
    let rows: Vec<f64> = (0..16)
        .flat_map(|i| [VALUES[i % 4], VALUES[i / 4]])
        .collect();
    let f = to_f64(&r.free_energy(tensor_from(rows, [16, 2, 1, 1], &dev(), DType::F64)));
    let m = f.iter().cloned().fold(f64::INFINITY, f64::min);
    let z: f64 = f.iter().map(|x| (m - x).exp()).sum();
    for (fi, pi) in f.iter().zip(brute_pv()) {
        assert!(((m - fi).exp() / z - pi).abs() < 1e-12);
    }
}

/// Chains from noise, 30 Gibbs steps with the layer's own draws, end at
/// the model's p(v): chi-square against the enumeration.
#[test]
fn noise_cd_chains_sample_the_models_distribution() {
    let r = tiny();
    let chains = 4000;
    let v0 = tensor_from(vec![2.0; chains * 2], [chains, 2, 1, 1], &dev(), DType::F64);
    let mut tr = trainer(&r, Algorithm::NoiseCd, 30, chains, 5);
    let states = to_f64(&tr.negative_phase(0, &v0));
    let mut counts = vec![0u64; 16];
    for row in states.chunks(2) {
        counts[state_index(row)] += 1;
    }
    let (stat, df) = chi_square(&counts, &brute_pv());
    println!("noise-start chains vs exact p(v): chi-square {stat:.2} on {df} df");
    // 99.9 % quantile of chi-square with 15 df is 37.7.
    assert!(stat < 37.7, "chi-square {stat} on {df} df");
}

/// The negative chains start from noise, not from the batch: two different
/// batches give the same negative states for the same seed (CD's do not).
#[test]
fn noise_cd_ignores_the_data() {
    let r = tiny();
    let a = tensor_from(vec![0.0; 64], [32, 2, 1, 1], &dev(), DType::F64);
    let b = tensor_from(vec![2.0; 64], [32, 2, 1, 1], &dev(), DType::F64);
    let neg =
        |alg, v: &burn::tensor::Tensor<4>| to_f64(&trainer(&r, alg, 1, 32, 9).negative_phase(0, v));
    assert_eq!(neg(Algorithm::NoiseCd, &a), neg(Algorithm::NoiseCd, &b));
    assert_ne!(neg(Algorithm::Cd, &a), neg(Algorithm::Cd, &b));
}

/// Training starts with each channel's visible bias at the value whose lone
/// unit has the data's mean.
#[test]
fn discrete_gaussian_pixels_start_at_the_data_mean() {
    let params = StackParams {
        conv_channels: vec![],
        dense: vec![3],
        n: 255,
        n_hidden: Some(1),
        visible: VisibleKind::DiscreteGaussian,
        ..StackParams::default()
    };
    let spec = params.build_spec([1, 2, 2]).unwrap();
    assert_eq!(spec.visible_scale, 10.0 / 255.0);
    let dbn = Dbn::init(spec, 0.01, 1, &dev(), DType::F32);
    // Two images of 4 pixels: pixel means 51, 102, 153, 255.
    let px = [0u8, 102, 51, 255, 102, 102, 255, 255];
    let bias = data_visible_bias(&dbn, (&px, 2)).expect("discrete Gaussian pixels");
    let unit = dbn.layers[0].spec.visible_unit;
    for (b, mean) in bias.iter().zip([51.0, 102.0, 153.0, 255.0]) {
        let want = mean * 10.0 / 255.0;
        let got = mrbm_core::discrete_gaussian::mean_f64(*b as f64, unit.dg());
        // (the mean of a lone unit stops 1e-4 of the range short of 0 and R)
        assert!((got - want).abs() < 2e-3, "{got} vs {want}");
    }
    // Other pixel units keep the zero bias.
    let plain = StackParams {
        dense: vec![3],
        conv_channels: vec![],
        ..StackParams::default()
    };
    let dbn = Dbn::init(
        plain.build_spec([1, 2, 2]).unwrap(),
        0.01,
        1,
        &dev(),
        DType::F32,
    );
    assert!(data_visible_bias(&dbn, (&px, 2)).is_none());
}

#[test]
fn discrete_gaussian_is_for_pixels_only() {
    let hidden = StackParams {
        unit: mrbm_core::unit::UnitKind::DiscreteGaussian,
        ..StackParams::default()
    };
    let e = hidden.build_spec([1, 4, 4]).unwrap_err();
    assert!(e.contains("pixel units only"), "{e}");
    let binary = StackParams {
        visible: VisibleKind::DiscreteGaussian,
        n: 1,
        ..StackParams::default()
    };
    let e = binary.build_spec([1, 4, 4]).unwrap_err();
    assert!(e.contains("n >= 2"), "{e}");
}

/// AIS's log Z of a discrete Gaussian RBM (the quadratic term as a base
/// measure on the levels) against enumeration of its 4^6 visible states.
#[test]
fn ais_matches_exact_log_z_with_discrete_gaussian_pixels() {
    use mrbm_core::ais::{sm_betas, HostDense};
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (d, h) = (6, 4);
    let mut u = |s: f64| (rng.random::<f64>() * 2.0 - 1.0) * s;
    let w: Vec<f64> = (0..d * h).map(|_| u(0.8)).collect();
    let a: Vec<f64> = (0..d).map(|_| u(1.0)).collect();
    let b: Vec<f64> = (0..h).map(|_| u(0.5)).collect();
    let m = HostDense::new(
        w.clone(),
        a.clone(),
        b.clone(),
        UnitType::discrete_gaussian(3, 2.0),
        UnitType::BINARY,
    );
    // log Z written out: sum over the 4^6 visible states of
    // exp(a.v - |v|^2 / 2 + sum_j softplus(b_j + (v W)_j)).
    let mut terms = Vec::new();
    for code in 0..4usize.pow(d as u32) {
        let v: Vec<f64> = (0..d).map(|i| VALUES[(code >> (2 * i)) & 3]).collect();
        let mut t: f64 = v
            .iter()
            .zip(&a)
            .map(|(vi, ai)| vi * ai - vi * vi / 2.0)
            .sum();
        for j in 0..h {
            let x = b[j] + (0..d).map(|i| v[i] * w[i * h + j]).sum::<f64>();
            t += x.max(0.0) + (-x.abs()).exp().ln_1p();
        }
        terms.push(t);
    }
    let top = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let brute = top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln();
    let exact = m.exact_log_z().unwrap();
    assert!((exact - brute).abs() < 1e-4, "{exact} vs {brute}");
    let base = vec![0.0; d];
    let est = m
        .ais(&base, &sm_betas(10_000), 100, 7, &|_| {}, &|| false)
        .unwrap();
    println!(
        "exact log Z {exact:.4}, AIS {:.4} +- {:.4}",
        est.log_z, est.log_z_std
    );
    assert!(
        (est.log_z - exact).abs() < 0.05,
        "AIS off by {}",
        est.log_z - exact
    );
}
