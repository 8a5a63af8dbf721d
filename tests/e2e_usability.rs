//! End-to-end tests of what a person sees during and after a run (issue 19):
//! progress lines without a terminal, `-v`, warnings in the summary, the
//! summary's width, `--jobs 0`, `mrbm kinds`, `mrbm params`, completions.

mod common;
use common::{counts, run_in as run, stderr, stdout};

use std::path::Path;

/// tiny() of tests/e2e.rs, with a longer training and an SVM capped at 2
/// iterations (so it warns that it did not converge).
fn tiny() -> String {
    common::tiny("EPOCHS", "loss = \"hinge\", C = 1.0, max_iter = 2")
}

fn project(epochs: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("experiments")).unwrap();
    std::fs::write(
        dir.path().join("experiments/tiny.toml"),
        tiny().replace("EPOCHS", &epochs.to_string()),
    )
    .unwrap();
    dir
}

#[test]
fn piped_run_prints_plain_progress_lines() {
    // Stderr is a pipe here: no bars, a line per running stage per interval.
    let p = project(400);
    let o = run(
        p.path(),
        &[
            "run",
            "experiments/tiny.toml",
            "-j",
            "1",
            "--progress-interval",
            "0.005",
        ],
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("  running train[N="))
        .collect();
    assert!(!lines.is_empty(), "no progress lines for train in:\n{err}");
    let l = lines[lines.len() / 2];
    // stage id, step/total, the bar's message (the loss), elapsed, ETA.
    assert!(l.contains("/") && l.contains("%)"), "{l}");
    assert!(l.contains("loss ") || l.contains("training"), "{l}");
    assert!(l.contains(", elapsed ") && l.contains(", ETA "), "{l}");
    // No terminal escapes in a pipe.
    assert!(!err.contains('\u{1b}'), "{err}");
}

#[test]
fn verbose_echoes_the_stage_log_as_it_is_written() {
    let p = project(2);
    let quiet = run(p.path(), &["run", "experiments/tiny.toml"]);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert!(!stderr(&quiet).contains("epoch 1: mean loss"));
    // Cached stages log nothing: start again with a fresh cache.
    let p = project(2);
    let loud = run(p.path(), &["run", "experiments/tiny.toml", "-v"]);
    let err = stderr(&loud);
    assert!(loud.status.success(), "{err}");
    assert!(err.contains("train[N=1]: epoch 1: mean loss"), "{err}");
    assert!(err.contains("train[N=255]: epoch 2: mean loss"), "{err}");
}

#[test]
fn warnings_are_in_the_summary_and_it_fits_in_100_columns() {
    let p = project(1);
    let o = run(p.path(), &["run", "experiments/tiny.toml"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    let after = out
        .split("\nwarnings:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no warnings section in:\n{out}"));
    assert!(after.contains("  svm[N=1]:\n"), "{after}");
    assert!(after.contains("not converged"), "{after}");
    // The summary table: a short key, no log paths, within 100 columns.
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("stage "))
        .take_while(|l| !l.contains(" ran, "))
        .collect();
    assert!(table.len() > 10, "{out}");
    assert!(table[0].ends_with("key"), "{}", table[0]);
    for l in &table {
        assert!(l.chars().count() <= 100, "too wide: {l}");
        assert!(!l.contains("log.txt"), "{l}");
    }
    // A rerun (all cached) still lists them.
    let again = run(p.path(), &["run", "experiments/tiny.toml"]);
    assert!(stdout(&again).contains("  svm[N=1] (cached):\n"));
}

