//! The typed errors of mrbm-data. Every variant that concerns a file names it,
//! and malformed-content variants give the byte offset (or image) at fault
//! and what was expected there.

use std::path::PathBuf;

use crate::artifact::ArtifactError;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A `format = "..."` that no reader has.
    #[error("unknown data format \"{name}\"; the formats are {known}")]
    UnknownFormat { name: String, known: String },

    /// A data set folder or file that is not there.
    #[error("{path}: not found; expected {expected}.{hint}")]
    Missing {
        path: PathBuf,
        expected: String,
        hint: String,
    },

    #[error("{path}: gzip stream is corrupt after {offset} decompressed bytes: {message}")]
    Gzip {
        path: PathBuf,
        offset: u64,
        message: String,
    },

    #[error("{path}: byte {offset}: found {found}, expected {expected}")]
    BadHeader {
        path: PathBuf,
        offset: u64,
        found: String,
        expected: String,
    },

    #[error("{path}: truncated at byte {offset}: expected {expected} bytes in all, the file has {actual}")]
    Truncated {
        path: PathBuf,
        offset: u64,
        expected: u64,
        actual: u64,
    },

    #[error("{path}: {extra} unexpected bytes after the data, from byte {offset} (expected the file to end there)")]
    TrailingBytes {
        path: PathBuf,
        offset: u64,
        extra: u64,
    },

    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels; expected equal counts")]
    CountMismatch {
        images: PathBuf,
        labels: PathBuf,
        n_images: u64,
        n_labels: u64,
    },

    #[error("{path}: size {size} bytes is not a multiple of the {record}-byte record (expected 1 label byte + {pixels} pixel bytes per image); the last {rest} bytes are a partial record")]
    BadRecordSize {
        path: PathBuf,
        size: u64,
        record: u64,
        pixels: u64,
        rest: u64,
    },

    #[error("{path}: byte {offset} (image {index}): label {value}, expected 0..={max}")]
    BadLabel {
        path: PathBuf,
        offset: u64,
        index: u64,
        value: u64,
        max: u64,
    },

    #[error("{path}: corrupt or unreadable image: {message}")]
    CorruptImage { path: PathBuf, message: String },

    #[error("{path}: image is {found_w}x{found_h}, expected {expected_w}x{expected_h} like the first image (set `resize` to bring images to one size)")]
    SizeMismatch {
        path: PathBuf,
        found_w: u32,
        found_h: u32,
        expected_w: u32,
        expected_h: u32,
    },

    #[error(
        "{path}: class folder holds no images (expected at least one .jpg, .jpeg or .png file)"
    )]
    EmptyClass { path: PathBuf },

    #[error("{path}: no images found (expected {expected})")]
    NoImages { path: PathBuf, expected: String },

    #[error("{path}: line {line}: {message}")]
    BadListFile {
        path: PathBuf,
        line: u64,
        message: String,
    },

    #[error("{what}: crop {crop} does not fit in a {w}x{h} image")]
    CropOutOfBounds {
        what: String,
        crop: String,
        w: u32,
        h: u32,
    },

    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Artifact(#[from] ArtifactError),

    /// The stage contract's own error: cancellation
    /// ([`StageError::Cancelled`](mrbm_stage::StageError::Cancelled), from
    /// [`Ctl::check`](crate::Ctl::check)), passed through unchanged.
    #[error(transparent)]
    Stage(#[from] mrbm_stage::StageError),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<DataError> for mrbm_stage::StageError {
    fn from(e: DataError) -> Self {
        use mrbm_stage::StageError;
        match e {
            DataError::Stage(s) => s,
            // Writing our own outputs failed: not the user's data.
            DataError::Artifact(a) => StageError::Failed(a.to_string()),
            DataError::Io { path, source } => StageError::Io { path, source },
            // Missing or malformed data, bad crops: the user can fix these (exit 2).
            other => StageError::User(other.to_string()),
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
