//! An offline judge of generated images, learned in the pipeline from the
//! real training images (no downloaded network):
//!
//! - a classifier: a one-hidden-layer perceptron (pixels / 255 -> `hidden`
//!   ReLU units -> softmax over the classes), trained by Adam on the
//!   cross-entropy, whose softmax temperature is then fitted on real images
//!   held out of its training (Guo et al. 2017: a network trained on the
//!   cross-entropy is over-confident; one temperature, fitted by likelihood
//!   on held-out data, calibrates it). Why not the linear SVM: its decision
//!   values are not probabilities, a linear read-out on pixels is confidently
//!   wrong far from the data, and it has no feature space of its own.
//! - scores of a set of images: the Inception-score form with this domain
//!   classifier, exp(E_x KL(p(y|x) || p(y))) where p(y) is the set's mean
//!   p(y|x) (1 for one image repeated, the number of classes for confident,
//!   balanced predictions), class coverage (classes that are the argmax of at
//!   least `threshold` of the set), the mean top probability, and the
//!   Frechet distance between the set's hidden-layer activations and the
//!   training images' (the classifier's hidden layer is the learned feature
//!   space; [`crate::frechet`] computes the distance).
//!
//! Every score of a sample set is also reported relative to held-out real
//! images scored the same way, in subsets of the same size (the Frechet
//! distance and the score of a finite set are biased by its size), so a
//! real set scores about 1. Matrix products run on mrbm-kernels' portable
//! microkernel, so the judge's numbers do not depend on the CPU's
//! instruction set.

use std::collections::HashMap;
use std::path::Path;

use mrbm_kernels::{sgemm_isa, Isa, Par, View, ViewMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::frechet::{frechet_distance_polling, FrechetError, GaussianStats};
use crate::linalg::Cancel;
use crate::manifold::{precision_recall, self_distances, subset_against_rest, PrecisionRecall};

/// How the judge's classifier is trained: the parameters of the `judge_fit`
/// stage (`mrbm params judge_fit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    /// Hidden ReLU units: the width of the feature space of the Frechet distance.
    pub hidden: usize,
    /// Passes over the training images (Adam, cross-entropy).
    pub epochs: usize,
    /// Images per Adam step.
    pub batch_size: usize,
    /// Adam's step size (betas 0.9 / 0.999, epsilon 1e-8).
    pub lr: f64,
    /// L2 penalty on the weights (added to their gradient).
    pub weight_decay: f64,
    /// Fraction of the training images held out of the classifier's training
    /// to fit its softmax temperature and report its accuracy.
    pub holdout: f64,
    /// Seed of the initial weights, the holdout draw and the batch order.
    pub seed: u64,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            hidden: 128,
            epochs: 10,
            batch_size: 100,
            lr: 1e-3,
            weight_decay: 1e-4,
            holdout: 0.1,
            seed: 0,
        }
    }
}

/// What can go wrong fitting, reading or applying a judge.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("invalid parameter: {0}")]
    Param(String),
    #[error("{what}: {got} pixel values do not make {n} images of {c}x{h}x{w}")]
    Shape {
        what: String,
        got: usize,
        n: usize,
        c: usize,
        h: usize,
        w: usize,
    },
    #[error("{0}")]
    Data(String),
    #[error("{what} are {got:?} (CxHxW) but the judge was trained on {want:?}")]
    ImageShape {
        what: String,
        got: [usize; 3],
        want: [usize; 3],
    },
    #[error("{0}: not a judge file ({1})")]
    Format(String, String),
    #[error(transparent)]
    Frechet(#[from] FrechetError),
    #[error(transparent)]
    Stage(#[from] mrbm_stage::StageError),
}

fn cancelled() -> JudgeError {
    JudgeError::Stage(mrbm_stage::StageError::Cancelled)
}

/// A trained judge: the classifier, its temperature and the Gaussian
/// statistics of the training images in its hidden layer.
#[derive(Debug, Clone)]
pub struct Judge {
    /// Image shape (C, H, W) it was trained on.
    pub shape: [usize; 3],
    /// The sorted class labels; output k is `classes[k]`.
    pub classes: Vec<i64>,
    pub hidden: usize,
    /// [d, hidden] row-major, d = C*H*W.
    w1: Vec<f32>,
    b1: Vec<f32>,
    /// [hidden, classes] row-major.
    w2: Vec<f32>,
    b2: Vec<f32>,
    /// Softmax temperature (logits are divided by it).
    pub temperature: f64,
    /// Hidden activations of the training images.
    pub stats: GaussianStats,
}

/// How the fit went.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub n_train: usize,
    pub n_holdout: usize,
    /// Accuracy (0..1) on the images it trained on.
    pub train_accuracy: f64,
    /// Accuracy (0..1) on the held-out images (NaN without a holdout).
    pub holdout_accuracy: f64,
    /// Mean negative log-likelihood of the held-out labels, before and after the temperature.
    pub holdout_nll_raw: f64,
    pub holdout_nll: f64,
    pub temperature: f64,
    /// Mean training cross-entropy per epoch.
    pub epoch_loss: Vec<f64>,
}

