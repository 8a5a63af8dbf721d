//! Gaussian statistics of feature sets and the Frechet distance between them
//! (the "FID" once the features are Inception pool3 activations):
//!
//! ```text
//!   d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( (S1^{1/2} S2 S1^{1/2})^{1/2} )
//! ```
//!
//! pytorch-fid computes the last trace as tr(sqrtm(S1 S2)) with scipy's
//! general (Schur) matrix square root, which is ill-conditioned and may turn
//! complex when a covariance is singular (fewer samples than dimensions).
//! Here the trace comes from a symmetric eigendecomposition: factor
//! S1 = L L^T by pivoted (rank-revealing) Cholesky, then the eigenvalues m
//! of the symmetric PSD matrix L^T S2 L, which are the non-zero eigenvalues
//! of S1 S2 and of S1^{1/2} S2 S1^{1/2}, give tr sqrt = sum sqrt(max(m, 0)).
//! Stability for singular covariances (fewer samples than dimensions, or
//! constant features): the factorisation stops at S1's numerical rank r
//! (once every remaining pivot is <= d * eps * max diag(S1), LAPACK dpstrf's
//! default), so L is d x r and the eigenproblem r x r, and the rounding
//! negatives of the PSD spectrum are clamped to zero. No square root of a
//! non-symmetric matrix is ever taken, so the result is always real.

use crate::linalg::{
    gram_columns_acc, matmul_abt_polling, pivoted_cholesky_polling, sym_eigen_polling, Cancel,
};

/// Mean and covariance (unbiased, ddof = 1 as numpy.cov) of a feature set.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    pub dim: usize,
    /// Number of feature vectors the statistics came from.
    pub count: usize,
    pub mu: Vec<f64>,
    /// Row-major [dim, dim], symmetric.
    pub sigma: Vec<f64>,
}

/// What can go wrong computing statistics or the distance. Cancellation is
/// the stages' own [`StageError::Cancelled`](mrbm_stage::StageError::Cancelled),
/// wrapped.
#[derive(Debug, thiserror::Error)]
pub enum FrechetError {
    #[error("statistics need at least 2 feature vectors, got {0}")]
    TooFew(usize),
    #[error("feature buffer of {len} values is not {n} rows of {d}")]
    Shape { len: usize, n: usize, d: usize },
    #[error("statistics have different dimensions: {0} and {1}")]
    DimMismatch(usize, usize),
    #[error("statistics contain NaN or infinite values")]
    NonFinite,
    #[error(transparent)]
    Stage(#[from] mrbm_stage::StageError),
}

impl GaussianStats {
    /// Statistics of `n` rows of `d` features (row-major), accumulated in f64.
    pub fn from_features(x: &[f32], n: usize, d: usize) -> Result<Self, FrechetError> {
        if x.len() != n * d {
            return Err(FrechetError::Shape { len: x.len(), n, d });
        }
        if n < 2 {
            return Err(FrechetError::TooFew(n));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(FrechetError::NonFinite);
        }
        let mut mu = vec![0.0f64; d];
        for row in x.chunks_exact(d) {
            for (m, v) in mu.iter_mut().zip(row) {
                *m += *v as f64;
            }
        }
        mu.iter_mut().for_each(|m| *m /= n as f64);
        // Centred data (two-pass, for accuracy), then z^T z / (n - 1),
        // accumulated over row chunks so memory stays O(chunk * d + d^2)
        // however many images there are (200k CelebA features would be 3 GB
        // as one f64 matrix).
        const CHUNK: usize = 4096;
        let mut sigma = vec![0.0f64; d * d];
        let mut z = vec![0.0f64; CHUNK.min(n) * d];
        for rows in x.chunks(CHUNK * d) {
            let m = rows.len() / d;
            for (zr, row) in z.chunks_exact_mut(d).zip(rows.chunks_exact(d)) {
                for ((o, v), mu_j) in zr.iter_mut().zip(row).zip(&mu) {
                    *o = *v as f64 - mu_j;
                }
            }
            gram_columns_acc(&z[..m * d], m, d, &mut sigma);
        }
        let inv = 1.0 / (n - 1) as f64;
        for i in 0..d {
            for j in 0..i {
                // Exactly symmetric, whatever the kernel's summation order.
                let s = 0.5 * (sigma[i * d + j] + sigma[j * d + i]) * inv;
                sigma[i * d + j] = s;
                sigma[j * d + i] = s;
            }
            sigma[i * d + i] *= inv;
        }
        Ok(GaussianStats {
            dim: d,
            count: n,
            mu,
            sigma,
        })
    }
}

/// The parts of the distance, for reporting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frechet {
    pub distance: f64,
    pub mean_term: f64,
    pub trace_sqrt: f64,
}

