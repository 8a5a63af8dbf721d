//! Running stages as Slurm jobs (`--executor slurm`, or `[executor]` in
//! the experiment).
//!
//! One `sbatch` job per stage that must run. The job runs `mrbm` itself on
//! the compute node (`mrbm exec-stage --cache DIR KEY`), which reads the job
//! spec the planner wrote into the shared cache and computes the entry with
//! the same per-key lock, temporary folder and atomic publish as a local
//! run. The planner keeps the DAG: it submits a stage once its inputs are
//! published (not with `--dependency=afterok`: the planner must see each
//! input's manifest to compute the stage's key anyway, a cached stage
//! needs no job at all, and a failed parent leaves no child pending), and
//! polls its jobs with `squeue` (and `scontrol show job` for exit codes;
//! there is no `sacct` without slurmdbd) with a backoff.
//!
//! ```text
//! CACHE/slurm/KEY.job              the job in flight for KEY: planner, job id (a second
//!                                  planner waits on it instead of submitting again)
//! CACHE/slurm/KEY.json             the job spec exec-stage reads
//! CACHE/slurm/KEY.sh               the batch script
//! CACHE/slurm/logs/KEY.JOBID.log   the job's stdout and stderr
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{
    DeviceRequest, Executor, ExecutorFlags, ExecutorKind, Placement, RunContext, RunExecutor,
};
use crate::error::RunnerError;
use crate::key::job::StageJob;
use crate::kinds::registry::Registry;
use crate::run::device;
use crate::run::job::{NodeResult, Status};
use crate::run::worker::{run_job, sanitize, Runtime};
use crate::store::integrity;
use crate::store::{self, Found, Store};

/// Slurm options, from `[executor]`. Every one is optional: without them
/// the jobs get the cluster's defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub qos: Option<String>,
    /// Time limit of each job (Slurm's format: "30", "2:00:00", "1-00:00:00").
    #[serde(default)]
    pub time: Option<String>,
    /// Memory of each job (Slurm's format: "4G", "16000M").
    #[serde(default)]
    pub mem: Option<String>,
    /// GPUs per job for stages that use the accelerator (`--gpus=N`).
    #[serde(default)]
    pub gpus: Option<u32>,
    /// Per stage kind: `[executor.kinds.train] time = "24:00:00", mem = "32G"`.
    #[serde(default)]
    pub kinds: BTreeMap<String, KindLimits>,
    /// More sbatch arguments, each as one word: `["--constraint=a100"]`.
    #[serde(default)]
    pub sbatch_args: Vec<String>,
    /// Jobs in flight at most (default 100).
    #[serde(default)]
    pub max_jobs: Option<usize>,
    /// The mrbm binary the nodes run (default: this one; it must be on a
    /// path the nodes see). `--mrbm` overrides it.
    #[serde(default)]
    pub mrbm: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KindLimits {
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub mem: Option<String>,
    #[serde(default)]
    pub gpus: Option<u32>,
}

/// `kind = "slurm"`: its settings are [`SlurmOptions`].
pub struct Slurm;

impl ExecutorKind for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }
    fn check(&self, settings: &toml::Table) -> Result<(), String> {
        options(settings).map(|_| ())
    }
    fn configure(
        &self,
        settings: &toml::Table,
        flags: &ExecutorFlags,
    ) -> Result<Box<dyn RunExecutor>, RunnerError> {
        let mut opts =
            options(settings).map_err(|e| RunnerError::Usage(format!("[executor]: {e}")))?;
        if flags.mrbm.is_some() {
            opts.mrbm = flags.mrbm.clone();
        }
        if let Some(j) = flags.jobs {
            opts.max_jobs = Some(j);
        }
        Ok(Box::new(SlurmRun {
            opts,
            verbose: flags.verbose,
            spec: String::new(),
        }))
    }
    fn abort_now(&self) {
        scancel(&in_flight_ids());
    }
}

/// The Slurm options in an `[executor]` table (less `kind`).
fn options(settings: &toml::Table) -> Result<SlurmOptions, String> {
    settings
        .clone()
        .try_into::<SlurmOptions>()
        .map_err(|e| e.message().trim().to_string())
}

/// A run through Slurm: the nodes resolve the device (the machine that
/// plans, a login node, may have no GPU); `spec` is what they are asked.
struct SlurmRun {
    opts: SlurmOptions,
    verbose: u8,
    spec: String,
}

impl RunExecutor for SlurmRun {
    fn place(&mut self, request: &DeviceRequest) -> Result<Placement, RunnerError> {
        self.spec = request.spec.clone();
        Ok(Placement {
            shown: format!("Slurm (device {} on the nodes)", self.spec),
            recorded: format!("slurm:{}", self.spec),
            checks_memory_here: false,
        })
    }
    fn run(&self, ctx: RunContext) -> Result<(Vec<NodeResult>, Option<String>), RunnerError> {
        if !available() {
            return Err(RunnerError::Usage(
                "--executor slurm: no Slurm controller answers `sinfo` here (is this a Slurm login node?)\n  help: run without --executor slurm (or with --executor local)".into(),
            ));
        }
        let say: Box<dyn Fn(String)> = match &ctx.opts.progress {
            Some(m) if !m.is_hidden() => {
                let m = m.clone();
                Box::new(move |line: String| {
                    let _ = m.println(line);
                })
            }
            _ => Box::new(|line: String| eprintln!("{line}")),
        };
        let mut ex =
            SlurmExecutor::new(ctx.store, self.opts.clone(), &self.spec, self.verbose, say)?;
        let r = ctx.schedule(&mut ex);
        let t = ex.timings();
        Ok((r, (!t.is_empty()).then(|| timing_summary(t))))
    }
}

