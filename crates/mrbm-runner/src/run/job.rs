//! What comes back from a job: its [`Status`] and [`NodeResult`].

use std::path::PathBuf;

use crate::store::Manifest;

pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Cached,
    Ran,
    Failed { message: String, user: bool },
    Skipped { because: String },
    Cancelled,
}

impl Status {
    pub fn ok(&self) -> bool {
        matches!(self, Status::Cached | Status::Ran)
    }
    pub fn word(&self) -> &'static str {
        match self {
            Status::Cached => "cached",
            Status::Ran => "ran",
            Status::Failed { .. } => "FAILED",
            Status::Skipped { .. } => "skipped",
            Status::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeResult {
    pub status: Status,
    pub key: Option<String>,
    pub seconds: f64,
    /// The stage's log (in the cache entry, or kept under CACHE/failed/).
    pub log: Option<PathBuf>,
    pub manifest: Option<Manifest>,
}

impl NodeResult {
    /// A result with only a status: no entry, log or manifest, no time
    /// spent (a stage that did not run, or was cancelled).
    pub fn bare(status: Status) -> NodeResult {
        NodeResult {
            status,
            key: None,
            seconds: 0.0,
            log: None,
            manifest: None,
        }
    }
}
