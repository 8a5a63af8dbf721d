//! Image operations: crop, resize (fast_image_resize, Pillow-compatible
//! antialiased convolution), grayscale, and their TOML spellings.
//!
//! Order, wherever several are asked for: crop, then resize, then grayscale.

use std::fmt;

use fast_image_resize as fr;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::artifact::ImageSet;
use crate::error::{DataError, Result};

/// A crop. TOML spellings:
/// - `crop = 140`: centre crop 140x140;
/// - `crop = [120, 100]`: centre crop, width 120, height 100;
/// - `crop = "square"`: the largest centred square;
/// - `crop = { x = 19, y = 39, w = 140, h = 140 }`: a box (left, top, width, height).
///
/// Centre crops start at floor((W - w) / 2), floor((H - h) / 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crop {
    Centre { w: u32, h: u32 },
    Square,
    Box { x: u32, y: u32, w: u32, h: u32 },
}

impl Crop {
    /// The (left, top, width, height) rectangle for a `w` x `h` image, or
    /// None when it does not fit.
    pub fn rect(&self, w: u32, h: u32) -> Option<(u32, u32, u32, u32)> {
        let r = match *self {
            Crop::Centre { w: cw, h: ch } => {
                if cw > w || ch > h {
                    return None;
                }
                ((w - cw) / 2, (h - ch) / 2, cw, ch)
            }
            Crop::Square => {
                let s = w.min(h);
                ((w - s) / 2, (h - s) / 2, s, s)
            }
            Crop::Box { x, y, w: cw, h: ch } => (x, y, cw, ch),
        };
        let fits = r.2 > 0
            && r.3 > 0
            && r.0.checked_add(r.2).is_some_and(|e| e <= w)
            && r.1.checked_add(r.3).is_some_and(|e| e <= h);
        fits.then_some(r)
    }

    /// The output size when it does not depend on the image (not `square`).
    pub fn fixed_size(&self) -> Option<(u32, u32)> {
        match *self {
            Crop::Centre { w, h } | Crop::Box { w, h, .. } => Some((w, h)),
            Crop::Square => None,
        }
    }

    fn validate(&self) -> Result<(), String> {
        match *self {
            Crop::Centre { w, h } | Crop::Box { w, h, .. } if w == 0 || h == 0 => {
                Err("crop width and height must be at least 1".into())
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Crop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Crop::Centre { w, h } => write!(f, "centre {w}x{h}"),
            Crop::Square => write!(f, "centre square"),
            Crop::Box { x, y, w, h } => write!(f, "box {w}x{h} at ({x}, {y})"),
        }
    }
}

impl Serialize for Crop {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match *self {
            Crop::Centre { w, h } => [w, h].serialize(s),
            Crop::Square => s.serialize_str("square"),
            Crop::Box { x, y, w, h } => {
                let mut m = s.serialize_map(Some(4))?;
                m.serialize_entry("x", &x)?;
                m.serialize_entry("y", &y)?;
                m.serialize_entry("w", &w)?;
                m.serialize_entry("h", &h)?;
                m.end()
            }
        }
    }
}

fn to_u32<E: de::Error>(v: i64, what: &str) -> std::result::Result<u32, E> {
    u32::try_from(v).map_err(|_| {
        E::custom(format!(
            "{what} must be between 0 and {}, found {v}",
            u32::MAX
        ))
    })
}

/// Reads a `[a, b]` pair of non-negative integers.
fn read_pair<'de, A: SeqAccess<'de>>(
    mut seq: A,
    what: &str,
) -> std::result::Result<(u32, u32), A::Error> {
    let a: i64 = seq
        .next_element()?
        .ok_or_else(|| de::Error::custom(format!("{what}: expected [width, height]")))?;
    let b: i64 = seq
        .next_element()?
        .ok_or_else(|| de::Error::custom(format!("{what}: expected [width, height]")))?;
    if seq.next_element::<de::IgnoredAny>()?.is_some() {
        return Err(de::Error::custom(format!(
            "{what}: expected two numbers [width, height]"
        )));
    }
    Ok((to_u32(a, what)?, to_u32(b, what)?))
}

