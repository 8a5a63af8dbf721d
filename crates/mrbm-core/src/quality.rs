//! Cheap sample-quality guards against collapse, each relative to a set of
//! real reference images (so 1 means "like the data"):
//!
//! - `diversity`: mean pairwise L2 distance between samples, divided by the
//!   same on the reference (64 copies of one image score 0);
//! - `contrast`: mean within-image pixel standard deviation, divided by the
//!   reference's (a flat grey image scores 0);
//! - `nearest_reference`: mean distance from each sample to its nearest
//!   reference image, divided by the mean nearest-neighbour distance within
//!   the reference (near 0: copies of training images; much above 1: far
//!   from anything real).
//!
//! They are not a replacement for FID or a likelihood: a model that outputs
//! random real-looking noise can pass them. Pixels are compared in [0, 1].

use rayon::prelude::*;

/// At most this many images of either set enter the pairwise sums (the
/// first ones), which keeps the cost O(4e6) distances.
pub const MAX_IMAGES: usize = 2000;

fn to_unit(pixels: &[u8], n: usize, len: usize) -> Vec<Vec<f32>> {
    (0..n.min(MAX_IMAGES))
        .map(|i| {
            pixels[i * len..(i + 1) * len]
                .iter()
                .map(|&p| p as f32 / 255.0)
                .collect()
        })
        .collect()
}

fn dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y) as f64;
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

/// Per-image terms are computed in parallel but added in image order: a
/// parallel f64 sum depends on how the work was split, which made these
/// metrics (and so the keys of tables that hash them) change from run to
/// run in the last bit.
fn ordered_sum(terms: &[f64]) -> f64 {
    terms.iter().sum()
}

/// Mean L2 distance over all unordered pairs.
pub fn mean_pairwise(set: &[Vec<f32>]) -> f64 {
    let n = set.len();
    if n < 2 {
        return 0.0;
    }
    let rows: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| (i + 1..n).map(|j| dist(&set[i], &set[j])).sum::<f64>())
        .collect();
    ordered_sum(&rows) / (n * (n - 1) / 2) as f64
}

/// Mean over images of the standard deviation of their pixels.
pub fn mean_contrast(set: &[Vec<f32>]) -> f64 {
    if set.is_empty() {
        return 0.0;
    }
    set.iter()
        .map(|im| {
            let m = im.iter().map(|&x| x as f64).sum::<f64>() / im.len() as f64;
            (im.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / im.len() as f64).sqrt()
        })
        .sum::<f64>()
        / set.len() as f64
}

/// Mean distance from each of `a` to its nearest in `b`; `skip_self` when
/// `a` and `b` are the same set (the nearest other image).
pub fn mean_nearest(a: &[Vec<f32>], b: &[Vec<f32>], skip_self: bool) -> f64 {
    if a.is_empty() || b.len() < 1 + skip_self as usize {
        return f64::NAN;
    }
    let nearest: Vec<f64> = a
        .par_iter()
        .enumerate()
        .map(|(i, x)| {
            b.iter()
                .enumerate()
                .filter(|(j, _)| !(skip_self && *j == i))
                .map(|(_, y)| dist(x, y))
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    ordered_sum(&nearest) / a.len() as f64
}

/// The three ratios (and the raw values they come from).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub diversity: f64,
    pub contrast: f64,
    pub nearest_reference: f64,
}

/// Quality of `samples` against `reference` (both u8 NCHW with the same
/// image length `len`).
pub fn quality(samples: &[u8], n: usize, reference: &[u8], m: usize, len: usize) -> Quality {
    let s = to_unit(samples, n, len);
    let r = to_unit(reference, m, len);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    Quality {
        diversity: ratio(mean_pairwise(&s), mean_pairwise(&r)),
        contrast: ratio(mean_contrast(&s), mean_contrast(&r)),
        nearest_reference: ratio(mean_nearest(&s, &r, false), mean_nearest(&r, &r, true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_bit_identical_whatever_the_thread_count() {
        let len = 64;
        let img = |seed: usize| -> Vec<u8> {
            (0..300 * len)
                .map(|i| ((i * 2654435761usize + seed * 97) >> 7) as u8)
                .collect()
        };
        let (s, r) = (img(1), img(2));
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| quality(&s, 300, &r, 300, len))
        };
        let one = on(1);
        for threads in [2, 3, 7] {
            let q = on(threads);
            assert_eq!(q.diversity.to_bits(), one.diversity.to_bits(), "{threads}");
            assert_eq!(
                q.nearest_reference.to_bits(),
                one.nearest_reference.to_bits(),
                "{threads}"
            );
        }
    }

    #[test]
    fn closed_forms() {
        // Two images at distance 2 (4 pixels differing by 1): pairwise 2.
        let a = vec![vec![0.0f32; 4], vec![1.0f32; 4]];
        assert!((mean_pairwise(&a) - 2.0).abs() < 1e-12);
        // Half 0, half 1: std 0.5.
        let b = vec![vec![0.0f32, 1.0, 0.0, 1.0]];
        assert!((mean_contrast(&b) - 0.5).abs() < 1e-12);
        assert!((mean_nearest(&a, &a, true) - 2.0).abs() < 1e-12);
        assert_eq!(mean_nearest(&a, &a, false), 0.0);
    }

    #[test]
    fn copies_of_one_grey_image_score_zero_and_the_data_scores_one() {
        let len = 16;
        let real: Vec<u8> = (0..50 * len)
            .map(|i| ((i * 37 + i / 7 * 11) % 256) as u8)
            .collect();
        let grey = vec![128u8; 64 * len];
        let q = quality(&grey, 64, &real, 50, len);
        assert_eq!(q.diversity, 0.0);
        assert_eq!(q.contrast, 0.0);
        let q = quality(&real, 50, &real, 50, len);
        assert!((q.diversity - 1.0).abs() < 1e-12);
        assert!((q.contrast - 1.0).abs() < 1e-12);
        assert_eq!(q.nearest_reference, 0.0);
    }
}
