//! The Slurm executor against a real Slurm (`tools/slurm-test-cluster.sh
//! up` starts a single-node one; `.ci/run` does, and sets
//! MRBM_REQUIRE_SLURM=1 so that these tests fail rather than skip there).
//! Without a Slurm that answers `sinfo`, and without that variable, each
//! test prints a note and passes.
//!
//! 1. The quickstart through Slurm writes the same results, byte for byte,
//!    as a local run, and every manifest names its Slurm job.
//! 2. A job cancelled with `scancel` is reported CANCELLED; a rerun computes
//!    the stage cleanly.
//! 3. A stage that fails on its node is reported with Slurm's state, its
//!    exit code and its error, and the job's log is kept under failed/.
//! 4. Interrupting the planner cancels its jobs and leaves no half entry.
//! 5. Two planners on one cache: each stage is submitted once; the second
//!    waits on the first one's jobs.
//! 6. `[executor]` in the experiment selects Slurm, and its options reach
//!    each job: time and memory per stage kind, GPUs for accelerator stages
//!    only (the test cluster advertises a fake GPU); `--executor local` wins.

mod common;
use common::{entries, text, SpawnPiped};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The tests share the test cluster's two CPUs: one at a time.
static CLUSTER: Mutex<()> = Mutex::new(());

/// Whether a Slurm answers; without one, a note (or a failure when
/// MRBM_REQUIRE_SLURM=1).
fn slurm_here(test: &str) -> bool {
    let ok = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false);
    if !ok {
        if std::env::var("MRBM_REQUIRE_SLURM").as_deref() == Ok("1") {
            panic!(
                "{test}: MRBM_REQUIRE_SLURM=1 but no Slurm answers `sinfo` (start one: tools/slurm-test-cluster.sh up)"
            );
        }
        println!("note: {test} skipped: no Slurm answers `sinfo` (tools/slurm-test-cluster.sh up starts one; MRBM_REQUIRE_SLURM=1 makes this a failure)");
    }
    ok
}

/// The test cluster to this test alone, or None (the test skips) when no
/// Slurm answers.
fn cluster(test: &str) -> Option<MutexGuard<'static, ()>> {
    let one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    slurm_here(test).then_some(one)
}

/// `small(epochs)` started under Slurm, once its train job runs: the
/// project, its cache, the planner and the train job's id.
fn training_under_slurm(epochs: usize) -> (tempfile::TempDir, PathBuf, Child, String) {
    let p = project("small", &small(epochs));
    let cache = p.path().join(".mrbm");
    let child = under_slurm(p.path()).spawn_piped();
    let job = running_job(&cache, "train", 120).expect("the train job never ran");
    (p, cache, child, job)
}

/// `mrbm run` of the `small` experiment in `root` under Slurm.
fn under_slurm(root: &Path) -> Command {
    mrbm(root, "small", &["--executor", "slurm"])
}

/// A small pipeline: shapes -> split -> train -> features -> svm -> table.
/// `epochs` sets how long `train` runs.
fn small(epochs: usize) -> String {
    let train =
        format!("conv_channels = [], dense = [16], epochs = {epochs}, batch_size = 10, seed = 1");
    let head = common::shapes_split_train("small", (120, 2, 1), (80, 40), &train);
    format!("{head}{SMALL_TAIL}")
}

/// What follows the train stage in [`small`].
const SMALL_TAIL: &str = r#"
[stages.features]
kind = "features"
inputs = { model = "train", data = "split/test.safetensors" }

[[tables]]
name = "small"
stage = "features"
metrics = ["count"]
"#;

fn project(name: &str, toml: &str) -> tempfile::TempDir {
    common::project(&[(&format!("{name}.toml"), toml)])
}

/// [`mrbm`] run to its end.
fn output(root: &Path, exp: &str, extra: &[&str]) -> Output {
    mrbm(root, exp, extra).output().unwrap()
}

fn mrbm(root: &Path, exp: &str, extra: &[&str]) -> Command {
    let mut c = common::mrbm_in(root);
    // Poll at least every second: short stages, short tests.
    c.env("MRBM_SLURM_POLL_MAX", "1")
        .args(["run", &format!("experiments/{exp}.toml"), "--quiet"])
        .args(extra);
    c
}

