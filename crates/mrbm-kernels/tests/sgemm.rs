//! sgemm and the chunked convolution against their definitions (a naive
//! triple loop in f64, direct conv loops), on every microkernel family this
//! CPU can run: odd shapes that leave partial register tiles and partial
//! cache blocks, transposed and strided views, alpha/beta, both Par modes.

use mrbm_kernels::conv::{Conv, Patches, Weights};
use mrbm_kernels::{
    sgemm_implicit, sgemm_isa, sgemm_packed, ImplicitB, Isa, PackedA, Par, View, ViewMut,
};

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn isas() -> Vec<Isa> {
    let v: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
    assert!(v.contains(&Isa::Portable));
    v
}

/// One product on `isa` vs the f64 definition; A is m x k given
/// transposed when `ta`, likewise B; C strided with a gap column (to check
/// nothing outside the m x n corner is touched) or column-major.
#[allow(clippy::too_many_arguments)]
fn check(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    ccol: bool,
    alpha: f32,
    beta: f32,
    par: Par,
) {
    let a = values(m * k, 1 + m as u32);
    let b = values(k * n, 2 + n as u32);
    let av = if ta {
        View::row_major(&a, m).t()
    } else {
        View::row_major(&a, k)
    };
    let bv = if tb {
        View::row_major(&b, k).t()
    } else {
        View::row_major(&b, n)
    };
    // C with a leading dimension one larger than needed; the spare
    // elements must stay as they are.
    let (rs, cs, len) = if ccol {
        (1, m + 1, (m + 1) * n)
    } else {
        (n + 1, 1, (n + 1) * m)
    };
    let c0 = values(len, 3);
    let mut c = c0.clone();
    sgemm_isa(
        (isa, par),
        [m, n, k],
        alpha,
        av,
        bv,
        beta,
        ViewMut {
            data: &mut c,
            rs,
            cs,
        },
    );
    let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] } as f64;
    let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] } as f64;
    let mut touched = vec![false; len];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += at(i, p) * bt(p, j);
            }
            let idx = i * rs + j * cs;
            touched[idx] = true;
            let want = alpha as f64 * s + beta as f64 * c0[idx] as f64;
            let tol = 1e-5 * (k as f64 + 1.0);
            assert!(
                (c[idx] as f64 - want).abs() <= tol,
                "{isa:?} m={m} n={n} k={k} ta={ta} tb={tb} ccol={ccol} alpha={alpha} beta={beta} {par:?}: C[{i},{j}] = {} want {want}",
                c[idx]
            );
        }
    }
    for (idx, t) in touched.iter().enumerate() {
        if !t {
            assert_eq!(c[idx], c0[idx], "{isa:?}: element {idx} outside C changed");
        }
    }
}

#[test]
fn sgemm_matches_the_definition_on_every_isa() {
    let shapes = [
        (1, 1, 1),
        (3, 5, 7),
        (14, 32, 8),
        (15, 33, 9),
        (13, 31, 300),
        (29, 65, 257),
        (200, 70, 3),
        (7, 300, 513),
        (170, 40, 64),
    ];
    for isa in isas() {
        for &(m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                check(isa, m, n, k, ta, tb, false, 1.0, 0.0, Par::Seq);
            }
            check(isa, m, n, k, false, false, true, 1.0, 0.0, Par::Seq);
            check(isa, m, n, k, false, true, false, -0.5, 0.75, Par::Seq);
            check(isa, m, n, k, true, false, true, 2.0, 1.0, Par::Rayon);
        }
    }
}

/// Blocks larger than one cache block in every dimension (k past KC, m past
/// MC, n past NC), split over a 3-thread pool.
#[test]
fn sgemm_spanning_several_cache_blocks_in_parallel() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    pool.install(|| {
        for isa in isas() {
            check(
                isa,
                181,
                2100,
                530,
                false,
                false,
                false,
                1.0,
                0.5,
                Par::Rayon,
            );
            check(isa, 9, 100, 1100, false, true, false, 1.0, 0.0, Par::Rayon);
        }
    });
}