/// The judge's view of one image set.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetScore {
    pub n: usize,
    /// exp(mean KL(p(y|x) || p(y))).
    pub score: f64,
    /// Classes that are the argmax of at least `threshold` of the images.
    pub coverage: f64,
    /// Mean of max_y p(y|x).
    pub confidence: f64,
    /// Frechet distance to the training images in the hidden layer.
    pub frechet: f64,
    /// Fraction of the images whose argmax is each class.
    pub class_fractions: Vec<f64>,
}

/// Pixels (u8) to f32 in [0, 1].
fn to_unit(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&p| p as f32 / 255.0).collect()
}

/// C (m x n) = A (m x k) B (k x n), overwriting C; on the portable
/// microkernel, so the bits do not depend on the CPU.
fn mm(m: usize, n: usize, k: usize, a: View, b: View, c: &mut [f32], cols: usize) {
    sgemm_isa(
        (Isa::Portable, Par::Rayon),
        [m, n, k],
        1.0,
        a,
        b,
        0.0,
        ViewMut::row_major(c, cols),
    );
}

/// One standard normal (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A seeded permutation of 0..n (Fisher-Yates).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        p.swap(i, j);
    }
    p
}

/// Adam's state for one parameter vector.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(len: usize) -> Self {
        Adam {
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }
    fn step(&mut self, p: &mut [f32], g: &[f32], lr_t: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        for (((p, g), m), v) in p.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            *p -= lr_t * *m / (v.sqrt() + EPS);
        }
    }
}

