//! Vectorised unit activations for mrbm-core's host training path (`host_cd`):
//! the mean N sigmoid(k x) and the log-partition (N/k) softplus(k x) of a
//! row of inputs in one pass; and, for AIS's importance weights, an f64
//! softplus and its summed differences between two betas
//! ([`softplus_beta_diff_sum`]). The f32 ones take exp and log1p as branch-free
//! polynomials (Cephes' expf/logf) that the compiler vectorises.
//!
//! Why: libm's scalar expf and log1pf were 12 % of a training step. Each
//! entry point is compiled three times, for AVX-512, AVX2+FMA and the
//! baseline, and picks one at run time; the three give the same bits (no
//! contraction into FMAs: Rust never fuses a * b + c on its own), which the
//! tests check, together with the accuracy against f64.

/// exp(r)'s polynomial on |r| <= ln 2 / 2 (Cephes' expf), Horner from the
/// highest coefficient; the scalar and the AVX-512 paths share it.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// log(1 + x)'s polynomial (Cephes' logf), Horner from the highest.
const LOG1P_POLY: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];

/// exp(x) for x <= 0 (x below -87: 0).
#[inline(always)]
pub(crate) fn exp_nonpos(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.max(-87.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let mut q = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        q = q * r + c;
    }
    let p = q * z + r + 1.0;
    // 2^n from the integer in t's low bits: n in [-126, 0].
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// log(1 + e) for e in [0, 1].
#[inline(always)]
fn log1p_unit(e: f32) -> f32 {
    const SQRT2: f32 = std::f32::consts::SQRT_2;
    let u = 1.0 + e;
    let big = u > SQRT2;
    let m = if big { u * 0.5 } else { u };
    let ex = if big { 1.0 } else { 0.0 };
    let x = m - 1.0;
    let z = x * x;
    let mut p = LOG1P_POLY[0];
    for &c in &LOG1P_POLY[1..] {
        p = p * x + c;
    }
    let y = x * z * p + ex * -2.121_944_4e-4 - 0.5 * z;
    let l = x + y + ex * 0.693_359_4;
    // Goldberg's correction: log(u) e / (u - 1) is log1p(e) to full
    // precision even where 1 + e rounds.
    let d = u - 1.0;
    if d == 0.0 {
        e
    } else {
        l * (e / d)
    }
}

/// (sigmoid(z), softplus(z)).
#[inline(always)]
fn sigmoid_softplus(z: f32) -> (f32, f32) {
    let e = exp_nonpos(-z.abs());
    let num = if z >= 0.0 { 1.0 } else { e };
    (num / (1.0 + e), z.max(0.0) + log1p_unit(e))
}

/// What one pass computes for a row x (bias already added or not, see
/// [`Act::bias`]): x <- N sigmoid(k (x + bias)) and, when `sp`, the sum of
/// (N/k) softplus(k (x + bias)); also the sum of the new values.
#[derive(Debug, Clone, Copy)]
pub struct Act {
    pub n: f32,
    pub k: f32,
    /// Gaussian (identity) mean: x <- x + bias, and `sp` sums
    /// (x + bias)^2 / 2 instead.
    pub identity: bool,
}

const LANES: usize = 16;

/// The generic body: `bias(i)` is the bias of element i.
#[inline(always)]
fn act_body<B: Fn(usize) -> f32, const SP: bool>(x: &mut [f32], bias: B, act: Act) -> (f64, f64) {
    let mut acc_h = [0.0f64; LANES];
    let mut acc_s = [0.0f64; LANES];
    let c = act.n / act.k;
    let len = x.len();
    let full = len - len % LANES;
    let one = |v: f32, b: f32| -> (f32, f32) {
        let y = v + b;
        if act.identity {
            (y, 0.5 * y * y)
        } else {
            let (s, sp) = sigmoid_softplus(act.k * y);
            (act.n * s, c * sp)
        }
    };
    for base in (0..full).step_by(LANES) {
        let chunk = &mut x[base..base + LANES];
        for l in 0..LANES {
            let (h, s) = one(chunk[l], bias(base + l));
            chunk[l] = h;
            acc_h[l] += h as f64;
            if SP {
                acc_s[l] += s as f64;
            }
        }
    }
    let (mut sh, mut ss) = (0.0f64, 0.0f64);
    for l in 0..LANES {
        sh += acc_h[l];
        ss += acc_s[l];
    }
    for (i, v) in x.iter_mut().enumerate().skip(full) {
        let (h, s) = one(*v, bias(i));
        *v = h;
        sh += h as f64;
        if SP {
            ss += s as f64;
        }
    }
    (sh, ss)
}

macro_rules! dispatch {
    ($name:ident, $body:expr, ($($arg:ident: $ty:ty),*)) => {
        dispatch!($name, $body, ($($arg: $ty),*) -> (f64, f64));
    };
    ($name:ident, $body:expr, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[inline(always)]
        fn generic($($arg: $ty),*) -> $ret {
            $body
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
        unsafe fn avx512($($arg: $ty),*) -> $ret {
            generic($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2($($arg: $ty),*) -> $ret {
            generic($($arg),*)
        }
        pub fn run(level: Level, $($arg: $ty),*) -> $ret {
            match level {
                #[cfg(target_arch = "x86_64")]
                // Safety: `Level::detect` returned Avx512 only where the CPU has it.
                Level::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // Safety: as above, for AVX2 and FMA.
                Level::Avx2 => unsafe { avx2($($arg),*) },
                _ => generic($($arg),*),
            }
        }
    };
}

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Scalar,
    Avx2,
    Avx512,
}

impl Level {
    /// The best this CPU has.
    pub fn detect() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx2;
            }
        }
        Level::Scalar
    }

    /// Every level this CPU can run (for the tests).
    pub fn available() -> Vec<Level> {
        let best = Level::detect();
        [Level::Scalar, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|l| *l as u8 <= best as u8)
            .collect()
    }
}

