//! End-to-end tests of everyday use (issue 32): run records with every
//! stage's resolved parameters, the experiment file's hash and a status;
//! `params-diff` and `compare` with one id; `git_dirty` that ignores what
//! the run publishes; targeted (`run FILE STAGE`) and forced (`--force`)
//! runs; plan-time checks of publish and argv placeholders, misspelt stages
//! in path inputs and `--set` names.
//!
//! The stages are `command` stages running `sh`, so they take milliseconds.

mod common;
use common::{ok, run_in as run, stderr, stdout};

use std::path::Path;

/// a -> b -> c, and d alone; c's metric v = $V goes to a table.
const CHAIN: &str = r#"
name = "chain"

[stages.a]
kind = "command"
params = { argv = ["sh", "-c", 'echo "$X" > "$MRBM_OUT/a.txt"'], env = { X = "1" } }

[stages.b]
kind = "command"
inputs = { in1 = "a/a.txt" }
params = { argv = ["sh", "-c", 'cat "$MRBM_IN_IN1" > "$MRBM_OUT/b.txt"'] }

[stages.c]
kind = "command"
inputs = { in1 = "b/b.txt" }
params = { argv = ["sh", "-c", 'echo "{{\"v\": $V}}" > "$MRBM_OUT/metrics.json"'], env = { V = "3" } }

[stages.d]
kind = "command"
params = { argv = ["sh", "-c", 'echo d > "$MRBM_OUT/d.txt"'] }

[[tables]]
name = "chain"
stage = "c"
metrics = ["v"]
"#;

fn project(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("experiments")).unwrap();
    std::fs::write(dir.path().join("experiments/chain.toml"), text).unwrap();
    dir
}

/// Run and return the recorded run's id (from "recorded as run ID").
fn run_id(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["run", "--quiet", "experiments/chain.toml"];
    all.extend_from_slice(args);
    let out = run(dir, &all);
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("recorded as run "))
        .unwrap_or_else(|| panic!("no run id in:\n{text}\n{}", stderr(&out)));
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

/// Each node's status word in a run's record.
fn statuses(dir: &Path, id: &str) -> Vec<(String, String)> {
    record(dir, id)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn records_hold_resolved_parameters_the_file_hash_and_a_status() {
    let p = project(CHAIN);
    let dir = p.path();
    let first = run_id(dir, &[]);
    // An edit of the file, not a --set: only the record's parameters show it.
    std::fs::write(
        dir.join("experiments/chain.toml"),
        CHAIN.replace("V = \"3\"", "V = \"5\""),
    )
    .unwrap();
    let second = run_id(dir, &[]);

    let rec = record(dir, &second);
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["params"]["c"]["env"]["V"], "5", "{rec}");
    // Defaults filled: `env` is written out for a stage that never set it.
    assert_eq!(rec["params"]["b"]["env"], serde_json::json!({}), "{rec}");
    assert!(rec["params"].get("table:chain").is_none(), "{rec}");
    let hash = |id: &str| {
        let r = record(dir, id);
        let m = r["sources"].as_object().unwrap().clone();
        assert_eq!(m.len(), 1, "{r}");
        m.values().next().unwrap().as_str().unwrap().to_string()
    };
    assert_ne!(hash(&first), hash(&second));
    assert_eq!(hash(&second).len(), 64);

    // params-diff: just the parameter that changed, like `dvc params diff`.
    let diff = ok(&run(dir, &["params-diff", &first, &second]));
    // A header, its rule, one row.
    let lines: Vec<&str> = diff.lines().collect();
    assert_eq!(lines.len(), 3, "{diff}");
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["c.env.V", "3", "5"],
        "{diff}"
    );
    // compare --params is the same view; compare itself has the rows too.
    assert_eq!(
        ok(&run(dir, &["compare", "--params", &first, &second])),
        diff
    );
    let cmp = ok(&run(dir, &["compare", &first, &second]));
    assert!(cmp.lines().any(|l| l.starts_with("param c.env.V")), "{cmp}");
    assert!(
        cmp.lines()
            .any(|l| l.starts_with("file ") && l.trim_end().ends_with('*')),
        "{cmp}"
    );

    // One id: compared with the run of its experiment before it.
    let one = run(dir, &["compare", &second]);
    assert_eq!(ok(&one), cmp);
    assert!(
        stderr(&one).contains(&format!(
            "comparing run {second} with the run of chain before it, {first}"
        )),
        "{}",
        stderr(&one)
    );
    let lone = run(dir, &["compare", &first]);
    assert_eq!(lone.status.code(), Some(2));
    assert!(
        stderr(&lone).contains("first recorded run of `chain`"),
        "{}",
        stderr(&lone)
    );

    // A failed run says so in `runs`.
    let failed = run_id(dir, &["--set", "d.argv=[\"sh\", \"-c\", \"exit 3\"]"]);
    assert_eq!(record(dir, &failed)["status"], "failed");
    let runs = ok(&run(dir, &["runs"]));
    let header = runs.lines().next().unwrap();
    assert!(header.split_whitespace().any(|w| w == "status"), "{runs}");
    let row = |id: &str| {
        runs.lines()
            .find(|l| l.starts_with(id))
            .unwrap()
            .to_string()
    };
    assert!(row(&first).split_whitespace().any(|w| w == "ok"), "{runs}");
    assert!(
        row(&failed).split_whitespace().any(|w| w == "failed"),
        "{runs}"
    );
}

