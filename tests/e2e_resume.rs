//! Resumable training end to end: `mrbm run` killed with SIGKILL in the
//! middle of a train stage, then run again, resumes from the stage's last
//! checkpoint, says so in the log, writes the model an uninterrupted run
//! writes (same bytes, same key: the checkpoint cadence is no part of it)
//! and removes the checkpoint once the entry is published.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn exp(extra: &str) -> String {
    format!(
        r#"
name = "resume"

[stages.shapes]
kind = "dataset"
params = {{ format = "synthetic", n = 150, size = 8, classes = 2, seed = 1 }}

[stages.train]
kind = "train"
inputs = {{ data = "shapes" }}
params = {{ conv_channels = [], dense = [24], epochs = 400, batch_size = 10, algorithm = "pcd", n = 3{extra} }}
"#
    )
}

fn project(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("experiments")).unwrap();
    std::fs::write(dir.path().join("experiments/resume.toml"), exp(extra)).unwrap();
    dir
}

fn mrbm(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mrbm"));
    c.env_remove("MRBM_CACHE")
        .env_remove("MRBM_DATA")
        .env("NO_COLOR", "1")
        .current_dir(root)
        .args(["run", "experiments/resume.toml", "--quiet"]);
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The train stage's cache entry: (key, entry folder).
fn train_entry(root: &Path) -> (String, PathBuf) {
    let entries = root.join(".mrbm/entries");
    for e in std::fs::read_dir(&entries).unwrap() {
        let e = e.unwrap().path();
        let m = std::fs::read_to_string(e.join("manifest.json")).unwrap();
        if m.contains("\"kind\": \"train\"") {
            let key = e.file_name().unwrap().to_string_lossy().to_string();
            return (key, e);
        }
    }
    panic!("no train entry under {}", entries.display());
}

fn checkpoints(root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(root.join(".mrbm/resume")) else {
        return vec![];
    };
    rd.filter_map(|d| {
        let f = d.ok()?.path().join("train.safetensors");
        f.exists().then_some(f)
    })
    .collect()
}

#[test]
fn sigkill_mid_training_then_rerun_resumes_and_matches_an_uninterrupted_run() {
    let clean = project("");
    let out = mrbm(clean.path()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let (clean_key, clean_entry) = train_entry(clean.path());
    let want = std::fs::read(clean_entry.join("out/model.safetensors")).unwrap();
    let want_loss = std::fs::read(clean_entry.join("out/loss.csv")).unwrap();

    let p = project(", checkpoint_every = 1");
    let mut child = mrbm(p.path()).spawn().unwrap();
    // Wait for the first checkpoint, let a few more epochs pass, then kill.
    let t0 = Instant::now();
    while checkpoints(p.path()).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        if let Ok(Some(s)) = child.try_wait() {
            panic!("the run ended ({s}) before its first checkpoint");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(30));
    let _ = child.kill(); // SIGKILL: no handler runs
    let _ = child.wait();
    assert_eq!(
        checkpoints(p.path()).len(),
        1,
        "the run finished before the kill: make training longer"
    );

    let out = mrbm(p.path()).args(["-v"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let (key, entry) = train_entry(p.path());
    assert_eq!(key, clean_key, "checkpoint_every changed the stage key");
    let log = std::fs::read_to_string(entry.join("log.txt")).unwrap();
    let resumed = log
        .lines()
        .find(|l| l.starts_with("resumed from epoch "))
        .unwrap_or_else(|| panic!("no resume line in the log:\n{log}"));
    let k: usize = resumed["resumed from epoch ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..400).contains(&k), "{resumed}");
    assert!(
        std::fs::read(entry.join("out/model.safetensors")).unwrap() == want,
        "the resumed model's bytes differ from the uninterrupted run's"
    );
    assert_eq!(
        std::fs::read(entry.join("out/loss.csv")).unwrap(),
        want_loss
    );
    assert!(checkpoints(p.path()).is_empty(), "checkpoint left behind");
    assert!(!p.path().join(".mrbm/resume").join(&key).exists());
}
