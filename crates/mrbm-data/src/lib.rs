//! Data sets, image transforms and the tensor artifact format of mrbm.
//!
//! - Readers: the `format = "..."` of a `dataset` stage, each a [`Reader`]
//!   listed in [`READERS`] (see [`readers`]), over [`idx`] (MNIST, Fashion-MNIST), [`cifar`] (CIFAR-10 binary),
//!   [`folder`] (CelebA, Caltech-101, class-per-folder trees) and the built-in
//!   [`synthetic`] shapes.
//! - Transforms: [`ops`] (crop, resize with a named filter, grayscale) plus
//!   seeded subset and train/test split ([`stages::transform`]).
//! - Stage kinds `dataset` and `transform` ([`stages()`]).
//!
//! Errors are [`DataError`]: they name the file, the byte offset or image,
//! and what was expected; no input makes the readers panic.
pub mod artifact;
pub mod augment;
pub mod cifar;
pub mod error;
pub mod folder;
pub mod hints;
pub mod idx;
pub mod jpeg;
pub mod ops;
pub mod readers;
pub mod resample;
pub mod stages;
pub mod synthetic;

use std::sync::atomic::{AtomicBool, Ordering};

pub use artifact::{ArtifactError, FeatureSet, ImageSet};
pub use error::DataError;
pub use folder::{Decoded, Item, Split};
use mrbm_stage::Stage;
pub use ops::{Crop, Filter, Gray, ImageOps, Size};
pub use readers::{Format, Reader, READERS};
pub use stages::{
    load_dataset, split_parts, transform, DatasetParams, SplitIndices, SplitSets, SplitSpec,
    TransformParams, Transformed,
};

/// Progress and cancellation for long reads: a progress bar (hidden by
/// default) and an optional cancel flag checked between images.
pub struct Ctl<'a> {
    pub bar: indicatif::ProgressBar,
    pub cancel: Option<&'a AtomicBool>,
}

impl Default for Ctl<'_> {
    fn default() -> Self {
        Ctl {
            bar: indicatif::ProgressBar::hidden(),
            cancel: None,
        }
    }
}

impl Ctl<'_> {
    /// Err([`StageError::Cancelled`](mrbm_stage::StageError::Cancelled))
    /// once the cancel flag is set.
    pub fn check(&self) -> Result<(), DataError> {
        match self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(mrbm_stage::StageError::Cancelled.into()),
            _ => Ok(()),
        }
    }
}

/// The stage kinds this crate implements, for the runner's registry.
pub fn stages() -> Vec<Box<dyn Stage>> {
    vec![
        Box::new(stages::DatasetStage),
        Box::new(stages::TransformStage),
        Box::new(augment::AugmentStage),
    ]
}
