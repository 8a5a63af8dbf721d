//! Sampling: a Gibbs chain at the top RBM of a stack, then mean field down
//! to pixels.

use burn::tensor::Tensor;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::layer::{tensor_from, to_f64, Rbm};
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
            // Only sub-units have offsets; other kinds never read them.
            offsets: if unit.kind == UnitKind::Subunits {
                unit.offsets()
            } else {
                Vec::new()
            },
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
        if self.unit.kind == UnitKind::DiscreteGaussian {
            let u = self.unit;
            return crate::discrete_gaussian::draw_value(x, u.dg(), u.k / u.n as f64, rng);
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
    /// `out[i] = self.draw_tempered(xs[i], beta, rng)` for every i in order:
    /// the same values from the same random numbers, batched where the unit
    /// is drawn exactly by sub-units ([`exact_subunits_batch`]); discrete
    /// Gaussian units draw the same distribution from chunked streams
    /// ([`crate::discrete_gaussian::draw_batch`]); other units and samplers
    /// draw one by one as before.
    pub fn draw_tempered_batch(
        &self,
        xs: &[f64],
        beta: f64,
        rng: &mut ChaCha8Rng,
        out: &mut [f64],
    ) {
        assert_eq!(xs.len(), out.len(), "draw_tempered_batch: lengths differ");
        let exact = matches!(self.sampler, Sampler::Exact | Sampler::GibbsLangevin);
        if self.unit.kind == UnitKind::DiscreteGaussian {
            // Chunked streams, in parallel: not the unit-by-unit numbers.
            let u = self.unit;
            let dg = u.dg().tempered(beta);
            crate::discrete_gaussian::draw_batch(xs, dg, u.k / u.n as f64, rng, out);
        } else if self.unit.kind == UnitKind::Subunits && exact && beta != 0.0 {
            exact_subunits_batch(&self.offsets, xs, beta, rng, out);
        } else {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = self.draw_tempered(x, beta, rng);
            }
        }
    }

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
        if self.unit.kind == UnitKind::DiscreteGaussian {
            // beta times the whole energy, quadratic term included.
            let u = self.unit;
            let dg = u.dg().tempered(beta);
            return crate::discrete_gaussian::draw_value(x, dg, u.k / u.n as f64, rng);
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

/// Beyond this |z| a sub-unit is settled without a draw (sigmoid(-40) ~
/// 4e-18: a 53-bit uniform cannot tell it from certain).
const SURE: f64 = 40.0;

/// How far [`sigmoid_approx`] may be from [`sigmoid_f64`] and still let a
/// draw be decided without the exact value: the approximation's error is
/// below 1e-8 (tested), so a uniform farther than this from it falls on
/// the same side of the exact probability.
const APPROX_MARGIN: f64 = 1e-6;

/// sigmoid(z) to within ~1e-8 without a libm call, branch-free so that a
/// loop of it vectorises: exp(-|z|) by range reduction to |r| <= ln 2 / 2
/// and a degree-7 Taylor polynomial, |z| clamped at 40. NaN in, NaN out.
#[inline(always)]
fn sigmoid_approx(z: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: rounds to an integer
    let t = -z.abs();
    let t = if t < -SURE { -SURE } else { t };
    let kb = t * std::f64::consts::LOG2_E + MAGIC;
    let kf = kb - MAGIC;
    let r = t - kf * std::f64::consts::LN_2;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^k from k's two's complement bits in kb's mantissa.
    let k = kb.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f64::from_bits(k.wrapping_add(1023) << 52);
    let e = p * scale;
    let q = 1.0 / (1.0 + e);
    if z >= 0.0 {
        q
    } else {
        e * q
    }
}

/// `out[i] = sigmoid_approx(z[i])`, with AVX2 where the CPU has it.
fn sigmoid_approx_into(z: &[f64], out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        unsafe fn wide(z: &[f64], out: &mut [f64]) {
            for (o, &z) in out.iter_mut().zip(z) {
                *o = sigmoid_approx(z);
            }
        }
        // Safety: the CPU has AVX2 (checked above).
        unsafe { wide(z, out) };
        return;
    }
    for (o, &z) in out.iter_mut().zip(z) {
        *o = sigmoid_approx(z);
    }
}

