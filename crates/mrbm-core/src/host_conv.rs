//! The three convolutions of a conv RBM, on the CPU, as im2col + gemm.
//!
//! Why: burn's flex backend computes conv2d, its transpose and above all
//! the weight gradient (conv2d_weight_backward) several times slower than
//! PyTorch on the CPU (crates/mrbm-core README, "Benchmark"). These are the
//! same maps written the way PyTorch's CPU path does them: per image, the
//! k x k patches as the rows of a matrix (im2col), then one matrix product
//! by mrbm-kernels' sgemm (AVX-512 / AVX2 microkernels chosen at run
//! time; the patch matrix and its adjoint are mrbm-kernels' `Conv::im2row`
//! and `row2im`). Images run in parallel on the caller's rayon pool.
//!
//! Used only for f32 tensors on the flex device that are not part of an
//! autodiff graph (the closed-form training path, sampling, features); the
//! autodiff path and every accelerator keep burn's ops, and the tests
//! compare the two.

use mrbm_kernels::Par::{self, Seq};
use mrbm_kernels::{sgemm, View, ViewMut};
use rayon::prelude::*;

/// Shapes of one conv layer (shared with the autodiff path's host ops).
pub use mrbm_autodiff::Geometry;

/// C = A B, or C += A B when `accumulate`, for A m x k and B k x n
/// (`[m, n, k]`): mrbm-kernels' sgemm with alpha 1, on the caller's rayon
/// pool when `par` says so.
pub(crate) fn matmul(
    [m, n, k]: [usize; 3],
    a: View,
    b: View,
    c: ViewMut,
    accumulate: bool,
    par: Par,
) {
    let beta = if accumulate { 1.0 } else { 0.0 };
    sgemm([m, n, k], 1.0, a, b, beta, c, par)
}

/// conv2d: x [B, C, H, W], w [O, C, K, K], bias [O] -> [B, O, OH, OW].
pub fn conv2d(x: &[f32], w: &[f32], bias: &[f32], g: &Geometry) -> Vec<f32> {
    let (kk, p, conv) = (g.patch(), g.positions(), g.conv());
    let mut out = vec![0.0f32; g.batch * g.o * p];
    out.par_chunks_mut(g.o * p)
        .zip(x.par_chunks(g.image()))
        .for_each_init(
            || vec![0.0f32; p * kk],
            |rows, (y, xi)| {
                conv.im2row(xi, rows);
                for (o, plane) in y.chunks_mut(p).enumerate() {
                    plane.fill(bias[o]);
                }
                // y[o, p] += sum_j rows[p, j] w[o, j]: as (p x o) = rows * w^T.
                let (rows, wt) = (View::row_major(rows, kk), View::row_major(w, kk).t());
                let yt = ViewMut {
                    data: y,
                    rs: 1,
                    cs: p,
                };
                matmul([p, g.o, kk], rows, wt, yt, true, Seq);
            },
        );
    out
}

/// The transposed convolution with the same kernel: h [B, O, OH, OW] ->
/// [B, C, H, W] plus bias [C] (H, W from the geometry, so output padding
/// is just rows that receive no patch).
pub fn conv_transpose2d(h: &[f32], w: &[f32], bias: &[f32], g: &Geometry) -> Vec<f32> {
    let (kk, p, conv) = (g.patch(), g.positions(), g.conv());
    let mut out = vec![0.0f32; g.batch * g.image()];
    out.par_chunks_mut(g.image())
        .zip(h.par_chunks(g.o * p))
        .for_each_init(
            || vec![0.0f32; p * kk],
            |rows, (v, hi)| {
                // rows[p, j] = sum_o h[o, p] w[o, j]: (p x kk) = h^T * w.
                let (ht, w) = (View::row_major(hi, p).t(), View::row_major(w, kk));
                let rows_m = ViewMut::row_major(rows, kk);
                matmul([p, kk, g.o], ht, w, rows_m, false, Seq);
                for (ci, plane) in v.chunks_mut(g.h * g.w).enumerate() {
                    plane.fill(bias[ci]);
                }
                conv.row2im(rows, v);
            },
        );
    out
}

