//! Linear SVM trained by dual coordinate descent, as LIBLINEAR does it
//! (Hsieh, Chang, Lin, Keerthi & Sundararajan, ICML 2008, Algorithm 3;
//! LIBLINEAR's `solve_l2r_l1l2_svc`, solvers `-s 3` and `-s 1`).
//!
//! For each binary problem (labels y_i in {-1, +1}) it solves the dual
//!
//! ```text
//!   min_a  1/2 a^T (Q + D) a - e^T a,   0 <= a_i <= U,   Q_ij = y_i y_j x_i.x_j
//! ```
//!
//! with, for the hinge loss (-s 3), D = 0 and U = C; for the squared hinge
//! loss (-s 1), D_ii = 1/(2C) and U = infinity. It keeps w = sum_i a_i y_i x_i
//! up to date so that each coordinate step costs O(nnz(x_i)), visits the
//! coordinates in a fresh random order each outer iteration, and shrinks
//! (temporarily drops) coordinates whose projected gradient says they sit at
//! a bound, exactly as LIBLINEAR does. The one deliberate difference: the
//! random order comes from a seeded ChaCha generator instead of C's `rand()`,
//! so runs are reproducible across platforms (the optimum is the same; the
//! path to it differs, so iteration counts and last digits may too).
//!
//! Many classes are handled one-vs-rest (LIBLINEAR's default for these
//! solvers), each class an independent problem solved in parallel by rayon.
//! Two classes give a single binary problem, as in LIBLINEAR.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Which loss the SVM minimises (both L2-regularised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// max(0, 1 - y w.x): LIBLINEAR `-s 3`.
    Hinge,
    /// max(0, 1 - y w.x)^2: LIBLINEAR `-s 1` (its default).
    SquaredHinge,
}

/// Solver settings; the names follow LIBLINEAR's command-line options. They
/// are also the parameters of the `svm` stage (`mrbm params svm` shows the
/// doc comments below): a key left out takes the value of [`Default`].
// mrbm params: svm
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SvmConfig {
    /// "squared_hinge" (LIBLINEAR -s 1, its default) or "hinge" (-s 3). Assumption: the paper does not say.
    pub loss: Loss,
    /// Cost C of margin violations (-c). Assumption: LIBLINEAR's default 1.
    /// Written `C` as in the papers and LIBLINEAR's docs; `c` is accepted.
    #[serde(rename = "C", alias = "c")]
    pub c: f64,
    /// Stopping tolerance on the dual projected gradient (-e; LIBLINEAR's default 0.1).
    pub eps: f64,
    /// Outer iterations per class before stopping unconverged (LIBLINEAR: 300, fixed).
    pub max_iter: usize,
    /// -B: value of the constant feature whose weight is the intercept; negative for none. Assumption: 1.
    pub bias: f64,
    /// Shrink the active set as LIBLINEAR does (same optimum, faster).
    pub shrinking: bool,
    /// Standardise features with the training split's mean and standard deviation. Assumption: off.
    pub standardize: bool,
    /// Seed of the random coordinate order.
    pub seed: u64,
}

impl Default for SvmConfig {
    fn default() -> Self {
        SvmConfig {
            loss: Loss::SquaredHinge,
            c: 1.0,
            eps: 0.1,
            max_iter: 1000,
            bias: 1.0,
            shrinking: true,
            standardize: false,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SvmError {
    #[error("{features} feature values do not make {rows} rows of {dim} features")]
    ShapeMismatch {
        features: usize,
        rows: usize,
        dim: usize,
    },
    #[error("{labels} labels for {rows} feature rows: the counts must agree")]
    LabelCountMismatch { labels: usize, rows: usize },
    #[error("the training set is empty")]
    Empty,
    #[error("the training set has a single class ({0}); an SVM needs at least two")]
    SingleClass(i64),
    #[error(
        "feature {col} of row {row} is {value} (NaN or infinite features cannot be classified)"
    )]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("invalid parameter: {0}")]
    Param(String),
    #[error("feature dimension {got} differs from the {expected} the model was trained on")]
    DimMismatch { expected: usize, got: usize },
}

/// What happened in one binary sub-problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    /// The class trained as +1 against the rest.
    pub class: i64,
    /// Final dual objective 1/2 a^T (Q + D) a - e^T a (LIBLINEAR prints it as "Objective value").
    pub dual_objective: f64,
    /// Outer iterations run.
    pub iterations: usize,
    /// False when `max_iter` was reached before the stopping criterion.
    pub converged: bool,
    /// Number of support vectors (a_i > 0).
    pub n_sv: usize,
}

