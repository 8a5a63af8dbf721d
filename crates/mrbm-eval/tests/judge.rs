//! The judge (crates/mrbm-eval/src/judge.rs): its maths against closed
//! forms, and its calibration: held-out real images score as the data do;
//! one image repeated, grey blobs and stroke fragments score clearly lower.
//! On the synthetic shapes always; on MNIST when MRBM_SHARED_DATA is set.

mod common;

use mrbm_data::artifact::ImageSet;
use mrbm_eval::judge::{
    self, batch_grad, fit_temperature, score_probs, Judge, JudgeConfig, Weights,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn never() -> bool {
    false
}
const NONE: &(dyn Fn() -> bool + Sync) = &never;

// ------------------------------------------------------------ closed forms

#[test]
fn score_of_confident_balanced_predictions_is_the_class_count() {
    // n one-hot rows spread evenly over k classes: KL = ln k for every row.
    let (n, k) = (40, 4);
    let probs: Vec<f64> = (0..n)
        .flat_map(|i| (0..k).map(move |j| if i % k == j { 1.0 } else { 0.0 }))
        .collect();
    let s = score_probs(&probs, n, k, 0.05, 0.0);
    assert!((s.score - 4.0).abs() < 1e-12, "{}", s.score);
    assert_eq!(s.coverage, 4.0);
    assert!((s.confidence - 1.0).abs() < 1e-12);
    // The same row n times: p(y|x) = p(y), KL = 0, score 1, one class covered.
    let row = [0.7, 0.1, 0.1, 0.1];
    let probs: Vec<f64> = (0..n).flat_map(|_| row).collect();
    let s = score_probs(&probs, n, k, 0.05, 0.0);
    assert!((s.score - 1.0).abs() < 1e-12, "{}", s.score);
    assert_eq!(s.coverage, 1.0);
    assert!((s.confidence - 0.7).abs() < 1e-12);
}

#[test]
fn score_matches_a_hand_computed_kl() {
    // Two rows: p1 = (0.9, 0.1), p2 = (0.2, 0.8); p(y) = (0.55, 0.45).
    let probs = [0.9, 0.1, 0.2, 0.8];
    let m = [0.55f64, 0.45];
    let kl = |p: [f64; 2]| p[0] * (p[0] / m[0]).ln() + p[1] * (p[1] / m[1]).ln();
    let want = ((kl([0.9, 0.1]) + kl([0.2, 0.8])) / 2.0).exp();
    let s = score_probs(&probs, 2, 2, 0.05, 0.0);
    assert!((s.score - want).abs() < 1e-12, "{} vs {want}", s.score);
}

#[test]
fn coverage_counts_classes_at_the_threshold() {
    // 100 images: 5 of class 0 (exactly 5 %), 4 of class 1, 91 of class 2.
    let k = 3;
    let mut probs = Vec::new();
    for i in 0..100 {
        let c = if i < 5 {
            0
        } else if i < 9 {
            1
        } else {
            2
        };
        probs.extend((0..k).map(|j| if j == c { 0.8 } else { 0.1 }));
    }
    let s = score_probs(&probs, 100, k, 0.05, 0.0);
    assert_eq!(s.coverage, 2.0);
    assert!((s.class_fractions[0] - 0.05).abs() < 1e-12);
}

#[test]
fn temperature_fit_recovers_the_temperature_labels_were_drawn_at() {
    let (n, k, t0) = (20_000, 5, 2.5f64);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut logits = Vec::with_capacity(n * k);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let z: Vec<f32> = (0..k).map(|_| rng.random_range(-6.0f32..6.0)).collect();
        let w: Vec<f64> = z.iter().map(|&v| (v as f64 / t0).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut u = rng.random::<f64>() * total;
        let mut y = k - 1;
        for (j, wj) in w.iter().enumerate() {
            if u < *wj {
                y = j;
                break;
            }
            u -= wj;
        }
        logits.extend(z);
        labels.push(y);
    }
    let t = fit_temperature(&logits, k, &labels);
    assert!((t - t0).abs() / t0 < 0.05, "fitted {t}, drawn at {t0}");
}

#[test]
fn backprop_gradient_matches_finite_differences() {
    let (bs, d, hid, k) = (6, 7, 5, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut r = |s: f32| -> f32 { rng.random_range(-s..s) };
    let w1: Vec<f32> = (0..d * hid).map(|_| r(0.8)).collect();
    let b1: Vec<f32> = (0..hid).map(|_| r(0.3)).collect();
    let w2: Vec<f32> = (0..hid * k).map(|_| r(0.8)).collect();
    let b2: Vec<f32> = (0..k).map(|_| r(0.3)).collect();
    let xb: Vec<f32> = (0..bs * d).map(|_| r(1.0).abs()).collect();
    let yb: Vec<usize> = (0..bs).map(|i| i % k).collect();
    let f = |w1: &[f32], b1: &[f32], w2: &[f32], b2: &[f32]| {
        let net = Weights {
            w1,
            b1,
            w2,
            b2,
            d,
            hid,
            k,
        };
        batch_grad(&net, &xb, &yb)
    };
    let (_, g) = f(&w1, &b1, &w2, &b2);
    let f = |w1: &[f32], b1: &[f32], w2: &[f32], b2: &[f32]| f(w1, b1, w2, b2).0;
    let h = 1e-3f32;
    let mut worst = 0.0f64;
    let mut check = |analytic: f32, plus: f64, minus: f64| {
        let numeric = (plus - minus) / (2.0 * h as f64);
        let err = (numeric - analytic as f64).abs() / (1e-3 + numeric.abs());
        worst = worst.max(err);
    };
    for i in 0..w1.len() {
        let (mut p, mut m) = (w1.clone(), w1.clone());
        p[i] += h;
        m[i] -= h;
        check(g.w1[i], f(&p, &b1, &w2, &b2), f(&m, &b1, &w2, &b2));
    }
    for i in 0..b1.len() {
        let (mut p, mut m) = (b1.clone(), b1.clone());
        p[i] += h;
        m[i] -= h;
        check(g.b1[i], f(&w1, &p, &w2, &b2), f(&w1, &m, &w2, &b2));
    }
    for i in 0..w2.len() {
        let (mut p, mut m) = (w2.clone(), w2.clone());
        p[i] += h;
        m[i] -= h;
        check(g.w2[i], f(&w1, &b1, &p, &b2), f(&w1, &b1, &m, &b2));
    }
    for i in 0..b2.len() {
        let (mut p, mut m) = (b2.clone(), b2.clone());
        p[i] += h;
        m[i] -= h;
        check(g.b2[i], f(&w1, &b1, &w2, &p), f(&w1, &b1, &w2, &m));
    }
    assert!(worst < 2e-2, "worst relative gradient error {worst}");
}

// ------------------------------------------------------------ calibration sets

/// Image 0 of `set`, `n` times.
fn repeated(set: &ImageSet, n: usize) -> Vec<u8> {
    (0..n).flat_map(|_| set.image(0).iter().copied()).collect()
}

/// Grey Gaussian blobs: random centre near the middle, random width and
/// brightness, the same value in every channel.
fn blobs(n: usize, [c, h, w]: [usize; 3], seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * c * h * w);
    for _ in 0..n {
        let cy = h as f64 * rng.random_range(0.3..0.7);
        let cx = w as f64 * rng.random_range(0.3..0.7);
        let s = h as f64 * rng.random_range(0.1..0.3);
        let peak = rng.random_range(120.0..255.0);
        let img: Vec<u8> = (0..h * w)
            .map(|p| {
                let (y, x) = ((p / w) as f64, (p % w) as f64);
                let r2 = ((y - cy).powi(2) + (x - cx).powi(2)) / (2.0 * s * s);
                (peak * (-r2).exp()).round() as u8
            })
            .collect();
        for _ in 0..c {
            out.extend_from_slice(&img);
        }
    }
    out
}

/// Stroke fragments: each of `n` real images reduced to a random window of
/// `size` x `size` pixels (the rest blanked), the window left where it was.
fn fragments(set: &ImageSet, n: usize, size: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (c, h, w) = (set.c, set.h, set.w);
    let mut out = Vec::with_capacity(n * c * h * w);
    for i in 0..n {
        let img = set.image(i % set.n);
        let y0 = rng.random_range(0..=h - size);
        let x0 = rng.random_range(0..=w - size);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let inside = (y0..y0 + size).contains(&y) && (x0..x0 + size).contains(&x);
                    out.push(if inside { img[(ch * h + y) * w + x] } else { 0 });
                }
            }
        }
    }
    out
}

