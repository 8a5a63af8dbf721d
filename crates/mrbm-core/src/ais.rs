//! Test log-likelihood of a dense RBM: log Z by annealed importance
//! sampling (AIS; Neal 2001, Salakhutdinov & Murray 2008), checked against
//! exact enumeration on RBMs small enough to enumerate.
//!
//! The model is the exact discrete one behind the sampler: visible and
//! hidden units take levels m = 0..=N with values val(m) (m for the
//! paper's sub-unit units, m / N for levels units). Summing out the hidden
//! units gives the unnormalised marginal
//!
//!   log p*(v) = sum_i [a_i val(v_i) + g(v_i)] + sum_j H(x_j(v)),
//!   x_j(v) = b_j + (val(v) W)_j,
//!
//! with H(x) = sum_n softplus(x - o_n) (sub-units; the binary unit for
//! N = 1) or log sum_m exp(m x / N) (levels), and g(m) the log multiplicity
//! of level m among the visible sub-unit configurations (g = 0 for levels
//! and for binary units; -val(m)^2 / 2 for discrete Gaussian pixels). The base model A has the visible units alone,
//! biases fitted to the training data's marginals (the base-rate model).
//! Intermediate distributions anneal both the biases and the hidden part:
//!
//!   log p*_beta(v) = sum_i [((1 - beta) aA_i + beta a_i) val(v_i) + g(v_i)]
//!                    + sum_j H_beta(x_j(v)),
//!
//! where H_beta scales every hidden energy term (offsets included) by beta,
//! so the Gibbs transitions at beta are exact: hidden sub-units
//! Bernoulli(sigmoid(beta (x - o_n))), visible levels with input
//! (1 - beta) aA + beta (a + W h). At beta = 0, H_0 is a constant
//! (N log 2, or log(N + 1)), which enters log Z_A.
//!
//! AIS's log Z is a stochastic lower bound (E[log Z_hat] <= log Z), so the
//! log-likelihood it gives is a stochastic upper bound. `HostDense::raise`
//! gives the other side: reverse annealing from the data (RAISE; Burda,
//! Grosse & Salakhutdinov 2015), a stochastic lower bound on each image's
//! log-likelihood under the annealed model.

