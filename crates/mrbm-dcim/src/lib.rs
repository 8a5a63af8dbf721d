//! Generative learning of a classifier: the coupled forward/backward
//! sigmoid networks (DCIM) of Flach, Shekhovtsov & Fikar, "Generative
//! learning for deep networks", on burn (autodiff on the selected device).
//!
//! - [`model`]: the pair of DCIMs sharing weights (transposed) and biases,
//!   the objectives (16), (21), (22), training with Adam, evaluation.
//! - [`checkpoint`]: the model file, model.safetensors.
//! - [`grid`]: the labelled sample grid (the paper's Fig. 2).
//! - [`stages`]: the stage kinds `dcim` (train) and `dcim_sample`.

pub mod checkpoint;
pub mod grid;
pub mod model;
pub mod resume;
pub mod stages;

pub use model::{Dcim, LayerDef, Objective, Spec};

/// The stage kinds of this crate, for the runner's registry.
pub fn stages() -> Vec<Box<dyn mrbm_stage::Stage>> {
    stages::all()
}

#[derive(Debug, thiserror::Error)]
pub enum DcimError {
    /// The layers do not fit the data (a user mistake).
    #[error("{0}")]
    Spec(String),
    #[error("training diverged: {0}")]
    NonFinite(String),
    #[error("{path}: {message}")]
    Checkpoint {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Image(String),
    #[error("interrupted")]
    Cancelled,
}

impl From<DcimError> for mrbm_stage::StageError {
    fn from(e: DcimError) -> Self {
        match e {
            DcimError::Spec(_) | DcimError::Checkpoint { .. } => {
                mrbm_stage::StageError::User(e.to_string())
            }
            DcimError::Cancelled => mrbm_stage::StageError::Cancelled,
            DcimError::Io { path, source } => mrbm_stage::StageError::io(path, source),
            _ => mrbm_stage::StageError::Failed(e.to_string()),
        }
    }
}