/// The worker entry, `mrbm exec-stage --cache DIR KEY`: what a Slurm job
/// runs on its node. It reads the job the planner wrote into the shared
/// cache and runs it with the same lock, temporary folder and atomic
/// publish as a local run; the entry records the Slurm job id. Exit status:
/// 0 published (or already there), 1 the stage failed, 2 a user error, 130
/// cancelled (scancel sends SIGTERM).
pub fn exec_stage(
    cache: Option<PathBuf>,
    reg: &Registry,
    key: &str,
    spec: &str,
) -> Result<u8, RunnerError> {
    eprintln!(
        "{STARTED}{:.3} on {} (key {key})",
        unix_now(),
        store::hostname()
    );
    let root = cache
        .or_else(|| std::env::var_os("MRBM_CACHE").map(PathBuf::from))
        .ok_or_else(|| RunnerError::Usage("exec-stage needs --cache DIR".into()))?;
    let store = Store::open(&root)?;
    let mut job = StageJob::load(&StageJob::path_in(&store, key))?;
    let device = device::resolve(spec)?;
    // The threads of this node, not of the machine that planned.
    job.threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memo = crate::store::hashing::Memo::load(&store.root);
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            eprintln!("mrbm exec-stage: cancelled");
            c.store(true, Ordering::SeqCst);
        });
    }
    let rt = Runtime {
        registry: reg,
        memo: &memo,
        device: &device,
        progress: None,
        cancel: &cancel,
        job_id: std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty()),
    };
    let r = run_job(&store, &job, &rt);
    match &r.status {
        Status::Ran | Status::Cached => {
            eprintln!(
                "mrbm exec-stage: {} {} on {device} in {:.2}s",
                r.status.word(),
                job.stage_id,
                r.seconds
            );
            Ok(0)
        }
        Status::Failed { message, user } => {
            eprintln!("error: {}: {message}", job.stage_id);
            if let Some(l) = &r.log {
                eprintln!("  log: {}", l.display());
            }
            Ok(if *user { 2 } else { 1 })
        }
        Status::Cancelled => Err(RunnerError::Interrupted),
        Status::Skipped { because } => {
            eprintln!("error: {}: skipped ({because})", job.stage_id);
            Ok(1)
        }
    }
}

pub const DEFAULT_MAX_JOBS: usize = 100;

impl SlurmOptions {
    pub fn max_jobs(&self) -> usize {
        self.max_jobs.unwrap_or(DEFAULT_MAX_JOBS).max(1)
    }

    /// The sbatch arguments for one stage of `kind`, besides the script.
    pub fn sbatch_args(&self, kind: &str, uses_device: bool) -> Vec<String> {
        let k = self.kinds.get(kind);
        let mut a = Vec::new();
        if let Some(p) = &self.partition {
            a.push(format!("--partition={p}"));
        }
        if let Some(x) = &self.account {
            a.push(format!("--account={x}"));
        }
        if let Some(q) = &self.qos {
            a.push(format!("--qos={q}"));
        }
        if let Some(t) = k.and_then(|k| k.time.as_ref()).or(self.time.as_ref()) {
            a.push(format!("--time={t}"));
        }
        if let Some(m) = k.and_then(|k| k.mem.as_ref()).or(self.mem.as_ref()) {
            a.push(format!("--mem={m}"));
        }
        if uses_device {
            if let Some(g) = k.and_then(|k| k.gpus).or(self.gpus) {
                if g > 0 {
                    a.push(format!("--gpus={g}"));
                }
            }
        }
        a.extend(self.sbatch_args.iter().cloned());
        a
    }
}

/// A Slurm job's state, as `squeue`/`scontrol` name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Running,
    /// Ended, its processes being cleaned up.
    Completing,
    Completed,
    Failed,
    Timeout,
    OutOfMemory,
    NodeFail,
    Cancelled,
    /// Any other state (PREEMPTED, BOOT_FAIL, DEADLINE, SUSPENDED, ...).
    Other(String),
}

impl JobState {
    pub fn parse(s: &str) -> JobState {
        // scontrol may say "CANCELLED by 0".
        match s.split_whitespace().next().unwrap_or("") {
            "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
            | "RESV_DEL_HOLD" => JobState::Pending,
            "RUNNING" | "RESIZING" | "SIGNALING" | "STAGE_OUT" => JobState::Running,
            "COMPLETING" => JobState::Completing,
            "COMPLETED" => JobState::Completed,
            "FAILED" => JobState::Failed,
            "TIMEOUT" => JobState::Timeout,
            "OUT_OF_MEMORY" => JobState::OutOfMemory,
            "NODE_FAIL" => JobState::NodeFail,
            "CANCELLED" => JobState::Cancelled,
            other => JobState::Other(other.to_string()),
        }
    }