impl<'de> Deserialize<'de> for Crop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Crop;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a side (140), [width, height], \"square\" or { x, y, w, h }")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Crop, E> {
                let s = to_u32(v, "crop")?;
                Ok(Crop::Centre { w: s, h: s })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Crop, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Crop, E> {
                match v {
                    "square" => Ok(Crop::Square),
                    _ => Err(E::custom(format!("unknown crop `{v}`: expected a number, [width, height], \"square\" or {{ x, y, w, h }}"))),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Crop, A::Error> {
                let (w, h) = read_pair(seq, "crop")?;
                Ok(Crop::Centre { w, h })
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Crop, A::Error> {
                let (mut x, mut y, mut w, mut h) = (None, None, None, None);
                while let Some(k) = map.next_key::<String>()? {
                    let v: i64 = map.next_value()?;
                    let slot = match k.as_str() {
                        "x" => &mut x,
                        "y" => &mut y,
                        "w" => &mut w,
                        "h" => &mut h,
                        _ => return Err(de::Error::unknown_field(&k, &["x", "y", "w", "h"])),
                    };
                    *slot = Some(to_u32(v, "crop")?);
                }
                let w = w.ok_or_else(|| de::Error::missing_field("w"))?;
                let h = h.ok_or_else(|| de::Error::missing_field("h"))?;
                match (x, y) {
                    (Some(x), Some(y)) => Ok(Crop::Box { x, y, w, h }),
                    (None, None) => Ok(Crop::Centre { w, h }),
                    _ => Err(de::Error::custom(
                        "crop: give both x and y (a box) or neither (centred)",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// An output size: `resize = 64` (square) or `resize = [width, height]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub w: u32,
    pub h: u32,
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        [self.w, self.h].serialize(s)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a side (64) or [width, height]")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Size, E> {
                let s = to_u32(v, "resize")?;
                Ok(Size { w: s, h: s })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Size, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Size, A::Error> {
                let (w, h) = read_pair(seq, "resize")?;
                Ok(Size { w, h })
            }
        }
        d.deserialize_any(V)
    }
}

/// Resampling filter, by name. All but `nearest` are antialiased
/// convolutions whose support grows with the reduction factor, as in Pillow
/// (`bilinear` = Pillow's BILINEAR, `bicubic` = BICUBIC, `lanczos3` = LANCZOS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Nearest,
    Box,
    #[default]
    Bilinear,
    Hamming,
    Bicubic,
    Mitchell,
    Lanczos3,
}

/// What to do with colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gray {
    /// Keep the channels as they are.
    #[default]
    Off,
    /// One luminance channel.
    One,
    /// Luminance repeated in three equal channels (e.g. to colourise).
    Three,
}

impl Gray {
    pub fn from_flags(grayscale: bool, keep_channels: bool) -> Self {
        match (grayscale, keep_channels) {
            (false, _) => Gray::Off,
            (true, false) => Gray::One,
            (true, true) => Gray::Three,
        }
    }

    /// Output channel count for `c` input channels.
    pub fn channels(self, c: usize) -> usize {
        match self {
            Gray::Off => c,
            Gray::One => 1,
            Gray::Three => 3,
        }
    }
}

/// ITU-R 601-2 luma with Pillow's fixed-point rounding (`convert("L")`),
/// so grey images match Pillow's exactly.
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Largest crop or resize side accepted (assumption: far above any data
/// set here; keeps buffer sizes far from overflow).
pub const MAX_SIDE: u32 = 1 << 15;

/// The per-image pipeline: optional crop, optional resize, colour handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageOps {
    pub crop: Option<Crop>,
    pub resize: Option<Size>,
    pub filter: Filter,
    pub gray: Gray,
}

impl ImageOps {
    pub fn is_identity(&self) -> bool {
        self.crop.is_none() && self.resize.is_none() && self.gray == Gray::Off
    }

    /// Check the sizes are usable (no zero sides).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = self.crop {
            c.validate()?;
            if c.fixed_size()
                .is_some_and(|(w, h)| w > MAX_SIDE || h > MAX_SIDE)
            {
                return Err(format!("crop sides must be at most {MAX_SIDE}"));
            }
        }
        if let Some(s) = self.resize {
            if s.w == 0 || s.h == 0 {
                return Err("resize width and height must be at least 1".into());
            }
            if s.w > MAX_SIDE || s.h > MAX_SIDE {
                return Err(format!("resize sides must be at most {MAX_SIDE}"));
            }
        }
        Ok(())
    }

    /// Output (width, height) for a `w` x `h` input; `what` names the image
    /// in the error when the crop does not fit.
    pub fn out_size(&self, w: u32, h: u32, what: &dyn Fn() -> String) -> Result<(u32, u32)> {
        let (mut ow, mut oh) = (w, h);
        if let Some(c) = self.crop {
            let r = c.rect(w, h).ok_or_else(|| DataError::CropOutOfBounds {
                what: what(),
                crop: c.to_string(),
                w,
                h,
            })?;
            (ow, oh) = (r.2, r.3);
        }
        if let Some(s) = self.resize {
            (ow, oh) = (s.w, s.h);
        }
        Ok((ow, oh))
    }

    /// The output size when it is known without looking at an image.
    pub fn fixed_out_size(&self) -> Option<(u32, u32)> {
        self.resize
            .map(|s| (s.w, s.h))
            .or_else(|| self.crop.and_then(|c| c.fixed_size()))
    }
}

/// Crop and resize one image of `pt` pixels (`channels` bytes each,
/// interleaved) into `dst` (exactly ow*oh*channels bytes).
fn crop_resize(
    resizer: &mut fr::Resizer,
    src: &[u8],
    w: u32,
    h: u32,
    pt: fr::PixelType,
    ops: &ImageOps,
    what: &dyn Fn() -> String,
) -> Result<(Vec<u8>, u32, u32)> {
    let channels = pt.size();
    let (cx, cy, cw, ch) = match ops.crop {
        Some(c) => c.rect(w, h).ok_or_else(|| DataError::CropOutOfBounds {
            what: what(),
            crop: c.to_string(),
            w,
            h,
        })?,
        None => (0, 0, w, h),
    };
    let (ow, oh) = ops.resize.map_or((cw, ch), |s| (s.w, s.h));
    let cropped: std::borrow::Cow<[u8]> = if (cx, cy, cw, ch) == (0, 0, w, h) {
        std::borrow::Cow::Borrowed(src)
    } else {
        let mut out = Vec::with_capacity((cw as usize * ch as usize) * channels);
        let stride = w as usize * channels;
        for row in cy..cy + ch {
            let start = row as usize * stride + cx as usize * channels;
            out.extend_from_slice(&src[start..start + cw as usize * channels]);
        }
        std::borrow::Cow::Owned(out)
    };
    if (ow, oh) == (cw, ch) {
        return Ok((cropped.into_owned(), ow, oh));
    }
    if ops.filter != Filter::Nearest {
        // Pillow-exact convolution (see resample.rs for why not fast_image_resize).
        let out = crate::resample::resize_u8(
            &cropped,
            channels,
            cw as usize,
            ch as usize,
            ow as usize,
            oh as usize,
            ops.filter,
        );
        return Ok((out, ow, oh));
    }
    let fail = |e: String| DataError::Invalid(format!("{}: resize failed: {e}", what()));
    let view = fr::images::ImageRef::new(cw, ch, &cropped, pt).map_err(|e| fail(e.to_string()))?;
    let mut dst = fr::images::Image::new(ow, oh, pt);
    let opts = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Nearest);
    resizer
        .resize(&view, &mut dst, &opts)
        .map_err(|e| fail(e.to_string()))?;
    Ok((dst.into_vec(), ow, oh))
}

