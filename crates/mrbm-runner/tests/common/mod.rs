//! Helpers shared by the runner's tests with small stage kinds of their
//! own (tests/integrity.rs, tests/runner_logic.rs): a project in a
//! temporary folder, an experiment built into its DAG and run as `mrbm run`
//! does, and the chain of three stages both files start from. Each test
//! file uses a subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mrbm_runner::key::record::load_record;
use mrbm_runner::kinds::registry::Registry;
use mrbm_runner::load::config;
use mrbm_runner::plan::{self as dag, Overrides};
use mrbm_runner::run::exec::{self, RunOptions};
use mrbm_runner::run::executors::local;
use mrbm_runner::run::job::{NodeResult, Status};
use mrbm_runner::store::hashing::Memo;
use mrbm_runner::store::Store;
use mrbm_runner::RunnerError;

/// Three `num` stages in a chain, src (1) -> mid (10) -> top (100): an
/// experiment's stages, for a table or a sweep to follow.
pub const CHAIN: &str = r#"
[stages.src]
kind = "num"
params = { value = 1.0 }

[stages.mid]
kind = "num"
inputs = { a = "src" }
params = { value = 10.0 }

[stages.top]
kind = "num"
inputs = { a = "mid" }
params = { value = 100.0 }
"#;

/// A project folder (with `experiments/`) that is removed at the end.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("experiments")).unwrap();
        Project { dir }
    }
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    /// `experiments/NAME` with `text`; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.root().join("experiments").join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    /// The project's cache (`.mrbm`).
    pub fn store(&self) -> Store {
        Store::open(&self.root().join(".mrbm")).unwrap()
    }
    /// The cache key of stage `id` in the last run of experiment `exp`.
    pub fn key(&self, exp: &str, id: &str) -> String {
        load_record(&self.store(), exp).stages[id].key.clone()
    }
    /// The cache entry of stage `id` in the last run of experiment `exp`.
    pub fn entry(&self, exp: &str, id: &str) -> PathBuf {
        self.store().entry_dir(&self.key(exp, id))
    }
    /// How many entries the cache has quarantined.
    pub fn quarantined(&self) -> usize {
        std::fs::read_dir(self.root().join(".mrbm/quarantine"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// The experiment `file` expanded into its DAG with the `--set`s `sets`.
pub fn build(file: &Path, reg: &Registry, sets: &[&str]) -> Result<dag::Dag, RunnerError> {
    let exp = config::load(file)?;
    let sets = sets.iter().map(|s| config::parse_set(s).unwrap()).collect();
    dag::build(
        &exp,
        reg,
        &Overrides {
            sets,
            ..Default::default()
        },
    )
}

/// `dag` run into `store` as `mrbm run --keep-going --jobs 2` runs it (on
/// the CPU, one thread a stage): each node's result, in the DAG's order.
pub fn results(dag: &dag::Dag, reg: &Registry, store: &Store) -> Vec<NodeResult> {
    let memo = Memo::load(&store.root);
    let opts = RunOptions {
        jobs: 2,
        keep_going: true,
        threads: 1,
        progress: None,
        force: Vec::new(),
    };
    let cpu = mrbm_stage::Device::cpu();
    local::execute(dag, reg, store, &memo, &cpu, &opts, &AtomicBool::new(false))
}

/// [`results`] in `p`'s cache, the run's record saved: each node's id and
/// status, in the DAG's order.
pub fn execute(p: &Project, dag: &dag::Dag, reg: &Registry) -> Vec<(String, Status)> {
    let store = p.store();
    let results = results(dag, reg, &store);
    exec::save_record(&store, dag, &results).unwrap();
    dag.nodes
        .iter()
        .zip(results)
        .map(|(n, r)| (n.id.clone(), r.status))
        .collect()
}

/// Asserts that the message `e` names each of `parts`.
pub fn assert_names(e: &str, parts: &[&str]) {
    assert!(parts.iter().all(|p| e.contains(p)), "{e}");
}