mod row_scalar_bias {
    use super::*;
    dispatch!(
        run,
        act_body::<_, true>(x, |_| bias, act),
        (x: &mut [f32], bias: f32, act: Act)
    );
}
mod row_scalar_bias_nosp {
    use super::*;
    dispatch!(
        run,
        act_body::<_, false>(x, |_| bias, act),
        (x: &mut [f32], bias: f32, act: Act)
    );
}
mod row_vec_bias {
    use super::*;
    dispatch!(
        run,
        {
            let bias = &bias[..x.len()];
            act_body::<_, true>(x, |i| bias[i], act)
        },
        (x: &mut [f32], bias: &[f32], act: Act)
    );
}
mod row_vec_bias_nosp {
    use super::*;
    dispatch!(
        run,
        {
            let bias = &bias[..x.len()];
            act_body::<_, false>(x, |i| bias[i], act)
        },
        (x: &mut [f32], bias: &[f32], act: Act)
    );
}

/// softplus(z) in f64 to within a few ulp without a libm call, branch-free
/// so that a loop of it vectorises (AIS's weights call it for every hidden
/// unit at every beta; glibc's exp and log1p were a third of its time):
/// max(z, 0) + log1p(e^-|z|), with
/// - e^t (t = -|z| <= 0) by t = k ln 2 + r, |r| <= ln 2 / 2 (ln 2 in two
///   parts, so r is exact to the last bits), and Taylor's series of e^r to
///   r^13 / 13! (the first term left out is below 2^-53), times 2^k;
/// - log1p(u), u in (0, 1], as 2 atanh(s) with s = u / (2 + u) in
///   (0, 1/3], atanh's series to s^35 (the first term left out is below
///   2^-57 relative).
///
/// |z| is clamped at 700 (e^-700 is far below any sum it joins). NaN in,
/// NaN out.
#[inline(always)]
pub fn softplus_f64_fast(z: f64) -> f64 {
    // 1.5 * 2^52: adding it rounds to an integer.
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    // ln 2 with its low 32 mantissa bits cleared (k LN2_HI is exact), and
    // the rest of ln 2.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    let a = z.abs();
    let t = -(if a > 700.0 { 700.0 } else { a });
    let kb = t * std::f64::consts::LOG2_E + MAGIC;
    let kf = kb - MAGIC;
    let r = (t - kf * LN2_HI) - kf * LN2_LO;
    // e^r: Horner on 1/n!, n = 13 down to 0.
    let mut p = 1.0 / 6_227_020_800.0;
    for d in [
        479_001_600.0,
        39_916_800.0,
        3_628_800.0,
        362_880.0,
        40_320.0,
        5_040.0,
        720.0,
        120.0,
        24.0,
        6.0,
        2.0,
        1.0,
        1.0,
    ] {
        p = p * r + 1.0 / d;
    }
    // 2^k from k's two's complement bits in kb's mantissa (k >= -1010).
    let k = kb.to_bits().wrapping_sub(MAGIC.to_bits());
    let u = p * f64::from_bits(k.wrapping_add(1023) << 52);
    // log1p(u) = 2 atanh(s) = 2 s sum_n s^2n / (2n + 1).
    let s = u / (2.0 + u);
    let s2 = s * s;
    let mut q = 1.0 / 35.0;
    for n in (0..17).rev() {
        q = q * s2 + 1.0 / (2 * n + 1) as f64;
    }
    let pos = if z > 0.0 { z } else { 0.0 };
    let out = pos + 2.0 * s * q;
    if z.is_nan() {
        z
    } else {
        out
    }
}