/// Apply `ops` to an interleaved RGB8 image and write the result, planar
/// (C, H, W), into `out`, which must hold exactly C*oh*ow bytes where
/// (ow, oh) = ops.out_size(w, h) and C = ops.gray.channels(3).
pub fn process_rgb(
    resizer: &mut fr::Resizer,
    rgb: &[u8],
    w: u32,
    h: u32,
    ops: &ImageOps,
    out: &mut [u8],
    what: &dyn Fn() -> String,
) -> Result<()> {
    let (buf, ow, oh) = if ops.crop.is_none() && ops.resize.is_none() {
        (std::borrow::Cow::Borrowed(rgb), w, h)
    } else {
        let (v, ow, oh) = crop_resize(resizer, rgb, w, h, fr::PixelType::U8x3, ops, what)?;
        (std::borrow::Cow::Owned(v), ow, oh)
    };
    let plane = ow as usize * oh as usize;
    let c = ops.gray.channels(3);
    if out.len() != c * plane {
        return Err(DataError::Invalid(format!(
            "{}: internal: output buffer of {} bytes for {c}x{oh}x{ow}",
            what(),
            out.len()
        )));
    }
    match ops.gray {
        Gray::Off => {
            let (r, rest) = out.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            for (i, px) in buf.chunks_exact(3).enumerate() {
                r[i] = px[0];
                g[i] = px[1];
                b[i] = px[2];
            }
        }
        Gray::One | Gray::Three => {
            for (i, px) in buf.chunks_exact(3).enumerate() {
                out[i] = luma(px[0], px[1], px[2]);
            }
            if ops.gray == Gray::Three {
                let (first, rest) = out.split_at_mut(plane);
                rest[..plane].copy_from_slice(first);
                rest[plane..].copy_from_slice(first);
            }
        }
    }
    Ok(())
}