use mrbm_kernels::math::{softplus_beta_diff_sum, Level};
use mrbm_kernels::Par::Seq;
use mrbm_kernels::{sgemm_packed, Isa, PackedA, View, ViewMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::host_conv::matmul;
use crate::layer::{to_f64, LayerKind, Rbm};
use crate::sample::{exact_subunits_batch, Sampler, UnitSampler};
use crate::unit::{
    levels_draw, levels_log_partition_f64, sigmoid_f64, softplus_f64, UnitKind, UnitType,
};

/// Beyond this |z|, softplus(z) is max(z, 0) and sigmoid(z) is 0 or 1 to
/// within e^-40.
const SURE: f64 = 40.0;

/// Salakhutdinov & Murray's spacing scaled to `total` intermediate
/// distributions: 500 / 14500 of them in [0, 0.5], 4000 / 14500 in
/// [0.5, 0.9], the rest in [0.9, 1]. Returns beta_0 = 0 ... beta_K = 1.
pub fn sm_betas(total: usize) -> Vec<f64> {
    let total = total.max(3);
    let n1 = ((total as f64 * 500.0 / 14500.0).round() as usize).max(1);
    let n2 = ((total as f64 * 4000.0 / 14500.0).round() as usize).max(1);
    let n3 = total.saturating_sub(n1 + n2).max(1);
    let mut b = vec![0.0];
    for (lo, hi, n) in [(0.0, 0.5, n1), (0.5, 0.9, n2), (0.9, 1.0, n3)] {
        for i in 1..=n {
            b.push(lo + (hi - lo) * i as f64 / n as f64);
        }
    }
    b
}

/// One unit type's discrete description.
#[derive(Debug, Clone)]
struct Levels {
    unit: UnitType,
    /// Sub-unit offsets (empty for levels units).
    offsets: Vec<f64>,
    /// Prefix sums of the offsets (prefix[i] = o_1 + ... + o_i).
    prefix: Vec<f64>,
    /// log multiplicity g(m) of each level (visible side).
    log_mult: Vec<f64>,
}

impl Levels {
    fn new(unit: UnitType) -> Self {
        let offsets = if unit.kind == UnitKind::Subunits {
            unit.offsets()
        } else {
            Vec::new()
        };
        let mut prefix = vec![0.0];
        for o in &offsets {
            prefix.push(prefix.last().unwrap() + o);
        }
        // g(m) = log e_m(exp(-o_1), ..., exp(-o_N)), by the elementary
        // symmetric polynomial recursion in log space.
        let n = unit.n as usize;
        let log_mult = if unit.kind == UnitKind::DiscreteGaussian {
            // The quadratic term -v^2 / 2 is a base measure on the levels:
            // never annealed, so visible draws at any beta are the unit's own.
            (0..=unit.n)
                .map(|m| -0.5 * unit.level_value(m).powi(2))
                .collect()
        } else if offsets.is_empty() {
            vec![0.0; n + 1]
        } else {
            let mut e = vec![f64::NEG_INFINITY; n + 1];
            e[0] = 0.0;
            for (i, o) in offsets.iter().enumerate() {
                for m in (1..=i + 1).rev() {
                    e[m] = log_add(e[m], e[m - 1] - o);
                }
            }
            e
        };
        Levels {
            unit,
            offsets,
            prefix,
            log_mult,
        }
    }

    fn value(&self, m: u32) -> f64 {
        self.unit.level_value(m)
    }

    /// The one sub-unit's offset of a binary-like unit (N = 1 sub-units).
    fn single_offset(&self) -> Option<f64> {
        match self.offsets[..] {
            [o] if self.unit.kind == UnitKind::Subunits => Some(o),
            _ => None,
        }
    }

    /// log sum_m exp(beta (x val(m) - energy offsets)): H_beta(x).
    fn h_beta(&self, x: f64, beta: f64) -> f64 {
        match self.unit.kind {
            UnitKind::Levels => levels_log_partition_f64(beta * x, self.unit.n),
            UnitKind::Subunits | UnitKind::Gaussian | UnitKind::DiscreteGaussian => {
                if beta == 0.0 {
                    return self.offsets.len() as f64 * std::f64::consts::LN_2;
                }
                // z_n = beta (x - o_n) decreases in n: the first `lo` are
                // linear, those from `hi` on vanish.
                let lo = self.offsets.partition_point(|o| beta * (x - o) > SURE);
                let hi = self.offsets.partition_point(|o| beta * (x - o) > -SURE);
                let mut s = beta * (lo as f64 * x - self.prefix[lo]);
                for o in &self.offsets[lo..hi] {
                    s += softplus_f64(beta * (x - o));
                }
                s
            }
        }
    }

    /// A hidden draw at inverse temperature beta; returns its value.
    fn draw_beta<R: Rng>(&self, x: f64, beta: f64, rng: &mut R) -> f64 {
        match self.unit.kind {
            UnitKind::Levels => self.value(levels_draw(beta * x, self.unit.n, rng)),
            UnitKind::Subunits | UnitKind::Gaussian | UnitKind::DiscreteGaussian => {
                if beta == 0.0 {
                    return (0..self.offsets.len())
                        .filter(|_| rng.random::<f64>() < 0.5)
                        .count() as f64;
                }
                let lo = self.offsets.partition_point(|o| beta * (x - o) > SURE);
                let hi = self.offsets.partition_point(|o| beta * (x - o) > -SURE);
                let mut h = lo;
                for o in &self.offsets[lo..hi] {
                    if rng.random::<f64>() < sigmoid_f64(beta * (x - o)) {
                        h += 1;
                    }
                }
                h as f64
            }
        }
    }

    /// `out[i] = draw_beta(xs[i], beta)` for every i in order, the same
    /// values from the same random numbers, batched for sub-units.
    fn draw_beta_batch(&self, xs: &[f64], beta: f64, rng: &mut ChaCha8Rng, out: &mut [f64]) {
        if self.unit.kind == UnitKind::Subunits && beta != 0.0 {
            exact_subunits_batch(&self.offsets, xs, beta, rng, out);
        } else {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = self.draw_beta(x, beta, rng);
            }
        }
    }

    /// log sum_m exp(a val(m) + g(m)): one visible unit's normaliser.
    fn visible_log_norm(&self, a: f64) -> f64 {
        match self.unit.kind {
            UnitKind::Levels => levels_log_partition_f64(a, self.unit.n),
            UnitKind::DiscreteGaussian => {
                crate::discrete_gaussian::log_partition_f64(a, self.unit.dg())
            }
            UnitKind::Subunits | UnitKind::Gaussian => {
                self.offsets.iter().map(|o| softplus_f64(a - o)).sum()
            }
        }
    }

    /// Mean value of a lone visible unit with bias a.
    fn visible_mean(&self, a: f64) -> f64 {
        match self.unit.kind {
            UnitKind::Levels => crate::unit::levels_mean_f64(a, self.unit.n),
            UnitKind::DiscreteGaussian => crate::discrete_gaussian::mean_f64(a, self.unit.dg()),
            UnitKind::Subunits | UnitKind::Gaussian => {
                self.offsets.iter().map(|o| sigmoid_f64(a - o)).sum()
            }
        }
    }

    /// The bias whose lone-unit mean is `mean`, by bisection.
    fn bias_for_mean(&self, mean: f64) -> f64 {
        let span = 100.0
            + self.offsets.iter().fold(0.0f64, |m, o| m.max(o.abs()))
            + 100.0 * self.unit.n as f64;
        let (mut lo, mut hi) = (-span, span);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if self.visible_mean(mid) < mean {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    }

    /// The level nearest to a visible value.
    fn level_of(&self, value: f64) -> u32 {
        let step = self.value(1);
        ((value / step).round().max(0.0) as u32).min(self.unit.n)
    }
}

/// The visible bias whose lone unit (no hidden units) has mean value
/// `mean`: the base-rate model's bias for one unit.
pub fn bias_for_mean(unit: UnitType, mean: f64) -> f64 {
    let l = Levels::new(unit);
    let max = l.value(unit.n);
    let eps = max * 1e-4;
    l.bias_for_mean(mean.clamp(eps, max - eps))
}

fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// A dense RBM on the host, in the AIS model's terms.
#[derive(Debug, Clone)]
pub struct HostDense {
    pub d: usize,
    pub h: usize,
    /// W, row-major [D, H].
    pub w: Vec<f32>,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    vis: Levels,
    hid: Levels,
}

/// The result of an AIS run.
#[derive(Debug, Clone, PartialEq)]
pub struct AisEstimate {
    pub log_z: f64,
    /// Standard error of log Z from the spread of the importance weights
    /// (delta method: sd(w) / (mean(w) sqrt(runs))).
    pub log_z_std: f64,
    /// log Z of the base-rate model (plus the hidden constant).
    pub log_z_base: f64,
    pub runs: usize,
    pub betas: usize,
}

/// The weights packed once for the products of an AIS or RAISE run: W^T
/// [H, D] (x^T = W^T v^T) and W [D, H] (y^T = W h^T). Each entry of a
/// product is the same dot product, summed in the same order (the depth
/// blocks depend on the depth only), as in v W and h W^T unpacked, so the
/// values are the same bits; only W is no longer packed again per block.
struct Packs {
    wt: PackedA,
    w: PackedA,
}

impl HostDense {
    /// The weights packed for [`HostDense::pre_hidden_packed`] and
    /// [`HostDense::down_linear_packed`].
    fn packs(&self) -> Packs {
        let w = View::row_major(&self.w, self.h);
        Packs {
            wt: PackedA::new(Isa::best(), self.h, self.d, w.t()),
            w: PackedA::new(Isa::best(), self.d, self.h, w),
        }
    }

    /// [`HostDense::pre_hidden`] with the packed weights.
    fn pre_hidden_packed(&self, p: &Packs, v: &[f32], rows: usize) -> Vec<f32> {
        let mut x = vec![0.0f32; rows * self.h];
        let xt = ViewMut {
            data: &mut x,
            rs: 1,
            cs: self.h,
        };
        sgemm_packed(
            rows,
            1.0,
            &p.wt,
            View::row_major(v, self.d).t(),
            0.0,
            xt,
            Seq,
        );
        for r in 0..rows {
            for j in 0..self.h {
                x[r * self.h + j] += self.b[j] as f32;
            }
        }
        x
    }

    /// [`HostDense::down_linear`] with the packed weights.
    fn down_linear_packed(&self, p: &Packs, h: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; rows * self.d];
        let yt = ViewMut {
            data: &mut y,
            rs: 1,
            cs: self.d,
        };
        sgemm_packed(
            rows,
            1.0,
            &p.w,
            View::row_major(h, self.h).t(),
            0.0,
            yt,
            Seq,
        );
        y
    }

    /// The top (only) layer of a model, which must be dense.
    pub fn from_rbm(r: &Rbm) -> Result<Self, String> {
        if r.spec.visible_unit.kind == UnitKind::Gaussian {
            return Err("the AIS log-likelihood is for discrete units; this model has Gaussian (continuous) visible units".into());
        }
        if r.spec.hidden_unit.kind == UnitKind::DiscreteGaussian {
            // (Gaussian and discrete Gaussian units share the sub-unit arms
            // of the hidden side only because they never reach them.)
            return Err("discrete_gaussian units are for pixels only".into());
        }
        let (d, h) =
            match r.spec.kind {
                LayerKind::Dense { visible, hidden } => (visible, hidden),
                LayerKind::Conv { .. } => return Err(
                    "the log-likelihood needs a dense RBM on the data; this layer is convolutional"
                        .into(),
                ),
            };
        Ok(HostDense {
            d,
            h,
            w: to_f64(&r.w).iter().map(|&x| x as f32).collect(),
            a: to_f64(&r.a),
            b: to_f64(&r.b),
            vis: Levels::new(r.spec.visible_unit),
            hid: Levels::new(r.spec.hidden_unit),
        })
    }

    /// Build from parts (tests).
    pub fn new(w: Vec<f64>, a: Vec<f64>, b: Vec<f64>, visible: UnitType, hidden: UnitType) -> Self {
        HostDense {
            d: a.len(),
            h: b.len(),
            w: w.iter().map(|&x| x as f32).collect(),
            a,
            b,
            vis: Levels::new(visible),
            hid: Levels::new(hidden),
        }
    }

    /// The values a visible unit takes, level 0 to N (enumeration, tests).
    pub fn visible_values(&self) -> Vec<f64> {
        (0..=self.vis.unit.n).map(|m| self.vis.value(m)).collect()
    }

    /// Visible values (pixel * scale) to the values of their nearest levels.
    pub fn quantise(&self, values: &[f64]) -> Vec<f32> {
        values
            .iter()
            .map(|&x| self.vis.value(self.vis.level_of(x)) as f32)
            .collect()
    }

    /// The hidden units' mean values for `rows` rows of visible values.
    pub fn hidden_means(&self, v: &[f32], rows: usize) -> Vec<f32> {
        self.pre_hidden(v, rows)
            .iter()
            .map(|&x| {
                let x = x as f64;
                (match self.hid.unit.kind {
                    UnitKind::Levels => crate::unit::levels_mean_f64(x, self.hid.unit.n),
                    UnitKind::Subunits | UnitKind::Gaussian | UnitKind::DiscreteGaussian => {
                        self.hid.offsets.iter().map(|o| sigmoid_f64(x - o)).sum()
                    }
                }) as f32
            })
            .collect()
    }

    /// x = v W + b for `rows` visible rows.
    fn pre_hidden(&self, v: &[f32], rows: usize) -> Vec<f32> {
        let mut x = vec![0.0f32; rows * self.h];
        let (v, w) = (View::row_major(v, self.d), View::row_major(&self.w, self.h));
        let xm = ViewMut::row_major(&mut x, self.h);
        matmul([rows, self.h, self.d], v, w, xm, false, Seq);
        for r in 0..rows {
            for j in 0..self.h {
                x[r * self.h + j] += self.b[j] as f32;
            }
        }
        x
    }

    /// W h for `rows` hidden rows (no bias).
    fn down_linear(&self, h: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; rows * self.d];
        let (h, w) = (View::row_major(h, self.h), View::row_major(&self.w, self.h));
        let ym = ViewMut::row_major(&mut y, self.d);
        matmul([rows, self.d, self.h], h, w.t(), ym, false, Seq);
        y
    }

    /// log p*(v) (unnormalised, beta = 1) of each row of quantised values.
    pub fn log_unnormalised(&self, v: &[f32], rows: usize) -> Vec<f64> {
        let x = self.pre_hidden(v, rows);
        (0..rows)
            .map(|r| {
                let vr = &v[r * self.d..(r + 1) * self.d];
                let vis: f64 = vr
                    .iter()
                    .zip(&self.a)
                    .map(|(&vi, ai)| {
                        let m = self.vis.level_of(vi as f64);
                        ai * vi as f64 + self.vis.log_mult[m as usize]
                    })
                    .sum();
                let hid: f64 = x[r * self.h..(r + 1) * self.h]
                    .iter()
                    .map(|&xj| self.hid.h_beta(xj as f64, 1.0))
                    .sum();
                vis + hid
            })
            .collect()
    }

    /// Base-rate biases from the training data's mean values (rows of
    /// quantised values), smoothed away from the extremes.
    pub fn base_rate(&self, data: &[f32], rows: usize) -> Vec<f64> {
        let max = self.vis.value(self.vis.unit.n);
        let eps = max * 0.5 / (rows as f64 + 1.0);
        (0..self.d)
            .map(|i| {
                let mean = (0..rows).map(|r| data[r * self.d + i] as f64).sum::<f64>()
                    / rows.max(1) as f64;
                self.vis.bias_for_mean(mean.clamp(eps, max - eps))
            })
            .collect()
    }

    /// log Z of the base-rate model with biases `a_base`, the hidden
    /// constant included: the normaliser of p_0.
    pub fn log_z_base(&self, a_base: &[f64]) -> f64 {
        a_base
            .iter()
            .map(|&a| self.vis.visible_log_norm(a))
            .sum::<f64>()
            + self.h as f64 * self.hid.h_beta(0.0, 0.0)
    }

    /// log p*_bk(v) - log p*_bp(v) of row `r` of `v`, with `x` its hidden
    /// inputs (the terms that do not depend on beta cancel).
    fn log_ratio(&self, v: &[f32], x: &[f32], r: usize, bp: f64, bk: f64, a_base: &[f64]) -> f64 {
        let vr = &v[r * self.d..(r + 1) * self.d];
        let mut lw = 0.0;
        for i in 0..self.d {
            lw += (bk - bp) * (self.a[i] - a_base[i]) * vr[i] as f64;
        }
        let xr = &x[r * self.h..(r + 1) * self.h];
        if let Some(o) = self.hid.single_offset() {
            // Binary hidden units (most AIS runs): h_beta's two softplus
            // terms per unit in eight lanes, without libm.
            return lw + softplus_beta_diff_sum(Level::detect(), xr, o, bk, bp, SURE);
        }
        for &xj in xr {
            let xj = xj as f64;
            lw += self.hid.h_beta(xj, bk) - self.hid.h_beta(xj, bp);
        }
        lw
    }

    /// One Gibbs transition that leaves p_beta invariant (and is
    /// reversible with respect to it): h | v, then v | h, on every row of
    /// `v`, with `x` the rows' hidden inputs. Row r draws from `rngs[r]`.
    /// The draws are batched per row ([`Levels::draw_beta_batch`],
    /// [`UnitSampler::draw_tempered_batch`]): the same random numbers and
    /// states as unit by unit.
    #[allow(clippy::too_many_arguments)]
    fn transition(
        &self,
        packs: &Packs,
        v: &mut [f32],
        x: &[f32],
        rows: usize,
        (beta, a_base): (f64, &[f64]),
        (rngs, hbuf): (&mut [ChaCha8Rng], &mut [f32]),
        vis_sampler: &UnitSampler,
    ) {
        let mut inp = vec![0.0f64; self.h.max(self.d)];
        let mut out = vec![0.0f64; self.h.max(self.d)];
        for (r, rng) in rngs.iter_mut().enumerate() {
            let (inp, out) = (&mut inp[..self.h], &mut out[..self.h]);
            for (t, &xj) in inp.iter_mut().zip(&x[r * self.h..(r + 1) * self.h]) {
                *t = xj as f64;
            }
            self.hid.draw_beta_batch(inp, beta, rng, out);
            for (hj, &o) in hbuf[r * self.h..(r + 1) * self.h]
                .iter_mut()
                .zip(out.iter())
            {
                *hj = o as f32;
            }
        }
        let y = self.down_linear_packed(packs, hbuf, rows);
        for (r, rng) in rngs.iter_mut().enumerate() {
            let (inp, out) = (&mut inp[..self.d], &mut out[..self.d]);
            for (i, t) in inp.iter_mut().enumerate() {
                *t = (1.0 - beta) * a_base[i] + beta * (self.a[i] + y[r * self.d + i] as f64);
            }
            vis_sampler.draw_tempered_batch(inp, 1.0, rng, out);
            for (vi, &o) in v[r * self.d..(r + 1) * self.d].iter_mut().zip(out.iter()) {
                *vi = o as f32;
            }
        }
    }

    /// log Z by AIS from the base-rate model with biases `a_base`.
    /// `runs` independent chains, each with its own seeded stream, so the
    /// estimate does not depend on the thread count. `cancel` is polled
    /// between blocks of betas.
    pub fn ais(
        &self,
        a_base: &[f64],
        betas: &[f64],
        runs: usize,
        seed: u64,
        progress: &(dyn Fn(usize) + Sync),
        cancel: &(dyn Fn() -> bool + Sync),
    ) -> Option<AisEstimate> {
        const BLOCK: usize = 25;
        let log_z_base = self.log_z_base(a_base);
        let blocks: Vec<(usize, usize)> = (0..runs)
            .step_by(BLOCK)
            .map(|s| (s, (s + BLOCK).min(runs)))
            .collect();
        let vis_sampler = UnitSampler::new(self.vis.unit, Sampler::Exact);
        let packs = self.packs();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let weights: Option<Vec<Vec<f64>>> = blocks
            .par_iter()
            .map(|&(s, e)| {
                let rows = e - s;
                let mut rngs: Vec<ChaCha8Rng> = (s..e)
                    .map(|r| ChaCha8Rng::seed_from_u64(seed ^ (0xa15_u64 << 32) ^ r as u64))
                    .collect();
                // v ~ p_A.
                let mut v = vec![0.0f32; rows * self.d];
                for (r, rng) in rngs.iter_mut().enumerate() {
                    for i in 0..self.d {
                        v[r * self.d + i] = vis_sampler.draw(a_base[i], rng) as f32;
                    }
                }
                let mut logw = vec![0.0f64; rows];
                let mut hbuf = vec![0.0f32; rows * self.h];
                for k in 1..betas.len() {
                    let (bp, bk) = (betas[k - 1], betas[k]);
                    let x = self.pre_hidden_packed(&packs, &v, rows);
                    for (r, lw) in logw.iter_mut().enumerate() {
                        *lw += self.log_ratio(&v, &x, r, bp, bk, a_base);
                    }
                    if k + 1 == betas.len() {
                        break;
                    }
                    self.transition(
                        &packs,
                        &mut v,
                        &x,
                        rows,
                        (bk, a_base),
                        (&mut rngs, &mut hbuf),
                        &vis_sampler,
                    );
                    if k % 100 == 0 {
                        if cancel() {
                            return None;
                        }
                        let d = done.fetch_add(100 * rows, std::sync::atomic::Ordering::Relaxed);
                        progress((d + 100 * rows) / runs.max(1));
                    }
                }
                Some(logw)
            })
            .collect();
        let logw: Vec<f64> = weights?.into_iter().flatten().collect();
        let m = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = logw.iter().map(|l| (l - m).exp()).collect();
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        let var = w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (w.len().max(2) - 1) as f64;
        Some(AisEstimate {
            log_z: log_z_base + m + mean.ln(),
            log_z_std: var.sqrt() / (mean * (w.len() as f64).sqrt()),
            log_z_base,
            runs,
            betas: betas.len() - 1,
        })
    }

    /// Reverse annealing (RAISE; Burda, Grosse & Salakhutdinov 2015): for
    /// each of `rows` rows of quantised visible values, `chains` reverse
    /// chains, and the log of the mean of their importance weights, a
    /// stochastic lower bound on the row's log-likelihood.
    ///
    /// The bound is on the annealed model p_ann, the distribution of the
    /// last state of the forward chain v_0 ~ p_0, v_k ~ T_k(. | v_{k-1})
    /// (k = 1..K, T_k the Gibbs transition at beta_k, T_K at beta = 1):
    /// a proper distribution, which tends to p as the betas get finer. A
    /// reverse chain starts at the data v_K = v and steps down,
    /// v_{k-1} ~ T_k(. | v_k); T_k is reversible with respect to p_k, so the
    /// importance weight of the path is
    ///
    ///   w = p_0(v_0) prod_k p*_k(v_k) / p*_k(v_{k-1})
    ///     = p*(v) / Z_0 / prod_{k<K} [p*_{k+1}(v_k) / p*_k(v_k)],
    ///
    /// and E[w] = p_ann(v) exactly, so E[log mean w] <= log p_ann(v). On
    /// data drawn from p, E_v[log p_ann(v)] <= E_v[log p(v)] (Gibbs'
    /// inequality), so the mean over test images sits below the mean
    /// log-likelihood in expectation, as forward AIS's sits above it.
    /// Each (row, chain) has its own seeded stream: thread-count free.
    pub fn raise(
        &self,
        a_base: &[f64],
        betas: &[f64],
        (v, rows): (&[f32], usize),
        chains: usize,
        seed: u64,
        (progress, cancel): (&(dyn Fn(usize) + Sync), &(dyn Fn() -> bool + Sync)),
    ) -> Option<Vec<f64>> {
        const BLOCK: usize = 25;
        let chains = chains.max(1);
        let total = rows * chains;
        let log_z_base = self.log_z_base(a_base);
        let top = self.log_unnormalised(v, rows);
        let blocks: Vec<(usize, usize)> = (0..total)
            .step_by(BLOCK)
            .map(|s| (s, (s + BLOCK).min(total)))
            .collect();
        let vis_sampler = UnitSampler::new(self.vis.unit, Sampler::Exact);
        let packs = self.packs();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let k_top = betas.len() - 1;
        let sums: Option<Vec<Vec<f64>>> = blocks
            .par_iter()
            .map(|&(s, e)| {
                let n = e - s;
                // Path p = image p / chains, chain p % chains.
                let mut rngs: Vec<ChaCha8Rng> = (s..e)
                    .map(|p| {
                        // The seed is mixed before the path index, so
                        // nearby seeds draw disjoint sets of streams.
                        let mixed = seed.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        ChaCha8Rng::seed_from_u64(mixed ^ (0x4a15e_u64 << 36) ^ p as u64)
                    })
                    .collect();
                let mut cur = vec![0.0f32; n * self.d];
                for (q, p) in (s..e).enumerate() {
                    let img = p / chains;
                    cur[q * self.d..(q + 1) * self.d]
                        .copy_from_slice(&v[img * self.d..(img + 1) * self.d]);
                }
                let mut acc = vec![0.0f64; n];
                let mut hbuf = vec![0.0f32; n * self.h];
                let mut x = self.pre_hidden_packed(&packs, &cur, n);
                // From v_{k+1} to v_k with T_{k+1}, then the ratio at v_k.
                for k in (0..k_top).rev() {
                    let (lo, hi) = (betas[k], betas[k + 1]);
                    self.transition(
                        &packs,
                        &mut cur,
                        &x,
                        n,
                        (hi, a_base),
                        (&mut rngs, &mut hbuf),
                        &vis_sampler,
                    );
                    x = self.pre_hidden_packed(&packs, &cur, n);
                    for (q, a) in acc.iter_mut().enumerate() {
                        *a += self.log_ratio(&cur, &x, q, lo, hi, a_base);
                    }
                    let step = k_top - k;
                    if step.is_multiple_of(100) {
                        if cancel() {
                            return None;
                        }
                        let d = done.fetch_add(100 * n, std::sync::atomic::Ordering::Relaxed);
                        progress((d + 100 * n) / total.max(1));
                    }
                }
                Some(acc)
            })
            .collect();
        let sums: Vec<f64> = sums?.into_iter().flatten().collect();
        Some(
            (0..rows)
                .map(|img| {
                    let logw: Vec<f64> = sums[img * chains..(img + 1) * chains]
                        .iter()
                        .map(|s| top[img] - log_z_base - s)
                        .collect();
                    let m = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    m + (logw.iter().map(|l| (l - m).exp()).sum::<f64>() / chains as f64).ln()
                })
                .collect(),
        )
    }

    /// log Z exactly, by enumerating every visible configuration (tests;
    /// refuses more than 2^22 configurations).
    pub fn exact_log_z(&self) -> Result<f64, String> {
        let levels = self.vis.unit.n as usize + 1;
        let total = (levels as f64).powi(self.d as i32);
        if total > (1u64 << 22) as f64 {
            return Err(format!(
                "{total} visible configurations are too many to enumerate"
            ));
        }
        let total = total as usize;
        let mut acc = f64::NEG_INFINITY;
        let mut v = vec![0.0f32; self.d];
        for code in 0..total {
            let mut c = code;
            for vi in v.iter_mut() {
                *vi = self.vis.value((c % levels) as u32) as f32;
                c /= levels;
            }
            acc = log_add(acc, self.log_unnormalised(&v, 1)[0]);
        }
        Ok(acc)
    }
}