/// Thin products (one block of rows: the batch of a dense layer), which
/// split their columns over the threads: the same bits as the serial
/// product on every pool size, for the shapes of a dense 784-500 and
/// 3136-500 layer's three products (up, down with W^T, and the weight
/// gradient's transpose), partial panels, beta = 0 and 1, C column-major.
#[test]
fn thin_products_in_parallel_equal_the_serial_product_bit_for_bit() {
    let bits = |isa: Isa, [m, n, k]: [usize; 3], tb: bool, ccol: bool, beta: f32, par: Par| {
        let a = values(m * k, 7 + m as u32);
        let b = values(k * n, 8 + n as u32);
        let bv = if tb {
            View::row_major(&b, k).t()
        } else {
            View::row_major(&b, n)
        };
        let mut c = values(m * n, 9);
        let cv = if ccol {
            ViewMut {
                data: &mut c,
                rs: 1,
                cs: m,
            }
        } else {
            ViewMut::row_major(&mut c, n)
        };
        sgemm_isa(
            (isa, par),
            [m, n, k],
            1.0,
            View::row_major(&a, k),
            bv,
            beta,
            cv,
        );
        c.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
    };
    let shapes = [
        [32, 500, 3136],
        [32, 3136, 500],
        [100, 500, 784],
        [1, 500, 784],
        [168, 33, 300],
        [13, 97, 1000],
    ];
    for isa in isas() {
        for shape in shapes {
            for (tb, ccol, beta) in [(false, false, 0.0), (true, false, 1.0), (false, true, 0.0)] {
                let seq = bits(isa, shape, tb, ccol, beta, Par::Seq);
                for threads in [2, 3, 5] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let par = pool.install(|| bits(isa, shape, tb, ccol, beta, Par::Rayon));
                    assert!(
                        seq == par,
                        "{} {shape:?} tb {tb} ccol {ccol} beta {beta}: {threads} threads differ from serial",
                        isa.name()
                    );
                }
            }
        }
    }
}

/// beta = 0 never reads C (NaN there stays out); alpha = 0 or k = 0 only
/// scales C.
#[test]
fn beta_zero_ignores_c_and_degenerate_products_scale_it() {
    for isa in isas() {
        let (m, n, k) = (17, 35, 11);
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        // C = alpha A B + beta C, all row-major, on one thread.
        let rm = |k: usize, alpha: f32, a: &[f32], b: &[f32], beta: f32, c: &mut [f32]| {
            sgemm_isa(
                (isa, Par::Seq),
                [m, n, k],
                alpha,
                View::row_major(a, k),
                View::row_major(b, n),
                beta,
                ViewMut::row_major(c, n),
            )
        };
        let mut c = vec![f32::NAN; m * n];
        rm(k, 1.0, &a, &b, 0.0, &mut c);
        assert!(c.iter().all(|v| v.is_finite()), "{isa:?}");
        let mut c = vec![2.0f32; m * n];
        rm(0, 1.0, &[], &[], 0.5, &mut c);
        assert!(c.iter().all(|v| *v == 1.0));
        rm(k, 0.0, &a, &b, 0.0, &mut c);
        assert!(c.iter().all(|v| *v == 0.0));
    }
}

#[test]
#[should_panic(expected = "C too short")]
fn short_views_are_refused() {
    let a = [1.0f32; 6];
    let mut c = [0.0f32; 3];
    sgemm_isa(
        (Isa::Portable, Par::Seq),
        [2, 2, 3],
        1.0,
        View::row_major(&a, 3),
        View::row_major(&a, 2),
        0.0,
        ViewMut::row_major(&mut c, 2),
    );
}

fn naive_conv(x: &[f32], w: &[f32], bias: &[f32], g: &Conv) -> Vec<f32> {
    let (oh, ow) = (g.oh(), g.ow());
    let mut y = vec![0.0f32; g.o * oh * ow];
    for o in 0..g.o {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = bias[o] as f64;
                for ci in 0..g.c {
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                            let ix = (ox * g.sw + kx) as isize - g.pw as isize;
                            if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                continue;
                            }
                            acc += x[(ci * g.h + iy as usize) * g.w + ix as usize] as f64
                                * w[((o * g.c + ci) * g.kh + ky) * g.kw + kx] as f64;
                        }
                    }
                }
                y[(o * oh + oy) * ow + ox] = acc as f32;
            }
        }
    }
    y
}