#[test]
fn long_stage_ids_are_shortened_in_the_summary() {
    let p = project(1);
    let long = tiny().replace("EPOCHS", "1").replace(
        "[sweep]",
        "[sweep]\nA_VERY_LONG_SWEEP_AXIS_NAME_THAT_GOES_ON = { param = \"svm.eps\", values = [0.1000000000000000055511151231257827021181583404541015625] }\nANOTHER_QUITE_LONG_AXIS_NAME_FOR_GOOD_MEASURE = { param = \"svm.seed\", values = [123456789] }",
    );
    std::fs::write(p.path().join("experiments/tiny.toml"), long).unwrap();
    let o = run(p.path(), &["run", "experiments/tiny.toml"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("stage "))
        .take_while(|l| !l.contains(" ran, "))
        .collect();
    assert!(table.iter().any(|l| l.contains("..")), "{out}");
    for l in &table {
        assert!(l.chars().count() <= 100, "too wide: {l}");
    }
}

#[test]
fn jobs_zero_is_rejected() {
    let p = project(1);
    let o = run(p.path(), &["run", "experiments/tiny.toml", "--jobs", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("at least 1"), "{}", stderr(&o));
    assert!(!p.path().join(".mrbm").exists());
}

#[test]
fn kinds_and_params_describe_the_stage_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["kinds"]);
    let out = stdout(&o);
    assert!(o.status.success());
    assert!(out.contains("train (mrbm-core, version "), "{out}");
    assert!(out.contains("svm (mrbm-eval, version "), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("  data  required  ")),
        "{out}"
    );
    assert!(out.contains("optional"), "{out}");

    let o = run(dir.path(), &["params", "train"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    for p in ["epochs", "lr", "batch_size", "conv_channels", "seed"] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(p) && l.contains(" = ")),
            "{p} in:\n{out}"
        );
    }
    assert!(out.contains("lr            = 0.03"), "{out}");
    // Types and docs come from the parameter struct's doc comments.
    assert!(out.contains("(f64)\n      Adam learning rate"), "{out}");

    // A parameter without a default is listed as required, with its values.
    let o = run(dir.path(), &["params", "dataset"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("required parameters:\n  format (one of "),
        "{out}"
    );

    let o = run(dir.path(), &["params", "trian"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("did you mean `train`?"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn completions_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let o = run(dir.path(), &["completions", shell]);
        let out = stdout(&o);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        assert!(out.contains("mrbm"), "{shell}");
        assert!(out.contains("progress-interval"), "{shell}");
    }
    let o = run(dir.path(), &["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
}

/// A command stage counting the words of a file with `sh` (no Rust), a
/// second one reading its output, and a table of its metric.
const COMMAND: &str = r#"
name = "cmd"

[stages.count]
kind = "command"
inputs = { in1 = "words.txt", in2 = "count.sh" }
params = { argv = ["sh", "{in2}", "{in1}", "{out}/count.txt"], env = { SCALE = "SCALE_VALUE" } }

[stages.double]
kind = "command"
inputs = { in1 = "count/count.txt" }
params = { argv = ["sh", "-c", "echo $(( $(cat \"$MRBM_IN_IN1\") * 2 )) > \"$MRBM_OUT/double.txt\""] }
"#;

const COUNT_SH: &str = r#"n=$(wc -w < "$1")
echo "counting $1" >&2
echo $((n * SCALE)) > "$2"
echo "{\"words\": $((n * SCALE))}" > "$MRBM_OUT/metrics.json"
"#;

fn command_project(scale: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("experiments");
    std::fs::create_dir_all(&e).unwrap();
    std::fs::write(
        e.join("cmd.toml"),
        COMMAND.replace("SCALE_VALUE", &scale.to_string()),
    )
    .unwrap();
    std::fs::write(e.join("words.txt"), "a b c\n").unwrap();
    std::fs::write(e.join("count.sh"), COUNT_SH).unwrap();
    dir
}

fn entry_file(dir: &Path, stage: &str, file: &str) -> String {
    let o = run(dir, &["show", stage]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let entry = out.lines().find_map(|l| l.strip_prefix("entry: ")).unwrap();
    std::fs::read_to_string(Path::new(entry).join("out").join(file)).unwrap()
}

#[test]
fn command_stage_runs_the_users_program_and_caches_it() {
    let p = command_project(1);
    let exp = "experiments/cmd.toml";
    let first = run(p.path(), &["run", exp]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(counts(&first), (2, 0));
    assert_eq!(entry_file(p.path(), "count", "count.txt").trim(), "3");
    assert_eq!(entry_file(p.path(), "double", "double.txt").trim(), "6");
    // Its metrics.json is the stage's metrics; its stderr is in the log.
    let show = stdout(&run(p.path(), &["show", "count"]));
    assert!(show.contains("\"words\": 3.0"), "{show}");
    assert!(entry_file(p.path(), "count", "../log.txt").contains("stderr: counting "));

    // Nothing changed: cached.
    assert_eq!(counts(&run(p.path(), &["run", exp])), (0, 2));

    // The input's content is in the key.
    let words = p.path().join("experiments/words.txt");
    std::fs::write(&words, "a b c d\n").unwrap();
    let o = run(p.path(), &["run", exp]);
    assert_eq!(counts(&o), (2, 0), "{}", stdout(&o));
    assert_eq!(entry_file(p.path(), "double", "double.txt").trim(), "8");

    // So is the script's (an input too).
    let script = p.path().join("experiments/count.sh");
    std::fs::write(&script, format!("{COUNT_SH}\n# edited\n")).unwrap();
    let o = run(p.path(), &["run", exp]);
    // count reruns; its output is the same, so double stays cached.
    assert_eq!(counts(&o), (1, 1), "{}", stdout(&o));

    // And env and argv are part of the key.
    let toml = p.path().join("experiments/cmd.toml");
    std::fs::write(&toml, COMMAND.replace("SCALE_VALUE", "10")).unwrap();
    let o = run(p.path(), &["run", exp]);
    assert_eq!(counts(&o), (2, 0), "{}", stdout(&o));
    assert_eq!(entry_file(p.path(), "double", "double.txt").trim(), "80");
}

#[test]
fn a_failing_command_fails_its_stage_with_the_end_of_its_stderr() {
    let p = command_project(1);
    std::fs::write(
        p.path().join("experiments/count.sh"),
        "echo 'first line' >&2\necho 'no such column: weight' >&2\nexit 3\n",
    )
    .unwrap();
    let o = run(p.path(), &["run", "experiments/cmd.toml"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("`sh` exited with status 3"), "{err}");
    assert!(err.contains("no such column: weight"), "{err}");
    // The program not found: a user error.
    std::fs::write(
        p.path().join("experiments/cmd.toml"),
        COMMAND.replace("\"sh\", \"{in2}\"", "\"mrbm-no-such-program\", \"{in2}\""),
    )
    .unwrap();
    let o = run(p.path(), &["run", "experiments/cmd.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot start `mrbm-no-such-program`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_device_the_file_asks_for_is_reported_at_its_line() {
    // A `device` key this build cannot give: the error names the file,
    // line and column of the key and the flag that overrides it; the flag
    // wins over the key; a malformed value is reported at the key too.
    let toml = "name = \"dk\"\ndescription = \"x\"\ndevice = \"DEVICE\"\n\n\
        [stages.shapes]\nkind = \"dataset\"\n\
        params = { format = \"synthetic\", n = 16, size = 8, classes = 2, seed = 1 }\n";
    let missing = if cfg!(feature = "cuda") {
        "tpu"
    } else {
        "cuda:1"
    };
    for (device, says) in [
        (
            missing,
            if missing == "tpu" {
                "expected auto, cpu"
            } else {
                "this build has no cuda feature"
            },
        ),
        ("tpu", "expected auto, cpu, wgpu[:INDEX] or cuda[:INDEX]"),
    ] {
        let p = common::project(&[("dk.toml", &toml.replace("DEVICE", device))]);
        let o = run(p.path(), &["run", "experiments/dk.toml", "--quiet"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "experiments/dk.toml:3:1: device = \"{device}\": {says}"
            )),
            "{err}"
        );
        assert!(
            err.contains("override it for one run with --device cpu"),
            "{err}"
        );
        let o = run(
            p.path(),
            &["run", "experiments/dk.toml", "--quiet", "--device", "cpu"],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
}