    /// Slurm's own word for it.
    pub fn word(&self) -> &str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Running => "RUNNING",
            JobState::Completing => "COMPLETING",
            JobState::Completed => "COMPLETED",
            JobState::Failed => "FAILED",
            JobState::Timeout => "TIMEOUT",
            JobState::OutOfMemory => "OUT_OF_MEMORY",
            JobState::NodeFail => "NODE_FAIL",
            JobState::Cancelled => "CANCELLED",
            JobState::Other(s) => s,
        }
    }

    /// Still queued or running: its result is yet to come.
    pub fn in_flight(&self) -> bool {
        match self {
            JobState::Pending | JobState::Running | JobState::Completing => true,
            // SUSPENDED, STOPPED, RESV_DEL_HOLD...: they may come back.
            JobState::Other(s) => matches!(s.as_str(), "SUSPENDED" | "STOPPED" | "PREEMPTED"),
            _ => false,
        }
    }
}

/// What `scontrol show job` says of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    pub id: String,
    pub state: JobState,
    /// The job script's exit code (ExitCode=CODE:SIGNAL).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
    pub node: Option<String>,
    pub stdout: Option<PathBuf>,
}

/// Parse one line of `scontrol show job -o` (space-separated KEY=VALUE;
/// values of some keys hold spaces, so a word without `=` continues the
/// previous value).
pub fn parse_scontrol(line: &str) -> Option<JobInfo> {
    let mut kv: BTreeMap<&str, String> = BTreeMap::new();
    let mut last: Option<&str> = None;
    for w in line.split_whitespace() {
        match w.split_once('=') {
            Some((k, v))
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "/:_".contains(c)) =>
            {
                kv.insert(k, v.to_string());
                last = Some(k);
            }
            _ => {
                if let Some(k) = last {
                    if let Some(v) = kv.get_mut(k) {
                        v.push(' ');
                        v.push_str(w);
                    }
                }
            }
        }
    }
    let id = kv.get("JobId")?.clone();
    let state = JobState::parse(kv.get("JobState")?);
    let (exit_code, signal) = match kv.get("ExitCode").and_then(|e| e.split_once(':')) {
        Some((c, s)) => (c.parse().ok(), s.parse().ok()),
        None => (None, None),
    };
    let node = kv
        .get("BatchHost")
        .or(kv.get("NodeList"))
        .filter(|n| !n.is_empty() && *n != "(null)")
        .cloned();
    Some(JobInfo {
        id,
        state,
        exit_code,
        signal,
        reason: kv.get("Reason").cloned().unwrap_or_default(),
        node,
        stdout: kv
            .get("StdOut")
            .filter(|p| !p.is_empty() && *p != "(null)")
            .map(PathBuf::from),
    })
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<std::process::Output, RunnerError> {
    cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RunnerError::Usage(format!(
                "--executor slurm: `{what}` was not found: is this a Slurm login node? (or use --executor local)"
            ))
        } else {
            RunnerError::Data(format!("{what}: {e}"))
        }
    })
}

/// A Slurm query about jobs (`squeue`, `scontrol`): its output when it
/// succeeded, None when Slurm answered "Invalid job id" (it no longer knows
/// the job), an error when it failed otherwise.
fn job_query(cmd: &mut Command, what: &str) -> Result<Option<std::process::Output>, RunnerError> {
    let out = run_cmd(cmd, what)?;
    if out.status.success() {
        return Ok(Some(out));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Invalid job id") {
        return Ok(None);
    }
    Err(RunnerError::Data(format!("{what}: {}", err.trim())))
}

