//! Linear SVM trained by dual coordinate descent, as LIBLINEAR does it
//! (Hsieh, Chang, Lin, Keerthi & Sundararajan, ICML 2008, Algorithm 3;
//! LIBLINEAR's `solve_l2r_l1l2_svc`, solvers `-s 3` and `-s 1`), with
//! LIBLINEAR 2.50's fallback: a squared-hinge problem whose coordinate
//! descent reaches `max_iter` (LIBLINEAR: 300) outer iterations switches to
//! the primal Newton solver of `-s 2` (Galli & Lin 2021: Newton directions by
//! preconditioned conjugate gradient, backtracking line search), warm-started
//! from the dual's w, with LIBLINEAR's tolerance `0.1 * eps * min(#pos, #neg) / l`
//! on the gradient norm relative to its norm at w = 0. The hinge loss has no
//! such fallback in LIBLINEAR, nor here: it stops at `max_iter`.
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, mrbm_stage::ParamDocs)]
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
    /// Coordinate-descent iterations per class (LIBLINEAR: 300, fixed); then
    /// squared hinge switches to the primal Newton solver as LIBLINEAR does,
    /// hinge stops unconverged.
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

/// LIBLINEAR 2.50's `dual_solver_max_iter`.
pub const DUAL_MAX_ITER: usize = 300;
/// LIBLINEAR's `NEWTON` defaults: at most 1000 Newton steps, CG tolerance 0.5.
const NEWTON_MAX_ITER: usize = 1000;
const NEWTON_EPS_CG: f64 = 0.5;

impl Default for SvmConfig {
    fn default() -> Self {
        SvmConfig {
            loss: Loss::SquaredHinge,
            c: 1.0,
            eps: 0.1,
            max_iter: DUAL_MAX_ITER,
            bias: 1.0,
            shrinking: true,
            standardize: false,
            seed: 0,
        }
    }
}

/// What can go wrong fitting or applying the SVM. Cancellation is the
/// stages' own [`StageError::Cancelled`](mrbm_stage::StageError::Cancelled),
/// wrapped: there is one `Cancelled` in the workspace.
#[derive(Debug, thiserror::Error)]
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
    #[error(transparent)]
    Stage(#[from] mrbm_stage::StageError),
}

/// Rows of work between two polls of the cancel flag: a coordinate step or a
/// row of a Newton pass costs O(nnz of the row), so even 10^5-feature dense
/// rows keep a poll every few milliseconds.
const POLL_ROWS: usize = 64;

/// What happened in one binary sub-problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    /// The class trained as +1 against the rest.
    pub class: i64,
    /// Dual objective 1/2 a^T (Q + D) a - e^T a where coordinate descent
    /// stopped (LIBLINEAR prints it as "Objective value"), before any switch
    /// to the primal solver.
    pub dual_objective: f64,
    /// Outer coordinate-descent iterations run.
    pub iterations: usize,
    /// False when the last solver stopped before its stopping criterion
    /// (coordinate descent at `max_iter` without a switch, or Newton at its
    /// own limit or a failed line search).
    pub converged: bool,
    /// Number of support vectors: a_i > 0, or after the primal solver the
    /// rows with y_i w.x_i < 1 (those with a non-zero loss).
    pub n_sv: usize,
    /// Whether coordinate descent reached `max_iter` and handed over to the
    /// primal Newton solver (squared hinge only, as in LIBLINEAR).
    #[serde(default)]
    pub switched: bool,
    /// Newton steps of the primal solver after the switch (0 when it did not
    /// switch, or when the dual's w already met the primal tolerance).
    #[serde(default)]
    pub newton_iterations: usize,
    /// Primal objective 1/2 |w|^2 + C sum_i loss_i of the returned w (the
    /// bias weight included in |w|, as LIBLINEAR regularises it).
    #[serde(default)]
    pub primal_objective: f64,
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
    fit_cancellable(x, n, d, labels, cfg, &|| false)
}

