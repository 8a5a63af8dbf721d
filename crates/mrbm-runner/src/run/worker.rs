//! The seam between the session, which keeps the DAG and decides what is
//! ready, and the place where a ready stage runs.
//!
//! The session resolves a node's inputs against the manifests of its
//! finished upstream nodes, computes its key, and hands an [`Executor`] a
//! [`StageJob`]: everything needed to run that one stage given only the
//! cache directory. A job is plain data (serde), so another process can read
//! it from `CACHE/jobs/KEY.json` and run it with [`run_job`], which is what
//! every executor calls: lock the key, re-check the cache, run the stage in
//! a temporary folder, write the manifest, publish atomically.
//!
//! [`LocalExecutor`] runs jobs on a pool of threads of this process.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mrbm_stage::{Device, DeviceId, Stage, StageContext, StageError};

use crate::error::RunnerError;
use crate::key::job::StageJob;
use crate::kinds::registry::Registry;
use crate::run::job::{NodeResult, Status, TOOL_VERSION};
use crate::run::output::LogTee;
use crate::store::hashing::Memo;
use crate::store::integrity;
use crate::store::{self, Found, LockOutcome, Manifest, Store};

/// What the process running a job brings: the stage kinds, the resolved
/// device, the hash memo, the display and the cancel flag.
pub struct Runtime<'a> {
    pub registry: &'a Registry,
    pub memo: &'a Memo,
    /// Resolved once for the process (mrbm-device); every stage gets it.
    pub device: &'a Device,
    pub progress: Option<&'a indicatif::MultiProgress>,
    pub cancel: &'a AtomicBool,
    /// The executor's id of the job running here (a Slurm job id), if it
    /// has one: recorded in the manifest as `executor_job`.
    pub job_id: Option<String>,
}

pub(crate) fn result(status: Status, t0: Instant) -> NodeResult {
    NodeResult {
        status,
        key: None,
        seconds: t0.elapsed().as_secs_f64(),
        log: None,
        manifest: None,
    }
}

fn failed(message: String, user: bool, log: Option<PathBuf>, t0: Instant) -> NodeResult {
    NodeResult {
        log,
        ..result(Status::Failed { message, user }, t0)
    }
}

fn cached(store: &Store, key: &str, manifest: Manifest, t0: Instant) -> NodeResult {
    NodeResult {
        key: Some(key.to_string()),
        log: Some(store.entry_dir(key).join("log.txt")),
        manifest: Some(manifest),
        ..result(Status::Cached, t0)
    }
}

