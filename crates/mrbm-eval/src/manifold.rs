//! Precision and recall of a sample set against real data in a feature
//! space (Kynkaanniemi, Karras, Laine, Lehtinen & Aila 2019, "Improved
//! precision and recall metric for assessing generative models").
//!
//! Each set's manifold is the union of balls around its points, each ball's
//! radius the distance to the point's k-th nearest neighbour in its own set.
//! Precision is the fraction of samples inside the real manifold (are the
//! samples realistic?), recall the fraction of real points inside the
//! samples' manifold (is the data covered?). Why the judge needs both: a
//! classifier score and a Frechet distance reward spread, so stroke
//! fragments that the classifier reads as many different digits can beat
//! clean digits of a few classes; fragments lie off the real manifold
//! (low precision), one class repeated covers little of it (low recall).

/// Precision and recall of `samples` against `real`, both row-major
/// `[count, dim]` features, with the k-th neighbour radius (`k` >= 1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
}

/// Squared Euclidean distances between every row of `a` and every row of
/// `b` (`[na, nb]`), in f64.
fn squared_distances(a: &[f32], b: &[f32], dim: usize) -> Vec<f64> {
    let nb = b.len() / dim;
    let mut out = Vec::with_capacity(a.len() / dim * nb);
    for x in a.chunks_exact(dim) {
        for y in b.chunks_exact(dim) {
            out.push(
                x.iter()
                    .zip(y)
                    .map(|(p, q)| {
                        let d = *p as f64 - *q as f64;
                        d * d
                    })
                    .sum(),
            );
        }
    }
    out
}

/// Squared radius of each point's ball: the squared distance to its k-th
/// nearest other point of the same set (the point itself excluded). With
/// k or more duplicates of a point the radius is 0.
fn knn_radii(set: &[f32], dim: usize, k: usize) -> Vec<f64> {
    let n = set.len() / dim;
    let all: Vec<usize> = (0..n).collect();
    radii_among(&squared_distances(set, set, dim), n, &all, k)
}

/// [`knn_radii`] of the `members` of a set whose squared distances `d`
/// (`[n, n]`) are already known, in `members` order.
fn radii_among(d: &[f64], n: usize, members: &[usize], k: usize) -> Vec<f64> {
    members
        .iter()
        .map(|&i| {
            let mut row: Vec<f64> = members
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| d[i * n + j])
                .collect();
            if row.is_empty() {
                return 0.0;
            }
            let kk = k.min(row.len()).max(1) - 1;
            let (_, v, _) = row.select_nth_unstable_by(kk, f64::total_cmp);
            *v
        })
        .collect()
}

/// Pairwise squared distances of one set (`[n, n]`), to score many of its
/// subsets against the rest with [`subset_against_rest`] without
/// recomputing them.
pub fn self_distances(set: &[f32], dim: usize) -> Vec<f64> {
    squared_distances(set, set, dim)
}

/// Precision and recall of the points flagged `inside` against the other
/// points of the same set, from its [`self_distances`] `d`: the same
/// numbers as [`precision_recall`] on the two parts.
pub fn subset_against_rest(d: &[f64], inside: &[bool], k: usize) -> PrecisionRecall {
    let n = inside.len();
    let sub: Vec<usize> = (0..n).filter(|&i| inside[i]).collect();
    let rest: Vec<usize> = (0..n).filter(|&i| !inside[i]).collect();
    let (rest_r, sub_r) = (radii_among(d, n, &rest, k), radii_among(d, n, &sub, k));
    let covered = |points: &[usize], centres: &[usize], radii: &[f64]| {
        if points.is_empty() {
            return 0.0;
        }
        let hit = points
            .iter()
            .filter(|&&i| centres.iter().zip(radii).any(|(&j, &r)| d[i * n + j] <= r))
            .count();
        hit as f64 / points.len() as f64
    };
    PrecisionRecall {
        precision: covered(&sub, &rest, &rest_r),
        recall: covered(&rest, &sub, &sub_r),
    }
}