/// Apply `ops` to one planar image (`c` planes of `w` x `h`) into `out`
/// (C' planes of the output size). Each plane is resized on its own: the
/// convolution treats channels independently, so this equals resizing the
/// interleaved image.
pub fn process_planar(
    resizer: &mut fr::Resizer,
    (src, c, w, h): (&[u8], usize, u32, u32),
    ops: &ImageOps,
    out: &mut [u8],
    what: &dyn Fn() -> String,
) -> Result<()> {
    let (ow, oh) = ops.out_size(w, h, what)?;
    let plane_in = w as usize * h as usize;
    let plane = ow as usize * oh as usize;
    let mut planes: Vec<std::borrow::Cow<[u8]>> = Vec::with_capacity(c);
    for ch in 0..c {
        let p = &src[ch * plane_in..(ch + 1) * plane_in];
        if ops.crop.is_none() && ops.resize.is_none() {
            planes.push(std::borrow::Cow::Borrowed(p));
        } else {
            planes.push(std::borrow::Cow::Owned(
                crop_resize(resizer, p, w, h, fr::PixelType::U8, ops, what)?.0,
            ));
        }
    }
    let oc = ops.gray.channels(c);
    if out.len() != oc * plane {
        return Err(DataError::Invalid(format!(
            "{}: internal: output buffer of {} bytes for {oc}x{oh}x{ow}",
            what(),
            out.len()
        )));
    }
    match (ops.gray, c) {
        (Gray::Off, _) => {
            for (ch, p) in planes.iter().enumerate() {
                out[ch * plane..(ch + 1) * plane].copy_from_slice(p);
            }
        }
        (g, _) => {
            let (first, rest) = out.split_at_mut(plane);
            if c >= 3 {
                for i in 0..plane {
                    first[i] = luma(planes[0][i], planes[1][i], planes[2][i]);
                }
            } else {
                // Already grey (or two channels: take the first).
                first.copy_from_slice(&planes[0]);
            }
            if g == Gray::Three {
                rest[..plane].copy_from_slice(first);
                rest[plane..].copy_from_slice(first);
            }
        }
    }
    Ok(())
}

/// Apply `ops` to every image of a set, in parallel (rayon's current pool),
/// calling `tick` once per image; checks `cancel` between images.
pub fn transform_set(set: &ImageSet, ops: &ImageOps, ctl: &crate::Ctl) -> Result<ImageSet> {
    use rayon::prelude::*;
    let (w, h) = (set.w as u32, set.h as u32);
    if ops.is_identity() {
        return Ok(ImageSet::new(
            set.pixels().to_vec(),
            set.n,
            set.c,
            set.h,
            set.w,
            set.labels.clone(),
        ));
    }
    let (ow, oh) = ops.out_size(w, h, &|| "every image".to_string())?;
    let oc = ops.gray.channels(set.c);
    let olen = oc * (ow as usize * oh as usize);
    let total = set.n.checked_mul(olen).ok_or_else(|| {
        DataError::Invalid(format!(
            "{} images of {oc}x{oh}x{ow} do not fit in memory",
            set.n
        ))
    })?;
    let mut out = vec![0u8; total];
    out.par_chunks_mut(olen.max(1))
        .enumerate()
        .try_for_each_init(fr::Resizer::new, |resizer, (i, dst)| {
            ctl.check()?;
            process_planar(resizer, (set.image(i), set.c, w, h), ops, dst, &|| {
                format!("image {i}")
            })?;
            ctl.bar.inc(1);
            Ok::<(), DataError>(())
        })?;
    Ok(ImageSet::new(
        out,
        set.n,
        oc,
        oh as usize,
        ow as usize,
        set.labels.clone(),
    ))
}