#[test]
fn conv_matches_the_definition_in_chunks() {
    let cases = [
        Conv {
            c: 3,
            h: 11,
            w: 9,
            o: 5,
            kh: 3,
            kw: 3,
            sh: 2,
            sw: 2,
            ph: 0,
            pw: 0,
        },
        Conv {
            c: 4,
            h: 8,
            w: 10,
            o: 7,
            kh: 1,
            kw: 7,
            sh: 1,
            sw: 1,
            ph: 0,
            pw: 3,
        },
        Conv {
            c: 4,
            h: 10,
            w: 8,
            o: 7,
            kh: 7,
            kw: 1,
            sh: 1,
            sw: 1,
            ph: 3,
            pw: 0,
        },
        Conv {
            c: 6,
            h: 9,
            w: 9,
            o: 3,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            ph: 0,
            pw: 0,
        },
        Conv {
            c: 2,
            h: 12,
            w: 12,
            o: 4,
            kh: 5,
            kw: 5,
            sh: 1,
            sw: 1,
            ph: 2,
            pw: 2,
        },
        // Big enough that it runs in several chunks.
        Conv {
            c: 64,
            h: 40,
            w: 40,
            o: 192,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            ph: 1,
            pw: 1,
        },
    ];
    for g in cases {
        let x = values(g.c * g.h * g.w, 4);
        let w = values(g.o * g.patch(), 5);
        let bias = values(g.o, 6);
        let want = naive_conv(&x, &w, &bias, &g);
        let packed = PackedA::new(Isa::best(), g.o, g.patch(), View::row_major(&w, g.patch()));
        for (relu, wv) in [
            (false, Weights::Plain(&w)),
            (true, Weights::Plain(&w)),
            (true, Weights::Packed(&packed)),
        ] {
            let mut out = vec![f32::NAN; g.o * g.positions()];
            let mut polls = 0;
            let done = g.forward(&x, wv, (&bias, relu), &mut out, Par::Seq, &mut || {
                polls += 1;
                false
            });
            assert!(done);
            assert_eq!(polls, g.positions().div_ceil(g.chunk()), "{g:?}");
            for (a, b) in out.iter().zip(&want) {
                let b = if relu { b.max(0.0) } else { *b };
                assert!(
                    (a - b).abs() <= 1e-4 * (g.patch() as f32).sqrt(),
                    "{g:?}: {a} vs {b}"
                );
            }
        }
    }
}

/// Every chunk is at most CHUNK_FLOPS of work (or one output position), and
/// a stop lands between chunks: the conv returns at once, the chunks after
/// it unwritten.
#[test]
fn conv_stops_between_chunks_of_bounded_work() {
    let g = Conv {
        c: 64,
        h: 40,
        w: 40,
        o: 192,
        kh: 3,
        kw: 3,
        sh: 1,
        sw: 1,
        ph: 1,
        pw: 1,
    };
    let chunk = g.chunk();
    assert!(2 * g.o * g.patch() * chunk <= mrbm_kernels::conv::CHUNK_FLOPS);
    let chunks = g.positions().div_ceil(chunk);
    assert!(chunks >= 3, "{chunks}");
    let x = values(g.c * g.h * g.w, 4);
    let w = values(g.o * g.patch(), 5);
    let bias = vec![0.0; g.o];
    let mut out = vec![f32::NAN; g.o * g.positions()];
    let mut polls = 0;
    let done = g.forward(
        &x,
        Weights::Plain(&w),
        (&bias, false),
        &mut out,
        Par::Seq,
        &mut || {
            polls += 1;
            polls == 3
        },
    );
    assert!(!done);
    assert_eq!(polls, 3);
    // Two chunks written, the rest untouched.
    for o in [0, g.o - 1] {
        let row = &out[o * g.positions()..][..g.positions()];
        assert!(row[..2 * chunk].iter().all(|v| v.is_finite()));
        assert!(row[2 * chunk..].iter().all(|v| v.is_nan()));
    }
}

/// A packed left operand gives the same product as packing as it goes, on
/// every ISA, including several depth and row blocks and partial tiles.
#[test]
fn packed_a_matches_sgemm() {
    for isa in isas() {
        for &(m, n, k) in &[(1, 1, 1), (15, 33, 9), (181, 70, 530), (29, 300, 257)] {
            let a = values(m * k, 7);
            let b = values(k * n, 8);
            let pa = PackedA::new(isa, m, k, View::row_major(&a, k));
            let c0 = values(m * n, 9);
            let (mut c1, mut c2) = (c0.clone(), c0.clone());
            sgemm_isa(
                (isa, Par::Seq),
                [m, n, k],
                0.5,
                View::row_major(&a, k),
                View::row_major(&b, n),
                0.25,
                ViewMut::row_major(&mut c1, n),
            );
            sgemm_packed(
                n,
                0.5,
                &pa,
                View::row_major(&b, n),
                0.25,
                ViewMut::row_major(&mut c2, n),
                Par::Rayon,
            );
            assert_eq!(c1, c2, "{isa:?} {m}x{n}x{k}");
        }
    }
}

