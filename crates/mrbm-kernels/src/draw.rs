//! Counter-based random draws in f32 for the sampled training rules and
//! Gibbs chains on the host (mrbm-core's `host_sampled`).
//!
//! Why counter-based: a uniform is a pure function of (key, counter), here
//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
//! 3", SC 2011; the generator of cuRAND and PyTorch's CUDA draws). Element i
//! of a batch reads the block at counter i / 4, so a batch can be cut into
//! chunks anywhere on a multiple of 4 and drawn on any number of threads
//! with the same outcome, and there is no per-unit stream state to carry.
//!
//! Each entry point takes the batch's [`Key`] (the caller derives one per
//! batch from its seeded stream) and writes one state per input. Chunks of
//! [`CHUNK`] inputs run on the rayon pool. The arithmetic is plain f32
//! (sigmoid from mrbm-kernels' own exp polynomial, no libm), so the states
//! are the same bits on every x86-64 CPU and thread count.

use rayon::prelude::*;

use crate::math::exp_nonpos;

/// Inputs per parallel chunk (a multiple of 64: a group of 16 Philox blocks).
pub const CHUNK: usize = 4096;

/// The 64-bit key of one batch of draws plus a stream number, so one key can
/// serve several batches of a step (the hidden draw, the visible draw, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub key: [u32; 2],
    pub stream: u32,
}

impl Key {
    pub fn new(key: u64, stream: u32) -> Key {
        Key {
            key: [key as u32, (key >> 32) as u32],
            stream,
        }
    }

    /// The same key on another stream.
    pub fn with_stream(self, stream: u32) -> Key {
        Key { stream, ..self }
    }

    /// Four uniforms' bits for block `block` (elements 4 block .. 4 block + 3)
    /// of word `word` (several words per element where one draw needs more).
    #[inline(always)]
    pub fn block(&self, block: u64, word: u32) -> [u32; 4] {
        philox4x32_10(
            [block as u32, (block >> 32) as u32, word, self.stream],
            self.key,
        )
    }
}

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds: four 32-bit words of a counter and a 64-bit
/// key to four pseudo-random words.
#[inline(always)]
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(W0);
            key[1] = key[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, ctr[0]);
        let (hi1, lo1) = mulhilo(M1, ctr[2]);
        ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0];
    }
    ctr
}

/// A uniform in [0, 1) from the top 24 bits: every value is a multiple of
/// 2^-24, exactly representable in f32.
#[inline(always)]
pub fn unit_f32(bits: u32) -> f32 {
    (bits >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// `u < sigmoid(z)` without a division: u (1 + e) < (z >= 0 ? 1 : e) with
/// e = exp(-|z|).
#[inline(always)]
fn below_sigmoid(u: f32, z: f32) -> bool {
    let e = exp_nonpos(-z.abs());
    let num = if z >= 0.0 { 1.0 } else { e };
    u * (1.0 + e) < num
}

/// Runs `body(first_element, inputs, outputs)` over chunks of [`CHUNK`] in
/// parallel (on the calling thread for one chunk).
fn chunked<F>(x: &[f32], out: &mut [f32], body: F)
where
    F: Fn(usize, &[f32], &mut [f32]) + Sync,
{
    assert_eq!(x.len(), out.len(), "draw: lengths differ");
    if x.len() <= CHUNK {
        body(0, x, out);
        return;
    }
    x.par_chunks(CHUNK)
        .zip(out.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, (xc, oc))| body(c * CHUNK, xc, oc));
}

/// Blocks per [`lanes`] call: 16 Philox blocks side by side, 64 uniforms.
const LANES: usize = 16;
/// Elements per group of [`lanes`].
const GROUP: usize = 4 * LANES;

/// The 16 blocks `group * 16 + l` (l = 0..16) of `word`, as four arrays of
/// words (structure of arrays, so the rounds vectorise): word j of block
/// `group * 16 + l` is `out[j][l]`, the same value [`Key::block`] gives.
#[inline(always)]
fn lanes(key: Key, group: u64, word: u32) -> [[u32; LANES]; 4] {
    let (mut c0, mut c1) = ([0u32; LANES], [0u32; LANES]);
    let (mut c2, mut c3) = ([word; LANES], [key.stream; LANES]);
    for l in 0..LANES {
        let b = group * LANES as u64 + l as u64;
        c0[l] = b as u32;
        c1[l] = (b >> 32) as u32;
    }
    let [mut k0, mut k1] = key.key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        for l in 0..LANES {
            let p0 = M0 as u64 * c0[l] as u64;
            let p1 = M1 as u64 * c2[l] as u64;
            let n0 = (p1 >> 32) as u32 ^ c1[l] ^ k0;
            let n2 = (p0 >> 32) as u32 ^ c3[l] ^ k1;
            c0[l] = n0;
            c1[l] = p1 as u32;
            c2[l] = n2;
            c3[l] = p0 as u32;
        }
    }
    [c0, c1, c2, c3]
}

