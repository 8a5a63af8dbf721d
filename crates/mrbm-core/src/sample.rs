//! Sampling: a Gibbs chain at the top RBM of a stack, then mean field down
//! to pixels.

use burn::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::layer::{tensor_from, to_f64};
use crate::stack::Dbn;
use crate::unit::{levels_draw, sigmoid_f64, UnitKind, UnitType};

/// How a multinary unit is drawn given its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// The sum of N binary sub-units with offsets, each drawn exactly.
    #[default]
    Exact,
    /// Gaussian with mean f(x) and variance f'(x), rounded and clipped.
    Gaussian,
    /// The `sample` stage's Gibbs-Langevin chains for a dense
    /// Gaussian-Bernoulli RBM (`langevin`); units are drawn as `exact`.
    GibbsLangevin,
}

/// Draws units of one type from their inputs, reusing the offsets.
pub struct UnitSampler {
    unit: UnitType,
    offsets: Vec<f64>,
    sampler: Sampler,
}

impl UnitSampler {
    pub fn new(unit: UnitType, sampler: Sampler) -> Self {
        UnitSampler {
            unit,
            offsets: unit.offsets(),
            sampler,
        }
    }

    /// One draw for input `x`. Exact: sub-units whose probability is within
    /// 1e-17 of 0 or 1 are settled without a draw (a 53-bit uniform cannot
    /// tell them from certain), found by binary search since the offsets
    /// increase; the others are drawn one by one.
    pub fn draw<R: Rng>(&self, x: f64, rng: &mut R) -> f64 {
        if self.unit.kind == UnitKind::Gaussian {
            return x + standard_normal(rng);
        }
        if self.unit.kind == UnitKind::Levels {
            // Categorical over the N + 1 levels, exactly, whatever the sampler.
            return levels_draw(x, self.unit.n, rng) as f64 / self.unit.n as f64;
        }
        match self.sampler {
            Sampler::Gaussian => self.unit.sample_gaussian(x, rng),
            Sampler::Exact | Sampler::GibbsLangevin => {
                const T: f64 = 40.0; // sigmoid(-40) ~ 4e-18
                let lo = self.offsets.partition_point(|o| x - o > T); // sure ones
                let hi = self.offsets.partition_point(|o| x - o > -T); // beyond: sure zeros
                let mut h = lo as u32;
                for o in &self.offsets[lo..hi] {
                    if rng.random::<f64>() < sigmoid_f64(x - o) {
                        h += 1;
                    }
                }
                h as f64
            }
        }
    }
}

impl UnitSampler {
    /// A draw at inverse temperature `beta` (every energy term, offsets
    /// included, times beta): sub-units Bernoulli(sigmoid(beta (x - o_n))),
    /// levels p(m) proportional to exp(beta m x / N). beta = 1 is [`draw`].
    pub fn draw_tempered<R: Rng>(&self, x: f64, beta: f64, rng: &mut R) -> f64 {
        if beta == 1.0 {
            return self.draw(x, rng);
        }
        if self.unit.kind == UnitKind::Gaussian {
            // exp(-beta (v - x)^2 / 2): variance 1 / beta.
            return x + standard_normal(rng) / beta.max(1e-12).sqrt();
        }
        if self.unit.kind == UnitKind::Levels {
            return levels_draw(beta * x, self.unit.n, rng) as f64 / self.unit.n as f64;
        }
        if self.sampler == Sampler::Gaussian {
            // The Gaussian approximation has no exact tempered form: temper its input.
            return self.unit.sample_gaussian(beta * x, rng);
        }
        const T: f64 = 40.0;
        let lo = self.offsets.partition_point(|o| beta * (x - o) > T);
        let hi = self.offsets.partition_point(|o| beta * (x - o) > -T);
        let mut h = lo as u32;
        for o in &self.offsets[lo..hi] {
            if rng.random::<f64>() < sigmoid_f64(beta * (x - o)) {
                h += 1;
            }
        }
        h as f64
    }
}

