//! What `runs`, `compare` and `params-diff` read from a run record beyond
//! its metrics: the run's status (ok / failed / interrupted), every stage's
//! resolved parameters (the canonical parameters its key was computed
//! from, defaults filled), and the differences between runs' parameters,
//! like `dvc params diff`.
//!
//! Parameters are flattened to `STAGE_ID.PARAM` (nested tables with dots,
//! lists as TOML-like text). A parameter with the same value in every cell
//! of a swept stage, in every run compared, is shown once as `STAGE.PARAM`.
//! A parameter a stage leaves at a default that is omitted from its
//! canonical form (an optional parameter) reads `(default)`; a stage a run
//! does not have reads `-`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::error::RunnerError;
use crate::report::record::Run;
use crate::run::job::{NodeResult, Status};

/// A run whose every stage completed.
pub const OK: &str = "ok";
/// A run where some stage failed (or was skipped because one did).
pub const FAILED: &str = "failed";
/// A run stopped by Ctrl-C (or SIGTERM, SIGHUP).
pub const INTERRUPTED: &str = "interrupted";

/// The status of a run from its nodes' results.
pub fn status_of(results: &[NodeResult], interrupted: bool) -> &'static str {
    if interrupted
        || results
            .iter()
            .any(|r| matches!(r.status, Status::Cancelled))
    {
        INTERRUPTED
    } else if results
        .iter()
        .any(|r| matches!(r.status, Status::Failed { .. } | Status::Skipped { .. }))
    {
        FAILED
    } else {
        OK
    }
}

/// The status a record states, or (records written before it was kept)
/// the one its nodes' words imply.
pub fn recorded_status(run: &Run) -> &str {
    if !run.status.is_empty() {
        return &run.status;
    }
    if run.nodes.iter().any(|n| n.status == "cancelled") {
        INTERRUPTED
    } else if run
        .nodes
        .iter()
        .any(|n| n.status == "FAILED" || n.status == "skipped")
    {
        FAILED
    } else {
        OK
    }
}

/// A parameter value as text: strings bare, everything else as compact JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `prefix.key` -> value text for every leaf of `v` (tables recursed into).
fn leaves(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, x) in map {
                leaves(&format!("{prefix}.{k}"), x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), text(other));
        }
    }
}

/// One run's parameters: (stage id, parameter path) -> value text.
pub fn flatten(params: &BTreeMap<String, Value>) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for (id, p) in params {
        let mut flat = BTreeMap::new();
        if let Value::Object(map) = p {
            for (k, v) in map {
                leaves(k, v, &mut flat);
            }
        }
        for (k, v) in flat {
            out.insert((id.clone(), k), v);
        }
    }
    out
}

/// The stage a stage id belongs to: `train[N=1]` -> `train`.
fn stage_of(id: &str) -> &str {
    id.split('[').next().unwrap_or(id)
}

/// One row of a parameter comparison: its name and one value per run.
pub type ParamRow = (String, Vec<String>);