mod softplus_beta_diff {
    use super::*;
    dispatch!(
        run,
        {
            #[inline(always)]
            fn h(x: f64, o: f64, beta: f64, sure: f64) -> f64 {
                let z = beta * (x - o);
                let sp = softplus_f64_fast(z);
                let cut = if z > sure {
                    z
                } else if z > -sure {
                    sp
                } else {
                    0.0
                };
                if beta == 0.0 {
                    std::f64::consts::LN_2
                } else {
                    cut
                }
            }
            let mut acc = [0.0f64; 8];
            let mut chunks = xs.chunks_exact(8);
            for c in &mut chunks {
                for (a, &x) in acc.iter_mut().zip(c) {
                    let x = x as f64;
                    *a += h(x, o, bk, sure) - h(x, o, bp, sure);
                }
            }
            for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
                let x = x as f64;
                *a += h(x, o, bk, sure) - h(x, o, bp, sure);
            }
            ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
        },
        (xs: &[f32], o: f64, bk: f64, bp: f64, sure: f64) -> f64
    );
}

/// sum_j [H_bk(x_j) - H_bp(x_j)] with H_beta(x) = softplus(beta (x - o)),
/// cut as AIS cuts it: ln 2 at beta = 0, beta (x - o) above `sure`, 0 below
/// -`sure` ([`softplus_f64_fast`] between). Eight f64 lanes whose partial
/// sums are added in a fixed order: the same bits at every level.
pub fn softplus_beta_diff_sum(
    level: Level,
    xs: &[f32],
    o: f64,
    bk: f64,
    bp: f64,
    sure: f64,
) -> f64 {
    softplus_beta_diff::run(level, xs, o, bk, bp, sure)
}

/// The sub-unit mean and log-partition in explicit 16-lane AVX-512 vectors:
/// the compiler keeps [`act_body`]'s 16 lanes in pairs of 256-bit registers
/// (this crate is built for the baseline CPU, whose tuning prefers them),
/// and runs out of registers. The same operations in the same order on
/// each lane, the same per-lane f64 sums and the same final order: the
/// bits of the other levels (the tests compare them).
#[cfg(target_arch = "x86_64")]
mod act512 {
    use super::{sigmoid_softplus, Act, Bias, EXP_POLY, LANES, LOG1P_POLY};
    use std::arch::x86_64::*;