/// A two-layer dense DBN (Hinton, Osindero & Teh 2006) on the host: the
/// top RBM's marginal p(h) over its visible units is the prior on the
/// bottom layer's hidden units h, and p(v | h) is the bottom RBM's
/// conditional. Its log-likelihood has the variational lower bound of
/// Salakhutdinov & Murray (2008, sec. 4), with q(h | v) the bottom RBM's
/// factorial posterior:
///
///   log p(v) >= E_q[log p*(h) + log p(v | h)] + H(q(h | v)) - log Z_top,
///
/// where p*(h) is the top RBM's unnormalised marginal and log Z_top comes
/// from its AIS. The hidden state summed over is the sub-unit
/// configuration (each of N sub-units on or off, energy s_n (x - o_n)), so
/// q is a product of Bernoullis with a closed-form entropy, and p*(config)
/// is the top's level marginal less the level's log multiplicity and the
/// configuration's offsets; for levels units the state is the level. The
/// bound is exact when q is the true posterior, e.g. when the top RBM is
/// the bottom one turned over (W_top = W^T, visible bias = b, hidden bias
/// = a: the DBN is then the bottom RBM itself).
#[derive(Debug, Clone)]
pub struct HostDbn2 {
    pub bottom: HostDense,
    pub top: HostDense,
}