/// Every parameter of the runs, one row each, with one value per run
/// (`(default)` / `-` as the module says); `only_diff` keeps the rows
/// whose values differ. Cells of a swept stage that agree (in every run)
/// fold into one `STAGE.PARAM` row.
pub fn param_rows(runs: &[&Run], only_diff: bool) -> Vec<ParamRow> {
    let flat: Vec<BTreeMap<(String, String), String>> =
        runs.iter().map(|r| flatten(&r.params)).collect();
    // Stage -> its ids (cells) in any run; (stage, param) -> those ids.
    let mut cells: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for r in runs {
        for id in r.params.keys() {
            cells.entry(stage_of(id)).or_default().insert(id.clone());
        }
    }
    let mut groups: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for f in &flat {
        for (id, p) in f.keys() {
            let stage = stage_of(id);
            groups.insert((stage.to_string(), p.clone()), cells[stage].clone());
        }
    }
    let value = |i: usize, id: &str, p: &str| -> String {
        match flat[i].get(&(id.to_string(), p.to_string())) {
            Some(v) => v.clone(),
            None if runs[i].params.contains_key(id) => "(default)".into(),
            None => "-".into(),
        }
    };
    let mut rows = Vec::new();
    for ((stage, p), ids) in groups {
        // Per run: the value every cell agrees on, if they do.
        let folded: Option<Vec<String>> = (0..runs.len())
            .map(|i| {
                let vals: BTreeSet<String> = ids.iter().map(|id| value(i, id, &p)).collect();
                (vals.len() == 1).then(|| vals.into_iter().next().unwrap_or_default())
            })
            .collect();
        let candidates: Vec<ParamRow> = match folded {
            Some(vals) => vec![(format!("{stage}.{p}"), vals)],
            None => ids
                .iter()
                .map(|id| {
                    (
                        format!("{id}.{p}"),
                        (0..runs.len()).map(|i| value(i, id, &p)).collect(),
                    )
                })
                .collect(),
        };
        for (name, vals) in candidates {
            if !only_diff || vals.iter().any(|v| v != &vals[0]) {
                rows.push((name, vals));
            }
        }
    }
    rows
}

/// `mrbm params-diff` (and `compare --params`): a header row (`param`,
/// the run ids) and one row per parameter whose value differs.
pub fn params_diff_rows(runs: &[&Run]) -> Vec<Vec<String>> {
    let mut header = vec!["param".to_string()];
    header.extend(runs.iter().map(|r| r.id.clone()));
    let mut rows = vec![header];
    if runs.iter().any(|r| r.params.is_empty()) {
        return rows; // see [`no_params_note`]
    }
    for (name, vals) in param_rows(runs, true) {
        let mut line = vec![name];
        line.extend(vals);
        rows.push(line);
    }
    rows
}

/// The run of `run`'s experiment recorded just before it (`runs` is
/// oldest first, as [`crate::report::history::load_all`] gives it): what
/// `compare RUN` sets beside RUN. An error that says what to give instead
/// when there is none.
pub fn previous<'a>(runs: &'a [Run], run: &Run) -> Result<&'a Run, RunnerError> {
    let at = runs
        .iter()
        .position(|r| r.id == run.id)
        .unwrap_or(runs.len());
    runs[..at]
        .iter()
        .rev()
        .find(|r| r.experiment == run.experiment)
        .ok_or_else(|| {
            let others: Vec<&str> = runs
                .iter()
                .filter(|r| r.id != run.id)
                .rev()
                .take(5)
                .map(|r| r.id.as_str())
                .collect();
            RunnerError::Usage(format!(
                "compare sets two or more runs side by side; run {} is the first recorded run of `{}`, so there is none before it to compare with\n  help: give a second id{}",
                run.id,
                run.experiment,
                if others.is_empty() {
                    ", once there is another run (`mrbm runs` lists them)".to_string()
                } else {
                    format!(", e.g. `mrbm compare {} {}` (newest runs: {})", others[0], run.id, others.join(", "))
                }
            ))
        })
}