    /// [`super::exp_nonpos`] on 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp_nonpos16(x: __m512) -> __m512 {
        let c = _mm512_set1_ps;
        let xc = _mm512_max_ps(x, c(-87.0));
        let magic = c(12_582_912.0);
        let t = _mm512_add_ps(_mm512_mul_ps(xc, c(std::f32::consts::LOG2_E)), magic);
        let n = _mm512_sub_ps(t, magic);
        let r = _mm512_sub_ps(
            _mm512_sub_ps(xc, _mm512_mul_ps(n, c(0.693_359_4))),
            _mm512_mul_ps(n, c(-2.121_944_4e-4)),
        );
        let z = _mm512_mul_ps(r, r);
        let mut q = c(EXP_POLY[0]);
        for &k in &EXP_POLY[1..] {
            q = _mm512_add_ps(_mm512_mul_ps(q, r), c(k));
        }
        let p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(q, z), r), c(1.0));
        let bits = _mm512_slli_epi32::<23>(_mm512_sub_epi32(
            _mm512_castps_si512(t),
            _mm512_set1_epi32(0x4B40_0000 - 127),
        ));
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, c(-87.0));
        _mm512_mask_blend_ps(under, _mm512_mul_ps(p, _mm512_castsi512_ps(bits)), c(0.0))
    }

    /// [`super::log1p_unit`] on 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn log1p_unit16(e: __m512) -> __m512 {
        let c = _mm512_set1_ps;
        let one = c(1.0);
        let u = _mm512_add_ps(one, e);
        let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(u, c(std::f32::consts::SQRT_2));
        let m = _mm512_mask_blend_ps(big, u, _mm512_mul_ps(u, c(0.5)));
        let ex = _mm512_mask_blend_ps(big, c(0.0), one);
        let x = _mm512_sub_ps(m, one);
        let z = _mm512_mul_ps(x, x);
        let mut p = c(LOG1P_POLY[0]);
        for &k in &LOG1P_POLY[1..] {
            p = _mm512_add_ps(_mm512_mul_ps(p, x), c(k));
        }
        let y = _mm512_sub_ps(
            _mm512_add_ps(
                _mm512_mul_ps(_mm512_mul_ps(x, z), p),
                _mm512_mul_ps(ex, c(-2.121_944_4e-4)),
            ),
            _mm512_mul_ps(c(0.5), z),
        );
        let l = _mm512_add_ps(_mm512_add_ps(x, y), _mm512_mul_ps(ex, c(0.693_359_4)));
        let d = _mm512_sub_ps(u, one);
        let zero_d = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(d, c(0.0));
        _mm512_mask_blend_ps(zero_d, _mm512_mul_ps(l, _mm512_div_ps(e, d)), e)
    }

    /// [`super::act_body`] for sub-units (not the identity mean).
    ///
    /// Safety: the CPU has AVX-512F; with `Bias::Each`, it holds at least
    /// `x.len()` values.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    pub(super) unsafe fn body<const SP: bool>(x: &mut [f32], bias: Bias, act: Act) -> (f64, f64) {
        let c = _mm512_set1_ps;
        let (n, k, cn) = (act.n, act.k, act.n / act.k);
        let (mut h_lo, mut h_hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let (mut s_lo, mut s_hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let len = x.len();
        let full = len - len % LANES;
        let mut i = 0;
        let xp = x.as_mut_ptr();
        // Block i's means and (when SP) log-partitions.
        let values = |i: usize| {
            let v = _mm512_loadu_ps(xp.add(i));
            let b = match bias {
                Bias::Row(b) => c(b),
                Bias::Each(bs) => _mm512_loadu_ps(bs.as_ptr().add(i)),
            };
            let z = _mm512_mul_ps(c(k), _mm512_add_ps(v, b));
            // sigmoid_softplus: e = exp(-|z|), the mean (z >= 0 ? 1 : e) / (1 + e).
            let neg_abs = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_castps_si512(z),
                _mm512_set1_epi32(i32::MIN),
            ));
            let e = exp_nonpos16(neg_abs);
            let nonneg = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(z, c(0.0));
            let num = _mm512_mask_blend_ps(nonneg, e, c(1.0));
            let h = _mm512_mul_ps(c(n), _mm512_div_ps(num, _mm512_add_ps(c(1.0), e)));
            let a = if SP {
                // max(z, 0) + log1p(e); a NaN z gives 0 there, as f32::max does.
                let sp = _mm512_add_ps(_mm512_max_ps(z, c(0.0)), log1p_unit16(e));
                _mm512_mul_ps(c(cn), sp)
            } else {
                c(0.0)
            };
            (h, a)
        };
        // Stores block i's values and adds them to the lanes' sums.
        let mut take = |i: usize, (h, a): (__m512, __m512)| {
            _mm512_storeu_ps(xp.add(i), h);
            h_lo = _mm512_add_pd(h_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(h)));
            h_hi = _mm512_add_pd(h_hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(h)));
            if SP {
                s_lo = _mm512_add_pd(s_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(a)));
                s_hi = _mm512_add_pd(s_hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(a)));
            }
        };
        // Two blocks at a time: their long dependency chains (two
        // polynomials and two divisions) overlap; the sums still take
        // block i before block i + 16.
        while i + 2 * LANES <= full {
            let (first, second) = (values(i), values(i + LANES));
            take(i, first);
            take(i + LANES, second);
            i += 2 * LANES;
        }
        if i < full {
            take(i, values(i));
        }
        let mut acc_h = [0.0f64; LANES];
        let mut acc_s = [0.0f64; LANES];
        _mm512_storeu_pd(acc_h.as_mut_ptr(), h_lo);
        _mm512_storeu_pd(acc_h.as_mut_ptr().add(8), h_hi);
        _mm512_storeu_pd(acc_s.as_mut_ptr(), s_lo);
        _mm512_storeu_pd(acc_s.as_mut_ptr().add(8), s_hi);
        let (mut sh, mut ss) = (0.0f64, 0.0f64);
        for l in 0..LANES {
            sh += acc_h[l];
            ss += acc_s[l];
        }
        // The tail one element at a time, as the other levels do it.
        for (j, v) in x.iter_mut().enumerate().skip(full) {
            let b = match bias {
                Bias::Row(b) => b,
                Bias::Each(bs) => bs[j],
            };
            let (s, sp) = sigmoid_softplus(k * (*v + b));
            let h = n * s;
            *v = h;
            sh += h as f64;
            if SP {
                ss += (cn * sp) as f64;
            }
        }
        (sh, ss)
    }
}

