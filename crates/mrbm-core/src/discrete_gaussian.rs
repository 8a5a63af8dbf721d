//! The discrete Gaussian unit: N + 1 levels v = m R / N in [0, R] with
//!
//!   p(m | x) proportional to exp(v x - v^2 / 2),
//!
//! a unit-variance Gaussian around x, discretised to the levels and
//! truncated to [0, R]. It is the levels unit (p proportional to exp(v x))
//! plus a quadratic term in the visible energy, E(v) = v^2 / 2. Why it
//! exists: the levels unit's pmf is monotone in m, so a pixel's most likely
//! value is always black or full and a mid colour is a flat, noisy pmf;
//! here the mode sits at x, anywhere in [0, R], with spread 1 (R / 10 at the
//! default R = 10). The range R sets the noise relative to the pixel range,
//! as the standard deviation does for a Gaussian-Bernoulli RBM on
//! standardised data, and keeps the weights of order one. The quadratic
//! term does not depend on the parameters, so CD's statistics are
//! unchanged; only the negative phase's draws and the free energy see it.
//!
//! In level units the pmf is exp(-(m - mu)^2 / (2 s^2)) with mu = N x / R
//! and s = N / R; everything below works there. At inverse temperature
//! beta (beta times the whole energy) s becomes N / (R sqrt(beta)).

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Levels further than this many spreads from the mode carry less than
/// exp(-40) of its weight: sums and draws leave them out.
const SPAN_SD: f64 = 9.0;

/// Windows up to this many levels are enumerated; wider ones are drawn by
/// rejection.
const ENUMERATE_MAX: usize = 64;

/// A discrete Gaussian unit: N levels above zero over the range [0, R], at
/// inverse temperature beta.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dg {
    pub n: u32,
    pub range: f64,
    pub beta: f64,
}

impl Dg {
    pub fn new(n: u32, range: f64) -> Self {
        Dg {
            n,
            range,
            beta: 1.0,
        }
    }

    pub fn tempered(self, beta: f64) -> Self {
        Dg { beta, ..self }
    }
}

/// (mu, s): the pmf's centre and spread in level units.
fn centre_spread(x: f64, u: Dg) -> (f64, f64) {
    let nf = u.n as f64;
    (nf * x / u.range, nf / (u.range * u.beta.sqrt()))
}

/// The levels [lo, hi] holding all but exp(-40) of the mass: around the
/// mode (the level nearest mu, clipped to 0..=N).
fn window(x: f64, u: Dg) -> (u32, u32) {
    let (mu, s) = centre_spread(x, u);
    let nf = u.n as f64;
    let mode = mu.round().clamp(0.0, nf);
    let half = (SPAN_SD * s).ceil() + 2.0;
    let lo = (mode - half).max(0.0);
    let hi = (mode + half).min(nf);
    (lo as u32, hi as u32)
}

/// log weight of level m: beta (v x - v^2 / 2) with v = m R / N.
fn log_weight(m: u32, x: f64, u: Dg) -> f64 {
    let v = m as f64 * u.range / u.n as f64;
    u.beta * (v * x - 0.5 * v * v)
}

/// The window's weights relative to its largest, and that largest log weight.
fn window_weights(x: f64, u: Dg) -> (u32, Vec<f64>, f64) {
    let (lo, hi) = window(x, u);
    let top = (lo..=hi)
        .map(|m| log_weight(m, x, u))
        .fold(f64::NEG_INFINITY, f64::max);
    let w = (lo..=hi)
        .map(|m| (log_weight(m, x, u) - top).exp())
        .collect();
    (lo, w, top)
}

/// log sum_m exp(beta (v_m x - v_m^2 / 2)): the unit's log-partition.
pub fn log_partition_f64(x: f64, u: Dg) -> f64 {
    let (_, w, top) = window_weights(x, u);
    top + w.iter().sum::<f64>().ln()
}

/// E[v] = E[m R / N]: at beta = 1 the derivative of
/// [`log_partition_f64`] in x.
pub fn mean_f64(x: f64, u: Dg) -> f64 {
    let (lo, w, _) = window_weights(x, u);
    let z: f64 = w.iter().sum();
    let first: f64 = w
        .iter()
        .enumerate()
        .map(|(i, wi)| wi * (lo as usize + i) as f64)
        .sum();
    (first / z / u.n as f64 * u.range).clamp(0.0, u.range)
}

