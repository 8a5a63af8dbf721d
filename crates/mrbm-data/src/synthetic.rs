//! The built-in synthetic data set: one bright coloured shape per image on
//! a plain dark coloured background, labelled by shape. Position, size and
//! both colours are random; everything is deterministic given the seed (each
//! image has its own random stream, so parallel generation changes nothing).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::artifact::ImageSet;
use crate::error::{DataError, Result};

/// Shape names, in label order.
pub const SHAPES: &[&str] = &[
    "circle", "square", "triangle", "cross", "diamond", "ring", "x",
];

/// Whether (dx, dy), relative to the centre and in units of the radius,
/// lies inside shape `k`.
#[inline]
fn inside(k: usize, dx: f32, dy: f32) -> bool {
    match k {
        0 => dx * dx + dy * dy <= 1.0,
        1 => dx.abs() <= 0.8 && dy.abs() <= 0.8,
        2 => {
            // Upward triangle: apex (0, -1), base from (-1, 0.8) to (1, 0.8).
            (-1.0..=0.8).contains(&dy) && dx.abs() <= (dy + 1.0) / 1.8
        }
        3 => (dx.abs() <= 0.3 && dy.abs() <= 1.0) || (dy.abs() <= 0.3 && dx.abs() <= 1.0),
        4 => dx.abs() + dy.abs() <= 1.0,
        5 => {
            let d2 = dx * dx + dy * dy;
            (0.3..=1.0).contains(&d2)
        }
        _ => {
            let (u, v) = (
                (dx + dy) * std::f32::consts::FRAC_1_SQRT_2,
                (dx - dy) * std::f32::consts::FRAC_1_SQRT_2,
            );
            (u.abs() <= 0.25 && v.abs() <= 1.0) || (v.abs() <= 0.25 && u.abs() <= 1.0)
        }
    }
}

/// A dark background and a bright shape, each of a random colour. The
/// fixed polarity is a choice (assumption): with it shapes are told apart
/// from pixels by a linear model on RBM features (random colours of either
/// polarity make the task much harder for a small model).
fn colour_pair(rng: &mut ChaCha8Rng) -> ([u8; 3], [u8; 3]) {
    let bg: [u8; 3] = [
        rng.random_range(0..=90),
        rng.random_range(0..=90),
        rng.random_range(0..=90),
    ];
    let fg: [u8; 3] = [
        rng.random_range(150..=255),
        rng.random_range(150..=255),
        rng.random_range(150..=255),
    ];
    (bg, fg)
}

/// Render image `index` of the set into `out` (3 planes of size x size).
fn render(seed: u64, index: u64, label: usize, size: usize, out: &mut [u8]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let (bg, fg) = colour_pair(&mut rng);
    let s = size as f32;
    // Radius 30-42% of the side, centre within 10% of the middle.
    let r = s * rng.random_range(0.30..0.42);
    let cx = s * (0.5 + rng.random_range(-0.1..0.1));
    let cy = s * (0.5 + rng.random_range(-0.1..0.1));
    let plane = size * size;
    // 2x2 supersampling: coverage in quarters gives soft edges.
    const OFF: [f32; 2] = [0.25, 0.75];
    for y in 0..size {
        for x in 0..size {
            let mut cover = 0u32;
            for oy in OFF {
                for ox in OFF {
                    if inside(label, (x as f32 + ox - cx) / r, (y as f32 + oy - cy) / r) {
                        cover += 1;
                    }
                }
            }
            for c in 0..3 {
                let v = (bg[c] as u32 * (4 - cover) + fg[c] as u32 * cover + 2) / 4;
                out[c * plane + y * size + x] = v as u8;
            }
        }
    }
}

/// Generate `n` images of `size` x `size` RGB with labels 0..classes
/// (balanced: image i shows shape i mod classes).
pub fn synthetic(n: usize, size: usize, classes: usize, seed: u64) -> Result<ImageSet> {
    if classes == 0 || classes > SHAPES.len() {
        return Err(DataError::Invalid(format!(
            "synthetic: classes = {classes}, expected 1..={} ({})",
            SHAPES.len(),
            SHAPES.join(", ")
        )));
    }
    if !(4..=1024).contains(&size) {
        return Err(DataError::Invalid(format!(
            "synthetic: size = {size}, expected 4..=1024"
        )));
    }
    if n == 0 {
        return Err(DataError::Invalid("synthetic: n must be at least 1".into()));
    }
    let len = 3 * size * size;
    let mut pixels = vec![
        0u8;
        n.checked_mul(len).ok_or_else(|| DataError::Invalid(
            "synthetic: n * size^2 is too large".into()
        ))?
    ];
    pixels
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(i, out)| render(seed, i as u64, i % classes, size, out));
    let labels = (0..n).map(|i| (i % classes) as i64).collect();
    Ok(ImageSet::new(pixels, n, 3, size, size, labels))
}