/// A conv of one output channel: input C x H x W, kernel KH x KW, strides,
/// padding.
#[allow(clippy::too_many_arguments)]
fn geometry(
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
) -> Conv {
    Conv {
        c,
        h,
        w,
        o: 1,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
    }
}

/// Geometries for im2col / col2im: non-square kernels and strides,
/// padding wider than the kernel's reach, 1 x k, no padding.
fn patch_geometries() -> Vec<Conv> {
    let g = geometry;
    vec![
        g(2, 9, 7, 3, 5, 2, 2, 1, 2),
        g(3, 6, 8, 1, 7, 1, 1, 0, 3),
        g(1, 5, 5, 3, 3, 1, 1, 0, 0),
        g(2, 7, 7, 4, 4, 2, 2, 1, 1),
        g(2, 3, 3, 4, 4, 2, 2, 2, 2),
        g(3, 8, 6, 4, 3, 3, 2, 1, 0),
        g(2, 7, 10, 2, 3, 1, 3, 1, 1),
    ]
}

/// The input index of tap (ci, ky, kx) at output position p, when inside.
fn tap_source(g: &Conv, ci: usize, ky: usize, kx: usize, p: usize) -> Option<usize> {
    let (oy, ox) = (p / g.ow(), p % g.ow());
    let iy = (oy * g.sh + ky).checked_sub(g.ph)?;
    let ix = (ox * g.sw + kx).checked_sub(g.pw)?;
    (iy < g.h && ix < g.w).then(|| (ci * g.h + iy) * g.w + ix)
}

/// im2col of any run of positions (chunks starting mid-row), into rows
/// wider than the run, against the definition; the rest of each row is
/// left alone.
#[test]
fn im2col_of_any_position_range_matches_the_definition() {
    for g in patch_geometries() {
        let x = values(g.c * g.h * g.w, 3);
        let p = g.positions();
        for (p0, np) in [
            (0, p),
            (1, p - 1),
            (g.ow() - 1, 3.min(p - g.ow() + 1)),
            (p - 1, 1),
        ] {
            for ld in [np, np + 3] {
                let mut cols = vec![f32::NAN; g.patch() * ld];
                g.im2col_ld(&x, p0, np, &mut cols, ld);
                if ld == np {
                    let mut plain = vec![f32::NAN; g.patch() * np];
                    g.im2col(&x, p0, np, &mut plain);
                    assert_eq!(plain, cols);
                }
                for ci in 0..g.c {
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let row = (ci * g.kh + ky) * g.kw + kx;
                            for q in 0..np {
                                let want = tap_source(&g, ci, ky, kx, p0 + q).map_or(0.0, |i| x[i]);
                                assert_eq!(
                                    cols[row * ld + q],
                                    want,
                                    "{g:?} p0={p0} row={row} q={q}"
                                );
                            }
                            assert!(cols[row * ld + np..][..ld - np].iter().all(|v| v.is_nan()));
                        }
                    }
                }
            }
        }
    }
}