/// The whole pmf over 0..=N (levels outside the window are 0).
pub fn pmf(x: f64, u: Dg) -> Vec<f64> {
    let (lo, w, _) = window_weights(x, u);
    let z: f64 = w.iter().sum();
    let mut p = vec![0.0; u.n as usize + 1];
    for (i, wi) in w.iter().enumerate() {
        p[lo as usize + i] = wi / z;
    }
    p
}

/// One exact draw of m (0..=N), up to the exp(-40) of mass left out.
///
/// - Narrow windows (at most 64 levels) and wide spreads (s at least N / 2)
///   are enumerated and inverted.
/// - Beyond the top (mu > N + 0.3 s), j = N - m has log weight
///   -lambda j - j^2 / (2 s^2) (lambda = (mu - N) / s^2) relative to m = N:
///   a geometric proposal with rate lambda, accepted with
///   exp(-j^2 / (2 s^2)). Mirrored below 0.
/// - Otherwise a continuous Gaussian Y ~ N(mu, s^2) rounded to m, accepted
///   with g(m) / (C g(Y)): the chance of m is then the bin's width times
///   g(m), as wanted. log C = (8 s - 1/4) / (2 s^2) bounds the ratio for
///   |Y - mu| <= 8 s; Y beyond is redrawn (mass below 1e-15).
pub fn draw<R: Rng>(x: f64, u: Dg, rng: &mut R) -> u32 {
    draw_with(x, u, rng, &mut Normals::default())
}

/// Standard normal draws by Marsaglia's polar method, which makes them in
/// pairs (one log, one square root, no cosine): the second of a pair is
/// kept for the next call, across the draws of a batch.
#[derive(Debug, Default)]
pub struct Normals {
    spare: Option<f64>,
}

impl Normals {
    pub fn next<R: Rng>(&mut self, rng: &mut R) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let a = 2.0 * rng.random::<f64>() - 1.0;
            let b = 2.0 * rng.random::<f64>() - 1.0;
            let q = a * a + b * b;
            if q < 1.0 && q > 0.0 {
                let f = (-2.0 * q.ln() / q).sqrt();
                self.spare = Some(b * f);
                return a * f;
            }
        }
    }
}

/// [`draw`], taking its normals from `normals`. Acceptance tests compare
/// the uniform with 1 + log r (a lower bound of r = exp(log r)) first and
/// take the logarithm only when that does not decide.
pub fn draw_with<R: Rng>(x: f64, u: Dg, rng: &mut R, normals: &mut Normals) -> u32 {
    let (lo, hi) = window(x, u);
    match Rejection::of(u) {
        Some(r) if (hi - lo) as usize >= ENUMERATE_MAX => r.draw(x, rng, normals),
        _ => draw_enumerated(x, u, rng),
    }
}

/// The rejection draws' constants for one unit, computed once per batch.
#[derive(Debug, Clone, Copy)]
struct Rejection {
    /// mu = per_x x.
    per_x: f64,
    s: f64,
    n: u32,
    nf: f64,
    /// 1 / (2 s^2).
    inv2s2: f64,
    log_c: f64,
}

/// 1.5 * 2^52: y + MAGIC - MAGIC rounds y to an integer (ties to even, a
/// set of measure zero for the continuous proposal) without a libm call.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

impl Rejection {
    /// None for very wide pmfs (s at least N / 2), which are enumerated.
    fn of(u: Dg) -> Option<Self> {
        let (_, s) = centre_spread(0.0, u);
        let nf = u.n as f64;
        if s >= nf / 2.0 {
            return None;
        }
        let inv2s2 = 1.0 / (2.0 * s * s);
        Some(Rejection {
            per_x: nf / u.range,
            s,
            n: u.n,
            nf,
            inv2s2,
            log_c: (8.0 * s - 0.25) * inv2s2,
        })
    }

    /// Whether every input's window is wide enough to draw by rejection:
    /// windows are at least min(half width, N) levels wide.
    fn always(&self) -> bool {
        let half = (SPAN_SD * self.s).ceil() + 2.0;
        half.min(self.nf) as usize >= ENUMERATE_MAX
    }

