//! End-to-end tests of the `mrbm` binary on a tiny real pipeline (synthetic
//! shapes -> split -> conv RBM -> features -> SVM -> table): caching,
//! plan reasons, config errors and exit codes, crashes (SIGKILL at random
//! moments) and two concurrent runs on one cache.

mod common;
use common::{counts, mrbm, text, SpawnPiped};

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

fn tiny() -> String {
    common::tiny("1", "C = 1.0")
}

/// Stages in tiny(): shapes, split, 2 x (train, train_features, test_features, svm), table.
const TINY_STAGES: usize = 11;

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(text: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("experiments")).unwrap();
        std::fs::write(dir.path().join("experiments/tiny.toml"), text).unwrap();
        Project { dir }
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn exp(&self) -> PathBuf {
        self.root().join("experiments/tiny.toml")
    }
    fn run(&self, args: &[&str]) -> Output {
        mrbm().current_dir(self.root()).args(args).output().unwrap()
    }
    fn csv(&self) -> String {
        std::fs::read_to_string(self.root().join("results/tiny.csv")).unwrap()
    }
}

#[test]
fn run_caches_and_plan_names_the_changed_parameter() {
    let p = Project::new(&tiny());
    let first = p.run(&["run", "experiments/tiny.toml"]);
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(counts(&first), (TINY_STAGES, 0));
    let csv = p.csv();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "N,test_error");
    assert!(
        lines[1].starts_with("1,") && lines[2].starts_with("255,"),
        "{csv}"
    );
    for l in &lines[1..] {
        let err: f64 = l.split(',').nth(1).unwrap().parse().unwrap();
        assert!((0.0..=100.0).contains(&err), "{csv}");
    }

    // The device of every cell is recorded beside the table.
    let prov: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.root().join("results/tiny.provenance.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(prov["devices"], serde_json::json!(["cpu"]), "{prov}");
    let cells = prov["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2, "{prov}");
    for (c, n) in cells.iter().zip(["1", "255"]) {
        assert_eq!(c["row"], n);
        assert_eq!(c["stage"], format!("svm[N={n}]"));
        assert_eq!(c["device"], "cpu");
        assert_eq!(c["key"].as_str().unwrap().len(), 64);
    }

    // The device choice is not part of any key: `--device cpu` instead of
    // the experiment's default `auto` reuses every entry.
    let second = p.run(&["run", "experiments/tiny.toml", "--device", "cpu"]);
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(counts(&second), (0, TINY_STAGES));
    assert_eq!(p.csv(), csv);

    let plan = p.run(&["plan", "experiments/tiny.toml", "--set", "svm.C=2"]);
    assert!(plan.status.success(), "{}", text(&plan));
    let out = String::from_utf8_lossy(&plan.stdout).to_string();
    for line in out
        .lines()
        .filter(|l| l.starts_with("run") || l.starts_with("cached"))
    {
        let runs = line.starts_with("run");
        let id = line.split_whitespace().nth(1).unwrap_or("");
        let is_svm_or_table = id.starts_with("svm[") || id.starts_with("table:");
        assert_eq!(runs, is_svm_or_table, "{out}");
        if id.starts_with("svm[") {
            assert!(line.contains("param C: 1.0 -> 2.0"), "{out}");
        }
    }
    assert!(out.contains("3 to run"), "{out}");

    // Same experiment, other stage names and key order: all cached but the
    // table, whose provenance.json names the cells by their stage ids.
    let renamed = tiny()
        .replace("[stages.svm]", "[stages.classifier]")
        .replace("stage = \"svm\"", "stage = \"classifier\"")
        .replace(
            "[stages.train]\nkind = \"train\"",
            "[stages.train]\nkind = \"train\"\n# a comment",
        );
    std::fs::write(p.root().join("experiments/renamed.toml"), renamed).unwrap();
    let plan = p.run(&["plan", "experiments/renamed.toml"]);
    let out = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(
        out.contains(&format!("1 to run, {} cached", TINY_STAGES - 1)),
        "{out}"
    );

    // gc keeps what experiments/ references and drops the C=2 cells.
    std::fs::remove_file(p.root().join("experiments/renamed.toml")).unwrap();
    let c2 = p.run(&["run", "experiments/tiny.toml", "--set", "svm.C=2"]);
    assert_eq!(counts(&c2), (3, TINY_STAGES - 3), "{}", text(&c2));
    // The last runs' entries are kept by default (issue 18); --keep-runs 0
    // collects by experiments/ alone.
    let dry = p.run(&["gc", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("would remove 0 entries"),
        "{}",
        text(&dry)
    );
    let dry = p.run(&["gc", "--dry-run", "--keep-runs", "0"]);
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("would remove 3 entries"),
        "{}",
        text(&dry)
    );
    let gc = p.run(&["gc", "--keep-runs", "0"]);
    assert!(gc.status.success(), "{}", text(&gc));
    let plan = p.run(&["plan", "experiments/tiny.toml"]);
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains(&format!("0 to run, {TINY_STAGES} cached")),
        "{}",
        text(&plan)
    );
    assert_eq!(
        std::fs::read_dir(p.root().join(".mrbm/entries"))
            .unwrap()
            .count(),
        TINY_STAGES
    );

    let verify = p.run(&["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert_eq!(
        counts(&p.run(&["run", "experiments/tiny.toml"])),
        (0, TINY_STAGES)
    );
    let show = p.run(&["show", "svm[N=255]"]);
    assert!(
        String::from_utf8_lossy(&show.stdout).contains("\"kind\": \"svm\""),
        "{}",
        text(&show)
    );
    let dot = p.run(&["dag", "experiments/tiny.toml", "--dot"]);
    assert!(String::from_utf8_lossy(&dot.stdout).starts_with("digraph"));
}

#[test]
fn user_errors_exit_2_with_location_and_fix() {
    let cases: &[(&str, &str)] = &[
        ("[stages.a\nkind = \"dataset\"\n", "tiny.toml:1:"),
        ("[stages.a]\nkind = \"dataset\"\nparams = { format = \"synthetic\", sizee = 8 }\n", "tiny.toml:3:"),
        ("[stages.a]\nkind = \"datasett\"\n", "did you mean `dataset`"),
        ("[stages.a]\nkind = \"transform\"\ninputs = { data = \"b\" }\n[stages.b]\nkind = \"transform\"\ninputs = { data = \"a\" }\n", "cycle"),
        ("[stages.a]\nkind = \"transform\"\ninputs = { data = \"nowhere/x.safetensors\" }\n", "tiny.toml:3:19"),
    ];
    for (toml, expect) in cases {
        let p = Project::new(toml);
        let o = p.run(&["run", "experiments/tiny.toml"]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{toml}\n{t}");
        assert!(t.contains(expect), "expected `{expect}` in:\n{t}");
        assert!(
            !t.contains("panicked") && !t.contains("RUST_BACKTRACE"),
            "{t}"
        );
    }
    let p = Project::new(&tiny());
    let o = p.run(&["run", "experiments/tiny.toml", "--set", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    let o = p.run(&["run", "experiments/missing.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let o = p.run(&["run", "experiments/tiny.toml", "--device", "cuda"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn sigkill_at_random_moments_leaves_the_cache_consistent() {
    let reference = Project::new(&tiny());
    assert!(reference
        .run(&["run", "experiments/tiny.toml", "--quiet"])
        .status
        .success());
    let expected = reference.csv();

    let p = Project::new(&tiny());
    // Deterministic "random" moments spread over a full run's duration.
    let mut state: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let ms = 20 + state % 1500;
        let mut child = mrbm()
            .current_dir(p.root())
            .args(["run", "experiments/tiny.toml", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    let verify = p.run(&["verify"]);
    let t = text(&verify);
    assert!(verify.status.success(), "{t}");
    assert!(t.contains(" 0 corrupt"), "{t}");
    // Every entry in the cache is whole: it has a manifest.
    for e in std::fs::read_dir(p.root().join(".mrbm/entries")).unwrap() {
        assert!(e.unwrap().path().join("manifest.json").is_file());
    }
    let rerun = p.run(&["run", "experiments/tiny.toml", "--quiet"]);
    assert!(rerun.status.success(), "{}", text(&rerun));
    assert_eq!(p.csv(), expected);
}

#[test]
fn two_concurrent_runs_compute_each_stage_once() {
    let p = Project::new(&tiny());
    let spawn = || {
        mrbm()
            .current_dir(p.root())
            .args(["run", "experiments/tiny.toml", "--quiet"])
            .spawn_piped()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let (ran_a, cached_a) = counts(&a);
    let (ran_b, cached_b) = counts(&b);
    assert_eq!(
        ran_a + ran_b,
        TINY_STAGES,
        "each stage computed once:\n{}\n{}",
        text(&a),
        text(&b)
    );
    assert_eq!(ran_a + cached_a, TINY_STAGES);
    assert_eq!(ran_b + cached_b, TINY_STAGES);
    assert_eq!(
        std::fs::read_dir(p.root().join(".mrbm/entries"))
            .unwrap()
            .count(),
        TINY_STAGES
    );
    let _ = p.exp();
}

#[test]
fn ctrl_c_stops_cleanly_and_keeps_the_cache_consistent() {
    let p = Project::new(&tiny());
    let child = mrbm()
        .current_dir(p.root())
        .args(["run", "experiments/tiny.toml", "--quiet", "--jobs", "1"])
        .spawn_piped();
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    // Interrupted (130), or the run had already finished (0).
    assert!(
        matches!(out.status.code(), Some(130) | Some(0)),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("panicked"), "{}", text(&out));
    let verify = p.run(&["verify"]);
    assert!(
        verify.status.success() && text(&verify).contains(" 0 corrupt"),
        "{}",
        text(&verify)
    );
    assert!(
        std::fs::read_dir(p.root().join(".mrbm/locks"))
            .unwrap()
            .next()
            .is_none(),
        "a lock was left behind"
    );
    let rerun = p.run(&["run", "experiments/tiny.toml", "--quiet"]);
    assert!(rerun.status.success(), "{}", text(&rerun));
}

#[test]
fn closed_stdout_pipe_ends_quietly() {
    // `mrbm dag x.toml | head -0`: the reader is gone before mrbm writes.
    let p = Project::new(&tiny());
    let mut child = mrbm()
        .current_dir(p.root())
        .args(["dag", "experiments/tiny.toml"])
        .spawn_piped();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn a_rerun_with_identical_results_leaves_downstream_cached() {
    // `max_images = 160` is all of tiny()'s training split: the train stages
    // rerun (their parameters changed) and write the same model bytes and
    // metrics, timings aside, so nothing downstream runs again.
    let p = Project::new(&tiny());
    let first = p.run(&["run", "experiments/tiny.toml"]);
    assert!(first.status.success(), "{}", text(&first));
    let csv = p.csv();
    let again = p.run(&[
        "run",
        "experiments/tiny.toml",
        "--set",
        "train.max_images=160",
    ]);
    assert!(again.status.success(), "{}", text(&again));
    let out = text(&again);
    assert_eq!(counts(&again), (2, TINY_STAGES - 2), "{out}");
    for id in ["train[N=1]", "train[N=255]"] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with("ran ") && l.contains(id)),
            "{id} did not run:\n{out}"
        );
    }
    assert_eq!(p.csv(), csv);
}
