//! Bernoulli draws, three ways, for deciding whether to change the random
//! streams of the sampled paths (issue 29). NOT wired into any stage.
//!
//! 1. `loop`: today's stream before issue 29's speed-up, one ChaCha8 f64
//!    uniform and one libm `exp` per unit: `rng.random::<f64>() < sigmoid(z)`.
//! 2. `batched`: today's stream after it (mrbm-core's `bernoulli_sigmoid`
//!    itself): the same uniforms and outcomes, the sigmoid decided by
//!    a bounded approximation unless the uniform falls within 1e-6 of it.
//!    One thread (the stages split large batches by seeking the stream).
//! 3. `philox`: a counter-based f32 draw, as a new stream would be: unit i of
//!    draw number `step` gets Philox4x32-10(key = seed, counter = (i / 4,
//!    step)) word i % 4 as a 24-bit uniform, against an f32 sigmoid; any
//!    thread can draw any unit, so it splits over the rayon pool with no
//!    seeking, and the result is the same for every thread count.
//!
//!   cargo run --release -p mrbm-core --example draw_bench -- [N] [THREADS]
//!
//! N draws (default 1e8) over a 64 Ki-entry block of inputs in [-8, 8]
//! reused (cache-resident, so the draws are measured, not memory); prints
//! draws per second and the fraction of successes of each (they agree to
//! ~1e-4: the same distribution). Timings on a shared machine are noisy.
//!
//! Measured 2026-12-06 on this 2-core AMD EPYC (AVX-512), loaded (load
//! average 6-7: other sessions' experiments), N = 5e7: loop 47-61 M/s,
//! batched 106-113 M/s (one thread), philox 125 M/s on one thread and 195
//! M/s on two. So a counter-based f32 stream would draw ~1.1x faster per
//! thread than today's batched stream, and split over threads without
//! seeking (which today's stream also does, by seeking); the draws are no
//! longer where the sampled paths spend their time (see README, speed).

use mrbm_core::sample::bernoulli_sigmoid;
use mrbm_core::unit::sigmoid_f64;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::time::Instant;

/// mrbm-core's batched exact draws (the stages' code, on one thread: a
/// one-thread pool keeps `bernoulli_sigmoid` from splitting the block).
fn batched(pool: &rayon::ThreadPool, z: &[f64], rng: &mut ChaCha8Rng, hits: &mut [bool]) -> u64 {
    pool.install(|| bernoulli_sigmoid(z, rng, hits));
    hits.iter().map(|&h| h as u64).sum()
}

/// f32 sigmoid with a cheap exp (2^x by bit tricks and a cubic, rounding by
/// the 1.5 * 2^23 trick): the kind of vectorised f32 sigmoid a new stream
/// would pair with.
#[inline(always)]
fn sigmoid_f32(z: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let t = (-z).clamp(-80.0, 80.0) * std::f32::consts::LOG2_E;
    let kb = t + MAGIC;
    let k = kb - MAGIC; // round(t)
    let f = t - k; // [-0.5, 0.5]
    let p = 1.0
        + f * (std::f32::consts::LN_2 + f * (0.240_226_5 + f * (0.055_504_1 + f * 0.009_618_1)));
    let scale =
        f32::from_bits((kb.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127)) << 23);
    1.0 / (1.0 + scale * p)
}

/// Philox4x32-10 (Salmon et al. 2011) on 8 counters at once, structure of
/// arrays (so the rounds vectorise): four 32-bit words per counter.
#[inline(always)]
fn philox8(c0: [u32; 8], step: u32, key: [u32; 2]) -> [[u32; 8]; 4] {
    let mut c = [c0, [step; 8], [0; 8], [0; 8]];
    let mut k = key;
    for _ in 0..10 {
        let mut n = [[0u32; 8]; 4];
        for l in 0..8 {
            let p0 = 0xD251_1F53u64 * c[0][l] as u64;
            let p1 = 0xCD9E_8D57u64 * c[2][l] as u64;
            n[0][l] = (p1 >> 32) as u32 ^ c[1][l] ^ k[0];
            n[1][l] = p1 as u32;
            n[2][l] = (p0 >> 32) as u32 ^ c[3][l] ^ k[1];
            n[3][l] = p0 as u32;
        }
        c = n;
        k = [
            k[0].wrapping_add(0x9E37_79B9),
            k[1].wrapping_add(0xBB67_AE85),
        ];
    }
    c
}

#[inline(always)]
fn philox_block_inner(z: &[f32], seed: u64, step: u32, base: usize) -> u64 {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut hits = 0u64;
    // 32 units per 8 counters: unit base + 32 q + 8 w + l is word w of counter l.
    for (q, zc) in z.chunks(32).enumerate() {
        let c0: [u32; 8] = std::array::from_fn(|l| ((base / 4) + 8 * q + l) as u32);
        let w = philox8(c0, step, key);
        for (j, &zj) in zc.iter().enumerate() {
            let u = (w[j / 8][j % 8] >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
            hits += (u < sigmoid_f32(zj)) as u64;
        }
    }
    hits
}

fn philox_block(z: &[f32], seed: u64, step: u32, base: usize) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide(z: &[f32], seed: u64, step: u32, base: usize) -> u64 {
            philox_block_inner(z, seed, step, base)
        }
        // Safety: the CPU has AVX2 and FMA (checked above).
        return unsafe { wide(z, seed, step, base) };
    }
    philox_block_inner(z, seed, step, base)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000_000);
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    const BLOCK: usize = 1 << 16;
    let mut g = ChaCha8Rng::seed_from_u64(7);
    let z: Vec<f64> = (0..BLOCK)
        .map(|_| (g.random::<f64>() * 2.0 - 1.0) * 8.0)
        .collect();
    let z32: Vec<f32> = z.iter().map(|&x| x as f32).collect();
    let passes = n.div_ceil(BLOCK);
    let total = (passes * BLOCK) as f64;
    let report = |name: &str, secs: f64, hits: u64| {
        println!(
            "{name:8} {:7.1} M draws/s  ({secs:.2} s, success fraction {:.5}, {threads} threads for philox)",
            total / secs / 1e6,
            hits as f64 / total
        );
    };

    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let t = Instant::now();
    let mut hits = 0u64;
    for _ in 0..passes {
        for &zi in &z {
            hits += (rng.random::<f64>() < sigmoid_f64(zi)) as u64;
        }
    }
    report("loop", t.elapsed().as_secs_f64(), hits);

    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let t = Instant::now();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let mut out = vec![false; BLOCK];
    let hits: u64 = (0..passes)
        .map(|_| batched(&one, &z, &mut rng, &mut out))
        .sum();
    report("batched", t.elapsed().as_secs_f64(), hits);

    let t = Instant::now();
    let hits: u64 = (0..passes)
        .map(|p| {
            z32.par_chunks(BLOCK / 16)
                .enumerate()
                .map(|(c, zc)| philox_block(zc, 1, p as u32, c * (BLOCK / 16)))
                .sum::<u64>()
        })
        .sum();
    report("philox", t.elapsed().as_secs_f64(), hits);
}
