//! Time of the Frechet distance between two full-rank D x D covariances
//! (random features, N = 2D samples each).  `frechet_bench [D] [THREADS]`
use std::time::Instant;

use mrbm_eval::frechet::{frechet_distance, GaussianStats};

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let d = *a.first().unwrap_or(&2048);
    let threads = *a.get(1).unwrap_or(&2);
    let n = 2 * d;
    let mut s = 9u64;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let x: Vec<f32> = (0..n * d).map(|_| next()).collect();
    let y: Vec<f32> = x.iter().enumerate().map(|(k, v)| v * (1.0 + (k % d) as f32 / d as f32) + next() * 0.1).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let t = Instant::now();
        let sa = GaussianStats::from_features(&x, n, d).unwrap();
        let sb = GaussianStats::from_features(&y, n, d).unwrap();
        let t_stats = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let f = frechet_distance(&sa.mu, &sa.sigma, &sb.mu, &sb.sigma).unwrap();
        println!("d {d}: stats {t_stats:.2}s (2 x {n} samples), frechet {:.2}s, value {}", t.elapsed().as_secs_f64(), f.distance);
    });
}