    fn draw<R: Rng>(&self, x: f64, rng: &mut R, normals: &mut Normals) -> u32 {
        let Rejection {
            s,
            n,
            nf,
            inv2s2,
            log_c,
            ..
        } = *self;
        let mu = self.per_x * x;
        if mu > nf + 0.3 * s || mu < -0.3 * s {
            // The distance beyond the nearer edge sets the geometric rate.
            let beyond = if mu > nf { mu - nf } else { -mu };
            let inv_lambda = s * s / beyond;
            loop {
                let e: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
                let j = (-e.ln() * inv_lambda).floor();
                if j > nf {
                    continue;
                }
                let (log_r, v) = (-j * j * inv2s2, rng.random::<f64>());
                if v < 1.0 + log_r || v < log_r.exp() {
                    let j = j as u32;
                    return if mu > nf { n - j } else { j };
                }
            }
        }
        loop {
            let z = normals.next(rng);
            if z.abs() > 8.0 {
                continue;
            }
            let y = mu + s * z;
            let m = (y + ROUND_MAGIC) - ROUND_MAGIC;
            if m < 0.0 || m > nf {
                continue;
            }
            let (d, e) = (y - mu, m - y);
            let log_ratio = -(2.0 * d * e + e * e) * inv2s2 - log_c;
            let v = rng.random::<f64>();
            if v < 1.0 + log_ratio || v.ln() < log_ratio {
                return m as u32;
            }
        }
    }
}

/// One draw as a pixel value, the level times `scale` (the sequential
/// path: a fresh pair of normals, the general draw). See [`value`].
pub fn draw_value<R: Rng>(x: f64, u: Dg, scale: f64, rng: &mut R) -> f64 {
    value(x, u, scale, rng, &mut Normals::default(), None)
}

/// A draw as a pixel value: NaN in, NaN out (a diverged model's input has
/// no level, and the rejection would never accept it), so the trainer's
/// divergence check sees it. `fast`: the batch's precomputed rejection,
/// when every input's window is wide.
fn value<R: Rng>(
    x: f64,
    u: Dg,
    scale: f64,
    rng: &mut R,
    normals: &mut Normals,
    fast: Option<&Rejection>,
) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let m = match fast {
        Some(r) => r.draw(x, rng, normals),
        None => draw_with(x, u, rng, normals),
    };
    m as f64 * scale
}

/// Inputs per stream in [`draw_batch`]: fixed, so the draws do not depend on
/// how many threads share the chunks.
pub const BATCH_CHUNK: usize = 2048;

/// `out[i] = draw(xs[i], u) * scale` for every i. Rejection takes a varying
/// number of uniforms per draw, so the batch cannot be split at known
/// positions of one stream: it takes a 256-bit key from `rng` (advancing it
/// by 8 words) and draws chunk c of [`BATCH_CHUNK`] inputs from the ChaCha
/// stream (key, c), chunks in parallel over the rayon pool. The states
/// depend on the seed only, not on the thread count.
pub fn draw_batch(xs: &[f64], u: Dg, scale: f64, rng: &mut ChaCha8Rng, out: &mut [f64]) {
    assert_eq!(xs.len(), out.len(), "draw_batch: lengths differ");
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    let rejection = Rejection::of(u).filter(Rejection::always);
    let chunk = |c: usize, xc: &[f64], oc: &mut [f64]| {
        let mut r = ChaCha8Rng::from_seed(key);
        r.set_stream(c as u64);
        let mut normals = Normals::default();
        for (o, &x) in oc.iter_mut().zip(xc) {
            *o = value(x, u, scale, &mut r, &mut normals, rejection.as_ref());
        }
    };
    if xs.len() <= BATCH_CHUNK {
        chunk(0, xs, out);
        return;
    }
    xs.par_chunks(BATCH_CHUNK)
        .zip(out.par_chunks_mut(BATCH_CHUNK))
        .enumerate()
        .for_each(|(c, (xc, oc))| chunk(c, xc, oc));
}

