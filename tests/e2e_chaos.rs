//! Chaos: a run killed with SIGKILL at any point, and several runs at once
//! on one cache, leave a cache from which the next run finishes and writes
//! exactly the table a clean run writes. Kill points are spread over the
//! run; whatever moment each lands on, the assertion is the same, so the
//! test cannot pass by luck of timing.

mod common;
use common::{text, SpawnPiped};

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn exp() -> String {
    let train = "conv_channels = [], dense = [16], epochs = 60, batch_size = 10";
    let head = common::shapes_split_train("chaos", (200, 2, 1), (150, 50), train);
    let svm = common::features_svm("C = 1.0");
    let metrics = r#"metrics = ["test_error", "train_error"]"#;
    let table = common::sweep_svm_table("chaos", "[1, 3]", metrics);
    format!("{head}{svm}{table}")
}

fn project() -> tempfile::TempDir {
    common::project(&[("chaos.toml", &exp())])
}

/// `mrbm run` of the chaos experiment, two jobs.
fn mrbm(root: &Path) -> Command {
    let mut c = common::mrbm_in(root);
    c.args(["run", "experiments/chaos.toml", "--quiet", "--jobs", "2"]);
    c
}

fn entry_of(root: &Path, stage_id: &str) -> std::path::PathBuf {
    common::entry_of(&root.join(".mrbm"), stage_id)
        .unwrap_or_else(|| panic!("no entry for {stage_id} under {}", root.display()))
}

fn has_entry(root: &Path, stage_id: &str) -> bool {
    common::entry_of(&root.join(".mrbm"), stage_id).is_some()
}

/// Waits for a run, killing it (and failing) if it hangs: a guard against
/// a lock that is never broken, not a speed assertion.
fn finish(child: std::process::Child, what: &str) -> Output {
    common::finish(child, what, 120)
}

/// The summary's last line starts "0 ran, N cached".
fn computed_nothing(o: &Output) -> bool {
    text(o).lines().any(|l| l.starts_with("0 ran,"))
}

fn table(root: &Path) -> String {
    std::fs::read_to_string(root.join("results/chaos.csv")).unwrap()
}

