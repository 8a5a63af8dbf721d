//! End-to-end tests of run history and command-line sweeps (issue 18):
//! every run recorded in the cache, `mrbm runs`, `mrbm compare`, pins and
//! `gc --keep-runs`, `--sweep`, `--set` on a swept parameter, and tables
//! over axes they do not name.
//!
//! The stages are `command` stages running `sh`, so they take milliseconds.

mod common;
use common::{ok, run_in as run, stderr};

use std::path::Path;
use std::process::{Command, Output};

/// `calc` writes metrics v = K and w = S; `other` is in no table.
const CALC: &str = r#"
name = "calc"

[stages.calc]
kind = "command"
params = { argv = ["sh", "-c", 'echo "{{\"v\": $K, \"w\": $S}}" > "$MRBM_OUT/metrics.json"'], env = { K = "1", S = "0" } }

[stages.other]
kind = "command"
params = { argv = ["sh", "-c", 'echo "$X" > "$MRBM_OUT/x.txt"'], env = { X = "a" } }

[stages.shapes]
kind = "dataset"
params = { format = "synthetic", n = 24, size = 8, classes = 3, seed = 3 }

[sweep]
K = { param = "calc.env.K", values = ["1", "2"] }

[[tables]]
name = "calc"
stage = "calc"
metrics = ["v", "w"]
TABLE_EXTRA
"#;

fn project(table_extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("experiments")).unwrap();
    std::fs::write(
        dir.path().join("experiments/calc.toml"),
        CALC.replace("TABLE_EXTRA", table_extra),
    )
    .unwrap();
    dir
}

/// `mrbm plan experiments/calc.toml EXTRA` in `dir`.
fn plan(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["plan", "experiments/calc.toml"];
    args.extend_from_slice(extra);
    run(dir, &args)
}