/// Run one ready job against the cache: reuse its entry when it is there
/// and whole, else take the key's lock, run the stage into a temporary
/// folder and publish the entry atomically. Publishing to `results/` is the
/// session's business, not the executor's.
pub fn run_job(store: &Store, job: &StageJob, rt: &Runtime) -> NodeResult {
    let t0 = Instant::now();
    let Some(stage) = rt.registry.get(&job.kind) else {
        return failed(
            format!("no stage kind `{}` in this build of mrbm", job.kind),
            true,
            None,
            t0,
        );
    };
    let lock = match acquire(store, job, rt) {
        Ok(Acquired::Lock(l)) => l,
        Ok(Acquired::Cached(m)) => return cached(store, &job.key, *m, t0),
        Err(RunnerError::Interrupted) => return result(Status::Cancelled, t0),
        Err(e) => return failed(e.to_string(), false, None, t0),
    };
    let tmp = match store.tmp_dir(&job.key) {
        Ok(t) => t,
        Err(e) => return failed(e.to_string(), false, None, t0),
    };
    let log_path = tmp.join("log.txt");
    // Lines are echoed as they are logged (`-v`), and warnings on stderr
    // when no terminal display shows them.
    let echo_warnings = matches!(rt.progress, Some(m) if m.is_hidden());
    let log_file: Box<dyn std::io::Write + Send> = match std::fs::File::create(&log_path) {
        Ok(f) => Box::new(LogTee::new(f, &job.stage_id, echo_warnings)),
        Err(e) => return failed(format!("{}: {e}", log_path.display()), false, None, t0),
    };
    let log = Mutex::new(log_file);
    let keep_failed_log = |msg: &str| -> Option<PathBuf> {
        // Keep the log of a failed stage where the user can read it.
        if let Ok(mut w) = log.lock() {
            let _ = writeln!(w, "error: {msg}");
        }
        let dir = store.root.join("failed");
        let _ = std::fs::create_dir_all(&dir);
        let dest = dir.join(format!("{}.log", sanitize(&job.stage_id)));
        let _ = std::fs::copy(&log_path, &dest);
        let _ = std::fs::remove_dir_all(&tmp);
        Some(dest)
    };
    let started = store::now_rfc3339();
    let paths: BTreeMap<String, PathBuf> = job
        .inputs
        .iter()
        .filter_map(|i| Some((i.slot.clone(), i.path.clone()?)))
        .collect();
    // Checkpoints of an interrupted run of this key live here until it is published.
    let resume_dir = store.root.join("resume").join(&job.key);
    let ctx = StageContext {
        stage_id: &job.stage_id,
        params: &job.params,
        inputs: &paths,
        out_dir: &tmp.join("out"),
        device: rt.device,
        threads: job.threads,
        progress: rt.progress,
        cancel: rt.cancel,
        log: &log,
        resume_dir: Some(&resume_dir),
        upstream: &upstream_entries(store, job),
    };
    ctx.log(format!(
        "{} {} (key {}) on {} at {started}",
        job.kind, job.stage_id, job.key, rt.device
    ));
    let outcome = catch_unwind(AssertUnwindSafe(|| run_declared(stage, &ctx, job)));
    let metrics = match outcome {
        Ok(Ok(m)) => m,
        Ok(Err(StageError::Cancelled)) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return result(Status::Cancelled, t0);
        }
        Ok(Err(e)) => {
            let msg = e.to_string();
            return failed(msg.clone(), e.is_user_error(), keep_failed_log(&msg), t0);
        }
        Err(panic) => {
            let msg = format!(
                "internal error in stage kind `{}`: {} (this is a bug in mrbm; please report it with the log)",
                job.kind,
                mrbm_stage::panic_message(panic.as_ref()).unwrap_or_else(|| "unknown panic".into())
            );
            return failed(msg.clone(), false, keep_failed_log(&msg), t0);
        }
    };
    if rt.cancel.load(Ordering::Relaxed) {
        let _ = std::fs::remove_dir_all(&tmp);
        return NodeResult {
            seconds: 0.0,
            ..result(Status::Cancelled, t0)
        };
    }
    let seconds = t0.elapsed().as_secs_f64();
    let entry = Entry {
        tmp: &tmp,
        metrics: &metrics,
        device: rt.device.id(),
        started,
        seconds,
    };
    drop(log.lock().map(|mut w| w.flush()));
    match publish_entry(store, job, rt, &entry) {
        Ok(m) => {
            drop(lock);
            NodeResult {
                status: Status::Ran,
                key: Some(job.key.clone()),
                seconds,
                log: Some(store.entry_dir(&job.key).join("log.txt")),
                manifest: Some(m),
            }
        }
        Err(e) => {
            let user = e.exit_code() == 2;
            let lp = keep_failed_log(&e.to_string());
            failed(e.to_string(), user, lp, t0)
        }
    }
}

/// The metrics a stage returned, when its kind declares them all: a kind's
/// declaration (checked against tables at plan time) must cover what it
/// returns, and debug builds (the tests) fail the stage when it does not.
fn run_declared(
    stage: &dyn Stage,
    ctx: &StageContext,
    job: &StageJob,
) -> Result<mrbm_stage::Metrics, StageError> {
    let metrics = stage.run(ctx)?;
    if !cfg!(debug_assertions) {
        return Ok(metrics);
    }
    let Some(declared) = stage.metrics(&job.params) else {
        return Ok(metrics);
    };
    match metrics.keys().find(|k| !declared.contains(k)) {
        Some(k) => Err(StageError::Failed(format!(
            "internal error: kind `{}` returned metric `{k}` that its `metrics` declaration lacks",
            job.kind
        ))),
        None => Ok(metrics),
    }
}

