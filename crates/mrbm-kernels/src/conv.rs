//! A convolution of one NCHW image as im2col + [`sgemm`](crate::sgemm),
//! in chunks of output positions: the patch matrix of a chunk stays small
//! (cache-sized, not the whole image's), and the caller can stop between
//! chunks (each is a bounded amount of work, [`Conv::chunk`]). The patch
//! matrix ([`Conv::im2col_ld`], position-major [`Conv::im2row`]) and its
//! adjoints ([`Conv::col2im`], [`Conv::row2im`]) are also what mrbm-core's
//! host CD-1 step and host convolutions build on.

use crate::{sgemm, sgemm_packed, with_buffer, PackedA, Par, View, ViewMut};

/// A conv's weights [O, C*KH*KW]: row-major, or packed once for sgemm.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    Plain(&'a [f32]),
    Packed(&'a PackedA),
}

/// One image's conv geometry: input [C, H, W], kernel KH x KW, strides,
/// zero padding; output [O, OH, OW].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
}

/// Most multiply-adds (x2 flops) one chunk may hold: 2^25 multiply-adds is
/// ~1 ms on one Zen 4 core at full speed, ~20 ms at the slowest fallback.
pub const CHUNK_FLOPS: usize = 1 << 26;
/// Most patch-matrix elements one chunk may hold (4 MiB of f32).
pub const CHUNK_COLS: usize = 1 << 20;

