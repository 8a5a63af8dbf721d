//! The executor: runs a DAG's nodes in dependency order, up to `jobs` at a
//! time (accelerator stages one at a time), against the cache.
//!
//! For each node: hash its inputs, compute its key, and either reuse the
//! cache entry or take the key's lock, run the stage into a temporary
//! directory, re-check its inputs, and publish the entry atomically.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use mrbm_stage::{Device, StageContext, StageError};
use serde::{Deserialize, Serialize};

use crate::dag::{Dag, InputSource, Node};
use crate::error::RunnerError;
use crate::hashing::{self, Memo};
use crate::integrity;
use crate::registry::Registry;
use crate::store::{self, Found, LockOutcome, Manifest, Store};

pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Cached,
    Ran,
    Failed { message: String, user: bool },
    Skipped { because: String },
    Cancelled,
}

impl Status {
    pub fn ok(&self) -> bool {
        matches!(self, Status::Cached | Status::Ran)
    }
    pub fn word(&self) -> &'static str {
        match self {
            Status::Cached => "cached",
            Status::Ran => "ran",
            Status::Failed { .. } => "FAILED",
            Status::Skipped { .. } => "skipped",
            Status::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeResult {
    pub status: Status,
    pub key: Option<String>,
    pub seconds: f64,
    /// The stage's log (in the cache entry, or kept under CACHE/failed/).
    pub log: Option<PathBuf>,
    pub manifest: Option<Manifest>,
}

pub struct RunOptions {
    pub jobs: usize,
    pub keep_going: bool,
    pub device: Device,
    pub threads: usize,
    pub progress: Option<indicatif::MultiProgress>,
}

/// The record of the last run of an experiment, which `plan` compares with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRecord {
    pub stages: BTreeMap<String, StageRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    pub kind: String,
    pub version: u32,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, String>,
}

/// The stage key: blake3 over kind, implementation version, canonical
/// parameters and input content hashes. The stage's name, the device and
/// the order of keys in the TOML play no part.
pub fn stage_key(node: &Node, input_hashes: &BTreeMap<String, String>) -> String {
    let doc = serde_json::json!({
        "kind": node.kind,
        "version": node.version,
        "params": mrbm_stage::key_params(&node.params),
        "inputs": input_hashes,
    });
    hashing::hash_bytes(&serde_json::to_vec(&doc).expect("json"))
}

/// What one input resolves to: the path the stage reads and its hash.
pub enum Resolved {
    Ready {
        path: PathBuf,
        hash: String,
    },
    /// An upstream node that has not (successfully) produced output.
    Upstream {
        node: usize,
    },
    Missing {
        path: PathBuf,
        declared: String,
    },
    BadFile {
        message: String,
    },
}

/// Resolve `node`'s input `i` given the manifests of finished upstream nodes.
pub fn resolve_input(
    dag: &Dag,
    store: &Store,
    memo: &Memo,
    node: &Node,
    i: usize,
    upstream: &dyn Fn(usize) -> Option<Manifest>,
) -> Result<Resolved, RunnerError> {
    let input = &node.inputs[i];
    match &input.source {
        InputSource::External { path, declared } => {
            if !path.exists() {
                return Ok(Resolved::Missing {
                    path: path.clone(),
                    declared: declared.clone(),
                });
            }
            let hash = memo.path(path).map_err(|e| {
                RunnerError::Data(format!("{}: cannot read input: {e}", path.display()))
            })?;
            Ok(Resolved::Ready {
                path: path.clone(),
                hash,
            })
        }
        InputSource::Node { node: up, file } => {
            let Some(m) = upstream(*up) else {
                return Ok(Resolved::Upstream { node: *up });
            };
            let out = store.out_dir(&m.key);
            if input.soft {
                // Tables read only metrics.json, and of it only the metrics
                // they name: a rerun upstream whose results are the same
                // (timings aside) leaves the table cached.
                let h = table_input_hash(node, &m);
                return Ok(Resolved::Ready { path: out, hash: h });
            }
            let wanted = file.clone().or_else(|| {
                input
                    .default_file
                    .clone()
                    .filter(|f| m.files.contains_key(f))
            });
            match wanted {
                Some(f) => match m.files.get(&f) {
                    Some(fe) => Ok(Resolved::Ready {
                        path: out.join(&f),
                        hash: fe.hash.clone(),
                    }),
                    None => {
                        let have: Vec<&str> = m
                            .files
                            .keys()
                            .map(String::as_str)
                            .filter(|k| *k != store::METRICS)
                            .collect();
                        Ok(Resolved::BadFile {
                            message: format!(
                                "input `{}`: stage `{}` wrote no file `{f}` (it wrote: {})",
                                input.slot,
                                dag.nodes[*up].id,
                                have.join(", ")
                            ),
                        })
                    }
                },
                None => Ok(Resolved::Ready {
                    path: out,
                    hash: m.output_hash.clone(),
                }),
            }
        }
    }
}

/// The hash a table's key takes of one cell's entry: the metrics the table
/// names, with their values (a missing one as absent). Timing metrics count
/// only when the table names them.
pub fn table_input_hash(table: &Node, m: &Manifest) -> String {
    let mut wanted: Vec<&str> = table
        .params
        .get("metrics")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    // Computed extra columns name their own metric.
    if let Some(extra) = table.params.get("extra").and_then(|v| v.as_array()) {
        wanted.extend(extra.iter().filter_map(|x| x.get("metric")?.as_str()));
    }
    wanted.sort_unstable();
    wanted.dedup();
    let picked: BTreeMap<&str, Option<f64>> = wanted
        .iter()
        .map(|w| (*w, m.metrics.get(*w).copied()))
        .collect();
    hashing::hash_bytes(&serde_json::to_vec(&picked).expect("json"))
}

/// A metric the table names that none of its cells has (when some cell
/// has metrics at all): a typo, reported with the nearest metric.
fn unknown_table_metric(
    dag: &Dag,
    node: &Node,
    upstream: &dyn Fn(usize) -> Option<Manifest>,
) -> Option<String> {
    let mut have: std::collections::BTreeSet<String> = Default::default();
    let mut stage = None;
    for inp in &node.inputs {
        if let InputSource::Node { node: up, .. } = inp.source {
            stage.get_or_insert(dag.nodes[up].stage.clone());
            if let Some(m) = upstream(up) {
                have.extend(m.metrics.keys().cloned());
            }
        }
    }
    if have.is_empty() {
        return None;
    }
    let wanted = node.params.get("metrics")?.as_array()?;
    for w in wanted.iter().filter_map(|v| v.as_str()) {
        if have.contains(w) {
            continue;
        }
        let help = match mrbm_stage::nearest(w, have.iter().map(String::as_str)) {
            Some(n) => format!("did you mean `{n}`? "),
            None => String::new(),
        };
        return Some(format!(
            "{}: {}: no metric `{w}` in the cells of stage `{}`\n  help: {help}its metrics: {}",
            node.declared,
            node.id,
            stage.unwrap_or_default(),
            have.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    None
}

struct Shared {
    ready: VecDeque<usize>,
    waiting_on: Vec<usize>,
    results: Vec<Option<NodeResult>>,
    running: usize,
    device_busy: bool,
    stop: bool,
}

pub fn execute(
    dag: &Dag,
    reg: &Registry,
    store: &Store,
    memo: &Memo,
    opts: &RunOptions,
    cancel: &AtomicBool,
) -> Vec<NodeResult> {
    let n = dag.nodes.len();
    let mut dependants = vec![Vec::new(); n];
    let mut waiting_on = vec![0usize; n];
    for (i, node) in dag.nodes.iter().enumerate() {
        let mut deps = node.deps.clone();
        deps.sort_unstable();
        deps.dedup();
        waiting_on[i] = deps.len();
        for d in deps {
            dependants[d].push(i);
        }
    }
    let ready: VecDeque<usize> = (0..n).filter(|i| waiting_on[*i] == 0).collect();
    let shared = Mutex::new(Shared {
        ready,
        waiting_on,
        results: vec![None; n],
        running: 0,
        device_busy: false,
        stop: false,
    });
    let cv = Condvar::new();
    let overall = opts.progress.as_ref().map(|m| {
        let b = m.add(indicatif::ProgressBar::new(n as u64));
        b.set_style(
            indicatif::ProgressStyle::with_template(if mrbm_stage::progress::color_enabled() {
                "{prefix:.bold} [{bar:30}] {pos}/{len} stages {elapsed_precise} ETA {eta} {msg}"
            } else {
                "{prefix} [{bar:30}] {pos}/{len} stages {elapsed_precise} ETA {eta} {msg}"
            })
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(dag.experiment.clone());
        if !m.is_hidden() {
            // The timer moves while a long stage runs, not only when one ends.
            b.enable_steady_tick(std::time::Duration::from_secs(1));
        }
        b
    });
    let serial_device = opts.device.is_accelerator();

    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| loop {
                // Take a runnable node.
                let (i, skip) = {
                    let mut s = shared.lock().expect("executor lock");
                    loop {
                        let total_done = s.results.iter().filter(|r| r.is_some()).count();
                        if total_done == n {
                            cv.notify_all();
                            return;
                        }
                        let pos = s.ready.iter().position(|&i| {
                            !(serial_device && dag.nodes[i].uses_device && s.device_busy)
                        });
                        if let Some(p) = pos {
                            let i = s.ready.remove(p).expect("position");
                            let node = &dag.nodes[i];
                            let skip = blocked_by(
                                dag,
                                &s.results,
                                node,
                                s.stop,
                                cancel.load(Ordering::Relaxed),
                            );
                            if skip.is_none() {
                                s.running += 1;
                                if serial_device && node.uses_device {
                                    s.device_busy = true;
                                }
                            }
                            break (i, skip);
                        }
                        s = cv.wait(s).expect("executor wait");
                    }
                };
                let node = &dag.nodes[i];
                let result = match skip {
                    Some(status) => NodeResult {
                        status,
                        key: None,
                        seconds: 0.0,
                        log: None,
                        manifest: None,
                    },
                    None => {
                        let upstream = |j: usize| -> Option<Manifest> {
                            let s = shared.lock().expect("executor lock");
                            s.results[j].as_ref().and_then(|r| r.manifest.clone())
                        };
                        let r = run_node(dag, reg, store, memo, opts, cancel, i, &upstream);
                        let mut s = shared.lock().expect("executor lock");
                        s.running -= 1;
                        if serial_device && node.uses_device {
                            s.device_busy = false;
                        }
                        r
                    }
                };
                let line = finish_line(node, &result);
                match (&opts.progress, &overall) {
                    (Some(m), Some(b)) if !m.is_hidden() => {
                        let _ = m.println(line);
                        b.inc(1);
                    }
                    _ => eprintln!("{line}"),
                }
                let mut s = shared.lock().expect("executor lock");
                if matches!(result.status, Status::Failed { .. }) && !opts.keep_going {
                    s.stop = true;
                }
                s.results[i] = Some(result);
                for &d in &dependants[i] {
                    s.waiting_on[d] -= 1;
                    if s.waiting_on[d] == 0 {
                        s.ready.push_back(d);
                    }
                }
                cv.notify_all();
            });
        }
    });
    if let Some(b) = overall {
        b.finish_and_clear();
    }
    shared
        .into_inner()
        .expect("executor lock")
        .results
        .into_iter()
        .map(|r| r.expect("every node finished"))
        .collect()
}

fn finish_line(node: &Node, r: &NodeResult) -> String {
    match &r.status {
        Status::Ran => format!("  ran     {} ({:.1}s)", node.id, r.seconds),
        Status::Cached => format!("  cached  {}", node.id),
        Status::Failed { message, .. } => format!(
            "  FAILED  {}: {}",
            node.id,
            message.lines().next().unwrap_or("")
        ),
        Status::Skipped { because } => format!("  skipped {} ({because})", node.id),
        Status::Cancelled => format!("  cancelled {}", node.id),
    }
}

/// Why a node must not run (an input failed, the run is stopping), if so.
fn blocked_by(
    dag: &Dag,
    results: &[Option<NodeResult>],
    node: &Node,
    stop: bool,
    cancelled: bool,
) -> Option<Status> {
    if cancelled {
        return Some(Status::Cancelled);
    }
    if stop {
        return Some(Status::Skipped {
            because: "stopped after a failure; --keep-going runs independent stages".into(),
        });
    }
    for inp in node.inputs.iter().filter(|i| !i.soft) {
        if let InputSource::Node { node: up, .. } = inp.source {
            if let Some(r) = &results[up] {
                if !r.status.ok() {
                    return Some(Status::Skipped {
                        because: format!("{} {}", dag.nodes[up].id, r.status.word()),
                    });
                }
            }
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn run_node(
    dag: &Dag,
    reg: &Registry,
    store: &Store,
    memo: &Memo,
    opts: &RunOptions,
    cancel: &AtomicBool,
    i: usize,
    upstream: &dyn Fn(usize) -> Option<Manifest>,
) -> NodeResult {
    let node = &dag.nodes[i];
    let t0 = Instant::now();
    let fail = |message: String, user: bool, log: Option<PathBuf>| NodeResult {
        status: Status::Failed { message, user },
        key: None,
        seconds: t0.elapsed().as_secs_f64(),
        log,
        manifest: None,
    };
    let stage = reg
        .get(&node.kind)
        .expect("kind checked when the DAG was built");

    // 1. Inputs and key.
    let mut paths = BTreeMap::new();
    let mut hashes = BTreeMap::new();
    let mut sources = BTreeMap::new();
    for (k, inp) in node.inputs.iter().enumerate() {
        match resolve_input(dag, store, memo, node, k, upstream) {
            Ok(Resolved::Ready { path, hash }) => {
                paths.insert(inp.slot.clone(), path.clone());
                hashes.insert(inp.slot.clone(), hash);
                sources.insert(inp.slot.clone(), describe_source(dag, &inp.source));
            }
            Ok(Resolved::Upstream { node: up }) => {
                // Only soft (table) inputs get here: the cell is missing.
                hashes.insert(inp.slot.clone(), format!("missing:{}", dag.nodes[up].id));
            }
            Ok(Resolved::Missing { path, declared }) => {
                let hint = stage.missing_input_hint(&node.params, &inp.slot, &path).map(|h| format!("\n  help: {h}")).unwrap_or_else(|| "\n  help: fix the path, or set the data root (data_root in the experiment, MRBM_DATA, or --data-root)".into());
                return fail(
                    format!(
                        "{declared}: input `{}` of `{}`: {} does not exist{hint}",
                        inp.slot,
                        node.id,
                        path.display()
                    ),
                    true,
                    None,
                );
            }
            Ok(Resolved::BadFile { message }) => return fail(message, true, None),
            Err(e) => return fail(e.to_string(), true, None),
        }
    }
    if node.kind == "table" {
        if let Some(message) = unknown_table_metric(dag, node, upstream) {
            return fail(message, true, None);
        }
    }
    let key = stage_key(node, &hashes);
    let input_keys: BTreeMap<String, String> = node
        .inputs
        .iter()
        .filter_map(|inp| match &inp.source {
            InputSource::Node { node: up, .. } => upstream(*up).map(|m| (inp.slot.clone(), m.key)),
            InputSource::External { .. } => None,
        })
        .collect();
    let cached = |key: &str, manifest: Manifest| -> NodeResult {
        let log = Some(store.entry_dir(key).join("log.txt"));
        let mut r = NodeResult {
            status: Status::Cached,
            key: Some(key.to_string()),
            seconds: t0.elapsed().as_secs_f64(),
            log,
            manifest: Some(manifest),
        };
        if let Err(e) = publish_results(store, &dag.project_root.join("results"), node, key) {
            r.status = Status::Failed {
                message: e,
                user: false,
            };
        }
        r
    };

    // 2. The cache entry, checked against its manifest before anything
    // reads it; or the key's lock, to compute it. A corrupt entry and the
    // entries computed from it go to quarantine (under the lock) and the
    // stage runs again.
    let waiting =
        |owner: &str| eprintln!("  waiting {} (being computed by process {owner})", node.id);
    let lock = loop {
        // A corrupt entry is replaced under the lock, so the lock is taken
        // even though an entry is there.
        let absent = match integrity::check(store, &key) {
            Found::Hit(m) => return cached(&key, m),
            Found::Absent => true,
            Found::Corrupt(_) => false,
        };
        match store.lock_with(&key, absent, &|| cancel.load(Ordering::Relaxed), &waiting) {
            Ok(LockOutcome::Published) => {
                // Published by another process: checked at the loop's top.
                // A corrupt one is quarantined by whoever holds the lock.
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            Ok(LockOutcome::Acquired(l)) => match integrity::check(store, &key) {
                Found::Hit(m) => {
                    drop(l);
                    return cached(&key, m);
                }
                Found::Absent => break l,
                Found::Corrupt(why) => match store.quarantine_with_descendants(&key) {
                    Ok(moved) => {
                        eprintln!(
                            "  corrupt {}: cache entry {}: {why}; moved it{} to {}, computing it again",
                            node.id,
                            &key[..12],
                            if moved.len() > 1 {
                                format!(" and the {} entries computed from it", moved.len() - 1)
                            } else {
                                String::new()
                            },
                            store.root.join("quarantine").display()
                        );
                        break l;
                    }
                    Err(e) => return fail(e.to_string(), false, None),
                },
            },
            Err(RunnerError::Interrupted) => {
                return NodeResult {
                    status: Status::Cancelled,
                    key: None,
                    seconds: 0.0,
                    log: None,
                    manifest: None,
                }
            }
            Err(e) => return fail(e.to_string(), false, None),
        }
    };
    let tmp = match store.tmp_dir(&key) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string(), false, None),
    };
    let log_path = tmp.join("log.txt");
    // Lines are echoed as they are logged (`-v`), and warnings on stderr
    // when no terminal display shows them.
    let echo_warnings = matches!(&opts.progress, Some(m) if m.is_hidden());
    let log_file: Box<dyn std::io::Write + Send> = match std::fs::File::create(&log_path) {
        Ok(f) => Box::new(crate::output::LogTee::new(f, &node.id, echo_warnings)),
        Err(e) => return fail(format!("{}: {e}", log_path.display()), false, None),
    };
    let log = Mutex::new(log_file);
    let started = store::now_rfc3339();
    let resume_dir = store.root.join("resume").join(&key);
    let ctx = StageContext {
        stage_id: &node.id,
        params: &node.params,
        inputs: &paths,
        out_dir: &tmp.join("out"),
        device: opts.device,
        threads: opts.threads,
        progress: opts.progress.as_ref(),
        cancel,
        log: &log,
        resume_dir: Some(&resume_dir),
    };
    ctx.log(format!(
        "{} {} (key {key}) on {} at {started}",
        node.kind, node.id, opts.device
    ));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.run(&ctx)));
    let keep_failed_log = |msg: &str| -> Option<PathBuf> {
        // Keep the log of a failed stage where the user can read it.
        if let Ok(mut w) = log.lock() {
            let _ = writeln!(w, "error: {msg}");
        }
        let dir = store.root.join("failed");
        let _ = std::fs::create_dir_all(&dir);
        let dest = dir.join(format!("{}.log", sanitize(&node.id)));
        let _ = std::fs::copy(&log_path, &dest);
        let _ = std::fs::remove_dir_all(&tmp);
        Some(dest)
    };
    let metrics = match outcome {
        Ok(Ok(m)) => m,
        Ok(Err(StageError::Cancelled)) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return NodeResult {
                status: Status::Cancelled,
                key: None,
                seconds: t0.elapsed().as_secs_f64(),
                log: None,
                manifest: None,
            };
        }
        Ok(Err(e)) => {
            let user = e.is_user_error();
            let msg = e.to_string();
            let lp = keep_failed_log(&msg);
            return fail(msg, user, lp);
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            let msg = format!("internal error in stage kind `{}`: {msg} (this is a bug in mrbm; please report it with the log)", node.kind);
            let lp = keep_failed_log(&msg);
            return fail(msg, false, lp);
        }
    };
    if cancel.load(Ordering::Relaxed) {
        let _ = std::fs::remove_dir_all(&tmp);
        return NodeResult {
            status: Status::Cancelled,
            key: None,
            seconds: 0.0,
            log: None,
            manifest: None,
        };
    }
    let seconds = t0.elapsed().as_secs_f64();
    let publish = || -> Result<Manifest, RunnerError> {
        let bytes = serde_json::to_vec_pretty(&metrics).map_err(|e| RunnerError::cache(&tmp, e))?;
        store::write_atomic(&tmp.join("out").join(store::METRICS), &bytes)?;
        // Inputs changed while the stage ran: fail rather than cache a lie.
        for inp in &node.inputs {
            if let InputSource::External { path, .. } = &inp.source {
                let now = memo
                    .path(path)
                    .map_err(|e| RunnerError::Data(format!("{}: {e}", path.display())))?;
                if hashes.get(&inp.slot) != Some(&now) {
                    return Err(RunnerError::Data(format!(
                        "input `{}` ({}) changed while `{}` ran; nothing was cached, run again",
                        inp.slot,
                        path.display(),
                        node.id
                    )));
                }
            }
        }
        let (files, output_hash) = store.hash_outputs(&tmp, &metrics)?;
        let manifest = Manifest {
            key: key.clone(),
            stage_id: node.id.clone(),
            kind: node.kind.clone(),
            version: node.version,
            params: node.params.clone(),
            inputs: hashes.clone(),
            input_sources: sources.clone(),
            input_keys: input_keys.clone(),
            files,
            output_hash,
            metrics: metrics.clone(),
            device: opts.device.to_string(),
            started: started.clone(),
            seconds,
            tool_version: TOOL_VERSION.to_string(),
            host: store::hostname(),
        };
        drop(log.lock().map(|mut w| w.flush()));
        store.publish(&tmp, &manifest)?;
        Ok(manifest)
    };
    match publish() {
        Ok(m) => {
            // The entry is published: its checkpoints are no longer needed.
            let _ = std::fs::remove_dir_all(&resume_dir);
            drop(lock);
            let status = match publish_results(store, &dag.project_root.join("results"), node, &key)
            {
                Ok(()) => Status::Ran,
                Err(message) => Status::Failed {
                    message,
                    user: false,
                },
            };
            NodeResult {
                status,
                key: Some(key.clone()),
                seconds,
                log: Some(store.entry_dir(&key).join("log.txt")),
                manifest: Some(m),
            }
        }
        Err(e) => {
            let user = e.exit_code() == 2;
            let lp = keep_failed_log(&e.to_string());
            fail(e.to_string(), user, lp)
        }
    }
}