/// Slot -> the cache entry behind each input that another stage produced:
/// as the job carries it from keying, or else (a job read back from its
/// file) read from the entry's manifest (the store knows where it is; the
/// stage does not). An input whose entry has no readable manifest is left
/// out, as a table cell without an entry is.
fn upstream_entries(store: &Store, job: &StageJob) -> BTreeMap<String, mrbm_stage::Upstream> {
    job.inputs
        .iter()
        .filter(|i| i.path.is_some())
        .filter_map(|i| {
            let up = match &i.upstream {
                Some(up) => up.clone(),
                None => store.manifest(i.upstream_key.as_deref()?).ok()?.upstream(),
            };
            Some((i.slot.clone(), up))
        })
        .collect()
}

enum Acquired {
    Lock(store::KeyLock),
    Cached(Box<Manifest>),
}

/// The cache entry, checked against its manifest before anything reads it;
/// or the key's lock, to compute it. A corrupt entry and the entries
/// computed from it go to quarantine (under the lock) and the stage runs
/// again.
fn acquire(store: &Store, job: &StageJob, rt: &Runtime) -> Result<Acquired, RunnerError> {
    let key = &job.key;
    let waiting = |owner: &str| {
        eprintln!(
            "  waiting {} (being computed by process {owner})",
            job.stage_id
        )
    };
    loop {
        // A corrupt entry is replaced under the lock, so the lock is taken
        // even though an entry is there.
        let absent = match integrity::check(store, key) {
            Found::Hit(m) => return Ok(Acquired::Cached(Box::new(m))),
            Found::Absent => true,
            Found::Corrupt(_) => false,
        };
        match store.lock_with(key, absent, &|| rt.cancel.load(Ordering::Relaxed), &waiting)? {
            LockOutcome::Published => {
                // Published by another process: checked at the loop's top.
                // A corrupt one is quarantined by whoever holds the lock.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            LockOutcome::Acquired(l) => {
                return match integrity::check(store, key) {
                    Found::Hit(m) => {
                        drop(l);
                        Ok(Acquired::Cached(Box::new(m)))
                    }
                    Found::Absent => Ok(Acquired::Lock(l)),
                    Found::Corrupt(why) => {
                        let moved = store.quarantine_with_descendants(key)?;
                        eprintln!(
                            "  corrupt {}: cache entry {}: {why}; moved it{} to {}, computing it again",
                            job.stage_id,
                            &key[..12],
                            if moved.len() > 1 {
                                format!(" and the {} entries computed from it", moved.len() - 1)
                            } else {
                                String::new()
                            },
                            store.root.join("quarantine").display()
                        );
                        Ok(Acquired::Lock(l))
                    }
                };
            }
        }
    }
}

/// What a finished stage left in its temporary folder.
struct Entry<'a> {
    tmp: &'a Path,
    metrics: &'a mrbm_stage::Metrics,
    device: DeviceId,
    started: String,
    seconds: f64,
}

/// Write metrics.json, re-check the external inputs, hash the outputs and
/// publish the entry with its manifest.
fn publish_entry(
    store: &Store,
    job: &StageJob,
    rt: &Runtime,
    e: &Entry,
) -> Result<Manifest, RunnerError> {
    let memo = rt.memo;
    let bytes =
        serde_json::to_vec_pretty(e.metrics).map_err(|err| RunnerError::cache(e.tmp, err))?;
    store::write_atomic(&e.tmp.join("out").join(store::METRICS), &bytes)?;
    // Inputs changed while the stage ran: fail rather than cache a lie.
    for inp in job.inputs.iter().filter(|i| i.external) {
        let Some(path) = &inp.path else { continue };
        let now = memo
            .path(path)
            .map_err(|err| RunnerError::Data(format!("{}: {err}", path.display())))?;
        if inp.hash != now {
            return Err(RunnerError::Data(format!(
                "input `{}` ({}) changed while `{}` ran; nothing was cached, run again",
                inp.slot,
                path.display(),
                job.stage_id
            )));
        }
    }
    let (files, output_hash) = store.hash_outputs(e.tmp, e.metrics)?;
    let manifest = Manifest {
        key: job.key.clone(),
        stage_id: job.stage_id.clone(),
        kind: job.kind.clone(),
        version: job.version,
        params: job.params.clone(),
        inputs: job.input_hashes(),
        input_sources: job
            .inputs
            .iter()
            .filter_map(|i| Some((i.slot.clone(), i.source.clone()?)))
            .collect(),
        input_keys: job
            .inputs
            .iter()
            .filter_map(|i| Some((i.slot.clone(), i.upstream_key.clone()?)))
            .collect(),
        files,
        output_hash,
        metrics: e.metrics.clone(),
        device: e.device.to_string(),
        started: e.started.clone(),
        seconds: e.seconds,
        tool_version: TOOL_VERSION.to_string(),
        host: store::hostname(),
        executor_job: rt.job_id.clone(),
    };
    store.publish(e.tmp, &manifest)?;
    // The entry is published: its resume checkpoints are no longer needed.
    let _ = std::fs::remove_dir_all(store.root.join("resume").join(&manifest.key));
    Ok(manifest)
}

