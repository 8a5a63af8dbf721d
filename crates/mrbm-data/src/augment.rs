//! The `augment` stage kind: an image set with mirrored and shifted copies
//! appended (e.g. 16 faces -> 32 with horizontal flips; 7,000 digits ->
//! 35,000 with one-pixel shifts in the four directions).

use mrbm_stage::{
    resolve_file, InputSlot, Metrics, ParamError, StageContext, StageError, TypedStage,
};
use serde::{Deserialize, Serialize};

use crate::artifact::ImageSet;

/// Parameters of `augment`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentParams {
    /// Append each image mirrored left-right (after all the originals,
    /// same labels).
    pub hflip: bool,
    /// Append copies shifted by 1, 2, ... `shifts` pixels up, down, left
    /// and right (4 x `shifts` copies of every image, after the originals
    /// and their mirrors; the border row or column is repeated into the
    /// gap, which is the background's zero on MNIST). 0: none.
    #[serde(skip_serializing_if = "is_zero")]
    pub shifts: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// Images (with labels) above which `augment` refuses: the output is held in
/// memory and written at once.
const MAX_OUTPUT_BYTES: usize = 8 << 30;

/// `set` with its left-right mirror images appended.
pub fn with_hflips(set: &ImageSet) -> ImageSet {
    let (c, h, w) = (set.c, set.h, set.w);
    let mut px = set.pixels().to_vec();
    for i in 0..set.n {
        let img = set.image(i);
        for ch in 0..c {
            for y in 0..h {
                let row = &img[(ch * h + y) * w..(ch * h + y + 1) * w];
                px.extend(row.iter().rev());
            }
        }
    }
    let mut labels = set.labels.clone();
    labels.extend_from_slice(&set.labels);
    ImageSet::new(px, 2 * set.n, c, h, w, labels)
}

/// `set` with 4 x `shifts` shifted copies of every image appended: for
/// d = 1..=shifts, the images moved d pixels down, up, right and left, in
/// that order (the vacated rows or columns repeat the nearest edge).
pub fn with_shifts(set: &ImageSet, shifts: usize) -> ImageSet {
    let (c, h, w) = (set.c, set.h, set.w);
    let mut px = set.pixels().to_vec();
    let mut labels = set.labels.clone();
    for d in 1..=shifts as isize {
        for (dy, dx) in [(d, 0), (-d, 0), (0, d), (0, -d)] {
            for i in 0..set.n {
                let img = set.image(i);
                for ch in 0..c {
                    let plane = &img[ch * h * w..(ch + 1) * h * w];
                    for y in 0..h as isize {
                        let sy = (y - dy).clamp(0, h as isize - 1) as usize;
                        for x in 0..w as isize {
                            let sx = (x - dx).clamp(0, w as isize - 1) as usize;
                            px.push(plane[sy * w + sx]);
                        }
                    }
                }
            }
            labels.extend_from_slice(&set.labels);
        }
    }
    ImageSet::new(px, set.n * (1 + 4 * shifts), c, h, w, labels)
}

pub struct AugmentStage;

const AUGMENT_INPUTS: &[InputSlot] = &[InputSlot::required(
    "data",
    Some("data.safetensors"),
    "the image set to augment",
)];

impl TypedStage for AugmentStage {
    const KIND: &'static str = "augment";
    const VERSION: u32 = 1;
    const INPUTS: &'static [InputSlot] = AUGMENT_INPUTS;
    const ABOUT: &'static str =
        "append mirrored (hflip) and shifted (shifts) copies of an image set";
    type Params = AugmentParams;

    fn validate(p: &AugmentParams) -> Result<(), ParamError> {
        if !p.hflip && p.shifts == 0 {
            return Err(ParamError::new(
                "hflip",
                "augment does nothing: set hflip = true, shifts = 1 (or more), or both",
            ));
        }
        if p.shifts > 8 {
            return Err(ParamError::new(
                "shifts",
                format!(
                    "shifts = {} appends {} copies of every image; at most 8 (32 copies) is accepted",
                    p.shifts,
                    4 * p.shifts
                ),
            ));
        }
        Ok(())
    }

