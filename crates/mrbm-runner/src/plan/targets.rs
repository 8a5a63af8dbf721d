//! Targeted and forced runs, as `dvc repro STAGE` / `--force` and
//! Snakemake's targets / `--forcerun`:
//! - `mrbm run FILE STAGE...` keeps only those stages (a stage name, every
//!   cell of it; a stage id such as `train[N=1]`; or a table's name) and
//!   the stages they read, directly or not ([`select`]);
//! - `--force STAGE` recomputes that stage and every stage downstream of
//!   it even when the cache has them ([`forced`]): their entries are
//!   evicted when they come up ([`evict`]), under the entry's lock.

use std::collections::BTreeSet;

use crate::error::RunnerError;
use crate::plan::{Dag, InputSource};
use crate::store::Store;

/// The nodes `name` picks: a node id, every cell of a stage, or a table.
fn pick(dag: &Dag, name: &str, what: &str) -> Result<Vec<usize>, RunnerError> {
    let mut hits = dag.find(name);
    if hits.is_empty() {
        hits = dag.find(&format!("table:{name}"));
    }
    if !hits.is_empty() {
        return Ok(hits);
    }
    let mut names: Vec<&str> = dag
        .nodes
        .iter()
        .map(|n| n.stage.strip_prefix("table:").unwrap_or(&n.stage))
        .collect();
    names.dedup();
    let help = match mrbm_stage::nearest(name, names.iter().copied()) {
        Some(n) => format!("did you mean `{n}`? "),
        None => String::new(),
    };
    let mut all = names.clone();
    all.sort_unstable();
    all.dedup();
    Err(RunnerError::Usage(format!(
        "{what} `{name}`: experiment `{}` has no such stage, stage id or table\n  help: {help}its stages and tables: {}",
        dag.experiment,
        all.join(", ")
    )))
}

/// The plan cut down to the `targets` and what they need (the nodes keep
/// their order; inputs and dependencies are renumbered).
pub fn select(dag: &Dag, targets: &[String]) -> Result<Dag, RunnerError> {
    let mut keep = BTreeSet::new();
    let mut todo = Vec::new();
    for t in targets {
        todo.extend(pick(dag, t, "stage")?);
    }
    while let Some(i) = todo.pop() {
        if keep.insert(i) {
            todo.extend(dag.nodes[i].deps.iter().copied());
        }
    }
    let new_index: Vec<Option<usize>> = {
        let mut next = 0;
        (0..dag.nodes.len())
            .map(|i| {
                keep.contains(&i).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect()
    };
    let renumber = |i: usize| new_index[i].expect("a kept node's inputs are kept");
    let nodes = keep
        .iter()
        .map(|&i| {
            let mut n = dag.nodes[i].clone();
            n.deps = n.deps.iter().map(|&d| renumber(d)).collect();
            for inp in &mut n.inputs {
                if let InputSource::Node { node, .. } = &mut inp.source {
                    *node = renumber(*node);
                }
            }
            n
        })
        .collect();
    Ok(Dag {
        nodes,
        ..dag.clone()
    })
}

/// Per node: whether `--force` recomputes it (a forced stage and every
/// node downstream of one). Empty `force`: all false.
pub fn forced(dag: &Dag, force: &[String]) -> Result<Vec<bool>, RunnerError> {
    let mut out = vec![false; dag.nodes.len()];
    for f in force {
        for i in pick(dag, f, "--force")? {
            out[i] = true;
        }
    }
    // Carried downstream until nothing changes (one pass when the nodes
    // come in topological order, as the expansion makes them).
    let mut changed = true;
    while changed {
        changed = false;
        for i in 0..dag.nodes.len() {
            if !out[i] && dag.nodes[i].deps.iter().any(|&d| out[d]) {
                out[i] = true;
                changed = true;
            }
        }
    }
    Ok(out)
}

/// Remove cache entry `key` so that it is computed again: moved aside
/// under its lock, then deleted. False when there was none, or when
/// another process holds the lock (it is computing the entry right now).
pub fn evict(store: &Store, key: &str) -> Result<bool, RunnerError> {
    if !store.has(key) {
        return Ok(false);
    }
    let Some(lock) = store.try_lock(key)? else {
        return Ok(false);
    };
    let aside = store.tmp_dir(key)?;
    let moved = aside.join("evicted");
    let r = std::fs::rename(store.entry_dir(key), &moved);
    drop(lock);
    let _ = std::fs::remove_dir_all(&aside);
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RunnerError::cache(store.entry_dir(key), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Node, NodeInput};
    use std::path::PathBuf;

    fn node(id: &str, deps: &[usize]) -> Node {
        Node {
            id: id.into(),
            stage: id.split('[').next().unwrap().into(),
            kind: "k".into(),
            version: 1,
            cell: vec![],
            params: serde_json::json!({}),
            inputs: deps
                .iter()
                .map(|&d| NodeInput {
                    slot: format!("in{d}"),
                    source: InputSource::Node {
                        node: d,
                        file: None,
                    },
                    default_file: None,
                    soft: false,
                })
                .collect(),
            publish: vec![],
            uses_device: false,
            deps: deps.to_vec(),
            declared: "x.toml".into(),
        }
    }

    // data -> split -> train[N=1], train[N=255] -> svm ; data -> other
    fn dag() -> Dag {
        Dag {
            experiment: "x".into(),
            nodes: vec![
                node("data", &[]),
                node("split", &[0]),
                node("train[N=1]", &[1]),
                node("train[N=255]", &[1]),
                node("other", &[0]),
                node("svm", &[2, 3]),
            ],
            axes: vec![],
            project_root: PathBuf::from("."),
            data_root: None,
        }
    }

    #[test]
    fn a_target_keeps_itself_and_what_it_reads_renumbered() {
        let d = select(&dag(), &["train[N=255]".into()]).unwrap();
        let ids: Vec<&str> = d.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["data", "split", "train[N=255]"]);
        assert_eq!(d.nodes[2].deps, [1]);
        assert!(matches!(
            d.nodes[2].inputs[0].source,
            InputSource::Node { node: 1, .. }
        ));
        // A stage name takes every cell.
        let d = select(&dag(), &["train".into(), "other".into()]).unwrap();
        assert_eq!(d.nodes.len(), 5);
        assert!(!d.nodes.iter().any(|n| n.id == "svm"));
        let e = select(&dag(), &["trian".into()]).unwrap_err().to_string();
        assert!(e.contains("did you mean `train`?"), "{e}");
    }

    #[test]
    fn force_reaches_every_node_downstream() {
        let f = forced(&dag(), &["split".into()]).unwrap();
        assert_eq!(f, [false, true, true, true, false, true]);
        let f = forced(&dag(), &["train[N=1]".into()]).unwrap();
        assert_eq!(f, [false, false, true, false, false, true]);
        assert_eq!(forced(&dag(), &[]).unwrap(), [false; 6]);
        assert!(forced(&dag(), &["nope".into()]).is_err());
    }
}
