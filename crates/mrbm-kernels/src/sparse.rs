//! Products whose left operand is mostly zeros: the data and the sampled
//! states of the RBM rules (MNIST digits are about five-sixths zeros; sampled
//! visible states of them about as many), where a dense product spends
//! most of its multiply-adds on zeros.
//!
//! [`sgemm_sparse_a`] walks each row of A's nonzeros and adds
//! `a[i, p] * B[p, :]` into registers holding a strip of C's row; four
//! rows at a time where it can, over the union of their nonzeros, so that
//! each row of B it reads serves four rows of C (a row's FMAs by the
//! others' nonzeros are FMAs by zero, which keep its sums). It keeps
//! the dense product's arithmetic exactly: per element, one FMA per
//! nonzero, from zero within the same depth blocks, in increasing p, the
//! blocks' sums combined as [`crate::sgemm`] combines them. A zero of A
//! contributes `fma(0, b, acc) = acc` there, so skipping it gives the same
//! bits (tests/sparse.rs), with two exceptions no training reaches: an
//! infinity or NaN in B opposite a zero of A (the dense product gives NaN,
//! this one does not), and the sign of a sum that underflowed to -0.
//!
//! Above [`MAX_DENSITY`] nonzeros, or where the CPU lacks AVX-512, or C is
//! not row-major, it runs the dense [`crate::sgemm`] instead.

use rayon::prelude::*;

use crate::{sgemm_isa, split_even, Isa, Par, View, ViewMut};

/// The largest share of nonzeros in A at which the sparse walk is used.
/// Measured on Zen 4 (`sgemm_bench`'s last table, random zeros): walking
/// four rows of A at a time, the walk is about 1.6-1.9x faster than the
/// packed product at density 0.2, 1.1-1.3x at 0.4 and breaks even near
/// 0.5; 0.45 keeps a margin.
pub const MAX_DENSITY: f32 = 0.45;

/// sum over i with x[i] != 0 of a[i] * x[i], in f64 and in index order:
/// the sequential sum over all i (`t += a[i] * x[i]`, from +0) to the bit
/// where every a[i] is finite, since a zero term adds +-0 to a sum that is
/// never -0. With AVX-512 the nonzeros are found a vector at a time, so
/// only they cost an addition (a data row of a dense RBM's a.v).
pub fn dot_nonzeros_f64(x: &[f32], a: &[f32]) -> f64 {
    assert!(a.len() >= x.len(), "dot_nonzeros_f64: a too short");
    let mut t = 0.0f64;
    if cfg!(target_arch = "x86_64") && Isa::Avx512.available() {
        const BLOCK: usize = 256;
        let mut idx = [0u32; BLOCK + 16];
        let mut val = [0.0f32; BLOCK + 16];
        for (b, xs) in x.chunks(BLOCK).enumerate() {
            // Safety: AVX-512 is available (checked above).
            let nz = unsafe { x86::nonzeros(xs, &mut idx, &mut val) };
            let a = &a[b * BLOCK..];
            for (&p, &v) in idx[..nz].iter().zip(&val[..nz]) {
                t += a[p as usize] as f64 * v as f64;
            }
        }
    } else {
        for (&v, &ai) in x.iter().zip(a) {
            if v != 0.0 {
                t += ai as f64 * v as f64;
            }
        }
    }
    t
}

/// [`crate::sgemm`] for an A that is mostly zeros: C (m x n) = alpha *
/// A (m x k) * B (k x n) + beta * C, the same bits (see the module
/// documentation for the two exceptions).
pub fn sgemm_sparse_a(
    shape: [usize; 3],
    alpha: f32,
    a: View,
    b: View,
    beta: f32,
    c: ViewMut,
    par: Par,
) {
    sgemm_sparse_a_with((Isa::best(), par, MAX_DENSITY), shape, alpha, a, b, beta, c);
}