/// col2im is im2col's adjoint (<im2col(x), y> = <x, col2im(y)>), and so is
/// row2im of the position-major im2row (the same matrix transposed, bit for
/// bit); col2im adds a pixel's taps tap by tap, row2im position by
/// position: bit for bit those two loops.
#[test]
fn col2im_and_row2im_are_the_adjoints_and_sum_in_their_orders() {
    let mut orders_differ = false;
    // Also rows of more than 16 positions (col2im's vector path).
    let wide = [
        geometry(2, 40, 37, 4, 4, 2, 2, 1, 1),
        geometry(1, 9, 70, 3, 5, 1, 2, 0, 2),
    ];
    for g in patch_geometries().into_iter().chain(wide) {
        let (p, kk, n) = (g.positions(), g.patch(), g.c * g.h * g.w);
        let ld = p + 2;
        let x = values(n, 5);
        let y = values(kk * ld, 6);
        let mut cols = vec![0.0f32; kk * ld];
        g.im2col_ld(&x, 0, p, &mut cols, ld);
        let mut rows = vec![f32::NAN; p * kk];
        g.im2row(&x, &mut rows);
        let yt: Vec<f32> = (0..p * kk).map(|i| y[(i % kk) * ld + i / kk]).collect();
        for (i, v) in rows.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                cols[(i % kk) * ld + i / kk].to_bits(),
                "{g:?} im2row"
            );
        }
        let start = values(n, 7);
        let (mut by_tap, mut by_position) = (start.clone(), start.clone());
        g.col2im(&y, ld, &mut by_tap);
        g.row2im(&yt, &mut by_position);
        let mut value_by_value = start.clone();
        g.col2im_on(&y, ld, &mut value_by_value, false);
        let same = by_tap
            .iter()
            .zip(&value_by_value)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{g:?} col2im's two paths");
        let lhs: f64 = (0..kk)
            .flat_map(|r| (0..p).map(move |q| r * ld + q))
            .map(|i| cols[i] as f64 * y[i] as f64)
            .sum();
        for back in [&by_tap, &by_position] {
            let rhs: f64 = (0..n)
                .map(|i| x[i] as f64 * (back[i] - start[i]) as f64)
                .sum();
            assert!((lhs - rhs).abs() < 1e-3, "{g:?}: {lhs} vs {rhs}");
        }
        let (mut tap_major, mut position_major) = (start.clone(), start.clone());
        let taps = |ci| (0..g.kh).flat_map(move |ky| (0..g.kw).map(move |kx| (ci, ky, kx)));
        for (ci, ky, kx) in (0..g.c).flat_map(taps) {
            for q in 0..p {
                if let Some(i) = tap_source(&g, ci, ky, kx, q) {
                    tap_major[i] += y[((ci * g.kh + ky) * g.kw + kx) * ld + q];
                }
            }
        }
        for q in 0..p {
            for (ci, ky, kx) in (0..g.c).flat_map(taps) {
                if let Some(i) = tap_source(&g, ci, ky, kx, q) {
                    position_major[i] += y[((ci * g.kh + ky) * g.kw + kx) * ld + q];
                }
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&by_tap), bits(&tap_major), "{g:?} col2im");
        assert_eq!(bits(&by_position), bits(&position_major), "{g:?} row2im");
        orders_differ |= bits(&by_tap) != bits(&by_position);
    }
    assert!(orders_differ, "no geometry tells the two orders apart");
}

/// With a depth block given, every entry of C = A B is the sum the FMA
/// kernels promise: within each block a chain of fused multiply-adds from
/// zero in depth order, the blocks' sums added in order (the rounding of
/// gemm's f32 kernels at the same block, which the sampler relies on).
/// Checked bit for bit against that sum written out, at blocks that split
/// the depth evenly, unevenly and not at all.
#[test]
fn depth_block_fixes_the_rounding_of_every_entry() {
    for isa in isas().into_iter().filter(|&i| i != Isa::Portable) {
        for &(m, n, k, max_kc) in &[
            (37, 19, 784, 512),
            (500, 100, 784, 392),
            (29, 41, 500, 256),
            (20, 7, 300, 1000),
        ] {
            let a = values(m * k, 21);
            let b = values(k * n, 22);
            let pa = PackedA::with_depth_block(isa, m, k, View::row_major(&a, k), max_kc);
            let mut c = vec![f32::NAN; m * n];
            sgemm_packed(
                n,
                1.0,
                &pa,
                View::row_major(&b, n),
                0.0,
                ViewMut::row_major(&mut c, n),
                Par::Rayon,
            );
            let blocks = k.div_ceil(max_kc);
            let kc = k.div_ceil(blocks);
            for i in 0..m {
                for j in 0..n {
                    let mut total = 0.0f32;
                    for (bi, p0) in (0..k).step_by(kc).enumerate() {
                        let acc = (p0..(p0 + kc).min(k))
                            .fold(0.0f32, |acc, p| a[i * k + p].mul_add(b[p * n + j], acc));
                        total = if bi == 0 { acc } else { total + acc };
                    }
                    assert_eq!(
                        c[i * n + j].to_bits(),
                        total.to_bits(),
                        "{isa:?} {m}x{n}x{k} kc {max_kc} ({i}, {j})"
                    );
                }
            }
        }
    }
}