/// The AVX-512 sub-unit path where it applies ([`act512`]); None otherwise.
#[inline]
fn act512_run(
    level: Level,
    x: &mut [f32],
    bias: Bias,
    act: Act,
    with_a: bool,
) -> Option<(f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && !act.identity {
        // Safety: `Level::detect` returned Avx512 only where the CPU has
        // it; the callers check a per-element bias is long enough.
        return Some(unsafe {
            if with_a {
                act512::body::<true>(x, bias, act)
            } else {
                act512::body::<false>(x, bias, act)
            }
        });
    }
    let _ = (level, x, bias, act, with_a);
    None
}

/// The bias of each element of a row, for [`act512_run`]: one for the
/// row, or one per element.
#[derive(Clone, Copy)]
enum Bias<'a> {
    Row(f32),
    Each(&'a [f32]),
}

/// x <- f(x + bias) on a row with one bias (a conv channel); returns
/// (sum of f, sum of A) where A is the log-partition, or (x+b)^2/2 for the
/// identity mean; the second sum only when `with_a`.
pub fn act_row(level: Level, x: &mut [f32], bias: f32, act: Act, with_a: bool) -> (f64, f64) {
    if let Some(sums) = act512_run(level, x, Bias::Row(bias), act, with_a) {
        return sums;
    }
    if with_a {
        row_scalar_bias::run(level, x, bias, act)
    } else {
        row_scalar_bias_nosp::run(level, x, bias, act)
    }
}

/// As [`act_row`] with a bias per element (a dense layer's row);
/// `bias.len()` must be at least `x.len()`.
pub fn act_row_biases(
    level: Level,
    x: &mut [f32],
    bias: &[f32],
    act: Act,
    with_a: bool,
) -> (f64, f64) {
    assert!(bias.len() >= x.len(), "act_row_biases: bias too short");
    if let Some(sums) = act512_run(level, x, Bias::Each(bias), act, with_a) {
        return sums;
    }
    if with_a {
        row_vec_bias::run(level, x, bias, act)
    } else {
        row_vec_bias_nosp::run(level, x, bias, act)
    }
}

/// One SGD element: the new w, with `g` left as the new velocity
/// (g + w d + v m, in that order; IEEE addition commutes, so the same bits
/// as a tensor path's v m + g).
#[inline(always)]
fn sgd_element(w: f32, g: &mut f32, v: Option<f32>, wd: Option<f32>, m: f32, lr: f32) -> f32 {
    if let Some(d) = wd {
        *g += w * d;
    }
    if let Some(v) = v {
        *g += v * m;
    }
    w - *g * lr
}

/// The body of [`sgd_row`]: one loop per case, without branches or bounds
/// checks inside, so that it vectorises.
#[inline(always)]
fn sgd_row_body(
    w: &mut [f32],
    g: &mut [f32],
    v: Option<&[f32]>,
    (scale, wd, m, lr): (f32, Option<f32>, f32, f32),
) -> bool {
    let n = g.len();
    let w = &mut w[..n];
    let rows = w.iter_mut().zip(g.iter_mut());
    match (v, wd) {
        (Some(v), Some(d)) => {
            for ((wi, gi), &vi) in rows.zip(&v[..n]) {
                *gi *= scale;
                *wi = sgd_element(*wi, gi, Some(vi), Some(d), m, lr);
            }
        }
        (Some(v), None) => {
            for ((wi, gi), &vi) in rows.zip(&v[..n]) {
                *gi *= scale;
                *wi = sgd_element(*wi, gi, Some(vi), None, m, lr);
            }
        }
        (None, Some(d)) => {
            for (wi, gi) in rows {
                *gi *= scale;
                *wi = sgd_element(*wi, gi, None, Some(d), m, lr);
            }
        }
        (None, None) => {
            for (wi, gi) in rows {
                *gi *= scale;
                *wi = sgd_element(*wi, gi, None, None, m, lr);
            }
        }
    }
    w.iter().fold(true, |ok, x| ok & x.is_finite())
}

