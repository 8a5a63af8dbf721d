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
//! - `colour_spread` (colour images only): how much the colours of the
//!   images differ from one another. Each image is split at its mean
//!   luminance into a foreground (brighter) and a background part; each
//!   part's mean colour is reduced to its chroma (the colour minus its grey
//!   component, so black, white and every grey are 0); the spread is the
//!   root mean square distance of those chromas from their set means,
//!   foreground and background together, relative to the reference's.
//!   Mean-colour images, grey images and one image repeated score 0;
//! - `saturation` (colour images only): the mean chroma length of the
//!   foreground and background colours, relative to the reference's (pale
//!   grey-white samples score near 0 even when they differ);
//! - `nearest_classes` (labelled references only): how many classes at
//!   least 5 % of the samples fall in, each sample taking the label of its
//!   nearest reference image after both are reduced to standardised
//!   luminance (so shape, not colour or brightness, decides). A weak judge
//!   for data whose classes are shapes (the synthetic set); NaN when the
//!   reference has no labels.
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

/// The ratios (1 = like the reference).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub diversity: f64,
    pub contrast: f64,
    pub nearest_reference: f64,
}

/// Foreground and background chroma of every image (C = 3, planar RGB in
/// [0, 1]): the image's pixels split at its mean luminance (mean of the
/// channels); a flat image has both parts equal to its one colour.
pub fn fg_bg_chroma(set: &[Vec<f32>]) -> Vec<[[f64; 3]; 2]> {
    set.iter()
        .map(|im| {
            let plane = im.len() / 3;
            let lum = |j: usize| (im[j] + im[plane + j] + im[2 * plane + j]) as f64 / 3.0;
            let mean_lum = (0..plane).map(lum).sum::<f64>() / plane.max(1) as f64;
            let mut sums = [[0.0f64; 3]; 2];
            let mut counts = [0usize; 2];
            for j in 0..plane {
                let part = (lum(j) <= mean_lum) as usize; // 0: foreground
                counts[part] += 1;
                for (c, s) in sums[part].iter_mut().enumerate() {
                    *s += im[c * plane + j] as f64;
                }
            }
            if counts[0] == 0 {
                sums[0] = sums[1];
                counts[0] = counts[1];
            }
            if counts[1] == 0 {
                sums[1] = sums[0];
                counts[1] = counts[0];
            }
            std::array::from_fn(|p| {
                let col: [f64; 3] = std::array::from_fn(|c| sums[p][c] / counts[p] as f64);
                let grey = col.iter().sum::<f64>() / 3.0;
                col.map(|x| x - grey)
            })
        })
        .collect()
}

/// Root mean square distance of the images' foreground and background
/// chromas from the set's mean chromas (0 for one image).
pub fn chroma_spread(ch: &[[[f64; 3]; 2]]) -> f64 {
    if ch.is_empty() {
        return 0.0;
    }
    let n = ch.len() as f64;
    let mut total = 0.0;
    for p in 0..2 {
        let mean: Vec<f64> = (0..3)
            .map(|c| ch.iter().map(|x| x[p][c]).sum::<f64>() / n)
            .collect();
        total += ch
            .iter()
            .map(|x| (0..3).map(|c| (x[p][c] - mean[c]).powi(2)).sum::<f64>())
            .sum::<f64>()
            / n;
    }
    (total / 2.0).sqrt()
}

/// Mean chroma length of the foreground and background colours.
pub fn mean_saturation(ch: &[[[f64; 3]; 2]]) -> f64 {
    if ch.is_empty() {
        return 0.0;
    }
    ch.iter()
        .map(|x| {
            x.iter()
                .map(|c| c.iter().map(|v| v * v).sum::<f64>().sqrt())
                .sum::<f64>()
                / 2.0
        })
        .sum::<f64>()
        / ch.len() as f64
}

/// Colour ratios of samples against the reference (C = 3 only):
/// (colour_spread, saturation).
pub fn colour(samples: &[u8], n: usize, reference: &[u8], m: usize, len: usize) -> (f64, f64) {
    let s = fg_bg_chroma(&to_unit(samples, n, len));
    let r = fg_bg_chroma(&to_unit(reference, m, len));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    (
        ratio(chroma_spread(&s), chroma_spread(&r)),
        ratio(mean_saturation(&s), mean_saturation(&r)),
    )
}

