//! The sparse walk (`sgemm_sparse_a`) gives the dense product's bits.

use mrbm_kernels::sparse::sgemm_sparse_a_with;
use mrbm_kernels::{sgemm_isa, Isa, Par, View, ViewMut};

/// Deterministic values in [-1, 1), a share `zeros` of them exactly 0 (and,
/// with `binary`, the rest exactly 1).
fn values(len: usize, seed: u32, zeros: f32, binary: bool) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32
    };
    (0..len)
        .map(|_| {
            let (u, x) = (next(), next());
            if u < zeros {
                0.0
            } else if binary {
                1.0
            } else {
                2.0 * x - 1.0
            }
        })
        .collect()
}

struct Case {
    m: usize,
    n: usize,
    k: usize,
    zeros: f32,
    binary: bool,
    a_t: bool,
    b_t: bool,
    alpha: f32,
    beta: f32,
}

/// (dense bits, sparse bits, whether the walk ran).
fn both(isa: Isa, par: Par, c: &Case) -> (Vec<u32>, Vec<u32>, bool) {
    let (m, n, k) = (c.m, c.n, c.k);
    let a = values(m * k, 1, c.zeros, c.binary);
    let b = values(k * n, 2, 0.0, false);
    let c0 = values(m * n, 3, 0.0, false);
    let av = if c.a_t {
        View::row_major(&a, m).t()
    } else {
        View::row_major(&a, k)
    };
    let bv = if c.b_t {
        View::row_major(&b, k).t()
    } else {
        View::row_major(&b, n)
    };
    let mut dense = c0.clone();
    sgemm_isa(
        (isa, par),
        [m, n, k],
        c.alpha,
        av,
        bv,
        c.beta,
        ViewMut::row_major(&mut dense, n),
    );
    let mut sparse = c0;
    let ran = sgemm_sparse_a_with(
        (isa, par, 1.0),
        [m, n, k],
        c.alpha,
        av,
        bv,
        c.beta,
        ViewMut::row_major(&mut sparse, n),
    );
    let bits = |x: Vec<f32>| x.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    (bits(dense), bits(sparse), ran)
}

#[test]
fn the_walk_gives_the_dense_products_bits() {
    let wide = [Isa::Avx512, Isa::Avx512Narrow];
    if !Isa::Avx512.available() {
        eprintln!("note: no AVX-512 on this CPU; the sparse walk is not used here");
        return;
    }
    let mut cases = Vec::new();
    // Shapes: one depth block and several (k > 256, split evenly), widths
    // of one partial vector, whole strips and two strips with a tail.
    for &(m, n, k) in &[
        (1, 1, 1),
        (7, 5, 3),
        (100, 500, 784),
        (33, 17, 520),
        (200, 256, 300),
        (16, 513, 257),
    ] {
        for &(zeros, binary) in &[(0.8, false), (0.5, true), (1.0, false), (0.0, false)] {
            for &(a_t, b_t) in &[(false, false), (true, false), (false, true)] {
                for &(alpha, beta) in &[(1.0, 0.0), (1.0, 1.0), (-0.25, 0.7)] {
                    cases.push(Case {
                        m,
                        n,
                        k,
                        zeros,
                        binary,
                        a_t,
                        b_t,
                        alpha,
                        beta,
                    });
                }
            }
        }
    }
    for isa in wide {
        for par in [Par::Seq, Par::Rayon] {
            for c in &cases {
                let (dense, sparse, ran) = both(isa, par, c);
                assert!(ran, "the walk did not run at density limit 1");
                let differ = dense.iter().zip(&sparse).filter(|(x, y)| x != y).count();
                assert_eq!(
                    differ, 0,
                    "{} {:?}: m {} n {} k {} zeros {} binary {} a_t {} b_t {} alpha {} beta {}: {differ} elements differ",
                    isa.name(), par, c.m, c.n, c.k, c.zeros, c.binary, c.a_t, c.b_t, c.alpha, c.beta
                );
            }
        }
    }
}

#[test]
fn dense_operands_take_the_packed_product() {
    let c = Case {
        m: 20,
        n: 30,
        k: 40,
        zeros: 0.1,
        binary: false,
        a_t: false,
        b_t: false,
        alpha: 1.0,
        beta: 0.0,
    };
    let (m, n, k) = (c.m, c.n, c.k);
    let a = values(m * k, 1, c.zeros, false);
    let b = values(k * n, 2, 0.0, false);
    let mut out = vec![0.0f32; m * n];
    let ran = sgemm_sparse_a_with(
        (Isa::best(), Par::Seq, 0.4),
        [m, n, k],
        1.0,
        View::row_major(&a, k),
        View::row_major(&b, n),
        0.0,
        ViewMut::row_major(&mut out, n),
    );
    assert!(!ran, "a 90 % dense A should not take the walk");
    let mut want = vec![0.0f32; m * n];
    sgemm_isa(
        (Isa::best(), Par::Seq),
        [m, n, k],
        1.0,
        View::row_major(&a, k),
        View::row_major(&b, n),
        0.0,
        ViewMut::row_major(&mut want, n),
    );
    assert_eq!(out, want);
}

