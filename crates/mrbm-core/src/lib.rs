//! The multinary RBM of Hwang, Hwang & Jo on burn: unit types, dense and
//! convolutional RBM layers, the paper's loss (F(v) - F(v') with v'
//! constant), stacks (the convolutional DBN), training with Adam, sampling,
//! reconstruction, features, checkpoints, and the `train`, `sample`,
//! `reconstruct` and `features` stage kinds.
//!
//! burn 0.22 picks the backend at run time from the tensor's `Device`, so
//! every function here is device-generic by taking a `&Device`: the same
//! code runs on flex (CPU), wgpu or CUDA. Stages take the device the
//! runner resolved once (mrbm-device) from their `StageContext`.

use std::path::PathBuf;

pub mod ais;
/// The autodiff gradient's host ops (the `mrbm-autodiff` crate).
pub use mrbm_autodiff as autodiff_host;
pub mod checkpoint;
pub mod checks;
pub mod discrete_gaussian;
mod gibbs_host;
pub mod host_cd;
pub mod host_conv;
pub mod host_sampled;
pub mod langevin;
pub mod layer;
pub mod plot;
pub mod quality;
pub mod reference;
pub mod resume;
pub mod sample;
pub mod stack;
pub mod stages;
pub mod train;
pub mod unit;

pub use layer::{LayerKind, LayerSpec, Rbm};
pub use stack::{Coupling, Dbn, StackParams, StackSpec};
pub use train::{OptimParams, Trainer};
pub use unit::UnitType;

use mrbm_stage::{Stage, StageError};

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Bad parameters or data given by the user.
    #[error("{0}")]
    User(String),
    #[error("non-finite value at epoch {epoch}, batch {batch}, layer {layer}: {what}")]
    NonFinite {
        epoch: usize,
        batch: usize,
        layer: usize,
        what: String,
    },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(transparent)]
    Artifact(#[from] mrbm_data::artifact::ArtifactError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Image(String),
    /// The stage contract's own error: cancellation
    /// ([`StageError::Cancelled`], from `StageContext::check_cancel`),
    /// passed through unchanged.
    #[error(transparent)]
    Stage(#[from] StageError),
}

impl From<CoreError> for StageError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::User(m) => StageError::User(m),
            CoreError::Stage(s) => s,
            CoreError::Io { path, source } => StageError::Io { path, source },
            // A malformed input artifact or checkpoint is the user's data.
            e @ (CoreError::Artifact(_) | CoreError::Checkpoint { .. }) => {
                StageError::User(e.to_string())
            }
            e => StageError::Failed(e.to_string()),
        }
    }
}

/// The stage kinds this crate implements, for the runner's registry.
pub fn stages() -> Vec<Box<dyn Stage>> {
    stages::all()
}