fn git(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.email=t@example.org", "-c", "user.name=t"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_run_of_a_clean_commit_is_clean_although_it_rewrites_its_results() {
    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no git");
        return;
    }
    let p = project(CHAIN);
    let dir = p.path();
    std::fs::create_dir_all(dir.join("results")).unwrap();
    // Committed results that the run will rewrite with other bytes.
    std::fs::write(dir.join("results/chain.csv"), "stale\n").unwrap();
    std::fs::write(dir.join(".gitignore"), "/.mrbm\n").unwrap();
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "x"]);
    let id = run_id(dir, &[]);
    let rec = record(dir, &id);
    assert_eq!(rec["git_dirty"], false, "{rec}");
    assert_eq!(rec["git_commit"].as_str().unwrap().len(), 40, "{rec}");
    // The run did rewrite a tracked file...
    let status = std::process::Command::new("git")
        .args(["-C", dir.to_str().unwrap(), "status", "--porcelain"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("results/chain.csv"));
    // ...and a change to a source still counts.
    std::fs::write(
        dir.join("experiments/chain.toml"),
        CHAIN.replace("X = \"1\"", "X = \"2\""),
    )
    .unwrap();
    let id = run_id(dir, &[]);
    assert_eq!(record(dir, &id)["git_dirty"], true);
}

