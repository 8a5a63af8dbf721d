//! Unit types of a multinary RBM.
//!
//! A unit type is a pair (N, k). Its mean activation is f(x) = N * sigmoid(k x)
//! and, in the paper's (smooth) free energy, a unit with total input x
//! contributes A(x) = (N / k) * softplus(k x), whose derivative is f(x).
//! N = 1, k = 1 is the binary unit exactly.
//!
//! # The exact multinary unit (derivation)
//!
//! A unit that takes the values 0..=N is modelled as the sum of N binary
//! sub-units, h = s_1 + ... + s_N, each with its own fixed offset o_n:
//!
//!   E(v, s) = -a.v - sum_j sum_n (x_j(v) - o_n) s_jn,   x_j(v) = b_j + (vW)_j.
//!
//! This is an ordinary Boltzmann machine, so the hidden sub-units are
//! conditionally independent Bernoulli(sigmoid(x - o_n)) and marginalising
//! them gives the exact free energy
//!
//!   F(v) = -a.v - sum_j sum_n softplus(x_j(v) - o_n).
//!
//! The offsets o_n = logit((n - 1/2) / N) / k are the inputs at which
//! f(x) = N sigmoid(k x) crosses n - 1/2, so the sum of the sub-units' step
//! functions is f(x) rounded to the nearest integer. The sum of their
//! (unit-slope) sigmoids, sum_n sigmoid(x - o_n), follows N sigmoid(k x)
//! when neighbouring offsets are at most about one unit apart and f varies
//! slowly on that scale (k << 1): k = 4/N does both for large N (at N = 255
//! the two means differ by at most 0.45 of 255 levels; with k = 1 by 22).
//! sum_n softplus(x - o_n) then follows (N / k) softplus(k x), its continuum
//! limit. For small N the staircase stays coarse (up to 16% of N at N = 2).
//! For N = 1 the only offset is 0 and both forms are the binary RBM when
//! k = 1.
//! Training uses the paper's smooth form; sampling draws the sub-units
//! exactly (the distribution of h is a Poisson-binomial), or uses the
//! Gaussian approximation N(f(x), f'(x)) of the smooth form.

use crate::discrete_gaussian as dg;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::Tensor;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Which distribution a unit with N levels has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// The paper's unit: values 0..=N, mean N sigmoid(k x), the sum of N
    /// binary sub-units with offsets (see the module docs).
    #[default]
    Subunits,
    /// N + 1 equally spaced values m / N in [0, 1], p(m) proportional to
    /// exp(m x / N): free energy log sum_m exp(m x / N), categorical draws.
    /// Here N changes the distribution itself, not only a scale (k unused).
    Levels,
    /// Visible only: a Gaussian with unit variance around its input,
    /// v ~ N(a + W h, 1), for standardised real-valued data (N, k unused).
    Gaussian,
    /// Visible only: N + 1 levels v = m k / N in [0, k], p(m) proportional
    /// to exp(v x - v^2 / 2): a unit-variance Gaussian around x, discretised
    /// and truncated (k is the range; see [`crate::discrete_gaussian`]).
    /// Unlike the levels unit, its mode can be a mid value.
    DiscreteGaussian,
}

impl UnitKind {
    fn is_default(&self) -> bool {
        *self == UnitKind::Subunits
    }
}

/// (N, k): the unit takes values 0..=N and its mean is N * sigmoid(k x)
/// (or, for [`UnitKind::Levels`], values m / N with an exponential-family
/// distribution over the N + 1 levels).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitType {
    /// Number of levels above zero (1 = binary).
    pub n: u32,
    /// Slope k of the sigmoid.
    pub k: f64,
    /// Omitted from checkpoints when it is the paper's sub-unit model, so
    /// models written before it existed load and hash as before.
    #[serde(default, skip_serializing_if = "UnitKind::is_default")]
    pub kind: UnitKind,
}