/// The calibration of one judge on one data set: (name, score_rel,
/// coverage, frechet_rel, precision, recall) for real held-out images and
/// each bad set.
fn calibrate(
    j: &Judge,
    held_out: &ImageSet,
    n: usize,
    fragment: usize,
) -> Vec<(&'static str, f64, f64, f64, f64, f64)> {
    let shape = [held_out.c, held_out.h, held_out.w];
    // The samples are the first n held-out images; the reference the rest.
    let first: Vec<usize> = (0..n).collect();
    let rest: Vec<usize> = (n..held_out.n).collect();
    let real = held_out.select(&first);
    let reference = held_out.select(&rest);
    let sets: Vec<(&'static str, Vec<u8>)> = vec![
        ("real (held out)", real.pixels().to_vec()),
        ("one image repeated", repeated(&real, n)),
        ("grey blobs", blobs(n, shape, 5)),
        ("stroke fragments", fragments(&real, n, fragment, 6)),
    ];
    sets.into_iter()
        .map(|(name, px)| {
            let jd = judge::judge_against(
                j,
                (&px, n),
                (reference.pixels(), reference.n),
                0.05,
                10,
                0,
                NONE,
            )
            .unwrap();
            eprintln!(
                "{name:>20}: precision {:.3} (real {:.3}), recall {:.3} (real {:.3})",
                jd.samples_pr.precision,
                jd.real_pr.precision,
                jd.samples_pr.recall,
                jd.real_pr.recall
            );
            eprintln!(
                "{name:>20}: score {:.3} (real {:.3}, rel {:.3}), coverage {} (real {:.1}), \
                 frechet {:.3} (real {:.3}, rel {:.3}), confidence {:.3}",
                jd.samples.score,
                jd.real.score,
                jd.score_rel(),
                jd.samples.coverage,
                jd.real.coverage,
                jd.samples.frechet,
                jd.real.frechet,
                jd.frechet_rel(),
                jd.samples.confidence
            );
            (
                name,
                jd.score_rel(),
                jd.samples.coverage,
                jd.frechet_rel(),
                jd.samples_pr.precision,
                jd.samples_pr.recall,
            )
        })
        .collect()
}