/// Is a Slurm controller reachable from here (`sinfo` answers)?
pub fn available() -> bool {
    Command::new("sinfo")
        .args(["-h", "-o", "%P"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Submit `script` with `args`; the job id.
pub fn sbatch(args: &[String], script: &Path) -> Result<String, RunnerError> {
    let out = run_cmd(
        Command::new("sbatch")
            .arg("--parsable")
            .args(args)
            .arg(script),
        "sbatch",
    )?;
    if !out.status.success() {
        return Err(RunnerError::Data(format!(
            "sbatch {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // "JOBID" or "JOBID;CLUSTER"
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return Err(RunnerError::Data(format!(
            "sbatch printed no job id (it printed `{}`)",
            text.trim()
        )));
    }
    Ok(id)
}

/// The states of `ids` in one `squeue` call; ids Slurm no longer knows are
/// absent.
pub fn squeue(ids: &[String]) -> Result<BTreeMap<String, JobState>, RunnerError> {
    let mut map = BTreeMap::new();
    if ids.is_empty() {
        return Ok(map);
    }
    // squeue fails when it knows none of the ids: then they are all gone.
    let Some(out) = job_query(
        Command::new("squeue").args(["-h", "-t", "all", "-j", &ids.join(","), "-o", "%i|%T"]),
        "squeue",
    )?
    else {
        return Ok(map);
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((id, st)) = line.split_once('|') {
            map.insert(id.trim().to_string(), JobState::parse(st.trim()));
        }
    }
    Ok(map)
}

/// `scontrol show job -o ID`; None when Slurm no longer knows the job.
pub fn scontrol(id: &str) -> Result<Option<JobInfo>, RunnerError> {
    let Some(out) = job_query(
        Command::new("scontrol").args(["show", "job", "-o", id]),
        "scontrol",
    )?
    else {
        return Ok(None);
    };
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(parse_scontrol))
}

/// `scancel` the jobs (errors ignored: a job that ended meanwhile is fine).
pub fn scancel(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let _ = Command::new("scancel")
        .args(ids)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Poll intervals: quick at first (a short stage ends in a second or two),
/// then slower, up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The wait before the next poll; each one is 1.5 times the last.
    pub fn next_wait(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next.mul_f64(1.5)).min(self.max);
        d
    }

    /// Something happened: poll quickly again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The default backoff: 0.2 s growing to MRBM_SLURM_POLL_MAX seconds (10).
pub fn default_backoff() -> Backoff {
    let max = std::env::var("MRBM_SLURM_POLL_MAX")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(10.0);
    Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs_f64(max.max(0.2)),
    )
}

/// Quote a word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Where a cache keeps its Slurm files.
pub fn dir(cache: &Path) -> PathBuf {
    cache.join("slurm")
}

pub fn spec_path(cache: &Path, key: &str) -> PathBuf {
    dir(cache).join(format!("{key}.json"))
}

pub fn marker_path(cache: &Path, key: &str) -> PathBuf {
    dir(cache).join(format!("{key}.job"))
}

pub fn log_path(cache: &Path, key: &str, job: &str) -> PathBuf {
    dir(cache).join("logs").join(format!("{key}.{job}.log"))
}

/// The batch script of one stage: `exec MRBM exec-stage --cache CACHE KEY`.
pub fn script(mrbm: &Path, cache: &Path, key: &str, device: &str) -> String {
    format!(
        "#!/bin/sh\n# mrbm stage job: computes cache entry {key}\nexec {} exec-stage --cache {} --device {} {key}\n",
        shell_quote(&mrbm.to_string_lossy()),
        shell_quote(&cache.to_string_lossy()),
        shell_quote(device),
    )
}

/// Who submitted the job in flight for a key: the marker CACHE/slurm/KEY.job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub pid: u32,
    pub host: String,
    #[serde(default)]
    pub job: Option<String>,
    pub stage: String,
    pub time: String,
}

/// What [`claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// The marker is ours: submit the job, then [`record_job`].
    Ours,
    /// Another planner's job computes the key: wait on it.
    InFlight(String),
    /// Another planner is submitting right now.
    Busy,
}

/// Take the marker of `key` (create it exclusively), or say who has it. A
/// marker of a job that Slurm says has ended (or no longer knows), or one
/// without a job id older than a minute, is stale: removed, and taken.
pub fn claim(cache: &Path, key: &str, stage: &str) -> Result<Claim, RunnerError> {
    let path = marker_path(cache, key);
    std::fs::create_dir_all(dir(cache)).map_err(|e| RunnerError::cache(dir(cache), e))?;
    for _ in 0..3 {
        let me = Marker {
            pid: std::process::id(),
            host: store::hostname(),
            job: None,
            stage: stage.to_string(),
            time: store::now_rfc3339(),
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                use std::io::Write;
                let text = serde_json::to_string(&me).expect("json");
                f.write_all(text.as_bytes())
                    .map_err(|e| RunnerError::cache(&path, e))?;
                return Ok(Claim::Ours);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(RunnerError::cache(&path, e)),
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .unwrap_or_default();
        let stale = match serde_json::from_str::<Marker>(&text) {
            Ok(Marker { job: Some(job), .. }) => {
                match squeue(std::slice::from_ref(&job))?.get(&job) {
                    Some(s) if s.in_flight() => return Ok(Claim::InFlight(job)),
                    _ => true,
                }
            }
            Ok(m) => {
                let dead = m.host == store::hostname() && !store::pid_alive(m.pid);
                dead || age > Duration::from_secs(60)
            }
            Err(_) => age > Duration::from_secs(5),
        };
        if !stale {
            return Ok(Claim::Busy);
        }
        // Remove it only if it is still the one we judged.
        if std::fs::read_to_string(&path).unwrap_or_default() == text {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(Claim::Busy)
}

/// Write the job id into our marker.
pub fn record_job(cache: &Path, key: &str, stage: &str, job: &str) -> Result<(), RunnerError> {
    let m = Marker {
        pid: std::process::id(),
        host: store::hostname(),
        job: Some(job.to_string()),
        stage: stage.to_string(),
        time: store::now_rfc3339(),
    };
    store::write_atomic(
        &marker_path(cache, key),
        serde_json::to_string(&m).expect("json").as_bytes(),
    )
}

/// Remove our marker of `key` (only if it is still ours).
pub fn release(cache: &Path, key: &str) {
    let path = marker_path(cache, key);
    if let Ok(m) =
        serde_json::from_str::<Marker>(&std::fs::read_to_string(&path).unwrap_or_default())
    {
        if m.pid == std::process::id() && m.host == store::hostname() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The message for a job that ended without publishing its entry.
pub fn failure_message(info: Option<&JobInfo>, job: &str, log_tail: &str) -> String {
    let head = match info {
        Some(i) => {
            let mut s = format!("Slurm job {job} {}", i.state.word());
            if let Some(c) = i.exit_code {
                s.push_str(&format!(", exit code {c}"));
            }
            if let Some(sig) = i.signal.filter(|s| *s != 0) {
                s.push_str(&format!(", signal {sig}"));
            }
            if !i.reason.is_empty() && i.reason != "None" {
                s.push_str(&format!(" ({})", i.reason));
            }
            if let Some(n) = &i.node {
                s.push_str(&format!(" on {n}"));
            }
            s
        }
        None => format!("Slurm job {job} ended and is no longer known to Slurm"),
    };
    if log_tail.trim().is_empty() {
        head
    } else {
        format!("{head}: {}", log_tail.trim())
    }
}

/// The most telling line of a job log: its last `error:` line, else its
/// last non-empty line.
pub fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error:") || l.contains("error: "))
        .or(lines.last())
        .map(|l| l.trim_start_matches("error:").trim().to_string())
        .unwrap_or_default()
}

/// The Slurm job ids this process has in flight, for a second Ctrl-C that
/// exits at once to cancel them first.
static IN_FLIGHT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The ids of the jobs this process submitted that have not ended.
pub fn in_flight_ids() -> Vec<String> {
    IN_FLIGHT.lock().map(|v| v.clone()).unwrap_or_default()
}

fn track(id: &str, add: bool) {
    if let Ok(mut v) = IN_FLIGHT.lock() {
        v.retain(|x| x != id);
        if add {
            v.push(id.to_string());
        }
    }
}

/// How long one stage took through Slurm, as the planner saw it.
#[derive(Debug, Clone)]
pub struct JobTiming {
    pub stage: String,
    pub job: String,
    /// sbatch to the start of `mrbm exec-stage` on the node (seconds).
    pub to_start: Option<f64>,
    /// sbatch to the planner seeing the entry published.
    pub total: f64,
    /// The stage's own time (its manifest's `seconds`).
    pub stage_seconds: f64,
}

impl JobTiming {
    /// What Slurm and the job's start-up added to the stage's own time.
    pub fn overhead(&self) -> f64 {
        (self.total - self.stage_seconds).max(0.0)
    }
}

/// The first line `mrbm exec-stage` prints: when it started (Unix seconds).
pub const STARTED: &str = "mrbm exec-stage: started at ";

/// Unix time in seconds, with fractions.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

struct Tracked {
    job: StageJob,
    /// None while another planner is submitting it (we retry the claim).
    slurm: Option<String>,
    /// We submitted it (and cancel it on an interrupt).
    ours: bool,
    submitted: std::time::Instant,
    submitted_unix: f64,
    /// When we asked Slurm to cancel it.
    cancelled_at: Option<std::time::Instant>,
}

/// Runs each job as one `sbatch` job on the cluster (see the module doc).
pub struct SlurmExecutor<'a> {
    store: &'a Store,
    /// The cache's absolute path, as the nodes see it.
    cache: PathBuf,
    opts: SlurmOptions,
    mrbm: PathBuf,
    device: String,
    verbose: u8,
    jobs: Vec<Tracked>,
    done: std::collections::VecDeque<(usize, NodeResult)>,
    backoff: Backoff,
    next_poll: std::time::Instant,
    cancelling: bool,
    timings: Vec<JobTiming>,
    /// Messages for the user (waiting on another run's job).
    say: Box<dyn Fn(String) + 'a>,
}

impl<'a> SlurmExecutor<'a> {
    /// `device` is the device request the nodes resolve (`auto`, `cuda`...);
    /// `mrbm` the binary they run (default: this one).
    pub fn new(
        store: &'a Store,
        opts: SlurmOptions,
        device: &str,
        verbose: u8,
        say: Box<dyn Fn(String) + 'a>,
    ) -> Result<SlurmExecutor<'a>, RunnerError> {
        let mrbm = match &opts.mrbm {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| RunnerError::Data(format!("cannot find the mrbm binary: {e}")))?,
        };
        let mrbm = std::path::absolute(&mrbm).unwrap_or(mrbm);
        if !mrbm.is_file() {
            return Err(RunnerError::Usage(format!(
                "--mrbm {}: no such file (the nodes run this binary; it must be on a path they see)",
                mrbm.display()
            )));
        }
        let cache = std::path::absolute(&store.root).unwrap_or_else(|_| store.root.clone());
        std::fs::create_dir_all(dir(&cache).join("logs"))
            .map_err(|e| RunnerError::cache(dir(&cache), e))?;
        Ok(SlurmExecutor {
            store,
            cache,
            opts,
            mrbm,
            device: device.to_string(),
            verbose,
            jobs: Vec::new(),
            done: Default::default(),
            backoff: default_backoff(),
            next_poll: std::time::Instant::now(),
            cancelling: false,
            timings: Vec::new(),
            say,
        })
    }

    /// Per-stage timings of the jobs that published their entry.
    pub fn timings(&self) -> &[JobTiming] {
        &self.timings
    }

    /// Try to start `job`: a cached entry needs no job; a job of another
    /// planner in flight is waited on; else submit ours.
    fn start(&mut self, job: StageJob) -> Result<(), RunnerError> {
        let t0 = std::time::Instant::now();
        if let Found::Hit(m) = integrity::check(self.store, &job.key) {
            self.done
                .push_back((job.job, cached_result(self.store, &job.key, m, t0)));
            return Ok(());
        }
        let tracked = |slurm: Option<String>, ours: bool| Tracked {
            job: job.clone(),
            slurm,
            ours,
            submitted: t0,
            submitted_unix: unix_now(),
            cancelled_at: None,
        };
        match claim(&self.cache, &job.key, &job.stage_id)? {
            Claim::InFlight(id) => {
                (self.say)(format!(
                    "  waiting {} (Slurm job {id} of another run computes it)",
                    job.stage_id
                ));
                self.jobs.push(tracked(Some(id), false));
                Ok(())
            }
            Claim::Busy => {
                self.jobs.push(tracked(None, false));
                Ok(())
            }
            Claim::Ours => match self.submit_ours(&job) {
                Ok(id) => {
                    (self.say)(format!("  submitted {} as Slurm job {id}", job.stage_id));
                    track(&id, true);
                    self.jobs.push(tracked(Some(id), true));
                    Ok(())
                }
                Err(e) => {
                    release(&self.cache, &job.key);
                    Err(e)
                }
            },
        }
    }

    fn submit_ours(&self, job: &StageJob) -> Result<String, RunnerError> {
        job.save(self.store)?;
        let script_path = dir(&self.cache).join(format!("{}.sh", job.key));
        let mut text = script(&self.mrbm, &self.cache, &job.key, &self.device);
        if self.verbose > 0 {
            // The stage's log lines go to the job's log as they are logged.
            text = text.replace(" exec-stage ", " -v exec-stage ");
        }
        store::write_atomic(&script_path, text.as_bytes())?;
        let mut args = vec![
            format!("--job-name=mrbm:{}", job.stage_id),
            format!(
                "--output={}",
                dir(&self.cache)
                    .join("logs")
                    .join(format!("{}.%j.log", job.key))
                    .display()
            ),
        ];
        args.extend(self.opts.sbatch_args(&job.kind, job.uses_device));
        let id = sbatch(&args, &script_path)?;
        record_job(&self.cache, &job.key, &job.stage_id, &id)?;
        Ok(id)
    }

    /// Poll Slurm once; move the jobs that ended to `done`.
    fn poll(&mut self) -> Result<(), RunnerError> {
        // Jobs another planner was submitting: claim again.
        let waiting: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| self.jobs[i].slurm.is_none())
            .collect();
        for i in waiting.into_iter().rev() {
            let t = self.jobs.remove(i);
            let i = t.job.job;
            if self.cancelling {
                self.done.push_back((i, plain(Status::Cancelled)));
                continue;
            }
            if let Err(e) = self.start(t.job) {
                let message = e.to_string();
                self.done.push_back((
                    i,
                    plain(Status::Failed {
                        message,
                        user: false,
                    }),
                ));
            }
        }
        let ids: Vec<String> = self.jobs.iter().filter_map(|t| t.slurm.clone()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let states = squeue(&ids)?;
        let mut changed = false;
        let mut i = 0;
        while i < self.jobs.len() {
            let t = &self.jobs[i];
            let Some(id) = t.slurm.clone() else {
                i += 1;
                continue;
            };
            let live = states.get(&id).is_some_and(|s| s.in_flight());
            // Cancelled, but Slurm still lists it a minute later: give up.
            let given_up = t
                .cancelled_at
                .is_some_and(|c| c.elapsed() > Duration::from_secs(60));
            if live && !given_up {
                i += 1;
                continue;
            }
            let t = self.jobs.remove(i);
            changed = true;
            let r = self.ended(&t, &id);
            if t.ours {
                track(&id, false);
                release(&self.cache, &t.job.key);
            }
            self.done.push_back((t.job.job, r));
        }
        if changed {
            self.backoff.reset();
        }
        Ok(())
    }

    /// The result of a job that Slurm says has ended.
    fn ended(&mut self, t: &Tracked, id: &str) -> NodeResult {
        let key = &t.job.key;
        let log = log_path(&self.cache, key, id);
        let mut log_text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut found = integrity::check(self.store, key);
        if !matches!(found, Found::Hit(_))
            && (log_text.contains("mrbm exec-stage: ran ")
                || log_text.contains("mrbm exec-stage: cached "))
        {
            // The job says it published: on a network file system the entry
            // may take a moment to show here.
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(500));
                found = integrity::check(self.store, key);
                if matches!(found, Found::Hit(_)) {
                    break;
                }
            }
            log_text = std::fs::read_to_string(&log).unwrap_or(log_text);
        }
        match found {
            Found::Hit(m) => {
                let total = t.submitted.elapsed().as_secs_f64();
                let to_start = log_text
                    .lines()
                    .find_map(|l| l.split(STARTED).nth(1))
                    .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
                    .map(|s| (s - t.submitted_unix).max(0.0));
                if t.ours {
                    // Done with: the entry holds the stage's log.
                    let _ = std::fs::remove_file(&log);
                    let _ = std::fs::remove_file(dir(&self.cache).join(format!("{key}.sh")));
                    let _ = std::fs::remove_file(StageJob::path_in(self.store, key));
                    self.timings.push(JobTiming {
                        stage: t.job.stage_id.clone(),
                        job: id.to_string(),
                        to_start,
                        total,
                        stage_seconds: m.seconds,
                    });
                    tracing::info!(
                        "{}: Slurm job {id}: submit to start {}, submit to published {total:.2}s, stage {:.2}s",
                        t.job.stage_id,
                        to_start.map(|s| format!("{s:.2}s")).unwrap_or_else(|| "?".into()),
                        m.seconds
                    );
                }
                NodeResult {
                    status: if t.ours { Status::Ran } else { Status::Cached },
                    key: Some(key.clone()),
                    seconds: if t.ours { total } else { 0.0 },
                    log: Some(self.store.entry_dir(key).join("log.txt")),
                    manifest: Some(m),
                }
            }
            _ => {
                let info = scontrol(id).ok().flatten();
                if self.cancelling && t.ours {
                    return plain(Status::Cancelled);
                }
                // Keep the job's log where the user can read it.
                let failed_dir = self.store.root.join("failed");
                let _ = std::fs::create_dir_all(&failed_dir);
                let kept = failed_dir.join(format!("{}.slurm-{id}.log", sanitize(&t.job.stage_id)));
                let kept = match std::fs::copy(&log, &kept) {
                    Ok(_) => Some(kept),
                    Err(_) => None,
                };
                let mut message = failure_message(info.as_ref(), id, &log_tail(&log_text));
                if !t.ours {
                    message.push_str(" (a job of another run)");
                }
                if kept.is_none() {
                    message.push_str(&format!("; its log {} is missing", log.display()));
                }
                let user = info.as_ref().and_then(|i| i.exit_code) == Some(2)
                    && info.as_ref().map(|i| &i.state) == Some(&JobState::Failed);
                NodeResult {
                    status: Status::Failed { message, user },
                    key: None,
                    seconds: t.submitted.elapsed().as_secs_f64(),
                    log: kept,
                    manifest: None,
                }
            }
        }
    }
}

/// One line on the jobs' timings, for the end of a run.
pub fn timing_summary(t: &[JobTiming]) -> String {
    let n = t.len().max(1) as f64;
    let overhead: Vec<f64> = t.iter().map(JobTiming::overhead).collect();
    let starts: Vec<f64> = t.iter().filter_map(|x| x.to_start).collect();
    let start = if starts.is_empty() {
        String::new()
    } else {
        format!(
            "submit to start {:.2}s, ",
            starts.iter().sum::<f64>() / starts.len() as f64
        )
    };
    format!(
        "Slurm: {} job{}; per stage on average {start}overhead {:.2}s (submit to published, less the stage's own time; max {:.2}s)",
        t.len(),
        if t.len() == 1 { "" } else { "s" },
        overhead.iter().sum::<f64>() / n,
        overhead.iter().cloned().fold(0.0, f64::max)
    )
}

fn plain(status: Status) -> NodeResult {
    NodeResult::bare(status)
}

fn cached_result(
    store: &Store,
    key: &str,
    m: crate::store::Manifest,
    t0: std::time::Instant,
) -> NodeResult {
    NodeResult {
        status: Status::Cached,
        key: Some(key.to_string()),
        seconds: t0.elapsed().as_secs_f64(),
        log: Some(store.entry_dir(key).join("log.txt")),
        manifest: Some(m),
    }
}

impl Executor for SlurmExecutor<'_> {
    fn capacity(&self) -> usize {
        self.opts.max_jobs()
    }

    fn submit(&mut self, job: StageJob) -> Result<(), RunnerError> {
        if self.cancelling {
            self.done.push_back((job.job, plain(Status::Cancelled)));
            return Ok(());
        }
        self.start(job)
    }

    fn wait_any(&mut self, timeout: Duration) -> Vec<(usize, NodeResult)> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if !self.done.is_empty() {
                return self.done.drain(..).collect();
            }
            let now = std::time::Instant::now();
            if now >= self.next_poll {
                if let Err(e) = self.poll() {
                    tracing::warn!("polling Slurm: {e}");
                }
                self.next_poll = std::time::Instant::now() + self.backoff.next_wait();
                continue;
            }
            if now >= deadline {
                return Vec::new();
            }
            std::thread::sleep((self.next_poll.min(deadline) - now).min(Duration::from_millis(50)));
        }
    }

    fn cancel_all(&mut self) {
        self.cancelling = true;
        let ours: Vec<String> = self
            .jobs
            .iter()
            .filter(|t| t.ours)
            .filter_map(|t| t.slurm.clone())
            .collect();
        scancel(&ours);
        let now = std::time::Instant::now();
        for t in &mut self.jobs {
            t.cancelled_at = Some(now);
        }
        // Other runs' jobs are theirs: stop waiting on them.
        let mut i = 0;
        while i < self.jobs.len() {
            if self.jobs[i].ours {
                i += 1;
            } else {
                let t = self.jobs.remove(i);
                self.done.push_back((t.job.job, plain(Status::Cancelled)));
            }
        }
        self.backoff.reset();
        self.next_poll = now;
    }
}