/// softplus(z) = log(1 + e^z), numerically stable, on the host.
pub fn softplus_f64(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

pub fn sigmoid_f64(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// softplus on tensors: -log_sigmoid(-z), which burn computes stably.
pub fn softplus<const D: usize>(z: Tensor<D>) -> Tensor<D> {
    log_sigmoid(z.neg()).neg()
}

impl UnitType {
    pub const BINARY: UnitType = UnitType {
        n: 1,
        k: 1.0,
        kind: UnitKind::Subunits,
    };

    pub fn new(n: u32, k: f64) -> Self {
        UnitType {
            n,
            k,
            kind: UnitKind::Subunits,
        }
    }

    /// The equal-levels unit with N + 1 values m / N in [0, 1].
    pub fn levels(n: u32) -> Self {
        UnitType {
            n,
            k: 1.0,
            kind: UnitKind::Levels,
        }
    }

    /// The discrete Gaussian unit with N + 1 levels over [0, range].
    pub fn discrete_gaussian(n: u32, range: f64) -> Self {
        UnitType {
            n,
            k: range,
            kind: UnitKind::DiscreteGaussian,
        }
    }

    /// The Gaussian visible unit (unit variance).
    pub fn gaussian() -> Self {
        UnitType {
            n: 1,
            k: 1.0,
            kind: UnitKind::Gaussian,
        }
    }

    /// The largest value a unit takes: N (sub-units) or 1 (levels; a
    /// Gaussian unit has none, 1 is returned).
    pub fn max_value(&self) -> f64 {
        match self.kind {
            UnitKind::Subunits => self.nf(),
            UnitKind::Levels | UnitKind::Gaussian => 1.0,
            UnitKind::DiscreteGaussian => self.k,
        }
    }

    /// The value of level m (0..=N).
    pub fn level_value(&self, m: u32) -> f64 {
        match self.kind {
            UnitKind::Subunits | UnitKind::Gaussian => m as f64,
            UnitKind::Levels => m as f64 / self.nf(),
            UnitKind::DiscreteGaussian => m as f64 * self.k / self.nf(),
        }
    }

    pub fn validate(&self, what: &str) -> Result<(), String> {
        if self.n == 0 {
            return Err(format!("{what}: N must be at least 1"));
        }
        if !(self.k.is_finite() && self.k > 0.0) {
            return Err(format!(
                "{what}: k must be a positive finite number, got {}",
                self.k
            ));
        }
        Ok(())
    }

    fn nf(&self) -> f64 {
        self.n as f64
    }

    /// Mean activation f(x) = N sigmoid(k x) (levels: E[m / N]).
    pub fn mean<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.kind {
            UnitKind::Levels => return levels_mean(x, self.n),
            UnitKind::Gaussian => return x,
            UnitKind::DiscreteGaussian => return self.on_host(x, self.dg_fn(dg::mean_f64)),
            UnitKind::Subunits => {}
        }
        if crate::autodiff_host::serves(&x) {
            return crate::autodiff_host::unit_mean(x, self.n as f32, self.k as f32);
        }
        let s = if self.k == 1.0 {
            sigmoid(x)
        } else {
            sigmoid(x.mul_scalar(self.k))
        };
        if self.n == 1 {
            s
        } else {
            s.mul_scalar(self.nf())
        }
    }

    /// Smooth log-partition A(x) = (N/k) softplus(k x), with A' = f.
    pub fn log_partition<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.kind == UnitKind::Levels {
            return levels_log_partition(x, self.n);
        }
        if self.kind == UnitKind::DiscreteGaussian {
            return self.on_host(x, self.dg_fn(dg::log_partition_f64));
        }
        let z = if self.k == 1.0 {
            x
        } else {
            x.mul_scalar(self.k)
        };
        let sp = softplus(z);
        let c = self.nf() / self.k;
        if c == 1.0 {
            sp
        } else {
            sp.mul_scalar(c)
        }
    }

    /// f(x) on the host.
    pub fn mean_f64(&self, x: f64) -> f64 {
        match self.kind {
            UnitKind::Levels => return levels_mean_f64(x, self.n),
            UnitKind::Gaussian => return x,
            UnitKind::DiscreteGaussian => return dg::mean_f64(x, self.dg()),
            UnitKind::Subunits => {}
        }
        self.nf() * sigmoid_f64(self.k * x)
    }

    /// f'(x) = N k sigmoid(kx) (1 - sigmoid(kx)): the variance of the
    /// Gaussian approximation.
    pub fn mean_slope_f64(&self, x: f64) -> f64 {
        let s = sigmoid_f64(self.k * x);
        self.nf() * self.k * s * (1.0 - s)
    }

    /// Smooth A(x) on the host (levels: exact log sum_m exp(m x / N)).
    pub fn log_partition_f64(&self, x: f64) -> f64 {
        if self.kind == UnitKind::Levels {
            return levels_log_partition_f64(x, self.n);
        }
        if self.kind == UnitKind::DiscreteGaussian {
            return dg::log_partition_f64(x, self.dg());
        }
        self.nf() / self.k * softplus_f64(self.k * x)
    }

    /// Sub-unit offsets o_n = logit((n - 1/2) / N) / k, n = 1..=N (increasing).
    /// (Levels units have none: their distribution is categorical.)
    pub fn offsets(&self) -> Vec<f64> {
        let n = self.nf();
        (1..=self.n)
            .map(|i| {
                let p = (i as f64 - 0.5) / n;
                (p / (1.0 - p)).ln() / self.k
            })
            .collect()
    }

    /// Exact (sub-unit) log-partition sum_n softplus(x - o_n).
    pub fn exact_log_partition_f64(&self, x: f64, offsets: &[f64]) -> f64 {
        offsets.iter().map(|o| softplus_f64(x - o)).sum()
    }

    /// Exact (sub-unit) mean sum_n sigmoid(x - o_n).
    pub fn exact_mean_f64(&self, x: f64, offsets: &[f64]) -> f64 {
        offsets.iter().map(|o| sigmoid_f64(x - o)).sum()
    }

    /// The exact distribution of h = sum of the sub-units at input x: a
    /// Poisson-binomial pmf over 0..=N, by dynamic programming (levels:
    /// the categorical pmf proportional to exp(m x / N)).
    pub fn exact_pmf(&self, x: f64) -> Vec<f64> {
        if self.kind == UnitKind::DiscreteGaussian {
            return dg::pmf(x, self.dg());
        }
        if self.kind == UnitKind::Levels {
            let logits: Vec<f64> = (0..=self.n).map(|m| m as f64 * x / self.nf()).collect();
            let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            return e.iter().map(|v| v / z).collect();
        }
        let mut pmf = vec![0.0; self.n as usize + 1];
        pmf[0] = 1.0;
        for (i, o) in self.offsets().iter().enumerate() {
            let p = sigmoid_f64(x - o);
            for m in (0..=i + 1).rev() {
                let stay = pmf[m] * (1.0 - p);
                let up = if m > 0 { pmf[m - 1] * p } else { 0.0 };
                pmf[m] = stay + up;
            }
        }
        pmf
    }

    /// `f(x, N, k)` elementwise on the host: the discrete Gaussian unit's
    /// sums over levels have no tensor form (no gradient flows through them).
    fn on_host<const D: usize>(&self, x: Tensor<D>, f: impl Fn(f64) -> f64) -> Tensor<D> {
        let (shape, device, dtype) = (x.dims(), x.device(), x.dtype());
        let values: Vec<f64> = crate::layer::to_f64(&x).into_iter().map(f).collect();
        crate::layer::tensor_from(values, shape, &device, dtype)
    }

    fn dg_fn(&self, f: fn(f64, dg::Dg) -> f64) -> impl Fn(f64) -> f64 {
        let u = self.dg();
        move |x| f(x, u)
    }

    /// The discrete Gaussian unit's parameters (N levels over [0, k]).
    pub fn dg(&self) -> dg::Dg {
        dg::Dg::new(self.n, self.k)
    }

    /// Draw h exactly: each sub-unit is Bernoulli(sigmoid(x - o_n)).
    pub fn sample_exact<R: Rng>(&self, x: f64, offsets: &[f64], rng: &mut R) -> f64 {
        let mut h = 0u32;
        for o in offsets {
            let p = sigmoid_f64(x - o);
            if rng.random::<f64>() < p {
                h += 1;
            }
        }
        h as f64
    }

    /// Draw h from the Gaussian approximation N(f(x), f'(x)), rounded to
    /// the nearest level and clipped to 0..=N so it stays a valid state.
    pub fn sample_gaussian<R: Rng>(&self, x: f64, rng: &mut R) -> f64 {
        let mean = self.mean_f64(x);
        let sd = self.mean_slope_f64(x).sqrt();
        // Box-Muller: rand 0.9 has no normal distribution without rand_distr.
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (mean + sd * z).round().clamp(0.0, self.nf())
    }
}

