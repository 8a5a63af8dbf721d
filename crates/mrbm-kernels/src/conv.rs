//! A convolution of one NCHW image as im2col + [`sgemm`](crate::sgemm),
//! in chunks of output positions: the patch matrix of a chunk stays small
//! (cache-sized, not the whole image's), and the caller can stop between
//! chunks (each is a bounded amount of work, [`Conv::chunk`]). The patch
//! matrix ([`Conv::im2col_ld`], position-major [`Conv::im2row`]) and its
//! adjoints ([`Conv::col2im`], [`Conv::row2im`]) are also what mrbm-core's
//! host CD-1 step and host convolutions build on.

use crate::{sgemm, sgemm_packed, with_buffer, ImplicitB, PackedA, Par, View, ViewMut};

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
        #[cfg(target_arch = "x86_64")]
        let wide = is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let wide = false;
        self.col2im_on(cols, ld, x, wide)
    }

    /// [`Self::col2im`], with stride-2 rows added by AVX-512 when `wide`
    /// (and the CPU has it), else value by value: the same bits (a test
    /// compares the two).
    pub fn col2im_on(&self, cols: &[f32], ld: usize, x: &mut [f32], wide: bool) {
        #[cfg(target_arch = "x86_64")]
        let wide = wide && self.sw == 2 && is_x86_feature_detected!("avx512f");
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
        #[cfg(target_arch = "x86_64")]
        if wide && ow <= 16 && self.kw <= 16 {
            // Safety: AVX-512F checked; the asserts above bound x and cols.
            unsafe { avx512::col2im_narrow_stride2(self, cols, ld, x, &inside) };
            return;
        }
        for ci in 0..self.c {
            let plane = &mut x[ci * self.h * self.w..][..self.h * self.w];
            for ky in 0..self.kh {
                for (kx, &(lo, hi)) in inside.iter().enumerate() {
                    let r = (ci * self.kh + ky) * self.kw + kx;
                    let src = &cols[r * ld..][..p];
                    if hi == lo {
                        continue;
                    }
                    #[cfg(target_arch = "x86_64")]
                    if wide {
                        // Safety: AVX-512F checked.
                        unsafe {
                            avx512::add_tap_stride2(self, src, plane, (ky, kx), (lo, hi), ow)
                        };
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

/// The patch matrix of runs of whole images as an [`ImplicitB`]: each
/// panel is gathered straight from the images, so the matrix is never
/// written out (im2col's writes and the packing's reads of them were a
/// sixth of the generation stack's training step). Columns, or with
/// `transposed` rows, are the output positions of the first run's images,
/// then the next run's; the other dimension is the taps (ci, ky, kx), as
/// in [`Conv::im2col`]. The values are im2col's bit for bit, so a product
/// with it gives sgemm's bits on that matrix.
pub struct Patches<'a> {
    conv: Conv,
    runs: &'a [&'a [f32]],
    transposed: bool,
    /// Images over all runs.
    images: usize,
}

/// One output position: the run and the offset in it of its image, and
/// the top-left input pixel of its window (may be in the padding).
#[derive(Clone, Copy)]
struct Window {
    run: usize,
    at: usize,
    iy0: isize,
    ix0: isize,
}

impl<'a> Patches<'a> {
    /// The patches of `runs` (each a whole number of [C, H, W] images).
    /// Panics when a run is not.
    pub fn new(conv: Conv, runs: &'a [&'a [f32]], transposed: bool) -> Self {
        let len = conv.c * conv.h * conv.w;
        assert!(len > 0, "patches: empty images");
        let mut images = 0;
        for r in runs {
            assert!(r.len().is_multiple_of(len), "patches: a run of part images");
            images += r.len() / len;
        }
        Patches {
            conv,
            runs,
            transposed,
            images,
        }
    }

    /// The window of output position `q` (over all runs).
    fn window(&self, q: usize) -> Window {
        let g = &self.conv;
        let (p, len) = (g.positions(), g.c * g.h * g.w);
        let (mut img, pos) = (q / p, q % p);
        let mut run = 0;
        while img * len >= self.runs[run].len() {
            img -= self.runs[run].len() / len;
            run += 1;
        }
        let (oy, ox) = (pos / g.ow(), pos % g.ow());
        Window {
            run,
            at: img * len,
            iy0: (oy * g.sh) as isize - g.ph as isize,
            ix0: (ox * g.sw) as isize - g.pw as isize,
        }
    }

    /// Tap t = (ci, ky, kx): its offset in an image from a window's corner,
    /// and (ky, kx).
    fn tap(&self, t: usize) -> (isize, isize, isize) {
        let g = &self.conv;
        let (ci, ky, kx) = (t / (g.kh * g.kw), t / g.kw % g.kh, t % g.kw);
        let (ky, kx) = (ky as isize, kx as isize);
        (((ci * g.h) as isize + ky) * g.w as isize + kx, ky, kx)
    }

    /// The value of tap `t` at window `w`: the pixel, or 0 in the padding.
    ///
    /// Safety: `w` from [`Self::window`].
    unsafe fn value(&self, w: Window, t: usize) -> f32 {
        let (off, ky, kx) = self.tap(t);
        let (iy, ix) = (w.iy0 + ky, w.ix0 + kx);
        if iy < 0 || ix < 0 || iy >= self.conv.h as isize || ix >= self.conv.w as isize {
            return 0.0;
        }
        let pixel = off + w.iy0 * self.conv.w as isize + w.ix0;
        *self.runs[w.run].get_unchecked(w.at + pixel as usize)
    }
}

impl ImplicitB for Patches<'_> {
    fn shape(&self) -> (usize, usize) {
        let (taps, positions) = (self.conv.patch(), self.images * self.conv.positions());
        if self.transposed {
            (positions, taps)
        } else {
            (taps, positions)
        }
    }

    fn pack(
        &self,
        (p0, kc): (usize, usize),
        j0: usize,
        cols: usize,
        nr: usize,
        wide: bool,
        dst: &mut [f32],
    ) {
        let (k, n) = self.shape();
        assert!(
            p0 + kc <= k && j0 + cols <= n && cols <= nr,
            "patches: panel out of range"
        );
        assert!(dst.len() >= kc * nr, "patches: panel buffer too short");
        #[cfg(target_arch = "x86_64")]
        if wide && nr.is_multiple_of(16) && is_x86_feature_detected!("avx512f") {
            // Safety: AVX-512F checked; windows and taps are in range.
            unsafe {
                let sixteen = if self.transposed {
                    avx512::taps_by_position
                } else {
                    avx512::positions_by_tap
                };
                for g in (0..cols).step_by(16) {
                    let lanes = (cols - g).min(16);
                    sixteen(self, (p0, kc), j0 + g, lanes, &mut dst[g..], nr);
                }
            }
            return;
        }
        // AVX-512 is x86-64's only.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = wide;
        // Safety: windows from `window`, taps below the patch length.
        unsafe {
            if self.transposed {
                for p in 0..kc {
                    let w = self.window(p0 + p);
                    for j in 0..cols {
                        dst[p * nr + j] = self.value(w, j0 + j);
                    }
                }
            } else {
                for j in 0..cols {
                    let w = self.window(j0 + j);
                    for p in 0..kc {
                        dst[p * nr + j] = self.value(w, p0 + p);
                    }
                }
            }
        }
    }
}

/// This module's AVX-512 code: the packing behind [`Patches`], by masked
/// loads of runs of consecutive pixels (masked-off lanes read nothing and
/// give 0, so padding costs no branch per value; the hardware gather
/// instruction, one lane at a time, took as long as im2col and the packing
/// together), and [`Conv::col2im`]'s stride-2 rows.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Conv, Patches, Window};
    use std::arch::x86_64::*;

    /// Bitwise or (AVX-512F's integer one: the float one needs AVX512DQ).
    #[inline(always)]
    unsafe fn or(a: __m512, b: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_castps_si512(a),
            _mm512_castps_si512(b),
        ))
    }

    /// [`Conv::col2im`] of a stride-2 conv whose output rows are at most
    /// 16 wide (KW <= 16): an input row's 48-value window is loaded once
    /// per (ci, ky, output row), every kx added to it in registers, in
    /// ascending kx (each pixel gets its taps in col2im's order), and
    /// stored once. Adding tap by tap instead re-read each row a few
    /// stores after writing it, shifted by one value, which the CPU could
    /// not forward from its store queue (a stall every row).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn col2im_narrow_stride2(
        g: &Conv,
        cols: &[f32],
        ld: usize,
        x: &mut [f32],
        inside: &[(usize, usize)],
    ) {
        let (ow, w, pw) = (g.ow(), g.w as isize, g.pw as isize);
        debug_assert!(g.sw == 2 && ow <= 16 && g.kw <= 16);
        // The window starts at input column -PW (output column 0's kx = 0);
        // lane l of its vector v is column 16 v + l - PW. Tap kx of output
        // column i lands on lane 2 i + kx: per (kx, v), which value of the
        // row each lane takes and whether it takes one.
        let mut take = [[(_mm512_setzero_si512(), 0u16); 3]; 16];
        for (kx, &(lo, hi)) in inside.iter().enumerate() {
            for (v, t) in take[kx].iter_mut().enumerate() {
                let (mut idx, mut mask) = ([0i32; 16], 0u16);
                for (l, slot) in idx.iter_mut().enumerate() {
                    let q = (16 * v + l) as isize - kx as isize;
                    if q >= 0 && q % 2 == 0 && (q / 2) as usize >= lo && ((q / 2) as usize) < hi {
                        *slot = (q / 2) as i32;
                        mask |= 1 << l;
                    }
                }
                *t = (_mm512_loadu_si512(idx.as_ptr().cast()), mask);
            }
        }
        // The window's lanes inside the row [0, W).
        let row_lanes: [u16; 3] = std::array::from_fn(|v| {
            let first = 16 * v as isize - pw;
            lanes(-first, w - first) as u16
        });
        let src_lanes = lanes(0, ow as isize) as u16;
        let (hw, kwin) = (g.h * g.w, g.kh * g.kw);
        for ci in 0..g.c {
            let plane = x.as_mut_ptr().add(ci * hw);
            for ky in 0..g.kh {
                let taps = cols.as_ptr().add((ci * kwin + ky * g.kw) * ld);
                for oy in 0..g.oh() {
                    let Some(iy) = g.input_row(oy, ky) else {
                        continue;
                    };
                    let row = plane.add(iy * g.w).wrapping_offset(-pw);
                    let mut win = [_mm512_setzero_ps(); 3];
                    for (v, acc) in win.iter_mut().enumerate() {
                        *acc = _mm512_maskz_loadu_ps(row_lanes[v], row.wrapping_add(16 * v));
                    }
                    for (kx, t) in take.iter().enumerate().take(g.kw) {
                        let s = _mm512_maskz_loadu_ps(src_lanes, taps.add(kx * ld + oy * ow));
                        for (acc, &(idx, mask)) in win.iter_mut().zip(t) {
                            *acc =
                                _mm512_mask_add_ps(*acc, mask, *acc, _mm512_permutexvar_ps(idx, s));
                        }
                    }
                    for (v, acc) in win.iter().enumerate() {
                        _mm512_mask_storeu_ps(row.wrapping_add(16 * v), row_lanes[v], *acc);
                    }
                }
            }
        }
    }

    /// [`Conv::col2im`]'s loop over output rows for one tap (ky, kx) of a
    /// stride-2 conv: `src` is the tap's row of the patch matrix, `plane`
    /// its channel, lo..hi the output columns inside the image.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn add_tap_stride2(
        g: &Conv,
        src: &[f32],
        plane: &mut [f32],
        (ky, kx): (usize, usize),
        (lo, hi): (usize, usize),
        ow: usize,
    ) {
        for (oy, seg) in src.chunks_exact(ow).enumerate() {
            let Some(iy) = g.input_row(oy, ky) else {
                continue;
            };
            let row = &mut plane[iy * g.w..][..g.w];
            add_stride2(&seg[lo..hi], &mut row[lo * 2 + kx - g.pw..]);
        }
    }

    /// dst[2 i] += src[i] for every i: 16 values a time, spread to the even
    /// lanes of two vectors and added to those lanes alone (masked, so the
    /// odd lanes keep their bits).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn add_stride2(src: &[f32], dst: &mut [f32]) {
        let n = src.len();
        assert!(
            n == 0 || dst.len() > 2 * (n - 1),
            "add_stride2: dst too short"
        );
        let low = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        let high = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
        for i in (0..n).step_by(16) {
            let len = (n - i).min(16) as isize;
            let s = _mm512_maskz_loadu_ps(lanes(0, len) as u16, src.as_ptr().add(i));
            // Dst values 2i .. 2i + 2 len - 1, the even ones added to.
            let reach = lanes(0, 2 * len - 1);
            let even = reach & 0x5555_5555;
            let d = dst.as_mut_ptr().add(2 * i);
            let (m0, m1) = (reach as u16, (reach >> 16) as u16);
            let (e0, e1) = (even as u16, (even >> 16) as u16);
            let a = _mm512_maskz_loadu_ps(m0, d);
            let a = _mm512_mask_add_ps(a, e0, a, _mm512_permutexvar_ps(low, s));
            _mm512_mask_storeu_ps(d, m0, a);
            let b = _mm512_maskz_loadu_ps(m1, d.wrapping_add(16));
            let b = _mm512_mask_add_ps(b, e1, b, _mm512_permutexvar_ps(high, s));
            _mm512_mask_storeu_ps(d.wrapping_add(16), m1, b);
        }
    }

    /// Lanes lo..hi of 16 (clamped), as a mask.
    fn lanes(lo: isize, hi: isize) -> u32 {
        let (lo, hi) = (lo.clamp(0, 32), hi.clamp(0, 32));
        if hi <= lo {
            0
        } else {
            ((1u64 << hi) - (1u64 << lo)) as u32
        }
    }

    /// Output positions one after another from position `q`, without a
    /// division each.
    struct Walk<'p, 'a> {
        pt: &'p Patches<'a>,
        w: Window,
        oy: usize,
        ox: usize,
        /// OH, OW and C * H * W (each a division or more to compute).
        oh: usize,
        ow: usize,
        len: usize,
    }

    impl<'p, 'a> Walk<'p, 'a> {
        fn new(pt: &'p Patches<'a>, q: usize) -> Self {
            let pos = q % pt.conv.positions();
            let ow = pt.conv.ow();
            Walk {
                pt,
                w: pt.window(q),
                oy: pos / ow,
                ox: pos % ow,
                oh: pt.conv.oh(),
                ow,
                len: pt.conv.c * pt.conv.h * pt.conv.w,
            }
        }
        #[inline(always)]
        fn next(&mut self) {
            let g = &self.pt.conv;
            self.ox += 1;
            if self.ox == self.ow {
                self.ox = 0;
                self.oy += 1;
                if self.oy == self.oh {
                    self.oy = 0;
                    self.w.at += self.len;
                    if self.w.at == self.pt.runs[self.w.run].len()
                        && self.w.run + 1 < self.pt.runs.len()
                    {
                        self.w.run += 1;
                        self.w.at = 0;
                    }
                }
            }
            self.w.iy0 = (self.oy * g.sh) as isize - g.ph as isize;
            self.w.ix0 = (self.ox * g.sw) as isize - g.pw as isize;
        }
        fn image(&self) -> *const f32 {
            self.pt.runs[self.w.run].as_ptr().wrapping_add(self.w.at)
        }
    }

    /// Not transposed: taps p0.. as rows, `count` positions j0.. as
    /// columns, into dst[p * nr + lane]. The lanes split into segments,
    /// one per output row they cover; a tap of a segment is one input row
    /// read at stride SW (1 or 2: one or two masked loads, the second
    /// picked apart by a permute; other strides go value by value).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn positions_by_tap(
        pt: &Patches,
        (p0, kc): (usize, usize),
        j0: usize,
        count: usize,
        dst: &mut [f32],
        nr: usize,
    ) {
        let g = &pt.conv;
        if g.sw > 2 || g.kw > 16 {
            for j in 0..count {
                let w = pt.window(j0 + j);
                for p in 0..kc {
                    dst[p * nr + j] = pt.value(w, p0 + p);
                }
            }
            return;
        }
        let (h, w, sw) = (g.h as isize, g.w as isize, g.sw as isize);
        // Segments: the input row of their window's top (iy0), a pointer
        // from which tap t's values start (at its offset from a window's
        // corner), and for each kx the values of the (one or two) loads
        // that are inside the image and the segment.
        struct Segment {
            iy0: isize,
            base: *const f32,
            inside: [u32; 16],
        }
        let mut segs: [Segment; 16] = std::array::from_fn(|_| Segment {
            iy0: 0,
            base: std::ptr::null(),
            inside: [0; 16],
        });
        let mut nseg = 0;
        let mut walk = Walk::new(pt, j0);
        let mut j = 0;
        while j < count {
            let (la, ox, win) = (j as isize, walk.ox as isize, walk.w);
            let len = (walk.ow - walk.ox).min(count - j) as isize;
            // Lane i reads column c0 + kx + sw * i.
            let c0 = ox * sw - g.pw as isize - sw * la;
            let seg = &mut segs[nseg];
            seg.iy0 = win.iy0;
            seg.base = walk.image().wrapping_offset(win.iy0 * w + c0);
            for kx in 0..g.kw as isize {
                let c = c0 + kx;
                seg.inside[kx as usize] = lanes(sw * la, sw * (la + len)) & lanes(-c, w - c);
            }
            nseg += 1;
            j += len as usize;
            for _ in 0..len {
                if j < count {
                    walk.next();
                }
            }
        }
        let valid = lanes(0, count as isize) as u16;
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        // Tap (ci, ky, kx), counted up without a division each.
        let (mut ci, mut ky, mut kx) = (p0 / (g.kh * g.kw), (p0 / g.kw % g.kh) as isize, p0 % g.kw);
        let (kh, kw, plane) = (g.kh as isize, g.kw, (g.h * g.w) as isize);
        for p in 0..kc {
            if p > 0 {
                kx += 1;
                if kx == kw {
                    kx = 0;
                    ky += 1;
                    if ky == kh {
                        ky = 0;
                        ci += 1;
                    }
                }
            }
            let t_off = ci as isize * plane + ky * w + kx as isize;
            let mut v = _mm512_setzero_ps();
            for seg in &segs[..nseg] {
                let iy = seg.iy0 + ky;
                if iy < 0 || iy >= h {
                    continue;
                }
                let (at, inside) = (seg.base.wrapping_offset(t_off), seg.inside[kx]);
                // Each segment's lanes are zero outside it, so OR joins
                // them bit for bit (and the loads do not wait on each other,
                // as merging loads into one register would).
                let part = if sw == 1 {
                    _mm512_maskz_loadu_ps(inside as u16, at)
                } else {
                    let lo = _mm512_maskz_loadu_ps(inside as u16, at);
                    let hi = _mm512_maskz_loadu_ps((inside >> 16) as u16, at.wrapping_add(16));
                    _mm512_permutex2var_ps(lo, even, hi)
                };
                v = or(v, part);
            }
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(p * nr), valid, v);
        }
    }

    /// Transposed: positions p0.. as rows, `count` taps j0.. as columns,
    /// into dst[p * nr + lane]. The taps split into segments of
    /// consecutive kx (one input row each, e.g. four of four for a 4 x 4
    /// kernel); a position reads each with one masked load.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn taps_by_position(
        pt: &Patches,
        (p0, kc): (usize, usize),
        j0: usize,
        count: usize,
        dst: &mut [f32],
        nr: usize,
    ) {
        let g = &pt.conv;
        let (h, w) = (g.h as isize, g.w as isize);
        // Segments: (first lane, lanes, offset of its first tap from a
        // window's corner, ky).
        let mut segs = [(0isize, 0usize, 0isize, 0isize); 16];
        let mut nseg = 0;
        let mut kxs = [0i32; 16];
        for (j, lane_kx) in kxs.iter_mut().enumerate().take(count) {
            let (off, ky, kx) = pt.tap(j0 + j);
            *lane_kx = kx as i32;
            if j == 0 || kx == 0 {
                segs[nseg] = (j as isize, 0, off, ky);
                nseg += 1;
            }
            segs[nseg - 1].1 += 1;
        }
        // Each segment's lanes as a mask, in place of its length.
        for seg in &mut segs[..nseg] {
            seg.1 = lanes(seg.0, seg.0 + seg.1 as isize) as usize;
        }
        let valid = lanes(0, count as isize) as u16;
        let kx = _mm512_loadu_si512(kxs.as_ptr().cast());
        let wv = _mm512_set1_epi32(g.w as i32);
        let mut walk = Walk::new(pt, p0);
        for p in 0..kc {
            let win = walk.w;
            let image = walk.image();
            // Lanes whose column ix0 + kx is inside.
            let ix = _mm512_add_epi32(kx, _mm512_set1_epi32(win.ix0 as i32));
            let cols = _mm512_mask_cmplt_epu32_mask(valid, ix, wv);
            let corner = win.iy0 * w + win.ix0;
            let mut v = _mm512_setzero_ps();
            for &(la, mask, off, ky) in &segs[..nseg] {
                let iy = win.iy0 + ky;
                if iy < 0 || iy >= h {
                    continue;
                }
                let at = image.wrapping_offset(off + corner - la);
                // OR: as in positions_by_tap.
                v = or(v, _mm512_maskz_loadu_ps(cols & mask as u16, at));
            }
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(p * nr), valid, v);
            if p + 1 < kc {
                walk.next();
            }
        }
    }
}