mod sgd {
    use super::*;
    dispatch!(
        run,
        sgd_row_body(w, g, v, hyper),
        (w: &mut [f32], g: &mut [f32], v: Option<&[f32]>, hyper: (f32, Option<f32>, f32, f32)) -> bool
    );
}

/// SGD with momentum and weight decay on a row of w in place: g <- g *
/// scale, then g <- g + w wd + v m (the new velocity, left in g) and
/// w <- w - g lr, each without contraction into FMAs, so every level gives
/// the same bits. `v` (the old velocity) and `wd` are optional. Returns
/// whether every new w is finite. mrbm-core's SGD (the fused gradient step
/// of the sampled rules among others) runs it.
pub fn sgd_row(
    level: Level,
    w: &mut [f32],
    g: &mut [f32],
    v: Option<&[f32]>,
    hyper: (f32, Option<f32>, f32, f32),
) -> bool {
    sgd::run(level, w, g, v, hyper)
}

/// Sum of a row in f64 (lane-wise f32 partial sums, vectorised).
pub fn sum(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let full = x.len() - x.len() % LANES;
    for c in x[..full].chunks_exact(LANES) {
        for l in 0..LANES {
            acc[l] += c[l] as f64;
        }
    }
    acc.iter().sum::<f64>() + x[full..].iter().map(|&a| a as f64).sum::<f64>()
}

