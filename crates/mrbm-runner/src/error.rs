//! The runner's errors and how they map to exit codes:
//! 0 success, 1 a stage failed, 2 a user error (config, arguments, data).

use std::fmt;
use std::path::PathBuf;

/// A problem at a place in a file.
#[derive(Debug, Clone)]
pub struct Located {
    pub file: PathBuf,
    /// 1-based; 0 when the place is unknown.
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )?;
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)?;
        }
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A mistake in a pipeline or experiment file.
    #[error("{0}")]
    Config(Box<Located>),
    /// Bad command-line arguments or a missing file named on the command line.
    #[error("{0}")]
    Usage(String),
    /// Missing or unusable data, or a device that is not there.
    #[error("{0}")]
    Data(String),
    /// One or more stages failed (their errors were already reported).
    #[error("{0}")]
    StageFailed(String),
    /// The cache could not be read or written.
    #[error("cache: {path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("interrupted")]
    Interrupted,
}

impl RunnerError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunnerError::Config(_) | RunnerError::Usage(_) | RunnerError::Data(_) => 2,
            RunnerError::StageFailed(_) | RunnerError::Cache { .. } => 1,
            RunnerError::Interrupted => 130,
        }
    }

    pub fn cache(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        RunnerError::Cache {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