/// `u < sigmoid_f64(z)`, exactly, for the uniform u of 64 random bits
/// (`rng.random::<f64>()`), given `pa = sigmoid_approx(z)`: decided from
/// the approximation unless u is within [`APPROX_MARGIN`] of it (or z is
/// NaN), where the exact value decides.
/// Branch-free but for the rare uniform near the edge: the outcome itself is
/// random, so a branch on it would be mispredicted half the time.
#[inline(always)]
fn bernoulli_bit(bits: u64, z: f64, pa: f64) -> bool {
    let u = (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    let d = u - pa;
    let unsure = d.abs() <= APPROX_MARGIN || d.is_nan();
    if unsure {
        u < sigmoid_f64(z)
    } else {
        d < 0.0
    }
}

/// Below this many draws a batch stays on the calling thread.
const PAR_DRAWS: usize = 1 << 14;

/// `hits[k] = (the k-th next rng.random::<f64>()) < sigmoid_f64(z[k])` for
/// every k, consuming exactly `z.len()` uniforms (64 bits each) from `rng`,
/// the same ones a loop of `rng.random::<f64>() < sigmoid_f64(z)` would,
/// with the same outcomes. Large batches split over the rayon pool: each
/// part starts a copy of the stream at its own word position (ChaCha is
/// counter-based), so the outcome does not depend on the thread count.
pub fn bernoulli_sigmoid(z: &[f64], rng: &mut ChaCha8Rng, hits: &mut [bool]) {
    assert_eq!(z.len(), hits.len(), "bernoulli_sigmoid: lengths differ");
    let n = z.len();
    let threads = rayon::current_num_threads().max(1);
    let one = |z: &[f64], rng: &mut ChaCha8Rng, hits: &mut [bool]| {
        let mut pa = [0.0f64; 256];
        // 256 uniforms' bits at a time: fill_bytes takes the same 32-bit
        // words in the same order as 256 next_u64 calls (low word first).
        let mut bits = [0u8; 256 * 8];
        for (zc, hc) in z.chunks(256).zip(hits.chunks_mut(256)) {
            let pa = &mut pa[..zc.len()];
            sigmoid_approx_into(zc, pa);
            let bits = &mut bits[..zc.len() * 8];
            rng.fill_bytes(bits);
            for (((h, &z), &p), b) in hc
                .iter_mut()
                .zip(zc)
                .zip(pa.iter())
                .zip(bits.chunks_exact(8))
            {
                let b = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                *h = bernoulli_bit(b, z, p);
            }
        }
    };
    if n < PAR_DRAWS || threads == 1 {
        one(z, rng, hits);
        return;
    }
    let start = rng.get_word_pos();
    let per = n.div_ceil(threads.min(n.div_ceil(PAR_DRAWS / 2)));
    z.par_chunks(per)
        .zip(hits.par_chunks_mut(per))
        .enumerate()
        .for_each(|(i, (zc, hc))| {
            let mut r = rng.clone();
            r.set_word_pos(start + 2 * (i * per) as u128);
            one(zc, &mut r, hc);
        });
    rng.set_word_pos(start + 2 * n as u128);
}

/// The exact sub-unit draws of [`UnitSampler::draw_tempered`] (sampler
/// `exact`, beta != 0) for every input in order, batched: first each unit's
/// sure sub-units and the inputs z = beta (x - o_n) of the undecided ones
/// (the same expressions), then one [`bernoulli_sigmoid`] over all of them.
pub(crate) fn exact_subunits_batch(
    offsets: &[f64],
    xs: &[f64],
    beta: f64,
    rng: &mut ChaCha8Rng,
    out: &mut [f64],
) {
    if let [o] = offsets {
        // The common case, every unit undecided: no gathering.
        let z: Vec<f64> = xs.iter().map(|&x| beta * (x - o)).collect();
        if z.iter().all(|&zi| zi <= SURE && zi > -SURE) {
            let mut hits = vec![false; z.len()];
            bernoulli_sigmoid(&z, rng, &mut hits);
            for (o, h) in out.iter_mut().zip(hits) {
                *o = h as u8 as f64;
            }
            return;
        }
    }
    let mut z: Vec<f64> = Vec::with_capacity(xs.len() * offsets.len());
    let mut owner: Vec<u32> = Vec::with_capacity(z.capacity());
    let mut base: Vec<u32> = vec![0; xs.len()];
    if let [o] = offsets {
        for (i, &x) in xs.iter().enumerate() {
            let zi = beta * (x - o);
            if zi > SURE {
                base[i] = 1;
            } else if zi > -SURE {
                z.push(zi);
                owner.push(i as u32);
            }
        }
    } else {
        for (i, &x) in xs.iter().enumerate() {
            let lo = offsets.partition_point(|o| beta * (x - o) > SURE);
            let hi = offsets.partition_point(|o| beta * (x - o) > -SURE);
            base[i] = lo as u32;
            for o in &offsets[lo..hi.max(lo)] {
                z.push(beta * (x - o));
                owner.push(i as u32);
            }
        }
    }
    let mut hits = vec![false; z.len()];
    bernoulli_sigmoid(&z, rng, &mut hits);
    for (&i, &h) in owner.iter().zip(&hits) {
        base[i as usize] += h as u32;
    }
    for (o, b) in out.iter_mut().zip(base) {
        *o = b as f64;
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
///
/// With a [`ChaCha8Rng`] (the training rules' stream) the draws are batched
/// ([`bernoulli_sigmoid`], [`UnitSampler::draw_tempered_batch`]): the same
/// random numbers and states as the unit-by-unit loop kept for other RNGs.
pub fn draw_states<R: Rng + 'static>(unit: UnitType, pre: Tensor<4>, rng: &mut R) -> Tensor<4> {
    let s = UnitSampler::new(unit, Sampler::Exact);
    let shape = pre.dims();
    let (device, dtype) = (pre.device(), pre.dtype());
    let x = to_f64(&pre);
    let binary = unit.kind == UnitKind::Subunits && unit.n == 1 && unit.k == 1.0;
    if let Some(chacha) = (rng as &mut dyn std::any::Any).downcast_mut::<ChaCha8Rng>() {
        let mut out = vec![0.0f64; x.len()];
        if binary {
            // Every unit draws (no sure cut on this path).
            let mut hits = vec![false; x.len()];
            bernoulli_sigmoid(&x, chacha, &mut hits);
            for (o, h) in out.iter_mut().zip(hits) {
                *o = h as u8 as f64;
            }
        } else {
            s.draw_tempered_batch(&x, 1.0, chacha, &mut out);
        }
        return tensor_from(out, shape, &device, dtype);
    }
    let out: Vec<f64> = if binary {
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
        (chains, steps),
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
pub fn gibbs_from(
    dbn: &Dbn,
    start: &[u8],
    (chains, steps): (usize, usize),
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
    if let Some(products) = crate::gibbs_host::DenseChainProducts::new(layer, &v) {
        let hid = gibbs_dense_host(
            layer,
            products,
            (crate::layer::host_f32(&v), chains, steps),
            (&hs, &vs),
            &anneal,
            rng,
            &mut on_step,
        );
        return finish(dbn, hid, chains);
    }
    let mut hid = layer.up(v.clone());
    for s in 0..steps {
        let x = to_f64(&layer.pre_hidden(v));
        let mut hv = vec![0.0f64; x.len()];
        hs.draw_tempered_batch(&x, anneal.beta(s), rng, &mut hv);
        hid = tensor_from(hv, [chains, hc, hh, hw], &device, dtype);
        let y = to_f64(&layer.pre_visible(hid.clone()));
        // A learned sigma: draw at input / sigma, scale by sigma (the
        // Gaussian N(mean, sigma^2), tempered to variance sigma^2 / beta).
        let sig = |i: usize| sigma.as_ref().map_or(1.0, |s| s[(i / (vh * vw)) % vc]);
        let (inputs, at) = visible_inputs(&y, &anneal, s, sig);
        let mut vv = vec![0.0f64; inputs.len()];
        vs.draw_tempered_batch(&inputs, at, rng, &mut vv);
        for (i, d) in vv.iter_mut().enumerate() {
            *d *= sig(i);
        }
        v = tensor_from(vv, [chains, vc, vh, vw], &device, dtype);
        // false: stop early (Ctrl-C); the caller checks for cancellation.
        if !on_step(s + 1) {
            break;
        }
    }
    finish(dbn, hid, chains)
}

/// The visible units' inputs at step `s` (one row per chain) from their
/// inputs y = a + h W^T, and the inverse temperature to draw them at: on an
/// annealed start with a base, the AIS path's mix of base and y at the
/// chains' final beta; otherwise y at step s's beta. `sig(i)`: entry i's
/// learned sigma (1 without), which the inputs are divided by.
fn visible_inputs(
    y: &[f64],
    anneal: &Anneal,
    s: usize,
    sig: impl Fn(usize) -> f64,
) -> (Vec<f64>, f64) {
    let (beta, mix) = (anneal.beta(s), anneal.mix(s));
    match &anneal.base {
        Some(base) if mix < 1.0 => {
            // One bias per visible value of an image; rows are chains.
            let per = base.len();
            let x = y
                .iter()
                .enumerate()
                .map(|(i, &yi)| ((1.0 - mix) * base[i % per] + mix * yi) / sig(i));
            (x.collect(), anneal.end.unwrap_or(1.0))
        }
        _ => {
            let x = y.iter().enumerate().map(|(i, &yi)| yi / sig(i));
            (x.collect(), beta)
        }
    }
}

/// [`gibbs_from`]'s chain on a dense top layer with host products
/// ([`crate::gibbs_host`]): the same draws from the same inputs, the
/// states kept as host values (exact: levels and bits are small integers
/// times a step). Returns the last hidden states as a tensor.
fn gibbs_dense_host(
    layer: &Rbm,
    mut products: crate::gibbs_host::DenseChainProducts,
    (mut v, chains, steps): (Vec<f32>, usize, usize),
    (hs, vs): (&UnitSampler, &UnitSampler),
    anneal: &Anneal,
    rng: &mut ChaCha8Rng,
    on_step: &mut impl FnMut(usize) -> bool,
) -> Tensor<4> {
    let device = layer.w.device();
    let (d, h) = products.dims();
    let as_tensor = |values: &[f32], width: usize| {
        crate::layer::tensor_f32(values.to_vec(), [chains, width, 1, 1], &device)
    };
    let mut hid: Option<Vec<f32>> = None;
    for s in 0..steps {
        let x = products.pre_hidden(&v, chains, || {
            crate::layer::host_f32(&layer.pre_hidden(as_tensor(&v, d)))
        });
        let x: Vec<f64> = x.iter().map(|&t| t as f64).collect();
        let mut hv = vec![0.0f64; x.len()];
        hs.draw_tempered_batch(&x, anneal.beta(s), rng, &mut hv);
        let hf: Vec<f32> = hv.iter().map(|&t| t as f32).collect();
        let y = products.pre_visible(&hf, chains, || {
            crate::layer::host_f32(&layer.pre_visible(as_tensor(&hf, h)))
        });
        hid = Some(hf);
        let y: Vec<f64> = y.iter().map(|&t| t as f64).collect();
        let (inputs, at) = visible_inputs(&y, anneal, s, |_| 1.0);
        let mut vv = vec![0.0f64; inputs.len()];
        vs.draw_tempered_batch(&inputs, at, rng, &mut vv);
        v = vv.iter().map(|&t| t as f32).collect();
        // false: stop early (Ctrl-C); the caller checks for cancellation.
        if !on_step(s + 1) {
            break;
        }
    }
    match hid {
        Some(hf) => as_tensor(&hf, h),
        None => layer.up(as_tensor(&v, d)),
    }
}

/// The visible means of the top layer's hidden states `hid`, taken down the
/// stack by mean field to pixel-level values [chains, C, H, W].
fn finish(dbn: &Dbn, hid: Tensor<4>, chains: usize) -> Tensor<4> {
    let top = dbn.layers.len() - 1;
    let v_mean = dbn.layers[top].down(hid);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_approx_is_within_a_hundredth_of_the_margin() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut worst = 0.0f64;
        let special = [
            0.0, -0.0, 1e-300, -1e-300, 39.999, 40.0, 40.001, -40.0, 700.0, -700.0,
        ];
        let zs: Vec<f64> = (0..200_000)
            .map(|_| (rng.random::<f64>() * 2.0 - 1.0) * 45.0)
            .chain(special)
            .collect();
        let mut pa = vec![0.0; zs.len()];
        sigmoid_approx_into(&zs, &mut pa);
        for (&z, &p) in zs.iter().zip(&pa) {
            worst = worst.max((p - sigmoid_f64(z)).abs());
            assert_eq!(p, sigmoid_approx(z), "the wide loop computes the same");
        }
        assert!(worst < APPROX_MARGIN / 100.0, "worst error {worst:e}");
        assert!(sigmoid_approx(f64::NAN).is_nan());
        // A uniform right at the exact probability falls back to it.
        assert!(!bernoulli_bit(0, f64::NAN, f64::NAN));
    }

    /// The batched draws against the unit-by-unit ones (the code they
    /// replace), on inputs around the sure cut, for several units, betas,
    /// sizes (the parallel split included) and thread counts.
    #[test]
    fn batched_draws_equal_unit_by_unit_draws() {
        let mut g = ChaCha8Rng::seed_from_u64(2);
        for n in [1usize, 7, 1000, 3 * PAR_DRAWS + 17] {
            let xs: Vec<f64> = (0..n)
                .map(|i| match i % 50 {
                    0 => 40.0,
                    1 => -40.0,
                    2 => f64::NAN,
                    3 => f64::INFINITY,
                    _ => (g.random::<f64>() * 2.0 - 1.0) * 60.0,
                })
                .collect();
            for unit in [
                UnitType::BINARY,
                UnitType::new(4, 1.0),
                UnitType::new(7, 0.3),
            ] {
                for beta in [1.0, 0.37] {
                    for threads in [1, 3] {
                        let s = UnitSampler::new(unit, Sampler::Exact);
                        let mut r1 = ChaCha8Rng::seed_from_u64(n as u64);
                        r1.next_u32(); // an odd word position
                        let mut r2 = r1.clone();
                        let want: Vec<f64> = xs
                            .iter()
                            .map(|&x| s.draw_tempered(x, beta, &mut r1))
                            .collect();
                        let mut got = vec![0.0; n];
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap();
                        pool.install(|| s.draw_tempered_batch(&xs, beta, &mut r2, &mut got));
                        assert_eq!(
                            got, want,
                            "n {n} unit {unit:?} beta {beta} threads {threads}"
                        );
                        assert_eq!(r1.next_u64(), r2.next_u64(), "the stream moves on the same");
                    }
                }
            }
            // The binary path of draw_states: every unit draws.
            let mut r1 = ChaCha8Rng::seed_from_u64(9);
            let mut r2 = r1.clone();
            let want: Vec<bool> = xs
                .iter()
                .map(|&z| r1.random::<f64>() < sigmoid_f64(z))
                .collect();
            let mut got = vec![false; n];
            bernoulli_sigmoid(&xs, &mut r2, &mut got);
            assert_eq!(got, want);
            assert_eq!(r1.next_u64(), r2.next_u64());
        }
    }
}