    fn run(&self, ctx: &StageContext, p: AugmentParams) -> Result<Metrics, StageError> {
        let input = resolve_file(ctx.input("data")?, "data.safetensors");
        let set = ImageSet::read(&input).map_err(|e| StageError::User(e.to_string()))?;
        let copies = (1 + p.hflip as usize) * (1 + 4 * p.shifts);
        let bytes = set.pixels().len().saturating_mul(copies);
        if bytes > MAX_OUTPUT_BYTES {
            return Err(StageError::User(format!(
                "augment would write {copies} x {} images ({:.1} GiB) and holds them in memory; \
                 the limit is {} GiB: subset the data first or use fewer shifts",
                set.n,
                bytes as f64 / (1u64 << 30) as f64,
                MAX_OUTPUT_BYTES >> 30
            )));
        }
        let out = if p.hflip { with_hflips(&set) } else { set };
        let out = if p.shifts > 0 {
            with_shifts(&out, p.shifts)
        } else {
            out
        };
        out.write(&ctx.out("data.safetensors"))
            .map_err(|e| StageError::Failed(e.to_string()))?;
        let mut m = Metrics::new();
        m.insert("images".into(), out.n as f64);
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hflip_appends_mirrored_copies() {
        // 2 images, 2 channels, 2x3.
        let px: Vec<u8> = (0..24).collect();
        let set = ImageSet::new(px.clone(), 2, 2, 2, 3, vec![4, 7]);
        let out = with_hflips(&set);
        assert_eq!((out.n, out.c, out.h, out.w), (4, 2, 2, 3));
        assert_eq!(&out.pixels()[..24], &px[..]);
        assert_eq!(out.image(2), &[2, 1, 0, 5, 4, 3, 8, 7, 6, 11, 10, 9]);
        assert_eq!(out.image(3)[..3], [14, 13, 12]);
        assert_eq!(out.labels, vec![4, 7, 4, 7]);
        // Twice mirrored is the original.
        let back = with_hflips(&ImageSet::new(out.image(2).to_vec(), 1, 2, 2, 3, vec![0]));
        assert_eq!(back.image(1), set.image(0));
    }

    #[test]
    fn shifts_move_every_image_by_one_pixel_each_way() {
        // One 1-channel 3x3 image and one other, labels 1 and 2.
        let a: Vec<u8> = (1..=9).collect();
        let b: Vec<u8> = (11..=19).collect();
        let set = ImageSet::new([a.clone(), b.clone()].concat(), 2, 1, 3, 3, vec![1, 2]);
        let out = with_shifts(&set, 1);
        assert_eq!((out.n, out.c, out.h, out.w), (10, 1, 3, 3));
        assert_eq!(out.image(0), &a[..]);
        assert_eq!(out.image(1), &b[..]);
        // down by one: the top row repeats, the bottom row falls off
        assert_eq!(out.image(2), &[1, 2, 3, 1, 2, 3, 4, 5, 6]);
        assert_eq!(out.image(3), &[11, 12, 13, 11, 12, 13, 14, 15, 16]);
        // up, right, left
        assert_eq!(out.image(4), &[4, 5, 6, 7, 8, 9, 7, 8, 9]);
        assert_eq!(out.image(6), &[1, 1, 2, 4, 4, 5, 7, 7, 8]);
        assert_eq!(out.image(8), &[2, 3, 3, 5, 6, 6, 8, 9, 9]);
        assert_eq!(out.labels, vec![1, 2, 1, 2, 1, 2, 1, 2, 1, 2]);
        // two shifts: 9 copies; the 2-pixel ones come after the 1-pixel ones
        let two = with_shifts(&set, 2);
        assert_eq!(two.n, 18);
        assert_eq!(two.image(10), &[1, 2, 3, 1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn params_refuse_nothing_to_do_and_absurd_shift_counts() {
        let none = AugmentParams::default();
        assert!(AugmentStage::validate(&none).is_err());
        let many = AugmentParams {
            shifts: 9,
            ..Default::default()
        };
        let e = AugmentStage::validate(&many).unwrap_err().to_string();
        assert!(e.contains("at most 8"), "{e}");
        let ok = AugmentParams {
            shifts: 1,
            ..Default::default()
        };
        assert!(AugmentStage::validate(&ok).is_ok());
        // The default leaves existing cache keys alone: shifts = 0 is not serialised.
        let key = serde_json::to_string(&AugmentParams {
            hflip: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(key, r#"{"hflip":true}"#);
    }
}