/// Compiles `$body` (a generic fn of the given arguments) for AVX-512,
/// AVX2 and the baseline, and runs the best the CPU has. Integer and f32
/// arithmetic without contraction: every version gives the same bits.
macro_rules! dispatch {
    ($name:ident, $generic:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name(level: crate::math::Level, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                $generic($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                $generic($($arg),*)
            }
            match level {
                #[cfg(target_arch = "x86_64")]
                // Safety: `Level::detect` returned Avx512 only where the CPU has it.
                crate::math::Level::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // Safety: as above, for AVX2 and FMA.
                crate::math::Level::Avx2 => unsafe { avx2($($arg),*) },
                _ => $generic($($arg),*),
            }
        }
    };
}

/// The Bernoulli draws of one chunk (`first` a multiple of [`GROUP`]):
/// element `first + 64 g + 16 j + l` reads word j of block 16 (first / 64 + g) + l.
#[inline(always)]
fn bernoulli_generic(first: usize, x: &[f32], out: &mut [f32], key: Key) {
    let mut xs = [0.0f32; GROUP];
    let mut os = [0.0f32; GROUP];
    for (g, (xc, oc)) in x.chunks(GROUP).zip(out.chunks_mut(GROUP)).enumerate() {
        let r = lanes(key, (first / GROUP + g) as u64, 0);
        xs[..xc.len()].copy_from_slice(xc);
        for j in 0..4 {
            for l in 0..LANES {
                let z = xs[j * LANES + l];
                let hit = below_sigmoid(unit_f32(r[j][l]), z) as u8 as f32;
                // NaN input: NaN state, so the caller's finiteness check sees it.
                os[j * LANES + l] = if z.is_nan() { f32::NAN } else { hit };
            }
        }
        oc.copy_from_slice(&os[..oc.len()]);
    }
}

dispatch!(bernoulli_chunk, bernoulli_generic, (first: usize, x: &[f32], out: &mut [f32], key: Key));

/// Binary units: `out[i] = 1` with probability sigmoid(x[i]), else 0.
pub fn bernoulli_sigmoid(x: &[f32], key: Key, out: &mut [f32]) {
    let level = crate::math::Level::detect();
    chunked(x, out, |first, xc, oc| {
        bernoulli_chunk(level, first, xc, oc, key)
    });
}

/// Above this |z| a sub-unit is settled without a draw: sigmoid(-18) is
/// 1.5e-8, below the 2^-24 step of the uniforms.
const SURE: f32 = 18.0;

