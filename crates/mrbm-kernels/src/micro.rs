//! The register-tile microkernels: C tile = alpha * sum_p a[p] (x) b[p] +
//! beta * C tile, with a[p] (MR values) and b[p] (NR values) consecutive in
//! the packed panels.

use crate::{Kernel, Tile};

/// Write an MR x NR accumulator tile (row-major in `acc`, rows `ld`
/// apart) to the valid corner of C that `out` names, any strides.
///
/// The same rounding as the SIMD kernels' full-tile store, fma(C, beta,
/// alpha * acc): which tiles are full depends on MR and NR, so anything else
/// would make AVX-512 and AVX2 products differ in the last bit at some
/// elements (tests/isa_bits.rs; pinned results rely on it).
#[inline(always)]
unsafe fn store_tile(acc: &[f32], ld: usize, out: &Tile) {
    let (alpha, beta) = (out.alpha, out.beta);
    for i in 0..out.mr {
        for j in 0..out.nr {
            let p = out.c.add(i * out.rs + j * out.cs);
            let v = alpha * acc[i * ld + j];
            *p = if beta == 0.0 {
                v
            } else {
                (*p).mul_add(beta, v)
            };
        }
    }
}

pub(crate) const PORTABLE_MR: usize = 4;
pub(crate) const PORTABLE_NR: usize = 16;

