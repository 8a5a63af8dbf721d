//! The last check of the expand phase: no two nodes publish to the same
//! results path. The run copies each node's files into the project's
//! results/ as it completes, so two nodes sharing a path would overwrite
//! each other silently, and which one survived would depend on timing.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::RunnerError;
use crate::load::config::{LoadedExperiment, Source};

use super::Node;

/// One publish declaration: which node, which of its files.
#[derive(Clone, Copy)]
struct Publisher<'n> {
    node: &'n Node,
    file: &'n str,
}

/// Refuse the plan when two nodes (two stages, two cells of one stage, a
/// stage and a table, or one node's two files) publish to the same path.
/// The error points at the second declaration and names the first.
pub fn check_collisions(
    exp: &LoadedExperiment,
    project_root: &Path,
    nodes: &[Node],
) -> Result<(), RunnerError> {
    let mut seen: HashMap<&PathBuf, Publisher> = HashMap::new();
    for node in nodes {
        for (file, dest) in &node.publish {
            let this = Publisher { node, file };
            if let Some(first) = seen.get(dest) {
                return Err(collision(exp, project_root, dest, *first, this));
            }
            seen.insert(dest, this);
        }
    }
    Ok(())
}

fn collision(
    exp: &LoadedExperiment,
    project_root: &Path,
    dest: &Path,
    first: Publisher,
    second: Publisher,
) -> RunnerError {
    let shown = dest.strip_prefix(project_root).unwrap_or(dest).display();
    let (first_src, first_span) = declared_at(exp, first);
    let (src, span) = declared_at(exp, second);
    let message = if std::ptr::eq(first.node, second.node) {
        format!(
            "{} publishes both `{}` and `{}` to {shown}: one would overwrite the other",
            who(second.node),
            first.file,
            second.file
        )
    } else {
        format!(
            "{} and {} (declared at {}) both publish to {shown}: one would overwrite the other",
            who(second.node),
            who(first.node),
            first_src.place(first_span)
        )
    };
    let help = if first.node.stage == second.node.stage && !second.node.cell.is_empty() {
        let axes: Vec<String> = second
            .node
            .cell
            .iter()
            .map(|(a, _)| format!("{{{a}}}"))
            .collect();
        format!(
            "give each cell its own path: name its sweep axes in it ({}), or write {{cell}} for all of them",
            axes.join(", ")
        )
    } else {
        "give each its own path under results/ (a table publishes to results/NAME.csv)".to_string()
    };
    src.locate(span, message, Some(help))
}

/// "stage `gen[N=1]`" or "table `quickstart`".
fn who(node: &Node) -> String {
    match table_name(node) {
        Some(name) => format!("table `{name}`"),
        None => format!("stage `{}`", node.id),
    }
}

fn table_name(node: &Node) -> Option<&str> {
    if node.is_table() {
        node.stage.strip_prefix("table:")
    } else {
        None
    }
}

/// The file and span of a publish declaration: the stage's `publish.FILE`
/// key, or the table's `name`.
fn declared_at<'e>(exp: &'e LoadedExperiment, p: Publisher) -> (&'e Source, Option<Range<usize>>) {
    if let Some(name) = table_name(p.node) {
        let src = &exp.source;
        let span = exp
            .file
            .tables
            .iter()
            .position(|t| t.name == name)
            .and_then(|ti| src.span_of_item(&["tables"], ti, "name"));
        return (src, span);
    }
    let src = exp.stage_source(&p.node.stage);
    let span = src.span_or_prefix(&["stages", &p.node.stage, "publish", p.file]);
    (src, span)
}