/// Run and return the recorded run's id (from "recorded as run ID").
fn run_id(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["run", "--quiet", "experiments/calc.toml"];
    all.extend_from_slice(args);
    let out = ok(&run(dir, &all));
    let line = out
        .lines()
        .find(|l| l.starts_with("recorded as run "))
        .unwrap_or_else(|| panic!("no run id in:\n{out}"));
    line["recorded as run ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn record(dir: &Path, id: &str) -> serde_json::Value {
    let bytes = std::fs::read(dir.join(format!(".mrbm/history/{id}.json"))).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

const ROWS_K: &str = "rows = \"K\"";

#[test]
fn every_run_is_recorded_and_runs_lists_them() {
    let p = project(ROWS_K);
    let d = p.path();
    let a = run_id(d, &[]);
    let b = run_id(d, &["--set", "calc.env.S=\"5\""]);
    assert_ne!(a, b);
    let rb = record(d, &b);
    assert_eq!(rb["id"], b.as_str());
    assert_eq!(rb["experiment"], "calc");
    assert_eq!(rb["file"], "experiments/calc.toml");
    assert_eq!(rb["overrides"], serde_json::json!(["calc.env.S=\"5\""]));
    assert!(rb["time"].as_str().unwrap().ends_with('Z'));
    assert!(rb["git_commit"].is_string());
    assert!(rb["mrbm_version"].is_string());
    assert!(rb["device"].as_str().unwrap().starts_with("cpu"), "{rb}");
    let nodes = rb["nodes"].as_array().unwrap();
    assert!(nodes
        .iter()
        .any(|n| n["id"] == "calc[K=2]" && n["status"] == "ran" && n["key"].is_string()));
    // `other` is cached from the first run.
    assert!(nodes
        .iter()
        .any(|n| n["id"] == "other" && n["status"] == "cached"));
    let cells = rb["cells"].as_array().unwrap();
    let cell = cells.iter().find(|c| c["row"] == "2").unwrap();
    assert_eq!(cell["table"], "calc");
    assert_eq!(cell["stage"], "calc[K=2]");
    assert_eq!(cell["metrics"], serde_json::json!({"v": 2.0, "w": 5.0}));

    let list = ok(&run(d, &["runs"]));
    let lines: Vec<&str> = list.lines().collect();
    // Header, rule, one line per run (oldest first).
    assert_eq!(lines.len(), 4, "{list}");
    assert!(
        lines[0].contains("calc.env.S") && lines[0].contains("calc/2 w"),
        "{list}"
    );
    assert!(
        lines[2].starts_with(&a) && lines[3].starts_with(&b),
        "{list}"
    );
    assert!(lines[3].contains("\"5\""), "{list}");
    // By experiment name or file; an unknown one is a user error.
    assert_eq!(ok(&run(d, &["runs", "calc"])), list);
    assert_eq!(ok(&run(d, &["runs", "experiments/calc.toml"])), list);
    let none = run(d, &["runs", "nosuch"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(stderr(&none).contains("calc"), "{}", stderr(&none));
    let csv = ok(&run(d, &["runs", "--csv"]));
    assert!(csv.starts_with("run,time,experiment,commit,"), "{csv}");

    // `plan` still compares with the last run.
    let plan = ok(&plan(d, &["--set", "calc.env.S=\"5\""]));
    assert!(plan.contains("0 to run"), "{plan}");
}

#[test]
fn compare_shows_parameters_and_metrics_side_by_side() {
    let p = project(ROWS_K);
    let d = p.path();
    let a = run_id(d, &[]);
    let b = run_id(d, &["--set", "calc.env.S=\"5\""]);
    let out = ok(&run(d, &["compare", &a[..6], &b[..6]]));
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name} in:\n{out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(out.lines().next().unwrap().contains(&a), "{out}");
    assert_eq!(row("calc.env.S"), vec!["calc.env.S", "-", "\"5\"", "*"]);
    assert_eq!(row("calc/2 w"), vec!["calc/2", "w", "0", "5", "+5"]);
    assert_eq!(row("calc/2 v"), vec!["calc/2", "v", "2", "2"]);
    let csv = ok(&run(d, &["compare", "--csv", &a, &b]));
    assert!(csv.starts_with(&format!(",{a},{b},diff")), "{csv}");
    assert!(csv.contains("calc/1 w,0,5,+5"), "{csv}");
    // A prefix that is no run's, and too few runs.
    let bad = run(d, &["compare", &a, "zzzz"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("zzzz"), "{}", stderr(&bad));
    assert_eq!(run(d, &["compare", &a]).status.code(), Some(2));
}

#[test]
fn sweep_from_the_command_line_adds_or_replaces_an_axis() {
    let p = project(ROWS_K);
    let d = p.path();
    // Replaces the values of the file's axis K.
    let out = ok(&run(
        d,
        &[
            "run",
            "--quiet",
            "experiments/calc.toml",
            "--sweep",
            "calc.env.K=\"3\",\"4\"",
        ],
    ));
    assert!(
        out.contains("calc[K=3]") && out.contains("calc[K=4]"),
        "{out}"
    );
    assert!(!out.contains("calc[K=1]"), "{out}");
    let csv = std::fs::read_to_string(d.join("results/calc.csv")).unwrap();
    assert_eq!(csv, "K,v,w\n3,3.00,0.00\n4,4.00,0.00\n");
    // A new axis on a stage no table reads.
    let out = ok(&run(
        d,
        &[
            "run",
            "--quiet",
            "experiments/calc.toml",
            "--sweep",
            "other.env.X=a,b",
        ],
    ));
    assert!(
        out.contains("other[env.X=a]") && out.contains("other[env.X=b]"),
        "{out}"
    );
    let runs = ok(&run(d, &["runs"]));
    assert!(runs.contains("sweep other.env.X"), "{runs}");
    // A new axis on the table's stage that the table does not name: an
    // extra row level (a column before the rows), no table edit needed,
    // said so in the provenance; the file still runs without it.
    let id = run_id(d, &["--sweep", "calc.env.S=\"1\",\"0\""]);
    let csv = std::fs::read_to_string(d.join("results/calc.csv")).unwrap();
    assert_eq!(
        csv,
        "env.S,K,v,w\n1,1,1.00,1.00\n1,2,2.00,1.00\n0,1,1.00,0.00\n0,2,2.00,0.00\n"
    );
    let prov = std::fs::read_to_string(d.join("results/calc.provenance.json")).unwrap();
    assert!(
        prov.contains("row_levels") && prov.contains("added by --sweep"),
        "{prov}"
    );
    // Runs record the cell as TABLE/LEVEL=V/ROW.
    let cmp = ok(&run(d, &["compare", &id]));
    assert!(cmp.contains("calc/env.S=0/2"), "{cmp}");
    ok(&run(d, &["run", "--quiet", "experiments/calc.toml"]));
    let csv = std::fs::read_to_string(d.join("results/calc.csv")).unwrap();
    assert_eq!(csv, "K,v,w\n1,1.00,0.00\n2,2.00,0.00\n");
    // An axis of one value leaves one cell per row: no ambiguity.
    ok(&plan(d, &["--sweep", "calc.env.S=\"1\""]));
    // Unknown stage.
    let o = plan(d, &["--sweep", "calcc.env.K=1,2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--sweep calcc.env.K"), "{}", stderr(&o));
}

#[test]
fn set_on_a_swept_parameter_needs_force_override() {
    let p = project(ROWS_K);
    let d = p.path();
    let o = plan(d, &["--set", "calc.env.K=\"9\""]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("--set calc.env.K") && e.contains("axis `K`"),
        "{e}"
    );
    assert!(
        e.contains("--force-override") && e.contains("--sweep"),
        "{e}"
    );
    let o = plan(d, &["--set", "calc.env.K=\"9\"", "--force-override"]);
    ok(&o);
    let e = stderr(&o);
    assert!(e.contains("still label the cells by `K`"), "{e}");
}

#[test]
fn set_with_several_values_points_to_sweep() {
    let p = project(ROWS_K);
    let d = p.path();
    for arg in ["shapes.n=[10,30]", "shapes.n=10,30"] {
        let o = plan(d, &["--set", arg]);
        assert_eq!(o.status.code(), Some(2), "{arg}");
        let e = stderr(&o);
        assert!(e.contains("--set shapes.n="), "{e}");
        assert!(e.contains("--sweep shapes.n=10,30"), "{e}");
    }
}

#[test]
fn a_table_must_name_or_aggregate_every_axis_of_its_stage() {
    let p = project("");
    let d = p.path();
    let o = plan(d, &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("experiments/calc.toml:"), "{e}");
    assert!(e.contains("table `calc`") && e.contains("`K`"), "{e}");
    assert!(e.contains("aggregate = \"mean\""), "{e}");

    let p = project("aggregate = \"mean\"");
    ok(&run(p.path(), &["run", "--quiet", "experiments/calc.toml"]));
    let csv = std::fs::read_to_string(p.path().join("results/calc.csv")).unwrap();
    assert_eq!(csv, "stage,v,w\nall,1.50,0.00\n");

    let p = project("aggregate = \"median\"");
    let o = run(p.path(), &["plan", "experiments/calc.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("median"), "{}", stderr(&o));
}

fn has_entry(dir: &Path, key: &str) -> bool {
    run(dir, &["show", key]).status.success()
}

fn key_of(dir: &Path, run: &str, node: &str) -> String {
    record(dir, run)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node)
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn gc_keeps_the_last_runs_and_pinned_runs() {
    let p = project(ROWS_K);
    let d = p.path();
    let r1 = run_id(d, &["--set", "calc.env.S=\"1\""]);
    let r2 = run_id(d, &["--set", "calc.env.S=\"2\""]);
    let r3 = run_id(d, &["--set", "calc.env.S=\"3\""]);
    let (k1, k2, k3) = (
        key_of(d, &r1, "calc[K=1]"),
        key_of(d, &r2, "calc[K=1]"),
        key_of(d, &r3, "calc[K=1]"),
    );
    // By default the last 5 runs are kept.
    ok(&run(d, &["gc"]));
    assert!(has_entry(d, &k1) && has_entry(d, &k2) && has_entry(d, &k3));
    let pin = ok(&run(d, &["runs", "--pin", &r1[..6]]));
    assert!(pin.contains(&r1), "{pin}");
    assert!(ok(&run(d, &["runs"])).contains("(pinned)"));
    let out = ok(&run(d, &["gc", "--keep-runs", "1"]));
    assert!(out.contains(&k2), "{out}");
    assert!(
        has_entry(d, &k1),
        "pinned run's entry was collected:\n{out}"
    );
    assert!(!has_entry(d, &k2), "{out}");
    assert!(has_entry(d, &k3), "last run's entry was collected:\n{out}");
    ok(&run(d, &["runs", "--unpin", &r1]));
    ok(&run(d, &["gc", "--keep-runs", "1"]));
    assert!(!has_entry(d, &k1));
    assert!(has_entry(d, &k3));
}

#[test]
fn git_commit_and_dirty_flag_are_recorded() {
    let git_ok = Command::new("git").arg("--version").output().is_ok();
    if !git_ok {
        eprintln!("git not found: skipped");
        return;
    }
    let p = project(ROWS_K);
    let d = p.path();
    let g = |args: &[&str]| {
        let o = Command::new("git")
            .current_dir(d)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    g(&["init", "-q"]);
    g(&["add", "experiments"]);
    g(&["commit", "-qm", "x"]);
    let head = g(&["rev-parse", "HEAD"]);
    let r = record(d, &run_id(d, &[]));
    assert_eq!(r["git_commit"], head.as_str());
    assert_eq!(r["git_dirty"], false);
    let f = d.join("experiments/calc.toml");
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, text.replace("S = \"0\"", "S = \"4\"")).unwrap();
    let r = record(d, &run_id(d, &[]));
    assert_eq!(r["git_dirty"], true);
}

#[test]
fn variant_axes_are_neither_swept_over_nor_set_from_the_command_line() {
    let p = project(ROWS_K);
    let d = p.path();
    let f = d.join("experiments/calc.toml");
    let text = std::fs::read_to_string(&f).unwrap().replace(
        "[sweep]\n",
        "[sweep.V.a]\n\"other.env.X\" = \"a\"\n\n[sweep.V.b]\n\"other.env.X\" = \"b\"\n\n[sweep]\n",
    );
    std::fs::write(&f, text).unwrap();
    ok(&plan(d, &[]));
    let o = plan(d, &["--sweep", "other.env.X=c,d"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("axis `V`"), "{}", stderr(&o));
    let o = plan(d, &["--set", "other.env=\"c\""]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("axis `V`"), "{}", stderr(&o));
}
