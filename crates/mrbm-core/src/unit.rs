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

use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::Tensor;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// (N, k): the unit takes values 0..=N and its mean is N * sigmoid(k x).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitType {
    /// Number of levels above zero (1 = binary).
    pub n: u32,
    /// Slope k of the sigmoid.
    pub k: f64,
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
    pub const BINARY: UnitType = UnitType { n: 1, k: 1.0 };

    pub fn new(n: u32, k: f64) -> Self {
        UnitType { n, k }
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

    /// Mean activation f(x) = N sigmoid(k x).
    pub fn mean<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
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
        self.nf() * sigmoid_f64(self.k * x)
    }

    /// f'(x) = N k sigmoid(kx) (1 - sigmoid(kx)): the variance of the
    /// Gaussian approximation.
    pub fn mean_slope_f64(&self, x: f64) -> f64 {
        let s = sigmoid_f64(self.k * x);
        self.nf() * self.k * s * (1.0 - s)
    }

    /// Smooth A(x) on the host.
    pub fn log_partition_f64(&self, x: f64) -> f64 {
        self.nf() / self.k * softplus_f64(self.k * x)
    }

    /// Sub-unit offsets o_n = logit((n - 1/2) / N) / k, n = 1..=N (increasing).
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
    /// Poisson-binomial pmf over 0..=N, by dynamic programming.
    pub fn exact_pmf(&self, x: f64) -> Vec<f64> {
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