/// [`sgemm_sparse_a`] with the microkernel family (for the dense fallback
/// and the depth blocks), the parallelism and the density limit given.
/// Returns whether the sparse walk ran.
pub fn sgemm_sparse_a_with(
    (isa, par, max_density): (Isa, Par, f32),
    [m, n, k]: [usize; 3],
    alpha: f32,
    a: View,
    b: View,
    beta: f32,
    c: ViewMut,
) -> bool {
    walk_or_dense(
        (isa, par, max_density),
        [m, n, k],
        alpha,
        a,
        b,
        beta,
        c,
        None,
    )
}

/// The walk where it applies, else the dense product; then `then` on the
/// rows of C the dense product made (the walk runs it itself).
#[allow(clippy::too_many_arguments)]
fn walk_or_dense(
    (isa, par, max_density): (Isa, Par, f32),
    [m, n, k]: [usize; 3],
    alpha: f32,
    a: View,
    b: View,
    beta: f32,
    mut c: ViewMut,
    then: Option<RowThen>,
) -> bool {
    let kc = split_even(k, isa.blocking().kc, 1);
    let cfg = (isa, par, max_density, kc);
    if walk(cfg, [m, n, k], alpha, a, b, beta, &mut c, then) {
        return true;
    }
    let c_rs = c.rs;
    let cm = ViewMut {
        data: &mut *c.data,
        rs: c_rs,
        cs: c.cs,
    };
    sgemm_isa((isa, par), [m, n, k], alpha, a, b, beta, cm);
    if let (Some(then), true) = (then, m > 0 && n > 0) {
        let rows = |(i, row): (usize, &mut [f32])| then(i, &mut row[..n]);
        let data = &mut c.data[..(m - 1) * c_rs + n];
        if par == Par::Rayon {
            data.par_chunks_mut(c_rs.max(1)).enumerate().for_each(rows);
        } else {
            data.chunks_mut(c_rs.max(1)).enumerate().for_each(rows);
        }
    }
    false
}

/// The walk alone, in depth blocks of `kc` (a [`crate::PackedA`]'s
/// [`crate::PackedA::depth_block`], to give the bits of products with it);
/// false, with C untouched, where the walk does not apply (A too dense, no
/// AVX-512, C not row-major, an empty product).
pub fn sparse_walk(
    cfg: (Isa, Par, f32, usize),
    shape: [usize; 3],
    alpha: f32,
    a: View,
    b: View,
    beta: f32,
    c: &mut ViewMut,
) -> bool {
    walk(cfg, shape, alpha, a, b, beta, c, None)
}