/// Sum of (x - a)^2 / 2 over a row.
pub fn half_sq_dev(x: &[f32], a: f32) -> f64 {
    let mut acc = [0.0f64; LANES];
    let full = x.len() - x.len() % LANES;
    for c in x[..full].chunks_exact(LANES) {
        for l in 0..LANES {
            let d = (c[l] - a) as f64;
            acc[l] += 0.5 * d * d;
        }
    }
    acc.iter().sum::<f64>()
        + x[full..]
            .iter()
            .map(|&v| {
                let d = (v - a) as f64;
                0.5 * d * d
            })
            .sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softplus_f64(z: f64) -> f64 {
        if z > 0.0 {
            z + (-z).exp().ln_1p()
        } else {
            z.exp().ln_1p()
        }
    }

    /// The AIS weight sums give the same bits at every level, and match
    /// the cut softplus summed term by term in f64 to 1e-12.
    #[test]
    fn softplus_beta_diff_sum_is_level_independent_and_right() {
        let xs: Vec<f32> = (0..1003)
            .map(|i| ((i * 37 % 211) as f32 - 105.0) * 0.5)
            .collect();
        for &(bk, bp) in &[(0.3, 0.0), (1.0, 0.97), (0.6, 0.55)] {
            let want: f64 = xs
                .iter()
                .map(|&x| {
                    let h = |b: f64| {
                        let z = b * (x as f64 - 0.25);
                        if b == 0.0 {
                            std::f64::consts::LN_2
                        } else if z > 40.0 {
                            z
                        } else if z > -40.0 {
                            softplus_f64(z)
                        } else {
                            0.0
                        }
                    };
                    h(bk) - h(bp)
                })
                .sum();
            let scalar = softplus_beta_diff_sum(Level::Scalar, &xs, 0.25, bk, bp, 40.0);
            assert!(
                (scalar - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{scalar} vs {want}"
            );
            for level in Level::available() {
                let got = softplus_beta_diff_sum(level, &xs, 0.25, bk, bp, 40.0);
                assert_eq!(got.to_bits(), scalar.to_bits(), "{level:?}");
            }
        }
    }

    /// The vectorisable softplus is libm's to within 4 ulp everywhere that
    /// matters: a dense sweep of [-60, 60], tiny and huge inputs, both
    /// signs of zero; NaN stays NaN.
    #[test]
    fn fast_softplus_is_libms_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut check = |z: f64| {
            let (got, want) = (softplus_f64_fast(z), softplus_f64(z));
            let err = (got - want).abs() / (want.abs() * f64::EPSILON).max(f64::MIN_POSITIVE);
            assert!(
                err <= 4.0,
                "softplus({z:e}) = {got:e}, libm {want:e}: {err} ulp"
            );
            worst = worst.max(err);
        };
        for i in -600_000..=600_000 {
            check(i as f64 * 1e-4 + 3.3e-6);
        }
        for z in [
            0.0,
            -0.0,
            1e-300,
            -1e-300,
            1e-20,
            -1e-20,
            36.0,
            40.0,
            700.0,
            701.0,
            1e6,
            f64::MAX,
        ] {
            check(z);
        }
        for z in [-36.0, -40.0, -200.0, -699.0] {
            check(z);
        }
        assert!(softplus_f64_fast(f64::NAN).is_nan());
        assert!(softplus_f64_fast(f64::NEG_INFINITY) < 1e-300);
        println!("worst error {worst:.2} ulp");
    }

    fn sigmoid_f64(z: f64) -> f64 {
        if z >= 0.0 {
            1.0 / (1.0 + (-z).exp())
        } else {
            let e = z.exp();
            e / (1.0 + e)
        }
    }

    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.01).collect();
        v.extend([
            -200.0, -100.0, -88.0, -87.5, -87.0, -86.9, -30.0, -17.0, -1e-3, -1e-7, 0.0, 1e-7,
            1e-3, 17.0, 30.0, 87.0, 88.0, 100.0, 200.0,
        ]);
        v.extend((0..1000).map(|i| ((i * 7919) % 2001) as f32 / 13.0 - 77.0));
        v
    }

    #[test]
    fn sigmoid_and_softplus_match_f64_on_every_level_and_levels_agree_bitwise() {
        let xs = inputs();
        for (n, k) in [(1u32, 1.0f64), (255, 4.0 / 255.0), (7, 0.5)] {
            let act = Act {
                n: n as f32,
                k: k as f32,
                identity: false,
            };
            let bias = 0.25f32;
            let mut results = Vec::new();
            for level in Level::available() {
                let mut x = xs.clone();
                let (sh, sa) = act_row(level, &mut x, bias, act, true);
                // The per-element values against f64.
                let mut ref_sh = 0.0;
                let mut ref_sa = 0.0;
                for (&x0, &h) in xs.iter().zip(&x) {
                    let z = k as f32 * (x0 + bias);
                    let want = n as f64 * sigmoid_f64(z as f64);
                    let tol = 4e-7 * want.abs() + 1e-37;
                    assert!(
                        (h as f64 - want).abs() <= tol * n as f64,
                        "{level:?} N={n} k={k} x={x0}: mean {h} vs {want}"
                    );
                    ref_sh += want;
                    ref_sa += n as f64 / k * softplus_f64(z as f64);
                }
                assert!(
                    (sh - ref_sh).abs() <= 1e-6 * ref_sh.abs(),
                    "{sh} vs {ref_sh}"
                );
                assert!(
                    (sa - ref_sa).abs() <= 1e-6 * ref_sa.abs(),
                    "{sa} vs {ref_sa}"
                );
                results.push((level, x, sh, sa));
            }
            for (level, x, sh, sa) in &results[1..] {
                let (_, x0, sh0, sa0) = &results[0];
                assert!(
                    x.iter().zip(x0).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{level:?} differs from the scalar path"
                );
                assert_eq!((sh.to_bits(), sa.to_bits()), (sh0.to_bits(), sa0.to_bits()));
            }
        }
    }

    /// The SGD row gives the same bits at every level: values over many
    /// magnitudes with a NaN and an infinity, every momentum / weight-decay
    /// case, a length that leaves a tail after every vector width.
    #[test]
    fn sgd_row_is_level_independent() {
        let n = 203;
        let val = |i: usize, s: f32| (i as f32 * s).sin() * 10f32.powi((i % 7) as i32 - 3);
        let w0: Vec<f32> = (0..n)
            .map(|i| if i == 50 { f32::INFINITY } else { val(i, 0.7) })
            .collect();
        let g0: Vec<f32> = (0..n)
            .map(|i| if i == 90 { f32::NAN } else { val(i, 1.3) })
            .collect();
        let vel: Vec<f32> = (0..n).map(|i| val(i, 2.1)).collect();
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for v in [None, Some(&vel[..])] {
            for wd in [None, Some(2e-4)] {
                let hyper = (-0.01f32, wd, 0.9f32, 0.005f32);
                let run = |level| {
                    let (mut w, mut g) = (w0.clone(), g0.clone());
                    let ok = sgd_row(level, &mut w, &mut g, v, hyper);
                    (bits(&w), bits(&g), ok)
                };
                let want = run(Level::Scalar);
                assert!(!want.2, "the infinity makes a w non-finite");
                for level in Level::available() {
                    assert!(run(level) == want, "{level:?} v {} wd {wd:?}", v.is_some());
                }
            }
        }
    }

    /// Every level gives the scalar path's bits on special values too (NaN,
    /// infinities, both zeros, subnormals, exp's cut at -87), with one bias
    /// and with a bias per element, on lengths around the 16 lanes.
    #[test]
    fn levels_agree_bitwise_on_special_values() {
        let mut xs = inputs();
        xs.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            1e-40,
            -1e-40,
            f32::MAX,
            f32::MIN,
            -87.0 / 0.5,
            -87.000_01,
        ]);
        let bias: Vec<f32> = (0..xs.len())
            .map(|i| [0.0, -0.0, 0.5, -3.0][i % 4])
            .collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (n, k) in [(1.0f32, 1.0f32), (255.0, 4.0 / 255.0), (7.0, 0.5)] {
            let act = Act {
                n,
                k,
                identity: false,
            };
            for len in [0, 1, 15, 16, 17, 33, xs.len()] {
                for with_a in [true, false] {
                    let run = |level: Level, each: bool| {
                        let mut x = xs[xs.len() - len..].to_vec();
                        let sums = if each {
                            act_row_biases(level, &mut x, &bias[..len], act, with_a)
                        } else {
                            act_row(level, &mut x, -0.0, act, with_a)
                        };
                        (bits(&x), sums.0.to_bits(), sums.1.to_bits())
                    };
                    for each in [false, true] {
                        let want = run(Level::Scalar, each);
                        for level in Level::available() {
                            assert!(
                                run(level, each) == want,
                                "{level:?} n {n} k {k} len {len} with_a {with_a} each {each}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn softplus_is_accurate_per_element_including_tiny_and_huge_inputs() {
        // One element at a time, so the sum is the element's A(x).
        for &x in &inputs() {
            for level in Level::available() {
                let mut v = [x];
                let (_, a) = act_row(
                    level,
                    &mut v,
                    0.0,
                    Act {
                        n: 1.0,
                        k: 1.0,
                        identity: false,
                    },
                    true,
                );
                let want = softplus_f64(x as f64);
                assert!(
                    (a - want).abs() <= 3e-7 * want + 1e-37,
                    "{level:?} softplus({x}) = {a} vs {want}"
                );
            }
        }
    }

    #[test]
    fn identity_mean_and_biases_per_element() {
        let xs = inputs();
        let bias: Vec<f32> = (0..xs.len()).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let id = Act {
            n: 1.0,
            k: 1.0,
            identity: true,
        };
        for level in Level::available() {
            let mut x = xs.clone();
            let (sh, sa) = act_row_biases(level, &mut x, &bias, id, true);
            let want: Vec<f64> = xs
                .iter()
                .zip(&bias)
                .map(|(&a, &b)| (a + b) as f64)
                .collect();
            assert!(x.iter().zip(&want).all(|(a, b)| *a as f64 == *b));
            let ws: f64 = want.iter().sum();
            let wa: f64 = want.iter().map(|y| 0.5 * y * y).sum();
            assert!((sh - ws).abs() < 1e-6 * xs.len() as f64);
            assert!((sa - wa).abs() < 1e-6 * wa);
            // Without the log-partition the means are the same and its sum 0.
            let mut y = xs.clone();
            let sig = Act {
                n: 3.0,
                k: 0.5,
                identity: false,
            };
            let mut z = xs.clone();
            let (s1, _) = act_row_biases(level, &mut y, &bias, sig, true);
            let (s2, a2) = act_row_biases(level, &mut z, &bias, sig, false);
            assert_eq!(y, z);
            assert_eq!((s1, a2), (s2, 0.0));
        }
    }

    #[test]
    fn sums_match_f64() {
        let xs = inputs();
        let want: f64 = xs.iter().map(|&v| v as f64).sum();
        assert!((sum(&xs) - want).abs() < 1e-6 * xs.len() as f64);
        let want: f64 = xs.iter().map(|&v| 0.5 * (v as f64 - 0.5).powi(2)).sum();
        assert!((half_sq_dev(&xs, 0.5) - want).abs() < 1e-6 * want);
    }
}
