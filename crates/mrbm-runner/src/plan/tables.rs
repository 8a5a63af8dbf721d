//! One node per `[[tables]]` entry: its cells are the nodes of the stage it
//! names (and of its extra columns' stages), placed by the row and column
//! axes; its parameters are the [`TableParams`] the table stage reads.

use std::path::Path;

use crate::error::RunnerError;
use crate::kinds::table::{ExtraCell, TableCell, TableParams};
use crate::load::config::{LoadedExperiment, Source, TableDecl};
use crate::sys::confine;

use super::expand::publish_target;
use super::sweep::{axis_order, Axis};
use super::{Dag, InputSource, Node, NodeInput, Overrides};
use crate::store::Manifest;

/// The table's inputs and the cells or extra columns they fill.
#[derive(Default)]
struct Wired {
    cells: Vec<TableCell>,
    extra: Vec<ExtraCell>,
    inputs: Vec<NodeInput>,
    deps: Vec<usize>,
}

impl Wired {
    /// A soft input on node `i` (a table still runs when a cell failed).
    fn read(&mut self, slot: String, i: usize) {
        self.inputs.push(NodeInput {
            slot,
            source: InputSource::Node {
                node: i,
                file: None,
            },
            default_file: None,
            soft: true,
        });
        self.deps.push(i);
    }
}

/// The tables of one experiment being added to its nodes.
struct Tables<'a> {
    exp: &'a LoadedExperiment,
    ov: &'a Overrides,
    axes: &'a [Axis],
    names: &'a [&'a str],
}

/// Append one node per table to `nodes`.
pub fn add(
    exp: &LoadedExperiment,
    ov: &Overrides,
    axes: &[Axis],
    project_root: &Path,
    names: &[&str],
    nodes: &mut Vec<Node>,
) -> Result<(), RunnerError> {
    let t = Tables {
        exp,
        ov,
        axes,
        names,
    };
    for (ti, decl) in exp.file.tables.iter().enumerate() {
        let node = t.node(ti, decl, project_root, nodes)?;
        nodes.push(node);
    }
    Ok(())
}