/// Each image's luminance (mean over `c` channels), standardised to mean 0
/// and standard deviation 1 (a flat image stays all 0).
fn standardised_luminance(set: &[Vec<f32>], c: usize) -> Vec<Vec<f32>> {
    set.iter()
        .map(|im| {
            let plane = im.len() / c.max(1);
            let lum: Vec<f64> = (0..plane)
                .map(|j| (0..c).map(|k| im[k * plane + j] as f64).sum::<f64>() / c as f64)
                .collect();
            let m = lum.iter().sum::<f64>() / plane.max(1) as f64;
            let sd =
                (lum.iter().map(|x| (x - m).powi(2)).sum::<f64>() / plane.max(1) as f64).sqrt();
            lum.iter()
                .map(|x| {
                    if sd > 1e-9 {
                        ((x - m) / sd) as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect()
}

/// How many classes at least 5 % of the samples fall in, each sample taking
/// the label of its nearest reference image in standardised luminance.
/// `labels` are the reference's (negative: unlabelled; NaN if all are).
pub fn nearest_classes(
    samples: &[u8],
    n: usize,
    reference: &[u8],
    labels: &[i64],
    len: usize,
    c: usize,
) -> f64 {
    let s = standardised_luminance(&to_unit(samples, n, len), c);
    let r = standardised_luminance(&to_unit(reference, labels.len(), len), c);
    let labelled: Vec<usize> = (0..r.len()).filter(|&i| labels[i] >= 0).collect();
    if labelled.is_empty() || s.is_empty() {
        return f64::NAN;
    }
    let picks: Vec<i64> = s
        .par_iter()
        .map(|x| {
            let mut best = (f64::INFINITY, 0usize);
            for &i in &labelled {
                let d = dist(x, &r[i]);
                if d < best.0 {
                    best = (d, i);
                }
            }
            labels[best.1]
        })
        .collect();
    let mut counts: std::collections::BTreeMap<i64, usize> = Default::default();
    for l in picks {
        *counts.entry(l).or_default() += 1;
    }
    counts
        .values()
        .filter(|&&k| k as f64 >= 0.05 * s.len() as f64)
        .count() as f64
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

/// Per layer, (stuck channels, channels), judged on the first
/// `images_used(n)` of `pixels`' images: a channel is stuck when its mean
/// activation (over those images and its positions) is below 1 % or above
/// 99 % of the unit's range. The one criterion behind `train`'s dead-unit
/// warning and refusal and `sample`'s `stuck_channels`.
pub fn stuck_counts(
    dbn: &crate::stack::Dbn,
    pixels: &[u8],
    n: usize,
    device: &burn::tensor::Device,
) -> Vec<(usize, usize)> {
    let m = images_used(n);
    let len: usize = dbn.spec.input.iter().product();
    let mut t = dbn.pixels_to_visible(&pixels[..m * len], m, device, burn::tensor::DType::F32);
    let mut out = Vec::new();
    for (i, layer) in dbn.layers.iter().enumerate() {
        t = layer.up(dbn.as_visible_of(i, t));
        let max = layer.spec.hidden_unit.max_value();
        let means = crate::layer::to_f64(
            &t.clone()
                .mean_dims(&[0, 2, 3])
                .reshape([layer.spec.hidden_channels()]),
        );
        let stuck = means
            .iter()
            .filter(|&&x| !(x / max > 0.01 && x / max < 0.99))
            .count();
        out.push((stuck, means.len()));
    }
    out
}

/// How many of `n` images [`stuck_counts`] looks at.
pub fn images_used(n: usize) -> usize {
    n.min(512)
}

/// Per layer, the fraction of hidden channels that are stuck
/// ([`stuck_counts`]).
pub fn stuck_channels(
    dbn: &crate::stack::Dbn,
    pixels: &[u8],
    n: usize,
    device: &burn::tensor::Device,
) -> Vec<f64> {
    stuck_counts(dbn, pixels, n, device)
        .into_iter()
        .map(|(stuck, total)| stuck as f64 / total.max(1) as f64)
        .collect()
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

    /// 400 synthetic shapes (16x16 RGB, 4 classes) of one seed.
    fn shapes(seed: u64) -> mrbm_data::ImageSet {
        mrbm_data::synthetic::synthetic(400, 16, 4, seed).unwrap()
    }

    #[test]
    fn colour_metrics_rank_held_out_shapes_above_mean_grey_and_repeated_images() {
        let (data, held) = (shapes(1), shapes(2));
        let len = data.image_len();
        let (n, px) = (data.n, data.pixels());
        // Held-out real shapes score as the data do.
        let (spread, sat) = colour(held.pixels(), held.n, px, n, len);
        assert!((spread - 1.0).abs() < 0.1, "held-out spread {spread}");
        assert!((sat - 1.0).abs() < 0.1, "held-out saturation {sat}");
        // The data's mean image, 64 times: no spread, little colour.
        let mean_img: Vec<u8> = (0..len)
            .map(|j| ((0..n).map(|i| px[i * len + j] as f64).sum::<f64>() / n as f64).round() as u8)
            .collect();
        let means: Vec<u8> = mean_img.iter().copied().cycle().take(64 * len).collect();
        let (spread, sat) = colour(&means, 64, px, n, len);
        assert!(spread < 1e-9, "spread {spread}");
        assert!(sat < 0.3, "mean image saturation {sat}");
        // The held-out shapes in grey (three equal channels): no colour at all.
        let plane = len / 3;
        let mut grey = held.pixels().to_vec();
        for im in grey.chunks_mut(len) {
            for j in 0..plane {
                let l = (im[j] as u32 + im[plane + j] as u32 + im[2 * plane + j] as u32) / 3;
                for c in 0..3 {
                    im[c * plane + j] = l as u8;
                }
            }
        }
        let (spread, sat) = colour(&grey, held.n, px, n, len);
        assert!(spread < 1e-9 && sat < 1e-9, "grey {spread} {sat}");
        // One real image repeated: colourful, but no spread.
        let one: Vec<u8> = held.pixels()[..len]
            .iter()
            .copied()
            .cycle()
            .take(64 * len)
            .collect();
        let (spread, sat) = colour(&one, 64, px, n, len);
        assert!(spread < 1e-9, "spread {spread}");
        assert!(sat > 0.0);
    }

    #[test]
    fn chroma_closed_forms() {
        // A 2-pixel image: one pure red pixel (foreground), one black.
        let im = vec![vec![1.0f32, 0.0, 0.0, 0.0, 0.0, 0.0]];
        let ch = fg_bg_chroma(&im);
        let third = 1.0 / 3.0;
        assert!((ch[0][0][0] - (1.0 - third)).abs() < 1e-12);
        assert!((ch[0][0][1] + third).abs() < 1e-12);
        assert_eq!(ch[0][1], [0.0; 3]);
        // Two images whose foreground chromas are +-d: spread |d| / sqrt(2).
        let d = [0.3, -0.1, -0.2];
        let set = vec![[d, [0.0; 3]], [[-0.3, 0.1, 0.2], [0.0; 3]]];
        let len = (0.09f64 + 0.01 + 0.04).sqrt();
        assert!((chroma_spread(&set) - len / 2f64.sqrt()).abs() < 1e-12);
        assert!((mean_saturation(&set) - len / 2.0).abs() < 1e-12);
    }

    #[test]
    fn nearest_classes_counts_the_shapes_drawn() {
        let (data, held) = (shapes(1), shapes(2));
        let len = data.image_len();
        let q = |px: &[u8], n: usize| nearest_classes(px, n, data.pixels(), &data.labels, len, 3);
        assert_eq!(q(held.pixels(), held.n), 4.0);
        // One shape repeated: one class.
        let one: Vec<u8> = held.pixels()[..len]
            .iter()
            .copied()
            .cycle()
            .take(64 * len)
            .collect();
        assert_eq!(q(&one, 64), 1.0);
        // Unlabelled references: NaN.
        let none = vec![-1i64; data.n];
        assert!(nearest_classes(held.pixels(), held.n, data.pixels(), &none, len, 3).is_nan());
    }
}