/// log(sinh(z) / z), even and smooth (0 at 0); the building block of the
/// levels unit's log-partition.
fn log_sinhc_f64(z: f64) -> f64 {
    let a = z.abs();
    if a < 1e-4 {
        a * a / 6.0
    } else {
        // sinh(a)/a = e^a (1 - e^{-2a}) / (2a)
        a + (-(-2.0 * a).exp()).ln_1p() - (2.0 * a).ln()
    }
}

/// Langevin function coth(z) - 1/z = d/dz log(sinh(z)/z), odd, z/3 near 0.
fn langevin_f64(z: f64) -> f64 {
    if z.abs() < 1e-4 {
        z / 3.0
    } else {
        1.0 / z.tanh() - 1.0 / z
    }
}

/// log sum_{m=0}^{N} exp(m x / N), closed form: with t = x / N,
/// sum_m e^{m t} = e^{N t / 2} sinh((N+1) t / 2) / sinh(t / 2).
pub fn levels_log_partition_f64(x: f64, n: u32) -> f64 {
    let nf = n as f64;
    let t = x / nf;
    nf * t / 2.0 + (nf + 1.0).ln() + log_sinhc_f64((nf + 1.0) * t / 2.0) - log_sinhc_f64(t / 2.0)
}

/// E[m / N] under p(m) proportional to exp(m x / N): the derivative of
/// [`levels_log_partition_f64`] in x.
pub fn levels_mean_f64(x: f64, n: u32) -> f64 {
    let nf = n as f64;
    let t = x / nf;
    let em =
        nf / 2.0 + ((nf + 1.0) * langevin_f64((nf + 1.0) * t / 2.0) - langevin_f64(t / 2.0)) / 2.0;
    (em / nf).clamp(0.0, 1.0)
}