/// Real held-out images score as the data do; every bad set scores clearly
/// lower on the classifier score, clearly higher on the Frechet distance,
/// and under half the real precision or recall (k = 3 manifolds in the
/// judge's features: fragments and blobs lie off the data, one image
/// repeated covers none of it).
/// `real_frechet` bounds the real set's frechet_rel (small distances are
/// noisy: on the shapes a real set of 100 measured 0.44); `max_bad_score`
/// the bad sets' score_rel (4 shape classes leave less room than 10 digits).
fn assert_calibrated(
    rows: &[(&str, f64, f64, f64, f64, f64)],
    classes: f64,
    real_frechet: std::ops::Range<f64>,
    max_bad_score: f64,
) {
    let (_, s, cov, f, p, r) = rows[0];
    assert!((0.85..1.15).contains(&s), "real score_rel {s}");
    assert!(real_frechet.contains(&f), "real frechet_rel {f}");
    assert_eq!(cov, classes, "real coverage");
    assert!(p > 0.75 && r > 0.75, "real precision {p}, recall {r}");
    for &(name, s, _, f, bp, br) in &rows[1..] {
        assert!(
            s < max_bad_score,
            "{name}: score_rel {s} is not clearly below real"
        );
        assert!(f > 3.0, "{name}: frechet_rel {f} is not clearly above real");
        assert!(
            bp < 0.5 * p || br < 0.5 * r,
            "{name}: precision {bp} and recall {br} are not clearly below real ({p}, {r})"
        );
    }
}

