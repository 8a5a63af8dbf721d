//! Inception feature throughput of mrbm (burn, flex CPU backend); driven by
//! bench/fid_bench.py.
//!
//!     fid_bench N H W BATCH THREADS   (random u8 RGB images, seeded random weights)
//!
//! Prints one JSON line with images_per_second (after one warm-up batch).
use std::time::Instant;

use mrbm_eval::inception::{random_weights, FidInception};

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("integer arguments"))
        .collect();
    if a.len() != 5 {
        eprintln!("usage: fid_bench N H W BATCH THREADS");
        std::process::exit(2);
    }
    let (n, h, w, batch, threads) = (a[0], a[1], a[2], a[3], a[4]);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let device = burn::tensor::Device::flex();
        let net = FidInception::from_weights(random_weights(7), &device).unwrap();
        let mut px = vec![0u8; n * 3 * h * w];
        let mut s = 1u64;
        for p in px.iter_mut() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *p = (s >> 56) as u8;
        }
        let per = 3 * h * w;
        net.features_u8(&px[..batch.min(n) * per], batch.min(n), 3, h, w).unwrap(); // warm-up
        let t = Instant::now();
        let mut done = 0;
        while done < n {
            let e = (done + batch).min(n);
            let f = net.features_u8(&px[done * per..e * per], e - done, 3, h, w).unwrap();
            assert_eq!(f.len(), (e - done) * 2048);
            done = e;
        }
        let secs = t.elapsed().as_secs_f64();
        println!("{}", serde_json::json!({"images": n, "seconds": secs, "images_per_second": n as f64 / secs, "threads": threads, "batch": batch}));
    });
}