/// The fraction of `points` that fall inside some ball of `centres` (squared
/// radii `radii`).
fn inside_fraction(points: &[f32], centres: &[f32], radii: &[f64], dim: usize) -> f64 {
    let n = points.len() / dim;
    if n == 0 {
        return 0.0;
    }
    let m = centres.len() / dim;
    let d = squared_distances(points, centres, dim);
    let inside = (0..n)
        .filter(|&i| (0..m).any(|j| d[i * m + j] <= radii[j]))
        .count();
    inside as f64 / n as f64
}

/// Precision and recall of `samples` against `real` (`dim` features per
/// row; both sets need more than `k` rows for the radii to mean anything).
pub fn precision_recall(samples: &[f32], real: &[f32], dim: usize, k: usize) -> PrecisionRecall {
    let real_r = knn_radii(real, dim, k);
    let sample_r = knn_radii(samples, dim, k);
    PrecisionRecall {
        precision: inside_fraction(samples, real, &real_r, dim),
        recall: inside_fraction(real, samples, &sample_r, dim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn gaussian(n: usize, dim: usize, shift: f32, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * dim)
            .map(|_| {
                // Sum of 12 uniforms - 6: close enough to N(0, 1) here.
                let s: f32 = (0..12).map(|_| rng.random::<f32>()).sum();
                s - 6.0 + shift
            })
            .collect()
    }

    #[test]
    fn radii_are_the_kth_neighbour_distances() {
        // Points on a line at 0, 1, 3, 6. Squared distances to the others:
        // 0: 1, 9, 36; 1: 1, 4, 25; 3: 4, 9, 9; 6: 9, 25, 36.
        let set = [0.0f32, 1.0, 3.0, 6.0];
        assert_eq!(knn_radii(&set, 1, 2), vec![9.0, 4.0, 9.0, 25.0]);
        assert_eq!(knn_radii(&set, 1, 1), vec![1.0, 1.0, 4.0, 9.0]);
    }

    #[test]
    fn the_same_distribution_scores_high_both_ways() {
        let real = gaussian(400, 8, 0.0, 1);
        let held_out = gaussian(200, 8, 0.0, 2);
        let pr = precision_recall(&held_out, &real, 8, 3);
        assert!(pr.precision > 0.6 && pr.recall > 0.6, "{pr:?}");
    }

    #[test]
    fn a_subset_against_the_rest_scores_as_the_two_parts_do() {
        let set = gaussian(120, 6, 0.0, 4);
        let inside: Vec<bool> = (0..120).map(|i| i % 4 == 1).collect();
        let part = |flag: bool| -> Vec<f32> {
            (0..120)
                .filter(|&i| inside[i] == flag)
                .flat_map(|i| set[i * 6..i * 6 + 6].to_vec())
                .collect()
        };
        let d = self_distances(&set, 6);
        assert_eq!(
            subset_against_rest(&d, &inside, 3),
            precision_recall(&part(true), &part(false), 6, 3)
        );
    }

    #[test]
    fn far_samples_have_no_precision_and_no_recall() {
        let real = gaussian(300, 8, 0.0, 1);
        let far = gaussian(100, 8, 20.0, 3);
        let pr = precision_recall(&far, &real, 8, 3);
        assert_eq!(
            pr,
            PrecisionRecall {
                precision: 0.0,
                recall: 0.0
            }
        );
    }

    #[test]
    fn one_real_point_repeated_is_precise_but_covers_nothing() {
        let real = gaussian(300, 8, 0.0, 1);
        // The real point nearest the centre, 100 times: inside the real
        // manifold (its own ball) but a ball of radius 0 covers only itself.
        let norms: Vec<f32> = real
            .chunks_exact(8)
            .map(|r| r.iter().map(|x| x * x).sum())
            .collect();
        let best = (0..norms.len())
            .min_by(|&a, &b| norms[a].total_cmp(&norms[b]))
            .unwrap();
        let one: Vec<f32> = (0..100)
            .flat_map(|_| real[best * 8..best * 8 + 8].to_vec())
            .collect();
        let pr = precision_recall(&one, &real, 8, 3);
        assert_eq!(pr.precision, 1.0);
        assert!(pr.recall <= 1.0 / 300.0 + 1e-12, "{pr:?}");
    }
}
