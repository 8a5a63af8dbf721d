//! Refusals before any stage runs, from parameters alone: a table metric
//! that no cell's kind declares (a typo, which would otherwise surface
//! only once every upstream stage had run), and a memory estimate above
//! what the machine has (each kind's lower bound, [`Stage::memory_floor`]).
//!
//! [`Stage::memory_floor`]: mrbm_stage::Stage::memory_floor

use std::collections::BTreeSet;

use crate::error::RunnerError;
use crate::registry::Registry;
use crate::table::TableParams;

use super::{Dag, Node};

/// Every table's metrics against what its cells' kinds declare. A cell of
/// a kind that declares nothing (the user's `command`) turns the check off
/// for that table: its metrics are known only once it ran.
pub fn table_metrics(registry: &Registry, nodes: &[Node]) -> Result<(), RunnerError> {
    for t in nodes.iter().filter(|n| n.kind == "table") {
        let Ok(tp) = serde_json::from_value::<TableParams>(t.params.clone()) else {
            continue;
        };
        let Some((declared, stage)) = declared_metrics(registry, nodes, &tp) else {
            continue;
        };
        for w in &tp.metrics {
            if declared.contains(w) {
                continue;
            }
            let help = match mrbm_stage::nearest(w, declared.iter().map(String::as_str)) {
                Some(n) => format!("did you mean `{n}`? "),
                None => String::new(),
            };
            return Err(RunnerError::Usage(format!(
                "{}: {}: no metric `{w}` in the cells of stage `{stage}`\n  help: {help}its metrics: {}",
                t.declared,
                t.id,
                declared.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(())
}

/// The union of the metrics the table's cells' kinds declare, with the
/// cells' stage; None when a cell's kind does not say.
fn declared_metrics(
    registry: &Registry,
    nodes: &[Node],
    tp: &TableParams,
) -> Option<(BTreeSet<String>, String)> {
    let mut all = BTreeSet::new();
    let mut stage = String::new();
    for c in &tp.cells {
        let n = nodes.iter().find(|n| n.id == c.id)?;
        let kind = registry.get(&n.kind)?;
        all.extend(kind.metrics(&n.params)?);
        stage.clone_from(&n.stage);
    }
    (!all.is_empty()).then_some((all, stage))
}

/// Each stage's memory floor against the memory available (MemAvailable,
/// or MRBM_MAX_MEMORY): a user error naming the stage and the estimate.
pub fn memory(registry: &Registry, dag: &Dag) -> Result<(), RunnerError> {
    for n in &dag.nodes {
        let Some(kind) = registry.get(&n.kind) else {
            continue;
        };
        let Some((bytes, what)) = kind.memory_floor(&n.params) else {
            continue;
        };
        if let Err(e) = mrbm_stage::check_memory(bytes, &what) {
            return Err(RunnerError::Usage(format!(
                "{}: stage `{}`: {e} (refused before anything ran)",
                n.declared, n.id
            )));
        }
    }
    Ok(())
}
