//! (being written)
use mrbm_stage::Stage;

/// The stage kinds this crate implements, for the runner's registry.
pub fn stages() -> Vec<Box<dyn Stage>> {
    Vec::new()
}
