//! Run history: every `mrbm run` leaves a record in CACHE/history/ID.json
//! (written atomically) with what was asked for (experiment, profile,
//! --set, --sweep), where it ran (git commit, mrbm version, device) and
//! what came out (each node's key and status, each table cell's metrics).
//! `mrbm runs` lists them, `mrbm compare` sets them side by side, and
//! `mrbm gc` keeps the entries of the last runs and of pinned ones.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::RunnerError;
use crate::kinds::table::TableParams;
use crate::plan::{Dag, InputSource};
use crate::run::job::NodeResult;
use crate::store::{self, Store};

pub use super::record::{CellRun, NodeRun, Run};

/// The folder of run records inside the cache.
pub const DIR: &str = "history";

/// What the command line asked for, recorded with the run.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub file: PathBuf,
    pub profile: Option<String>,
    pub sets: Vec<String>,
    pub sweeps: Vec<String>,
    pub device: String,
    /// blake3 of each file the experiment was read from, by path.
    pub sources: BTreeMap<String, String>,
    /// The run was stopped by an interrupt.
    pub interrupted: bool,
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The project's commit and whether its work tree has uncommitted changes.
pub fn git_state(root: &Path) -> (String, Option<bool>) {
    git_state_except(root, &[])
}

/// As [`git_state`], with changes to the `published` files (what the run
/// itself writes into the project: tables, grids) not counted: a run from
/// a clean commit whose results differ from the committed ones is still a
/// run of that commit.
pub fn git_state_except(root: &Path, published: &[PathBuf]) -> (String, Option<bool>) {
    match git(root, &["rev-parse", "HEAD"]) {
        Some(c) if !c.trim().is_empty() => {
            // Paths relative to the work tree's top, as porcelain prints them.
            let top = git(root, &["rev-parse", "--show-toplevel"])
                .map(|t| PathBuf::from(t.trim()))
                .and_then(|t| std::fs::canonicalize(&t).ok().or(Some(t)));
            let ours: BTreeSet<PathBuf> = published
                .iter()
                .filter_map(|p| {
                    let top = top.as_ref()?;
                    let abs = match p.parent().and_then(|d| std::fs::canonicalize(d).ok()) {
                        Some(d) => d.join(p.file_name()?),
                        None => p.clone(),
                    };
                    abs.strip_prefix(top).ok().map(Path::to_path_buf)
                })
                .collect();
            let dirty = git(
                root,
                &["status", "--porcelain", "-z", "--untracked-files=no"],
            )
            .map(|s| {
                s.split('\0')
                    .filter(|e| e.len() > 3)
                    .any(|e| !ours.contains(Path::new(&e[3..])))
            });
            (c.trim().to_string(), dirty)
        }
        _ => ("unknown".into(), None),
    }
}

/// Build the record of a finished run.
pub fn record(dag: &Dag, results: &[NodeResult], req: &Request) -> Run {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let unix_ms = now.as_millis();
    let id = blake3::hash(
        format!(
            "{}:{}:{}:{:?}",
            now.as_nanos(),
            std::process::id(),
            dag.experiment,
            req.sets
        )
        .as_bytes(),
    )
    .to_hex()[..10]
        .to_string();
    let published: Vec<PathBuf> = dag
        .nodes
        .iter()
        .flat_map(|n| n.publish.iter().map(|(_, p)| p.clone()))
        .collect();
    let (git_commit, git_dirty) = git_state_except(&dag.project_root, &published);
    let params = dag
        .nodes
        .iter()
        .filter(|n| !n.is_table())
        .map(|n| (n.id.clone(), n.params.clone()))
        .collect();
    let nodes = dag
        .nodes
        .iter()
        .zip(results)
        .map(|(n, r)| NodeRun {
            id: n.id.clone(),
            key: r.key.clone(),
            status: r.status.word().to_string(),
        })
        .collect();
    let mut cells = Vec::new();
    for node in dag.nodes.iter().filter(|n| n.is_table()) {
        let Ok(tp) = serde_json::from_value::<TableParams>(node.params.clone()) else {
            continue;
        };
        for c in &tp.cells {
            let Some(InputSource::Node { node: up, .. }) = node
                .inputs
                .iter()
                .find(|i| i.slot == c.slot)
                .map(|i| &i.source)
            else {
                continue;
            };
            let r = &results[*up];
            cells.push(CellRun {
                table: tp.name.clone(),
                row: c.row_label(&tp),
                column: c.column.clone(),
                stage: dag.nodes[*up].id.clone(),
                key: r.key.clone().filter(|_| r.status.ok()),
                metrics: r
                    .manifest
                    .as_ref()
                    .filter(|_| r.status.ok())
                    .map(|m| m.metrics.clone())
                    .unwrap_or_default(),
                shown: tp.metrics.clone(),
            });
        }
    }
    Run {
        id,
        time: store::now_rfc3339(),
        unix_ms,
        experiment: dag.experiment.clone(),
        file: req.file.display().to_string(),
        profile: req.profile.clone(),
        overrides: req.sets.clone(),
        sweeps: req.sweeps.clone(),
        git_commit,
        git_dirty,
        mrbm_version: crate::run::job::TOOL_VERSION.to_string(),
        device: req.device.clone(),
        nodes,
        cells,
        pinned: false,
        status: crate::report::rundiff::status_of(results, req.interrupted).to_string(),
        sources: req.sources.clone(),
        params,
    }
}

