//! The `augment` stage kind: an image set with mirrored copies appended
//! (e.g. 16 faces -> 32 with horizontal flips).

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
}

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
    const ABOUT: &'static str = "append mirrored copies of an image set (hflip)";
    type Params = AugmentParams;

    fn validate(p: &AugmentParams) -> Result<(), ParamError> {
        if !p.hflip {
            return Err(ParamError::new(
                "hflip",
                "augment does nothing without hflip = true",
            ));
        }
        Ok(())
    }

    fn run(&self, ctx: &StageContext, p: AugmentParams) -> Result<Metrics, StageError> {
        let input = resolve_file(ctx.input("data")?, "data.safetensors");
        let set = ImageSet::read(&input).map_err(|e| StageError::User(e.to_string()))?;
        let out = if p.hflip { with_hflips(&set) } else { set };
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
}
