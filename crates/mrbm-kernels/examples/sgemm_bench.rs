//! GFLOP/s of mrbm-kernels' sgemm (each microkernel family: AVX-512 14 x 32 and
//! 16 x 16, AVX2) vs the `gemm` crate 0.19 (what burn's flex backend and mrbm-core's host_conv used), on
//! the shapes that matter: the conv RBM's training-step products (rows =
//! positions, K = C*k*k, N = out channels), a dense layer, and Inception's
//! per-image convolutions (M = out channels, K = C*kh*kw, N = positions).
//! One thread (`Par::Seq` / `Parallelism::None`) unless `--threads T`.
//!
//!     cargo run --release -p mrbm-kernels --example sgemm_bench [-- --threads 2]
//!
//! Prints one line per shape and the ratio of the best family ([`Isa::best`]) to gemm (> 1: mrbm faster);
//! the peak of one Zen 4 core is 32 flop/cycle x its clock.

use std::time::Instant;

use mrbm_kernels::{sgemm_isa, Isa, Par, View, ViewMut};

fn time(flops: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut reps = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        let s = t.elapsed().as_secs_f64();
        if s > 0.3 {
            return flops * reps as f64 / s / 1e9;
        }
        reps *= 2;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let (par, gpar) = if threads > 1 {
        (Par::Rayon, gemm::Parallelism::Rayon(threads))
    } else {
        (Par::Seq, gemm::Parallelism::None)
    };
    let shapes: &[(&str, usize, usize, usize)] = &[
        ("train conv 1024x48x64", 1024, 64, 48),
        ("train conv 256x1024x128", 256, 128, 1024),
        ("train conv 64x2048x256", 64, 256, 2048),
        ("train conv 16x4096x256", 16, 256, 4096),
        ("dense 128x4096x1000", 128, 1000, 4096),
        ("incep 2b_3x3 64x288x(4096 pos)", 64, 4096, 288),
        ("incep 5b 1x1 64x192x1225", 64, 1225, 192),
        ("incep 5b 5x5 64x1200x1225", 64, 1225, 1200),
        ("incep 6b 7x1 128x896x289", 128, 289, 896),
        ("incep 6e 1x1 192x768x289", 192, 289, 768),
        ("incep 7b 3x3 384x4032x64", 384, 64, 4032),
        ("incep 7c 1x1 448x2048x64", 448, 64, 2048),
        ("square 1024", 1024, 1024, 1024),
    ];
    println!("threads {threads}; best ISA {}", Isa::best().name());
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "shape (M x K x N)", "avx512", "512-16x16", "avx2", "gemm", "best/gemm"
    );
    pool.install(|| {
        for &(name, m, n, k) in shapes {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut c = vec![0.0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            let run = |isa: Isa, c: &mut [f32]| {
                sgemm_isa(
                    (isa, par),
                    [m, n, k],
                    1.0,
                    View::row_major(&a, k),
                    View::row_major(&b, n),
                    0.0,
                    ViewMut::row_major(c, n),
                )
            };
            let mut rate = |isa: Isa| {
                if isa.available() {
                    time(flops, || run(isa, &mut c))
                } else {
                    f64::NAN
                }
            };
            let (wide, narrow, avx2) =
                (rate(Isa::Avx512), rate(Isa::Avx512Narrow), rate(Isa::Avx2));
            let best = match Isa::best() {
                Isa::Avx512 => wide,
                Isa::Avx512Narrow => narrow,
                Isa::Avx2 => avx2,
                Isa::Portable => rate(Isa::Portable),
            };
            let g = time(flops, || unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gpar,
                )
            });
            println!(
                "{name:<34} {wide:>9.1} {narrow:>9.1} {avx2:>9.1} {g:>9.1} {:>8.2}x",
                best / g
            );
        }
        sparse_rows(par);
    });
}

/// The sparse walk (`sgemm_sparse_a`) against the packed product of the
/// best family on the RBM rules' products, by the share of nonzeros in A:
/// the speed-up of the walk (> 1: the walk is faster). Picks
/// `sparse::MAX_DENSITY`.
fn sparse_rows(par: Par) {
    use mrbm_kernels::sparse::sgemm_sparse_a_with;
    if !Isa::Avx512.available() {
        println!("(no AVX-512: the sparse walk is not used on this CPU)");
        return;
    }
    let shapes: &[(&str, usize, usize, usize, bool, bool)] = &[
        ("v W 100x784x500", 100, 500, 784, false, false),
        ("h W^T 100x500x784", 100, 784, 500, false, true),
        ("[v;v']^T [h;-h'] 784x200x500", 784, 500, 200, true, false),
    ];
    let densities = [0.05f32, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7];
    print!("\n{:<34}", "sparse walk / packed (density)");
    for d in densities {
        print!(" {d:>6}");
    }
    println!();
    let isa = Isa::best();
    for &(name, m, n, k, a_t, b_t) in shapes {
        print!("{name:<34}");
        for d in densities {
            let mut s = 0x9e37_79b9u32;
            let a: Vec<f32> = (0..m * k)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    if (s >> 8) as f32 / (1u32 << 24) as f32 <= d {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut c = vec![0.0f32; m * n];
            let av = if a_t {
                View::row_major(&a, m).t()
            } else {
                View::row_major(&a, k)
            };
            let bv = if b_t {
                View::row_major(&b, k).t()
            } else {
                View::row_major(&b, n)
            };
            let flops = 2.0 * (m * n * k) as f64;
            let dense = time(flops, || {
                sgemm_isa(
                    (isa, par),
                    [m, n, k],
                    1.0,
                    av,
                    bv,
                    0.0,
                    ViewMut::row_major(&mut c, n),
                )
            });
            let walk = time(flops, || {
                sgemm_sparse_a_with(
                    (isa, par, 1.0),
                    [m, n, k],
                    1.0,
                    av,
                    bv,
                    0.0,
                    ViewMut::row_major(&mut c, n),
                );
            });
            print!(" {:>5.2}x", walk / dense);
        }
        println!();
    }
}