fn wait_child(c: Child, secs: u64) -> Output {
    common::finish(c, "the planner", secs)
}

/// `submitted STAGE as Slurm job ID` lines: (stage, job id).
fn submitted(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("submitted ")?;
            let (stage, id) = rest.split_once(" as Slurm job ")?;
            Some((stage.to_string(), id.trim().to_string()))
        })
        .collect()
}

/// Slurm's state of a job, from `scontrol show job`.
fn job_state(id: &str) -> String {
    let o = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .unwrap_or("")
        .to_string()
}

/// Wait until `f` holds (up to `secs`), polling every 100 ms.
fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The id of the running job of `stage` that `child` submitted, read from
/// the Slurm logs in `cache` (the first line `mrbm exec-stage` prints says
/// it started): waits until the job runs.
fn running_job(cache: &Path, stage: &str, secs: u64) -> Option<String> {
    let mut found = None;
    wait_until(secs, || {
        let out = Command::new("squeue")
            .args(["-h", "-t", "running", "-o", "%i|%j"])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((id, name)) = line.split_once('|') else {
                continue;
            };
            if name != format!("mrbm:{stage}") {
                continue;
            }
            // Our cache's job (other tests' jobs have other logs).
            let logs = std::fs::read_dir(cache.join("slurm/logs")).ok();
            let ours = logs.into_iter().flatten().flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.ends_with(&format!(".{id}.log"))
                    && std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .contains("mrbm exec-stage: started at")
            });
            if ours {
                found = Some(id.to_string());
                return true;
            }
        }
        false
    });
    found
}

/// Every entry is whole (has its manifest); none is left half-written.
fn assert_no_half_entry(cache: &Path) {
    for e in entries(cache) {
        assert!(
            e.join("manifest.json").is_file(),
            "{} has no manifest",
            e.display()
        );
    }
}

#[test]
fn quickstart_through_slurm_matches_a_local_run_byte_for_byte() {
    let Some(_one) = cluster("quickstart_through_slurm_matches_a_local_run_byte_for_byte") else {
        return;
    };
    let qs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../experiments/quickstart.toml"
    ))
    .unwrap();
    let local = project("quickstart", &qs);
    let out = output(local.path(), "quickstart", &["--device", "cpu"]);
    assert!(out.status.success(), "local: {}", text(&out));

    let on_slurm = project("quickstart", &qs);
    let out = output(
        on_slurm.path(),
        "quickstart",
        &["--device", "cpu", "--executor", "slurm"],
    );
    let said = text(&out);
    assert!(out.status.success(), "slurm: {said}");
    let jobs = submitted(&said);
    assert!(!jobs.is_empty(), "no job submitted: {said}");
    assert!(said.contains("Slurm: "), "no timing line: {said}");

    // The same results, byte for byte (provenance.json aside: it records
    // when and where each cell ran).
    let mut compared = 0;
    for e in std::fs::read_dir(local.path().join("results")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".provenance.json") {
            continue;
        }
        let mine = std::fs::read(e.path()).unwrap();
        let theirs = std::fs::read(on_slurm.path().join("results").join(&name))
            .unwrap_or_else(|_| panic!("the Slurm run wrote no results/{name}"));
        assert!(
            mine == theirs,
            "results/{name} differs between local and Slurm"
        );
        compared += 1;
    }
    assert!(compared >= 4, "only {compared} result files");

    // Every entry the Slurm run computed names its job, host and device.
    let cache = on_slurm.path().join(".mrbm");
    let ids: Vec<&str> = jobs.iter().map(|(_, id)| id.as_str()).collect();
    let mut with_job = 0;
    for e in entries(&cache) {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.join("manifest.json")).unwrap()).unwrap();
        let job = m["executor_job"].as_str().unwrap_or_else(|| {
            panic!("{}: no executor_job in its manifest", e.display());
        });
        assert!(
            ids.contains(&job),
            "job {job} was not submitted by this run"
        );
        assert!(!m["host"].as_str().unwrap().is_empty());
        assert_eq!(m["device"], "cpu");
        with_job += 1;
    }
    assert_eq!(with_job, jobs.len(), "one entry per job");
    // Local entries name no job.
    for e in entries(&local.path().join(".mrbm")) {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.join("manifest.json")).unwrap()).unwrap();
        assert!(m.get("executor_job").is_none());
    }
}