impl Drop for SlurmExecutor<'_> {
    fn drop(&mut self) {
        // Leaving with our jobs in flight (an error path): cancel them.
        let ours: Vec<String> = self
            .jobs
            .iter()
            .filter(|t| t.ours)
            .filter_map(|t| t.slurm.clone())
            .collect();
        scancel(&ours);
        for t in &self.jobs {
            if t.ours {
                if let Some(id) = &t.slurm {
                    track(id, false);
                }
                release(&self.cache, &t.job.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scontrol_lines_parse() {
        let line = "JobId=3 JobName=wrap UserId=root(0) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 NodeList=vm BatchHost=vm Command=(null) WorkDir=/tmp StdErr=/dev/null StdOut=/tmp/out.3 Power=";
        let i = parse_scontrol(line).unwrap();
        assert_eq!(i.id, "3");
        assert_eq!(i.state, JobState::Failed);
        assert_eq!((i.exit_code, i.signal), (Some(3), Some(0)));
        assert_eq!(i.reason, "NonZeroExitCode");
        assert_eq!(i.node.as_deref(), Some("vm"));
        assert_eq!(i.stdout, Some(PathBuf::from("/tmp/out.3")));
        let c = parse_scontrol("JobId=7 JobState=CANCELLED Reason=None ExitCode=0:15").unwrap();
        assert_eq!(c.state, JobState::Cancelled);
        assert_eq!(c.signal, Some(15));
        assert!(parse_scontrol("No jobs in the system").is_none());
    }

    #[test]
    fn states_map_and_only_live_ones_are_in_flight() {
        for (w, s) in [
            ("FAILED", JobState::Failed),
            ("TIMEOUT", JobState::Timeout),
            ("OUT_OF_MEMORY", JobState::OutOfMemory),
            ("NODE_FAIL", JobState::NodeFail),
            ("CANCELLED", JobState::Cancelled),
            ("COMPLETED", JobState::Completed),
        ] {
            let p = JobState::parse(w);
            assert_eq!(p, s);
            assert_eq!(p.word(), w);
            assert!(!p.in_flight(), "{w}");
        }
        assert_eq!(JobState::parse("CANCELLED by 0"), JobState::Cancelled);
        for w in [
            "PENDING",
            "CONFIGURING",
            "RUNNING",
            "COMPLETING",
            "SUSPENDED",
        ] {
            assert!(JobState::parse(w).in_flight(), "{w}");
        }
        assert_eq!(JobState::parse("BOOT_FAIL").word(), "BOOT_FAIL");
    }

    #[test]
    fn sbatch_args_take_the_kinds_limits_over_the_defaults() {
        let s: SlurmOptions = toml::from_str(
            r#"
            partition = "gpu"
            account = "lab"
            qos = "long"
            time = "1:00:00"
            mem = "4G"
            gpus = 1
            sbatch_args = ["--constraint=a100"]
            max_jobs = 8
            [kinds.train]
            time = "24:00:00"
            mem = "32G"
            "#,
        )
        .unwrap();
        assert_eq!(s.max_jobs(), 8);
        assert_eq!(
            s.sbatch_args("train", true),
            [
                "--partition=gpu",
                "--account=lab",
                "--qos=long",
                "--time=24:00:00",
                "--mem=32G",
                "--gpus=1",
                "--constraint=a100"
            ]
        );
        // A CPU stage of another kind: the defaults, no GPU.
        assert_eq!(
            s.sbatch_args("svm", false),
            [
                "--partition=gpu",
                "--account=lab",
                "--qos=long",
                "--time=1:00:00",
                "--mem=4G",
                "--constraint=a100"
            ]
        );
        assert!(SlurmOptions::default().sbatch_args("x", true).is_empty());
        assert_eq!(SlurmOptions::default().max_jobs(), DEFAULT_MAX_JOBS);
        assert!(toml::from_str::<SlurmOptions>("partiton = \"x\"").is_err());
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        let w: Vec<u128> = (0..5).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(w, [100, 150, 225, 300, 300]);
        b.reset();
        assert_eq!(b.next_wait().as_millis(), 100);
    }

    #[test]
    fn scripts_quote_their_words() {
        assert_eq!(shell_quote("a/b-c.d"), "a/b-c.d");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
        let s = script(Path::new("/x y/mrbm"), Path::new("/c"), "abc", "auto");
        assert!(
            s.contains("exec '/x y/mrbm' exec-stage --cache /c --device auto abc"),
            "{s}"
        );
    }

    #[test]
    fn failures_name_state_exit_code_and_the_log_line() {
        let i =
            parse_scontrol("JobId=9 JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15 BatchHost=n1")
                .unwrap();
        assert_eq!(
            failure_message(Some(&i), "9", &log_tail("error: train: boom\n")),
            "Slurm job 9 TIMEOUT, exit code 0, signal 15 (TimeLimit) on n1: train: boom"
        );
        assert_eq!(log_tail("a\nerror: x failed\nmore\n\n"), "x failed");
        assert_eq!(log_tail("a\nlast\n"), "last");
    }

    #[test]
    fn a_marker_is_claimed_once_and_a_dead_planners_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(claim(d.path(), "k", "s").unwrap(), Claim::Ours));
        // Ours, live, no job yet: another claim waits.
        assert!(matches!(claim(d.path(), "k", "s").unwrap(), Claim::Busy));
        release(d.path(), "k");
        assert!(!marker_path(d.path(), "k").exists());
        // A dead planner's marker without a job: taken over.
        let dead = Marker {
            pid: 4194999,
            host: store::hostname(),
            job: None,
            stage: "s".into(),
            time: store::now_rfc3339(),
        };
        std::fs::write(
            marker_path(d.path(), "k"),
            serde_json::to_string(&dead).unwrap(),
        )
        .unwrap();
        assert!(matches!(claim(d.path(), "k", "s").unwrap(), Claim::Ours));
    }
}