/// [`fit`], polling `cancel` every [`POLL_ROWS`] rows of work in every
/// solver loop; `Err(SvmError::Stage(StageError::Cancelled))` as soon as it returns true.
pub fn fit_cancellable(
    x: &[f32],
    n: usize,
    d: usize,
    labels: &[i64],
    cfg: &SvmConfig,
    cancel: &(dyn Fn() -> bool + Sync),
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
    let results: Option<Vec<(Vec<f64>, ClassReport)>> = positives
        .par_iter()
        .enumerate()
        .map(|(k, &pos)| {
            let y: Vec<i8> = labels
                .iter()
                .map(|&l| if l == pos { 1 } else { -1 })
                .collect();
            // Each class gets its own stream, so the result does not depend on scheduling.
            let seed = cfg.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let problem = Binary {
                rows: &rows,
                n,
                d,
                y: &y,
            };
            solve_binary(&problem, cfg, seed, pos, cancel)
        })
        .collect();
    let (weights, reports) = results
        .ok_or(SvmError::Stage(mrbm_stage::StageError::Cancelled))?
        .into_iter()
        .unzip();
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

/// One binary problem of [`solve_binary`]: the rows, their count and
/// dimension, and the labels (+1 for the class, -1 for the rest).
#[derive(Clone, Copy)]
struct Binary<'a> {
    rows: &'a Rows,
    n: usize,
    d: usize,
    y: &'a [i8],
}

/// Where the dual coordinate descent of [`solve_binary`] stopped.
struct Dual {
    w: Vec<f64>,
    alpha: Vec<f64>,
    /// The diagonal added to Q (0 for the hinge loss, 1/2C squared).
    diag: f64,
    iter: usize,
    converged: bool,
}

