//! Dense symmetric eigendecomposition in f64: Householder reduction to
//! tridiagonal form followed by the implicit QL method with Wilkinson-style
//! shifts (the classical EISPACK tred2/tql2 pair, as in Golub & Van Loan
//! ch. 8). Written here because the Frechet distance needs exactly one
//! operation of a linear-algebra library; no BLAS/LAPACK dependency.
//!
//! Storage: the working matrix is column-major so that the innermost loops
//! (over a column's rows) walk contiguous memory, and each eigenvector comes
//! out as a contiguous column.

use rayon::prelude::*;

/// Eigenvalues (ascending) and, when asked for, the eigenvectors as
/// contiguous columns: vector k is `vectors[k*n..(k+1)*n]`.
pub struct SymEigen {
    pub n: usize,
    pub values: Vec<f64>,
    pub vectors: Option<Vec<f64>>,
}

/// Eigendecomposition of the symmetric `n x n` matrix `a` (row-major; being
/// symmetric it is also its own column-major form). Only the lower triangle
/// is read.
pub fn sym_eigen(a: &[f64], n: usize, want_vectors: bool) -> SymEigen {
    sym_eigen_polling(a, n, want_vectors, &|| false).expect("never cancelled")
}

/// A cancellation poll: true means stop.
pub type Cancel<'a> = &'a (dyn Fn() -> bool + Sync);

/// [`sym_eigen`], polling `cancel` once per Householder step and per QL
/// eigenvalue (O(n^2) work each: milliseconds at n = 2048); None when it
/// said stop.
pub fn sym_eigen_polling(
    a: &[f64],
    n: usize,
    want_vectors: bool,
    cancel: Cancel,
) -> Option<SymEigen> {
    assert_eq!(a.len(), n * n, "matrix size");
    if n == 0 {
        return Some(SymEigen {
            n,
            values: vec![],
            vectors: want_vectors.then(Vec::new),
        });
    }
    // v(r, c) = v[c * n + r]; start from A (symmetric, so no transpose needed).
    let mut v = a.to_vec();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    if !tridiagonalize(&mut v, n, &mut d, &mut e, want_vectors, cancel) {
        return None;
    }
    if !ql_implicit(&mut v, n, &mut d, &mut e, want_vectors, cancel) {
        return None;
    }
    // Sort ascending (QL leaves them nearly sorted; selection keeps vectors in step).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[i].total_cmp(&d[j]));
    let values: Vec<f64> = order.iter().map(|&i| d[i]).collect();
    let vectors = want_vectors.then(|| {
        let mut out = vec![0.0; n * n];
        for (k, &i) in order.iter().enumerate() {
            out[k * n..(k + 1) * n].copy_from_slice(&v[i * n..(i + 1) * n]);
        }
        out
    });
    Some(SymEigen { n, values, vectors })
}

