//! Data sets, image transforms and the tensor artifact format of mrbm.
pub mod artifact;

pub use artifact::{ArtifactError, FeatureSet, ImageSet};
use mrbm_stage::Stage;

/// The stage kinds this crate implements, for the runner's registry.
pub fn stages() -> Vec<Box<dyn Stage>> {
    Vec::new()
}