/// LIBLINEAR's dual coordinate descent with shrinking, up to
/// `cfg.max_iter` outer iterations; None when cancelled.
fn dual_coordinate_descent(
    p: &Binary,
    cfg: &SvmConfig,
    seed: u64,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Option<Dual> {
    let Binary { rows, n, d, y } = *p;
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
    // Coordinate steps so far (across outer iterations: a shrunk active set
    // can be smaller than POLL_ROWS).
    let mut steps = 0usize;

    while iter < cfg.max_iter {
        let mut pg_max_new = f64::NEG_INFINITY;
        let mut pg_min_new = f64::INFINITY;
        for i in 0..active {
            let j = i + rng.random_range(0..active - i);
            index.swap(i, j);
        }
        let mut s = 0;
        while s < active {
            steps += 1;
            if steps.is_multiple_of(POLL_ROWS) && cancel() {
                return None;
            }
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
    Some(Dual {
        w,
        alpha,
        diag,
        iter,
        converged,
    })
}

/// LIBLINEAR's solve_l2r_l1l2_svc on one binary problem. Returns w (with the
/// bias weight last when cfg.bias >= 0) and the report; None when cancelled.
fn solve_binary(
    p: &Binary,
    cfg: &SvmConfig,
    seed: u64,
    class: i64,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Option<(Vec<f64>, ClassReport)> {
    let Binary { rows, n, d, y } = *p;
    let has_bias = cfg.bias >= 0.0;
    let b = if has_bias { cfg.bias } else { 0.0 };
    let Dual {
        mut w,
        alpha,
        diag,
        iter,
        mut converged,
    } = dual_coordinate_descent(p, cfg, seed, cancel)?;

    let mut v: f64 = w.iter().map(|x| x * x).sum();
    let mut n_sv = 0;
    for a in &alpha {
        v += a * (a * diag - 2.0);
        n_sv += (*a > 0.0) as usize;
    }
    let mut newton_iterations = 0;
    let switched = cfg.loss == Loss::SquaredHinge && iter >= cfg.max_iter;
    // LIBLINEAR switches when the returned count reaches the cap, which
    // includes a problem that converged on its very last iteration.
    if switched {
        let pos = y.iter().filter(|v| **v > 0).count();
        let tol = 0.1 * cfg.eps * (pos.min(n - pos).max(1)) as f64 / n as f64;
        let mut f = L2SvcFun::new(rows, y, cfg.c, d, has_bias.then_some(b), cancel);
        let (steps, ok) = newton(&mut f, &mut w, tol)?;
        newton_iterations = steps;
        converged = ok;
    }
    let primal = L2SvcFun::new(rows, y, cfg.c, d, has_bias.then_some(b), cancel);
    let (primal_objective, margin_violators) = match cfg.loss {
        Loss::SquaredHinge => primal.objective(&w),
        Loss::Hinge => primal.hinge_objective(&w),
    };
    if primal.stopped() {
        return None;
    }
    if switched {
        n_sv = margin_violators;
    }
    Some((
        w,
        ClassReport {
            class,
            dual_objective: v / 2.0,
            iterations: iter,
            converged,
            n_sv,
            switched,
            newton_iterations,
            primal_objective,
        },
    ))
}

/// LIBLINEAR's `l2r_l2_svc_fun`: f(w) = 1/2 w.w + C sum_i max(0, 1 - y_i w.x_i)^2
/// with its gradient, generalised Hessian-vector product and diagonal
/// preconditioner, over the rows with a positive loss (the set I).
struct L2SvcFun<'a> {
    rows: &'a Rows,
    y: &'a [i8],
    c: f64,
    d: usize,
    /// The constant feature's value when there is a bias weight (last in w).
    bias: Option<f64>,
    /// X w, kept current by `fun` and `linesearch_and_update`.
    wx: Vec<f64>,
    tmp: Vec<f64>,
    /// Rows with y_i w.x_i < 1 at the last `grad`.
    active: Vec<usize>,
    wtw: f64,
    cancel: &'a (dyn Fn() -> bool + Sync),
    /// Set once `cancel` said so; every pass then returns early.
    stop: std::cell::Cell<bool>,
}

impl<'a> L2SvcFun<'a> {
    fn new(
        rows: &'a Rows,
        y: &'a [i8],
        c: f64,
        d: usize,
        bias: Option<f64>,
        cancel: &'a (dyn Fn() -> bool + Sync),
    ) -> Self {
        let n = y.len();
        L2SvcFun {
            rows,
            y,
            c,
            d,
            bias,
            wx: vec![0.0; n],
            tmp: vec![0.0; n],
            active: Vec::with_capacity(n),
            wtw: 0.0,
            cancel,
            stop: std::cell::Cell::new(false),
        }
    }

    /// Called with the row count of a pass: polls `cancel` every
    /// [`POLL_ROWS`] rows; true once cancelled (the pass should end).
    #[inline]
    fn halt(&self, k: usize) -> bool {
        if k.is_multiple_of(POLL_ROWS) && !self.stop.get() && (self.cancel)() {
            self.stop.set(true);
        }
        self.stop.get()
    }

    fn stopped(&self) -> bool {
        self.stop.get()
    }

    fn n_var(&self) -> usize {
        self.d + self.bias.is_some() as usize
    }

    #[inline]
    fn dot(&self, i: usize, v: &[f64]) -> f64 {
        self.rows.dot(i, v) + self.bias.map_or(0.0, |b| v[self.d] * b)
    }

    #[inline]
    fn axpy(&self, i: usize, a: f64, out: &mut [f64]) {
        self.rows.axpy(i, a, out);
        if let Some(b) = self.bias {
            out[self.d] += a * b;
        }
    }

    #[inline]
    fn c_times_loss(&self, i: usize, wx: f64) -> f64 {
        let m = 1.0 - self.y[i] as f64 * wx;
        if m > 0.0 {
            self.c * m * m
        } else {
            0.0
        }
    }

    /// f(w); leaves X w in `wx` for `grad`.
    fn fun(&mut self, w: &[f64]) -> f64 {
        for i in 0..self.y.len() {
            if self.halt(i) {
                return 0.0;
            }
            self.wx[i] = self.dot(i, w);
        }
        self.wtw = w.iter().map(|v| v * v).sum();
        let loss: f64 = (0..self.y.len())
            .map(|i| self.c_times_loss(i, self.wx[i]))
            .sum();
        loss + 0.5 * self.wtw
    }

    /// (f(w), number of rows with a positive loss), without touching state.
    fn objective(&self, w: &[f64]) -> (f64, usize) {
        let mut loss = 0.0;
        let mut k = 0;
        for i in 0..self.y.len() {
            if self.halt(i) {
                break;
            }
            let l = self.c_times_loss(i, self.dot(i, w));
            loss += l;
            k += (l > 0.0) as usize;
        }
        (loss + 0.5 * w.iter().map(|v| v * v).sum::<f64>(), k)
    }

    /// 1/2 w.w + C sum_i max(0, 1 - y_i w.x_i): the hinge loss's primal.
    fn hinge_objective(&self, w: &[f64]) -> (f64, usize) {
        let mut loss = 0.0;
        let mut k = 0;
        for i in 0..self.y.len() {
            if self.halt(i) {
                break;
            }
            let m = 1.0 - self.y[i] as f64 * self.dot(i, w);
            if m > 0.0 {
                loss += self.c * m;
                k += 1;
            }
        }
        (loss + 0.5 * w.iter().map(|v| v * v).sum::<f64>(), k)
    }

    /// Gradient at the w of the last `fun`/line search; sets the active set.
    fn grad(&mut self, w: &[f64], g: &mut [f64]) {
        self.active.clear();
        let mut coef = std::mem::take(&mut self.tmp);
        coef.clear();
        for i in 0..self.y.len() {
            let yi = self.y[i] as f64;
            let t = self.wx[i] * yi;
            if t < 1.0 {
                coef.push(self.c * yi * (t - 1.0));
                self.active.push(i);
            }
        }
        g.iter_mut().for_each(|v| *v = 0.0);
        for (k, &i) in self.active.iter().enumerate() {
            if self.halt(k) {
                break;
            }
            self.axpy(i, coef[k], g);
        }
        for (gj, wj) in g.iter_mut().zip(w) {
            *gj = wj + 2.0 * *gj;
        }
        coef.resize(self.y.len(), 0.0);
        self.tmp = coef;
    }

    fn diag_preconditioner(&self, m: &mut [f64]) {
        m.iter_mut().for_each(|v| *v = 1.0);
        for (k, &i) in self.active.iter().enumerate() {
            if self.halt(k) {
                return;
            }
            match self.rows {
                Rows::Dense { x, d } => {
                    for (mj, xj) in m[..*d].iter_mut().zip(&x[i * d..(i + 1) * d]) {
                        *mj += (*xj as f64) * (*xj as f64) * self.c * 2.0;
                    }
                }
                Rows::Sparse { ptr, idx, val } => {
                    for (j, v) in idx[ptr[i]..ptr[i + 1]].iter().zip(&val[ptr[i]..ptr[i + 1]]) {
                        m[*j as usize] += (*v as f64) * (*v as f64) * self.c * 2.0;
                    }
                }
            }
            if let Some(b) = self.bias {
                m[self.d] += b * b * self.c * 2.0;
            }
        }
    }

    /// Generalised Hessian times s: s + 2 C X_I^T X_I s.
    fn hv(&self, s: &[f64], hs: &mut [f64]) {
        hs.iter_mut().for_each(|v| *v = 0.0);
        for (k, &i) in self.active.iter().enumerate() {
            if self.halt(k) {
                return;
            }
            let xs = self.c * self.dot(i, s);
            self.axpy(i, xs, hs);
        }
        for (h, sj) in hs.iter_mut().zip(s) {
            *h = sj + 2.0 * *h;
        }
    }

    /// Backtracking line search along s from step `alpha` (LIBLINEAR's
    /// `l2r_erm_fun::linesearch_and_update`): on success w += step * s, f and
    /// X w updated, returns the step; after 20 halvings returns 0 and leaves w.
    fn linesearch_and_update(&mut self, w: &mut [f64], s: &[f64], f: &mut f64, g: &[f64]) -> f64 {
        let eta = 0.01;
        let fold = *f;
        let n = self.y.len();
        let mut xs = std::mem::take(&mut self.tmp);
        for (i, v) in xs.iter_mut().enumerate().take(n) {
            if self.halt(i) {
                break;
            }
            *v = self.dot(i, s);
        }
        let (mut sts, mut wts, mut gts) = (0.0, 0.0, 0.0);
        for j in 0..w.len() {
            sts += s[j] * s[j];
            wts += s[j] * w[j];
            gts += s[j] * g[j];
        }
        let mut alpha = 1.0;
        let mut found = false;
        for _ in 0..20 {
            if self.stopped() {
                break;
            }
            let loss: f64 = (0..n)
                .map(|i| self.c_times_loss(i, xs[i] * alpha + self.wx[i]))
                .sum();
            *f = loss + (alpha * alpha * sts + self.wtw) / 2.0 + alpha * wts;
            if *f - fold <= eta * alpha * gts {
                for (wxi, xsi) in self.wx.iter_mut().zip(&xs) {
                    *wxi += alpha * xsi;
                }
                found = true;
                break;
            }
            alpha *= 0.5;
        }
        self.tmp = xs;
        if !found {
            *f = fold;
            return 0.0;
        }
        for (wj, sj) in w.iter_mut().zip(s) {
            *wj += alpha * sj;
        }
        self.wtw += alpha * alpha * sts + 2.0 * alpha * wts;
        alpha
    }
}

fn nrm2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn ddot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// LIBLINEAR's `NEWTON::newton` from w (updated in place): Newton steps
/// until |grad f(w)| <= eps |grad f(0)|. Returns (steps, whether that
/// criterion was met); None when cancelled.
fn newton(fun: &mut L2SvcFun, w: &mut [f64], eps: f64) -> Option<(usize, bool)> {
    let n = fun.n_var();
    let mut g = vec![0.0; n];
    let mut s = vec![0.0; n];
    let mut r = vec![0.0; n];
    let mut m = vec![0.0; n];
    let alpha_pcg = 0.01;

    let w0 = vec![0.0; n];
    fun.fun(&w0);
    fun.grad(&w0, &mut g);
    let gnorm0 = nrm2(&g);

    let mut f = fun.fun(w);
    fun.grad(w, &mut g);
    let mut gnorm = nrm2(&g);
    if fun.stopped() {
        return None;
    }
    if gnorm <= eps * gnorm0 {
        return Some((0, true));
    }
    let mut steps = 0;
    while steps < NEWTON_MAX_ITER {
        fun.diag_preconditioner(&mut m);
        m.iter_mut()
            .for_each(|v| *v = (1.0 - alpha_pcg) + alpha_pcg * *v);
        pcg(fun, &g, &m, &mut s, &mut r);
        let fold = f;
        let step = fun.linesearch_and_update(w, &s, &mut f, &g);
        if fun.stopped() {
            return None;
        }
        if step == 0.0 {
            return Some((steps, false)); // line search failed
        }
        steps += 1;
        fun.grad(w, &mut g);
        if fun.stopped() {
            return None;
        }
        gnorm = nrm2(&g);
        if gnorm <= eps * gnorm0 {
            return Some((steps, true));
        }
        if f < -1.0e32 {
            return Some((steps, false));
        }
        if (fold - f).abs() <= 1.0e-12 * f.abs() {
            // No more progress in double precision: the optimum, in practice.
            return Some((steps, true));
        }
    }
    Some((steps, false))
}

/// Preconditioned conjugate gradient for H s = -g (LIBLINEAR's
/// `NEWTON::pcg`, stopped by the quadratic-model criterion). Returns the
/// CG iterations.
fn pcg(fun: &L2SvcFun, g: &[f64], m: &[f64], s: &mut [f64], r: &mut [f64]) -> usize {
    let n = g.len();
    let mut z = vec![0.0; n];
    let mut dv = vec![0.0; n];
    let mut hd = vec![0.0; n];
    for i in 0..n {
        s[i] = 0.0;
        r[i] = -g[i];
        z[i] = r[i] / m[i];
        dv[i] = z[i];
    }
    let mut ztr = ddot(&z, r);
    let cgtol = NEWTON_EPS_CG.min(ztr.sqrt().sqrt());
    let max_cg = n.max(5);
    let mut q = 0.0;
    let mut it = 0;
    while it < max_cg {
        it += 1;
        fun.hv(&dv, &mut hd);
        let dhd = ddot(&dv, &hd);
        if fun.stopped() || dhd <= 1.0e-16 {
            break;
        }
        let alpha = ztr / dhd;
        for i in 0..n {
            s[i] += alpha * dv[i];
            r[i] -= alpha * hd[i];
        }
        let new_q = -0.5 * (ddot(s, r) - ddot(s, g));
        let q_diff = new_q - q;
        if new_q <= 0.0 && q_diff <= 0.0 {
            if it as f64 * q_diff >= cgtol * new_q {
                break;
            }
        } else {
            break;
        }
        q = new_q;
        for i in 0..n {
            z[i] = r[i] / m[i];
        }
        let znew = ddot(&z, r);
        let beta = znew / ztr;
        for i in 0..n {
            dv[i] = beta * dv[i] + z[i];
        }
        ztr = znew;
    }
    it
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

    /// The switch: squared hinge forced onto the Newton solver after one
    /// dual iteration reaches the optimum that coordinate descent run to
    /// convergence finds (the primal objective at the dual's w), and its
    /// duality gap against that dual closes.
    #[test]
    fn newton_after_the_switch_reaches_the_dual_optimum() {
        let (x, y) = blobs(40, 4, 1.0, 7);
        let n = y.len();
        for bias in [-1.0, 1.0] {
            let exact = fit(
                &x,
                n,
                4,
                &y,
                &SvmConfig {
                    eps: 1e-7,
                    c: 0.5,
                    bias,
                    max_iter: 100_000,
                    ..Default::default()
                },
            )
            .unwrap();
            let switched = fit(
                &x,
                n,
                4,
                &y,
                &SvmConfig {
                    c: 0.5,
                    bias,
                    max_iter: 1,
                    eps: 1e-4,
                    ..Default::default()
                },
            )
            .unwrap();
            for (e, s) in exact.reports.iter().zip(&switched.reports) {
                assert!(!e.switched && e.newton_iterations == 0);
                assert_eq!(s.iterations, 1);
                assert!(
                    s.switched && s.newton_iterations > 0 && s.converged,
                    "{s:?}"
                );
                // At the optimum primal = -dual.
                let gap = (e.primal_objective + e.dual_objective).abs();
                assert!(gap < 1e-6 * e.primal_objective, "{e:?}");
                let rel = (s.primal_objective - e.primal_objective).abs() / e.primal_objective;
                assert!(rel < 1e-6, "bias {bias}: Newton {s:?} vs dual {e:?}");
            }
            for (we, ws) in exact.weights.iter().zip(&switched.weights) {
                for (a, b) in we.iter().zip(ws) {
                    assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{we:?} vs {ws:?}");
                }
            }
        }
        // The hinge loss has no primal fallback: it stops unconverged.
        let h = fit(
            &x,
            n,
            4,
            &y,
            &SvmConfig {
                loss: Loss::Hinge,
                max_iter: 1,
                eps: 1e-6,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(h
            .reports
            .iter()
            .all(|r| !r.switched && !r.converged && r.iterations == 1));
    }

    /// The dense and sparse Newton passes agree with finite differences of
    /// the objective (gradient) and of the gradient (Hessian-vector product,
    /// away from the loss's kinks).
    #[test]
    fn newton_gradient_and_hessian_match_finite_differences() {
        let (mut x, y) = blobs(20, 5, 1.0, 8);
        let n = y.len();
        let ys: Vec<i8> = y.iter().map(|&l| if l == 11 { 1 } else { -1 }).collect();
        for sparse in [false, true] {
            if sparse {
                for (k, v) in x.iter_mut().enumerate() {
                    if k % 5 >= 1 {
                        *v = 0.0;
                    }
                }
            }
            let rows = Rows::build(&x, n, 5);
            assert_eq!(matches!(rows, Rows::Sparse { .. }), sparse);
            let never = || false;
            let mut f = L2SvcFun::new(&rows, &ys, 0.7, 5, Some(1.5), &never);
            let w: Vec<f64> = (0..6).map(|j| 0.1 * j as f64 - 0.2).collect();
            let mut g = vec![0.0; 6];
            f.fun(&w);
            f.grad(&w, &mut g);
            let h = 1e-6;
            for j in 0..6 {
                let mut wp = w.clone();
                wp[j] += h;
                let mut wm = w.clone();
                wm[j] -= h;
                let (fp, _) = f.objective(&wp);
                let (fm, _) = f.objective(&wm);
                let fd = (fp - fm) / (2.0 * h);
                assert!(
                    (fd - g[j]).abs() < 1e-5 * (1.0 + g[j].abs()),
                    "{j}: {fd} vs {}",
                    g[j]
                );
            }
            let v: Vec<f64> = (0..6).map(|j| 0.3 - 0.05 * j as f64).collect();
            let mut hv = vec![0.0; 6];
            f.hv(&v, &mut hv);
            let wp: Vec<f64> = w.iter().zip(&v).map(|(a, b)| a + h * b).collect();
            let mut gp = vec![0.0; 6];
            f.fun(&wp);
            f.grad(&wp, &mut gp);
            for j in 0..6 {
                let fd = (gp[j] - g[j]) / h;
                assert!(
                    (fd - hv[j]).abs() < 1e-4 * (1.0 + hv[j].abs()),
                    "{j}: {fd} vs {}",
                    hv[j]
                );
            }
        }
    }

    /// Cancellation is polled inside each solver loop (dual coordinate
    /// descent, and the Newton solver after the switch) and stops the fit at
    /// the poll that sees it, with a typed error.
    #[test]
    fn cancel_stops_each_solver_at_the_next_poll() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (x, y) = blobs(200, 6, 1.0, 9);
        let n2 = 400; // two classes: one problem, so polls are sequential
        let (x, y) = (&x[..n2 * 6], &y[..n2]);
        for (loss, max_iter) in [
            (Loss::Hinge, 1000),
            (Loss::SquaredHinge, 1000),
            (Loss::SquaredHinge, 1),
        ] {
            let cfg = SvmConfig {
                loss,
                max_iter,
                eps: 1e-6,
                ..Default::default()
            };
            let polls = AtomicUsize::new(0);
            let count = || {
                polls.fetch_add(1, Ordering::Relaxed);
                false
            };
            let m = fit_cancellable(x, n2, 6, y, &cfg, &count).unwrap();
            let total = polls.load(Ordering::Relaxed);
            // A poll per POLL_ROWS coordinate steps: the first pass visits
            // every row, each later (shrunk) pass at least one, and they
            // add up even when a pass is shorter than POLL_ROWS.
            let r = &m.reports[0];
            assert!(
                total + 1 >= (n2 + r.iterations) / POLL_ROWS,
                "{loss:?}: {total} polls for {r:?}"
            );
            // Cancel inside the primal solver (after the one dual pass) or
            // half-way through the dual.
            let at = if max_iter == 1 {
                assert!(r.newton_iterations > 0);
                n2 / POLL_ROWS + 3
            } else {
                total / 2
            };
            let seen = AtomicUsize::new(0);
            let stop = || seen.fetch_add(1, Ordering::Relaxed) + 1 >= at;
            assert!(matches!(
                fit_cancellable(x, n2, 6, y, &cfg, &stop),
                Err(SvmError::Stage(mrbm_stage::StageError::Cancelled))
            ));
            assert_eq!(
                seen.load(Ordering::Relaxed),
                at,
                "{loss:?}: polled on after cancel"
            );
        }
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