/// Householder reduction (tred2). On return d holds the diagonal, e the
/// sub-diagonal in e[1..], and v the accumulated orthogonal transform.
/// False when `cancel` stopped it.
fn tridiagonalize(
    v: &mut [f64],
    n: usize,
    d: &mut [f64],
    e: &mut [f64],
    want_vectors: bool,
    cancel: Cancel,
) -> bool {
    let at = |r: usize, c: usize| c * n + r;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        if cancel() {
            return false;
        }
        let mut scale = 0.0;
        let mut h = 0.0;
        for dk in &d[..i] {
            scale += dk.abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for dk in &mut d[..i] {
                *dk /= scale;
                h += *dk * *dk;
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for x in e[..i].iter_mut() {
                *x = 0.0;
            }
            // e = A u (lower triangle only), column by column.
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                let col = &v[j * n..j * n + i];
                g = e[j] + col[j] * f;
                for k in j + 1..i {
                    g += col[k] * d[k];
                    e[k] += col[k] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            // Rank-2 update of the remaining lower triangle, columns in parallel.
            let dd = &d[..i];
            let ee = &e[..i];
            v[..i * n]
                .par_chunks_mut(n)
                .enumerate()
                .for_each(|(j, col)| {
                    let (f, g) = (dd[j], ee[j]);
                    for k in j..i {
                        col[k] -= f * ee[k] + g * dd[k];
                    }
                });
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    if want_vectors {
        accumulate_reflections(v, n, d);
    } else {
        // Without accumulation the tridiagonal's diagonal is still on v's.
        for j in 0..n {
            d[j] = v[at(j, j)];
        }
    }
    e[0] = 0.0;
    true
}

/// The end of [`tridiagonalize`] when vectors are wanted: accumulate the
/// Householder reflections into v and leave the diagonal in d.
fn accumulate_reflections(v: &mut [f64], n: usize, d: &mut [f64]) {
    let at = |r: usize, c: usize| c * n + r;
    // Accumulate the Householder reflections into v.
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            let (head, tail) = v.split_at_mut((i + 1) * n);
            let u = &tail[..i + 1]; // column i+1, rows 0..=i
            for k in 0..=i {
                d[k] = u[k] / h;
            }
            let dk = &d[..=i];
            head.par_chunks_mut(n).for_each(|col| {
                let g: f64 = u.iter().zip(&col[..=i]).map(|(a, b)| a * b).sum();
                for (c, dv) in col[..=i].iter_mut().zip(dk) {
                    *c -= g * dv;
                }
            });
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
}

/// Implicit QL iterations on the tridiagonal (d, e), rotating v along (tql2).
/// False when `cancel` stopped it.
fn ql_implicit(
    v: &mut [f64],
    n: usize,
    d: &mut [f64],
    e: &mut [f64],
    want_vectors: bool,
    cancel: Cancel,
) -> bool {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        if cancel() {
            return false;
        }
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut guard = 0;
            loop {
                guard += 1;
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for x in d[l + 2..].iter_mut() {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    if want_vectors {
                        let (lo, hi) = v.split_at_mut((i + 1) * n);
                        let ci = &mut lo[i * n..];
                        let ci1 = &mut hi[..n];
                        for (a, b) in ci.iter_mut().zip(ci1.iter_mut()) {
                            let hb = *b;
                            *b = s * *a + c * hb;
                            *a = c * *a - s * hb;
                        }
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                // 60 sweeps per eigenvalue is far past what QL ever needs; the
                // guard only keeps NaN input from looping forever.
                if e[l].abs() <= eps * tst1 || guard > 60 || !e[l].is_finite() {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    true
}

/// out = a b^T for row-major `a` (m x k) and `b` (n x k), by the `gemm`
/// crate (packed, SIMD, rayon-parallel).
pub fn matmul_abt(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    assert!(a.len() >= m * k && b.len() >= n * k, "matmul_abt sizes");
    let mut out = vec![0.0; m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    // Safety: the strides describe a (m x k, row-major), b^T (k x n, column j
    // = row j of b) and out (m x n, row-major), all within the slices above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par(),
        );
    }
    out
}

/// out = z^T z for row-major `z` (n x d): the d x d Gram matrix of its columns.
pub fn gram_columns(z: &[f64], n: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    gram_columns_acc(z, n, d, &mut out);
    out
}

/// out += z^T z (out is d x d, row-major).
pub fn gram_columns_acc(z: &[f64], n: usize, d: usize, out: &mut [f64]) {
    assert!(z.len() >= n * d && out.len() >= d * d, "gram_columns sizes");
    if n == 0 || d == 0 {
        return;
    }
    // Safety: lhs = z^T (d x n: element (i, t) = z[t d + i]), rhs = z (n x d), dst d x d.
    unsafe {
        gemm::gemm(
            d,
            d,
            n,
            out.as_mut_ptr(),
            1,
            d as isize,
            true,
            z.as_ptr(),
            d as isize,
            1,
            z.as_ptr(),
            1,
            d as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par(),
        );
    }
}

/// [`matmul_abt`] in blocks of rows of `a` of about 2^27 multiply-adds
/// each (tens of milliseconds), polling `cancel` before each; None when it
/// said stop. Each row of the product is computed as by one call.
pub fn matmul_abt_polling(
    a: &[f64],
    b: &[f64],
    m: usize,
    n: usize,
    k: usize,
    cancel: Cancel,
) -> Option<Vec<f64>> {
    let rows = ((1usize << 27) / (n * k).max(1)).max(1);
    let mut out = Vec::with_capacity(m * n);
    for r0 in (0..m).step_by(rows) {
        if cancel() {
            return None;
        }
        let r1 = (r0 + rows).min(m);
        out.extend(matmul_abt(&a[r0 * k..r1 * k], b, r1 - r0, n, k));
    }
    Some(out)
}

fn par() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    }
}

/// Pivoted (rank-revealing) Cholesky of a symmetric positive semi-definite
/// `n x n` matrix, as LAPACK's dpstrf: greedily takes the largest remaining
/// diagonal as pivot and stops once it is <= `tol` (the remainder is then
/// rounding noise of a singular matrix). Returns the factor as r rows of
/// length n (row k is the k-th column of L, in the original index order,
/// zero on earlier pivots), so that a ~= sum_k l_k l_k^T = Lt^T Lt.
///
/// Blocked right-looking form: within a block of `NB` columns each new
/// column is updated only by the block's earlier columns; the trailing
/// matrix then gets one rank-NB update by gemm (most of the flops, at
/// matrix-multiply speed). The diagonal is kept exact at every step so the
/// pivot choice is the unblocked algorithm's.
pub fn pivoted_cholesky(a: &[f64], n: usize, tol: f64) -> (Vec<f64>, usize) {
    pivoted_cholesky_polling(a, n, tol, &|| false).expect("never cancelled")
}

/// [`pivoted_cholesky`], polling `cancel` once per pivot (O(n^2) work, the
/// block's gemm update O(64 n^2)); None when it said stop.
pub fn pivoted_cholesky_polling(
    a: &[f64],
    n: usize,
    tol: f64,
    cancel: Cancel,
) -> Option<(Vec<f64>, usize)> {
    const NB: usize = 64;
    let mut work = a[..n * n].to_vec();
    let mut diag: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    let mut done = vec![false; n];
    let mut lt: Vec<f64> = Vec::new();
    let mut r = 0;
    'outer: while r < n {
        let r0 = r;
        while r < n && r - r0 < NB {
            if cancel() {
                return None;
            }
            let (mut p, mut best) = (usize::MAX, f64::NEG_INFINITY);
            for i in 0..n {
                if !done[i] && diag[i] > best {
                    best = diag[i];
                    p = i;
                }
            }
            // Written so that a NaN pivot stops too.
            if p == usize::MAX || best.partial_cmp(&tol) != Some(std::cmp::Ordering::Greater) {
                flush(&mut work, &lt[r0 * n..], n);
                break 'outer;
            }
            let piv = best.sqrt();
            // Column p of the partially updated matrix (row p: symmetric),
            // minus this block's earlier columns.
            let mut col = work[p * n..(p + 1) * n].to_vec();
            for k in r0..r {
                let f = lt[k * n + p];
                if f != 0.0 {
                    for (o, l) in col.iter_mut().zip(&lt[k * n..(k + 1) * n]) {
                        *o -= f * l;
                    }
                }
            }
            done[p] = true;
            for i in 0..n {
                if done[i] {
                    col[i] = 0.0;
                } else {
                    col[i] /= piv;
                    diag[i] -= col[i] * col[i];
                }
            }
            col[p] = piv;
            lt.extend_from_slice(&col);
            r += 1;
        }
        flush(&mut work, &lt[r0 * n..], n);
    }
    Some((lt, r))
}

/// work -= lb^T lb for the block's factor rows lb (b x n).
fn flush(work: &mut [f64], lb: &[f64], n: usize) {
    let b = lb.len() / n;
    if b == 0 {
        return;
    }
    // Safety: dst n x n row-major; lhs = lb^T (n x b: (i, t) = lb[t n + i]); rhs = lb (b x n).
    unsafe {
        gemm::gemm(
            n,
            n,
            b,
            work.as_mut_ptr(),
            1,
            n as isize,
            true,
            lb.as_ptr(),
            n as isize,
            1,
            lb.as_ptr(),
            1,
            n as isize,
            1.0,
            -1.0,
            false,
            false,
            false,
            par(),
        );
    }
}

/// Four-accumulator dot product (vectorisable; summation order fixed).
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let ac = a.chunks_exact(4);
    let bc = b.chunks_exact(4);
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        acc[0] += x[0] * y[0];
        acc[1] += x[1] * y[1];
        acc[2] += x[2] * y[2];
        acc[3] += x[3] * y[3];
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_sym(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let x: f64 = rng.random::<f64>() * 2.0 - 1.0;
                a[i * n + j] = x;
                a[j * n + i] = x;
            }
        }
        a
    }

    #[test]
    fn reconstructs_random_symmetric_matrices() {
        for &n in &[1usize, 2, 3, 7, 40, 97] {
            let a = random_sym(n, n as u64);
            let eig = sym_eigen(&a, n, true);
            let v = eig.vectors.as_ref().unwrap();
            // A v_k = lambda_k v_k and V orthonormal.
            for k in 0..n {
                let vk = &v[k * n..(k + 1) * n];
                for i in 0..n {
                    let av: f64 = (0..n).map(|j| a[i * n + j] * vk[j]).sum();
                    assert!(
                        (av - eig.values[k] * vk[i]).abs() < 1e-11 * n as f64,
                        "n={n} k={k}"
                    );
                }
                for l in 0..n {
                    let g = dot(vk, &v[l * n..(l + 1) * n]);
                    assert!((g - (k == l) as u8 as f64).abs() < 1e-12 * n as f64);
                }
            }
            assert!(eig.values.windows(2).all(|w| w[0] <= w[1]));
            let only = sym_eigen(&a, n, false);
            for (x, y) in only.values.iter().zip(&eig.values) {
                assert!(
                    (x - y).abs() < 1e-11 * n as f64,
                    "values-only path differs: {x} {y}"
                );
            }
        }
    }

    #[test]
    fn pivoted_cholesky_reconstructs_and_reveals_rank() {
        // Rank 3 PSD matrix in 8 dimensions: B B^T with B 8x3.
        let n = 8;
        let b: Vec<f64> = (0..n * 3)
            .map(|k| ((k * 7 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let a: Vec<f64> = (0..n * n)
            .map(|k| {
                (0..3)
                    .map(|t| b[(k / n) * 3 + t] * b[(k % n) * 3 + t])
                    .sum()
            })
            .collect();
        let maxd = (0..n).map(|i| a[i * n + i]).fold(0.0, f64::max);
        let (lt, r) = pivoted_cholesky(&a, n, n as f64 * f64::EPSILON * maxd);
        assert_eq!(r, 3);
        for i in 0..n {
            for j in 0..n {
                let got: f64 = (0..r).map(|k| lt[k * n + i] * lt[k * n + j]).sum();
                assert!((got - a[i * n + j]).abs() < 1e-12 * maxd);
            }
        }
        // Full rank: exact reconstruction of a random SPD matrix.
        let m = random_sym(12, 5);
        let mut spd = matmul_abt(&m, &m, 12, 12, 12);
        for i in 0..12 {
            spd[i * 12 + i] += 0.1;
        }
        let (lt, r) = pivoted_cholesky(&spd, 12, 1e-14);
        assert_eq!(r, 12);
        for i in 0..12 {
            for j in 0..12 {
                let got: f64 = (0..r).map(|k| lt[k * 12 + i] * lt[k * 12 + j]).sum();
                assert!((got - spd[i * 12 + j]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn gemm_products_match_naive() {
        let (m, n, k) = (37, 21, 13);
        let a: Vec<f64> = (0..m * k).map(|v| (v % 17) as f64 - 8.0).collect();
        let b: Vec<f64> = (0..n * k).map(|v| (v % 5) as f64 * 0.5).collect();
        let c = matmul_abt(&a, &b, m, n, k);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
                assert_eq!(c[i * n + j], want);
            }
        }
        let g = gram_columns(&a, m, k);
        for i in 0..k {
            for j in 0..k {
                let want: f64 = (0..m).map(|t| a[t * k + i] * a[t * k + j]).sum();
                assert_eq!(g[i * k + j], want);
            }
        }
    }

    #[test]
    fn diagonal_and_degenerate_spectra() {
        // Repeated and zero eigenvalues (a rank-1 matrix) must come out exactly enough.
        let n = 6;
        let u: Vec<f64> = (0..n).map(|i| (i as f64 + 1.0) / 10.0).collect();
        let a: Vec<f64> = (0..n * n).map(|k| u[k / n] * u[k % n]).collect();
        let eig = sym_eigen(&a, n, true);
        let norm2: f64 = u.iter().map(|x| x * x).sum();
        assert!((eig.values[n - 1] - norm2).abs() < 1e-14);
        for x in &eig.values[..n - 1] {
            assert!(x.abs() < 1e-15, "{x}");
        }
        let diag = [3.0, -1.0, 2.0, 2.0];
        let mut b = vec![0.0; 16];
        for i in 0..4 {
            b[i * 4 + i] = diag[i];
        }
        assert_eq!(sym_eigen(&b, 4, false).values, vec![-1.0, 2.0, 2.0, 3.0]);
    }
}