/// [`sparse_walk`] with an optional epilogue on each finished row.
#[allow(clippy::too_many_arguments)]
fn walk(
    (isa, par, max_density, kc): (Isa, Par, f32, usize),
    [m, n, k]: [usize; 3],
    alpha: f32,
    a: View,
    b: View,
    beta: f32,
    c: &mut ViewMut,
    then: Option<RowThen>,
) -> bool {
    let walk = cfg!(target_arch = "x86_64")
        && matches!(isa, Isa::Avx512 | Isa::Avx512Narrow)
        && isa.available()
        && c.cs == 1
        && m > 0
        && n > 0
        && k > 0
        && alpha != 0.0
        && kc > 0;
    if !walk {
        return false;
    }
    crate::check_views(m, n, k, Some(&a), Some(&b), c);
    // A row-major (a copy when it is a transposed view), and its nonzeros
    // counted on the way.
    let owned_a;
    let (a_rows, nnz) = if a.cs == 1 && a.rs == k {
        let rows = &a.data[..m * k];
        (rows, count_nonzeros(rows, par == Par::Rayon))
    } else {
        owned_a = gather(m, k, a, par == Par::Rayon);
        let nnz = count_nonzeros(&owned_a, par == Par::Rayon);
        (&owned_a[..], nnz)
    };
    if nnz as f64 > max_density as f64 * (m * k) as f64 {
        return false;
    }
    // B's rows contiguous (a copy when it is a transposed view).
    let owned_b;
    let (b_rows, b_rs) = if b.cs == 1 {
        (b.data, b.rs)
    } else {
        owned_b = gather(k, n, b, par == Par::Rayon);
        (&owned_b[..], n)
    };
    let threads = match par {
        Par::Seq => 1,
        Par::Rayon => rayon::current_num_threads().max(1),
    };
    // Sixteen chunks of rows a thread, whole groups of four rows: rows'
    // work differs (a digit's border pixels are all zeros), and a
    // descheduled thread leaves work the others can take. Each chunk runs
    // every depth block, so a block of B is reused by the chunk's rows
    // while it is in cache.
    let per = m.div_ceil(16 * threads).next_multiple_of(4);
    let chunks = m.div_ceil(per);
    let c_rs = c.rs;
    let c_ptr = CPtr(c.data.as_mut_ptr());
    let run = |chunk: usize| {
        let rows = chunk * per..((chunk + 1) * per).min(m);
        let mut scratch = Scratch::new(kc);
        for pc in (0..k).step_by(kc) {
            let kcur = kc.min(k - pc);
            let beta_eff = if pc == 0 { beta } else { 1.0 };
            let b_block = (&b_rows[pc * b_rs..], b_rs, n);
            let a_of = |i: usize| &a_rows[i * k + pc..i * k + pc + kcur];
            let mut i = rows.start;
            while i < rows.end {
                // Four rows at once where there are four left.
                let g = if i + 4 <= rows.end { 4 } else { 1 };
                // Safety: the walk only runs on AVX-512 CPUs; rows of C
                // are disjoint between chunks; the view checks bound each
                // row's n elements and B's block.
                unsafe { scratch.rows(g, i, &a_of, b_block, (alpha, beta_eff), (c_ptr, c_rs)) };
                if pc + kcur == k {
                    if let Some(then) = then {
                        for r in i..i + g {
                            then(r, unsafe { c_ptr.row(r, c_rs, n) });
                        }
                    }
                }
                i += g;
            }
        }
    };
    if threads > 1 && chunks > 1 {
        (0..chunks).into_par_iter().for_each(run);
    } else {
        (0..chunks).for_each(run);
    }
    true
}

/// What runs on each finished row of C: its index and its n values, once
/// per row, on the thread that finished it (so while the row is in cache).
pub type RowThen<'a> = &'a (dyn Fn(usize, &mut [f32]) + Sync);

/// [`sgemm_sparse_a`], then `then` on every row of C (a fused epilogue:
/// e.g. an optimiser step on the gradient's rows). Where the walk does not
/// apply, the dense product runs first and `then` over its rows afterwards,
/// so the values `then` sees are the same bits either way. C must be
/// row-major. Returns whether the sparse walk ran.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_sparse_a_then(
    shape: [usize; 3],
    alpha: f32,
    a: View,
    b: View,
    beta: f32,
    c: ViewMut,
    par: Par,
    then: RowThen,
) -> bool {
    let [m, n, _] = shape;
    assert!(
        c.cs == 1 || m == 0 || n == 0,
        "sgemm_sparse_a_then: C must be row-major"
    );
    let cfg = (Isa::best(), par, MAX_DENSITY);
    walk_or_dense(cfg, shape, alpha, a, b, beta, c, Some(then))
}

/// A walking task's room for the nonzeros of its rows' blocks: positions
/// and values of one row, or of four over their union, each with room for
/// a whole vector stored past the last.
struct Scratch {
    idx: Vec<u32>,
    val: Vec<f32>,
    vals4: Vec<f32>,
}

impl Scratch {
    fn new(kc: usize) -> Scratch {
        Scratch {
            idx: vec![0; kc + 16],
            val: vec![0.0; kc + 16],
            vals4: vec![0.0; 4 * (kc + 16)],
        }
    }

