//! Time of the Frechet distance between two full-rank D x D covariances
//! (random features, N = 2D samples each).  `frechet_bench [D] [THREADS]`
//! or, on stored statistics (mu/sigma safetensors, e.g. from bench/fid_bench.py):
//! `frechet_bench --files A B [THREADS]` (prints a JSON line).
use std::time::Instant;

use mrbm_eval::frechet::{frechet_distance, GaussianStats};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(|s| s.as_str()) == Some("--files") {
        let threads: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(2);
        let (m1, s1) = mrbm_eval::stages::read_stats(args[2].as_ref()).unwrap();
        let (m2, s2) = mrbm_eval::stages::read_stats(args[3].as_ref()).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let t = Instant::now();
        let f = pool
            .install(|| frechet_distance(&m1, &s1, &m2, &s2))
            .unwrap();
        println!(
            "{}",
            serde_json::json!({"fid": f.distance, "seconds": t.elapsed().as_secs_f64(), "dim": m1.len()})
        );
        return;
    }
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let d = *a.first().unwrap_or(&2048);
    let threads = *a.get(1).unwrap_or(&2);
    let n = 2 * d;
    let mut s = 9u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let x: Vec<f32> = (0..n * d).map(|_| next()).collect();
    let y: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(k, v)| v * (1.0 + (k % d) as f32 / d as f32) + next() * 0.1)
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let t = Instant::now();
        let sa = GaussianStats::from_features(&x, n, d).unwrap();
        let sb = GaussianStats::from_features(&y, n, d).unwrap();
        let t_stats = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let f = frechet_distance(&sa.mu, &sa.sigma, &sb.mu, &sb.sigma).unwrap();
        println!(
            "d {d}: stats {t_stats:.2}s (2 x {n} samples), frechet {:.2}s, value {}",
            t.elapsed().as_secs_f64(),
            f.distance
        );
    });
}
