//! The Gaussian-Bernoulli RBM of Liao, Kornblith, Ren, Fleet & Hinton
//! (2022, "Gaussian-Bernoulli RBMs without tears"): Gibbs-Langevin
//! sampling, contrastive divergence whose negative chains start from
//! noise, gradient-norm clipping, and a learned per-pixel variance.
//!
//! No copy of the paper was at hand; these are the choices made here (the
//! README's "Gaussian-Bernoulli anchor" repeats them):
//!
//! - **Energy** (the form this crate's learned-sigma layer already has, one
//!   log sigma per pixel of a dense layer):
//!   E(v, h) = sum_i (v_i - a_i)^2 / (2 sigma_i^2) - sum_ij (v_i / sigma_i) W_ij h_j - b.h,
//!   so p(h_j = 1 | v) = sigmoid(b_j + sum_i (v_i / sigma_i) W_ij) and
//!   v | h ~ N(a + sigma (W h), sigma^2). Liao et al. couple v / sigma^2
//!   instead; the two are the same family (W_theirs = sigma W_here), with
//!   other learning dynamics. Binary hidden units only.
//! - **Gibbs-Langevin step**: h ~ p(h | v) exactly, then `steps` (K)
//!   Langevin steps on v. `gradient = "conditional"` (default) uses
//!   grad_v E(v, h) at the drawn h (target p(v | h)); `"marginal"` uses the
//!   free energy's grad_v F(v) (target p(v), h integrated out; the drawn h
//!   then only gives the output image). The step is preconditioned per
//!   pixel: eta_i = step_size * sigma_i^2, i.e.
//!   v' = v - eta * grad U(v) + sqrt(2 eta) xi.
//!   With `adjust = true` (default) each chain's proposal is accepted or
//!   rejected by Metropolis-Hastings (MALA), so the chain leaves p(v, h)
//!   (conditional) or p(v) (marginal) exactly invariant; without it the
//!   chain is unadjusted Langevin (biased by O(step_size)).
//! - **Noise-start CD**: every update's negative chains start from
//!   N(0, I) noise in the standardised pixel space and run `cd_k`
//!   Gibbs-Langevin steps; the statistics use the last v and p(h | v).
//! - **Clipping**: the layer's gradient (W, a, b, log sigma together) is
//!   rescaled to L2 norm `clip_norm` when it is longer.
//!
//! The chains run on the host (f32 products through `mrbm-kernels`' sgemm,
//! f64 for energies and acceptance ratios). Every chain has its own random
//! stream, seeded from the caller's generator each step, so the result for
//! a seed does not depend on the number of threads.

use burn::tensor::Tensor;
use mrbm_kernels::{sgemm, Par, View, ViewMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::layer::{tensor_from, to_f64, LayerGrads, LayerKind, Rbm};
use crate::sample::standard_normal;
use crate::unit::{sigmoid_f64, softplus_f64, UnitKind};
use crate::CoreError;

/// Which gradient the Langevin steps on v follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LangevinGradient {
    /// grad_v E(v, h) at the h just drawn: target p(v | h).
    #[default]
    Conditional,
    /// grad_v F(v), the free energy (h integrated out): target p(v).
    Marginal,
}

/// Settings of Gibbs-Langevin sampling (the `langevin` table of `train`
/// with `algorithm = "gibbs_langevin"`, and of `sample` with
/// `sampler = "gibbs_langevin"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LangevinParams {
    /// Langevin steps on v per Gibbs step (K).
    pub steps: usize,
    /// Step size as a fraction of each pixel's variance: eta_i = step_size * sigma_i^2.
    pub step_size: f64,
    /// Metropolis-Hastings adjustment of every proposal (MALA): exact
    /// stationary distribution. false: unadjusted Langevin.
    pub adjust: bool,
    /// "conditional" (grad of E(v, h) at the drawn h) or "marginal" (grad of F(v)).
    pub gradient: LangevinGradient,
    /// Training only: rescale each layer's gradient to this L2 norm when it
    /// is longer (unset: no clipping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_norm: Option<f64>,
}

impl Default for LangevinParams {
    fn default() -> Self {
        LangevinParams {
            steps: 5,
            step_size: 0.1,
            adjust: true,
            gradient: LangevinGradient::Conditional,
            clip_norm: None,
        }
    }
}

