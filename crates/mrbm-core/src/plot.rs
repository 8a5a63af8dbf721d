//! PNG output: image grids (drawn with the `image` crate) and the loss
//! curve (drawn with plotters through mrbm-plot).

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

/// The loss curve of a trained model (from its loss.csv text), drawn by
/// mrbm-plot: axes, ticks, title, legend, y limits from the 1st to the 99th
/// percentile so the first steps' spike does not flatten the rest.
pub fn loss_plot(loss_csv: &str, title: &str, path: &Path) -> Result<(), CoreError> {
    let h = mrbm_plot::LossHistory::parse_csv(loss_csv)
        .ok_or_else(|| CoreError::Image(format!("{}: not a loss history", path.display())))?;
    let chart = mrbm_plot::loss_chart(&h, title, mrbm_plot::YScale::Linear);
    mrbm_plot::save_png(&chart, path).map_err(|e| CoreError::Image(e.to_string()))
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