/// A trained one-vs-rest linear SVM.
#[derive(Debug, Clone)]
pub struct LinearSvm {
    /// The sorted class labels.
    pub classes: Vec<i64>,
    /// One weight vector per binary problem (length dim, or dim + 1 with a bias).
    pub weights: Vec<Vec<f64>>,
    pub dim: usize,
    pub bias: f64,
    /// Per-feature (mean, 1/std) when standardising.
    pub scaler: Option<Vec<(f64, f64)>>,
    pub reports: Vec<ClassReport>,
}

/// Training rows: dense, or compressed sparse rows when most entries are
/// zero (raw pixels), which makes each coordinate step O(nnz) as in LIBLINEAR.
enum Rows {
    Dense {
        x: Vec<f32>,
        d: usize,
    },
    Sparse {
        ptr: Vec<usize>,
        idx: Vec<u32>,
        val: Vec<f32>,
    },
}

impl Rows {
    fn build(x: &[f32], n: usize, d: usize) -> Rows {
        let nnz = x.iter().filter(|v| **v != 0.0).count();
        // Sparse costs ~2x per stored entry (index load + gather): worth it below ~40% density.
        if n > 0 && d > 0 && (nnz as f64) < 0.4 * (n * d) as f64 {
            let mut ptr = Vec::with_capacity(n + 1);
            let mut idx = Vec::with_capacity(nnz);
            let mut val = Vec::with_capacity(nnz);
            ptr.push(0);
            for r in 0..n {
                for (j, &v) in x[r * d..(r + 1) * d].iter().enumerate() {
                    if v != 0.0 {
                        idx.push(j as u32);
                        val.push(v);
                    }
                }
                ptr.push(idx.len());
            }
            Rows::Sparse { ptr, idx, val }
        } else {
            Rows::Dense { x: x.to_vec(), d }
        }
    }

    #[inline]
    fn dot(&self, i: usize, w: &[f64]) -> f64 {
        match self {
            Rows::Dense { x, d } => dense_dot(&x[i * d..(i + 1) * d], &w[..*d]),
            Rows::Sparse { ptr, idx, val } => {
                let (a, b) = (ptr[i], ptr[i + 1]);
                let mut s = 0.0;
                for (j, v) in idx[a..b].iter().zip(&val[a..b]) {
                    s += w[*j as usize] * *v as f64;
                }
                s
            }
        }
    }

    #[inline]
    fn axpy(&self, i: usize, a: f64, w: &mut [f64]) {
        match self {
            Rows::Dense { x, d } => {
                for (wj, xj) in w[..*d].iter_mut().zip(&x[i * d..(i + 1) * d]) {
                    *wj += a * *xj as f64;
                }
            }
            Rows::Sparse { ptr, idx, val } => {
                let (s, e) = (ptr[i], ptr[i + 1]);
                for (j, v) in idx[s..e].iter().zip(&val[s..e]) {
                    w[*j as usize] += a * *v as f64;
                }
            }
        }
    }

    fn nrm2_sq(&self, i: usize) -> f64 {
        match self {
            Rows::Dense { x, d } => x[i * d..(i + 1) * d]
                .iter()
                .map(|v| (*v as f64) * (*v as f64))
                .sum(),
            Rows::Sparse { ptr, val, .. } => val[ptr[i]..ptr[i + 1]]
                .iter()
                .map(|v| (*v as f64) * (*v as f64))
                .sum(),
        }
    }
}