/// `count` images of `g` with a NaN, a -0 and an infinity among them (so a
/// copy that is not bit for bit shows), and their patch matrix by im2col,
/// [C*KH*KW, count * OH*OW], images side by side.
fn images_and_patches(g: &Conv, count: usize, seed: u32) -> (Vec<f32>, Vec<f32>) {
    let len = g.c * g.h * g.w;
    let mut x = values(count * len, seed);
    x[1] = f32::NAN;
    x[len / 2] = -0.0;
    x[count * len - 1] = f32::NEG_INFINITY;
    let (p, ld) = (g.positions(), count * g.positions());
    let mut cols = vec![0.0; g.patch() * ld];
    for i in 0..count {
        g.im2col_ld(&x[i * len..][..len], 0, p, &mut cols[i * p..], ld);
    }
    (x, cols)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Panels of the implicit patch matrix (images in two runs, a panel
/// crossing from one to the other, partial panels, both orientations, the
/// AVX-512 gathers and the scalar path) hold im2col's values bit for bit,
/// and leave the lanes past the panel's columns alone.
#[test]
fn implicit_patch_panels_are_im2col_bit_for_bit() {
    for g in patch_geometries() {
        let (count, len) = (5, g.c * g.h * g.w);
        let (x, cols) = images_and_patches(&g, count, 11);
        let (kk, ld) = (g.patch(), count * g.positions());
        // Two allocations, so that reading past the first run's end
        // cannot land on the second run by chance.
        let (first, second) = (x[..3 * len].to_vec(), x[3 * len..].to_vec());
        let runs: [&[f32]; 2] = [&first, &second];
        for transposed in [false, true] {
            let pt = Patches::new(g, &runs, transposed);
            let (k, n) = pt.shape();
            assert_eq!((k, n), if transposed { (ld, kk) } else { (kk, ld) });
            let at = |r: usize, c: usize| {
                if transposed {
                    cols[c * ld + r]
                } else {
                    cols[r * ld + c]
                }
            };
            for nr in [16, 32] {
                for (p0, kc) in [(0, k), (1, k - 1), (k / 2, k - k / 2), (k - 1, 1)] {
                    for (j0, width) in [
                        (0, n.min(nr)),
                        (n - n.min(nr), n.min(nr)),
                        (n / 3, 1),
                        (1, n.min(nr - 3).min(n - 1)),
                    ] {
                        for wide in [false, true] {
                            let mut dst = vec![f32::NAN; kc * nr];
                            pt.pack((p0, kc), j0, width, nr, wide, &mut dst);
                            for p in 0..kc {
                                for j in 0..nr {
                                    let got = dst[p * nr + j];
                                    if j < width {
                                        assert_eq!(
                                            got.to_bits(),
                                            at(p0 + p, j0 + j).to_bits(),
                                            "{g:?} t={transposed} wide={wide} p0={p0} j0={j0} p={p} j={j}"
                                        );
                                    } else {
                                        assert!(
                                            got.is_nan(),
                                            "{g:?} lane {j} past {width} written"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A product with the implicit patch matrix, either way round, gives the
/// bits of the same product on im2col's matrix, on every microkernel
/// family, with several depth blocks and both Par modes.
#[test]
fn sgemm_with_implicit_patches_gives_the_materialised_bits() {
    let g = geometry(20, 9, 8, 4, 4, 2, 2, 1, 1);
    let count = 37;
    let (x, cols) = images_and_patches(&g, count, 5);
    let (kk, ld) = (g.patch(), count * g.positions());
    let split = 20 * g.c * g.h * g.w;
    let (first, second) = (x[..split].to_vec(), x[split..].to_vec());
    let runs: [&[f32]; 2] = [&first, &second];
    let o = 19;
    let w = values(o * kk, 7);
    let h = values(o * ld, 8);
    // Forward: W [o, kk] * patches [kk, ld]; weight statistics:
    // H [o, ld] * patches^T [ld, kk].
    let cases = [
        (
            false,
            View::row_major(&w, kk),
            View::row_major(&cols, ld),
            1.5,
            0.5,
        ),
        (
            true,
            View::row_major(&h, ld),
            View::row_major(&cols, ld).t(),
            1.0,
            1.0,
        ),
    ];
    for isa in isas() {
        for par in [Par::Seq, Par::Rayon] {
            for (transposed, a, b, alpha, beta) in cases {
                let pt = Patches::new(g, &runs, transposed);
                let (k, n) = pt.shape();
                let mut want = vec![0.25; o * n];
                let mut got = want.clone();
                let c = ViewMut::row_major(&mut want, n);
                sgemm_isa((isa, par), [o, n, k], alpha, a, b, beta, c);
                let c = ViewMut::row_major(&mut got, n);
                sgemm_implicit((isa, par), o, alpha, a, &pt, beta, c);
                assert_eq!(
                    bits(&want),
                    bits(&got),
                    "{isa:?} {par:?} transposed={transposed}"
                );
            }
        }
    }
}