/// Annealed start of a Gibbs chain: the first `steps` steps sample the
/// tempered model p^beta, beta rising linearly from `from` to 1, so chains
/// leave the start's basin and settle into different modes; the rest run
/// at beta = 1. `steps = 0` is plain Gibbs sampling.
///
/// With `base` (one bias per visible unit of the top RBM, e.g. the data's
/// marginals), the path is AIS's, p_A^(1-beta) p^beta: the visible input is
/// (1 - beta) base + beta (a + W h), so early states look like the data's
/// mean instead of uniform noise; without it, plain tempering.
///
/// `end` (default 1) is the inverse temperature the chains run at after
/// the annealed start (and that it rises to): below 1, every step samples
/// the tempered model p^end (sampling "hot").
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Anneal {
    pub steps: usize,
    pub from: f64,
    pub base: Option<Vec<f64>>,
    pub end: Option<f64>,
}

impl Anneal {
    /// The path's weight at step s (0-based): `from` rising linearly to 1
    /// over the annealed start, then 1.
    pub fn mix(&self, s: usize) -> f64 {
        if s >= self.steps || self.steps == 0 {
            1.0
        } else {
            self.from + (1.0 - self.from) * s as f64 / self.steps as f64
        }
    }

    /// beta at step s (0-based): the weight times `end`.
    pub fn beta(&self, s: usize) -> f64 {
        self.mix(s) * self.end.unwrap_or(1.0)
    }
}

/// One N(0, 1) draw (Box-Muller; rand 0.9 has no normal without rand_distr).
pub fn standard_normal<R: Rng>(rng: &mut R) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Draw every unit of a tensor of inputs (pre-activations) exactly; the
/// states come back as a tensor of the same shape, device and dtype.
pub fn draw_states<R: Rng>(unit: UnitType, pre: Tensor<4>, rng: &mut R) -> Tensor<4> {
    let s = UnitSampler::new(unit, Sampler::Exact);
    let shape = pre.dims();
    let (device, dtype) = (pre.device(), pre.dtype());
    let x = to_f64(&pre);
    let out: Vec<f64> = if unit.kind == UnitKind::Subunits && unit.n == 1 && unit.k == 1.0 {
        // The binary unit: one comparison per unit.
        x.iter()
            .map(|&xi| (rng.random::<f64>() < sigmoid_f64(xi)) as u8 as f64)
            .collect()
    } else {
        x.iter().map(|&xi| s.draw(xi, rng)).collect()
    };
    tensor_from(out, shape, &device, dtype)
}

/// Gibbs sampling at the top RBM: `chains` chains started from the mean
/// field image of uniform random pixels, `steps` alternations h ~ P(h|v),
/// v ~ P(v|h), then the visible mean of the last h taken down the stack by
/// mean field. Returns the pixel-level visible values [chains, C, H, W].
/// `on_step(step)` reports progress; returning false stops the chains early.
pub fn gibbs(
    dbn: &Dbn,
    chains: usize,
    steps: usize,
    sampler: Sampler,
    seed: u64,
    on_step: impl FnMut(usize) -> bool,
) -> Tensor<4> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let noise = noise_start(dbn, chains, &mut rng);
    gibbs_from(
        dbn,
        &noise,
        chains,
        steps,
        sampler,
        Anneal::default(),
        &mut rng,
        on_step,
    )
}

/// Uniform random pixels for `chains` images of the stack's input shape:
/// where [`gibbs`] starts its chains.
pub fn noise_start(dbn: &Dbn, chains: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let [c, h, w] = dbn.spec.input;
    (0..chains * c * h * w)
        .map(|_| rng.random::<u8>())
        .collect()
}