/// Sub-unit (binomial-like) units: `out[i]` = the number of n with
/// u < sigmoid(beta (x[i] - offsets[n])), offsets increasing. Sub-units that
/// are certain (|z| > 18) count without a draw; sub-unit n of element i
/// reads word n / 4 of element i's own block sequence.
pub fn subunits(x: &[f32], offsets: &[f32], beta: f32, key: Key, out: &mut [f32]) {
    if let ([o], true) = (offsets, beta == 1.0) {
        if *o == 0.0 {
            return bernoulli_sigmoid(x, key, out);
        }
    }
    chunked(x, out, |first, xc, oc| {
        for (j, (o, &xi)) in oc.iter_mut().zip(xc).enumerate() {
            let lo = offsets.partition_point(|&on| beta * (xi - on) > SURE);
            let hi = offsets
                .partition_point(|&on| beta * (xi - on) > -SURE)
                .max(lo);
            let mut count = lo as u32;
            let el = (first + j) as u64;
            let mut n = lo;
            while n < hi {
                let word = (n / 4) as u32;
                let r = key.block(el, word);
                let end = ((n / 4 + 1) * 4).min(hi);
                for m in n..end {
                    let z = beta * (xi - offsets[m]);
                    count += below_sigmoid(unit_f32(r[m % 4]), z) as u32;
                }
                n = end;
            }
            // NaN input: no sub-unit is decided; keep it NaN.
            *o = if xi.is_nan() { f32::NAN } else { count as f32 };
        }
    });
}

/// Level units: m in 0..=n with p(m) proportional to exp(beta m x / n),
/// written as m / n. The distribution is a truncated geometric, drawn by
/// its closed-form inverse CDF (f64, one uniform of 53 bits from two words).
pub fn levels(x: &[f32], n: u32, beta: f32, key: Key, out: &mut [f32]) {
    chunked(x, out, |first, xc, oc| {
        let blocks = xc.len().div_ceil(2);
        for b in 0..blocks {
            let r = key.block(((first / 2) + b) as u64, 0);
            for j in 0..2 {
                let i = 2 * b + j;
                if i >= xc.len() {
                    break;
                }
                let bits = ((r[2 * j] as u64) << 21) ^ (r[2 * j + 1] as u64 >> 11);
                let u = bits as f64 * (1.0 / (1u64 << 53) as f64);
                let m = truncated_geometric(beta as f64 * xc[i] as f64 / n as f64, n, u);
                oc[i] = m / n as f32;
            }
        }
    });
}

/// The inverse CDF of p(m) proportional to exp(t m), m = 0..=n, at u in
/// [0, 1). Drawn on the side where t <= 0 (the mirror image for t > 0), so
/// exp never overflows.
pub fn truncated_geometric(t: f64, n: u32, u: f64) -> f32 {
    if t.is_nan() {
        return f32::NAN;
    }
    let (t, flip) = if t > 0.0 { (-t, true) } else { (t, false) };
    let m = if t > -1e-12 {
        (u * (n as f64 + 1.0)).floor()
    } else {
        // CDF(m) = (1 - e^{t (m + 1)}) / (1 - e^{t (n + 1)}).
        let total = -(t * (n as f64 + 1.0)).exp_m1();
        ((-u * total).ln_1p() / t).floor()
    };
    let m = m.clamp(0.0, n as f64) as f32;
    if flip {
        n as f32 - m
    } else {
        m
    }
}

/// Standard normal pairs by Box-Muller (f64 inside, two words a uniform).
#[inline(always)]
fn normal_pair(r: [u32; 4]) -> (f64, f64) {
    let u1 =
        ((((r[0] as u64) << 21) ^ (r[1] as u64 >> 11)) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64);
    let u2 = (((r[2] as u64) << 21) ^ (r[3] as u64 >> 11)) as f64 * (1.0 / (1u64 << 53) as f64);
    let rad = (-2.0 * u1.ln()).sqrt();
    let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
    (rad * c, rad * s)
}