/// One enumerated hidden state: its values, its configuration term and its
/// digits (sub-unit bit patterns or levels).
type HiddenState = (Vec<f32>, f64, Vec<usize>);

impl HostDbn2 {
    pub fn new(bottom: HostDense, top: HostDense) -> Result<Self, String> {
        if top.d != bottom.h {
            return Err(format!(
                "the top RBM has {} visible units but the bottom one {} hidden units",
                top.d, bottom.h
            ));
        }
        if top.vis.unit != bottom.hid.unit {
            return Err("the top RBM's visible units are not the bottom's hidden units".into());
        }
        Ok(HostDbn2 { bottom, top })
    }

    /// For each image, E_q[log p*(h) + log p(v | h) - log q(h | v)]: the
    /// bound plus log Z_top. The expectation is over `samples` draws of
    /// h ~ q (seeded per image, so the result does not depend on threads).
    /// Each draw's term is the log importance weight of h, so where q is
    /// the true posterior every draw gives log p(v) + log Z_top exactly
    /// (zero variance), and the closer q is to it the smaller the spread.
    pub fn bound_plus_log_z(&self, v: &[f32], rows: usize, samples: usize, seed: u64) -> Vec<f64> {
        let (d, h) = (self.bottom.d, self.bottom.h);
        let x = self.bottom.pre_hidden(v, rows);
        (0..rows)
            .into_par_iter()
            .map(|r| {
                let xr: Vec<f64> = x[r * h..(r + 1) * h].iter().map(|&t| t as f64).collect();
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0xb0_u64 << 40) ^ r as u64);
                let mut hs = vec![0.0f32; samples * h];
                let mut extra = vec![0.0f64; samples];
                for s in 0..samples {
                    for j in 0..h {
                        let (val, e, lq) = self.draw_q(xr[j], &mut rng);
                        hs[s * h + j] = val as f32;
                        extra[s] += e - lq;
                    }
                }
                let terms = self.joint_terms(&v[r * d..(r + 1) * d], &hs, samples);
                terms.iter().zip(&extra).map(|(t, e)| t + e).sum::<f64>() / samples.max(1) as f64
            })
            .collect()
    }

    /// log p*(h-level) + log p(v | h) for `rows` hidden rows of values
    /// (level granularity: the configuration's own term is added by the
    /// caller).
    fn joint_terms(&self, v: &[f32], hs: &[f32], rows: usize) -> Vec<f64> {
        let prior = self.top.log_unnormalised(hs, rows);
        let y = self.bottom.down_linear(hs, rows);
        let d = self.bottom.d;
        (0..rows)
            .map(|s| {
                let cond: f64 = (0..d)
                    .map(|i| {
                        let yi = self.bottom.a[i] + y[s * d + i] as f64;
                        let m = self.bottom.vis.level_of(v[i] as f64);
                        yi * v[i] as f64 + self.bottom.vis.log_mult[m as usize]
                            - self.bottom.vis.visible_log_norm(yi)
                    })
                    .sum();
                prior[s] + cond
            })
            .collect()
    }

    /// One hidden unit's q: a draw's value, its configuration term (minus
    /// the level's log multiplicity under the top and the offsets of the
    /// sub-units that are on; 0 for levels units) and its log q.
    fn draw_q<R: Rng>(&self, x: f64, rng: &mut R) -> (f64, f64, f64) {
        let l = &self.bottom.hid;
        match l.unit.kind {
            UnitKind::Levels => {
                let val = l.value(levels_draw(x, l.unit.n, rng));
                (val, 0.0, x * val - levels_log_partition_f64(x, l.unit.n))
            }
            UnitKind::Subunits | UnitKind::Gaussian | UnitKind::DiscreteGaussian => {
                let (mut m, mut off, mut lq) = (0usize, 0.0, 0.0);
                for o in &l.offsets {
                    let z = x - o;
                    if rng.random::<f64>() < sigmoid_f64(z) {
                        m += 1;
                        off += o;
                        lq -= softplus_f64(-z);
                    } else {
                        lq -= softplus_f64(z);
                    }
                }
                (m as f64, -self.top.vis.log_mult[m] - off, lq)
            }
        }
    }

    /// Every hidden state (configuration) with its value row and its
    /// configuration term, for enumeration (tests; at most 2^20 states).
    fn states(&self) -> Result<Vec<HiddenState>, String> {
        let l = &self.bottom.hid;
        let per = match l.unit.kind {
            UnitKind::Levels => l.unit.n as usize + 1,
            _ => 1usize << l.offsets.len(),
        };
        let total = (per as f64).powi(self.bottom.h as i32);
        if total > (1u64 << 20) as f64 {
            return Err(format!("{total} hidden states are too many to enumerate"));
        }
        let mut out = Vec::new();
        for code in 0..total as usize {
            let (mut c, mut vals, mut extra, mut digits) = (code, Vec::new(), 0.0, Vec::new());
            for _ in 0..self.bottom.h {
                let s = c % per;
                c /= per;
                digits.push(s);
                match l.unit.kind {
                    UnitKind::Levels => vals.push(l.value(s as u32) as f32),
                    _ => {
                        let m = s.count_ones() as usize;
                        let off: f64 = (0..l.offsets.len())
                            .filter(|n| s >> n & 1 == 1)
                            .map(|n| l.offsets[n])
                            .sum();
                        vals.push(m as f32);
                        extra += -self.top.vis.log_mult[m] - off;
                    }
                }
            }
            out.push((vals, extra, digits));
        }
        Ok(out)
    }

    /// log q(state | v) from the hidden inputs x and the state's digits.
    fn log_q(&self, x: &[f64], digits: &[usize]) -> f64 {
        let l = &self.bottom.hid;
        x.iter()
            .zip(digits)
            .map(|(&xj, &s)| match l.unit.kind {
                UnitKind::Levels => xj * l.value(s as u32) - levels_log_partition_f64(xj, l.unit.n),
                _ => l
                    .offsets
                    .iter()
                    .enumerate()
                    .map(|(n, o)| {
                        let z = xj - o;
                        if s >> n & 1 == 1 {
                            -softplus_f64(-z)
                        } else {
                            -softplus_f64(z)
                        }
                    })
                    .sum(),
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum()
    }

    /// By enumerating the hidden states of one image v: (log p(v) +
    /// log Z_top, the bound + log Z_top with the expectation taken
    /// exactly). Tests only.
    pub fn exact(&self, v: &[f32]) -> Result<(f64, f64), String> {
        let states = self.states()?;
        let x: Vec<f64> = self
            .bottom
            .pre_hidden(v, 1)
            .iter()
            .map(|&t| t as f64)
            .collect();
        let mut log_p = f64::NEG_INFINITY;
        let mut bound = 0.0;
        for (vals, extra, digits) in &states {
            let joint = self.joint_terms(v, vals, 1)[0] + extra;
            log_p = log_add(log_p, joint);
            let lq = self.log_q(&x, digits);
            bound += lq.exp() * (joint - lq);
        }
        Ok((log_p, bound))
    }
}
