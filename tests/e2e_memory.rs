//! Absurd sizes are refused before anything is allocated: the stage fails
//! as a user error (exit 2) that names its memory estimate, instead of the
//! process aborting on an allocation failure and taking sibling stages,
//! locks and temporary folders with it. MRBM_MAX_MEMORY caps the memory a
//! run may use, so the cases behave the same on every machine.

mod common;
use common::text;

use std::process::Output;

fn run(exp: &str, sets: &[&str]) -> Output {
    let dir = common::project(&[("big.toml", exp)]);
    let mut c = common::mrbm_in(dir.path());
    c.env("MRBM_MAX_MEMORY", "2000000000").args([
        "run",
        "experiments/big.toml",
        "--quiet",
        "--keep-going",
    ]);
    for s in sets {
        c.args(["--set", s]);
    }
    let out = c.output().unwrap();
    drop(dir);
    out
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