/// Gaussian units: `out[i] = x[i] + z / sqrt(beta)`, z ~ N(0, 1).
pub fn gaussian(x: &[f32], beta: f32, key: Key, out: &mut [f32]) {
    let sd = 1.0 / (beta.max(1e-12) as f64).sqrt();
    chunked(x, out, |first, xc, oc| {
        let blocks = xc.len().div_ceil(2);
        for b in 0..blocks {
            let (z0, z1) = normal_pair(key.block(((first / 2) + b) as u64, 0));
            let i = 2 * b;
            oc[i] = (xc[i] as f64 + sd * z0) as f32;
            if i + 1 < xc.len() {
                oc[i + 1] = (xc[i + 1] as f64 + sd * z1) as f32;
            }
        }
    });
}

/// Uniform values in [0, max) (a noise start).
pub fn uniform(len: usize, max: f32, key: Key) -> Vec<f32> {
    let mut out = vec![0.0f32; len];
    let zeros = vec![0.0f32; len];
    chunked(&zeros, &mut out, |first, xc, oc| {
        for b in 0..xc.len().div_ceil(4) {
            let r = key.block(((first / 4) + b) as u64, 0);
            for (j, &bits) in r.iter().enumerate() {
                if let Some(o) = oc.get_mut(4 * b + j) {
                    *o = unit_f32(bits) * max;
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of Random123's kat_vectors for philox4x32_10.
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    /// Every instruction set this CPU has gives the same states.
    #[test]
    fn every_level_gives_the_same_bits() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 6.0)
            .collect();
        let key = Key::new(42, 1);
        let run = |level| {
            let mut out = vec![0.0; x.len()];
            bernoulli_chunk(level, 0, &x, &mut out, key);
            out
        };
        let scalar = run(crate::math::Level::Scalar);
        for level in crate::math::Level::available() {
            assert_eq!(run(level), scalar, "{level:?}");
        }
    }

    /// The vectorised lanes give each block the scalar generator's words.
    #[test]
    fn lanes_match_the_scalar_generator() {
        let key = Key::new(0xdead_beef_0123_4567, 9);
        for group in [0u64, 1, 77, u32::MAX as u64 + 5] {
            let r = lanes(key, group, 3);
            for l in 0..LANES {
                let b = key.block(group * LANES as u64 + l as u64, 3);
                for (j, (words, &want)) in r.iter().zip(&b).enumerate() {
                    assert_eq!(words[l], want, "group {group} lane {l} word {j}");
                }
            }
        }
    }

    fn threads(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    }

    /// The states do not depend on the thread count (chunks of any size
    /// read the same blocks).
    #[test]
    fn same_states_on_any_thread_count() {
        let x: Vec<f32> = (0..3 * CHUNK + 7)
            .map(|i| ((i % 97) as f32 - 48.0) / 8.0)
            .collect();
        let key = Key::new(0x1234_5678_9abc_def0, 3);
        let run = |t: usize| {
            threads(t).install(|| {
                let mut a = vec![0.0; x.len()];
                bernoulli_sigmoid(&x, key, &mut a);
                let mut b = vec![0.0; x.len()];
                subunits(&x, &[-1.0, 0.0, 2.0, 3.0, 30.0], 1.0, key, &mut b);
                let mut c = vec![0.0; x.len()];
                levels(&x, 7, 1.0, key, &mut c);
                let mut d = vec![0.0; x.len()];
                gaussian(&x, 1.0, key, &mut d);
                (a, b, c, d, uniform(x.len(), 2.0, key))
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }

    /// Frequencies match the closed-form probabilities within 5 standard
    /// errors, per input value.
    #[test]
    fn bernoulli_and_subunit_frequencies() {
        let draws = 40_000usize;
        for &z in &[-6.0f32, -1.5, 0.0, 0.7, 4.0] {
            let x = vec![z; draws];
            let mut out = vec![0.0; draws];
            bernoulli_sigmoid(&x, Key::new(7, 0), &mut out);
            let p = 1.0 / (1.0 + (-(z as f64)).exp());
            let f = out.iter().map(|&o| o as f64).sum::<f64>() / draws as f64;
            let se = (p * (1.0 - p) / draws as f64).sqrt().max(1e-4);
            assert!((f - p).abs() < 5.0 * se, "z {z}: {f} vs {p}");
            // Sub-units: the mean is the sum of the sub-unit probabilities.
            let offs = [-2.0f32, -0.5, 0.5, 1.0, 2.5, 40.0];
            subunits(&x, &offs, 1.0, Key::new(9, 1), &mut out);
            let ps: Vec<f64> = offs
                .iter()
                .map(|&o| 1.0 / (1.0 + (-((z - o) as f64)).exp()))
                .collect();
            let mean: f64 = ps.iter().sum();
            let var: f64 = ps.iter().map(|p| p * (1.0 - p)).sum();
            let f = out.iter().map(|&o| o as f64).sum::<f64>() / draws as f64;
            assert!(
                (f - mean).abs() < 5.0 * (var / draws as f64).sqrt().max(1e-4),
                "z {z}: {f} vs {mean}"
            );
        }
    }

    /// The level draw's histogram against the exact pmf (chi-square).
    #[test]
    fn levels_match_the_pmf() {
        let n = 6u32;
        let draws = 60_000usize;
        for &x in &[-40.0f32, -3.0, 0.0, 1e-9, 2.5, 25.0] {
            let xs = vec![x; draws];
            let mut out = vec![0.0; draws];
            levels(&xs, n, 1.0, Key::new(11, 2), &mut out);
            let mut counts = vec![0u64; n as usize + 1];
            for o in &out {
                counts[(o * n as f32).round() as usize] += 1;
            }
            let w: Vec<f64> = (0..=n)
                .map(|m| (m as f64 * x as f64 / n as f64).exp())
                .collect();
            let z: f64 = w.iter().sum();
            let mut chi = 0.0;
            let mut dof = 0usize;
            for (c, wi) in counts.iter().zip(&w) {
                let e = draws as f64 * wi / z;
                if e > 5.0 {
                    chi += (*c as f64 - e).powi(2) / e;
                    dof += 1;
                } else {
                    assert!(
                        (*c as f64) < e + 6.0 * e.sqrt() + 6.0,
                        "x {x}: rare level drawn {c} times, expected {e}"
                    );
                }
            }
            // The 99.99 % point of chi-square with 6 degrees of freedom is 27.9.
            assert!(
                chi < 28.0,
                "x {x}: chi-square {chi} over {dof} levels, counts {counts:?}"
            );
        }
    }

    #[test]
    fn gaussian_and_uniform_moments() {
        let draws = 100_000usize;
        let x = vec![1.5f32; draws];
        let mut out = vec![0.0; draws];
        gaussian(&x, 4.0, Key::new(5, 0), &mut out);
        let mean = out.iter().map(|&o| o as f64).sum::<f64>() / draws as f64;
        let var = out.iter().map(|&o| (o as f64 - mean).powi(2)).sum::<f64>() / draws as f64;
        assert!(
            (mean - 1.5).abs() < 5.0 * (0.25f64 / draws as f64).sqrt(),
            "{mean}"
        );
        assert!((var - 0.25).abs() < 0.01, "{var}");
        let u = uniform(draws, 3.0, Key::new(5, 1));
        let m = u.iter().map(|&o| o as f64).sum::<f64>() / draws as f64;
        assert!(u.iter().all(|&v| (0.0..3.0).contains(&v)));
        assert!((m - 1.5).abs() < 0.02, "{m}");
    }

    #[test]
    fn nan_inputs_stay_nan() {
        let x = [f32::NAN; 5];
        let mut out = [1.0f32; 5];
        bernoulli_sigmoid(&x, Key::new(1, 0), &mut out);
        assert!(out.iter().all(|o| o.is_nan()));
        subunits(&x, &[-1.0, 1.0], 1.0, Key::new(1, 0), &mut out);
        assert!(out.iter().all(|o| o.is_nan()));
        levels(&x, 3, 1.0, Key::new(1, 0), &mut out);
        assert!(out.iter().all(|o| o.is_nan()));
    }
}
