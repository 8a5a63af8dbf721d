//! `mrbm plan`: what would run and why, without running anything.
//!
//! A node is `cached` when its key's entry exists. Otherwise the reason
//! compares it with the last run of the same stage id: which parameters
//! changed (old -> new), which inputs changed, a new implementation version,
//! or `new` when this id never ran. A node downstream of one that must run
//! cannot know its key yet; its reason names that upstream node.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::RunnerError;
use crate::key::record::{load_record, StageRecord};
use crate::key::{key_node, Cells, Resolved};
use crate::plan::Dag;
use crate::store::hashing::Memo;
use crate::store::{Found, Manifest, Store};

#[derive(Debug, Clone, PartialEq)]
pub enum PlanStatus {
    Cached,
    Run(String),
}

#[derive(Debug, Clone)]
pub struct PlanLine {
    pub id: String,
    pub status: PlanStatus,
    pub key: Option<String>,
}

pub fn plan(dag: &Dag, store: &Store, memo: &Memo) -> Result<Vec<PlanLine>, RunnerError> {
    let record = load_record(store, &dag.experiment);
    let mut manifests: Vec<Option<Manifest>> = vec![None; dag.nodes.len()];
    let mut lines = Vec::new();
    for (i, node) in dag.nodes.iter().enumerate() {
        let keyed = key_node(dag, store, memo, i, 1, Cells::Pending, &|j| {
            manifests[j].clone()
        });
        let pending = pending_reason(dag, node, keyed.inputs)?;
        let prev = record.stages.get(&node.id);
        // A parameter change is the most useful reason, even when an
        // upstream node also reruns.
        let param_reason = prev.and_then(|p| {
            let mut diffs = Vec::new();
            diff("", &p.params, &node.params, &mut diffs);
            (!diffs.is_empty()).then(|| format!("param {}", diffs.join(", ")))
        });
        let (status, key) = match (pending, keyed.job) {
            (Some(why), _) => (PlanStatus::Run(param_reason.unwrap_or(why)), None),
            (None, None) => unreachable!("a node whose inputs are all ready has a key"),
            (None, Some(job)) => {
                let found = store.find(&job.key, false);
                let status = match found {
                    Found::Hit(m) => {
                        manifests[i] = Some(m);
                        PlanStatus::Cached
                    }
                    Found::Corrupt(why) => PlanStatus::Run(format!(
                        "cache entry not whole ({why}): it goes to quarantine"
                    )),
                    Found::Absent => PlanStatus::Run(match prev {
                        None => "new".to_string(),
                        Some(p) => param_reason.unwrap_or_else(|| {
                            why_rerun(p, node.version, &job.input_hashes(), &job.key)
                        }),
                    }),
                };
                (status, Some(job.key))
            }
        };
        lines.push(PlanLine {
            id: node.id.clone(),
            status,
            key,
        });
    }
    Ok(lines)
}

/// Why the node's key cannot be known yet (the first input that says so),
/// or None when every input is resolved.
fn pending_reason(
    dag: &Dag,
    node: &crate::plan::Node,
    inputs: Vec<Result<Resolved, RunnerError>>,
) -> Result<Option<String>, RunnerError> {
    let mut pending: Option<String> = None;
    for (inp, r) in node.inputs.iter().zip(inputs) {
        match r {
            Ok(Resolved::Ready { .. }) => {}
            Ok(Resolved::Upstream { node: up }) => {
                pending.get_or_insert_with(|| format!("upstream {} reruns", dag.nodes[up].id));
            }
            Ok(Resolved::Missing { path, declared }) => {
                pending.get_or_insert_with(|| {
                    format!(
                        "input `{}` missing: {} ({declared})",
                        inp.slot,
                        path.display()
                    )
                });
            }
            Ok(Resolved::BadFile { message }) => {
                pending.get_or_insert(message);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(pending)
}

/// Why a node that ran before must run again: a new implementation
/// version, changed inputs, or an entry that is gone.
fn why_rerun(
    p: &StageRecord,
    version: u32,
    hashes: &BTreeMap<String, String>,
    key: &str,
) -> String {
    if p.version != version {
        return format!("implementation version {} -> {}", p.version, version);
    }
    let changed: Vec<String> = hashes
        .iter()
        .filter(|(s, h)| p.inputs.get(*s) != Some(*h))
        .map(|(s, _)| format!("`{s}`"))
        .collect();
    if !changed.is_empty() {
        format!("input {} changed", changed.join(", "))
    } else if p.key == key {
        "not in the cache (removed by gc or quarantined)".into()
    } else {
        "key changed".into()
    }
}

/// Leaf-level differences between two canonical parameter trees.
fn diff(prefix: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff(&path, x, y, out),
                    (None, Some(y)) => out.push(format!("{path} (added: {y})")),
                    (Some(x), None) => out.push(format!("{path} (removed: {x})")),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(format!("{prefix}: {a} -> {b}")),
        _ => {}
    }
}

pub fn render(lines: &[PlanLine]) -> String {
    let w = lines.iter().map(|l| l.id.len()).max().unwrap_or(0);
    let mut s = String::new();
    for l in lines {
        match &l.status {
            PlanStatus::Cached => s.push_str(&format!("cached  {}\n", l.id)),
            PlanStatus::Run(why) => s.push_str(&format!("run     {:<w$}  {why}\n", l.id)),
        }
    }
    let n_run = lines
        .iter()
        .filter(|l| matches!(l.status, PlanStatus::Run(_)))
        .count();
    s.push_str(&format!("{n_run} to run, {} cached\n", lines.len() - n_run));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_changed_leaves() {
        let a = serde_json::json!({"C": 1.0, "eps": 0.1, "inner": {"x": 1}});
        let b = serde_json::json!({"C": 2.0, "eps": 0.1, "inner": {"x": 2}});
        let mut out = vec![];
        diff("", &a, &b, &mut out);
        assert_eq!(
            out,
            vec!["C: 1.0 -> 2.0".to_string(), "inner.x: 1 -> 2".to_string()]
        );
    }
}