/// Plain Rust, any target.
pub(crate) unsafe fn portable(kc: usize, a: *const f32, b: *const f32, out: &Tile) {
    const MR: usize = PORTABLE_MR;
    const NR: usize = PORTABLE_NR;
    let a = std::slice::from_raw_parts(a, kc * MR);
    let b = std::slice::from_raw_parts(b, kc * NR);
    let mut acc = [[0.0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for r in 0..MR {
            let av = ap[r];
            for j in 0..NR {
                acc[r][j] += av * bp[j];
            }
        }
    }
    store_tile(acc.as_flattened(), NR, out);
}

#[cfg(target_arch = "x86_64")]
pub(crate) const AVX512: Kernel = x86::avx512_14x32;
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX512_16X16: Kernel = x86::avx512_16x16;

/// dst[q * ds + r] = src[r * ss + q] for r, q < 16: a 16 x 16 block
/// transposed (packing a row-major A, or a transposed B, into panels).
/// AVX-512 shuffles on x86_64 (the caller checks the CPU has them); the
/// values are only moved, so any version gives the same panels.
pub(crate) unsafe fn transpose16(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    #[cfg(target_arch = "x86_64")]
    x86::transpose16(src, ss, dst, ds);
    #[cfg(not(target_arch = "x86_64"))]
    for r in 0..16 {
        for q in 0..16 {
            *dst.add(q * ds + r) = *src.add(r * ss + q);
        }
    }
}
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX2: Kernel = x86::avx2_6x16;
// Never selected off x86_64 (`Isa::available` is false there).
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const AVX512: Kernel = portable;
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const AVX512_16X16: Kernel = portable;
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const AVX2: Kernel = portable;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{store_tile, Tile};
    use std::arch::x86_64::*;

    /// One register-tile microkernel: MR rows of NV W-lane vectors each
    /// (NR = NV W): NV MR accumulators, NV B vectors, one broadcast of A per
    /// row. A full tile of row-major C is stored straight from the
    /// registers; an edge tile (or strided C) goes through a buffer and
    /// [`store_tile`].
    macro_rules! microkernel {
        (
            $(#[$attr:meta])*
            $name:ident, MR = $mr:literal, NV = $nv:literal, W = $w:literal,
            setzero = $setzero:ident, load = $load:ident, store = $store:ident,
            fmadd = $fmadd:ident, mul = $mul:ident, set1 = $set1:ident,
            broadcast = |$ap:ident| $broadcast:expr
        ) => {
            $(#[$attr])*
            pub(super) unsafe fn $name(kc: usize, a: *const f32, b: *const f32, out: &Tile) {
                const MR: usize = $mr;
                const NV: usize = $nv;
                const W: usize = $w;
                let mut c = [[$setzero(); NV]; MR];
                let (mut a, mut b) = (a, b);
                for _ in 0..kc {
                    let mut bv = [$setzero(); NV];
                    for v in 0..NV {
                        bv[v] = $load(b.add(v * W));
                    }
                    for r in 0..MR {
                        let av = {
                            let $ap = a.add(r);
                            $broadcast
                        };
                        for v in 0..NV {
                            c[r][v] = $fmadd(av, bv[v], c[r][v]);
                        }
                    }
                    a = a.add(MR);
                    b = b.add(NV * W);
                }
                let (alpha, beta) = (out.alpha, out.beta);
                let va = $set1(alpha);
                if out.mr == MR && out.nr == NV * W && out.cs == 1 {
                    let vb = $set1(beta);
                    for r in 0..MR {
                        let p = out.c.add(r * out.rs);
                        for v in 0..NV {
                            let mut x = $mul(c[r][v], va);
                            if beta != 0.0 {
                                x = $fmadd($load(p.add(v * W)), vb, x);
                            }
                            $store(p.add(v * W), x);
                        }
                    }
                } else {
                    let mut t = [0.0f32; MR * NV * W];
                    for r in 0..MR {
                        for v in 0..NV {
                            $store(t.as_mut_ptr().add(r * NV * W + v * W), c[r][v]);
                        }
                    }
                    store_tile(&t, NV * W, out);
                }
            }
        };
    }

    /// An AVX-512 tile: MR rows of NV zmm vectors.
    macro_rules! avx512_microkernel {
        ($(#[$attr:meta])* $name:ident, MR = $mr:literal, NV = $nv:literal) => {
            microkernel! {
                $(#[$attr])*
                #[target_feature(enable = "avx512f")]
                $name, MR = $mr, NV = $nv, W = 16,
                setzero = _mm512_setzero_ps, load = _mm512_loadu_ps, store = _mm512_storeu_ps,
                fmadd = _mm512_fmadd_ps, mul = _mm512_mul_ps, set1 = _mm512_set1_ps,
                broadcast = |ap| _mm512_set1_ps(*ap)
            }
        };
    }

    avx512_microkernel! {
        /// 16 x 16: 16 zmm accumulators, one B vector, one broadcast (the
        /// faster tile on Zen 4, whose 512-bit FMAs are double-pumped).
        avx512_16x16, MR = 16, NV = 1
    }

    avx512_microkernel! {
        /// 14 x 32: 28 zmm accumulators, two B vectors, one broadcast.
        avx512_14x32, MR = 14, NV = 2
    }

    microkernel! {
        /// 6 x 16: 12 ymm accumulators, two B vectors, one broadcast.
        #[target_feature(enable = "avx2,fma")]
        avx2_6x16, MR = 6, NV = 2, W = 8,
        setzero = _mm256_setzero_ps, load = _mm256_loadu_ps, store = _mm256_storeu_ps,
        fmadd = _mm256_fmadd_ps, mul = _mm256_mul_ps, set1 = _mm256_set1_ps,
        broadcast = |ap| _mm256_broadcast_ss(&*ap)
    }

    /// 16 x 16 transpose in registers: 32-bit and 64-bit interleaves within
    /// 128-bit lanes, then two rounds of lane shuffles.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * ss)));
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // u[4i + j], lane k: rows 4i..4i+4 of column 4k + j.
        let mut u = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            let pd = |x: __m512| _mm512_castps_pd(x);
            let (a, b, c, d) = (
                pd(t[4 * i]),
                pd(t[4 * i + 2]),
                pd(t[4 * i + 1]),
                pd(t[4 * i + 3]),
            );
            u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
            u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
            u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
        }
        for j in 0..4 {
            let v0 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
            let v1 = _mm512_shuffle_f32x4::<0xDD>(u[j], u[4 + j]);
            let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
            let v3 = _mm512_shuffle_f32x4::<0xDD>(u[8 + j], u[12 + j]);
            _mm512_storeu_ps(dst.add(j * ds), _mm512_shuffle_f32x4::<0x88>(v0, v2));
            _mm512_storeu_ps(dst.add((4 + j) * ds), _mm512_shuffle_f32x4::<0x88>(v1, v3));
            _mm512_storeu_ps(dst.add((8 + j) * ds), _mm512_shuffle_f32x4::<0xDD>(v0, v2));
            _mm512_storeu_ps(dst.add((12 + j) * ds), _mm512_shuffle_f32x4::<0xDD>(v1, v3));
        }
    }
}
