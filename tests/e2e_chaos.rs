//! Chaos: a run killed with SIGKILL at any point, and several runs at once
//! on one cache, leave a cache from which the next run finishes and writes
//! exactly the table a clean run writes. Kill points are spread over the
//! run; whatever moment each lands on, the assertion is the same, so the
//! test cannot pass by luck of timing.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const EXP: &str = r#"
name = "chaos"

[stages.shapes]
kind = "dataset"
params = { format = "synthetic", n = 200, size = 8, classes = 2, seed = 1 }

[stages.split]
kind = "transform"
inputs = { data = "shapes" }
params = { split = { train = 150, test = 50 }, seed = 1 }

[stages.train]
kind = "train"
inputs = { data = "split/train.safetensors" }
params = { conv_channels = [], dense = [16], epochs = 60, batch_size = 10 }

[stages.train_features]
kind = "features"
inputs = { model = "train", data = "split/train.safetensors" }

[stages.test_features]
kind = "features"
inputs = { model = "train", data = "split/test.safetensors" }

[stages.svm]
kind = "svm"
inputs = { train = "train_features", test = "test_features" }
params = { C = 1.0 }

[sweep]
N = { param = "train.n", values = [1, 3] }

[[tables]]
name = "chaos"
stage = "svm"
metrics = ["test_error", "train_error"]
rows = "N"
"#;

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("experiments")).unwrap();
    std::fs::write(dir.path().join("experiments/chaos.toml"), EXP).unwrap();
    dir
}

fn mrbm(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mrbm"));
    c.env_remove("MRBM_CACHE")
        .env_remove("MRBM_DATA")
        .env("NO_COLOR", "1")
        .current_dir(root)
        .args(["run", "experiments/chaos.toml", "--quiet", "--jobs", "2"]);
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