/// A stage id as a file name.
pub(crate) fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "=-_,.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::job::JobInput;
    use crate::run::executors::local::LocalExecutor;
    use crate::run::executors::Executor;
    use mrbm_stage::JsonValue;
    use mrbm_stage::{InputSlot, Metrics, ParamError, Stage};

    /// Writes its parameter `x` (plus the metric `y` of the entry behind
    /// its input `up`, when there is one) doubled and returns it as a metric.
    struct Double;
    impl Stage for Double {
        fn kind(&self) -> &'static str {
            "double"
        }
        fn version(&self) -> u32 {
            1
        }
        fn inputs(&self) -> &'static [InputSlot] {
            &[]
        }
        fn params(&self, _raw: &toml::Table) -> Result<JsonValue, ParamError> {
            unreachable!("jobs carry canonical parameters")
        }
        fn run(&self, ctx: &StageContext) -> Result<Metrics, StageError> {
            let x = ctx.params["x"].as_f64().unwrap_or(0.0);
            if x < 0.0 {
                return Err(StageError::user("x must not be negative"));
            }
            let x = x + ctx.upstream("up").map_or(0.0, |u| u.metrics["y"]);
            std::fs::write(ctx.out("y.txt"), format!("{}", 2.0 * x)).unwrap();
            Ok(Metrics::from([("y".to_string(), 2.0 * x)]))
        }
    }

    fn job(i: usize, x: f64) -> StageJob {
        StageJob {
            job: i,
            stage_id: format!("double[x={x}]"),
            kind: "double".into(),
            version: 1,
            params: serde_json::json!({ "x": x }),
            key: crate::store::hashing::hash_bytes(format!("double {x}").as_bytes()),
            inputs: vec![],
            uses_device: false,
            threads: 1,
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        memo: Memo,
        reg: Registry,
        cancel: AtomicBool,
        device: Device,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let memo = Memo::load(&store.root);
        Fixture {
            _dir: dir,
            store,
            memo,
            reg: Registry::from_stages(vec![Box::new(Double)]),
            cancel: AtomicBool::new(false),
            device: Device::cpu(),
        }
    }

    impl Fixture {
        fn rt(&self) -> Runtime<'_> {
            Runtime {
                registry: &self.reg,
                memo: &self.memo,
                device: &self.device,
                progress: None,
                job_id: None,
                cancel: &self.cancel,
            }
        }
    }

    #[test]
    fn a_job_read_back_from_its_file_is_the_same_job() {
        let f = fixture();
        let mut j = job(3, 1.5);
        j.inputs.push(JobInput {
            slot: "data".into(),
            path: Some(PathBuf::from("data/x.bin")),
            hash: "abc".into(),
            source: Some("data/x.bin".into()),
            upstream_key: None,
            upstream: None,
            external: true,
        });
        let path = j.save(&f.store).unwrap();
        assert_eq!(
            path,
            f.store.root.join("jobs").join(format!("{}.json", j.key))
        );
        assert_eq!(StageJob::load(&path).unwrap(), j);
    }

    #[test]
    fn run_job_runs_then_finds_the_entry_cached() {
        let f = fixture();
        let j = job(0, 2.0);
        let r = run_job(&f.store, &j, &f.rt());
        assert_eq!(r.status, Status::Ran);
        let m = r.manifest.unwrap();
        assert_eq!(m.key, j.key);
        assert_eq!(m.metrics["y"], 4.0);
        let y = std::fs::read_to_string(f.store.out_dir(&j.key).join("y.txt")).unwrap();
        assert_eq!(y, "4");
        let again = run_job(&f.store, &j, &f.rt());
        assert_eq!(again.status, Status::Cached);
        assert_eq!(again.manifest.unwrap().output_hash, m.output_hash);
    }

    #[test]
    fn a_stage_reads_its_upstream_entry_through_the_context() {
        let f = fixture();
        let a = job(0, 2.0);
        assert_eq!(run_job(&f.store, &a, &f.rt()).status, Status::Ran);
        let input = |path: Option<PathBuf>, upstream_key: Option<String>| JobInput {
            slot: "up".into(),
            path,
            hash: "h".into(),
            source: Some(a.stage_id.clone()),
            upstream_key,
            upstream: None,
            external: false,
        };
        // Its metric y = 4 comes from a's manifest: 2 * (1 + 4).
        let mut b = job(1, 1.0);
        b.inputs = vec![input(Some(f.store.out_dir(&a.key)), Some(a.key.clone()))];
        let m = run_job(&f.store, &b, &f.rt()).manifest.unwrap();
        assert_eq!(m.metrics["y"], 10.0);
        // A table cell without an entry: no upstream, 2 * 1.
        let mut c = job(2, 1.0);
        c.key = crate::store::hashing::hash_bytes(b"double 1 without up");
        c.inputs = vec![input(None, None)];
        let m = run_job(&f.store, &c, &f.rt()).manifest.unwrap();
        assert_eq!(m.metrics["y"], 2.0);
        // A job keyed in this process carries the entry as its manifest was
        // read for the key; the stage gets that, and the cache is not read
        // again (here it has no such entry): 2 * (1 + 7).
        let mut d = job(3, 1.0);
        d.key = crate::store::hashing::hash_bytes(b"double 1 with a carried up");
        let mut carried = input(Some(f.store.out_dir(&a.key)), Some("no-such-entry".into()));
        carried.upstream = Some(mrbm_stage::Upstream {
            metrics: [("y".to_string(), 7.0)].into(),
            ..Default::default()
        });
        d.inputs = vec![carried];
        let m = run_job(&f.store, &d, &f.rt()).manifest.unwrap();
        assert_eq!(m.metrics["y"], 16.0);
    }

    #[test]
    fn a_failing_job_caches_nothing_and_keeps_its_log() {
        let f = fixture();
        let j = job(0, -1.0);
        let r = run_job(&f.store, &j, &f.rt());
        assert!(
            matches!(r.status, Status::Failed { user: true, .. }),
            "{:?}",
            r.status
        );
        assert!(!f.store.has(&j.key));
        let log = std::fs::read_to_string(r.log.unwrap()).unwrap();
        assert!(log.contains("x must not be negative"), "{log}");
    }

    #[test]
    fn the_local_executor_returns_each_job_by_its_id() {
        let f = fixture();
        let rt = f.rt();
        let mut got = std::thread::scope(|scope| {
            let mut ex = LocalExecutor::start(scope, 2, &f.store, &rt);
            assert_eq!(ex.capacity(), 2);
            assert!(!ex.serial_device());
            for i in 0..4 {
                ex.submit(job(i, i as f64)).unwrap();
            }
            let mut got = Vec::new();
            while got.len() < 4 {
                got.extend(ex.wait_any(Duration::from_secs(5)));
            }
            got
        });
        got.sort_by_key(|(i, _)| *i);
        for (i, r) in &got {
            assert_eq!(r.status, Status::Ran);
            assert_eq!(r.manifest.as_ref().unwrap().metrics["y"], 2.0 * *i as f64);
        }
        assert_eq!(
            got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn jobs_not_started_after_cancel_all_come_back_cancelled() {
        let f = fixture();
        let rt = f.rt();
        std::thread::scope(|scope| {
            let mut ex = LocalExecutor::start(scope, 1, &f.store, &rt);
            ex.cancel_all();
            ex.submit(job(7, 1.0)).unwrap();
            let got = ex.wait_any(Duration::from_secs(5));
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, 7);
            assert_eq!(got[0].1.status, Status::Cancelled);
        });
        assert!(!f.store.has(&job(7, 1.0).key));
    }
}
