//! Refusals before any stage runs, from parameters alone: a table metric
//! that no cell's kind declares (a typo, which would otherwise surface
//! only once every upstream stage had run), and a memory estimate above
//! what the machine has (each kind's lower bound, [`Stage::memory_floor`]).
//!
//! [`Stage::memory_floor`]: mrbm_stage::Stage::memory_floor

use std::collections::BTreeSet;

use crate::error::RunnerError;
use crate::kinds::registry::Registry;
use crate::kinds::table::TableParams;

use super::{Dag, InputSource, Node};

/// Every table's metrics against what its cells' kinds declare. A cell of
/// a kind that declares nothing (the user's `command`) turns the check off
/// for that table: its metrics are known only once it ran.
pub fn table_metrics(registry: &Registry, nodes: &[Node]) -> Result<(), RunnerError> {
    for t in nodes.iter().filter(|n| n.is_table()) {
        let Ok(tp) = serde_json::from_value::<TableParams>(t.params.clone()) else {
            continue;
        };
        let Some((declared, stage)) = declared_metrics(registry, nodes, t, &tp) else {
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
    table: &Node,
    tp: &TableParams,
) -> Option<(BTreeSet<String>, String)> {
    let mut all = BTreeSet::new();
    let mut stage = String::new();
    for c in &tp.cells {
        // The cell's node: the table's input in the cell's slot.
        let up = table.inputs.iter().find_map(|i| match i.source {
            InputSource::Node { node, .. } if i.slot == c.slot => Some(node),
            _ => None,
        })?;
        let n = nodes.get(up)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind that declares its metrics reads its own canonical
    /// parameters back (else the plan-time check would silently be off).
    #[test]
    fn the_main_kinds_declare_their_metrics_from_canonical_params() {
        let reg = Registry::builtin();
        for kind in [
            "dataset",
            "transform",
            "train",
            "sample",
            "reconstruct",
            "features",
            "loglik",
            "pixel_features",
            "svm",
            "fid_stats",
            "fid",
        ] {
            let k = reg.get(kind).unwrap();
            let raw: toml::Table = match kind {
                "dataset" => toml::from_str("format = \"synthetic\"").unwrap(),
                _ => toml::Table::new(),
            };
            let canon = k.params(&raw).unwrap_or_else(|e| {
                panic!("{kind}: default params: {e:?}");
            });
            let m = k.metrics(&canon);
            assert!(
                m.as_ref().is_some_and(|m| !m.is_empty()),
                "{kind}: no metrics declared from {canon}"
            );
        }
        let cmd = reg.get("command").unwrap();
        let raw: toml::Table = toml::from_str("argv = [\"true\"]").unwrap();
        assert!(cmd.metrics(&cmd.params(&raw).unwrap()).is_none());
    }

    #[test]
    fn memory_floors_come_from_parameters_alone() {
        let reg = Registry::builtin();
        let floor = |kind: &str, raw: &str| {
            let k = reg.get(kind).unwrap();
            let raw: toml::Table = toml::from_str(raw).unwrap();
            k.memory_floor(&k.params(&raw).unwrap()).map(|(b, _)| b)
        };
        // 16 bytes per unit, at least one visible and one hidden unit.
        assert_eq!(floor("sample", "chains = 1000"), Some(32_000.0));
        assert_eq!(
            floor("dataset", "format = \"synthetic\"\nn = 10\nsize = 4"),
            Some(2.0 * 3.0 * 10.0 * 16.0)
        );
        // dense [3, 2]: weights >= 3 + 6, activations >= 2 * 5.
        assert_eq!(
            floor("train", "conv_channels = []\ndense = [3, 2]"),
            Some(4.0 * (4.0 * 9.0 + 8.0 * 10.0))
        );
    }
}