/// Why a comparison shows no parameter rows although the runs differ in
/// what they recorded, or None.
pub fn no_params_note(runs: &[&Run]) -> Option<String> {
    let without: Vec<&str> = runs
        .iter()
        .filter(|r| r.params.is_empty())
        .map(|r| r.id.as_str())
        .collect();
    (!without.is_empty()).then(|| {
        format!(
            "run {} predates parameter records (only its --set/--sweep are known)",
            without.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(id: &str, params: &[(&str, Value)]) -> Run {
        Run {
            id: id.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn differing_parameters_are_listed_and_agreeing_cells_fold() {
        let a = run(
            "a",
            &[
                (
                    "train[N=1]",
                    json!({"epochs": 3, "n": 1, "lr": 0.01, "momentum": {"initial": 0.5}}),
                ),
                (
                    "train[N=255]",
                    json!({"epochs": 3, "n": 255, "lr": 0.01, "momentum": {"initial": 0.5}}),
                ),
                ("svm", json!({"C": 1.0})),
            ],
        );
        let b = run(
            "b",
            &[
                (
                    "train[N=1]",
                    json!({"epochs": 5, "n": 1, "lr": 0.01, "momentum": {"initial": 0.9}}),
                ),
                (
                    "train[N=255]",
                    json!({"epochs": 5, "n": 255, "lr": 0.02, "momentum": {"initial": 0.9}, "lr_mode": "binary_equivalent"}),
                ),
                ("svm", json!({"C": 1.0})),
            ],
        );
        let rows = param_rows(&[&a, &b], true);
        let names: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "train.epochs",
                "train[N=255].lr",
                "train[N=255].lr_mode",
                "train.momentum.initial"
            ]
        );
        assert_eq!(rows[0].1, vec!["3", "5"]);
        assert_eq!(rows[1].1, vec!["0.01", "0.02"]);
        // Absent from the canonical form: the optional default.
        assert_eq!(rows[2].1, vec!["(default)", "binary_equivalent"]);
        assert_eq!(rows[3].1, vec!["0.5", "0.9"]);
        // Every row, with the ones that agree.
        let all = param_rows(&[&a, &b], false);
        assert!(all
            .iter()
            .any(|(n, v)| n == "svm.C" && v == &vec!["1.0", "1.0"]));
        // The cells differ in n within each run: never folded.
        assert!(all.iter().any(|(n, _)| n == "train[N=255].n"));
        let table = params_diff_rows(&[&a, &b]);
        assert_eq!(table[0], vec!["param", "a", "b"]);
        assert_eq!(table.len(), rows.len() + 1);
    }

    #[test]
    fn a_stage_one_run_lacks_reads_dash_and_old_records_are_named() {
        let a = run("a", &[("svm", json!({"C": 1.0}))]);
        let b = run(
            "b",
            &[("svm", json!({"C": 1.0})), ("extra", json!({"k": 2}))],
        );
        let rows = param_rows(&[&a, &b], true);
        assert_eq!(
            rows,
            vec![(
                "extra.k".to_string(),
                vec!["-".to_string(), "2".to_string()]
            )]
        );
        assert_eq!(no_params_note(&[&a, &b]), None);
        let old = run("old", &[]);
        assert!(no_params_note(&[&old, &a]).unwrap().contains("old"));
    }

    #[test]
    fn one_id_is_compared_with_the_run_of_its_experiment_before_it() {
        let mk = |id: &str, exp: &str| Run {
            id: id.into(),
            experiment: exp.into(),
            ..Default::default()
        };
        let runs = vec![mk("a", "q"), mk("b", "other"), mk("c", "q")];
        assert_eq!(previous(&runs, &runs[2]).unwrap().id, "a");
        let e = previous(&runs, &runs[0]).unwrap_err().to_string();
        assert!(
            e.contains("first recorded run of `q`") && e.contains("mrbm compare c a"),
            "{e}"
        );
    }

    #[test]
    fn status_comes_from_the_record_or_its_nodes() {
        let mut r = Run::default();
        assert_eq!(recorded_status(&r), OK);
        r.nodes.push(crate::report::record::NodeRun {
            id: "x".into(),
            key: None,
            status: "FAILED".into(),
        });
        assert_eq!(recorded_status(&r), FAILED);
        r.nodes[0].status = "cancelled".into();
        assert_eq!(recorded_status(&r), INTERRUPTED);
        r.status = OK.into();
        assert_eq!(recorded_status(&r), OK);
        let res = |s: Status| NodeResult {
            status: s,
            key: None,
            seconds: 0.0,
            log: None,
            manifest: None,
        };
        assert_eq!(
            status_of(&[res(Status::Ran), res(Status::Cached)], false),
            OK
        );
        assert_eq!(status_of(&[res(Status::Ran)], true), INTERRUPTED);
        assert_eq!(
            status_of(
                &[res(Status::Skipped {
                    because: "x".into()
                })],
                false
            ),
            FAILED
        );
    }
}