/// Draw m in 0..=N with p(m) proportional to exp(m t) by inverting the
/// truncated geometric CDF (no loop over the levels); returns m.
pub fn levels_draw<R: Rng>(x: f64, n: u32, rng: &mut R) -> u32 {
    let t = x / n as f64;
    let u: f64 = rng.random::<f64>();
    if t.abs() < 1e-12 {
        return ((u * (n as f64 + 1.0)) as u32).min(n);
    }
    // Draw with a non-positive rate (no overflow), mirror for a positive one.
    let (tn, flip) = if t > 0.0 { (-t, true) } else { (t, false) };
    let e = ((n as f64 + 1.0) * tn).exp_m1(); // in (-1, 0)
    let m = ((u * e).ln_1p() / tn).ceil() - 1.0;
    let m = m.clamp(0.0, n as f64) as u32;
    if flip {
        n - m
    } else {
        m
    }
}

// Tensor forms of the levels unit. Small |z| uses the series, elsewhere
// the direct formula on a z kept away from 0, so neither branch is NaN
// (mask_where then passes no NaN into the gradient either).
const SERIES_BELOW: f64 = 0.05;

fn langevin<const D: usize>(z: Tensor<D>) -> Tensor<D> {
    let small = z.clone().abs().lower_elem(SERIES_BELOW);
    let series = z.clone().div_scalar(3.0) - z.clone().powi_scalar(3).div_scalar(45.0);
    let safe = z.clone().mask_fill(small.clone(), 1.0);
    let direct = safe.clone().tanh().recip() - safe.recip();
    direct.mask_where(small, series)
}

fn log_sinhc<const D: usize>(z: Tensor<D>) -> Tensor<D> {
    let a = z.abs();
    let small = a.clone().lower_elem(SERIES_BELOW);
    let series =
        a.clone().powi_scalar(2).div_scalar(6.0) - a.clone().powi_scalar(4).div_scalar(180.0);
    let safe = a.mask_fill(small.clone(), 1.0);
    let direct = safe.clone() + safe.clone().mul_scalar(-2.0).exp().neg().log1p()
        - safe.mul_scalar(2.0).log();
    direct.mask_where(small, series)
}

fn levels_log_partition<const D: usize>(x: Tensor<D>, n: u32) -> Tensor<D> {
    let nf = n as f64;
    let t = x.div_scalar(nf);
    t.clone().mul_scalar(nf / 2.0).add_scalar((nf + 1.0).ln())
        + log_sinhc(t.clone().mul_scalar((nf + 1.0) / 2.0))
        - log_sinhc(t.div_scalar(2.0))
}