/// Dot product with four accumulators, so the compiler can vectorise it.
#[inline]
fn dense_dot(x: &[f32], w: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let xc = x.chunks_exact(4);
    let wc = w.chunks_exact(4);
    let (xr, wr) = (xc.remainder(), wc.remainder());
    for (a, b) in xc.zip(wc) {
        acc[0] += a[0] as f64 * b[0];
        acc[1] += a[1] as f64 * b[1];
        acc[2] += a[2] as f64 * b[2];
        acc[3] += a[3] as f64 * b[3];
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (a, b) in xr.iter().zip(wr) {
        s += *a as f64 * b;
    }
    s
}

/// Check the shapes and values of a feature matrix and its labels.
pub fn validate(x: &[f32], n: usize, d: usize, labels: &[i64]) -> Result<(), SvmError> {
    if x.len() != n * d {
        return Err(SvmError::ShapeMismatch {
            features: x.len(),
            rows: n,
            dim: d,
        });
    }
    if labels.len() != n {
        return Err(SvmError::LabelCountMismatch {
            labels: labels.len(),
            rows: n,
        });
    }
    if let Some(p) = x.iter().position(|v| !v.is_finite()) {
        return Err(SvmError::NonFinite {
            row: p / d.max(1),
            col: p % d.max(1),
            value: x[p],
        });
    }
    Ok(())
}

impl SvmConfig {
    fn check(&self) -> Result<(), SvmError> {
        if !(self.c > 0.0 && self.c.is_finite()) {
            return Err(SvmError::Param(format!(
                "c must be a positive number, got {}",
                self.c
            )));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(SvmError::Param(format!(
                "eps must be a positive number, got {}",
                self.eps
            )));
        }
        if self.max_iter == 0 {
            return Err(SvmError::Param("max_iter must be at least 1".into()));
        }
        if !self.bias.is_finite() {
            return Err(SvmError::Param(format!(
                "bias must be finite, got {}",
                self.bias
            )));
        }
        Ok(())
    }
}

/// Train on `n` rows of `d` features (row-major `x`) with integer labels.
pub fn fit(
    x: &[f32],
    n: usize,
    d: usize,
    labels: &[i64],
    cfg: &SvmConfig,
) -> Result<LinearSvm, SvmError> {
    cfg.check()?;
    validate(x, n, d, labels)?;
    if n == 0 {
        return Err(SvmError::Empty);
    }
    let mut classes: Vec<i64> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    if classes.len() < 2 {
        return Err(SvmError::SingleClass(classes[0]));
    }

    let (scaler, rows) = if cfg.standardize {
        let scaler = fit_scaler(x, n, d);
        let mut z = x.to_vec();
        apply_scaler(&scaler, &mut z, d);
        (Some(scaler), Rows::build(&z, n, d))
    } else {
        (None, Rows::build(x, n, d))
    };

    // Two classes: one binary problem with the larger label as +1 (the dual
    // objective does not depend on which side is +1 when Cp = Cn).
    let positives: Vec<i64> = if classes.len() == 2 {
        vec![classes[1]]
    } else {
        classes.clone()
    };
    let results: Vec<(Vec<f64>, ClassReport)> = positives
        .par_iter()
        .enumerate()
        .map(|(k, &pos)| {
            let y: Vec<i8> = labels
                .iter()
                .map(|&l| if l == pos { 1 } else { -1 })
                .collect();
            // Each class gets its own stream, so the result does not depend on scheduling.
            let seed = cfg.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            solve_binary(&rows, n, d, &y, cfg, seed, pos)
        })
        .collect();
    let (weights, reports) = results.into_iter().unzip();
    Ok(LinearSvm {
        classes,
        weights,
        dim: d,
        bias: cfg.bias,
        scaler,
        reports,
    })
}

fn fit_scaler(x: &[f32], n: usize, d: usize) -> Vec<(f64, f64)> {
    let mut mean = vec![0.0f64; d];
    for r in 0..n {
        for (m, v) in mean.iter_mut().zip(&x[r * d..(r + 1) * d]) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut var = vec![0.0f64; d];
    for r in 0..n {
        for ((s, v), m) in var.iter_mut().zip(&x[r * d..(r + 1) * d]).zip(&mean) {
            let t = *v as f64 - m;
            *s += t * t;
        }
    }
    mean.iter()
        .zip(&var)
        .map(|(m, s)| {
            let sd = (s / n as f64).sqrt();
            // A constant feature carries no information; leave it centred at 0.
            (*m, if sd > 1e-12 { 1.0 / sd } else { 1.0 })
        })
        .collect()
}

fn apply_scaler(scaler: &[(f64, f64)], x: &mut [f32], d: usize) {
    for row in x.chunks_exact_mut(d) {
        for (v, (m, inv)) in row.iter_mut().zip(scaler) {
            *v = ((*v as f64 - m) * inv) as f32;
        }
    }
}

/// LIBLINEAR's solve_l2r_l1l2_svc on one binary problem. Returns w (with the
/// bias weight last when cfg.bias >= 0) and the report.
fn solve_binary(
    rows: &Rows,
    n: usize,
    d: usize,
    y: &[i8],
    cfg: &SvmConfig,
    seed: u64,
    class: i64,
) -> (Vec<f64>, ClassReport) {
    let has_bias = cfg.bias >= 0.0;
    let b = if has_bias { cfg.bias } else { 0.0 };
    let w_size = d + has_bias as usize;
    let (diag, upper) = match cfg.loss {
        Loss::Hinge => (0.0, cfg.c),
        Loss::SquaredHinge => (0.5 / cfg.c, f64::INFINITY),
    };
    let mut w = vec![0.0f64; w_size];
    let mut alpha = vec![0.0f64; n];
    let qd: Vec<f64> = (0..n).map(|i| diag + rows.nrm2_sq(i) + b * b).collect();
    let mut index: Vec<usize> = (0..n).collect();
    let mut active = n;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pg_max_old = f64::INFINITY;
    let mut pg_min_old = f64::NEG_INFINITY;
    let mut iter = 0;
    let mut converged = false;

    while iter < cfg.max_iter {
        let mut pg_max_new = f64::NEG_INFINITY;
        let mut pg_min_new = f64::INFINITY;
        for i in 0..active {
            let j = i + rng.random_range(0..active - i);
            index.swap(i, j);
        }
        let mut s = 0;
        while s < active {
            let i = index[s];
            let yi = y[i] as f64;
            let wx = rows.dot(i, &w) + if has_bias { w[d] * b } else { 0.0 };
            let g = yi * wx - 1.0 + alpha[i] * diag;
            let mut pg = 0.0;
            if alpha[i] == 0.0 {
                if g > pg_max_old && cfg.shrinking {
                    active -= 1;
                    index.swap(s, active);
                    continue;
                } else if g < 0.0 {
                    pg = g;
                }
            } else if alpha[i] == upper {
                if g < pg_min_old && cfg.shrinking {
                    active -= 1;
                    index.swap(s, active);
                    continue;
                } else if g > 0.0 {
                    pg = g;
                }
            } else {
                pg = g;
            }
            pg_max_new = pg_max_new.max(pg);
            pg_min_new = pg_min_new.min(pg);
            if pg.abs() > 1e-12 {
                let old = alpha[i];
                alpha[i] = (alpha[i] - g / qd[i]).max(0.0).min(upper);
                let delta = (alpha[i] - old) * yi;
                rows.axpy(i, delta, &mut w);
                if has_bias {
                    w[d] += delta * b;
                }
            }
            s += 1;
        }
        iter += 1;
        if pg_max_new - pg_min_new <= cfg.eps
            && pg_max_new.abs() <= cfg.eps
            && pg_min_new.abs() <= cfg.eps
        {
            if active == n {
                converged = true;
                break;
            }
            // Converged on the shrunk set: check again on every coordinate.
            active = n;
            pg_max_old = f64::INFINITY;
            pg_min_old = f64::NEG_INFINITY;
            continue;
        }
        pg_max_old = if pg_max_new <= 0.0 {
            f64::INFINITY
        } else {
            pg_max_new
        };
        pg_min_old = if pg_min_new >= 0.0 {
            f64::NEG_INFINITY
        } else {
            pg_min_new
        };
    }

    let mut v: f64 = w.iter().map(|x| x * x).sum();
    let mut n_sv = 0;
    for a in &alpha {
        v += a * (a * diag - 2.0);
        n_sv += (*a > 0.0) as usize;
    }
    (
        w,
        ClassReport {
            class,
            dual_objective: v / 2.0,
            iterations: iter,
            converged,
            n_sv,
        },
    )
}

impl LinearSvm {
    /// Decision values (one per binary problem) of one feature row.
    pub fn decision(&self, row: &[f32]) -> Vec<f64> {
        let d = self.dim;
        let z: Vec<f32>;
        let row = match &self.scaler {
            Some(s) => {
                let mut t = row.to_vec();
                apply_scaler(s, &mut t, d);
                z = t;
                &z[..]
            }
            None => row,
        };
        self.weights
            .iter()
            .map(|w| {
                dense_dot(row, &w[..d])
                    + if self.bias >= 0.0 {
                        w[d] * self.bias
                    } else {
                        0.0
                    }
            })
            .collect()
    }

    /// Predicted labels of `n` rows (in parallel).
    pub fn predict(&self, x: &[f32], n: usize) -> Result<Vec<i64>, SvmError> {
        if x.len() != n * self.dim {
            return Err(SvmError::DimMismatch {
                expected: self.dim,
                got: x.len().checked_div(n).unwrap_or(0),
            });
        }
        if let Some(p) = x.iter().position(|v| !v.is_finite()) {
            return Err(SvmError::NonFinite {
                row: p / self.dim.max(1),
                col: p % self.dim.max(1),
                value: x[p],
            });
        }
        Ok((0..n)
            .into_par_iter()
            .map(|i| {
                let dec = self.decision(&x[i * self.dim..(i + 1) * self.dim]);
                if self.classes.len() == 2 {
                    if dec[0] > 0.0 {
                        self.classes[1]
                    } else {
                        self.classes[0]
                    }
                } else {
                    // First maximum wins ties, as in LIBLINEAR's predict_values.
                    let mut best = 0;
                    for (k, v) in dec.iter().enumerate() {
                        if *v > dec[best] {
                            best = k;
                        }
                    }
                    self.classes[best]
                }
            })
            .collect())
    }
}

/// Percentage of `pred` that differs from `truth`.
pub fn error_percent(pred: &[i64], truth: &[i64]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    let wrong = pred.iter().zip(truth).filter(|(p, t)| p != t).count();
    100.0 * wrong as f64 / truth.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian blobs plus a third, deterministic.
    fn blobs(n_per: usize, d: usize, sep: f32, seed: u64) -> (Vec<f32>, Vec<i64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for c in 0..3i64 {
            for _ in 0..n_per {
                for j in 0..d {
                    let centre = if j as i64 == c { sep } else { 0.0 };
                    let u: f32 =
                        rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>() - 1.5;
                    x.push(centre + u);
                }
                y.push(c * 10 + 1);
            }
        }
        (x, y)
    }

    #[test]
    fn separable_blobs_are_classified() {
        let (x, y) = blobs(60, 5, 4.0, 1);
        for loss in [Loss::Hinge, Loss::SquaredHinge] {
            let cfg = SvmConfig {
                loss,
                eps: 1e-3,
                ..Default::default()
            };
            let m = fit(&x, y.len(), 5, &y, &cfg).unwrap();
            assert_eq!(m.classes, vec![1, 11, 21]);
            assert!(m.reports.iter().all(|r| r.converged), "{:?}", m.reports);
            let p = m.predict(&x, y.len()).unwrap();
            assert!(error_percent(&p, &y) < 2.0, "{}", error_percent(&p, &y));
        }
    }

    /// At the dual optimum, the KKT conditions hold and the duality gap
    /// (primal - (-dual)) is small: checks the solver, not just accuracy.
    #[test]
    fn duality_gap_closes() {
        let (x, y) = blobs(40, 4, 1.0, 2);
        let n = y.len();
        for loss in [Loss::Hinge, Loss::SquaredHinge] {
            for bias in [-1.0, 1.0] {
                let cfg = SvmConfig {
                    loss,
                    eps: 1e-6,
                    c: 0.5,
                    bias,
                    max_iter: 100_000,
                    ..Default::default()
                };
                let m = fit(&x, n, 4, &y, &cfg).unwrap();
                for (w, r) in m.weights.iter().zip(&m.reports) {
                    let mut primal = 0.5 * w.iter().map(|v| v * v).sum::<f64>();
                    for i in 0..n {
                        let yi = if y[i] == r.class { 1.0 } else { -1.0 };
                        let mut wx = dense_dot(&x[i * 4..i * 4 + 4], &w[..4]);
                        if bias >= 0.0 {
                            wx += w[4] * bias;
                        }
                        let xi = (1.0 - yi * wx).max(0.0);
                        primal += cfg.c * if loss == Loss::Hinge { xi } else { xi * xi };
                    }
                    let gap = primal + r.dual_objective;
                    assert!(r.converged);
                    assert!(
                        gap.abs() < 1e-4 * primal.abs().max(1.0),
                        "{loss:?} bias {bias}: primal {primal} dual {} gap {gap}",
                        -r.dual_objective
                    );
                }
            }
        }
    }

    #[test]
    fn shrinking_and_seed_do_not_change_the_optimum() {
        let (x, y) = blobs(50, 6, 1.5, 3);
        let n = y.len();
        let a = fit(
            &x,
            n,
            6,
            &y,
            &SvmConfig {
                eps: 1e-5,
                seed: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let b = fit(
            &x,
            n,
            6,
            &y,
            &SvmConfig {
                eps: 1e-5,
                seed: 9,
                shrinking: false,
                ..Default::default()
            },
        )
        .unwrap();
        for (ra, rb) in a.reports.iter().zip(&b.reports) {
            assert!(
                (ra.dual_objective - rb.dual_objective).abs() < 1e-6 * ra.dual_objective.abs(),
                "{ra:?} {rb:?}"
            );
        }
    }

    #[test]
    fn sparse_and_dense_paths_agree() {
        // Mostly-zero data takes the sparse path; same data shifted by +1 on a
        // dummy column would be dense. Compare against forcing dense by rows.
        let (mut x, y) = blobs(30, 10, 3.0, 4);
        for (k, v) in x.iter_mut().enumerate() {
            if k % 10 >= 3 {
                *v = 0.0;
            }
        }
        let n = y.len();
        let rows_s = Rows::build(&x, n, 10);
        assert!(matches!(rows_s, Rows::Sparse { .. }));
        let rows_d = Rows::Dense {
            x: x.clone(),
            d: 10,
        };
        let w: Vec<f64> = (0..10).map(|j| j as f64 * 0.1 - 0.3).collect();
        for i in 0..n {
            assert!((rows_s.dot(i, &w) - rows_d.dot(i, &w)).abs() < 1e-12);
            assert!((rows_s.nrm2_sq(i) - rows_d.nrm2_sq(i)).abs() < 1e-12);
        }
    }

    #[test]
    fn two_classes_train_one_problem() {
        let (x, y) = blobs(30, 3, 3.0, 5);
        let n2 = 60;
        let m = fit(&x[..n2 * 3], n2, 3, &y[..n2], &SvmConfig::default()).unwrap();
        assert_eq!(m.weights.len(), 1);
        let p = m.predict(&x[..n2 * 3], n2).unwrap();
        assert!(error_percent(&p, &y[..n2]) < 5.0);
    }

    #[test]
    fn standardisation_uses_training_statistics() {
        let (mut x, y) = blobs(40, 3, 3.0, 6);
        // Blow one feature up: standardisation must undo it.
        for row in x.chunks_exact_mut(3) {
            row[0] = row[0] * 1000.0 + 5000.0;
        }
        let m = fit(
            &x,
            y.len(),
            3,
            &y,
            &SvmConfig {
                standardize: true,
                eps: 1e-3,
                ..Default::default()
            },
        )
        .unwrap();
        let s = m.scaler.as_ref().unwrap();
        let mean0: f64 = x.chunks_exact(3).map(|r| r[0] as f64).sum::<f64>() / y.len() as f64;
        assert!(
            (s[0].0 - mean0).abs() < 1e-6 * mean0 && s[0].1 < 1e-2,
            "{:?} vs mean {mean0}",
            s[0]
        );
        let p = m.predict(&x, y.len()).unwrap();
        assert!(error_percent(&p, &y) < 3.0);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let cfg = SvmConfig::default();
        assert!(matches!(
            fit(&[0.0; 6], 2, 3, &[1], &cfg),
            Err(SvmError::LabelCountMismatch { .. })
        ));
        assert!(matches!(
            fit(&[0.0; 5], 2, 3, &[1, 2], &cfg),
            Err(SvmError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            fit(&[0.0; 6], 2, 3, &[4, 4], &cfg),
            Err(SvmError::SingleClass(4))
        ));
        assert!(matches!(
            fit(&[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0], 2, 3, &[1, 2], &cfg),
            Err(SvmError::NonFinite { row: 0, col: 1, .. })
        ));
        assert!(matches!(fit(&[], 0, 3, &[], &cfg), Err(SvmError::Empty)));
        assert!(matches!(
            fit(
                &[0.0; 6],
                2,
                3,
                &[1, 2],
                &SvmConfig {
                    c: 0.0,
                    ..cfg.clone()
                }
            ),
            Err(SvmError::Param(_))
        ));
        let m = fit(&[0.0, 1.0, 1.0, 0.0], 2, 2, &[1, 2], &cfg).unwrap();
        assert!(matches!(
            m.predict(&[0.0; 3], 1),
            Err(SvmError::DimMismatch { .. })
        ));
    }
}
