//! The closed-form mean-field CD-1 step of one layer (`Rbm::cd_grads`)
//! entirely on the host, in f32 slices: up, down, up again, the loss and
//! the three gradients in one pass over the batch.
//!
//! Why: through burn the step built every intermediate as a fresh tensor,
//! ran im2col twice per image (once for each conv and again for the weight
//! gradient), and evaluated sigmoid and softplus with scalar libm calls.
//! Here a conv layer works on a few images at a time (a chunk, sized so the
//! matrix products have at least ~256 columns) with buffers that live for
//! the thread and are reused across steps:
//!
//! 1. X = W patches(data) (the hidden inputs, [O, n]), the patches gathered
//!    from the images as the product packs them (`conv::Patches`, never
//!    written out), then h = f(X + b) in place, summing A(X + b) for the
//!    loss (mrbm-kernels' `math`, vectorised);
//! 2. the down pass: W^T h and col2im, a few channels at a time (each
//!    block's W^T h still in cache for col2im), then v' = f_v(. + a);
//! 3. the same product of v''s patches into the second half of X, its
//!    hidden means h';
//! 4. one weight-gradient product [h, -h'] patches^T for both phases.
//!
//! Dense layers do the same with the whole batch as one matrix. The maths is
//! `Rbm::cd_grads`'s (tests/model.rs compares the two, and both against the
//! autodiff gradient); only the rounding differs.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::host_conv::{matmul, Geometry};
use mrbm_kernels::conv::{Conv, Patches};
use mrbm_kernels::math::{self as host_math, Act, Level};
use mrbm_kernels::{sgemm_implicit, Isa, Par, View, ViewMut};

/// What the step of one layer returns, as host values.
pub struct HostCd {
    /// Mean over the batch of F(v) - F(v').
    pub loss: f64,
    /// dL/dW in the layer's weight layout.
    pub gw: Vec<f32>,
    /// dL/da per visible channel.
    pub ga: Vec<f32>,
    /// dL/db per hidden channel.
    pub gb: Vec<f32>,
    /// Hidden means of the data, [B, hidden shape] row-major.
    pub hidden: Vec<f32>,
}

/// The two unit types of the layer, as activations. A visible `identity`
/// is the unit-variance Gaussian (its free energy term is (v - a)^2 / 2
/// instead of -a v).
#[derive(Debug, Clone, Copy)]
pub struct Units {
    pub visible: Act,
    pub hidden: Act,
}

/// The visible term of the free energy of one row (one channel plane, or
/// a dense row with one bias per element handled by the caller).
fn visible_term(units: &Units, row: &[f32], a: f32, row_sum: f64) -> f64 {
    if units.visible.identity {
        host_math::half_sq_dev(row, a)
    } else {
        -(a as f64) * row_sum
    }
}

/// A thread's buffers, grown as needed and kept across steps.
#[derive(Default)]
struct Workspace {
    /// The per-group weight-gradient partials (in PARTIALS only).
    partials: Vec<f32>,
    x: Vec<f32>,
    r: Vec<f32>,
    vrec: Vec<f32>,
}