#[test]
fn a_cancelled_job_is_reported_cancelled_and_reruns_cleanly() {
    let Some(_one) = cluster("a_cancelled_job_is_reported_cancelled_and_reruns_cleanly") else {
        return;
    };
    // Long enough (about 15 s in a debug build) that the job is still
    // running when scancel lands: 400 and then 3000 epochs finished first
    // once training got faster. The rerun trains them whole.
    let (p, cache, child, job) = training_under_slurm(30_000);
    let sc = Command::new("scancel").arg(&job).status().unwrap();
    assert!(sc.success());
    let out = wait_child(child, 120);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("Slurm job {job} CANCELLED")),
        "the cancelled job is not reported: {said}"
    );
    assert!(said.contains("FAILED  train"), "{said}");
    assert_eq!(job_state(&job), "CANCELLED");
    assert_no_half_entry(&cache);

    let out = output(p.path(), "small", &["--executor", "slurm"]);
    let said = text(&out);
    assert!(out.status.success(), "rerun: {said}");
    let again: Vec<String> = submitted(&said).into_iter().map(|(s, _)| s).collect();
    assert!(again.contains(&"train".to_string()), "{said}");
    assert!(
        !again.contains(&"shapes".to_string()),
        "shapes was not cached: {said}"
    );
    assert!(
        std::fs::read_dir(cache.join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "temporary entries left behind"
    );
    assert!(std::fs::read_to_string(p.path().join("results/small.csv"))
        .unwrap()
        .contains("40"));
}

#[test]
fn a_failing_stage_is_reported_with_its_state_exit_code_and_log() {
    let Some(_one) = cluster("a_failing_stage_is_reported_with_its_state_exit_code_and_log") else {
        return;
    };
    // The split asks for more rows than the data set has: the stage fails
    // on its node, not when the run is planned.
    let toml = small(1).replace("train = 80, test = 40", "train = 500, test = 40");
    let p = project("small", &toml);
    let out = output(p.path(), "small", &["--executor", "slurm"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    let jobs = submitted(&said);
    let (_, job) = jobs
        .iter()
        .find(|(s, _)| s == "split")
        .unwrap_or_else(|| panic!("split was not submitted: {said}"));
    assert!(
        said.contains(&format!("Slurm job {job} FAILED, exit code 2")),
        "no state and exit code: {said}"
    );
    assert_eq!(job_state(job), "FAILED");
    // The job's log is kept, and holds the stage's error.
    let kept = p.path().join(format!(".mrbm/failed/split.slurm-{job}.log"));
    let log =
        std::fs::read_to_string(&kept).unwrap_or_else(|_| panic!("no {}: {said}", kept.display()));
    assert!(log.contains("error: split:"), "{log}");
    assert!(said.contains(&kept.display().to_string()), "{said}");
    // Nothing downstream was submitted.
    assert!(!jobs.iter().any(|(s, _)| s == "train"), "{said}");
}

#[test]
fn interrupting_the_planner_cancels_its_jobs() {
    let Some(_one) = cluster("interrupting_the_planner_cancels_its_jobs") else {
        return;
    };
    // Minutes of training: the interrupt always lands while the job runs
    // (400 epochs once finished first under load); it is cancelled anyway.
    let (_p, cache, child, job) = training_under_slurm(100_000);
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = wait_child(child, 120);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(130), "{said}");
    assert!(said.contains("cancelled train"), "{said}");
    assert!(
        wait_until(60, || job_state(&job) == "CANCELLED"),
        "job {job} is {}",
        job_state(&job)
    );
    // The job's own cleanup ran: no entry, no temporary folder, no marker.
    assert!(
        wait_until(30, || std::fs::read_dir(cache.join("tmp"))
            .unwrap()
            .next()
            .is_none()),
        "temporary entries left behind"
    );
    assert_no_half_entry(&cache);
    assert!(!std::fs::read_dir(cache.join("slurm"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".job")));
}

#[test]
fn two_planners_on_one_cache_submit_each_stage_once() {
    let Some(_one) = cluster("two_planners_on_one_cache_submit_each_stage_once") else {
        return;
    };
    let p = project("small", &small(30));
    let spawn = || under_slurm(p.path()).spawn_piped();
    let a = spawn();
    std::thread::sleep(Duration::from_millis(300));
    let b = spawn();
    let (a, b) = (wait_child(a, 300), wait_child(b, 300));
    let (ta, tb) = (text(&a), text(&b));
    assert!(a.status.success(), "first: {ta}");
    assert!(b.status.success(), "second: {tb}");
    let mut all: Vec<String> = submitted(&ta)
        .into_iter()
        .chain(submitted(&tb))
        .map(|(s, _)| s)
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        n,
        "a stage was submitted twice:\n{ta}\n---\n{tb}"
    );
    assert_eq!(
        all,
        ["features", "shapes", "split", "table:small", "train"],
        "{ta}\n---\n{tb}"
    );
    // The second waited on the first one's jobs rather than submitting.
    assert!(
        tb.contains("(Slurm job") || ta.contains("(Slurm job"),
        "nobody waited on another run's job:\n{ta}\n---\n{tb}"
    );
    // A third run computes nothing.
    let out = output(p.path(), "small", &["--executor", "slurm"]);
    assert!(
        text(&out).lines().any(|l| l.starts_with("0 ran,")),
        "{}",
        text(&out)
    );
    assert_no_half_entry(&p.path().join(".mrbm"));
}