    /// Rows `first..first + g` of C (g = 4, or 1) over one depth block:
    /// `a(i)` is row i of A's block, `b` the block of B (rows, row stride,
    /// n). Four rows walk the union of their nonzeros, so that each row of
    /// B read serves all four (neighbouring pixels, and digits, share most
    /// of their nonzeros).
    ///
    /// Safety: AVX-512; rows `first..first + g` of C are this task's and
    /// hold n values each; B's block holds every row A's block names.
    unsafe fn rows<'a>(
        &mut self,
        g: usize,
        first: usize,
        a: &dyn Fn(usize) -> &'a [f32],
        (b, b_rs, n): (&[f32], usize, usize),
        (alpha, beta): (f32, f32),
        (c, c_rs): (CPtr, usize),
    ) {
        if g == 4 {
            let rows = [0, 1, 2, 3].map(|r| a(first + r));
            let nz = x86::union4(rows, &mut self.idx, &mut self.vals4);
            let w = self.vals4.len() / 4;
            let vals = [0, 1, 2, 3].map(|r| &self.vals4[r * w..r * w + nz]);
            let c_rows = [0, 1, 2, 3].map(|r| c.row(first + r, c_rs, n));
            x86::rows4(&self.idx[..nz], vals, b, b_rs, n, alpha, beta, c_rows);
        } else {
            let nz = x86::nonzeros(a(first), &mut self.idx, &mut self.val);
            let c_row = c.row(first, c_rs, n);
            x86::row(
                &self.idx[..nz],
                &self.val[..nz],
                b,
                b_rs,
                n,
                alpha,
                beta,
                c_row,
            );
        }
    }
}

/// C's base pointer, shared by the tasks that write its disjoint rows.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// Safety: tasks write disjoint rows.
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}
impl CPtr {
    /// Row i's first n elements (a method, so closures capture the whole
    /// Sync wrapper).
    unsafe fn row<'a>(self, i: usize, rs: usize, n: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(i * rs), n)
    }
}

/// The nonzeros of x, counted in parallel blocks over the pool when `par`
/// and x is large (the walk's density test; on one thread it was serial
/// work between two parallel products).
fn count_nonzeros(x: &[f32], par: bool) -> usize {
    const BLOCK: usize = 1 << 14;
    let count = |x: &[f32]| x.iter().filter(|&&v| v != 0.0).count();
    if par && x.len() > 2 * BLOCK {
        x.par_chunks(BLOCK).map(count).sum()
    } else {
        count(x)
    }
}

/// A strided rows x cols view copied row-major (bands of 16 rows over the
/// pool when `par`).
fn gather(rows: usize, cols: usize, v: View, par: bool) -> Vec<f32> {
    if v.rs == 1 && cols > 0 {
        // A transposed row-major matrix: its `cols` rows, `v.cs` apart.
        return transposed_blocks(rows, &[(v.data, v.cs, cols)], par);
    }
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        out.extend((0..cols).map(|j| v.data[i * v.rs + j * v.cs]));
    }
    out
}

/// The transpose of row-major blocks stacked on each other: block b holds
/// `rows_b` rows of `width` values and the result is width x (sum of
/// rows_b), row-major, with block b's rows as its columns after the
/// earlier blocks'. The walk's A of a weight gradient, v^T
/// stacked with v_neg^T, without first copying v and v_neg together.
pub fn transpose_stacked(blocks: &[&[f32]], width: usize, par: bool) -> Vec<f32> {
    let parts: Vec<(&[f32], usize, usize)> = blocks
        .iter()
        .map(|b| {
            assert!(
                width > 0 && b.len() % width == 0,
                "transpose_stacked: ragged block"
            );
            (*b, width, b.len() / width)
        })
        .collect();
    transposed_blocks(width, &parts, par)
}