/// The weight gradient sum_b h_b (x) patches(x_b): x [B, C, H, W],
/// h [B, O, OH, OW] -> [O, C, K, K] (what conv2d_weight_backward computes).
pub fn weight_grad(x: &[f32], h: &[f32], g: &Geometry) -> Vec<f32> {
    let (kk, p, conv) = (g.patch(), g.positions(), g.conv());
    let threads = rayon::current_num_threads().max(1);
    let per = g.batch.div_ceil(threads).max(1);
    let partials: Vec<Vec<f32>> = (0..g.batch)
        .step_by(per)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| {
            let mut acc = vec![0.0f32; g.o * kk];
            let mut rows = vec![0.0f32; p * kk];
            for b in start..(start + per).min(g.batch) {
                conv.im2row(&x[b * g.image()..][..g.image()], &mut rows);
                let hb = View::row_major(&h[b * g.o * p..][..g.o * p], p);
                // acc[o, j] += sum_p h[o, p] rows[p, j].
                let (rows_v, acc_m) =
                    (View::row_major(&rows, kk), ViewMut::row_major(&mut acc, kk));
                matmul([g.o, kk, p], hb, rows_v, acc_m, true, Seq);
            }
            acc
        })
        .collect();
    let mut out = vec![0.0f32; g.o * kk];
    for part in partials {
        for (o, v) in out.iter_mut().zip(part) {
            *o += v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(
        batch: usize,
        c: usize,
        hw: usize,
        o: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> Geometry {
        let out = (hw + 2 * p - k) / s + 1;
        Geometry {
            batch,
            c,
            h: hw,
            w: hw,
            o,
            k,
            stride: s,
            pad: p,
            oh: out,
            ow: out,
        }
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Direct loops, the definition.
    fn naive_conv(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
        let mut y = vec![0.0f32; g.batch * g.o * g.oh * g.ow];
        for b in 0..g.batch {
            for o in 0..g.o {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = 0.0f64;
                        for ci in 0..g.c {
                            for ky in 0..g.k {
                                for kx in 0..g.k {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w
                                    {
                                        continue;
                                    }
                                    acc += x
                                        [((b * g.c + ci) * g.h + iy as usize) * g.w + ix as usize]
                                        as f64
                                        * w[((o * g.c + ci) * g.k + ky) * g.k + kx] as f64;
                                }
                            }
                        }
                        y[((b * g.o + o) * g.oh + oy) * g.ow + ox] = acc as f32;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn conv_matches_the_definition_and_transpose_and_weight_grad_are_its_adjoints() {
        for &(batch, c, hw, o, k, s, p) in &[
            (3, 2, 7, 4, 3, 2, 1),
            (2, 3, 8, 5, 4, 2, 1),
            (2, 1, 5, 2, 2, 1, 0),
        ] {
            let g = geometry(batch, c, hw, o, k, s, p);
            let x = values(batch * c * hw * hw, 1);
            let w = values(o * c * k * k, 2);
            let h = values(batch * o * g.oh * g.ow, 3);
            let zero_o = vec![0.0f32; o];
            let zero_c = vec![0.0f32; c];
            let y = conv2d(&x, &w, &zero_o, &g);
            for (a, b) in y.iter().zip(naive_conv(&x, &w, &g)) {
                assert!((a - b).abs() < 1e-4, "conv {a} vs {b}");
            }
            // <conv(x), h> = <x, conv^T(h)>.
            let xt = conv_transpose2d(&h, &w, &zero_c, &g);
            let lhs: f64 = y
                .iter()
                .zip(&h)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            let rhs: f64 = x
                .iter()
                .zip(&xt)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            assert!(
                (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
                "adjoint {lhs} vs {rhs}"
            );
            // <conv_w(x), h> is linear in w with gradient weight_grad(x, h).
            let gw = weight_grad(&x, &h, &g);
            let lin: f64 = gw
                .iter()
                .zip(&w)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            assert!(
                (lhs - lin).abs() < 1e-3 * lhs.abs().max(1.0),
                "weight grad {lhs} vs {lin}"
            );
            // Biases land on every position of their channel.
            let ones_o = vec![1.0f32; o];
            let yb = conv2d(&x, &w, &ones_o, &g);
            assert!(yb.iter().zip(&y).all(|(a, b)| (a - b - 1.0).abs() < 1e-5));
        }
    }
}
