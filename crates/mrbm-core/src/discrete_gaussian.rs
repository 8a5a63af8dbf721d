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

use rand::Rng;

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
    let (mu, s) = centre_spread(x, u);
    let (n, nf) = (u.n, u.n as f64);
    let (lo, hi) = window(x, u);
    if ((hi - lo) as usize) < ENUMERATE_MAX || s >= nf / 2.0 {
        return draw_enumerated(x, u, rng);
    }
    let inv2s2 = 1.0 / (2.0 * s * s);
    if mu > nf + 0.3 * s || mu < -0.3 * s {
        // The distance beyond the nearer edge sets the geometric rate.
        let lambda = if mu > nf {
            (mu - nf) / (s * s)
        } else {
            -mu / (s * s)
        };
        loop {
            let e: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
            let j = (-e.ln() / lambda).floor();
            if j > nf {
                continue;
            }
            if rng.random::<f64>() < (-j * j * inv2s2).exp() {
                let j = j as u32;
                return if mu > nf { n - j } else { j };
            }
        }
    }
    let log_c = (8.0 * s - 0.25) * inv2s2;
    loop {
        let z = crate::sample::standard_normal(rng);
        if z.abs() > 8.0 {
            continue;
        }
        let y = mu + s * z;
        let m = y.round();
        if m < 0.0 || m > nf {
            continue;
        }
        let (d, e) = (y - mu, m - y);
        let log_ratio = -(2.0 * d * e + e * e) * inv2s2 - log_c;
        if rng.random::<f64>().ln() < log_ratio {
            return m as u32;
        }
    }
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
            let p = brute_pmf(x, u);
            let mut counts = vec![0usize; n as usize + 1];
            for _ in 0..draws {
                counts[draw(x, u, &mut rng) as usize] += 1;
            }
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
