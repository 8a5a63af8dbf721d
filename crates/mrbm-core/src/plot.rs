//! PNG output: a loss curve and image grids, drawn with the `image` crate
//! (a plotting library would cost more build time than these few lines).

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::CoreError;

fn save_png(img: &RgbImage, path: &Path) -> Result<(), CoreError> {
    let tmp = path.with_extension("png.partial");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| CoreError::Image(format!("{}: {e}", path.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| CoreError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
    // Bresenham.
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, c);
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// A line plot of `series` (one value per step) with light grid lines at
/// tenths of the range; grey raw values and a black running mean. No text:
/// the numbers are in loss.csv.
pub fn loss_plot(series: &[f64], path: &Path) -> Result<(), CoreError> {
    let (w, h, m) = (640u32, 360u32, 20i64);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let finite: Vec<f64> = series.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.len() >= 2 {
        let (mut lo, mut hi) = finite
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        if hi - lo < 1e-12 {
            lo -= 1.0;
            hi += 1.0;
        }
        let px = |i: usize| {
            m + (i as f64 / (series.len() - 1) as f64 * (w as i64 - 2 * m) as f64) as i64
        };
        let py = |v: f64| h as i64 - m - ((v - lo) / (hi - lo) * (h as i64 - 2 * m) as f64) as i64;
        for t in 0..=10 {
            let y = m + (h as i64 - 2 * m) * t / 10;
            line(&mut img, (m, y), (w as i64 - m, y), Rgb([230, 230, 230]));
        }
        // The zero line, when in range, in light red.
        if lo < 0.0 && hi > 0.0 {
            line(
                &mut img,
                (m, py(0.0)),
                (w as i64 - m, py(0.0)),
                Rgb([255, 190, 190]),
            );
        }
        let mut prev: Option<(i64, i64)> = None;
        for (i, &v) in series.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let p = (px(i), py(v));
            if let Some(q) = prev {
                line(&mut img, q, p, Rgb([170, 170, 170]));
            }
            prev = Some(p);
        }
        let mut run = finite[0];
        let mut prev: Option<(i64, i64)> = None;
        for (i, &v) in series.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            run = 0.9 * run + 0.1 * v;
            let p = (px(i), py(run));
            if let Some(q) = prev {
                line(&mut img, q, p, Rgb([0, 0, 0]));
            }
            prev = Some(p);
        }
    }
    // Axes.
    line(&mut img, (m, m), (m, h as i64 - m), Rgb([0, 0, 0]));
    line(
        &mut img,
        (m, h as i64 - m),
        (w as i64 - m, h as i64 - m),
        Rgb([0, 0, 0]),
    );
    save_png(&img, path)
}

/// A grid of images (u8 NCHW with C = 1 or 3), `cols` per row, 1-pixel
/// white gutters, scaled up by an integer factor so small images stay
/// visible.
pub fn image_grid(
    pixels: &[u8],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cols: usize,
    path: &Path,
) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::User("no images to draw".into()));
    }
    if c != 1 && c != 3 {
        return Err(CoreError::User(format!(
            "a PNG grid needs 1 or 3 channels, got {c}"
        )));
    }
    let cols = cols.clamp(1, n);
    let rows = n.div_ceil(cols);
    let zoom = (64 / h.max(w)).clamp(1, 8);
    let (ch, cw) = (h * zoom + 1, w * zoom + 1);
    let mut img = RgbImage::from_pixel(
        (cols * cw + 1) as u32,
        (rows * ch + 1) as u32,
        Rgb([255, 255, 255]),
    );
    let len = c * h * w;
    for i in 0..n {
        let im = &pixels[i * len..(i + 1) * len];
        let (r0, c0) = ((i / cols) * ch + 1, (i % cols) * cw + 1);
        for y in 0..h * zoom {
            for x in 0..w * zoom {
                let (sy, sx) = (y / zoom, x / zoom);
                let px = |ch: usize| im[ch * h * w + sy * w + sx];
                let rgb = if c == 1 {
                    [px(0); 3]
                } else {
                    [px(0), px(1), px(2)]
                };
                img.put_pixel((c0 + x) as u32, (r0 + y) as u32, Rgb(rgb));
            }
        }
    }
    save_png(&img, path)
}