pub fn dir(store_root: &Path) -> PathBuf {
    store_root.join(DIR)
}

/// Write a run's record atomically.
pub fn save(store: &Store, run: &Run) -> Result<(), RunnerError> {
    let d = dir(&store.root);
    std::fs::create_dir_all(&d).map_err(|e| RunnerError::cache(&d, e))?;
    let path = d.join(format!("{}.json", run.id));
    let bytes = serde_json::to_vec_pretty(run).map_err(|e| RunnerError::cache(&path, e))?;
    store::write_atomic(&path, &bytes)
}

/// Every recorded run, oldest first. An unreadable record is skipped with
/// a warning on stderr naming the file and why (see [`load_checked`]).
pub fn load_all(store_root: &Path) -> Vec<Run> {
    let (runs, bad) = load_checked(store_root);
    for (path, why) in &bad {
        eprintln!(
            "warning: unreadable run record {}: {why} (skipped; delete it, or restore it from a backup)",
            path.display()
        );
    }
    runs
}

/// Every readable recorded run, oldest first, and each record that does
/// not read as a run (file, reason): unreadable, empty, truncated, not
/// JSON, another schema, nested too deeply.
pub fn load_checked(store_root: &Path) -> (Vec<Run>, Vec<(PathBuf, String)>) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir(store_root))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut runs = Vec::new();
    let mut bad = Vec::new();
    for f in files {
        match read_record(&f) {
            Ok(r) => runs.push(r),
            Err(why) => bad.push((f, why)),
        }
    }
    runs.sort_by(|a, b| (a.unix_ms, &a.time, &a.id).cmp(&(b.unix_ms, &b.time, &b.id)));
    (runs, bad)
}

fn read_record(path: &Path) -> Result<Run, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".into());
    }
    serde_json::from_slice::<Run>(&bytes).map_err(|e| format!("not a run record: {e}"))
}

/// A user error when `sel` names (as an id prefix) a record that does not
/// read: `mrbm compare` and `mrbm report` refuse it rather than show
/// another run.
pub fn refuse_unreadable(store_root: &Path, sel: &str) -> Result<(), RunnerError> {
    let (_, bad) = load_checked(store_root);
    let hit = bad.iter().find(|(p, _)| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| !sel.is_empty() && s.starts_with(sel))
    });
    match hit {
        Some((p, why)) => Err(RunnerError::Usage(format!(
            "run `{sel}`: its record {} is unreadable: {why}",
            p.display()
        ))),
        None => Ok(()),
    }
}

