//! A node keyed is a job: [`StageJob`], everything needed to run one stage
//! given only the cache directory. Plain data (serde), so another process
//! can read it from `CACHE/jobs/KEY.json` and run it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mrbm_stage::JsonValue;
use serde::{Deserialize, Serialize};

use crate::error::RunnerError;
use crate::store::{self, Store};

/// One input of a job, resolved: what the stage reads and what its key took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInput {
    pub slot: String,
    /// The file or folder the stage reads; None for a table's cell whose
    /// stage produced nothing (its hash then says `missing:ID`).
    pub path: Option<PathBuf>,
    /// The content hash the key was computed from.
    pub hash: String,
    /// Where it came from (upstream id or path), for people.
    pub source: Option<String>,
    /// The cache key of the upstream entry, for inputs from other stages.
    pub upstream_key: Option<String>,
    /// What the stage sees of that entry (`ctx.upstream`), taken from the
    /// manifest the input was resolved with. Not written into job files: a
    /// job read back (a Slurm node) reads it from the entry's manifest.
    #[serde(skip)]
    pub upstream: Option<mrbm_stage::Upstream>,
    /// A file outside the cache: hashed again after the stage ran, and
    /// nothing is cached when it changed meanwhile.
    pub external: bool,
}

/// Everything needed to run one stage given only the cache directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageJob {
    /// The job's id within its session (the node's index in the plan).
    pub job: usize,
    /// Readable stage id, e.g. `train[N=255,lr=0.03]`.
    pub stage_id: String,
    pub kind: String,
    pub version: u32,
    /// Canonical parameters.
    pub params: JsonValue,
    /// The stage key (see [`crate::key::stage_key`]).
    pub key: String,
    pub inputs: Vec<JobInput>,
    /// Whether the stage runs tensor work on the accelerator.
    pub uses_device: bool,
    /// Threads the stage may use.
    pub threads: usize,
}

impl StageJob {
    /// Input slot -> content hash, as the key took them.
    pub fn input_hashes(&self) -> BTreeMap<String, String> {
        self.inputs
            .iter()
            .map(|i| (i.slot.clone(), i.hash.clone()))
            .collect()
    }

    /// Where a job for `key` is written for another process to run.
    pub fn path_in(store: &Store, key: &str) -> PathBuf {
        store.root.join("jobs").join(format!("{key}.json"))
    }

    /// Write the job to `CACHE/jobs/KEY.json` (atomically) and return the path.
    pub fn save(&self, store: &Store) -> Result<PathBuf, RunnerError> {
        let path = Self::path_in(store, &self.key);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| RunnerError::cache(&path, e))?;
        store::write_atomic(&path, &bytes)?;
        Ok(path)
    }

    pub fn load(path: &Path) -> Result<StageJob, RunnerError> {
        let bytes = std::fs::read(path).map_err(|e| RunnerError::cache(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| RunnerError::cache(path, e))
    }
}