impl LangevinParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.steps) {
            return Err(format!(
                "langevin.steps must be in 1..=10000, got {}",
                self.steps
            ));
        }
        if !(f64::MIN_POSITIVE..=10.0).contains(&self.step_size) {
            return Err(format!(
                "langevin.step_size must be in (0, 10] (a fraction of each pixel's variance), got {}",
                self.step_size
            ));
        }
        if let Some(c) = self.clip_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!(
                    "langevin.clip_norm must be a positive number, got {c}"
                ));
            }
        }
        Ok(())
    }
}

/// A dense Gaussian-Bernoulli RBM on the host.
#[derive(Debug, Clone)]
pub struct HostGrbm {
    /// Visible units (pixels).
    pub d: usize,
    /// Hidden units.
    pub h: usize,
    /// d x h, row-major.
    pub w: Vec<f32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    /// Standard deviation of each visible unit.
    pub sigma: Vec<f32>,
}

/// Acceptance counts of the Metropolis-Hastings adjustment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Acceptance {
    pub accepted: u64,
    pub proposed: u64,
}

impl Acceptance {
    /// Accepted / proposed (1 when nothing was proposed or unadjusted).
    pub fn rate(&self) -> f64 {
        if self.proposed == 0 {
            1.0
        } else {
            self.accepted as f64 / self.proposed as f64
        }
    }
}

/// Why a layer is not a Gaussian-Bernoulli RBM this module can run.
pub fn check_layer(rbm: &Rbm) -> Result<(), String> {
    let s = &rbm.spec;
    if !matches!(s.kind, LayerKind::Dense { .. }) {
        return Err(format!(
            "Gibbs-Langevin needs a dense Gaussian-Bernoulli RBM; this layer is {}",
            s.describe()
        ));
    }
    if s.visible_unit.kind != UnitKind::Gaussian {
        return Err(
            "Gibbs-Langevin needs Gaussian visible units (train with visible = \"gaussian\")"
                .into(),
        );
    }
    let hu = s.hidden_unit;
    if !(hu.kind == UnitKind::Subunits && hu.n == 1 && hu.k == 1.0) {
        return Err(format!(
            "Gibbs-Langevin needs binary hidden units (N = 1, k = 1); this layer's are {hu:?}"
        ));
    }
    Ok(())
}

impl HostGrbm {
    /// The host copy of a dense layer with Gaussian visible and binary
    /// hidden units (unit variance when it has no learned sigma).
    pub fn from_rbm(rbm: &Rbm) -> Result<HostGrbm, CoreError> {
        check_layer(rbm).map_err(CoreError::User)?;
        let [d, h, _, _] = rbm.spec.weight_shape();
        let f = |t: &Tensor<1>| to_f64(t).iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let sigma = match &rbm.log_sigma {
            Some(z) => to_f64(z).iter().map(|&x| x.exp() as f32).collect(),
            None => vec![1.0; d],
        };
        Ok(HostGrbm {
            d,
            h,
            w: to_f64(&rbm.w).iter().map(|&x| x as f32).collect(),
            a: f(&rbm.a),
            b: f(&rbm.b),
            sigma,
        })
    }

    /// x = b + (v / sigma) W for `n` rows of v.
    pub fn hidden_input(&self, v: &[f32], n: usize) -> Vec<f32> {
        let (d, h) = (self.d, self.h);
        let scaled: Vec<f32> = v
            .chunks_exact(d)
            .flat_map(|r| r.iter().zip(&self.sigma).map(|(x, s)| x / s))
            .collect();
        let mut x: Vec<f32> = (0..n).flat_map(|_| self.b.iter().copied()).collect();
        sgemm(
            [n, h, d],
            1.0,
            View::row_major(&scaled, d),
            View::row_major(&self.w, h),
            1.0,
            ViewMut::row_major(&mut x, h),
            Par::Rayon,
        );
        x
    }