/// The run whose id starts with `prefix` (which must pick exactly one).
pub fn find<'a>(runs: &'a [Run], prefix: &str) -> Result<&'a Run, RunnerError> {
    let hits: Vec<&Run> = runs.iter().filter(|r| r.id.starts_with(prefix)).collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(RunnerError::Usage(format!(
            "run `{prefix}`: no recorded run has an id starting so (see `mrbm runs`)"
        ))),
        many => Err(RunnerError::Usage(format!(
            "run `{prefix}` is ambiguous: it starts {} ids ({}); give more characters",
            many.len(),
            many.iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Set or clear a run's pin.
pub fn set_pin(store: &Store, prefix: &str, pinned: bool) -> Result<Run, RunnerError> {
    let runs = load_all(&store.root);
    let mut run = find(&runs, prefix)?.clone();
    run.pinned = pinned;
    save(store, &run)?;
    Ok(run)
}

/// Does `sel` (an experiment name, file path or file stem) pick this run?
pub fn matches(run: &Run, sel: &str) -> bool {
    let stem = |p: &str| {
        Path::new(p)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
    };
    run.experiment == sel
        || run.file == sel
        || stem(&run.file).as_deref() == Some(sel)
        || (sel.ends_with(".toml") && stem(&run.file) == stem(sel))
}

/// The cache keys that the last `keep` runs of each experiment, and every
/// pinned run, used.
pub fn kept_keys(runs: &[Run], keep: usize) -> BTreeSet<String> {
    let mut by_exp: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        by_exp.entry(r.experiment.as_str()).or_default().push(r);
    }
    let mut out = BTreeSet::new();
    for list in by_exp.values() {
        let n = list.len();
        for (i, r) in list.iter().enumerate() {
            if r.pinned || i + keep >= n {
                out.extend(r.nodes.iter().filter_map(|x| x.key.clone()));
            }
        }
    }
    out
}

/// Parameters of a run: profile, each --set and each --sweep.
pub fn params_of(run: &Run) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(p) = &run.profile {
        m.insert("profile".to_string(), p.clone());
    }
    for s in &run.overrides {
        if let Some((k, v)) = s.split_once('=') {
            m.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    for s in &run.sweeps {
        if let Some((k, v)) = s.split_once('=') {
            m.insert(format!("sweep {}", k.trim()), v.trim().to_string());
        }
    }
    m
}

/// Metrics of a run: `table/row[/column] metric` -> value; those the
/// tables show, or all of their stages' metrics.
pub fn metrics_of(run: &Run, all: bool) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for c in &run.cells {
        for (k, v) in &c.metrics {
            if all || c.shown.is_empty() || c.shown.contains(k) {
                m.insert(format!("{} {k}", c.label()), *v);
            }
        }
    }
    m
}

/// Ordered union of keys over several maps.
fn union_keys<'a, V: 'a>(maps: impl Iterator<Item = &'a BTreeMap<String, V>>) -> Vec<String> {
    let mut s = BTreeSet::new();
    for m in maps {
        s.extend(m.keys().cloned());
    }
    s.into_iter().collect()
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s.is_empty() || s == "-" {
            "0".into()
        } else {
            s.to_string()
        }
    }
}

fn commit_of(r: &Run) -> String {
    let c: String = r.git_commit.chars().take(10).collect();
    match r.git_dirty {
        Some(true) => format!("{c}+dirty"),
        _ => c,
    }
}

/// Most metric columns `mrbm runs` shows; `mrbm compare` shows them all.
pub const MAX_METRIC_COLUMNS: usize = 8;

/// `mrbm runs`: one row per run, newest last; columns: id, time,
/// experiment, commit, each parameter any listed run changed, then the
/// metrics (at most MAX_METRIC_COLUMNS).
pub fn list_rows(runs: &[&Run]) -> (Vec<Vec<String>>, usize) {
    let params: Vec<BTreeMap<String, String>> = runs.iter().map(|r| params_of(r)).collect();
    let metrics: Vec<BTreeMap<String, f64>> = runs.iter().map(|r| metrics_of(r, false)).collect();
    let pkeys = union_keys(params.iter());
    let mkeys = union_keys(metrics.iter());
    let hidden = mkeys.len().saturating_sub(MAX_METRIC_COLUMNS);
    let mkeys = &mkeys[..mkeys.len().min(MAX_METRIC_COLUMNS)];
    let mut header: Vec<String> = ["run", "time", "experiment", "commit", "status"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(pkeys.iter().cloned());
    header.extend(mkeys.iter().cloned());
    let mut rows = vec![header];
    for ((r, p), m) in runs.iter().zip(&params).zip(&metrics) {
        let mut line = vec![
            format!("{}{}", r.id, if r.pinned { " (pinned)" } else { "" }),
            r.time.clone(),
            r.experiment.clone(),
            commit_of(r),
            crate::report::rundiff::recorded_status(r).to_string(),
        ];
        line.extend(
            pkeys
                .iter()
                .map(|k| p.get(k).cloned().unwrap_or("-".into())),
        );
        line.extend(
            mkeys
                .iter()
                .map(|k| m.get(k).map(|v| fmt_num(*v)).unwrap_or("-".into())),
        );
        rows.push(line);
    }
    (rows, hidden)
}

/// `mrbm compare`: one row per field, parameter and metric, one column
/// per run, then `diff`: for numbers, the last run minus the first; for
/// the rest, `*` where the runs differ. `all`: every metric of the tables'
/// stages, not only those the tables show.
pub fn compare_rows(runs: &[&Run], all: bool) -> Vec<Vec<String>> {
    let mut header = vec!["".to_string()];
    header.extend(runs.iter().map(|r| r.id.clone()));
    header.push("diff".into());
    let mut rows = vec![header];
    let mut text_row = |name: &str, vals: Vec<String>| {
        let differ = vals.iter().any(|v| v != &vals[0]);
        let mut line = vec![name.to_string()];
        line.extend(vals);
        line.push(if differ { "*".into() } else { String::new() });
        rows.push(line);
    };
    text_row("time", runs.iter().map(|r| r.time.clone()).collect());
    text_row(
        "experiment",
        runs.iter().map(|r| r.experiment.clone()).collect(),
    );
    text_row("commit", runs.iter().map(|r| commit_of(r)).collect());
    text_row(
        "mrbm",
        runs.iter().map(|r| r.mrbm_version.clone()).collect(),
    );
    text_row("device", runs.iter().map(|r| r.device.clone()).collect());
    text_row(
        "status",
        runs.iter()
            .map(|r| crate::report::rundiff::recorded_status(r).to_string())
            .collect(),
    );
    for path in union_keys(runs.iter().map(|r| &r.sources)) {
        text_row(
            &format!("file {path}"),
            runs.iter()
                .map(|r| match r.sources.get(&path) {
                    Some(h) => format!("blake3 {}", &h[..h.len().min(12)]),
                    None => "-".into(),
                })
                .collect(),
        );
    }
    let params: Vec<BTreeMap<String, String>> = runs.iter().map(|r| params_of(r)).collect();
    for k in union_keys(params.iter()) {
        text_row(
            &k,
            params
                .iter()
                .map(|p| p.get(&k).cloned().unwrap_or("-".into()))
                .collect(),
        );
    }
    // Every resolved parameter that differs (`mrbm params-diff` alone);
    // none against a record from before they were kept (a note says so).
    if runs.iter().all(|r| !r.params.is_empty()) {
        for (name, vals) in crate::report::rundiff::param_rows(runs, true) {
            text_row(&format!("param {name}"), vals);
        }
    }
    let metrics: Vec<BTreeMap<String, f64>> = runs.iter().map(|r| metrics_of(r, all)).collect();
    for k in union_keys(metrics.iter()) {
        let vals: Vec<Option<f64>> = metrics.iter().map(|m| m.get(&k).copied()).collect();
        let mut line = vec![k.clone()];
        line.extend(
            vals.iter()
                .map(|v| v.map(fmt_num).unwrap_or_else(|| "-".into())),
        );
        let diff = match (
            vals.first().copied().flatten(),
            vals.last().copied().flatten(),
        ) {
            (Some(a), Some(b)) if a.to_bits() == b.to_bits() || a == b => {
                if vals.iter().all(|v| *v == vals[0]) {
                    String::new()
                } else {
                    "*".into()
                }
            }
            (Some(a), Some(b)) => {
                let d = b - a;
                format!("{}{}", if d > 0.0 { "+" } else { "" }, fmt_num(d))
            }
            _ if vals.iter().any(|v| v.is_none()) && vals.iter().any(|v| v.is_some()) => "*".into(),
            _ => String::new(),
        };
        line.push(diff);
        rows.push(line);
    }
    rows
}

/// Rows as CSV text.
pub fn to_csv(rows: &[Vec<String>]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        let _ = w.write_record(r);
    }
    String::from_utf8_lossy(&w.into_inner().unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, ms: u128, exp: &str, sets: &[&str], v: f64, key: &str) -> Run {
        Run {
            id: id.into(),
            time: "2026-01-01T00:00:00Z".into(),
            unix_ms: ms,
            experiment: exp.into(),
            file: format!("experiments/{exp}.toml"),
            overrides: sets.iter().map(|s| s.to_string()).collect(),
            git_commit: "unknown".into(),
            nodes: vec![NodeRun {
                id: "svm".into(),
                key: Some(key.into()),
                status: "ran".into(),
            }],
            cells: vec![CellRun {
                table: "t".into(),
                row: "all".into(),
                stage: "svm".into(),
                key: Some(key.into()),
                metrics: [("err".to_string(), v), ("n".to_string(), 9.0)].into(),
                shown: vec!["err".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn prefixes_pick_one_run_or_say_why_not() {
        let runs = vec![
            run("abc123", 1, "q", &[], 1.0, "k1"),
            run("abd456", 2, "q", &[], 1.0, "k2"),
        ];
        assert_eq!(find(&runs, "abc").unwrap().id, "abc123");
        let e = find(&runs, "ab").unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("abc123"), "{e}");
        assert!(find(&runs, "zz").is_err());
    }

    #[test]
    fn compare_shows_parameters_metrics_and_differences() {
        let a = run("a1", 1, "q", &["train.epochs=10"], 0.25, "k1");
        let b = run("b2", 2, "q", &["train.epochs=30"], 0.125, "k2");
        let rows = compare_rows(&[&a, &b], false);
        let row = |name: &str| rows.iter().find(|r| r[0] == name).unwrap().clone();
        assert_eq!(row("train.epochs"), vec!["train.epochs", "10", "30", "*"]);
        assert_eq!(
            row("t/all err"),
            vec!["t/all err", "0.25", "0.125", "-0.125"]
        );
        assert_eq!(row("experiment")[3], "");
        // Only the metrics the table shows, unless all are asked for.
        assert!(!rows.iter().any(|r| r[0] == "t/all n"));
        assert!(compare_rows(&[&a, &b], true)
            .iter()
            .any(|r| r[0] == "t/all n"));
        let csv = to_csv(&rows);
        assert!(
            csv.lines().next().unwrap().starts_with(",a1,b2,diff"),
            "{csv}"
        );
        let (list, hidden) = list_rows(&[&a, &b]);
        assert_eq!(hidden, 0);
        assert!(list[0].contains(&"train.epochs".to_string()));
        assert!(list[2].contains(&"0.125".to_string()));
    }

    #[test]
    fn gc_keeps_the_last_runs_of_each_experiment_and_pinned_ones() {
        let mut old = run("r1", 1, "q", &[], 1.0, "k1");
        let runs = vec![
            old.clone(),
            run("r2", 2, "q", &[], 1.0, "k2"),
            run("r3", 3, "q", &[], 1.0, "k3"),
            run("s1", 1, "other", &[], 1.0, "k9"),
        ];
        let keep = kept_keys(&runs, 2);
        assert_eq!(
            keep,
            ["k2", "k3", "k9"].iter().map(|s| s.to_string()).collect()
        );
        old.pinned = true;
        let runs = vec![old, runs[1].clone(), runs[2].clone()];
        assert!(kept_keys(&runs, 1).contains("k1"));
        assert!(!kept_keys(&runs, 1).contains("k2"));
    }

    #[test]
    fn records_round_trip_with_nan_metrics() {
        let mut r = run("x", 1, "q", &[], f64::NAN, "k");
        r.git_dirty = Some(true);
        let text = serde_json::to_string(&r).unwrap();
        let back: Run = serde_json::from_str(&text).unwrap();
        assert!(back.cells[0].metrics["err"].is_nan());
        assert_eq!(back.git_dirty, Some(true));
    }
}