/// Inverse-CDF draw over the window.
fn draw_enumerated<R: Rng>(x: f64, u: Dg, rng: &mut R) -> u32 {
    let (lo, w, _) = window_weights(x, u);
    let mut t = rng.random::<f64>() * w.iter().sum::<f64>();
    for (i, wi) in w.iter().enumerate() {
        if t < *wi {
            return lo + i as u32;
        }
        t -= wi;
    }
    lo + w.len() as u32 - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The exact pmf by brute force over every level, no window.
    fn brute_pmf(x: f64, u: Dg) -> Vec<f64> {
        let l: Vec<f64> = (0..=u.n).map(|m| log_weight(m, x, u)).collect();
        let top = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = l.iter().map(|v| (v - top).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    }

    /// (x, N, R, beta); in level units mu = N x / R, s = N / (R sqrt(beta)).
    const CASES: [(f64, u32, f64, f64); 10] = [
        (5.0, 255, 10.0, 1.0),   // mode mid-range, s = 25.5 levels: rejection
        (0.3, 255, 10.0, 1.0),   // mode near 0
        (13.0, 255, 10.0, 1.0),  // beyond the top by 3 s: geometric tail
        (-4.0, 255, 10.0, 1.0),  // below 0: geometric tail
        (100.0, 255, 20.0, 1.0), // far above R
        (13.4, 255, 44.7, 1.0),  // narrow: s = 5.7, enumerated
        (0.5, 255, 1.0, 1.0),    // s = N: enumerated, nearly flat
        (2.0, 15, 4.5, 1.0),     // small N
        (10.1, 255, 10.0, 1.0),  // mode just past R (inside the 0.3 s band)
        (5.0, 255, 10.0, 0.3),   // tempered: wider
    ];

    fn unit(n: u32, r: f64, beta: f64) -> Dg {
        Dg::new(n, r).tempered(beta)
    }

    #[test]
    fn log_partition_and_mean_match_brute_force() {
        for (x, n, r, beta) in CASES {
            let u = unit(n, r, beta);
            let l: Vec<f64> = (0..=n).map(|m| log_weight(m, x, u)).collect();
            let top = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let brute = top + l.iter().map(|v| (v - top).exp()).sum::<f64>().ln();
            assert!(
                (log_partition_f64(x, u) - brute).abs() < 1e-9,
                "{x} {n} {r}"
            );
            let p = brute_pmf(x, u);
            let w = pmf(x, u);
            assert!(w.iter().zip(&p).all(|(a, b)| (a - b).abs() < 1e-12));
            if beta != 1.0 {
                continue;
            }
            let mean: f64 =
                p.iter().enumerate().map(|(m, q)| m as f64 * q).sum::<f64>() * r / n as f64;
            assert!((mean_f64(x, u) - mean).abs() < 1e-9, "{x} {n} {r}");
            // The mean is the derivative of the log-partition.
            let h = 1e-5;
            let num = (log_partition_f64(x + h, u) - log_partition_f64(x - h, u)) / (2.0 * h);
            assert!((num - mean).abs() < 1e-6, "{x} {n} {r}: {num} vs {mean}");
        }
    }

    /// Draws follow the exact pmf: every level's frequency over 200,000
    /// draws within 5 binomial standard errors (plus a floor for levels of
    /// tiny mass), and the mean within 5 standard errors.
    #[test]
    fn draws_follow_the_exact_pmf() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let draws = 200_000;
        for (x, n, r, beta) in CASES {
            let u = unit(n, r, beta);
            let mut counts = vec![0usize; n as usize + 1];
            for _ in 0..draws {
                counts[draw(x, u, &mut rng) as usize] += 1;
            }
            check_counts(&counts, x, u);
        }
    }

    /// The batched draws (chunked streams, in parallel) follow the same pmf.
    #[test]
    fn batched_draws_follow_the_exact_pmf() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let draws = 200_000;
        for (x, n, r, beta) in CASES {
            let u = unit(n, r, beta);
            let mut out = vec![0.0; draws];
            draw_batch(&vec![x; draws], u, 1.0, &mut rng, &mut out);
            let mut counts = vec![0usize; n as usize + 1];
            for m in out {
                counts[m as usize] += 1;
            }
            check_counts(&counts, x, u);
        }
    }

    /// The batch's states depend on the seed, not on the thread count, and
    /// the stream moves on by the key's 8 words.
    #[test]
    fn batched_draws_do_not_depend_on_threads() {
        let xs: Vec<f64> = (0..5 * BATCH_CHUNK + 13)
            .map(|i| (i % 97) as f64 * 0.13 - 1.5)
            .collect();
        let u = Dg::new(255, 10.0);
        let mut runs = Vec::new();
        for threads in [1, 2, 3] {
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let mut out = vec![0.0; xs.len()];
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| draw_batch(&xs, u, 0.5, &mut rng, &mut out));
            runs.push((out, rng.get_word_pos()));
        }
        assert_eq!(runs[0], runs[1]);
        assert_eq!(runs[0], runs[2]);
        assert_eq!(runs[0].1, 8);
        // A different seed draws differently.
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let mut other = vec![0.0; xs.len()];
        draw_batch(&xs, u, 0.5, &mut rng, &mut other);
        assert_ne!(other, runs[0].0);
    }

    /// A NaN input (a diverged model) has no level: it stays NaN instead of
    /// looping for ever in the rejection, and infinities draw the edges.
    #[test]
    fn nan_inputs_stay_nan_and_infinities_draw_the_edges() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let xs = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 2.0];
        let mut out = [0.0; 4];
        draw_batch(&xs, Dg::new(255, 10.0), 1.0, &mut rng, &mut out);
        assert!(out[0].is_nan());
        assert_eq!(&out[1..3], &[255.0, 0.0]);
        assert!((0.0..=255.0).contains(&out[3]));
    }

    /// Frequencies of each level within 5 binomial standard errors of the
    /// pmf (plus a floor for levels of tiny mass), and the mean within 5
    /// standard errors.
    fn check_counts(counts: &[usize], x: f64, u: Dg) {
        let (n, r) = (u.n, u.range);
        let draws: usize = counts.iter().sum();
        let p = brute_pmf(x, u);
        for (m, (&c, &q)) in counts.iter().zip(&p).enumerate() {
            let f = c as f64 / draws as f64;
            let se = (q * (1.0 - q) / draws as f64).sqrt();
            assert!(
                (f - q).abs() < 5.0 * se + 2e-5,
                "{x} {n} {r}: level {m} {f} vs {q}"
            );
        }
        let mean: f64 = p.iter().enumerate().map(|(m, q)| m as f64 * q).sum();
        let var: f64 = p
            .iter()
            .enumerate()
            .map(|(m, q)| (m as f64 - mean).powi(2) * q)
            .sum();
        let emp: f64 = counts
            .iter()
            .enumerate()
            .map(|(m, &c)| m as f64 * c as f64)
            .sum::<f64>()
            / draws as f64;
        assert!(
            (emp - mean).abs() < 5.0 * (var / draws as f64).sqrt() + 1e-9,
            "{x} {n} {r}: mean {emp} vs {mean}"
        );
    }

    /// Nanoseconds per draw, sequential and batched (run by hand:
    /// `cargo test --release -p mrbm-core --lib dg_draw_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn dg_draw_speed() {
        let u = Dg::new(255, 10.0);
        let xs: Vec<f64> = (0..1_000_000)
            .map(|i| (i % 1000) as f64 * 0.014 - 2.0)
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let t = std::time::Instant::now();
        let mut s = 0u64;
        for &x in &xs {
            s += draw(x, u, &mut rng) as u64;
        }
        let seq = t.elapsed().as_nanos() as f64 / xs.len() as f64;
        let mut out = vec![0.0; xs.len()];
        let t = std::time::Instant::now();
        draw_batch(&xs, u, 1.0, &mut rng, &mut out);
        let bat = t.elapsed().as_nanos() as f64 / xs.len() as f64;
        println!("sequential {seq:.1} ns/draw, batched {bat:.1} ns/draw ({s})");
    }

    /// Unlike the levels unit, the mode can sit at a mid value.
    #[test]
    fn the_mode_follows_x() {
        let u = Dg::new(255, 10.0);
        let p = pmf(4.0, u);
        let mode = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.partial_cmp(b.1).unwrap())
            .unwrap()
            .0;
        assert_eq!(mode, 102); // 255 * 4 / 10
        assert!((mean_f64(4.0, u) - 4.0).abs() < 1e-3);
    }
}
