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

// ---- Issue 31: nothing wrong is ever cached, refusals come before work ----

/// The train stage of tests/e2e_resume.rs: long enough to be killed in.
fn resume_exp(extra: &str) -> String {
    format!(
        r#"
name = "resume"

[stages.shapes]
kind = "dataset"
params = {{ format = "synthetic", n = 150, size = 8, classes = 2, seed = 1 }}

[stages.train]
kind = "train"
inputs = {{ data = "shapes" }}
# PCD at N = 3 leaves this layer dead; the test is about checkpoints, not the model.
params = {{ conv_channels = [], dense = [24], epochs = 400, batch_size = 10, algorithm = "pcd", n = 3, allow_dead_units = true{extra} }}
"#
    )
}

fn run_resume(root: &Path) -> Output {
    common::mrbm_in(root)
        .args(["run", "experiments/resume.toml", "--quiet"])
        .output()
        .unwrap()
}

/// The checkpoint files (and their manifests) under CACHE/resume/.
fn checkpoint(root: &Path) -> Option<std::path::PathBuf> {
    let rd = std::fs::read_dir(root.join(".mrbm/resume")).ok()?;
    rd.flatten()
        .map(|d| d.path().join("train.safetensors"))
        .find(|f| f.exists() && f.with_file_name("train.safetensors.manifest.json").exists())
}

fn model_of(root: &Path) -> Vec<u8> {
    let e = common::entry_of(&root.join(".mrbm"), "train").expect("no train entry");
    std::fs::read(e.join("out/model.safetensors")).unwrap()
}