#[test]
fn calibration_on_synthetic_shapes() {
    let all = mrbm_data::synthetic::synthetic(2600, 16, 4, 7).unwrap();
    let train = all.select(&(0..2000).collect::<Vec<_>>());
    let held = all.select(&(2000..2600).collect::<Vec<_>>());
    let cfg = JudgeConfig {
        hidden: 64,
        epochs: 8,
        ..JudgeConfig::default()
    };
    let (j, report) = judge::fit(
        train.pixels(),
        train.n,
        [3, 16, 16],
        &train.labels,
        &cfg,
        NONE,
    )
    .unwrap();
    eprintln!(
        "shapes judge: held-out accuracy {:.3}, temperature {:.3}",
        report.holdout_accuracy, report.temperature
    );
    assert!(report.holdout_accuracy > 0.9, "{report:?}");
    let rows = calibrate(&j, &held, 100, 6);
    assert_calibrated(&rows, 4.0, 0.3..2.0, 0.8);
}

#[test]
fn calibration_on_mnist() {
    let Some(root) = common::shared_data("calibration_on_mnist") else {
        return;
    };
    let (imgs, labels) = mrbm_data::idx::idx_files(&root.join("mnist"), false);
    let all = mrbm_data::idx::read_idx(&imgs, &labels).unwrap();
    let perm = judge::permutation(all.n, 1);
    let train = all.select(&perm[..8000]);
    let held = all.select(&perm[8000..]);
    let (j, report) = judge::fit(
        train.pixels(),
        train.n,
        [1, 28, 28],
        &train.labels,
        &JudgeConfig::default(),
        NONE,
    )
    .unwrap();
    eprintln!(
        "MNIST judge: held-out accuracy {:.4}, temperature {:.3}, NLL {:.4} -> {:.4}",
        report.holdout_accuracy, report.temperature, report.holdout_nll_raw, report.holdout_nll
    );
    assert!(report.holdout_accuracy > 0.93, "{report:?}");
    let rows = calibrate(&j, &held, 100, 12);
    assert_calibrated(&rows, 10.0, 0.6..1.5, 0.6);
}

#[test]
fn save_and_load_give_the_same_scores() {
    let all = mrbm_data::synthetic::synthetic(400, 8, 3, 1).unwrap();
    let cfg = JudgeConfig {
        hidden: 16,
        epochs: 2,
        ..JudgeConfig::default()
    };
    let (j, _) = judge::fit(all.pixels(), all.n, [3, 8, 8], &all.labels, &cfg, NONE).unwrap();
    let dir = std::env::temp_dir().join(format!("mrbm-judge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("judge.safetensors");
    j.save(&p).unwrap();
    let k = Judge::load(&p).unwrap();
    let a = j.score(all.pixels(), all.n, 0.05, NONE).unwrap();
    let b = k.score(all.pixels(), all.n, 0.05, NONE).unwrap();
    assert_eq!(a.score, b.score);
    assert_eq!(a.frechet, b.frechet);
    assert_eq!(j.temperature, k.temperature);
    // A file that is not a judge is a clear error, not a panic.
    std::fs::write(dir.join("bad.safetensors"), b"not a judge").unwrap();
    let e = Judge::load(&dir.join("bad.safetensors")).unwrap_err();
    assert!(e.to_string().contains("not a judge file"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unlabelled_training_images_are_a_clear_error() {
    let px = vec![0u8; 10 * 4];
    let labels = vec![-1i64; 10];
    let e = judge::fit(&px, 10, [1, 2, 2], &labels, &JudgeConfig::default(), NONE).unwrap_err();
    assert!(e.to_string().contains("must be labelled"), "{e}");
}