use std::io::Write as _;

fn sanitize(id: &str) -> String {
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

fn describe_source(dag: &Dag, s: &InputSource) -> String {
    match s {
        InputSource::Node { node, file } => match file {
            Some(f) => format!("{}/{f}", dag.nodes[*node].id),
            None => dag.nodes[*node].id.clone(),
        },
        InputSource::External { path, .. } => path.display().to_string(),
    }
}

/// Copy a node's published files (e.g. results/quickstart.csv) out of its
/// cache entry, atomically and only when the content differs. A target that
/// would leave the results folder (through a symlink made since the
/// experiment was checked) or a failed write is an error.
pub fn publish_results(
    store: &Store,
    results: &Path,
    node: &Node,
    key: &str,
) -> Result<(), String> {
    let mut errors = Vec::new();
    for (file, dest) in &node.publish {
        let src = store.out_dir(key).join(file);
        let Ok(bytes) = std::fs::read(&src) else {
            tracing::warn!("{}: publish: the stage wrote no `{file}`", node.id);
            continue;
        };
        if let Err(e) = crate::confine::check_publish_target(results, dest) {
            errors.push(format!("publish {file}: {e}"));
            continue;
        }
        if std::fs::read(dest).map(|d| d == bytes).unwrap_or(false) {
            continue;
        }
        if let Err(e) = store::write_atomic(dest, &bytes) {
            errors.push(format!(
                "could not publish {file} to {}: {e}",
                dest.display()
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Save what this run computed, for the next `plan` to compare with.
pub fn save_record(store: &Store, dag: &Dag, results: &[NodeResult]) -> Result<(), RunnerError> {
    let path = store.runs_file(&dag.experiment);
    let mut rec: RunRecord = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for (node, r) in dag.nodes.iter().zip(results) {
        if let (Some(key), Some(m)) = (&r.key, &r.manifest) {
            rec.stages.insert(
                node.id.clone(),
                StageRecord {
                    key: key.clone(),
                    kind: node.kind.clone(),
                    version: node.version,
                    params: node.params.clone(),
                    inputs: m.inputs.clone(),
                },
            );
        }
    }
    let bytes = serde_json::to_vec_pretty(&rec).map_err(|e| RunnerError::cache(&path, e))?;
    store::write_atomic(&path, &bytes)
}

pub fn load_record(store: &Store, experiment: &str) -> RunRecord {
    std::fs::read(store.runs_file(experiment))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}