/// Frechet distance between N(mu1, s1) and N(mu2, s2), all f64.
pub fn frechet_distance(
    mu1: &[f64],
    s1: &[f64],
    mu2: &[f64],
    s2: &[f64],
) -> Result<Frechet, FrechetError> {
    frechet_distance_polling(mu1, s1, mu2, s2, &|| false)
}

/// [`frechet_distance`], polling `cancel` inside every O(d^3) step (each
/// poll milliseconds of work apart at d = 2048); `Err(Cancelled)` when it
/// said stop.
pub fn frechet_distance_polling(
    mu1: &[f64],
    s1: &[f64],
    mu2: &[f64],
    s2: &[f64],
    cancel: Cancel,
) -> Result<Frechet, FrechetError> {
    let d = mu1.len();
    if mu2.len() != d || s1.len() != d * d || s2.len() != d * d {
        return Err(FrechetError::DimMismatch(d, mu2.len()));
    }
    if [mu1, mu2, s1, s2]
        .iter()
        .any(|v| v.iter().any(|x| !x.is_finite()))
    {
        return Err(FrechetError::NonFinite);
    }
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let tr1: f64 = (0..d).map(|i| s1[i * d + i]).sum();
    let tr2: f64 = (0..d).map(|i| s2[i * d + i]).sum();
    let trace_sqrt = trace_sqrt_product_polling(s1, s2, d, cancel)
        .ok_or(FrechetError::Stage(mrbm_stage::StageError::Cancelled))?;
    Ok(Frechet {
        distance: mean_term + tr1 + tr2 - 2.0 * trace_sqrt,
        mean_term,
        trace_sqrt,
    })
}

/// tr((S1^{1/2} S2 S1^{1/2})^{1/2}) = tr(sqrtm(S1 S2)) for PSD S1, S2.
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], d: usize) -> f64 {
    trace_sqrt_product_polling(s1, s2, d, &|| false).expect("never cancelled")
}

