//! A recorded run, as CACHE/history/ID.json holds it ([`Run`]): the types
//! [`super::history`] writes and reads and [`super::rundiff`] compares.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store;

/// One `mrbm run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Run {
    pub id: String,
    /// UTC, RFC 3339.
    pub time: String,
    /// Milliseconds since the epoch, to order runs started in one second.
    #[serde(default)]
    pub unix_ms: u128,
    pub experiment: String,
    pub file: String,
    pub profile: Option<String>,
    /// `--set` arguments as given, STAGE.PARAM=VALUE.
    pub overrides: Vec<String>,
    /// `--sweep` arguments as given, STAGE.PARAM=V1,V2.
    #[serde(default)]
    pub sweeps: Vec<String>,
    /// `git rev-parse HEAD` of the project, or "unknown".
    pub git_commit: String,
    /// Uncommitted changes in the project's work tree; None when unknown.
    pub git_dirty: Option<bool>,
    pub mrbm_version: String,
    pub device: String,
    pub nodes: Vec<NodeRun>,
    pub cells: Vec<CellRun>,
    /// Pinned runs keep their entries through `mrbm gc`.
    #[serde(default)]
    pub pinned: bool,
    /// ok, failed or interrupted ([`crate::report::rundiff`]); empty in records
    /// written before it was kept (then read from `nodes`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// blake3 of each file the experiment was read from (the experiment,
    /// and its pipeline when it has one), by path as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, String>,
    /// Every stage's resolved parameters (canonical, defaults filled), by
    /// stage id; tables aside.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeRun {
    pub id: String,
    pub key: Option<String>,
    pub status: String,
}

/// One cell of one table: the stage instance that fills it and its metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CellRun {
    pub table: String,
    pub row: String,
    pub column: Option<String>,
    pub stage: String,
    pub key: Option<String>,
    /// Every metric of the stage; NaN is written as null.
    #[serde(deserialize_with = "store::metrics_with_nan")]
    pub metrics: BTreeMap<String, f64>,
    /// The metrics the table shows (the key metrics of `mrbm runs`).
    #[serde(default)]
    pub shown: Vec<String>,
}

impl CellRun {
    /// `table/row[/column]`, the label of the cell in listings.
    pub fn label(&self) -> String {
        let mut s = format!("{}/{}", self.table, self.row);
        if let Some(c) = &self.column {
            s.push('/');
            s.push_str(c);
        }
        s
    }
}