fn grown(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

thread_local! {
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::default());
    /// The calling thread's per-group weight-gradient partials (conv) and
    /// stacked batches (dense).
    static PARTIALS: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// Per-group sums: the loss numerator and the bias gradients' sums.
struct Sums {
    loss: f64,
    ga: Vec<f64>,
    gb: Vec<f64>,
}

/// Taps per block of the down pass (r = W^T h then col2im, block by block):
/// a block's r of 256 taps x 256 positions is 256 KiB, in L2.
const DOWN_TAPS: usize = 256;

/// The CD-1 step of a conv layer: `v` [B, C, H, W], `w` [O, C, K, K].
pub fn conv_cd(v: &[f32], w: &[f32], a: &[f32], b: &[f32], g: &Geometry, units: Units) -> HostCd {
    let level = Level::detect();
    let (kk, p) = (g.c * g.k * g.k, g.oh * g.ow);
    let (img_v, img_h) = (g.c * g.h * g.w, g.o * p);
    let (chunk, per_group) = g.chunking(256);
    let groups = g.batch.div_ceil(per_group);
    let okk = g.o * kk;
    let conv = g.conv();
    let group = Group {
        w,
        a,
        b,
        g: &conv,
        units,
        chunk,
    };
    let mut hidden = vec![0.0f32; g.batch * img_h];
    let (sums, gw) = PARTIALS.with(|cell| {
        let mut ws = cell.borrow_mut();
        let partials = grown(&mut ws.partials, groups * okk);
        let sums: Vec<Sums> = hidden
            .par_chunks_mut(per_group * img_h)
            .zip(v.par_chunks(per_group * img_v))
            .zip(partials.par_chunks_mut(okk))
            .map(|((hout, vin), gw)| {
                WORKSPACE.with(|cell| {
                    let mut ws = cell.borrow_mut();
                    conv_group(&mut ws, level, vin, hout, gw, &group)
                })
            })
            .collect();
        let (first, rest) = partials.split_at_mut(okk);
        for part in rest.chunks(okk) {
            for (x, y) in first.iter_mut().zip(part) {
                *x += *y;
            }
        }
        let inv_b = 1.0 / g.batch as f32;
        let gw: Vec<f32> = first.iter().map(|x| -x * inv_b).collect();
        (sums, gw)
    });
    finish(sums, gw, hidden, g.batch, g.c, g.o)
}

fn finish(
    sums: Vec<Sums>,
    gw: Vec<f32>,
    hidden: Vec<f32>,
    batch: usize,
    c: usize,
    o: usize,
) -> HostCd {
    let inv_b = 1.0 / batch as f64;
    let mut loss = 0.0;
    let mut ga = vec![0.0f64; c];
    let mut gb = vec![0.0f64; o];
    for s in sums {
        loss += s.loss;
        for (x, y) in ga.iter_mut().zip(s.ga) {
            *x += y;
        }
        for (x, y) in gb.iter_mut().zip(s.gb) {
            *x += y;
        }
    }
    HostCd {
        loss: loss * inv_b,
        gw,
        ga: ga.iter().map(|x| (-x * inv_b) as f32).collect(),
        gb: gb.iter().map(|x| (-x * inv_b) as f32).collect(),
        hidden,
    }
}

/// What every group of images in [`conv_cd`] shares: the layer's
/// weights and biases, its geometry and units, and the images per chunk.
#[derive(Clone, Copy)]
struct Group<'a> {
    w: &'a [f32],
    a: &'a [f32],
    b: &'a [f32],
    g: &'a Conv,
    units: Units,
    chunk: usize,
}

/// The down pass of a chunk: `vrec` [nb, C, H, W] = col2im(W^T h) for the
/// hidden means `h` [O, nb * P]; a few channels' taps at a time, so that
/// col2im reads W^T h while it is in cache (each entry of W^T h is its own
/// sum, and each pixel gets its channel's taps in the same order: the same
/// bits as one product). `r` holds one block.
fn down(g: &Conv, w: &[f32], h: View, r: &mut [f32], vrec: &mut [f32]) {
    let (kk, p, hw) = (g.patch(), g.positions(), g.h * g.w);
    let img_v = g.c * hw;
    let nb = vrec.len() / img_v;
    let cp = nb * p;
    vrec.fill(0.0);
    let window = g.kh * g.kw;
    let per_block = (DOWN_TAPS / window).max(1);
    for c0 in (0..g.c).step_by(per_block) {
        let cn = per_block.min(g.c - c0);
        let taps = cn * window;
        let rm = ViewMut::row_major(&mut r[..taps * cp], cp);
        let wt = View::row_major(&w[c0 * window..], kk).t();
        matmul([taps, cp, g.o], wt, h, rm, false, Par::Seq);
        let sub = Conv { c: cn, ..*g };
        for i in 0..nb {
            let img = &mut vrec[i * img_v + c0 * hw..][..cn * hw];
            sub.col2im(&r[i * p..], cp, img);
        }
    }
}