#[test]
fn kill_9_at_any_point_then_rerun_gives_the_clean_table() {
    let clean = project();
    let t0 = std::time::Instant::now();
    let out = mrbm(clean.path()).output().unwrap();
    let whole = t0.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let want = table(clean.path());
    // Kill points spread over a clean run's length, so they land inside it
    // (reading data, training, publishing...), wherever that is.
    for frac in [0.02, 0.1, 0.25, 0.45, 0.65, 0.85] {
        let delay_ms = (whole.as_secs_f64() * frac * 1000.0) as u64;
        let p = project();
        let mut child = mrbm(p.path()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL: no handler runs
        let _ = child.wait();
        let out = mrbm(p.path()).output().unwrap();
        assert!(
            out.status.success(),
            "after a kill at {delay_ms} ms: {}",
            text(&out)
        );
        assert_eq!(table(p.path()), want, "after a kill at {delay_ms} ms");
        // And nothing is left half-written: a third run computes nothing.
        let again = mrbm(p.path()).output().unwrap();
        assert!(computed_nothing(&again), "{}", text(&again));
    }
}

#[test]
fn runs_at_once_on_one_cache_agree_and_compute_each_stage_once() {
    let p = project();
    let children: Vec<_> = (0..3).map(|_| mrbm(p.path()).spawn().unwrap()).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let clean = project();
    assert!(mrbm(clean.path()).output().unwrap().status.success());
    assert_eq!(table(p.path()), table(clean.path()));
    let again = mrbm(p.path()).output().unwrap();
    assert!(computed_nothing(&again), "{}", text(&again));
}

#[test]
fn corrupt_model_consumed_downstream_is_recomputed_with_everything_after_it() {
    let clean = project();
    assert!(mrbm(clean.path()).output().unwrap().status.success());
    let want = table(clean.path());

    let p = project();
    assert!(mrbm(p.path()).output().unwrap().status.success());
    // Flip one byte in the middle of a trained model, as a bad disk would.
    let model = entry_of(p.path(), "train[N=3]").join("out/model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&model, bytes).unwrap();

    let out = mrbm(p.path()).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        !computed_nothing(&out),
        "the corrupt model was reused:\n{t}"
    );
    assert_eq!(table(p.path()), want, "{t}");
    // The quarantined copy is kept for inspection, out of the entries.
    assert!(p.path().join(".mrbm/quarantine").exists(), "{t}");
    let again = mrbm(p.path()).output().unwrap();
    assert!(computed_nothing(&again), "{}", text(&again));
}

/// A lock left by a process whose PID now belongs to another live process
/// (PID reuse after a crash or a container restart) is broken at once. The
/// lock timeout is an hour, so only the start-time check can break it.
#[test]
fn lock_of_a_reused_pid_does_not_block_the_run() {
    let p = project();
    assert!(mrbm(p.path()).output().unwrap().status.success());
    let want = table(p.path());
    let entry = entry_of(p.path(), "train[N=1]");
    let key = entry.file_name().unwrap().to_string_lossy().to_string();
    std::fs::remove_dir_all(&entry).unwrap();

    // PID 1 is alive in every Linux PID namespace, and it did not start at
    // tick 1: the lock names a live PID that belongs to someone else.
    let host = common::hostname();
    let boot = common::boot_id();
    let owner = serde_json::json!({
        "pid": 1, "host": host, "start": 1u64, "boot": boot,
        "time": "2026-01-01T00:00:00Z"
    });
    let locks = p.path().join(".mrbm/locks");
    std::fs::create_dir_all(&locks).unwrap();
    std::fs::write(locks.join(format!("{key}.lock")), format!("{owner}\n")).unwrap();

    let child = mrbm(p.path())
        .env("MRBM_LOCK_TIMEOUT", "3600")
        .spawn_piped();
    let out = finish(child, "lock of a reused pid");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(table(p.path()), want, "{t}");
    assert!(
        !locks.join(format!("{key}.lock")).exists(),
        "the stale lock is still there:\n{t}"
    );
}

/// `mrbm gc` started at any moment of a run (before it, while it trains,
/// while it publishes) never breaks the run: the run's entries are not in
/// the experiment file as written (`--set`), so a gc that ignored the run
/// would delete them under it. gc waits for runs on the cache and runs
/// wait for gc; either way the run writes exactly a clean run's table.
#[test]
fn gc_next_to_a_run_at_any_point_never_breaks_it() {
    let run = |root: &Path| {
        let mut c = mrbm(root);
        c.args(["--set", "train.epochs=61"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let clean = project();
    let t0 = std::time::Instant::now();
    let out = run(clean.path()).output().unwrap();
    let whole = t0.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let want = table(clean.path());
    for frac in [0.0, 0.05, 0.3, 0.6, 0.9] {
        let delay_ms = (whole.as_secs_f64() * frac * 1000.0) as u64;
        let p = project();
        let child = run(p.path()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let gc = common::mrbm_in(p.path())
            .args(["gc", "--keep-runs", "0"])
            .spawn_piped();
        let out = finish(child, "run next to gc");
        let gc = finish(gc, "gc next to a run");
        let t = format!("{}\n--- gc:\n{}", text(&out), text(&gc));
        assert!(out.status.success(), "gc at {delay_ms} ms: {t}");
        assert!(gc.status.success(), "gc at {delay_ms} ms: {t}");
        assert_eq!(table(p.path()), want, "gc at {delay_ms} ms: {t}");
    }
}

/// A path escape made on disk while a run is going on (results/ swapped
/// for a symlink to a folder outside the project, as an attacker or a
/// careless script might) is caught when the run publishes: the run fails
/// (exit 1) naming the link, and nothing is written outside the project.
/// Escapes written in the experiment (`../`, absolute paths, `data:..`)
/// are config errors (exit 2) before anything runs.
#[test]
fn path_escapes_never_write_outside_the_project() {
    let outside = tempfile::tempdir().unwrap();
    let sentinel = outside.path().join("chaos.csv");
    std::fs::write(&sentinel, "precious\n").unwrap();

    // Written in the experiment: refused before anything runs.
    for (what, extra) in [
        (
            "publish up",
            "\n[stages.svm.publish]\n\"metrics.json\" = \"../chaos.csv\"\n",
        ),
        (
            "publish absolute",
            &*format!(
                "\n[stages.svm.publish]\n\"metrics.json\" = \"{}\"\n",
                sentinel.display()
            ),
        ),
        (
            "table name",
            "\n[[tables]]\nname = \"../../chaos\"\nstage = \"svm\"\nmetrics = [\"test_error\"]\nrows = \"N\"\n",
        ),
    ] {
        let p = project();
        let file = p.path().join("experiments/chaos.toml");
        let toml = std::fs::read_to_string(&file).unwrap();
        // Stage tables go before [sweep]/[[tables]] so the added keys land
        // in the right table.
        let toml = match extra.strip_prefix("\n[stages.svm.publish]") {
            Some(_) => toml.replacen("\n[sweep]", &format!("{extra}\n[sweep]"), 1),
            None => format!("{toml}{extra}"),
        };
        std::fs::write(&file, toml).unwrap();
        let out = mrbm(p.path()).output().unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {t}");
        assert!(t.contains("chaos.toml:"), "{what}: no file:line in\n{t}");
        assert!(!p.path().join(".mrbm/entries").exists() || computed_nothing(&out));
    }
    let data_escape = project();
    let file = data_escape.path().join("experiments/chaos.toml");
    let toml = std::fs::read_to_string(&file).unwrap().replace(
        "inputs = { data = \"shapes\" }",
        "inputs = { data = \"data:../../etc\" }",
    );
    std::fs::write(&file, toml).unwrap();
    let out = mrbm(data_escape.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "data: escape: {}", text(&out));
    assert!(text(&out).contains("data root"), "{}", text(&out));

    // Made on disk during the run: caught at publish time.
    let p = project();
    let results = p.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    // Long enough (seconds) that the swap below lands while it trains: the
    // host training step finishes the file's 60 epochs in ~0.2 s.
    let child = mrbm(p.path())
        .args(["--set", "train.epochs=2000"])
        .spawn_piped();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_dir_all(&results).unwrap();
    std::os::unix::fs::symlink(outside.path(), &results).unwrap();
    let out = finish(child, "results swapped for a symlink");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("symlink"), "{t}");
    assert_eq!(std::fs::read_to_string(&sentinel).unwrap(), "precious\n");
    let left: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("chaos.csv")], "{t}");
}

/// Ctrl-C lands inside each long loop (training epochs, Gibbs sampling,
/// AIS) and stops it at its next cancellation poll: each stage below would
/// run for minutes, so a loop that did not poll would keep the run alive
/// long past the guard. The guard is liveness, not speed: 20 s against
/// polls every few milliseconds.
#[test]
fn ctrl_c_stops_every_long_loop_mid_stage() {
    const BASE: &str = r#"
name = "long"

[stages.shapes]
kind = "dataset"
params = { format = "synthetic", n = 60, size = 8, classes = 2, seed = 1 }

[stages.split]
kind = "transform"
inputs = { data = "shapes" }
params = { split = { train = 40, test = 20 }, seed = 1 }
"#;
    let quick_train = "\n[stages.train]\nkind = \"train\"\ninputs = { data = \"split/train.safetensors\" }\nparams = { conv_channels = [], dense = [16], epochs = 2, batch_size = 10 }\n";
    let cases = [
        (
            "train",
            "split",
            "\n[stages.train]\nkind = \"train\"\ninputs = { data = \"split/train.safetensors\" }\nparams = { conv_channels = [], dense = [16], epochs = 1000000, batch_size = 10 }\n".to_string(),
        ),
        (
            "sample",
            "train",
            format!("{quick_train}\n[stages.sample]\nkind = \"sample\"\ninputs = {{ model = \"train\", reference = \"split/test.safetensors\" }}\nparams = {{ chains = 16, steps = 100000000, seed = 1 }}\n"),
        ),
        (
            "loglik",
            "train",
            format!("{quick_train}\n[stages.loglik]\nkind = \"loglik\"\ninputs = {{ model = \"train\", train = \"split/train.safetensors\", test = \"split/test.safetensors\" }}\nparams = {{ betas = 10000000, runs = 64, seed = 1 }}\n"),
        ),
    ];
    for (what, before, stages) in cases {
        let p = common::project(&[("long.toml", &format!("{BASE}{stages}"))]);
        let child = common::mrbm_in(p.path())
            .args(["run", "experiments/long.toml", "--quiet", "--jobs", "1"])
            .spawn_piped();
        // Wait until the stage before the long one is published, then give
        // the long one time to get into its loop.
        let mut child = child;
        let mut waited = 0;
        while !has_entry(p.path(), before) {
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().unwrap();
                panic!("{what}: the run ended early:\n{}", text(&out));
            }
            std::thread::sleep(Duration::from_millis(50));
            waited += 50;
            assert!(waited < 120_000, "{what}: `{before}` never finished");
        }
        std::thread::sleep(Duration::from_millis(700));
        let t0 = std::time::Instant::now();
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let mut status = None;
        while t0.elapsed() < Duration::from_secs(20) {
            if let Some(s) = child.try_wait().unwrap() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if status.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let t = text(&out);
        assert!(
            status.is_some(),
            "{what}: still running 20 s after Ctrl-C:\n{t}"
        );
        assert_eq!(out.status.code(), Some(130), "{what}: {t}");
        assert!(!t.contains("panicked"), "{what}: {t}");
        let locks = p.path().join(".mrbm/locks");
        let left = std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "{what}: a lock was left behind\n{t}");
        eprintln!("{what}: stopped {:?} after Ctrl-C", t0.elapsed());
    }
}