#[test]
fn targeted_runs_run_what_they_need_and_force_recomputes_downstream() {
    let p = project(CHAIN);
    let dir = p.path();
    let only_b = run_id(dir, &["b"]);
    assert_eq!(
        statuses(dir, &only_b),
        [("a".into(), "ran".into()), ("b".into(), "ran".into())]
    );
    let all = run_id(dir, &[]);
    let s = statuses(dir, &all);
    let word = |s: &[(String, String)], id: &str| {
        s.iter()
            .find(|(i, _)| i == id)
            .map(|(_, w)| w.clone())
            .unwrap()
    };
    assert_eq!(word(&s, "a"), "cached");
    assert_eq!(word(&s, "b"), "cached");
    assert_eq!(word(&s, "c"), "ran");
    assert_eq!(word(&s, "d"), "ran");
    // --force b: b and everything downstream of it, however cached.
    let forced = run_id(dir, &["--force", "b"]);
    let s = statuses(dir, &forced);
    assert_eq!(word(&s, "a"), "cached");
    assert_eq!(word(&s, "b"), "ran");
    assert_eq!(word(&s, "c"), "ran");
    assert_eq!(word(&s, "table:chain"), "ran");
    assert_eq!(word(&s, "d"), "cached");
    // A table by its name; a typo is a user error with the nearest name.
    let t = run_id(dir, &["chain"]);
    assert_eq!(statuses(dir, &t).len(), 4);
    let bad = run(dir, &["run", "experiments/chain.toml", "bb"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("did you mean `b`?"),
        "{}",
        stderr(&bad)
    );
}

/// `mrbm plan` on CHAIN with `from` replaced by `to`: exit 2 and stderr.
fn plan_error(from: &str, to: &str, args: &[&str]) -> String {
    let text = CHAIN.replace(from, to);
    assert_ne!(text, CHAIN, "{from} not in the experiment");
    let p = project(&text);
    let mut all = vec!["plan", "experiments/chain.toml"];
    all.extend_from_slice(args);
    let out = run(p.path(), &all);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    stderr(&out)
}

#[test]
fn plan_refuses_bad_placeholders_misspelt_stages_and_set_names() {
    // A publish path with a placeholder the cell cannot fill.
    let e = plan_error(
        "params = { argv = [\"sh\", \"-c\", 'echo d > \"$MRBM_OUT/d.txt\"'] }",
        "params = { argv = [\"sh\", \"-c\", 'echo d > \"$MRBM_OUT/d.txt\"'] }\npublish = { \"d.txt\" = \"results/d_{argvv}.txt\" }",
        &[],
    );
    assert!(e.contains("chain.toml:"), "{e}");
    assert!(e.contains("no placeholder `{argvv}`"), "{e}");
    assert!(e.contains("did you mean `{argv}`?"), "{e}");
    // An argv placeholder that does not exist: at plan time, at its line.
    let e = plan_error("cat \"$MRBM_IN_IN1\"", "cat {in5}", &[]);
    assert!(e.contains("chain.toml:"), "{e}");
    assert!(e.contains("unknown placeholder {in5}"), "{e}");
    assert!(e.contains("did you mean {in1}?"), "{e}");
    // A misspelt stage in a path-style input.
    let e = plan_error("\"b/b.txt\"", "\"bb/b.txt\"", &[]);
    assert!(e.contains("chain.toml:"), "{e}");
    assert!(e.contains("did you mean stage `b` (\"b/b.txt\")?"), "{e}");
    // A --set name with a typo, as the same typo in the file.
    let p = project(CHAIN);
    let out = run(
        p.path(),
        &["plan", "experiments/chain.toml", "--set", "c.envs.V=4"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("did you mean `--set c.env.V=4`?"),
        "{}",
        stderr(&out)
    );
}

/// `--threads N` is the thread count every stage is given (a command stage
/// sees it as MRBM_THREADS); without it, RAYON_NUM_THREADS when set, as
/// rayon's own pools read it. 0 is refused.
#[test]
fn threads_flag_and_rayon_num_threads_set_the_stages_threads() {
    const ONE: &str = r#"
name = "chain"
[stages.t]
kind = "command"
params = { argv = ["sh", "-c", 'echo "$MRBM_THREADS" > "$MRBM_OUT/t.txt"'] }
"#;
    let seen = |args: &[&str], env: Option<&str>| {
        let p = project(ONE);
        let mut c = common::mrbm_in(p.path());
        c.args(["run", "--quiet", "experiments/chain.toml"])
            .args(args);
        match env {
            Some(n) => c.env("RAYON_NUM_THREADS", n),
            None => c.env_remove("RAYON_NUM_THREADS"),
        };
        ok(&c.output().unwrap());
        let entry = common::entry_of(&p.path().join(".mrbm"), "t").expect("an entry for t");
        std::fs::read_to_string(entry.join("out/t.txt"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(seen(&["--threads", "3"], None), "3");
    assert_eq!(seen(&[], Some("5")), "5");
    assert_eq!(seen(&["--threads", "2"], Some("5")), "2");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(seen(&[], None), cores.to_string());
    assert_eq!(seen(&[], Some("0")), cores.to_string());
    let p = project(ONE);
    let out = run(
        p.path(),
        &["run", "experiments/chain.toml", "--threads", "0"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("must be at least 1"),
        "{}",
        stderr(&out)
    );
}