/// On this thread: C = A patches(runs) (overwritten), or with `transposed`
/// C += A patches(runs)^T (the weight statistics, summed over chunks).
fn patch_product(g: &Conv, a: View, runs: &[&[f32]], transposed: bool, c: ViewMut) {
    let patches = Patches::new(*g, runs, transposed);
    let beta = if transposed { 1.0 } else { 0.0 };
    let m = g.o;
    sgemm_implicit((Isa::best(), Par::Seq), m, 1.0, a, &patches, beta, c);
}

/// One thread's images `vin` (whole chunks): writes their hidden means to
/// `hout` and the sum of [h, -h'] patches^T to `gw`.
fn conv_group(
    ws: &mut Workspace,
    level: Level,
    vin: &[f32],
    hout: &mut [f32],
    gw: &mut [f32],
    group: &Group,
) -> Sums {
    let Group {
        w,
        a,
        b,
        g,
        units,
        chunk,
    } = *group;
    let (kk, p, hw) = (g.patch(), g.positions(), g.h * g.w);
    let (img_v, img_h) = (g.c * hw, g.o * p);
    let n_imgs = vin.len() / img_v;
    let mut s = Sums {
        loss: 0.0,
        ga: vec![0.0; g.c],
        gb: vec![0.0; g.o],
    };
    gw.fill(0.0);
    for start in (0..n_imgs).step_by(chunk) {
        let nb = chunk.min(n_imgs - start);
        let cp = nb * p;
        let ld = 2 * cp;
        let x = grown(&mut ws.x, g.o * ld);
        let r = grown(&mut ws.r, kk.min(DOWN_TAPS.max(g.kh * g.kw)) * cp);
        let vrec = grown(&mut ws.vrec, nb * img_v);
        let imgs = &vin[start * img_v..][..nb * img_v];
        // Data: hidden inputs (the patches gathered as the product packs
        // them), hidden means, visible statistics.
        let wv = View::row_major(w, kk);
        patch_product(g, wv, &[imgs], false, ViewMut::row_major(x, ld));
        for oi in 0..g.o {
            let (sh, sa) =
                host_math::act_row(level, &mut x[oi * ld..][..cp], b[oi], units.hidden, true);
            s.gb[oi] += sh;
            s.loss -= sa;
        }
        for img in imgs.chunks(img_v) {
            for (ci, row) in img.chunks(hw).enumerate() {
                let sv = host_math::sum(row);
                s.ga[ci] += sv;
                s.loss += visible_term(&units, row, a[ci], sv);
            }
        }
        // Down: W^T h, col2im, visible means.
        down(g, w, View::row_major(x, ld), r, vrec);
        for img in vrec.chunks_mut(img_v) {
            for (ci, row) in img.chunks_mut(hw).enumerate() {
                let (sv, _) = host_math::act_row(level, row, a[ci], units.visible, false);
                s.ga[ci] -= sv;
                s.loss -= visible_term(&units, row, a[ci], sv);
            }
        }
        // Reconstruction: hidden means into the second half.
        patch_product(g, wv, &[vrec], false, ViewMut::row_major(&mut x[cp..], ld));
        for oi in 0..g.o {
            let row = &mut x[oi * ld + cp..][..cp];
            let (sh, sa) = host_math::act_row(level, row, b[oi], units.hidden, true);
            s.gb[oi] -= sh;
            s.loss += sa;
            for y in row.iter_mut() {
                *y = -*y;
            }
        }
        // Hidden means out, [O, P] per image.
        for i in 0..nb {
            let out = &mut hout[(start + i) * img_h..][..img_h];
            for oi in 0..g.o {
                out[oi * p..][..p].copy_from_slice(&x[oi * ld + i * p..][..p]);
            }
        }
        // Both phases' weight statistics in one product: the data's
        // positions, then the reconstruction's, as its depth.
        let (hv, gwm) = (View::row_major(x, ld), ViewMut::row_major(gw, kk));
        patch_product(g, hv, &[imgs, vrec], true, gwm);
    }
    s
}

