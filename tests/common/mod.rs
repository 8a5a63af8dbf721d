//! Helpers shared by the end-to-end tests of the `mrbm` binary: the binary
//! with a clean environment, a project in a temporary folder, and readers
//! of its output and of cache entries. Each test file uses a subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test, with the user's cache, data root, log filter and
/// colours out of the way.
pub fn mrbm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mrbm"));
    c.env_remove("MRBM_CACHE")
        .env_remove("MRBM_DATA")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    c
}

/// [`mrbm`] run from the project folder `dir`.
pub fn mrbm_in(dir: &Path) -> Command {
    let mut c = mrbm();
    c.current_dir(dir);
    c
}

/// `mrbm ARGS` in `dir`, waited for.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    mrbm_in(dir).args(args).output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout then stderr, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// stdout of a command that must have succeeded (both streams shown if not).
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// A project folder with `experiments/NAME` files.
pub fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("experiments")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("experiments").join(name), text).unwrap();
    }
    dir
}

/// The entry folders of a cache (`PROJECT/.mrbm` by default).
pub fn entries(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache.join("entries"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The cache entry whose manifest names stage cell `stage_id`, if any.
pub fn entry_of(cache: &Path, stage_id: &str) -> Option<PathBuf> {
    entries(cache).into_iter().find(|dir| {
        std::fs::read(dir.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|m| m["stage_id"] == stage_id)
    })
}

/// Waits for `child` and collects its output; kills it and fails the test
/// if it is still running after `secs`: a guard against a hang, not a
/// speed assertion.
pub fn finish(mut child: Child, what: &str, secs: u64) -> Output {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!("{what}: still running after {secs} s:\n{}", text(&out));
}

/// (ran, cached) from the run summary's "N ran, M cached" line.
pub fn counts(o: &Output) -> (usize, usize) {
    let t = text(o);
    let line = t
        .lines()
        .find(|l| l.contains(" ran, ") && l.contains(" cached"))
        .unwrap_or_else(|| panic!("no summary in:\n{t}"));
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

/// Starting a command with both output streams piped, for [`finish`] or a
/// reader of its lines.
pub trait SpawnPiped {
    fn spawn_piped(&mut self) -> Child;
}

impl SpawnPiped for Command {
    fn spawn_piped(&mut self) -> Child {
        self.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// The head of the experiments the end-to-end tests run: `name`, `n`
/// synthetic 8x8 shapes of `classes` classes, a `train`/`test` split (both
/// with `seed`) and a `train` stage on its training part, whose `params`
/// inline table has the body `train`.
pub fn shapes_split_train(
    name: &str,
    (n, classes, seed): (usize, usize, u64),
    (train_n, test_n): (usize, usize),
    train: &str,
) -> String {
    format!(
        r#"
name = "{name}"

[stages.shapes]
kind = "dataset"
params = {{ format = "synthetic", n = {n}, size = 8, classes = {classes}, seed = {seed} }}

[stages.split]
kind = "transform"
inputs = {{ data = "shapes" }}
params = {{ split = {{ train = {train_n}, test = {test_n} }}, seed = {seed} }}

[stages.train]
kind = "train"
inputs = {{ data = "split/train.safetensors" }}
params = {{ {train} }}
"#
    )
}

/// What follows [`shapes_split_train`] in the SVM experiments: features of
/// both parts from `train`, and an `svm` stage (with the `params` body
/// `svm`) on them.
pub fn features_svm(svm: &str) -> String {
    format!(
        r#"
[stages.train_features]
kind = "features"
inputs = {{ model = "train", data = "split/train.safetensors" }}

[stages.test_features]
kind = "features"
inputs = {{ model = "train", data = "split/test.safetensors" }}

[stages.svm]
kind = "svm"
inputs = {{ train = "train_features", test = "test_features" }}
params = {{ {svm} }}
"#
    )
}

/// The tiny experiment of tests/e2e.rs (synthetic shapes -> split -> conv
/// RBM -> features -> SVM -> table, swept over N = 1 and 255), with
/// `epochs` of training and the SVM's `params` body `svm`.
pub fn tiny(epochs: &str, svm: &str) -> String {
    let train = format!(
        "conv_channels = [4], dense = [], epochs = {epochs}, batch_size = 32, lr = 0.01, seed = 3"
    );
    let head = shapes_split_train("tiny", (240, 3, 3), (160, 80), &train);
    let table = sweep_svm_table("tiny", "[1, 255]", r#"metric = "test_error""#);
    format!("{head}{}{table}", features_svm(svm))
}

/// The end of the SVM experiments: a sweep over N (train.n) = `values`
/// and a table `name` of the SVM's metrics along it; `metrics` is the
/// table's `metric = ...` or `metrics = [...]` line.
pub fn sweep_svm_table(name: &str, values: &str, metrics: &str) -> String {
    format!(
        r#"
[sweep]
N = {{ param = "train.n", values = {values} }}

[[tables]]
name = "{name}"
stage = "svm"
{metrics}
rows = "N"
"#
    )
}

/// This machine's host name, as the cache's locks record it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// This boot's id, as the cache's locks record it.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}
