//! Resumable training end to end: `mrbm run` killed with SIGKILL in the
//! middle of a train stage, then run again, resumes from the stage's last
//! checkpoint, says so in the log, writes the model an uninterrupted run
//! writes (same bytes, same key: the checkpoint cadence is no part of it)
//! and removes the checkpoint once the entry is published.

mod common;
use common::{entry_of, text};

use std::path::{Path, PathBuf};
use std::process::Command;
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
# PCD at N = 3 leaves this layer dead; the test is about resuming, not the model.
params = {{ conv_channels = [], dense = [24], epochs = 400, batch_size = 10, algorithm = "pcd", n = 3, allow_dead_units = true{extra} }}
"#
    )
}

fn project(extra: &str) -> tempfile::TempDir {
    common::project(&[("resume.toml", &exp(extra))])
}

fn mrbm(root: &Path) -> Command {
    let mut c = common::mrbm_in(root);
    c.args(["run", "experiments/resume.toml", "--quiet"]);
    c
}

/// The train stage's cache entry: (key, entry folder).
fn train_entry(root: &Path) -> (String, PathBuf) {
    let e = entry_of(&root.join(".mrbm"), "train").expect("no train entry");
    (e.file_name().unwrap().to_string_lossy().to_string(), e)
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
