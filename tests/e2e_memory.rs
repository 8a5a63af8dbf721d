//! Absurd sizes are refused before anything is allocated: the stage fails
//! as a user error (exit 2) that names its memory estimate, instead of the
//! process aborting on an allocation failure and taking sibling stages,
//! locks and temporary folders with it. MRBM_MAX_MEMORY caps the memory a
//! run may use, so the cases behave the same on every machine.

use std::process::{Command, Output};

fn run(exp: &str, sets: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("experiments")).unwrap();
    let file = dir.path().join("experiments/big.toml");
    std::fs::write(&file, exp).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_mrbm"));
    c.env_remove("MRBM_CACHE")
        .env_remove("MRBM_DATA")
        .env("NO_COLOR", "1")
        .env("MRBM_MAX_MEMORY", "2000000000")
        .current_dir(dir.path())
        .args(["run", "experiments/big.toml", "--quiet", "--keep-going"]);
    for s in sets {
        c.args(["--set", s]);
    }
    let out = c.output().unwrap();
    drop(dir);
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const EXP: &str = r#"
[stages.shapes]
kind = "dataset"
params = { format = "synthetic", n = 64, size = 8, classes = 2, seed = 1 }

[stages.train]
kind = "train"
inputs = { data = "shapes" }
params = { conv_channels = [], dense = [8], epochs = 1, batch_size = 16 }

[stages.sample]
kind = "sample"
inputs = { model = "train" }
params = { chains = 4, steps = 2 }
"#;

#[test]
fn the_small_run_fits() {
    let out = run(EXP, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn absurd_sizes_are_user_errors_naming_the_estimate() {
    for (set, what) in [
        ("shapes.n=1000000000", "synthetic images"),
        ("train.dense=[100000000]", "training this stack"),
        ("sample.chains=10000000000", "sampling 10000000000 chains"),
    ] {
        let out = run(EXP, &[set]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{set}: {t}");
        assert!(
            t.contains(what) && t.contains("GiB of memory"),
            "{set}: {t}"
        );
    }
}