/// A damaged resume checkpoint (bytes flipped in the middle, or 4 KB
/// before its end: still a well-formed safetensors file) is named by
/// `mrbm verify` and refused with a warning by the next run, which trains
/// from the start and caches exactly the uninterrupted run's model.
#[test]
fn a_damaged_checkpoint_is_refused_and_the_model_equals_an_uninterrupted_run() {
    let clean = common::project(&[("resume.toml", &resume_exp(""))]);
    let out = run_resume(clean.path());
    assert!(out.status.success(), "{}", text(&out));
    let want = model_of(clean.path());
    for damage in ["middle", "4 KB before the end"] {
        let p = common::project(&[("resume.toml", &resume_exp(", checkpoint_every = 1"))]);
        let mut child = common::mrbm_in(p.path())
            .args(["run", "experiments/resume.toml", "--quiet"])
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        let file = loop {
            if let Some(f) = checkpoint(p.path()) {
                break f;
            }
            assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
            if let Ok(Some(s)) = child.try_wait() {
                panic!("the run ended ({s}) before its first checkpoint");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        std::thread::sleep(Duration::from_millis(30));
        let _ = child.kill();
        let _ = child.wait();
        let mut bytes = std::fs::read(&file).unwrap();
        let at = if damage == "middle" {
            bytes.len() / 2
        } else {
            bytes.len() - 4096
        };
        for b in &mut bytes[at..at + 16] {
            *b ^= 0xa5;
        }
        std::fs::write(&file, &bytes).unwrap();

        let v = common::run_in(p.path(), &["verify"]);
        let vt = text(&v);
        assert_eq!(v.status.code(), Some(1), "{damage}: verify: {vt}");
        assert!(vt.contains("damaged checkpoint"), "{damage}: {vt}");

        let out = run_resume(p.path());
        let t = text(&out);
        assert!(out.status.success(), "{damage}: {t}");
        assert!(
            t.contains("not resuming from the checkpoint") && t.contains("content hash"),
            "{damage}: no warning: {t}"
        );
        assert!(
            model_of(p.path()) == want,
            "{damage}: the model differs from the uninterrupted run's"
        );
    }
}

/// An experiment of `command` stages (milliseconds each): `calc` writes
/// metrics v and w.
fn calc_exp(extra: &str) -> String {
    format!(
        r#"
name = "calc"

[stages.calc]
kind = "command"
params = {{ argv = ["sh", "-c", 'echo "{{{{\"v\": 1, \"w\": $E}}}}" > "$MRBM_OUT/metrics.json"'], env = {{ E = "1" }} }}
{extra}
"#
    )
}

/// Unreadable history records are each named (file and reason) by `runs`,
/// `compare`, `report` and `gc --dry-run`; naming one in `compare` or
/// `report` is a user error (exit 2).
#[test]
fn unreadable_history_records_are_named_and_refused_by_name() {
    let p = common::project(&[("calc.toml", &calc_exp(""))]);
    let out = common::run_in(p.path(), &["run", "--quiet", "experiments/calc.toml"]);
    let good = common::ok(&out)
        .lines()
        .find_map(|l| l.strip_prefix("recorded as run "))
        .and_then(|l| l.split_whitespace().next())
        .expect("a run id")
        .to_string();
    let hist = p.path().join(".mrbm/history");
    let record = std::fs::read(hist.join(format!("{good}.json"))).unwrap();
    let deep = "[".repeat(100_000);
    let bad: [(&str, &[u8]); 6] = [
        ("garbage", b"this is not json"),
        ("truncated", &record[..record.len() / 2]),
        ("empty", b""),
        ("nested", deep.as_bytes()),
        ("schema", br#"{"id": 3, "nodes": "x"}"#),
        ("binary", &[0u8, 159, 146, 150, 255, 1, 2, 3]),
    ];
    for (name, bytes) in bad {
        std::fs::write(hist.join(format!("zz-{name}.json")), bytes).unwrap();
    }
    let named_all = |what: &str, t: &str| {
        for (name, _) in bad {
            assert!(
                t.contains(&format!("zz-{name}.json")) && t.contains("unreadable run record"),
                "{what} does not name zz-{name}.json: {t}"
            );
        }
    };
    let runs = common::run_in(p.path(), &["runs"]);
    assert_eq!(runs.status.code(), Some(0), "{}", text(&runs));
    named_all("runs", &text(&runs));
    let gc = common::run_in(p.path(), &["gc", "--dry-run"]);
    assert_eq!(gc.status.code(), Some(0), "{}", text(&gc));
    named_all("gc --dry-run", &text(&gc));
    let cmp = common::run_in(p.path(), &["compare", &good, &good]);
    assert_eq!(cmp.status.code(), Some(0), "{}", text(&cmp));
    named_all("compare", &text(&cmp));
    let out = p.path().join("r.html");
    let rep = common::run_in(p.path(), &["report", &good, "--out", out.to_str().unwrap()]);
    assert_eq!(rep.status.code(), Some(0), "{}", text(&rep));
    named_all("report", &text(&rep));
    for args in [
        vec!["compare", good.as_str(), "zz-truncated"],
        vec!["report", "zz-garbage"],
    ] {
        let o = common::run_in(p.path(), &args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains("is unreadable"), "{args:?}: {t}");
    }
}

/// A parameter swept twice on the command line, or a value given twice (on
/// the command line or in `[sweep]`), is refused naming it, before
/// anything runs.
#[test]
fn repeated_sweeps_and_duplicate_values_are_refused() {
    let p = common::project(&[
        ("calc.toml", &calc_exp("")),
        (
            "dup.toml",
            &calc_exp("[sweep]\n\"calc.env.E\" = [\"1\", \"2\", \"1\"]\n"),
        ),
    ]);
    let cases: [(&[&str], &str); 3] = [
        (
            &["--sweep", "calc.env.E=2,3", "--sweep", "calc.env.E=4"],
            "given twice",
        ),
        (&["--sweep", "calc.env.E=1,1"], "the value 1 is given twice"),
        (
            &["--sweep", "calc.env.E=\"1\",2,\"2\""],
            "the value 2 is given twice",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["run", "--quiet", "experiments/calc.toml"];
        all.extend_from_slice(args);
        let o = common::run_in(p.path(), &all);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: {t}");
        assert!(common::entries(&p.path().join(".mrbm")).is_empty(), "{t}");
    }
    let o = common::run_in(p.path(), &["run", "--quiet", "experiments/dup.toml"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("the value 1 is given twice") && t.contains("dup.toml:"),
        "{t}"
    );
}

/// A table metric no cell's kind declares, and a size whose memory floor
/// is above what the machine has, are refused before any stage runs: the
/// hour-long training upstream never starts.
#[test]
fn a_metric_typo_and_an_absurd_size_are_refused_before_any_stage_runs() {
    let slow = "conv_channels = [], dense = [16], epochs = 100000, batch_size = 10";
    let head = common::shapes_split_train("early", (200, 2, 1), (150, 50), slow);
    let typo = format!(
        "{head}{}{}",
        common::features_svm("C = 1.0"),
        common::sweep_svm_table("early", "[1, 3]", r#"metrics = ["test_eror"]"#)
    );
    let sample = format!(
        "{head}\n[stages.sample]\nkind = \"sample\"\ninputs = {{ model = \"train\" }}\nparams = {{ chains = 10000000000, steps = 2 }}\n"
    );
    for (exp, want) in [
        (typo, "no metric `test_eror`"),
        (sample, "sampling 10000000000 chains"),
    ] {
        let p = common::project(&[("early.toml", &exp)]);
        let mut c = common::mrbm_in(p.path());
        c.env("MRBM_MAX_MEMORY", "2000000000")
            .args(["run", "experiments/early.toml", "--quiet"]);
        let out = common::finish(c.spawn_piped(), want, 60);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{want}: {t}");
        assert!(t.contains(want), "{t}");
        if want.starts_with("no metric") {
            assert!(t.contains("did you mean `test_error`"), "{t}");
        }
        assert!(
            common::entries(&p.path().join(".mrbm")).is_empty(),
            "a stage ran before the refusal: {t}"
        );
    }
}

/// A bare-word input path resolves against the declaring file's folder, not
/// the folder mrbm runs in.
#[test]
fn a_bare_word_input_is_relative_to_the_declaring_file() {
    let exp = r#"
name = "bare"

[stages.read]
kind = "command"
inputs = { in1 = "d01" }
params = { argv = ["cat", "{in1}/x.txt"] }
"#;
    let p = common::project(&[("bare.toml", exp)]);
    std::fs::create_dir_all(p.path().join("experiments/d01")).unwrap();
    std::fs::write(p.path().join("experiments/d01/x.txt"), "beside the file\n").unwrap();
    let out = common::run_in(p.path(), &["run", "--quiet", "experiments/bare.toml"]);
    common::ok(&out);
    let log = common::entry_of(&p.path().join(".mrbm"), "read")
        .map(|e| std::fs::read_to_string(e.join("log.txt")).unwrap())
        .unwrap_or_default();
    assert!(log.contains("stdout: beside the file"), "{log}");
    // A d01 in the folder mrbm runs in, and none beside the file: refused.
    std::fs::rename(p.path().join("experiments/d01"), p.path().join("d01")).unwrap();
    let out = common::run_in(p.path(), &["plan", "experiments/bare.toml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("names no stage and no existing file"), "{t}");
}

/// A cache this user cannot write in is a user error (exit 2) naming the
/// folder. As root (who may write anywhere) the run is made as `nobody`.
#[test]
fn a_read_only_cache_is_a_user_error_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let p = common::project(&[("calc.toml", &calc_exp(""))]);
    let cache = p.path().join(".mrbm");
    std::fs::create_dir_all(&cache).unwrap();
    for (d, mode) in [
        (p.path().to_path_buf(), 0o755),
        (p.path().join("experiments"), 0o755),
        (cache.clone(), 0o555),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(
        p.path().join("experiments/calc.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut c = common::mrbm_in(p.path());
    c.args(["run", "--quiet", "experiments/calc.toml"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        c.uid(65534).gid(65534);
    }
    let out = c.output().unwrap();
    let t = text(&out);
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("not writable") && t.contains(".mrbm"), "{t}");
}