/// [`transpose_stacked`] for blocks (data, row stride, rows) whose first
/// `width` columns are read. Bands of 16 output rows (over the pool when
/// `par`); with AVX-512, 16 x 16 tiles transposed in registers, the rest
/// one value at a time. Every output value is written once, so the result
/// is never zeroed first.
fn transposed_blocks(width: usize, blocks: &[(&[f32], usize, usize)], par: bool) -> Vec<f32> {
    let total: usize = blocks.iter().map(|b| b.2).sum();
    for &(data, stride, rows) in blocks {
        assert!(
            rows == 0 || (stride >= width && data.len() >= (rows - 1) * stride + width),
            "transpose: block out of bounds"
        );
    }
    let len = width * total;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let tiles = Isa::Avx512.available();
    let band = |(r0, dst): (usize, &mut [std::mem::MaybeUninit<f32>])| {
        let i0 = r0 * 16;
        let n = dst.len() / total;
        let mut off = 0;
        for &(data, stride, rows) in blocks {
            let whole = if tiles && n == 16 { rows / 16 * 16 } else { 0 };
            for j0 in (0..whole).step_by(16) {
                // Safety: AVX-512 (`tiles`); source rows j0..j0 + 16 <=
                // rows, columns i0..i0 + 16 <= width (asserted above); the
                // destination's 16 rows of `total` hold columns off + j0 +
                // 16 <= total.
                unsafe {
                    crate::micro::transpose16(
                        data.as_ptr().add(j0 * stride + i0),
                        stride,
                        dst.as_mut_ptr().add(off + j0).cast::<f32>(),
                        total,
                    )
                };
            }
            for i in 0..n {
                for j in whole..rows {
                    dst[i * total + off + j].write(data[j * stride + i0 + i]);
                }
            }
            off += rows;
        }
    };
    let spare = &mut out.spare_capacity_mut()[..len];
    if par && width > 16 {
        spare.par_chunks_mut(16 * total).enumerate().for_each(band);
    } else {
        spare.chunks_mut(16 * total).enumerate().for_each(band);
    }
    // Safety: the bands cover all `len` values and write each one.
    unsafe { out.set_len(len) };
    out
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    /// Never called off x86_64 (the walk is only chosen with AVX-512).
    pub(super) unsafe fn nonzeros(_: &[f32], _: &mut [u32], _: &mut [f32]) -> usize {
        unreachable!("the sparse walk needs AVX-512")
    }

    /// Never called off x86_64 (the walk is only chosen with AVX-512).
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn row(
        _: &[u32],
        _: &[f32],
        _: &[f32],
        _: usize,
        _: usize,
        _: f32,
        _: f32,
        _: &mut [f32],
    ) {
        unreachable!("the sparse walk needs AVX-512")
    }
    /// Never called off x86_64.
    pub(super) unsafe fn union4(_: [&[f32]; 4], _: &mut [u32], _: &mut [f32]) -> usize {
        unreachable!("the sparse walk needs AVX-512")
    }

    /// Never called off x86_64.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows4(
        _: &[u32],
        _: [&[f32]; 4],
        _: &[f32],
        _: usize,
        _: usize,
        _: f32,
        _: f32,
        _: [&mut [f32]; 4],
    ) {
        unreachable!("the sparse walk needs AVX-512")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The nonzeros of `row` (positions and values, in order) into `idx`
    /// and `val`, which hold at least `row.len() + 16`; returns how many.
    /// A vector at a time: compare, compress in registers, store whole,
    /// advance by the count (a branch per value mispredicts on data like
    /// this about as often as it is taken).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn nonzeros(row: &[f32], idx: &mut [u32], val: &mut [f32]) -> usize {
        assert!(idx.len() >= row.len() + 16 && val.len() >= row.len() + 16);
        let whole = row.len() / 16 * 16;
        let mut nz = 0;
        let mut pos = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let step = _mm512_set1_epi32(16);
        for p in (0..whole).step_by(16) {
            let x = _mm512_loadu_ps(row.as_ptr().add(p));
            let m = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(x, _mm512_setzero_ps());
            _mm512_storeu_ps(val.as_mut_ptr().add(nz), _mm512_maskz_compress_ps(m, x));
            _mm512_storeu_si512(
                idx.as_mut_ptr().add(nz) as *mut __m512i,
                _mm512_maskz_compress_epi32(m, pos),
            );
            nz += m.count_ones() as usize;
            pos = _mm512_add_epi32(pos, step);
        }
        for (p, &x) in row.iter().enumerate().skip(whole) {
            idx[nz] = p as u32;
            val[nz] = x;
            nz += (x != 0.0) as usize;
        }
        nz
    }

    /// A row of n columns cut into strips of at most `max_nv` vectors of 16,
    /// as even as can be: (first column, vectors, mask of the last vector).
    fn strips(n: usize, max_nv: usize) -> impl Iterator<Item = (usize, usize, __mmask16)> {
        let vectors = n.div_ceil(16);
        let count = vectors.div_ceil(max_nv);
        let per = vectors.div_ceil(count.max(1));
        (0..count).map(move |s| {
            let v0 = s * per;
            let nv = per.min(vectors - v0);
            let j0 = v0 * 16;
            let tail = (n - j0).min(nv * 16) - (nv - 1) * 16;
            let mask = if tail == 16 {
                0xffff
            } else {
                (1u16 << tail) - 1
            };
            (j0, nv, mask)
        })
    }

    /// The most zmm accumulators a strip holds (16 of the 32 registers).
    const MAX_NV: usize = 16;

    /// One row of C over one depth block: c = alpha * sum_p val[p] *
    /// B[idx[p], :] + beta * c, in strips of at most 16 vectors.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn row(
        idx: &[u32],
        val: &[f32],
        b: &[f32],
        b_rs: usize,
        n: usize,
        alpha: f32,
        beta: f32,
        c: &mut [f32],
    ) {
        if let Some(&last) = idx.last() {
            assert!(b.len() >= last as usize * b_rs + n, "sgemm: B too short");
        }
        for (j0, nv, mask) in strips(n, MAX_NV) {
            let (bp, cp) = (b.as_ptr().add(j0), c.as_mut_ptr().add(j0));
            macro_rules! dispatch {
                ($($nv:literal)*) => {
                    match nv {
                        $($nv => strip::<$nv>(idx, val, bp, b_rs, mask, alpha, beta, cp),)*
                        _ => unreachable!(),
                    }
                };
            }
            dispatch!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
        }
    }

    /// NV vectors of one row of C (the last one masked): the accumulators
    /// stay in registers over the row's nonzeros.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn strip<const NV: usize>(
        idx: &[u32],
        val: &[f32],
        b: *const f32,
        b_rs: usize,
        mask: __mmask16,
        alpha: f32,
        beta: f32,
        c: *mut f32,
    ) {
        let mut acc = [_mm512_setzero_ps(); NV];
        for (&p, &x) in idx.iter().zip(val) {
            let av = _mm512_set1_ps(x);
            let row = b.add(p as usize * b_rs);
            for (v, a) in acc.iter_mut().enumerate().take(NV - 1) {
                *a = _mm512_fmadd_ps(av, _mm512_loadu_ps(row.add(16 * v)), *a);
            }
            let last = _mm512_maskz_loadu_ps(mask, row.add(16 * (NV - 1)));
            acc[NV - 1] = _mm512_fmadd_ps(av, last, acc[NV - 1]);
        }
        // The dense kernels' combine: fma(C, beta, alpha * acc), C unread
        // when beta is 0.
        let (va, vb) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
        for (v, &s) in acc.iter().enumerate() {
            let m = if v == NV - 1 { mask } else { 0xffff };
            let p = c.add(16 * v);
            let mut x = _mm512_mul_ps(s, va);
            if beta != 0.0 {
                x = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p), vb, x);
            }
            _mm512_mask_storeu_ps(p, m, x);
        }
    }

    /// The union of four rows' nonzeros: their positions into `idx` and,
    /// for each row r, its values there (zeros where only another row is
    /// nonzero) into `vals[r * w..]`, w = vals.len() / 4; `idx` and w hold
    /// at least len + 16. Returns how many.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn union4(rows: [&[f32]; 4], idx: &mut [u32], vals: &mut [f32]) -> usize {
        let len = rows[0].len();
        let w = vals.len() / 4;
        assert!(rows.iter().all(|r| r.len() == len));
        assert!(idx.len() >= len + 16 && w >= len + 16);
        let whole = len / 16 * 16;
        let mut nz = 0;
        let mut pos = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let step = _mm512_set1_epi32(16);
        let zero = _mm512_setzero_ps();
        for p in (0..whole).step_by(16) {
            let x = rows.map(|r| _mm512_loadu_ps(r.as_ptr().add(p)));
            let m = x
                .iter()
                .fold(0, |m, &x| m | _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(x, zero));
            for (r, &xr) in x.iter().enumerate() {
                _mm512_storeu_ps(
                    vals.as_mut_ptr().add(r * w + nz),
                    _mm512_maskz_compress_ps(m, xr),
                );
            }
            _mm512_storeu_si512(
                idx.as_mut_ptr().add(nz) as *mut __m512i,
                _mm512_maskz_compress_epi32(m, pos),
            );
            nz += m.count_ones() as usize;
            pos = _mm512_add_epi32(pos, step);
        }
        for p in whole..len {
            idx[nz] = p as u32;
            for r in 0..4 {
                vals[r * w + nz] = rows[r][p];
            }
            nz += rows.iter().any(|r| r[p] != 0.0) as usize;
        }
        nz
    }

    /// The most zmm accumulators a row of a four-row strip holds (4 x 6
    /// accumulators, 4 broadcasts and a row of B: 29 of the 32 registers).
    const MAX_NV4: usize = 6;

    /// [`row`] for four rows of C over their union of nonzeros (`vals[r]`:
    /// row r's values at `idx`, zeros included). Each row gets the FMAs
    /// [`row`] gives it plus FMAs by zero, which leave its sums unchanged:
    /// the same bits (the module documentation's two exceptions apart).
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows4(
        idx: &[u32],
        vals: [&[f32]; 4],
        b: &[f32],
        b_rs: usize,
        n: usize,
        alpha: f32,
        beta: f32,
        c: [&mut [f32]; 4],
    ) {
        assert!(vals.iter().all(|v| v.len() == idx.len()) && c.iter().all(|c| c.len() >= n));
        if let Some(&last) = idx.last() {
            assert!(b.len() >= last as usize * b_rs + n, "sgemm: B too short");
        }
        let cp = c.map(|c| c.as_mut_ptr());
        for (j0, nv, mask) in strips(n, MAX_NV4) {
            let (bp, cs) = (b.as_ptr().add(j0), cp.map(|p| p.add(j0)));
            macro_rules! dispatch {
                ($($nv:literal)*) => {
                    match nv {
                        $($nv => strip4::<$nv>(idx, vals, bp, b_rs, mask, alpha, beta, cs),)*
                        _ => unreachable!(),
                    }
                };
            }
            dispatch!(1 2 3 4 5 6);
        }
    }

    /// NV vectors of four rows of C (the last vector masked), accumulated
    /// in registers over the union of the rows' nonzeros.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    unsafe fn strip4<const NV: usize>(
        idx: &[u32],
        vals: [&[f32]; 4],
        b: *const f32,
        b_rs: usize,
        mask: __mmask16,
        alpha: f32,
        beta: f32,
        c: [*mut f32; 4],
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; 4];
        for (t, &p) in idx.iter().enumerate() {
            let av = [0, 1, 2, 3].map(|r| _mm512_set1_ps(*vals[r].get_unchecked(t)));
            let row = b.add(p as usize * b_rs);
            for v in 0..NV {
                let bv = if v == NV - 1 {
                    _mm512_maskz_loadu_ps(mask, row.add(16 * v))
                } else {
                    _mm512_loadu_ps(row.add(16 * v))
                };
                for r in 0..4 {
                    acc[r][v] = _mm512_fmadd_ps(av[r], bv, acc[r][v]);
                }
            }
        }
        // The dense kernels' combine, as in `strip`.
        let (va, vb) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
        for r in 0..4 {
            for (v, &s) in acc[r].iter().enumerate() {
                let m = if v == NV - 1 { mask } else { 0xffff };
                let p = c[r].add(16 * v);
                let mut x = _mm512_mul_ps(s, va);
                if beta != 0.0 {
                    x = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p), vb, x);
                }
                _mm512_mask_storeu_ps(p, m, x);
            }
        }
    }
}