impl Conv {
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.ph - self.kh) / self.sh + 1
    }
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pw - self.kw) / self.sw + 1
    }
    /// Output positions OH * OW.
    pub fn positions(&self) -> usize {
        self.oh() * self.ow()
    }
    /// Patch length C * KH * KW (the product's inner dimension).
    pub fn patch(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Whether the patch matrix is the input itself (1x1, stride 1, no pad).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
    /// Output positions per chunk: at most [`CHUNK_FLOPS`] flops and
    /// [`CHUNK_COLS`] patch elements, a multiple of 32 (a whole number of
    /// register tiles) unless the image has fewer positions; at least one.
    pub fn chunk(&self) -> usize {
        let per_position = (2 * self.o * self.patch()).max(1);
        let by_flops = CHUNK_FLOPS / per_position;
        let by_cols = if self.is_pointwise() {
            usize::MAX
        } else {
            CHUNK_COLS / self.patch().max(1)
        };
        let np = by_flops.min(by_cols);
        let np = if np >= 32 { np / 32 * 32 } else { np.max(1) };
        np.min(self.positions()).max(1)
    }

    /// cols[(ci, ky, kx), q] = x[ci, oy*SH - PH + ky, ox*SW - PW + kx] (0
    /// outside) for the output positions p = p0 + q, q < np, p = oy*OW + ox:
    /// row-major [C*KH*KW, np].
    pub fn im2col(&self, x: &[f32], p0: usize, np: usize, cols: &mut [f32]) {
        self.im2col_ld(x, p0, np, cols, np)
    }

    /// [`Self::im2col`] with rows `ld` apart (`ld >= np`): row (ci, ky, kx)
    /// is `cols[r * ld..][..np]`, the rest of each row untouched (so several
    /// images' patches can sit side by side in one matrix).
    pub fn im2col_ld(&self, x: &[f32], p0: usize, np: usize, cols: &mut [f32], ld: usize) {
        let (oh, ow) = (self.oh(), self.ow());
        assert!(x.len() >= self.c * self.h * self.w, "im2col: x too short");
        assert!(p0 + np <= oh * ow, "im2col: positions out of range");
        assert!(
            np <= ld && cols.len() >= span(self.patch(), np, ld),
            "im2col: cols too short"
        );
        let inside = self.inside_columns();
        let (oy0, ox00) = (p0 / ow, p0 % ow);
        let mut row = 0;
        for ci in 0..self.c {
            let plane = &x[ci * self.h * self.w..][..self.h * self.w];
            for ky in 0..self.kh {
                for (kx, &(lo, hi)) in inside.iter().enumerate() {
                    let dst = &mut cols[row * ld..][..np];
                    row += 1;
                    if p0 == 0 && np == oh * ow && ow > 0 {
                        // The whole image: one output row at a time. Where
                        // this tap reaches into the padding, the row is
                        // zeroed once first (a padding run is one or two
                        // floats a row, and a memset call for each cost
                        // more than the copies).
                        let padded =
                            lo > 0 || hi < ow || (0..oh).any(|oy| self.input_row(oy, ky).is_none());
                        if padded {
                            dst.fill(0.0);
                        }
                        for (oy, seg) in dst.chunks_exact_mut(ow).enumerate() {
                            let Some(iy) = self.input_row(oy, ky) else {
                                continue;
                            };
                            let src = &plane[iy * self.w..][..self.w];
                            if hi > lo {
                                let first = lo * self.sw + kx - self.pw;
                                if self.sw == 1 {
                                    // A plain copy (step_by does not become one).
                                    seg[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                                    continue;
                                }
                                let from = &src[first..];
                                for (d, s) in
                                    seg[lo..hi].iter_mut().zip(from.iter().step_by(self.sw))
                                {
                                    *d = *s;
                                }
                            }
                        }
                        continue;
                    }
                    // One output row (or the part of it in range) at a time.
                    let (mut q, mut oy, mut ox0) = (0, oy0, ox00);
                    while q < np {
                        let len = (ow - ox0).min(np - q);
                        let seg = &mut dst[q..q + len];
                        q += len;
                        let row_oy = oy;
                        oy += 1;
                        let start = std::mem::take(&mut ox0);
                        let Some(iy) = self.input_row(row_oy, ky) else {
                            seg.fill(0.0);
                            continue;
                        };
                        // Valid columns of this segment, relative to it.
                        let a = lo.clamp(start, start + len) - start;
                        let b = hi.clamp(start, start + len).max(a + start) - start;
                        seg[..a].fill(0.0);
                        seg[b..].fill(0.0);
                        if b == a {
                            continue;
                        }
                        let src = &plane[iy * self.w..][..self.w];
                        let first = (start + a) * self.sw + kx - self.pw;
                        if self.sw == 1 {
                            seg[a..b].copy_from_slice(&src[first..first + b - a]);
                        } else {
                            let from = src[first..].iter().step_by(self.sw);
                            for (d, s) in seg[a..b].iter_mut().zip(from) {
                                *d = *s;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Self::im2col_ld`] over all positions: adds
    /// cols[(ci, ky, kx), p] (rows `ld` apart) onto its pixel of x [C, H, W],
    /// tap by tap: a pixel receives its taps (ky, kx) in ascending order
    /// ([`Self::row2im`] adds the same values position by position).
    pub fn col2im(&self, cols: &[f32], ld: usize, x: &mut [f32]) {
        let (p, ow) = (self.positions(), self.ow());
        assert!(x.len() >= self.c * self.h * self.w, "col2im: x too short");
        assert!(
            p <= ld && cols.len() >= span(self.patch(), p, ld),
            "col2im: cols too short"
        );
        if p == 0 {
            return;
        }
        let inside = self.inside_columns();
        for ci in 0..self.c {
            let plane = &mut x[ci * self.h * self.w..][..self.h * self.w];
            for ky in 0..self.kh {
                for (kx, &(lo, hi)) in inside.iter().enumerate() {
                    let r = (ci * self.kh + ky) * self.kw + kx;
                    let src = &cols[r * ld..][..p];
                    if hi == lo {
                        continue;
                    }
                    for (oy, seg) in src.chunks_exact(ow).enumerate() {
                        let Some(iy) = self.input_row(oy, ky) else {
                            continue;
                        };
                        let dst = &mut plane[iy * self.w..][..self.w];
                        let to = &mut dst[lo * self.sw + kx - self.pw..];
                        if self.sw == 1 {
                            // Contiguous: a loop that vectorises (step_by's does not).
                            for (d, s) in to[..hi - lo].iter_mut().zip(&seg[lo..hi]) {
                                *d += *s;
                            }
                            continue;
                        }
                        for (d, s) in to.iter_mut().step_by(self.sw).zip(&seg[lo..hi]) {
                            *d += *s;
                        }
                    }
                }
            }
        }
    }

    /// The patch matrix transposed, position-major: rows[p, (ci, ky, kx)]
    /// = x[ci, oy*SH - PH + ky, ox*SW - PW + kx] (0 outside) for every
    /// output position p = oy*OW + ox, row-major [OH*OW, C*KH*KW]. As the
    /// left operand of a product it keeps the positions as the tiles' rows,
    /// which suits small images (few positions, many taps).
    pub fn im2row(&self, x: &[f32], rows: &mut [f32]) {
        let kk = self.check_rows("im2row", x.len(), rows.len());
        for ((oy, ox), row) in self.output_grid().zip(rows.chunks_exact_mut(kk)) {
            row.fill(0.0);
            self.taps(oy, ox, |j, i| row[j] = x[i]);
        }
    }

    /// The adjoint of [`Self::im2row`]: adds each position's patch back
    /// onto x [C, H, W], position by position (a pixel receives its taps in
    /// descending (ky, kx) order, the reverse of [`Self::col2im`]'s).
    pub fn row2im(&self, rows: &[f32], x: &mut [f32]) {
        let kk = self.check_rows("row2im", x.len(), rows.len());
        for ((oy, ox), row) in self.output_grid().zip(rows.chunks_exact(kk)) {
            self.taps(oy, ox, |j, i| x[i] += row[j]);
        }
    }

    /// Panics unless an image of `x` values and a position-major patch
    /// matrix of `rows` values fit this geometry; returns the patch length.
    fn check_rows(&self, what: &str, x: usize, rows: usize) -> usize {
        let kk = self.patch();
        assert!(x >= self.c * self.h * self.w, "{what}: x too short");
        assert!(
            rows == self.positions() * kk,
            "{what}: rows not [OH*OW, C*KH*KW]"
        );
        kk
    }

    /// The output positions (oy, ox) in order.
    fn output_grid(&self) -> impl Iterator<Item = (usize, usize)> {
        let ow = self.ow();
        (0..self.oh()).flat_map(move |oy| (0..ow).map(move |ox| (oy, ox)))
    }

    /// `f(j, pixel)` for the taps j = (ci, ky, kx) of output position
    /// (oy, ox) that read inside the image, in order, with the index of
    /// that pixel in [C, H, W] (the others read the zero padding).
    #[inline(always)]
    fn taps(&self, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
        let (h, w) = (self.h as isize, self.w as isize);
        let mut j = 0;
        for ci in 0..self.c {
            for ky in 0..self.kh {
                let iy = (oy * self.sh + ky) as isize - self.ph as isize;
                for kx in 0..self.kw {
                    let ix = (ox * self.sw + kx) as isize - self.pw as isize;
                    if iy >= 0 && iy < h && ix >= 0 && ix < w {
                        f(j, (ci * self.h + iy as usize) * self.w + ix as usize);
                    }
                    j += 1;
                }
            }
        }
    }

    /// The input row that output row `oy` reads at kernel row `ky`, when
    /// it is inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.sh + ky)
            .checked_sub(self.ph)
            .filter(|&iy| iy < self.h)
    }

    /// For each kernel column kx, the output columns [lo, hi) whose input
    /// column ox*SW + kx - PW is inside [0, W).
    fn inside_columns(&self) -> Vec<(usize, usize)> {
        let ow = self.ow();
        (0..self.kw)
            .map(|kx| {
                let lo = self.pw.saturating_sub(kx).div_ceil(self.sw);
                let hi = (self.w + self.pw)
                    .saturating_sub(kx)
                    .div_ceil(self.sw)
                    .min(ow);
                (lo.min(hi), hi)
            })
            .collect()
    }

    /// out [O, OH*OW] = w [O, C*KH*KW] * patches(x) + bias, then max(0, .)
    /// when `relu`; chunk by chunk of [`Self::chunk`] positions, asking
    /// `stop` before each one. Returns false (out partly written) when it
    /// said stop.
    pub fn forward(
        &self,
        x: &[f32],
        w: Weights,
        (bias, relu): (&[f32], bool),
        out: &mut [f32],
        par: Par,
        stop: &mut dyn FnMut() -> bool,
    ) -> bool {
        let (p, kk, o) = (self.positions(), self.patch(), self.o);
        match w {
            Weights::Plain(w) => assert!(w.len() >= o * kk, "conv: weights too short"),
            Weights::Packed(w) => assert!(
                (w.rows(), w.cols()) == (o, kk),
                "conv: packed weights are {}x{}, not {o}x{kk}",
                w.rows(),
                w.cols()
            ),
        }
        let gemm = |np: usize, b: View, dst: ViewMut| match w {
            Weights::Plain(w) => sgemm([o, np, kk], 1.0, View::row_major(w, kk), b, 0.0, dst, par),
            Weights::Packed(w) => sgemm_packed(np, 1.0, w, b, 0.0, dst, par),
        };
        assert!(bias.len() >= o, "conv: bias too short");
        assert!(out.len() >= o * p, "conv: out too short");
        let chunk = self.chunk();
        let mut p0 = 0;
        while p0 < p {
            if stop() {
                return false;
            }
            let np = chunk.min(p - p0);
            let dst = ViewMut {
                data: &mut out[p0..],
                rs: p,
                cs: 1,
            };
            if self.is_pointwise() {
                let b = View {
                    data: &x[p0..],
                    rs: p,
                    cs: 1,
                };
                gemm(np, b, dst);
            } else {
                with_buffer(&COLS, kk * np, |cols| {
                    self.im2col(x, p0, np, cols);
                    let b = View::row_major(cols, np);
                    gemm(np, b, dst);
                });
            }
            for (oc, b) in bias.iter().enumerate().take(o) {
                let seg = &mut out[oc * p + p0..][..np];
                if relu {
                    seg.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
                } else {
                    seg.iter_mut().for_each(|v| *v += b);
                }
            }
            p0 += np;
        }
        true
    }
}

/// Elements a `rows` x `cols` matrix with rows `ld` apart spans.
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

thread_local! {
    static COLS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}
