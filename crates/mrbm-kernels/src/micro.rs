//! The register-tile microkernels: C tile = alpha * sum_p a[p] (x) b[p] +
//! beta * C tile, with a[p] (MR values) and b[p] (NR values) consecutive in
//! the packed panels.

use crate::Kernel;

/// Write an MR x NR accumulator tile (row-major in `acc`) to the valid
/// `mr x nr` corner of C, any strides.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_tile(
    acc: &[f32],
    ld: usize,
    c: *mut f32,
    rs_c: usize,
    cs_c: usize,
    alpha: f32,
    beta: f32,
    mr: usize,
    nr: usize,
) {
    for i in 0..mr {
        for j in 0..nr {
            let p = c.add(i * rs_c + j * cs_c);
            let v = alpha * acc[i * ld + j];
            *p = if beta == 0.0 { v } else { v + beta * *p };
        }
    }
}

pub(crate) const PORTABLE_MR: usize = 4;
pub(crate) const PORTABLE_NR: usize = 16;

/// Plain Rust, any target.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn portable(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rs_c: usize,
    cs_c: usize,
    alpha: f32,
    beta: f32,
    mr: usize,
    nr: usize,
) {
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
    store_tile(acc.as_flattened(), NR, c, rs_c, cs_c, alpha, beta, mr, nr);
}

#[cfg(target_arch = "x86_64")]
pub(crate) const AVX512: Kernel = x86::avx512_14x32;
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX2: Kernel = x86::avx2_6x16;
// Never selected off x86_64 (`Isa::available` is false there).
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const AVX512: Kernel = portable;
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const AVX2: Kernel = portable;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::store_tile;
    use std::arch::x86_64::*;

    /// 14 x 32: 28 zmm accumulators, two B vectors, one broadcast.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn avx512_14x32(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        rs_c: usize,
        cs_c: usize,
        alpha: f32,
        beta: f32,
        mr: usize,
        nr: usize,
    ) {
        const MR: usize = 14;
        let mut c0 = [_mm512_setzero_ps(); MR];
        let mut c1 = [_mm512_setzero_ps(); MR];
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for r in 0..MR {
                let av = _mm512_set1_ps(*a.add(r));
                c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
                c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
            }
            a = a.add(MR);
            b = b.add(32);
        }
        let va = _mm512_set1_ps(alpha);
        if mr == MR && nr == 32 && cs_c == 1 {
            let vb = _mm512_set1_ps(beta);
            for r in 0..MR {
                let p = c.add(r * rs_c);
                let mut v0 = _mm512_mul_ps(c0[r], va);
                let mut v1 = _mm512_mul_ps(c1[r], va);
                if beta != 0.0 {
                    v0 = _mm512_fmadd_ps(_mm512_loadu_ps(p), vb, v0);
                    v1 = _mm512_fmadd_ps(_mm512_loadu_ps(p.add(16)), vb, v1);
                }
                _mm512_storeu_ps(p, v0);
                _mm512_storeu_ps(p.add(16), v1);
            }
        } else {
            let mut t = [0.0f32; MR * 32];
            for r in 0..MR {
                _mm512_storeu_ps(t.as_mut_ptr().add(r * 32), c0[r]);
                _mm512_storeu_ps(t.as_mut_ptr().add(r * 32 + 16), c1[r]);
            }
            store_tile(&t, 32, c, rs_c, cs_c, alpha, beta, mr, nr);
        }
    }

    /// 6 x 16: 12 ymm accumulators, two B vectors, one broadcast.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn avx2_6x16(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        rs_c: usize,
        cs_c: usize,
        alpha: f32,
        beta: f32,
        mr: usize,
        nr: usize,
    ) {
        const MR: usize = 6;
        let mut c0 = [_mm256_setzero_ps(); MR];
        let mut c1 = [_mm256_setzero_ps(); MR];
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for r in 0..MR {
                let av = _mm256_broadcast_ss(&*a.add(r));
                c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
                c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
            }
            a = a.add(MR);
            b = b.add(16);
        }
        let va = _mm256_set1_ps(alpha);
        if mr == MR && nr == 16 && cs_c == 1 {
            let vb = _mm256_set1_ps(beta);
            for r in 0..MR {
                let p = c.add(r * rs_c);
                let mut v0 = _mm256_mul_ps(c0[r], va);
                let mut v1 = _mm256_mul_ps(c1[r], va);
                if beta != 0.0 {
                    v0 = _mm256_fmadd_ps(_mm256_loadu_ps(p), vb, v0);
                    v1 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), vb, v1);
                }
                _mm256_storeu_ps(p, v0);
                _mm256_storeu_ps(p.add(8), v1);
            }
        } else {
            let mut t = [0.0f32; MR * 16];
            for r in 0..MR {
                _mm256_storeu_ps(t.as_mut_ptr().add(r * 16), c0[r]);
                _mm256_storeu_ps(t.as_mut_ptr().add(r * 16 + 8), c1[r]);
            }
            store_tile(&t, 16, c, rs_c, cs_c, alpha, beta, mr, nr);
        }
    }
}