impl Tables<'_> {
    fn src(&self) -> &Source {
        &self.exp.source
    }

    fn node(
        &self,
        ti: usize,
        t: &TableDecl,
        project_root: &Path,
        nodes: &[Node],
    ) -> Result<Node, RunnerError> {
        let tsrc = self.src();
        // Table errors point at the table's `stage` key.
        let tspan = || Some(t.stage.span());
        let stage = t.stage.get_ref();
        self.check_stage(
            t,
            stage,
            &format!("table `{}`: there is no stage `{stage}`", t.name),
        )?;
        let mut metrics = t.metrics.clone();
        if let Some(m) = &t.metric {
            metrics.insert(0, m.clone());
        }
        if metrics.is_empty() {
            return Err(tsrc.locate(
                tspan(),
                format!("table `{}` names no metric", t.name),
                Some("add `metric = \"test_error\"` (or `metrics = [...]`)".into()),
            ));
        }
        let rows = self.find_axis(t, &t.rows)?;
        let columns = self.find_axis(t, &t.columns)?;
        self.check_aggregate(t)?;
        let levels = self.sweep_levels(stage, nodes, &rows, &columns);
        self.check_unnamed_axes(t, nodes, &rows, &columns, &levels)?;
        let mut wired = Wired::default();
        for (i, node) in nodes.iter().enumerate().filter(|(_, n)| &n.stage == stage) {
            let pick = |axis: &Option<String>| cell_value(node, axis);
            let slot = format!("cell{}", wired.cells.len());
            wired.cells.push(TableCell {
                slot: slot.clone(),
                id: node.id.clone(),
                row: pick(&rows).unwrap_or_else(|| "all".into()),
                column: pick(&columns),
                levels: level_values(node, &levels).unwrap_or_default(),
            });
            wired.read(slot, i);
        }
        self.extra_columns(t, nodes, &rows, &levels, &mut wired)?;
        let reference = t
            .reference
            .iter()
            .map(|(col, m)| {
                (
                    col.clone(),
                    m.iter().map(|(r, v)| (r.clone(), v.clone())).collect(),
                )
            })
            .collect();
        let tp = TableParams {
            name: t.name.clone(),
            metrics,
            row_order: axis_order(self.axes, &rows),
            column_order: axis_order(self.axes, &columns),
            rows,
            columns,
            cells: wired.cells,
            reference,
            precision: t.precision,
            extra: wired.extra,
            aggregate: t.aggregate.as_ref().map(|a| a.get_ref().clone()),
            spread: t.spread.as_ref().map(|a| a.get_ref().clone()),
            level_orders: levels
                .iter()
                .map(|l| axis_order(self.axes, &Some(l.clone())))
                .collect(),
            levels,
        };
        let params = serde_json::to_value(&tp).map_err(|e| RunnerError::Usage(e.to_string()))?;
        Ok(Node {
            id: format!("table:{}", t.name),
            stage: format!("table:{}", t.name),
            kind: crate::kinds::table::KIND.into(),
            version: crate::kinds::table::VERSION,
            cell: vec![],
            params,
            inputs: wired.inputs,
            publish: self.publish(ti, t, project_root)?,
            uses_device: false,
            deps: wired.deps,
            declared: tsrc.place(
                tsrc.span_of_item(&["tables"], ti, "metrics")
                    .or_else(|| tsrc.span_of_item(&["tables"], ti, "metric"))
                    .or_else(tspan),
            ),
        })
    }

    fn check_stage(&self, t: &TableDecl, stage: &str, msg: &str) -> Result<(), RunnerError> {
        if self.exp.stages.contains_key(stage) {
            return Ok(());
        }
        let help = mrbm_stage::nearest(stage, self.names.iter().copied())
            .map(|n| format!("did you mean `{n}`?"));
        Err(self
            .src()
            .locate(Some(t.stage.span()), msg.to_string(), help))
    }

    /// The axis a table's `rows` or `columns` names (by name or STAGE.PARAM).
    fn find_axis(
        &self,
        t: &TableDecl,
        want: &Option<String>,
    ) -> Result<Option<String>, RunnerError> {
        let Some(w) = want else { return Ok(None) };
        self.axes
            .iter()
            .find(|a| &a.name == w || a.path.as_deref() == Some(w.as_str()))
            .map(|a| Some(a.name.clone()))
            .ok_or_else(|| {
                let valid: Vec<&str> = self.axes.iter().map(|a| a.name.as_str()).collect();
                self.src().locate(
                    Some(t.stage.span()),
                    format!("table `{}`: `{w}` is not a sweep axis", t.name),
                    Some(format!(
                        "sweep axes: {}",
                        if valid.is_empty() {
                            "none".into()
                        } else {
                            valid.join(", ")
                        }
                    )),
                )
            })
    }

    fn check_aggregate(&self, t: &TableDecl) -> Result<(), RunnerError> {
        if let Some(sp) = &t.spread {
            if t.aggregate.is_none() {
                return Err(self.src().locate(
                    Some(sp.span()),
                    format!(
                        "table `{}`: spread = \"{}\" needs cells to combine",
                        t.name,
                        sp.get_ref()
                    ),
                    Some(
                        "add aggregate = \"mean\" (the spread is of the cells it combines)".into(),
                    ),
                ));
            }
            if !crate::kinds::table::SPREADS.contains(&sp.get_ref().as_str()) {
                return Err(self.src().locate(
                    Some(sp.span()),
                    format!(
                        "table `{}`: spread = \"{}\" is not known",
                        t.name,
                        sp.get_ref()
                    ),
                    Some(format!(
                        "one of: {}",
                        crate::kinds::table::SPREADS.join(", ")
                    )),
                ));
            }
        }
        let Some(how) = &t.aggregate else {
            return Ok(());
        };
        if crate::kinds::table::AGGREGATES.contains(&how.get_ref().as_str()) {
            return Ok(());
        }
        Err(self.src().locate(
            Some(how.span()),
            format!(
                "table `{}`: aggregate = \"{}\" is not known",
                t.name,
                how.get_ref()
            ),
            Some(format!(
                "one of: {}",
                crate::kinds::table::AGGREGATES.join(", ")
            )),
        ))
    }

    /// The axes that `--sweep` added (not in the file's `[sweep]`), of
    /// several values, that reach `stage` and that the table names neither
    /// as rows nor as columns: each becomes a row level, so a sweep from
    /// the command line needs no table edit and the file still runs
    /// without it. (An axis of the file the table leaves unnamed stays an
    /// error unless the table aggregates it.)
    fn sweep_levels(
        &self,
        stage: &str,
        nodes: &[Node],
        rows: &Option<String>,
        columns: &Option<String>,
    ) -> Vec<String> {
        let from_file = self.exp.file.sweep.len();
        self.axes
            .iter()
            .skip(from_file)
            .filter(|a| {
                Some(&a.name) != rows.as_ref()
                    && Some(&a.name) != columns.as_ref()
                    && a.values.len() > 1
                    && nodes
                        .iter()
                        .any(|n| n.stage == stage && n.cell.iter().any(|(x, _)| x == &a.name))
            })
            .map(|a| a.name.clone())
            .collect()
    }

    /// Axes of several values that reach the stage but that the table does
    /// not name: their cells would share a row and column, unless the table
    /// says how to aggregate them.
    fn check_unnamed_axes(
        &self,
        t: &TableDecl,
        nodes: &[Node],
        rows: &Option<String>,
        columns: &Option<String>,
        levels: &[String],
    ) -> Result<(), RunnerError> {
        let stage = t.stage.get_ref();
        let unnamed: Vec<&str> = self
            .axes
            .iter()
            .filter(|a| {
                let named = Some(&a.name) == rows.as_ref()
                    || Some(&a.name) == columns.as_ref()
                    || levels.contains(&a.name);
                !named
                    && a.values.len() > 1
                    && nodes
                        .iter()
                        .any(|n| &n.stage == stage && n.cell.iter().any(|(x, _)| x == &a.name))
            })
            .map(|a| a.name.as_str())
            .collect();
        if unnamed.is_empty() || t.aggregate.is_some() {
            return Ok(());
        }
        let from_cli: String = self
            .ov
            .sweeps
            .iter()
            .map(|(s, p, _)| format!("{s}.{p}"))
            .filter(|target| {
                self.axes.iter().any(|a| {
                    a.path.as_deref() == Some(target.as_str()) && unnamed.contains(&a.name.as_str())
                })
            })
            .map(|target| format!("; `{target}` is swept by --sweep {target}"))
            .collect();
        let list = unnamed
            .iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(self.src().locate(
            Some(t.stage.span()),
            format!(
                "table `{}`: stage `{stage}` is swept over {list}, which the table names neither as `rows` nor as `columns`; each of its cells would hold several results",
                t.name
            ),
            Some(format!(
                "name {} as `rows` or `columns`, or say how to combine them: aggregate = \"mean\" (or \"min\", \"max\"){}",
                if unnamed.len() == 1 { "it" } else { "them" },
                from_cli
            )),
        ))
    }

    /// Computed extra columns: one cell per node of their stage, placed by
    /// the row axis.
    fn extra_columns(
        &self,
        t: &TableDecl,
        nodes: &[Node],
        rows: &Option<String>,
        levels: &[String],
        wired: &mut Wired,
    ) -> Result<(), RunnerError> {
        for (header, x) in &t.extra {
            self.check_stage(
                t,
                &x.stage,
                &format!(
                    "table `{}`: extra column `{header}` names no stage `{}`",
                    t.name, x.stage
                ),
            )?;
            for (i, node) in nodes.iter().enumerate().filter(|(_, n)| n.stage == x.stage) {
                let slot = format!("extra{}", wired.extra.len());
                wired.extra.push(ExtraCell {
                    slot: slot.clone(),
                    header: header.clone(),
                    metric: x.metric.clone(),
                    row: cell_value(node, rows).unwrap_or_else(|| "all".into()),
                    levels: level_values(node, levels).unwrap_or_default(),
                });
                wired.read(slot, i);
            }
        }
        Ok(())
    }

    /// results/NAME.csv and results/NAME.provenance.json.
    fn publish(
        &self,
        ti: usize,
        t: &TableDecl,
        project_root: &Path,
    ) -> Result<Vec<(String, std::path::PathBuf)>, RunnerError> {
        let tsrc = self.src();
        let results = project_root.join("results");
        let mut publish = Vec::new();
        for (file, suffix) in [("table.csv", "csv"), ("provenance.json", "provenance.json")] {
            let dest = confine::clean_relative(&t.name)
                .and_then(|_| {
                    publish_target(project_root, file, &format!("results/{}.{suffix}", t.name))
                })
                .map_err(|why| {
                    tsrc.locate(
                        tsrc.span_of_item(&["tables"], ti, "name")
                            .or_else(|| Some(t.stage.span())),
                        format!("table name `{}`: {why}", t.name),
                        Some(format!(
                            "a table is written to results/NAME.csv in the project ({}); name it without `..` or a leading `/`",
                            results.display()
                        )),
                    )
                })?;
            publish.push((file.to_string(), dest));
        }
        Ok(publish)
    }
}

