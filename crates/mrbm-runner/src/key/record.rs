//! The record of the last run of each experiment (`CACHE/runs/`), which
//! `mrbm plan` compares a node with to say why it would run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::Store;

/// The record of the last run of an experiment, which `plan` compares with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRecord {
    pub stages: BTreeMap<String, StageRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    pub kind: String,
    pub version: u32,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, String>,
}

/// The record of `experiment`'s last run (empty when none).
pub fn load_record(store: &Store, experiment: &str) -> RunRecord {
    std::fs::read(store.runs_file(experiment))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}
