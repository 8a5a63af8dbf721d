//! The report phase of `mrbm run`: what a run prints once it is over (the
//! tables it published, the summary of its stages, their warnings and
//! failures, its exit code), and the renderings of the stage graph for
//! `mrbm dag`. (`mrbm report`, the HTML page about a recorded run, is
//! [`crate::report::html`].)

use std::path::Path;

use crate::kinds::table;
use crate::plan::{Dag, InputSource, Node};
use crate::run::job::{NodeResult, Status};
use crate::run::output;
use crate::store::Store;

/// The tables the run published, aligned, each under its name and path.
/// They are rebuilt from memory (each table's parameters and the metrics
/// its cells' entries carry in `results`), as its stage built the CSV.
pub fn tables(dag: &Dag, results: &[NodeResult]) -> String {
    let mut s = String::new();
    for (node, r) in dag.nodes.iter().zip(results) {
        if !node.is_table() || !r.status.ok() {
            continue;
        }
        let (Some((_, dest)), Some(grid)) = (node.publish.first(), grid(node, results)) else {
            continue;
        };
        s.push_str(&format!(
            "\n{} ({})\n",
            node.id.trim_start_matches("table:"),
            rel(dest, &dag.project_root)
        ));
        s.push_str(&table::render_aligned(&grid));
    }
    s
}

/// A table node's rows, header first, from its canonical parameters and
/// the metrics of its cells' entries in `results` (None: parameters that
/// are no table's).
pub fn grid(node: &Node, results: &[NodeResult]) -> Option<Vec<Vec<String>>> {
    let p: table::TableParams = serde_json::from_value(node.params.clone()).ok()?;
    let metrics_of = |slot: &str| {
        let input = node.inputs.iter().find(|i| i.slot == slot)?;
        let InputSource::Node { node: up, .. } = input.source else {
            return None;
        };
        Some(results.get(up)?.manifest.as_ref()?.metrics.clone())
    };
    Some(table::build_grid(&p, metrics_of))
}

/// The exit code of a run: 0 when nothing failed, 2 when only user
/// mistakes did (bad data, parameters), 1 otherwise.
pub fn exit_code(results: &[NodeResult]) -> u8 {
    let failed: Vec<&Status> = results
        .iter()
        .map(|r| &r.status)
        .filter(|s| matches!(s, Status::Failed { .. }))
        .collect();
    if failed.is_empty() {
        0
    } else if failed
        .iter()
        .all(|s| matches!(s, Status::Failed { user: true, .. }))
    {
        2
    } else {
        1
    }
}

pub fn rel(p: &Path, root: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// The summary fits in this many columns (stage ids are shortened).
const SUMMARY_WIDTH: usize = 100;
/// Warnings listed per stage in the summary; the rest are in its log.
const WARNINGS_SHOWN: usize = 5;

pub fn print_summary(dag: &Dag, results: &[NodeResult], store: &Store, total: f64, device: &str) {
    print!("{}", summary_table(dag, results));
    let count = |f: &dyn Fn(&Status) -> bool| results.iter().filter(|r| f(&r.status)).count();
    println!(
        "{} ran, {} cached, {} failed, {} skipped in {total:.2}s on {device} (cache {})",
        count(&|s| matches!(s, Status::Ran)),
        count(&|s| matches!(s, Status::Cached)),
        count(&|s| matches!(s, Status::Failed { .. })),
        count(&|s| matches!(s, Status::Skipped { .. } | Status::Cancelled)),
        store.root.display()
    );
    print!("{}", summary_warnings(dag, results));
    for (node, r) in dag.nodes.iter().zip(results) {
        if let Status::Failed { message, .. } = &r.status {
            eprintln!("\nerror: {} failed: {message}", node.id);
            if let Some(l) = &r.log {
                eprintln!("  log: {}", l.display());
            }
        }
    }
}

/// Stage, status, seconds and a short key (`mrbm show KEY` gives the
/// entry's paths), within SUMMARY_WIDTH columns.
pub fn summary_table(dag: &Dag, results: &[NodeResult]) -> String {
    let key_w = 12;
    let secs: Vec<String> = results
        .iter()
        .map(|r| format!("{:.2}", r.seconds))
        .collect();
    let secs_w = secs.iter().map(String::len).max().unwrap_or(0).max(7);
    // stage  status(9)  seconds  key
    let id_w = SUMMARY_WIDTH
        .saturating_sub(2 + 9 + 2 + secs_w + 2 + key_w)
        .max(10);
    let mut rows = vec![vec![
        "stage".to_string(),
        "status".into(),
        "seconds".into(),
        "key".into(),
    ]];
    for ((node, r), sec) in dag.nodes.iter().zip(results).zip(secs) {
        let key = r
            .key
            .as_deref()
            .map(|k| k.chars().take(key_w).collect())
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            shorten(&node.id, id_w),
            r.status.word().into(),
            sec,
            key,
        ]);
    }
    format!("\n{}", table::render_aligned(&rows))
}