/// `scontrol show job` of a job, as KEY=VALUE pairs.
fn job_fields(id: &str) -> std::collections::BTreeMap<String, String> {
    let o = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn executor_options_in_the_experiment_reach_each_job() {
    let Some(_one) = cluster("executor_options_in_the_experiment_reach_each_job") else {
        return;
    };
    let gres = Command::new("sinfo")
        .args(["-h", "-o", "%G"])
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&gres.stdout).contains("gpu") {
        panic!("the test cluster advertises no GPU (tools/slurm-test-cluster.sh up starts it with MRBM_SLURM_FAKE_GPUS=1)");
    }
    let toml = format!(
        "{}\n[executor]\nkind = \"slurm\"\ntime = \"10\"\ngpus = 1\n\n[executor.kinds.train]\ntime = \"20\"\nmem = \"300M\"\n",
        small(2)
    );
    let p = project("small", &toml);
    // --executor local wins over the file: no job.
    let out = output(
        p.path(),
        "small",
        &["--executor", "local", "--device", "cpu"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(submitted(&text(&out)).is_empty(), "{}", text(&out));
    // The file's kind = "slurm" (a fresh cache, so everything runs).
    let out = output(
        p.path(),
        "small",
        &["--device", "cpu", "--cache", "slurm-cache"],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let jobs = submitted(&said);
    assert_eq!(jobs.len(), 5, "{said}");
    for (stage, id) in &jobs {
        let f = job_fields(id);
        let gpu = f.get("TresPerJob").is_some_and(|t| t.contains("gpu:1"));
        match stage.as_str() {
            "train" => {
                assert_eq!(f["TimeLimit"], "00:20:00", "{f:?}");
                assert_eq!(f["MinMemoryNode"], "300M", "{f:?}");
                assert!(gpu, "train asked for no GPU: {f:?}");
            }
            "features" => {
                assert_eq!(f["TimeLimit"], "00:10:00", "{f:?}");
                assert!(gpu, "features asked for no GPU: {f:?}");
            }
            _ => {
                assert_eq!(f["TimeLimit"], "00:10:00", "{stage}: {f:?}");
                assert!(
                    !gpu,
                    "{stage} uses no accelerator but asked for a GPU: {f:?}"
                );
            }
        }
    }
}