/// [`trace_sqrt_product`] polling `cancel`; None when it said stop.
fn trace_sqrt_product_polling(s1: &[f64], s2: &[f64], d: usize, cancel: Cancel) -> Option<f64> {
    if d == 0 {
        return Some(0.0);
    }
    let maxd = (0..d).map(|i| s1[i * d + i]).fold(0.0f64, f64::max);
    let tol = d as f64 * f64::EPSILON * maxd;
    // S1 = L L^T (rank r); L^T S2 L is symmetric PSD with the non-zero
    // eigenvalues of S1 S2 (and so of S1^{1/2} S2 S1^{1/2}).
    let (lt, r) = pivoted_cholesky_polling(s1, d, tol, cancel)?;
    if r == 0 {
        return Some(0.0);
    }
    // Bt = Lt S2 (S2 symmetric: its rows are its columns), then M = Lt Bt^T.
    let bt = matmul_abt_polling(&lt, s2, r, d, d, cancel)?;
    let mut m = matmul_abt_polling(&lt, &bt, r, r, d, cancel)?;
    // Symmetrise away rounding so the eigensolver sees an exactly symmetric matrix.
    for i in 0..r {
        for j in 0..i {
            let s = 0.5 * (m[i * r + j] + m[j * r + i]);
            m[i * r + j] = s;
            m[j * r + i] = s;
        }
    }
    let e = sym_eigen_polling(&m, r, false, cancel)?;
    // Rounding can leave tiny negative eigenvalues of a PSD matrix: clamp.
    Some(e.values.iter().map(|x| x.max(0.0).sqrt()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The O(d^3) steps poll for cancellation (Cholesky per pivot, the
    /// products per block, the eigensolver per Householder step and per
    /// eigenvalue), and a cancel ends the computation at the poll that sees it.
    #[test]
    fn cancel_is_polled_through_the_distance() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let d = 60;
        let (s1, _) = rotated(&(0..d).map(|i| 1.0 + i as f64).collect::<Vec<_>>(), 1);
        let (s2, _) = rotated(&(0..d).map(|i| 2.0 + 0.5 * i as f64).collect::<Vec<_>>(), 2);
        let mu = vec![0.0; d];
        let polls = AtomicUsize::new(0);
        let count = || {
            polls.fetch_add(1, Ordering::Relaxed);
            false
        };
        let f = frechet_distance_polling(&mu, &s1, &mu, &s2, &count).unwrap();
        assert_eq!(f, frechet_distance(&mu, &s1, &mu, &s2).unwrap());
        // d pivots, 2 product blocks, d - 1 Householder steps, d eigenvalues.
        let total = polls.load(Ordering::Relaxed);
        assert_eq!(total, 3 * d + 1);
        for at in [1, d + 1, total] {
            let seen = AtomicUsize::new(0);
            let stop = || seen.fetch_add(1, Ordering::Relaxed) + 1 >= at;
            assert!(matches!(
                frechet_distance_polling(&mu, &s1, &mu, &s2, &stop),
                Err(FrechetError::Stage(mrbm_stage::StageError::Cancelled))
            ));
            assert_eq!(seen.load(Ordering::Relaxed), at);
        }
    }

    fn diag(v: &[f64]) -> Vec<f64> {
        let d = v.len();
        let mut m = vec![0.0; d * d];
        for i in 0..d {
            m[i * d + i] = v[i];
        }
        m
    }

    /// Q diag(v) Q^T with a fixed random orthogonal Q (from an eigensolve).
    fn rotated(v: &[f64], seed: u64) -> (Vec<f64>, Vec<f64>) {
        let d = v.len();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut a = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..=i {
                let x = rng.random::<f64>() - 0.5;
                a[i * d + j] = x;
                a[j * d + i] = x;
            }
        }
        let q = crate::linalg::sym_eigen(&a, d, true).vectors.unwrap(); // columns orthonormal
        (same_basis(&q, v), q)
    }

    /// The matrix with eigenvalues `v` along the eigenvectors `q` of
    /// [`rotated`]: covariances that commute with its.
    fn same_basis(q: &[f64], v: &[f64]) -> Vec<f64> {
        let d = v.len();
        let mut m = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                m[i * d + j] = (0..d).map(|k| q[k * d + i] * v[k] * q[k * d + j]).sum();
            }
        }
        m
    }

    /// The closed form of tr(S1 + S2 - 2 sqrt(S1 S2)) for commuting
    /// covariances with eigenvalues `a` and `b`: sum a_i + b_i - 2 sqrt(a_i b_i).
    fn commuting_trace(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| x + y - 2.0 * (x * y).sqrt())
            .sum()
    }

    #[test]
    fn identical_distributions_are_at_zero() {
        let (s, _) = rotated(&[4.0, 1.0, 0.25, 2.0, 9.0], 1);
        let mu = vec![0.3, -1.0, 2.0, 0.0, 5.0];
        let f = frechet_distance(&mu, &s, &mu, &s).unwrap();
        assert!(f.distance.abs() < 1e-12, "{f:?}");
    }

    #[test]
    fn commuting_covariances_match_closed_form() {
        // Same eigenvectors: tr sqrt(S1 S2) = sum sqrt(a_i b_i).
        let a = [4.0, 1.0, 0.25, 2.0, 9.0, 0.5];
        let b = [1.0, 1.0, 4.0, 8.0, 0.1, 3.0];
        let d = a.len();
        let (s1, q) = rotated(&a, 2);
        let s2 = same_basis(&q, &b);
        let mu1 = vec![1.0; d];
        let mu2 = vec![0.0; d];
        let want: f64 = d as f64 + commuting_trace(&a, &b);
        let got = frechet_distance(&mu1, &s1, &mu2, &s2).unwrap().distance;
        assert!((got - want).abs() < 1e-11 * want, "{got} vs {want}");
        // Diagonal case as well.
        let got = frechet_distance(&mu1, &diag(&a), &mu2, &diag(&b))
            .unwrap()
            .distance;
        assert!((got - want).abs() < 1e-12 * want);
    }

    #[test]
    fn rank_deficient_covariances_are_stable() {
        // Rank 2 in 6 dimensions (fewer samples than dimensions), same
        // eigenvectors: closed form still sum sqrt(a_i b_i), with zeros.
        let a = [0.0, 3.0, 0.0, 0.0, 2.0, 0.0];
        let b = [0.0, 1.0, 0.0, 5.0, 0.0, 0.0];
        let d = a.len();
        let (s1, q) = rotated(&a, 3);
        let s2 = same_basis(&q, &b);
        let mu = vec![0.0; d];
        let want = commuting_trace(&a, &b);
        let f = frechet_distance(&mu, &s1, &mu, &s2).unwrap();
        assert!(f.distance.is_finite());
        assert!(
            (f.distance - want).abs() < 1e-10 * want,
            "{} vs {want}",
            f.distance
        );
        // Identical singular covariances: exactly zero up to rounding, never negative-large or NaN.
        let z = frechet_distance(&mu, &s1, &mu, &s1).unwrap();
        assert!(z.distance.abs() < 1e-12, "{z:?}");
        // All-zero covariance on one side.
        let zero = vec![0.0; d * d];
        let f = frechet_distance(&mu, &zero, &mu, &s2).unwrap();
        assert!((f.distance - 6.0).abs() < 1e-12);
    }

    #[test]
    fn stats_over_several_chunks_match_naive() {
        let (n, d) = (9000, 3); // more rows than one accumulation chunk
        let x: Vec<f32> = (0..n * d)
            .map(|k| ((k * 37 % 101) as f32 - 50.0) / 7.0 + (k % d) as f32)
            .collect();
        let s = GaussianStats::from_features(&x, n, d).unwrap();
        for i in 0..d {
            let mi: f64 = (0..n).map(|r| x[r * d + i] as f64).sum::<f64>() / n as f64;
            assert!((s.mu[i] - mi).abs() < 1e-12);
            for j in 0..d {
                let mj: f64 = (0..n).map(|r| x[r * d + j] as f64).sum::<f64>() / n as f64;
                let c: f64 = (0..n)
                    .map(|r| (x[r * d + i] as f64 - mi) * (x[r * d + j] as f64 - mj))
                    .sum::<f64>()
                    / (n - 1) as f64;
                assert!(
                    (s.sigma[i * d + j] - c).abs() < 1e-10 * c.abs().max(1.0),
                    "{i},{j}: {} vs {c}",
                    s.sigma[i * d + j]
                );
            }
        }
    }

    #[test]
    fn stats_match_definition() {
        let x: Vec<f32> = vec![1.0, 2.0, 3.0, 5.0, -1.0, 0.0, 2.0, 2.0];
        let s = GaussianStats::from_features(&x, 4, 2).unwrap();
        assert_eq!(s.mu, vec![1.25, 2.25]);
        // numpy.cov(x, rowvar=False)
        let c00 = ((1.0f64 - 1.25).powi(2)
            + (3.0f64 - 1.25).powi(2)
            + (-1.0f64 - 1.25).powi(2)
            + (2.0f64 - 1.25).powi(2))
            / 3.0;
        let c01 = ((1.0 - 1.25) * (2.0 - 2.25)
            + (3.0 - 1.25) * (5.0 - 2.25)
            + (-1.0 - 1.25) * (0.0 - 2.25)
            + (2.0 - 1.25) * (2.0 - 2.25))
            / 3.0;
        assert!((s.sigma[0] - c00).abs() < 1e-14);
        assert!((s.sigma[1] - c01).abs() < 1e-14 && s.sigma[1] == s.sigma[2]);
        assert!(matches!(
            GaussianStats::from_features(&x[..2], 1, 2),
            Err(FrechetError::TooFew(1))
        ));
        assert!(matches!(
            GaussianStats::from_features(&[f32::NAN, 0.0, 1.0, 1.0], 2, 2),
            Err(FrechetError::NonFinite)
        ));
    }
}
