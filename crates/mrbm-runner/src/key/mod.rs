//! The key phase: a node's inputs resolved against the entries of its
//! upstream nodes and, when every input is known, its key and its job
//! ([`key_node`]). `mrbm plan` asks it what would run ([`preview`]), the
//! scheduler what to submit. Also the record of the last run ([`record`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::RunnerError;
use crate::kinds::table;
use crate::plan::{Dag, InputSource, Node};
use crate::store::hashing::{self, Memo};
use crate::store::{self, Manifest, Store};

pub mod job;
pub mod preview;
pub mod record;

use job::{JobInput, StageJob};

/// The stage key: blake3 over kind, implementation version, canonical
/// parameters and input content hashes. The stage's name, the device and
/// the order of keys in the TOML play no part.
pub fn stage_key(node: &Node, input_hashes: &BTreeMap<String, String>) -> String {
    let doc = serde_json::json!({
        "kind": node.kind,
        "version": node.version,
        "params": mrbm_stage::key_params(&node.params),
        "inputs": input_hashes,
    });
    hashing::hash_bytes(&serde_json::to_vec(&doc).expect("json"))
}

/// What one input resolves to: the path the stage reads and its hash.
#[derive(Debug)]
pub enum Resolved {
    Ready {
        path: PathBuf,
        hash: String,
    },
    /// An upstream node that has not (successfully) produced output.
    Upstream {
        node: usize,
    },
    Missing {
        path: PathBuf,
        declared: String,
    },
    BadFile {
        message: String,
    },
}

/// Resolve `node`'s input `i`; `from` is the manifest of the upstream node
/// it comes from when that node has finished (None for an external input).
pub fn resolve_input(
    dag: &Dag,
    store: &Store,
    memo: &Memo,
    node: &Node,
    i: usize,
    from: Option<&Manifest>,
) -> Result<Resolved, RunnerError> {
    let input = &node.inputs[i];
    match &input.source {
        InputSource::External { path, declared } => {
            if !path.exists() {
                return Ok(Resolved::Missing {
                    path: path.clone(),
                    declared: declared.clone(),
                });
            }
            let hash = memo.path(path).map_err(|e| {
                RunnerError::Data(format!("{}: cannot read input: {e}", path.display()))
            })?;
            Ok(Resolved::Ready {
                path: path.clone(),
                hash,
            })
        }
        InputSource::Node { node: up, file } => {
            let Some(m) = from else {
                return Ok(Resolved::Upstream { node: *up });
            };
            let out = store.out_dir(&m.key);
            if input.soft {
                // Tables read only metrics.json, and of it only the metrics
                // they name: a rerun upstream whose results are the same
                // (timings aside) leaves the table cached.
                let h = table::input_hash(&node.params, m);
                return Ok(Resolved::Ready { path: out, hash: h });
            }
            let wanted = file.clone().or_else(|| {
                input
                    .default_file
                    .clone()
                    .filter(|f| m.files.contains_key(f))
            });
            match wanted {
                Some(f) => match m.files.get(&f) {
                    Some(fe) => Ok(Resolved::Ready {
                        path: out.join(&f),
                        hash: fe.hash.clone(),
                    }),
                    None => {
                        let have: Vec<&str> = m
                            .files
                            .keys()
                            .map(String::as_str)
                            .filter(|k| *k != store::METRICS)
                            .collect();
                        Ok(Resolved::BadFile {
                            message: format!(
                                "input `{}`: stage `{}` wrote no file `{f}` (it wrote: {})",
                                input.slot,
                                dag.nodes[*up].id,
                                have.join(", ")
                            ),
                        })
                    }
                },
                None => Ok(Resolved::Ready {
                    path: out,
                    hash: m.output_hash.clone(),
                }),
            }
        }
    }
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

/// Node `i` keyed: its inputs resolved given the manifests of finished
/// upstream nodes (`upstream`), and its job when each is known.
pub fn key_node(
    dag: &Dag,
    store: &Store,
    memo: &Memo,
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
        let r = resolve_input(dag, store, memo, node, k, from.as_ref());
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