/// `sgemm_sparse_a_then` runs its epilogue once on every row, after the
/// row's last depth block: the result is the dense product with the
/// epilogue applied afterwards, bit for bit, whether the walk ran (sparse
/// A) or the dense product (dense A), on one thread or over the pool, with
/// more than one depth block (k = 600).
#[test]
fn the_epilogue_sees_each_finished_row_once() {
    use mrbm_kernels::sparse::sgemm_sparse_a_then;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let (m, n, k) = (37, 70, 600);
    for (zeros, walked) in [(0.9, true), (0.0, false)] {
        for par in [Par::Seq, Par::Rayon] {
            let a = values(m * k, 11, zeros, true);
            let b = values(k * n, 12, 0.0, false);
            // The epilogue: a function of the row index and every value.
            let epi = |i: usize, row: &mut [f32]| {
                for (j, x) in row.iter_mut().enumerate() {
                    *x = *x * 0.37 - (i * n + j) as f32 * 1e-3;
                }
            };
            let mut want = vec![0.0f32; m * n];
            sgemm_isa(
                (Isa::best(), Par::Seq),
                [m, n, k],
                0.5,
                View::row_major(&a, k),
                View::row_major(&b, n),
                0.0,
                ViewMut::row_major(&mut want, n),
            );
            for (i, row) in want.chunks_mut(n).enumerate() {
                epi(i, row);
            }
            let calls: Vec<AtomicUsize> = (0..m).map(|_| AtomicUsize::new(0)).collect();
            let then = |i: usize, row: &mut [f32]| {
                assert_eq!(row.len(), n);
                calls[i].fetch_add(1, Ordering::Relaxed);
                epi(i, row);
            };
            // C starts as garbage: beta = 0 must not read it.
            let mut got = vec![f32::NAN; m * n];
            let ran = pool.install(|| {
                sgemm_sparse_a_then(
                    [m, n, k],
                    0.5,
                    View::row_major(&a, k),
                    View::row_major(&b, n),
                    0.0,
                    ViewMut::row_major(&mut got, n),
                    par,
                    &then,
                )
            });
            let avx512 = Isa::best() == Isa::Avx512 || Isa::best() == Isa::Avx512Narrow;
            assert_eq!(ran, walked && avx512, "zeros {zeros} {par:?}");
            assert!(calls.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "zeros {zeros} {par:?}");
        }
    }
}

/// `dot_nonzeros_f64` is the plain sequential f64 sum over every element,
/// bit for bit, on rows with many zeros, none, only zeros, negative
/// values (whose zero terms are -0), and lengths around its 256 block.
#[test]
fn the_nonzero_dot_is_the_sequential_sum() {
    use mrbm_kernels::sparse::dot_nonzeros_f64;
    for len in [0, 1, 15, 16, 17, 255, 256, 257, 784, 1000] {
        for (zeros, binary) in [(0.85, true), (0.85, false), (0.0, false), (1.0, false)] {
            let x = values(len, 21, zeros, binary);
            let a = values(len, 22, 0.0, false);
            let mut want = 0.0f64;
            for (&xi, &ai) in x.iter().zip(&a) {
                want += ai as f64 * xi as f64;
            }
            let got = dot_nonzeros_f64(&x, &a);
            assert_eq!(got.to_bits(), want.to_bits(), "len {len} zeros {zeros}");
        }
    }
}

#[test]
fn the_stacked_transpose_puts_each_blocks_rows_in_its_columns() {
    // Widths and row counts around the 16 x 16 tiles, blocks whose rows do
    // not fill a tile (the tiles must not cross into the next block), an
    // empty block, and both the pool and one thread.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for width in [1, 15, 16, 17, 40, 784] {
        for rows in [[0, 5], [16, 16], [100, 100], [33, 1], [7, 50]] {
            let blocks: Vec<Vec<f32>> = rows
                .iter()
                .enumerate()
                .map(|(b, &r)| values(r * width, 11 + b as u32, 0.5, false))
                .collect();
            let total: usize = rows.iter().sum();
            let mut want = vec![f32::NAN; width * total];
            let mut off = 0;
            for (b, &r) in blocks.iter().zip(&rows) {
                for j in 0..r {
                    for i in 0..width {
                        want[i * total + off + j] = b[j * width + i];
                    }
                }
                off += r;
            }
            let refs: Vec<&[f32]> = blocks.iter().map(|b| &b[..]).collect();
            for par in [false, true] {
                let got =
                    pool.install(|| mrbm_kernels::sparse::transpose_stacked(&refs, width, par));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "width {width}, rows {rows:?}, par {par}"
                );
            }
        }
    }
}