/// The CD-1 step of a dense layer: `v` [B, V], `w` [V, H].
pub fn dense_cd(
    v: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    [batch, nv, nh]: [usize; 3],
    units: Units,
) -> HostCd {
    let level = Level::detect();
    PARTIALS.with(|cell| {
        let mut ws = cell.borrow_mut();
        let ws = &mut *ws;
        let v2 = grown(&mut ws.vrec, 2 * batch * nv);
        let x2 = grown(&mut ws.x, 2 * batch * nh);
        v2[..batch * nv].copy_from_slice(v);
        let mut loss = 0.0f64;
        let mut ga = vec![0.0f64; nv];
        let mut gb = vec![0.0f64; nh];
        // Data.
        let (vd, vr) = v2.split_at_mut(batch * nv);
        let (xd, xr) = x2.split_at_mut(batch * nh);
        let (wv, par) = (View::row_major(w, nh), Par::Rayon);
        let vdv = View::row_major(vd, nv);
        let xdm = ViewMut::row_major(xd, nh);
        matmul([batch, nh, nv], vdv, wv, xdm, false, par);
        loss -= act_rows(level, (xd, nh), b, units.hidden, true, &mut gb, 1.0);
        for row in vd.chunks(nv) {
            loss += visible_row_term(&units, row, a, &mut ga, 1.0);
        }
        // Down: v' = f_v(h W^T + a).
        let xdv = View::row_major(xd, nh);
        let vrm = ViewMut::row_major(vr, nv);
        matmul([batch, nv, nh], xdv, wv.t(), vrm, false, par);
        act_rows(
            level,
            (vr, nv),
            a,
            units.visible,
            false,
            &mut vec![0.0; nv],
            1.0,
        );
        for row in vr.chunks(nv) {
            loss -= visible_row_term(&units, row, a, &mut ga, -1.0);
        }
        // Reconstruction.
        let vrv = View::row_major(vr, nv);
        let xrm = ViewMut::row_major(xr, nh);
        matmul([batch, nh, nv], vrv, wv, xrm, false, par);
        loss += act_rows(level, (xr, nh), b, units.hidden, true, &mut gb, -1.0);
        for y in xr.iter_mut() {
            *y = -*y;
        }
        // [v; v']^T [h; -h'].
        let mut gw = vec![0.0f32; nv * nh];
        let (v2t, x2v) = (View::row_major(v2, nv).t(), View::row_major(x2, nh));
        let gwv = ViewMut::row_major(&mut gw, nh);
        matmul([nv, nh, 2 * batch], v2t, x2v, gwv, false, par);
        let inv_b = 1.0 / batch as f32;
        for x in gw.iter_mut() {
            *x *= -inv_b;
        }
        let inv = 1.0 / batch as f64;
        HostCd {
            loss: loss * inv,
            gw,
            ga: ga.iter().map(|x| (-x * inv) as f32).collect(),
            gb: gb.iter().map(|x| (-x * inv) as f32).collect(),
            hidden: x2[..batch * nh].to_vec(),
        }
    })
}

/// f(x + bias) on every row of `m` (rows of `n`, one bias per column), in
/// parallel; adds `sign` times the column sums of f to `col_sums`; returns
/// the sum of A.
fn act_rows(
    level: Level,
    (m, n): (&mut [f32], usize),
    bias: &[f32],
    act: Act,
    with_a: bool,
    col_sums: &mut [f64],
    sign: f64,
) -> f64 {
    let sa: f64 = m
        .par_chunks_mut(n)
        .map(|row| host_math::act_row_biases(level, row, bias, act, with_a).1)
        .sum();
    for row in m.chunks(n) {
        for (c, &y) in col_sums.iter_mut().zip(row) {
            *c += sign * y as f64;
        }
    }
    sa
}

/// The visible free-energy term of a dense row (one bias per unit), adding
/// `sign` times the row to `col_sums`.
fn visible_row_term(units: &Units, row: &[f32], a: &[f32], col_sums: &mut [f64], sign: f64) -> f64 {
    let mut t = 0.0f64;
    for ((c, &y), &ai) in col_sums.iter_mut().zip(row).zip(a) {
        *c += sign * y as f64;
        t += if units.visible.identity {
            let d = (y - ai) as f64;
            0.5 * d * d
        } else {
            -(ai as f64) * y as f64
        };
    }
    t
}