/// `s` cut to `w` characters, the middle replaced by `..`.
pub fn shorten(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    let head = (w - 2) / 2;
    let tail = w - 2 - head;
    let chars: Vec<char> = s.chars().collect();
    format!(
        "{}..{}",
        chars[..head].iter().collect::<String>(),
        chars[n - tail..].iter().collect::<String>()
    )
}

/// The warnings in the logs of the stages of this run, per stage.
fn summary_warnings(dag: &Dag, results: &[NodeResult]) -> String {
    let mut s = String::new();
    for (node, r) in dag.nodes.iter().zip(results) {
        let Some(text) = r.log.as_ref().and_then(|l| std::fs::read_to_string(l).ok()) else {
            continue;
        };
        let w = output::warnings_in_log(&text);
        if w.is_empty() {
            continue;
        }
        if s.is_empty() {
            s.push_str("\nwarnings:\n");
        }
        s.push_str(&format!(
            "  {}{}:\n",
            node.id,
            if r.status == Status::Cached {
                " (cached)"
            } else {
                ""
            }
        ));
        for line in w.iter().take(WARNINGS_SHOWN) {
            s.push_str(&format!("    {line}\n"));
        }
        if w.len() > WARNINGS_SHOWN {
            s.push_str(&format!(
                "    and {} more in its log (mrbm show {})\n",
                w.len() - WARNINGS_SHOWN,
                r.key
                    .as_deref()
                    .map(|k| &k[..k.len().min(12)])
                    .unwrap_or(&node.id)
            ));
        }
    }
    s
}

pub fn render_dag_text(dag: &Dag) -> String {
    let mut s = String::new();
    for n in &dag.nodes {
        let ins: Vec<String> = n
            .inputs
            .iter()
            .map(|i| match &i.source {
                InputSource::Node { node, file } => format!(
                    "{}={}{}",
                    i.slot,
                    dag.nodes[*node].id,
                    file.as_ref().map(|f| format!("/{f}")).unwrap_or_default()
                ),
                InputSource::External { path, .. } => format!("{}={}", i.slot, path.display()),
            })
            .collect();
        s.push_str(&format!(
            "{} ({}){}\n",
            n.id,
            n.kind,
            if ins.is_empty() {
                String::new()
            } else {
                format!(" <- {}", ins.join(", "))
            }
        ));
    }
    s
}

pub fn render_dot(dag: &Dag) -> String {
    let mut s = String::from(
        "digraph mrbm {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    for (i, n) in dag.nodes.iter().enumerate() {
        s.push_str(&format!(
            "  n{i} [label=\"{}\\n({})\"];\n",
            n.id.replace('"', "\\\""),
            n.kind
        ));
    }
    for (i, n) in dag.nodes.iter().enumerate() {
        for inp in &n.inputs {
            match &inp.source {
                InputSource::Node { node, .. } => {
                    s.push_str(&format!("  n{node} -> n{i} [label=\"{}\"];\n", inp.slot))
                }
                InputSource::External { path, .. } => s.push_str(&format!(
                    "  \"{}\" [shape=folder];\n  \"{}\" -> n{i} [label=\"{}\"];\n",
                    path.display(),
                    path.display(),
                    inp.slot
                )),
            }
        }
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(status: Status) -> NodeResult {
        NodeResult::bare(status)
    }

    fn failed(user: bool) -> Status {
        Status::Failed {
            message: "x".into(),
            user,
        }
    }

    #[test]
    fn exit_code_is_2_only_when_every_failure_is_the_users() {
        assert_eq!(exit_code(&[r(Status::Ran), r(Status::Cached)]), 0);
        assert_eq!(exit_code(&[r(Status::Ran), r(failed(true))]), 2);
        assert_eq!(exit_code(&[r(failed(true)), r(failed(false))]), 1);
        assert_eq!(exit_code(&[r(Status::Cancelled)]), 0);
    }

    #[test]
    fn shorten_keeps_both_ends_within_the_width() {
        assert_eq!(shorten("train[N=255]", 20), "train[N=255]");
        let s = shorten("train[N=255,lr=0.03,epochs=10]", 12);
        assert_eq!(s.chars().count(), 12);
        assert_eq!(s, "train..s=10]");
    }
}