    /// (W h) per visible unit for `n` rows of h (no bias, no sigma).
    fn apply_wt(&self, h: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; n * self.d];
        sgemm(
            [n, self.d, self.h],
            1.0,
            View::row_major(h, self.h),
            View::row_major(&self.w, self.h).t(),
            0.0,
            ViewMut::row_major(&mut y, self.d),
            Par::Rayon,
        );
        y
    }

    /// The mean of v | h, a + sigma (W h), for `n` rows of h.
    pub fn visible_mean(&self, h: &[f32], n: usize) -> Vec<f32> {
        let mut y = self.apply_wt(h, n);
        for r in y.chunks_exact_mut(self.d) {
            for ((y, a), s) in r.iter_mut().zip(&self.a).zip(&self.sigma) {
                *y = a + s * *y;
            }
        }
        y
    }

    /// The joint energy E(v, h) of one visible and one hidden row.
    pub fn energy(&self, v: &[f32], h: &[f32]) -> f64 {
        let mut e = 0.0f64;
        let rows = self.w.chunks_exact(self.h);
        for (((&vi, &ai), &si), wi) in v.iter().zip(&self.a).zip(&self.sigma).zip(rows) {
            let s = si as f64;
            let r = (vi - ai) as f64 / s;
            e += 0.5 * r * r;
            let vs = vi as f64 / s;
            for (&w, &hj) in wi.iter().zip(h) {
                e -= vs * w as f64 * hj as f64;
            }
        }
        e - self
            .b
            .iter()
            .zip(h)
            .map(|(b, h)| (b * h) as f64)
            .sum::<f64>()
    }

    /// The free energy F(v) of one row given its hidden input x(v):
    /// sum_i (v_i - a_i)^2 / (2 sigma_i^2) - sum_j softplus(x_j).
    pub fn free_energy_with_x(&self, v: &[f32], x: &[f32]) -> f64 {
        let vis: f64 = v
            .iter()
            .zip(&self.a)
            .zip(&self.sigma)
            .map(|((v, a), s)| {
                let r = (v - a) as f64 / *s as f64;
                0.5 * r * r
            })
            .sum();
        vis - x.iter().map(|&x| softplus_f64(x as f64)).sum::<f64>()
    }

    /// grad_v F for `n` rows: (v - a) / sigma^2 - (W sigmoid(x(v))) / sigma.
    /// Also returns x(v).
    pub fn free_energy_grad(&self, v: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
        let x = self.hidden_input(v, n);
        let p: Vec<f32> = x.iter().map(|&x| sigmoid_f64(x as f64) as f32).collect();
        let mut g = self.apply_wt(&p, n);
        for (gr, vr) in g.chunks_exact_mut(self.d).zip(v.chunks_exact(self.d)) {
            for ((g, v), (a, s)) in gr.iter_mut().zip(vr).zip(self.a.iter().zip(&self.sigma)) {
                *g = (v - a) / (s * s) - *g / s;
            }
        }
        (g, x)
    }

    /// h ~ p(h | v) for `n` rows (one random stream per row, seeded from `rng`).
    pub fn draw_hidden(&self, v: &[f32], n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let x = self.hidden_input(v, n);
        let seeds: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let mut h = vec![0.0f32; n * self.h];
        h.par_chunks_mut(self.h)
            .zip(x.par_chunks(self.h))
            .zip(seeds.par_iter())
            .for_each(|((hr, xr), &seed)| {
                let mut r = ChaCha8Rng::seed_from_u64(seed);
                for (hj, &xj) in hr.iter_mut().zip(xr) {
                    *hj = (r.random::<f64>() < sigmoid_f64(xj as f64)) as u8 as f32;
                }
            });
        h
    }

    /// One Gibbs-Langevin step on `n` chains `v` (updated in place): h ~
    /// p(h | v), then `p.steps` Langevin steps on v. Returns the drawn h.
    pub fn gibbs_langevin_step(
        &self,
        v: &mut [f32],
        n: usize,
        p: &LangevinParams,
        rng: &mut ChaCha8Rng,
        acc: &mut Acceptance,
    ) -> Vec<f32> {
        let h = self.draw_hidden(v, n, rng);
        match p.gradient {
            LangevinGradient::Conditional => {
                let m = self.visible_mean(&h, n);
                self.conditional_langevin(v, &m, n, p, rng, acc);
            }
            LangevinGradient::Marginal => {
                for _ in 0..p.steps {
                    self.marginal_langevin_step(v, n, p, rng, acc);
                }
            }
        }
        h
    }

    /// K (preconditioned, optionally adjusted) Langevin steps on
    /// U(v) = sum_i (v_i - m_i)^2 / (2 sigma_i^2), the energy of v | h.
    fn conditional_langevin(
        &self,
        v: &mut [f32],
        m: &[f32],
        n: usize,
        p: &LangevinParams,
        rng: &mut ChaCha8Rng,
        acc: &mut Acceptance,
    ) {
        let d = self.d;
        let s = p.step_size;
        let seeds: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let counts: Vec<(u64, u64)> = v
            .par_chunks_mut(d)
            .zip(m.par_chunks(d))
            .zip(seeds.par_iter())
            .map(|((vr, mr), &seed)| {
                let mut r = ChaCha8Rng::seed_from_u64(seed);
                let mut prop = vec![0.0f64; d];
                let mut accepted = 0u64;
                for _ in 0..p.steps {
                    // In units of sigma: u = (v - m) / sigma, U = |u|^2 / 2,
                    // eta = s sigma^2 gives u' = u - s u + sqrt(2 s) xi.
                    let mut log_alpha = 0.0f64;
                    for (((pi, v), m), sg) in prop.iter_mut().zip(&*vr).zip(mr).zip(&self.sigma) {
                        let u = (v - m) as f64 / *sg as f64;
                        let u2 = u - s * u + (2.0 * s).sqrt() * standard_normal(&mut r);
                        *pi = u2;
                        if p.adjust {
                            // U(v) - U(v') + log q(v | v') - log q(v' | v), per unit.
                            let fwd = u2 - u + s * u;
                            let bwd = u - u2 + s * u2;
                            log_alpha +=
                                0.5 * (u * u - u2 * u2) - (bwd * bwd - fwd * fwd) / (4.0 * s);
                        }
                    }
                    if !p.adjust || r.random::<f64>().ln() < log_alpha {
                        for (((v, m), sg), u) in vr.iter_mut().zip(mr).zip(&self.sigma).zip(&prop) {
                            *v = (*m as f64 + *sg as f64 * u) as f32;
                        }
                        accepted += 1;
                    }
                }
                (accepted, p.steps as u64)
            })
            .collect();
        if p.adjust {
            for (a, t) in counts {
                acc.accepted += a;
                acc.proposed += t;
            }
        }
    }

    /// One (preconditioned, optionally adjusted) Langevin step on F(v) for
    /// all chains.
    fn marginal_langevin_step(
        &self,
        v: &mut [f32],
        n: usize,
        p: &LangevinParams,
        rng: &mut ChaCha8Rng,
        acc: &mut Acceptance,
    ) {
        let d = self.d;
        let s = p.step_size;
        let eta: Vec<f64> = self
            .sigma
            .iter()
            .map(|&sg| s * (sg as f64) * (sg as f64))
            .collect();
        let (g, x) = self.free_energy_grad(v, n);
        let seeds: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let mut prop = vec![0.0f32; n * d];
        prop.par_chunks_mut(d)
            .zip(v.par_chunks(d))
            .zip(g.par_chunks(d))
            .zip(seeds.par_iter())
            .for_each(|(((pr, vr), gr), &seed)| {
                let mut r = ChaCha8Rng::seed_from_u64(seed);
                for (((p, v), g), e) in pr.iter_mut().zip(vr).zip(gr).zip(&eta) {
                    *p = (*v as f64 - e * *g as f64 + (2.0 * e).sqrt() * standard_normal(&mut r))
                        as f32;
                }
            });
        if !p.adjust {
            v.copy_from_slice(&prop);
            return;
        }
        let (g2, x2) = self.free_energy_grad(&prop, n);
        // One uniform per chain, drawn after the proposals' streams.
        let us: Vec<f64> = (0..n).map(|_| rng.random()).collect();
        let h = self.h;
        for c in 0..n {
            let (vr, pr) = (&v[c * d..(c + 1) * d], &prop[c * d..(c + 1) * d]);
            let (gr, g2r) = (&g[c * d..(c + 1) * d], &g2[c * d..(c + 1) * d]);
            let f1 = self.free_energy_with_x(vr, &x[c * h..(c + 1) * h]);
            let f2 = self.free_energy_with_x(pr, &x2[c * h..(c + 1) * h]);
            let mut lq = 0.0f64;
            for (((p, v), (g, g2)), e) in pr.iter().zip(vr).zip(gr.iter().zip(g2r)).zip(&eta) {
                let (p, v) = (*p as f64, *v as f64);
                let fwd = p - v + e * *g as f64;
                let bwd = v - p + e * *g2 as f64;
                lq += (fwd * fwd - bwd * bwd) / (4.0 * e);
            }
            let log_alpha = f1 - f2 + lq;
            acc.proposed += 1;
            if us[c].ln() < log_alpha {
                v[c * d..(c + 1) * d].copy_from_slice(pr);
                acc.accepted += 1;
            }
        }
    }

    /// `steps` Gibbs-Langevin steps from `v` (n rows, updated in place);
    /// returns the last h drawn (None when steps = 0). `on_step(step)`
    /// returning false stops early.
    pub fn run_chains(
        &self,
        (v, n): (&mut [f32], usize),
        steps: usize,
        p: &LangevinParams,
        rng: &mut ChaCha8Rng,
        acc: &mut Acceptance,
        mut on_step: impl FnMut(usize) -> bool,
    ) -> Option<Vec<f32>> {
        let mut last = None;
        for s in 0..steps {
            last = Some(self.gibbs_langevin_step(v, n, p, rng, acc));
            if !on_step(s + 1) {
                break;
            }
        }
        last
    }
}