/// Row-wise log-softmax of `z` (rows of `k`) at temperature `t`, in f64.
fn log_softmax_row(z: &[f32], t: f64, out: &mut [f64]) {
    let max = z
        .iter()
        .fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64 / t));
    let lse = z
        .iter()
        .map(|&v| (v as f64 / t - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    for (o, &v) in out.iter_mut().zip(z) {
        *o = v as f64 / t - lse;
    }
}

/// Mean negative log-likelihood of `labels` (class indices) under
/// softmax(logits / t).
fn nll(logits: &[f32], k: usize, labels: &[usize], t: f64) -> f64 {
    let mut lp = vec![0.0; k];
    let mut s = 0.0;
    for (z, &y) in logits.chunks_exact(k).zip(labels) {
        log_softmax_row(z, t, &mut lp);
        s -= lp[y];
    }
    s / labels.len().max(1) as f64
}

/// The temperature that minimises [`nll`]: the NLL is convex in 1/t
/// (a log-sum-exp of linear functions minus a linear one), so a golden
/// section search over 1/t in [0.01, 100] finds its minimum.
pub fn fit_temperature(logits: &[f32], k: usize, labels: &[usize]) -> f64 {
    let f = |b: f64| nll(logits, k, labels, 1.0 / b);
    let (mut lo, mut hi) = (0.01f64.ln(), 100f64.ln());
    // Golden section on ln(1/t): still unimodal (a monotone change of variable).
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut x1 = hi - g * (hi - lo);
    let mut x2 = lo + g * (hi - lo);
    let (mut f1, mut f2) = (f(x1.exp()), f(x2.exp()));
    for _ in 0..80 {
        if f1 <= f2 {
            hi = x2;
            x2 = x1;
            f2 = f1;
            x1 = hi - g * (hi - lo);
            f1 = f(x1.exp());
        } else {
            lo = x1;
            x1 = x2;
            f1 = f2;
            x2 = lo + g * (hi - lo);
            f2 = f(x2.exp());
        }
    }
    1.0 / (0.5 * (lo + hi)).exp()
}

impl JudgeConfig {
    pub fn check(&self) -> Result<(), JudgeError> {
        let bad = |m: String| Err(JudgeError::Param(m));
        if self.hidden == 0 {
            return bad("hidden must be at least 1".into());
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr must be a positive number, got {}", self.lr));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!(
                "weight_decay must be a number >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(0.0..0.9).contains(&self.holdout) {
            return bad(format!(
                "holdout must be in [0, 0.9) (a fraction of the training images), got {}",
                self.holdout
            ));
        }
        Ok(())
    }
}

/// Check the training images and labels against each other and give the
/// sorted classes and each image's class index.
fn class_indices(
    pixels: &[u8],
    n: usize,
    shape: [usize; 3],
    labels: &[i64],
) -> Result<(Vec<i64>, Vec<usize>), JudgeError> {
    let [c, h, w] = shape;
    let d = c * h * w;
    if pixels.len() != n * d {
        return Err(JudgeError::Shape {
            what: "training images".into(),
            got: pixels.len(),
            n,
            c,
            h,
            w,
        });
    }
    if labels.len() != n {
        return Err(JudgeError::Data(format!(
            "{} labels for {n} training images",
            labels.len()
        )));
    }
    if let Some(l) = labels.iter().find(|&&l| l < 0) {
        return Err(JudgeError::Data(format!(
            "the judge's training images must be labelled; found label {l} \
             (generated images carry -1: train the judge on real data)"
        )));
    }
    let mut classes = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    if classes.len() < 2 {
        return Err(JudgeError::Data(format!(
            "the judge needs at least two classes, the training images have {}",
            classes.len()
        )));
    }
    let index: HashMap<i64, usize> = classes.iter().enumerate().map(|(i, &l)| (l, i)).collect();
    let y: Vec<usize> = labels.iter().map(|l| index[l]).collect();
    Ok((classes, y))
}

/// Training and holdout accuracy from the network's logits (k per image)
/// and, with a holdout, the temperature fitted on it (set on `judge`) with
/// the holdout's negative log-likelihood before and after.
fn accuracies(
    judge: &mut Judge,
    logits: &[f32],
    y: &[usize],
    train_idx: &[usize],
    hold_idx: &[usize],
) -> (f64, f64, f64, f64) {
    let k = judge.classes.len();
    let accuracy = |idx: &[usize], logits: &[f32]| -> f64 {
        let hits = logits
            .chunks_exact(k)
            .zip(idx)
            .filter(|(z, &i)| argmax(z) == y[i])
            .count();
        hits as f64 / idx.len().max(1) as f64
    };
    let pick = |idx: &[usize]| -> Vec<f32> {
        idx.iter()
            .flat_map(|&i| logits[i * k..(i + 1) * k].iter().copied())
            .collect()
    };
    let train_logits = pick(train_idx);
    let train_accuracy = accuracy(train_idx, &train_logits);
    let (holdout_accuracy, nll_raw, nll_fit) = if hold_idx.is_empty() {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        let hl = pick(hold_idx);
        let hy: Vec<usize> = hold_idx.iter().map(|&i| y[i]).collect();
        let t = fit_temperature(&hl, k, &hy);
        judge.temperature = t;
        (
            accuracy(hold_idx, &hl),
            nll(&hl, k, &hy, 1.0),
            nll(&hl, k, &hy, t),
        )
    };
    (train_accuracy, holdout_accuracy, nll_raw, nll_fit)
}

/// The perceptron's first weights [w1, b1, w2, b2]: He initialisation for
/// the ReLU layer, Glorot-like for the read-out, zero biases.
fn init_weights(d: usize, hid: usize, k: usize, rng: &mut ChaCha8Rng) -> [Vec<f32>; 4] {
    let s1 = (2.0 / d as f64).sqrt();
    let s2 = (1.0 / hid as f64).sqrt();
    let w1: Vec<f32> = (0..d * hid).map(|_| (normal(rng) * s1) as f32).collect();
    let b1 = vec![0.0f32; hid];
    let w2: Vec<f32> = (0..hid * k).map(|_| (normal(rng) * s2) as f32).collect();
    let b2 = vec![0.0f32; k];
    [w1, b1, w2, b2]
}

/// Train a judge on `n` labelled images of `shape` (u8, NCHW).
pub fn fit(
    pixels: &[u8],
    n: usize,
    shape: [usize; 3],
    labels: &[i64],
    cfg: &JudgeConfig,
    cancel: Cancel,
) -> Result<(Judge, FitReport), JudgeError> {
    cfg.check()?;
    let (classes, y) = class_indices(pixels, n, shape, labels)?;
    let d = shape.iter().product::<usize>();
    let k = classes.len();

    let perm = permutation(n, cfg.seed ^ 0x006a_7564_6765);
    let n_hold = ((n as f64) * cfg.holdout).floor() as usize;
    let (hold_idx, train_idx) = perm.split_at(n_hold);
    if train_idx.len() < k {
        return Err(JudgeError::Data(format!(
            "{} training images after the holdout: too few for {k} classes",
            train_idx.len()
        )));
    }
    let x = to_unit(pixels);

    let hid = cfg.hidden;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let [mut w1, mut b1, mut w2, mut b2] = init_weights(d, hid, k, &mut rng);
    let (mut aw1, mut ab1, mut aw2, mut ab2) = (
        Adam::new(d * hid),
        Adam::new(hid),
        Adam::new(hid * k),
        Adam::new(k),
    );

    let bs = cfg.batch_size.min(train_idx.len());
    let mut xb = vec![0.0f32; bs * d];
    let mut yb = vec![0usize; bs];
    let mut order: Vec<usize> = train_idx.to_vec();
    let mut step = 0i32;
    let mut epoch_loss = Vec::with_capacity(cfg.epochs);
    for _ in 0..cfg.epochs {
        // A fresh order each epoch.
        for i in (1..order.len()).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        let mut loss = 0.0f64;
        // Full batches only (the few images left over are seen next epoch).
        for batch in order.chunks_exact(bs) {
            if cancel() {
                return Err(cancelled());
            }
            for (r, &i) in batch.iter().enumerate() {
                xb[r * d..(r + 1) * d].copy_from_slice(&x[i * d..(i + 1) * d]);
                yb[r] = y[i];
            }
            let net = Weights {
                w1: &w1,
                b1: &b1,
                w2: &w2,
                b2: &b2,
                d,
                hid,
                k,
            };
            let (l, mut g) = batch_grad(&net, &xb, &yb);
            loss += l * bs as f64;
            let wd = cfg.weight_decay as f32;
            if wd > 0.0 {
                g.w1.iter_mut().zip(&w1).for_each(|(g, w)| *g += wd * w);
                g.w2.iter_mut().zip(&w2).for_each(|(g, w)| *g += wd * w);
            }
            step += 1;
            let lr_t =
                (cfg.lr * (1.0 - 0.999f64.powi(step)).sqrt() / (1.0 - 0.9f64.powi(step))) as f32;
            aw1.step(&mut w1, &g.w1, lr_t);
            ab1.step(&mut b1, &g.b1, lr_t);
            aw2.step(&mut w2, &g.w2, lr_t);
            ab2.step(&mut b2, &g.b2, lr_t);
        }
        let batches = order.len() / bs;
        epoch_loss.push(loss / (batches * bs).max(1) as f64);
    }

    let mut judge = Judge {
        shape,
        classes,
        hidden: hid,
        w1,
        b1,
        w2,
        b2,
        temperature: 1.0,
        stats: GaussianStats {
            dim: 0,
            count: 0,
            mu: vec![],
            sigma: vec![],
        },
    };
    // All images once through the trained network: features for the
    // statistics, logits for the accuracy and the temperature.
    let (feats, logits) = judge.forward_unit(&x, n, cancel)?;
    let (train_accuracy, holdout_accuracy, nll_raw, nll_fit) =
        accuracies(&mut judge, &logits, &y, train_idx, hold_idx);
    judge.stats = GaussianStats::from_features(&feats, n, hid)?;
    let report = FitReport {
        n_train: train_idx.len(),
        n_holdout: hold_idx.len(),
        train_accuracy,
        holdout_accuracy,
        holdout_nll_raw: nll_raw,
        holdout_nll: nll_fit,
        temperature: judge.temperature,
        epoch_loss,
    };
    Ok((judge, report))
}

/// Gradients of the mean cross-entropy of one batch.
#[derive(Debug, Clone)]
pub struct Grads {
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

/// The perceptron's weights as [`batch_grad`] reads them: w1 [d, hid], b1
/// [hid], w2 [hid, k], b2 [k].
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    pub w1: &'a [f32],
    pub b1: &'a [f32],
    pub w2: &'a [f32],
    pub b2: &'a [f32],
    pub d: usize,
    pub hid: usize,
    pub k: usize,
}

/// The mean cross-entropy of the perceptron `net` on the batch `xb` ([bs, d], values in [0, 1]) with class indices
/// `yb`, and its gradient (backpropagation, closed form; no weight decay).
pub fn batch_grad(net: &Weights, xb: &[f32], yb: &[usize]) -> (f64, Grads) {
    let Weights {
        w1,
        b1,
        w2,
        b2,
        d,
        hid,
        k,
    } = *net;
    let bs = yb.len();
    let mut z1 = vec![0.0f32; bs * hid];
    let mut lg = vec![0.0f32; bs * k];
    let mut lp = vec![0.0f64; k];
    // Forward.
    mm(
        bs,
        hid,
        d,
        View::row_major(xb, d),
        View::row_major(w1, hid),
        &mut z1,
        hid,
    );
    for row in z1.chunks_exact_mut(hid) {
        for (v, b) in row.iter_mut().zip(b1) {
            *v = (*v + b).max(0.0);
        }
    }
    mm(
        bs,
        k,
        hid,
        View::row_major(&z1, hid),
        View::row_major(w2, k),
        &mut lg,
        k,
    );
    // dL/dlogits = (softmax - onehot) / bs, in place.
    let mut loss = 0.0f64;
    for (row, &yi) in lg.chunks_exact_mut(k).zip(yb) {
        for (v, b) in row.iter_mut().zip(b2) {
            *v += b;
        }
        log_softmax_row(row, 1.0, &mut lp);
        loss -= lp[yi];
        for (j, v) in row.iter_mut().enumerate() {
            let t = if j == yi { 1.0 } else { 0.0 };
            *v = ((lp[j].exp() - t) / bs as f64) as f32;
        }
    }
    // Backward.
    let mut gw2 = vec![0.0f32; hid * k];
    mm(
        hid,
        k,
        bs,
        View::row_major(&z1, hid).t(),
        View::row_major(&lg, k),
        &mut gw2,
        k,
    );
    let mut gb2 = vec![0.0f32; k];
    for row in lg.chunks_exact(k) {
        for (g, v) in gb2.iter_mut().zip(row) {
            *g += v;
        }
    }
    let mut da = vec![0.0f32; bs * hid];
    mm(
        bs,
        hid,
        k,
        View::row_major(&lg, k),
        View::row_major(w2, k).t(),
        &mut da,
        hid,
    );
    // Through the ReLU: z1 holds max(0, .), zero exactly where it was off.
    for (g, a) in da.iter_mut().zip(&z1) {
        if *a <= 0.0 {
            *g = 0.0;
        }
    }
    let mut gb1 = vec![0.0f32; hid];
    for row in da.chunks_exact(hid) {
        for (g, v) in gb1.iter_mut().zip(row) {
            *g += v;
        }
    }
    let mut gw1 = vec![0.0f32; d * hid];
    mm(
        d,
        hid,
        bs,
        View::row_major(xb, d).t(),
        View::row_major(&da, hid),
        &mut gw1,
        hid,
    );
    (
        loss / bs as f64,
        Grads {
            w1: gw1,
            b1: gb1,
            w2: gw2,
            b2: gb2,
        },
    )
}

fn argmax(z: &[f32]) -> usize {
    let mut best = 0;
    for (j, v) in z.iter().enumerate() {
        if *v > z[best] {
            best = j;
        }
    }
    best
}

/// Rows per forward block.
const BLOCK: usize = 512;

impl Judge {
    /// Input length C*H*W.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// Hidden activations [n, hidden] and logits [n, classes] of `n` images
    /// already scaled to [0, 1].
    fn forward_unit(
        &self,
        x: &[f32],
        n: usize,
        cancel: Cancel,
    ) -> Result<(Vec<f32>, Vec<f32>), JudgeError> {
        let (d, hid, k) = (self.dim(), self.hidden, self.classes.len());
        let mut feats = vec![0.0f32; n * hid];
        let mut logits = vec![0.0f32; n * k];
        for s in (0..n).step_by(BLOCK) {
            if cancel() {
                return Err(cancelled());
            }
            let e = (s + BLOCK).min(n);
            let f = &mut feats[s * hid..e * hid];
            mm(
                e - s,
                hid,
                d,
                View::row_major(&x[s * d..e * d], d),
                View::row_major(&self.w1, hid),
                f,
                hid,
            );
            for row in f.chunks_exact_mut(hid) {
                for (v, b) in row.iter_mut().zip(&self.b1) {
                    *v = (*v + b).max(0.0);
                }
            }
            let l = &mut logits[s * k..e * k];
            mm(
                e - s,
                k,
                hid,
                View::row_major(f, hid),
                View::row_major(&self.w2, k),
                l,
                k,
            );
            for row in l.chunks_exact_mut(k) {
                for (v, b) in row.iter_mut().zip(&self.b2) {
                    *v += b;
                }
            }
        }
        Ok((feats, logits))
    }

    fn check_images(&self, what: &str, pixels: &[u8], n: usize) -> Result<(), JudgeError> {
        let [c, h, w] = self.shape;
        if pixels.len() != n * self.dim() {
            return Err(JudgeError::Shape {
                what: what.into(),
                got: pixels.len(),
                n,
                c,
                h,
                w,
            });
        }
        Ok(())
    }

    /// Hidden features [n, hidden] and calibrated class probabilities
    /// [n, classes] of `n` u8 images.
    pub fn embed(
        &self,
        pixels: &[u8],
        n: usize,
        cancel: Cancel,
    ) -> Result<(Vec<f32>, Vec<f64>), JudgeError> {
        self.check_images("images", pixels, n)?;
        let (feats, logits) = self.forward_unit(&to_unit(pixels), n, cancel)?;
        let k = self.classes.len();
        let mut probs = vec![0.0f64; n * k];
        for (z, p) in logits.chunks_exact(k).zip(probs.chunks_exact_mut(k)) {
            log_softmax_row(z, self.temperature, p);
            p.iter_mut().for_each(|v| *v = v.exp());
        }
        Ok((feats, probs))
    }

    /// The predicted label of each image.
    pub fn predict(&self, pixels: &[u8], n: usize) -> Result<Vec<i64>, JudgeError> {
        let (_, probs) = self.embed(pixels, n, &|| false)?;
        let k = self.classes.len();
        Ok(probs
            .chunks_exact(k)
            .map(|p| {
                let z: Vec<f32> = p.iter().map(|&v| v as f32).collect();
                self.classes[argmax(&z)]
            })
            .collect())
    }

    /// Score `n` images (at least 2: the Frechet distance needs a covariance).
    pub fn score(
        &self,
        pixels: &[u8],
        n: usize,
        threshold: f64,
        cancel: Cancel,
    ) -> Result<SetScore, JudgeError> {
        if n < 2 {
            return Err(JudgeError::Data(format!(
                "the judge scores sets of at least 2 images, got {n}"
            )));
        }
        let (feats, probs) = self.embed(pixels, n, cancel)?;
        let k = self.classes.len();
        let stats = GaussianStats::from_features(&feats, n, self.hidden)?;
        let f = frechet_distance_polling(
            &stats.mu,
            &stats.sigma,
            &self.stats.mu,
            &self.stats.sigma,
            cancel,
        )?;
        Ok(score_probs(&probs, n, k, threshold, f.distance.max(0.0)))
    }
}

/// The classifier scores of `n` probability rows of `k` classes, with the
/// Frechet distance `frechet` already computed.
pub fn score_probs(probs: &[f64], n: usize, k: usize, threshold: f64, frechet: f64) -> SetScore {
    let mut py = vec![0.0f64; k];
    let mut counts = vec![0usize; k];
    let mut conf = 0.0;
    for p in probs.chunks_exact(k) {
        for (m, v) in py.iter_mut().zip(p) {
            *m += v;
        }
        let (mut best, mut bj) = (f64::NEG_INFINITY, 0);
        for (j, &v) in p.iter().enumerate() {
            if v > best {
                best = v;
                bj = j;
            }
        }
        counts[bj] += 1;
        conf += best;
    }
    py.iter_mut().for_each(|m| *m /= n as f64);
    let kl: f64 = probs
        .chunks_exact(k)
        .map(|p| {
            p.iter()
                .zip(&py)
                .filter(|(v, _)| **v > 0.0)
                .map(|(v, m)| v * (v.ln() - m.ln()))
                .sum::<f64>()
        })
        .sum::<f64>()
        / n as f64;
    let fractions: Vec<f64> = counts.iter().map(|&c| c as f64 / n as f64).collect();
    // A small tolerance so that exactly 5 of 100 counts at 5 %.
    let coverage = fractions
        .iter()
        .filter(|&&f| f >= threshold - 1e-12)
        .count() as f64;
    SetScore {
        n,
        score: kl.max(0.0).exp(),
        coverage,
        confidence: conf / n as f64,
        frechet,
        class_fractions: fractions,
    }
}

/// A sample set scored beside held-out real images.
#[derive(Debug, Clone, Serialize)]
pub struct Judgement {
    pub samples: SetScore,
    /// Means over the real subsets.
    pub real: SetScore,
    /// How many disjoint real subsets of the samples' size were scored.
    pub real_subsets: usize,
    /// Size of each real subset (the sample count, or all the reference
    /// images when there are fewer).
    pub real_subset_size: usize,
    /// Precision and recall of the samples against the reference images in
    /// the judge's hidden features ([`crate::manifold`]): are the samples
    /// realistic, is the data covered.
    pub samples_pr: PrecisionRecall,
    /// The same for held-out real subsets of the samples' size against the
    /// rest of the reference (NaN when nothing is left outside a subset).
    pub real_pr: PrecisionRecall,
}

impl Judgement {
    /// Sample score / real score (1 = like held-out real images).
    pub fn score_rel(&self) -> f64 {
        self.samples.score / self.real.score
    }
    pub fn coverage_rel(&self) -> f64 {
        self.samples.coverage / self.real.coverage
    }
    /// Sample Frechet distance / real (1 = like real, larger = worse).
    pub fn frechet_rel(&self) -> f64 {
        self.samples.frechet / self.real.frechet
    }
}

/// Score the `n` samples and, the same way, up to `max_subsets` disjoint
/// subsets of `n` of the `m` reference images drawn by a permutation seeded
/// with `seed`.
pub fn judge_against(
    judge: &Judge,
    (samples, n): (&[u8], usize),
    (reference, m): (&[u8], usize),
    threshold: f64,
    max_subsets: usize,
    seed: u64,
    cancel: Cancel,
) -> Result<Judgement, JudgeError> {
    judge.check_images("samples", samples, n)?;
    judge.check_images("reference images", reference, m)?;
    let s = judge.score(samples, n, threshold, cancel)?;
    let size = n.min(m);
    let count = (m / size.max(1)).clamp(1, max_subsets.max(1));
    let perm = permutation(m, seed);
    let len = judge.dim();
    let k = judge.classes.len();
    let mut real = SetScore {
        n: size,
        class_fractions: vec![0.0; k],
        ..SetScore::default()
    };
    for b in 0..count {
        let mut px = Vec::with_capacity(size * len);
        for &i in &perm[b * size..(b + 1) * size] {
            px.extend_from_slice(&reference[i * len..(i + 1) * len]);
        }
        let r = judge.score(&px, size, threshold, cancel)?;
        real.score += r.score / count as f64;
        real.coverage += r.coverage / count as f64;
        real.confidence += r.confidence / count as f64;
        real.frechet += r.frechet / count as f64;
        for (a, v) in real.class_fractions.iter_mut().zip(&r.class_fractions) {
            *a += v / count as f64;
        }
    }
    let (samples_pr, real_pr) = manifold_scores(
        judge,
        (samples, n),
        (reference, m),
        &perm,
        (size, count),
        cancel,
    )?;
    Ok(Judgement {
        samples: s,
        real,
        real_subsets: count,
        real_subset_size: size,
        samples_pr,
        real_pr,
    })
}

/// Precision and recall (k = 3) in the judge's hidden features: the samples
/// against every reference image, and, as the real baseline, each of the
/// `count` real subsets of `size` (taken in `perm` order, as the classifier
/// scores take them) against the reference images outside it, averaged.
fn manifold_scores(
    judge: &Judge,
    (samples, n): (&[u8], usize),
    (reference, m): (&[u8], usize),
    perm: &[usize],
    (size, count): (usize, usize),
    cancel: Cancel,
) -> Result<(PrecisionRecall, PrecisionRecall), JudgeError> {
    const K: usize = 3;
    let h = judge.hidden;
    let (fs, _) = judge.embed(samples, n, cancel)?;
    let (fr, _) = judge.embed(reference, m, cancel)?;
    let samples_pr = precision_recall(&fs, &fr, h, K);
    let mut real_pr = PrecisionRecall {
        precision: 0.0,
        recall: 0.0,
    };
    // The reference's distances once; each subset is scored against the rest.
    let d = self_distances(&fr, h);
    for b in 0..count {
        if cancel() {
            return Err(cancelled());
        }
        let mut is_in = vec![false; m];
        perm[b * size..(b + 1) * size]
            .iter()
            .for_each(|&i| is_in[i] = true);
        // A reference with no images outside the subset has no baseline.
        let pr = if m - size > K {
            subset_against_rest(&d, &is_in, K)
        } else {
            PrecisionRecall {
                precision: f64::NAN,
                recall: f64::NAN,
            }
        };
        real_pr.precision += pr.precision / count as f64;
        real_pr.recall += pr.recall / count as f64;
    }
    Ok((samples_pr, real_pr))
}

// ------------------------------------------------------------ file format

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Judge {
    /// Write as safetensors: w1, b1, w2, b2 (f32), mu, sigma (f64), classes
    /// (i64); shape and temperature in the metadata.
    pub fn save(&self, path: &Path) -> Result<(), JudgeError> {
        let (d, hid, k) = (self.dim(), self.hidden, self.classes.len());
        let fail = |e: String| {
            JudgeError::Stage(mrbm_stage::StageError::Failed(format!(
                "{}: {e}",
                path.display()
            )))
        };
        let bufs = [
            f32_bytes(&self.w1),
            f32_bytes(&self.b1),
            f32_bytes(&self.w2),
            f32_bytes(&self.b2),
            f64_bytes(&self.stats.mu),
            f64_bytes(&self.stats.sigma),
            self.classes.iter().flat_map(|l| l.to_le_bytes()).collect(),
        ];
        let specs: [(&str, Dtype, Vec<usize>); 7] = [
            ("w1", Dtype::F32, vec![d, hid]),
            ("b1", Dtype::F32, vec![hid]),
            ("w2", Dtype::F32, vec![hid, k]),
            ("b2", Dtype::F32, vec![k]),
            ("mu", Dtype::F64, vec![hid]),
            ("sigma", Dtype::F64, vec![hid, hid]),
            ("classes", Dtype::I64, vec![k]),
        ];
        let mut tensors = Vec::new();
        for ((name, dt, shape), b) in specs.into_iter().zip(&bufs) {
            tensors.push((
                name,
                TensorView::new(dt, shape, b).map_err(|e| fail(e.to_string()))?,
            ));
        }
        let mut meta = HashMap::new();
        meta.insert("mrbm_artifact".to_string(), "judge".to_string());
        meta.insert(
            "shape".to_string(),
            format!("{},{},{}", self.shape[0], self.shape[1], self.shape[2]),
        );
        // 17 significant digits: the f64 reads back exactly.
        meta.insert(
            "temperature".to_string(),
            format!("{:.17e}", self.temperature),
        );
        meta.insert("count".to_string(), self.stats.count.to_string());
        mrbm_data::artifact::write_tensors(path, tensors, Some(meta))
            .map_err(|e| fail(e.to_string()))
    }

    /// Read a file written by [`Judge::save`].
    pub fn load(path: &Path) -> Result<Judge, JudgeError> {
        let bad = |m: String| JudgeError::Format(path.display().to_string(), m);
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = md.metadata().clone().unwrap_or_default();
        if meta.get("mrbm_artifact").map(String::as_str) != Some("judge") {
            return Err(bad(
                "its metadata does not say mrbm_artifact = judge (give the judge_fit stage's output)"
                    .into(),
            ));
        }
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let get = |name: &str, dt: Dtype| -> Result<(Vec<usize>, Vec<u8>), JudgeError> {
            let t = st
                .tensor(name)
                .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            if t.dtype() != dt {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, expected {dt:?}",
                    t.dtype()
                )));
            }
            Ok((t.shape().to_vec(), t.data().to_vec()))
        };
        let f32s = |b: Vec<u8>| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                .collect()
        };
        let f64s = |b: Vec<u8>| -> Vec<f64> {
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
                .collect()
        };
        let shape: Vec<usize> = meta
            .get("shape")
            .ok_or_else(|| bad("no `shape` in its metadata".into()))?
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("metadata `shape`: {e}")))?;
        if shape.len() != 3 {
            return Err(bad(format!(
                "metadata `shape` has {} numbers, not 3",
                shape.len()
            )));
        }
        let temperature: f64 = meta
            .get("temperature")
            .ok_or_else(|| bad("no `temperature` in its metadata".into()))?
            .parse()
            .map_err(|e| bad(format!("metadata `temperature`: {e}")))?;
        let count: usize = meta
            .get("count")
            .map(|c| c.parse().unwrap_or(0))
            .unwrap_or(0);
        let (s1, w1) = get("w1", Dtype::F32)?;
        let (_, b1) = get("b1", Dtype::F32)?;
        let (s2, w2) = get("w2", Dtype::F32)?;
        let (_, b2) = get("b2", Dtype::F32)?;
        let (_, mu) = get("mu", Dtype::F64)?;
        let (_, sigma) = get("sigma", Dtype::F64)?;
        let (_, classes) = get("classes", Dtype::I64)?;
        let classes: Vec<i64> = classes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        let d: usize = shape.iter().product();
        let (hid, k) = (s1.get(1).copied().unwrap_or(0), classes.len());
        let j = Judge {
            shape: [shape[0], shape[1], shape[2]],
            classes,
            hidden: hid,
            w1: f32s(w1),
            b1: f32s(b1),
            w2: f32s(w2),
            b2: f32s(b2),
            temperature,
            stats: GaussianStats {
                dim: hid,
                count,
                mu: f64s(mu),
                sigma: f64s(sigma),
            },
        };
        if s1 != [d, hid]
            || j.b1.len() != hid
            || s2 != [hid, k]
            || j.b2.len() != k
            || j.stats.mu.len() != hid
            || j.stats.sigma.len() != hid * hid
        {
            return Err(bad("its tensors' shapes do not fit together".into()));
        }
        Ok(j)
    }
}
