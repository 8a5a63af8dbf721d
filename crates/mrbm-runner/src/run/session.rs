//! The session: what `plan` and `run` share once the plan (the DAG) is
//! expanded: the stage kinds, the cache and the hash memo.
//!
//! [`Session::key`] resolves a node's inputs against the entries of its
//! upstream nodes and, when every input is known, gives its job and key:
//! `plan` asks it what would run, `run` asks it what to submit.

use std::sync::atomic::AtomicBool;

use crate::error::RunnerError;
use crate::key::preview::{self, PlanLine};
use crate::key::{self, Cells, KeyedNode};
use crate::kinds::registry::Registry;
use crate::plan::Dag;
use crate::run::exec::{self, RunOptions};
use crate::run::executors::{local, Executor};
use crate::run::job::NodeResult;
use crate::store::hashing::Memo;
use crate::store::{Manifest, Store};
use mrbm_stage::Device;

/// The stage kinds, the cache and the memo of external file hashes.
pub struct Session<'a> {
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub memo: &'a Memo,
}

impl<'a> Session<'a> {
    pub fn new(registry: &'a Registry, store: &'a Store, memo: &'a Memo) -> Self {
        Session {
            registry,
            store,
            memo,
        }
    }

    /// Node `i` keyed: its inputs resolved given the manifests of finished
    /// upstream nodes (`upstream`), and its job when each is known
    /// ([`key::key_node`]).
    pub fn key(
        &self,
        dag: &Dag,
        i: usize,
        threads: usize,
        cells: Cells,
        upstream: &dyn Fn(usize) -> Option<Manifest>,
    ) -> KeyedNode {
        key::key_node(dag, self.store, self.memo, i, threads, cells, upstream)
    }

    /// What `run` would do for each node, and why (see [`plan`]).
    pub fn plan(&self, dag: &Dag) -> Result<Vec<PlanLine>, RunnerError> {
        preview::plan(dag, self.store, self.memo)
    }

    /// Run the plan on the local executor, on `device`; one result per node.
    pub fn run(
        &self,
        dag: &Dag,
        device: &Device,
        opts: &RunOptions,
        cancel: &AtomicBool,
    ) -> Vec<NodeResult> {
        local::execute(
            dag,
            self.registry,
            self.store,
            self.memo,
            device,
            opts,
            cancel,
        )
    }

    /// Run the plan through another executor (e.g. Slurm); one result per node.
    pub fn run_on(
        &self,
        ex: &mut dyn Executor,
        dag: &Dag,
        opts: &RunOptions,
        cancel: &AtomicBool,
    ) -> Vec<NodeResult> {
        exec::Scheduler::new(dag, self.registry, self.store, self.memo, opts, cancel).run(ex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{stage_key, Resolved};
    use crate::plan::{InputSource, Node, NodeInput};
    use std::path::PathBuf;

    fn node(id: &str, kind: &str, inputs: Vec<NodeInput>) -> Node {
        Node {
            id: id.into(),
            stage: id.into(),
            kind: kind.into(),
            version: 1,
            cell: vec![],
            params: serde_json::json!({}),
            deps: inputs
                .iter()
                .filter_map(|i| match i.source {
                    InputSource::Node { node, .. } => Some(node),
                    _ => None,
                })
                .collect(),
            inputs,
            publish: vec![],
            uses_device: false,
            declared: "x.toml".into(),
        }
    }

    fn input(slot: &str, source: InputSource, soft: bool) -> NodeInput {
        NodeInput {
            slot: slot.into(),
            source,
            default_file: None,
            soft,
        }
    }

    fn dag(file: PathBuf) -> Dag {
        let ext = InputSource::External {
            path: file,
            declared: "x.toml:1:1".into(),
        };
        let up = |node| InputSource::Node { node, file: None };
        Dag {
            experiment: "x".into(),
            nodes: vec![
                node("a", "k", vec![input("data", ext, false)]),
                node("b", "k", vec![input("data", up(0), false)]),
                node("table:t", "table", vec![input("cell0", up(1), true)]),
            ],
            axes: vec![],
            project_root: PathBuf::from("."),
            data_root: None,
        }
    }

    #[test]
    fn key_is_known_only_when_every_input_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.txt");
        std::fs::write(&file, "1 2 3").unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let memo = Memo::load(&store.root);
        let reg = Registry::from_stages(vec![]);
        let s = Session::new(&reg, &store, &memo);
        let d = dag(file.clone());
        let none = |_: usize| None;

        let a = s.key(&d, 0, 2, Cells::Pending, &none);
        let job = a.job.expect("an external input is known");
        assert_eq!(job.threads, 2);
        assert_eq!(job.inputs[0].path.as_deref(), Some(file.as_path()));
        assert!(job.inputs[0].external);
        assert_eq!(job.key, stage_key(&d.nodes[0], &job.input_hashes()));

        // b waits for a in both modes: only table cells count as missing.
        for cells in [Cells::Pending, Cells::Missing] {
            let b = s.key(&d, 1, 1, cells, &none);
            assert!(b.job.is_none());
            assert!(matches!(b.inputs[0], Ok(Resolved::Upstream { node: 0 })));
        }
        // A table over a cell without an entry: unknown for plan, keyed with
        // the cell missing for run.
        assert!(s.key(&d, 2, 1, Cells::Pending, &none).job.is_none());
        let t = s.key(&d, 2, 1, Cells::Missing, &none).job.unwrap();
        assert_eq!(t.inputs[0].hash, "missing:b");
        assert_eq!(t.inputs[0].path, None);
    }

    #[test]
    fn the_key_follows_the_content_of_an_external_input() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.txt");
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let reg = Registry::from_stages(vec![]);
        let key_of = |text: &str| {
            std::fs::write(&file, text).unwrap();
            let memo = Memo::load(&store.root);
            let s = Session::new(&reg, &store, &memo);
            s.key(&dag(file.clone()), 0, 1, Cells::Pending, &|_| None)
                .job
                .unwrap()
                .key
        };
        let k1 = key_of("one");
        assert_eq!(key_of("one"), k1);
        assert_ne!(key_of("two"), k1);
    }
}