fn levels_mean<const D: usize>(x: Tensor<D>, n: u32) -> Tensor<D> {
    let nf = n as f64;
    let t = x.div_scalar(nf);
    let em = (langevin(t.clone().mul_scalar((nf + 1.0) / 2.0)).mul_scalar(nf + 1.0)
        - langevin(t.div_scalar(2.0)))
    .div_scalar(2.0)
    .add_scalar(nf / 2.0);
    em.div_scalar(nf).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_where_f_crosses_half_levels() {
        let u = UnitType::new(5, 0.7);
        for (i, o) in u.offsets().iter().enumerate() {
            assert!((u.mean_f64(*o) - (i as f64 + 0.5)).abs() < 1e-12);
        }
        assert_eq!(UnitType::BINARY.offsets(), vec![0.0]);
    }

    #[test]
    fn levels_closed_forms_match_the_sums() {
        for n in [1u32, 3, 15, 255] {
            for x in [-300.0, -7.0, -0.3, -1e-6, 0.0, 2e-3, 0.9, 11.0, 400.0] {
                let logits: Vec<f64> = (0..=n).map(|m| m as f64 * x / n as f64).collect();
                let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = logits.iter().map(|l| (l - mx).exp()).sum();
                let lp = mx + z.ln();
                let mean: f64 = logits
                    .iter()
                    .enumerate()
                    .map(|(m, l)| m as f64 / n as f64 * (l - mx).exp() / z)
                    .sum();
                assert!(
                    (levels_log_partition_f64(x, n) - lp).abs() < 1e-9,
                    "n {n} x {x}"
                );
                assert!((levels_mean_f64(x, n) - mean).abs() < 1e-9, "n {n} x {x}");
            }
        }
    }

    #[test]
    fn levels_draws_follow_the_pmf() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (n, x) in [(3u32, 1.7), (15, -4.0), (255, 30.0), (4, 0.0)] {
            let u = UnitType::levels(n);
            let pmf = u.exact_pmf(x);
            let mut counts = vec![0u64; n as usize + 1];
            for _ in 0..40_000 {
                counts[levels_draw(x, n, &mut rng) as usize] += 1;
            }
            let (stat, df) = crate::sample::chi_square(&counts, &pmf);
            // 99.9 % quantile of chi-square is below df + 5 sqrt(2 df) + 10 here.
            assert!(
                stat < df as f64 + 5.0 * (2.0 * df as f64).sqrt() + 10.0,
                "n {n}: {stat} on {df}"
            );
        }
    }

    /// Standard deviation of a unit's exact distribution at input x.
    fn pmf_sd(u: &UnitType, x: f64) -> f64 {
        let pmf = u.exact_pmf(x);
        let mean: f64 = pmf.iter().enumerate().map(|(m, p)| m as f64 * p).sum();
        pmf.iter()
            .enumerate()
            .map(|(m, p)| (m as f64 - mean).powi(2) * p)
            .sum::<f64>()
            .sqrt()
    }

    /// Why N = 255 sub-unit chains collapse (experiments/n255_diagnosis.toml):
    /// the paper's unit at N = 255, k = 4/N deviates from its mean by at most
    /// about one level of 255 (its variance is f'(x) = 4 s (1 - s) <= 1), so
    /// a sampled reconstruction is the mean-field one to 0.4 % of the range;
    /// the levels unit at the same N spreads over the whole range (uniform
    /// at x = 0: sd about 1 / sqrt(12) of it).
    #[test]
    fn subunits_at_n255_are_nearly_deterministic_levels_are_not() {
        let n = 255u32;
        let sub = UnitType::new(n, 4.0 / n as f64);
        for x in [-200.0, -50.0, 0.0, 30.0, 120.0] {
            let sd = pmf_sd(&sub, x);
            assert!(sd <= 1.0 + 1e-9, "x {x}: sd {sd} levels");
            // Close to the smooth model's f'(x).
            assert!((sd * sd - sub.mean_slope_f64(x)).abs() < 0.1, "x {x}");
        }
        let lev = UnitType::levels(n);
        let sd0 = pmf_sd(&lev, 0.0) / n as f64;
        // The discrete uniform over 0..=N: sd sqrt(((N + 1)^2 - 1) / 12) levels.
        let nf = n as f64;
        let uniform = (((nf + 1.0).powi(2) - 1.0) / 12.0).sqrt() / nf;
        assert!((sd0 - uniform).abs() < 1e-9, "{sd0} vs {uniform}");
        // Even at a mean of 0.9 the levels unit keeps a tenth of the range.
        assert!(pmf_sd(&lev, 10.0) / n as f64 > 0.09);
    }

    #[test]
    fn pmf_sums_to_one_and_has_exact_mean() {
        let u = UnitType::new(7, 0.5);
        let off = u.offsets();
        for x in [-3.0, 0.0, 1.3] {
            let pmf = u.exact_pmf(x);
            assert!((pmf.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let mean: f64 = pmf.iter().enumerate().map(|(m, p)| m as f64 * p).sum();
            assert!((mean - u.exact_mean_f64(x, &off)).abs() < 1e-12);
        }
    }
}
