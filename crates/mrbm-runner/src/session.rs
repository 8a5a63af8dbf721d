//! The session: what `plan` and `run` share once the plan (the DAG) is
//! expanded: the stage kinds, the cache and the hash memo.
//!
//! [`Session::key`] resolves a node's inputs against the entries of its
//! upstream nodes and, when every input is known, gives its job and key:
//! `plan` asks it what would run, `run` asks it what to submit.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use crate::dag::{Dag, InputSource};
use crate::error::RunnerError;
use crate::exec::{self, resolve_input, stage_key, NodeResult, Resolved, RunOptions};
use crate::executor::{Executor, JobInput, StageJob};
use crate::hashing::Memo;
use crate::plan::{self, PlanLine};
use crate::registry::Registry;
use crate::store::{Manifest, Store};

/// The stage kinds, the cache and the memo of external file hashes.
pub struct Session<'a> {
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub memo: &'a Memo,
}

/// How an input of a table whose cell has no entry counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cells {
    /// Not known yet (`plan`: the cell would run first).
    Pending,
    /// Missing for good (`run`: the cell failed); the key takes `missing:ID`.
    /// Ordinary inputs are never missing: a node whose input failed is
    /// skipped, not keyed.
    Missing,
}

/// A node with its inputs resolved: each input's resolution in slot order,
/// and its job (with its key) when every input is known.
#[derive(Debug)]
pub struct KeyedNode {
    pub node: usize,
    pub inputs: Vec<Result<Resolved, RunnerError>>,
    pub job: Option<StageJob>,
}

impl KeyedNode {
    /// The input slot -> hash map of the key, when the node is keyed.
    pub fn hashes(&self) -> Option<BTreeMap<String, String>> {
        self.job.as_ref().map(StageJob::input_hashes)
    }
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
    /// upstream nodes (`upstream`), and its job when each is known.
    pub fn key(
        &self,
        dag: &Dag,
        i: usize,
        threads: usize,
        cells: Cells,
        upstream: &dyn Fn(usize) -> Option<Manifest>,
    ) -> KeyedNode {
        let node = &dag.nodes[i];
        let mut inputs = Vec::new();
        let mut job_inputs = Some(Vec::new());
        for (k, inp) in node.inputs.iter().enumerate() {
            // The upstream manifest, taken once: it gives the input's path
            // and hash, its entry's key and what the stage sees of it.
            let from = match &inp.source {
                InputSource::Node { node: up, .. } => upstream(*up),
                InputSource::External { .. } => None,
            };
            let r = resolve_input(dag, self.store, self.memo, node, k, from.as_ref());
            let ji = match &r {
                Ok(Resolved::Ready { path, hash }) => Some(JobInput {
                    slot: inp.slot.clone(),
                    path: Some(path.clone()),
                    hash: hash.clone(),
                    source: Some(describe_source(dag, &inp.source)),
                    upstream_key: from.as_ref().map(|m| m.key.clone()),
                    upstream: from.as_ref().map(Manifest::upstream),
                    external: matches!(inp.source, InputSource::External { .. }),
                }),
                // A table's cell whose stage has finished without an entry.
                Ok(Resolved::Upstream { node: up }) if cells == Cells::Missing && inp.soft => {
                    Some(JobInput {
                        slot: inp.slot.clone(),
                        path: None,
                        hash: format!("missing:{}", dag.nodes[*up].id),
                        source: None,
                        upstream_key: None,
                        upstream: None,
                        external: false,
                    })
                }
                _ => None,
            };
            match (ji, job_inputs.as_mut()) {
                (Some(ji), Some(list)) => list.push(ji),
                _ => job_inputs = None,
            }
            inputs.push(r);
        }
        let job = job_inputs.map(|inputs| {
            let mut job = StageJob {
                job: i,
                stage_id: node.id.clone(),
                kind: node.kind.clone(),
                version: node.version,
                params: node.params.clone(),
                key: String::new(),
                inputs,
                uses_device: node.uses_device,
                threads,
            };
            job.key = stage_key(node, &job.input_hashes());
            job
        });
        KeyedNode {
            node: i,
            inputs,
            job,
        }
    }

    /// What `run` would do for each node, and why (see [`plan`]).
    pub fn plan(&self, dag: &Dag) -> Result<Vec<PlanLine>, RunnerError> {
        plan::plan(dag, self.store, self.memo)
    }

    /// Run the plan on the local executor; one result per node.
    pub fn run(&self, dag: &Dag, opts: &RunOptions, cancel: &AtomicBool) -> Vec<NodeResult> {
        exec::execute(dag, self.registry, self.store, self.memo, opts, cancel)
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

/// Where an input came from, for people: `stage/file`, or the path.
pub fn describe_source(dag: &Dag, s: &InputSource) -> String {
    match s {
        InputSource::Node { node, file } => match file {
            Some(f) => format!("{}/{f}", dag.nodes[*node].id),
            None => dag.nodes[*node].id.clone(),
        },
        InputSource::External { path, .. } => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::{Node, NodeInput};
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