/// [`gibbs`] with chains started at the given images (u8 NCHW, `chains` of
/// them) mapped up to the top RBM by mean field, optionally annealed.
#[allow(clippy::too_many_arguments)]
pub fn gibbs_from(
    dbn: &Dbn,
    start: &[u8],
    chains: usize,
    steps: usize,
    sampler: Sampler,
    anneal: Anneal,
    rng: &mut ChaCha8Rng,
    mut on_step: impl FnMut(usize) -> bool,
) -> Tensor<4> {
    let device = dbn.device();
    let dtype = dbn.layers[0].w.dtype();
    let v0 = dbn.pixels_to_visible(start, chains, &device, dtype);
    let top = dbn.layers.len() - 1;
    let mut v = if top == 0 {
        v0
    } else {
        dbn.as_visible_of(top, dbn.up_to(v0, top - 1))
    };
    let layer = &dbn.layers[top];
    let hs = UnitSampler::new(layer.spec.hidden_unit, sampler);
    let vs = UnitSampler::new(layer.spec.visible_unit, sampler);
    let [hc, hh, hw] = layer.spec.hidden_shape();
    let [vc, vh, vw] = layer.spec.visible_shape();
    // The layer's own visible shape: a dense layer on pixels sees them
    // flattened to [chains, C*H*W, 1, 1] (a learned sigma is per entry).
    v = v.reshape([chains, vc, vh, vw]);
    let sigma: Option<Vec<f64>> = layer
        .log_sigma
        .as_ref()
        .map(|z| to_f64(z).iter().map(|x| x.exp()).collect());
    let mut hid = layer.up(v.clone());
    for s in 0..steps {
        let (beta, mix) = (anneal.beta(s), anneal.mix(s));
        let x = to_f64(&layer.pre_hidden(v));
        let hv: Vec<f64> = x
            .iter()
            .map(|&xi| hs.draw_tempered(xi, beta, rng))
            .collect();
        hid = tensor_from(hv, [chains, hc, hh, hw], &device, dtype);
        let y = to_f64(&layer.pre_visible(hid.clone()));
        // A learned sigma: draw at input / sigma, scale by sigma (the
        // Gaussian N(mean, sigma^2), tempered to variance sigma^2 / beta).
        let sig = |i: usize| sigma.as_ref().map_or(1.0, |s| s[(i / (vh * vw)) % vc]);
        let vv: Vec<f64> = match &anneal.base {
            Some(base) if mix < 1.0 => {
                // One bias per visible value of an image; rows are chains.
                let per = base.len();
                y.iter()
                    .enumerate()
                    .map(|(i, &yi)| {
                        let s = sig(i);
                        let x = ((1.0 - mix) * base[i % per] + mix * yi) / s;
                        s * vs.draw_tempered(x, anneal.end.unwrap_or(1.0), rng)
                    })
                    .collect()
            }
            _ => y
                .iter()
                .enumerate()
                .map(|(i, &yi)| {
                    let s = sig(i);
                    s * vs.draw_tempered(yi / s, beta, rng)
                })
                .collect(),
        };
        v = tensor_from(vv, [chains, vc, vh, vw], &device, dtype);
        // false: stop early (Ctrl-C); the caller checks for cancellation.
        if !on_step(s + 1) {
            break;
        }
    }
    let v_mean = layer.down(hid);
    if top == 0 {
        v_mean
    } else {
        let [pc, ph, pw] = dbn.layers[top - 1].spec.hidden_shape();
        dbn.down_from(v_mean.reshape([chains, pc, ph, pw]), top - 1)
    }
}

/// Chi-square statistic of `draws` (values 0..=N) against the exact pmf,
/// pooling cells with expected count below 5; returns (statistic, degrees
/// of freedom).
pub fn chi_square(counts: &[u64], pmf: &[f64]) -> (f64, usize) {
    let total: u64 = counts.iter().sum();
    let mut cells: Vec<(f64, f64)> = Vec::new(); // (observed, expected)
    let mut acc = (0.0, 0.0);
    for (o, p) in counts.iter().zip(pmf) {
        acc.0 += *o as f64;
        acc.1 += p * total as f64;
        if acc.1 >= 5.0 {
            cells.push(acc);
            acc = (0.0, 0.0);
        }
    }
    if acc.1 > 0.0 || acc.0 > 0.0 {
        match cells.last_mut() {
            Some(last) => {
                last.0 += acc.0;
                last.1 += acc.1;
            }
            None => cells.push(acc),
        }
    }
    let stat = cells.iter().map(|(o, e)| (o - e) * (o - e) / e).sum();
    (stat, cells.len().saturating_sub(1))
}
