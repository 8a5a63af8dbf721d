//! The paper's Fig. 2: one row per class, each sample with the forward
//! model's predicted class and its probability written above it (green
//! where the prediction is the conditioning class, red where not). The
//! labels use a built-in 3x5 pixel font (digits and '.'), so no font file
//! is read.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::DcimError;

/// 3x5 glyphs, rows top to bottom, 3 bits each (MSB left).
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        _ => [0; 5],
    }
}

/// Draw `text` at (x, y) with glyphs scaled by `s`; returns the width used.
fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32, s: u32, colour: Rgb<u8>) -> u32 {
    let mut cx = x;
    for ch in text.chars() {
        let g = glyph(ch);
        for (r, bits) in g.iter().enumerate() {
            for c in 0..3u32 {
                if bits & (0b100 >> c) != 0 {
                    for dy in 0..s {
                        for dx in 0..s {
                            let (px, py) = (cx + c * s + dx, y + r as u32 * s + dy);
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, colour);
                            }
                        }
                    }
                }
            }
        }
        cx += 4 * s;
    }
    cx - x
}

/// One labelled cell of the grid.
pub struct Cell<'a> {
    /// Grey pixels, h x w.
    pub pixels: &'a [u8],
    pub predicted: usize,
    pub probability: f64,
    pub agrees: bool,
}

/// Rows of cells (one row per class) -> PNG. Images are zoomed x2.
pub fn labelled_grid(rows: &[Vec<Cell>], h: usize, w: usize, path: &Path) -> Result<(), DcimError> {
    let zoom = 2usize;
    let label_h = 14usize;
    let (cw, ch) = (w * zoom + 4, h * zoom + label_h + 4);
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut img = RgbImage::from_pixel(
        (cols * cw + 2) as u32,
        (rows.len().max(1) * ch + 2) as u32,
        Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let (x0, y0) = (c * cw + 3, r * ch + 3);
            let colour = if cell.agrees {
                Rgb([0, 120, 0])
            } else {
                Rgb([200, 0, 0])
            };
            let p = (cell.probability * 100.0).round().clamp(0.0, 100.0) as u32;
            let prob = if p >= 100 {
                "1.0".to_string()
            } else {
                format!(".{p:02}")
            };
            let used = draw_text(
                &mut img,
                &cell.predicted.to_string(),
                x0 as u32,
                y0 as u32 + 1,
                2,
                colour,
            );
            draw_text(
                &mut img,
                &prob,
                x0 as u32 + used + 6,
                y0 as u32 + 1,
                2,
                colour,
            );
            let top = y0 + label_h;
            for y in 0..h * zoom {
                for x in 0..w * zoom {
                    let v = cell.pixels[(y / zoom) * w + x / zoom];
                    img.put_pixel((x0 + x) as u32, (top + y) as u32, Rgb([v, v, v]));
                }
            }
        }
    }
    let tmp = path.with_extension("png.partial");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| DcimError::Image(format!("{}: {e}", path.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| DcimError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}