/// The node's value of the named axis.
fn cell_value(node: &Node, axis: &Option<String>) -> Option<String> {
    let a = axis.as_ref()?;
    node.cell
        .iter()
        .find(|(n, _)| n == a)
        .map(|(_, v)| v.clone())
}

/// The node's values of every row level; None when it lacks one (an extra
/// column's stage that the level's axis does not reach).
fn level_values(node: &Node, levels: &[String]) -> Option<Vec<String>> {
    levels
        .iter()
        .map(|l| cell_value(node, &Some(l.clone())))
        .collect()
}
/// A metric the table names that none of its cells has (when some cell
/// has metrics at all): a typo, reported with the nearest metric.
pub fn unknown_metric(
    dag: &Dag,
    node: &Node,
    upstream: &dyn Fn(usize) -> Option<Manifest>,
) -> Option<String> {
    let mut have: std::collections::BTreeSet<String> = Default::default();
    let mut stage = None;
    for inp in &node.inputs {
        if let InputSource::Node { node: up, .. } = inp.source {
            stage.get_or_insert(dag.nodes[up].stage.clone());
            if let Some(m) = upstream(up) {
                have.extend(m.metrics.keys().cloned());
            }
        }
    }
    if have.is_empty() {
        return None;
    }
    let wanted = node.params.get("metrics")?.as_array()?;
    for w in wanted.iter().filter_map(|v| v.as_str()) {
        if have.contains(w) {
            continue;
        }
        let help = match mrbm_stage::nearest(w, have.iter().map(String::as_str)) {
            Some(n) => format!("did you mean `{n}`? "),
            None => String::new(),
        };
        return Some(format!(
            "{}: {}: no metric `{w}` in the cells of stage `{}`\n  help: {help}its metrics: {}",
            node.declared,
            node.id,
            stage.unwrap_or_default(),
            have.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    None
}