/// `n * d` draws of N(0, 1): where noise-started chains begin.
pub fn noise(n: usize, d: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n * d).map(|_| standard_normal(rng) as f32).collect()
}

/// The negative phase of noise-start CD: as many chains as `v` has rows,
/// started from N(0, I) noise, `cd_k` Gibbs-Langevin steps on `layer`.
/// The result has `v`'s shape, device and dtype.
pub fn noise_start_negative(
    layer: &Rbm,
    v: &Tensor<4>,
    cd_k: usize,
    p: &LangevinParams,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor<4>, CoreError> {
    let model = HostGrbm::from_rbm(layer)?;
    let dims = v.dims();
    let n = dims[0];
    let mut chains = noise(n, model.d, rng);
    let mut acc = Acceptance::default();
    model.run_chains((&mut chains, n), cd_k, p, rng, &mut acc, |_| true);
    Ok(tensor_from(
        chains.iter().map(|&x| x as f64).collect(),
        dims,
        &v.device(),
        v.dtype(),
    ))
}

/// The L2 norm of a layer's whole gradient (W, a, b and log sigma).
pub fn grad_norm(g: &LayerGrads) -> f64 {
    let sq = |v: Vec<f64>| v.iter().map(|x| x * x).sum::<f64>();
    (sq(to_f64(&g.w))
        + sq(to_f64(&g.a))
        + sq(to_f64(&g.b))
        + g.log_sigma.as_ref().map_or(0.0, |z| sq(to_f64(z))))
    .sqrt()
}

/// `g` rescaled to L2 norm `max` when it is longer; unchanged otherwise
/// (and when `max` is None).
pub fn clip_grads(g: LayerGrads, max: Option<f64>) -> LayerGrads {
    let Some(max) = max else {
        return g;
    };
    let norm = grad_norm(&g);
    if norm.is_nan() || norm <= max {
        return g;
    }
    let f = max / norm;
    LayerGrads {
        w: g.w.mul_scalar(f),
        a: g.a.mul_scalar(f),
        b: g.b.mul_scalar(f),
        log_sigma: g.log_sigma.map(|z| z.mul_scalar(f)),
    }
}

/// The `train` stage's checks of `algorithm = "gibbs_langevin"` and the
/// `langevin` table: (key, message) of the first problem.
pub fn validate_train(
    stack: &crate::stack::StackParams,
    optim: &crate::train::OptimParams,
) -> Result<(), (&'static str, String)> {
    use crate::stack::VisibleKind;
    use crate::train::Algorithm;
    if optim.algorithm != Algorithm::GibbsLangevin {
        if optim.langevin.is_some() {
            return Err((
                "langevin",
                "the langevin table is for algorithm = \"gibbs_langevin\"".into(),
            ));
        }
        return Ok(());
    }
    if let Some(l) = &optim.langevin {
        l.validate().map_err(|m| ("langevin", m))?;
    }
    if stack.visible != VisibleKind::Gaussian {
        return Err((
            "visible",
            "algorithm = \"gibbs_langevin\" trains a Gaussian-Bernoulli RBM: set visible = \"gaussian\"".into(),
        ));
    }
    if !stack.conv_channels.is_empty() || stack.dense.len() != 1 {
        return Err((
            "dense",
            format!(
                "algorithm = \"gibbs_langevin\" trains one dense RBM: set conv_channels = [] and dense = [H] (got conv_channels = {:?}, dense = {:?})",
                stack.conv_channels, stack.dense
            ),
        ));
    }
    let n_hidden = stack.n_hidden.unwrap_or(stack.n);
    if n_hidden != 1 || stack.unit != UnitKind::Subunits || stack.k_hidden.is_some_and(|k| k != 1.0)
    {
        return Err((
            "n_hidden",
            "algorithm = \"gibbs_langevin\" needs binary hidden units: n_hidden = 1 (or n = 1), unit = \"subunits\", k_hidden unset or 1".into(),
        ));
    }
    Ok(())
}

/// The `sample` stage's checks of `sampler = "gibbs_langevin"` and the
/// `langevin` table: (key, message) of the first problem.
pub fn validate_sample(
    gibbs_langevin: bool,
    langevin: Option<&LangevinParams>,
    anneal_steps: usize,
) -> Result<(), (&'static str, String)> {
    if !gibbs_langevin {
        if langevin.is_some() {
            return Err((
                "langevin",
                "the langevin table is for sampler = \"gibbs_langevin\"".into(),
            ));
        }
        return Ok(());
    }
    if let Some(l) = langevin {
        l.validate().map_err(|m| ("langevin", m))?;
        if l.clip_norm.is_some() {
            return Err((
                "langevin",
                "langevin.clip_norm is a training setting: leave it out of sample".into(),
            ));
        }
    }
    if anneal_steps > 0 {
        return Err((
            "anneal_steps",
            "sampler = \"gibbs_langevin\" has no annealed start: leave anneal_steps out".into(),
        ));
    }
    Ok(())
}

/// Gibbs-Langevin chains for the `sample` stage: the model's one dense
/// Gaussian-Bernoulli layer, the settings, and the acceptance counts of
/// the run.
pub struct StageSampler {
    model: HostGrbm,
    params: LangevinParams,
    acc: std::sync::Mutex<Acceptance>,
}

impl StageSampler {
    /// Some(sampler) when `gibbs_langevin` is asked for (a clear error when
    /// the model is not one dense Gaussian-Bernoulli RBM), None otherwise.
    pub fn new(
        dbn: &crate::stack::Dbn,
        gibbs_langevin: bool,
        params: Option<LangevinParams>,
    ) -> Result<Option<StageSampler>, CoreError> {
        if !gibbs_langevin {
            return Ok(None);
        }
        if dbn.layers.len() != 1 {
            return Err(CoreError::User(format!(
                "sampler = \"gibbs_langevin\" needs a model of one dense Gaussian-Bernoulli RBM; this one has {} layers",
                dbn.layers.len()
            )));
        }
        Ok(Some(StageSampler {
            model: HostGrbm::from_rbm(&dbn.layers[0])?,
            params: params.unwrap_or_default(),
            acc: Default::default(),
        }))
    }

    /// `steps` Gibbs-Langevin steps on `chains` chains from N(0, I) noise
    /// (or the `start` images), then the mean of v | h at the last h (the
    /// image without the pixel noise), shaped [chains, d, 1, 1].
    pub fn run(
        &self,
        dbn: &crate::stack::Dbn,
        start: Option<&[u8]>,
        chains: usize,
        steps: usize,
        rng: &mut ChaCha8Rng,
        on_step: impl FnMut(usize) -> bool,
    ) -> Tensor<4> {
        let device = dbn.device();
        let dtype = dbn.layers[0].w.dtype();
        let d = self.model.d;
        let mut v: Vec<f32> = match start {
            Some(px) => to_f64(&dbn.pixels_to_visible(px, chains, &device, dtype))
                .iter()
                .map(|&x| x as f32)
                .collect(),
            None => noise(chains, d, rng),
        };
        let mut acc = Acceptance::default();
        let h = self.model.run_chains(
            (&mut v, chains),
            steps,
            &self.params,
            rng,
            &mut acc,
            on_step,
        );
        if let Ok(mut a) = self.acc.lock() {
            a.accepted += acc.accepted;
            a.proposed += acc.proposed;
        }
        let out = match h {
            Some(h) => self.model.visible_mean(&h, chains),
            None => v,
        };
        tensor_from(
            out.iter().map(|&x| x as f64).collect(),
            [chains, d, 1, 1],
            &device,
            dtype,
        )
    }

    /// The Metropolis-Hastings acceptance rate of the runs so far (1 when
    /// unadjusted).
    pub fn acceptance(&self) -> f64 {
        self.acc.lock().map(|a| a.rate()).unwrap_or(f64::NAN)
    }
}
