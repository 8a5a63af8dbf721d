//! The session's scheduler: runs a DAG's nodes in dependency order through
//! an [`Executor`] (today's thread pool is [`LocalExecutor`]), accelerator
//! stages one at a time.
//!
//! For each ready node: resolve its inputs against the manifests of its
//! finished upstream nodes, compute its key, and submit it as a
//! [`StageJob`]; the executor reuses the cache entry or computes and
//! publishes it ([`crate::run::worker::run_job`]). The scheduler then copies
//! published files to results/ and releases the node's dependants.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::RunnerError;
use crate::key::job::StageJob;
use crate::key::record::{RunRecord, StageRecord};
use crate::key::{self, Cells, Resolved};
use crate::kinds::registry::Registry;
use crate::plan::{Dag, InputSource, Node};
use crate::run::job::{NodeResult, Status};
use crate::store::hashing::Memo;
use crate::store::{self, Manifest, Store};

pub struct RunOptions {
    pub jobs: usize,
    pub keep_going: bool,
    pub threads: usize,
    pub progress: Option<indicatif::MultiProgress>,
    /// Per node: `--force` recomputes it ([`crate::plan::targets::forced`]);
    /// empty: none.
    pub force: Vec<bool>,
}

/// Where ready jobs run. The session submits a job once all its inputs are
/// published, never more than `capacity()` at a time, and collects results
/// with `wait_any`.
pub trait Executor {
    /// How many jobs may be in flight at once.
    fn capacity(&self) -> usize;
    /// Whether jobs that use the accelerator must run one at a time (they
    /// share one device); the session then submits one such job at a time.
    fn serial_device(&self) -> bool {
        false
    }
    /// Start a job (it runs in the background).
    fn submit(&mut self, job: StageJob) -> Result<(), RunnerError>;
    /// Results of the jobs that finished, by [`StageJob::job`]: waits up to
    /// `timeout` for the first, then returns every one that is done.
    fn wait_any(&mut self, timeout: Duration) -> Vec<(usize, NodeResult)>;
    /// Stop: jobs not yet started come back cancelled; running ones see the
    /// cancel flag.
    fn cancel_all(&mut self);
}

/// The session's side of a run: it keeps the DAG, submits a node to the
/// executor once its inputs are published, and records what comes back.
pub struct Scheduler<'a> {
    dag: &'a Dag,
    reg: &'a Registry,
    store: &'a Store,
    memo: &'a Memo,
    opts: &'a RunOptions,
    cancel: &'a AtomicBool,
    dependants: Vec<Vec<usize>>,
    waiting_on: Vec<usize>,
    ready: VecDeque<usize>,
    results: Vec<Option<NodeResult>>,
    done: usize,
    in_flight: usize,
    device_busy: bool,
    stop: bool,
    overall: Option<indicatif::ProgressBar>,
}

impl<'a> Scheduler<'a> {
    pub fn new(
        dag: &'a Dag,
        reg: &'a Registry,
        store: &'a Store,
        memo: &'a Memo,
        opts: &'a RunOptions,
        cancel: &'a AtomicBool,
    ) -> Self {
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
        let ready = (0..n).filter(|i| waiting_on[*i] == 0).collect();
        Scheduler {
            dag,
            reg,
            store,
            memo,
            opts,
            cancel,
            dependants,
            waiting_on,
            ready,
            results: vec![None; n],
            done: 0,
            in_flight: 0,
            device_busy: false,
            stop: false,
            overall: overall_bar(dag, opts.progress.as_ref()),
        }
    }

    /// Run every node through `ex`; one result per node, in node order.
    pub fn run(mut self, ex: &mut dyn Executor) -> Vec<NodeResult> {
        let n = self.dag.nodes.len();
        let mut cancelled = false;
        while self.done < n {
            self.submit_ready(ex);
            if self.done == n {
                break;
            }
            if !cancelled && self.cancel.load(Ordering::Relaxed) {
                ex.cancel_all();
                cancelled = true;
            }
            if self.in_flight == 0 {
                continue;
            }
            for (i, r) in ex.wait_any(std::time::Duration::from_millis(200)) {
                self.in_flight -= 1;
                if ex.serial_device() && self.dag.nodes[i].uses_device {
                    self.device_busy = false;
                }
                let r = self.published(i, r);
                self.finish(i, r);
            }
        }
        if let Some(b) = self.overall.take() {
            b.finish_and_clear();
        }
        self.results
            .into_iter()
            .map(|r| r.expect("every node finished"))
            .collect()
    }

    /// Submit ready nodes while the executor has room; skip those whose
    /// inputs failed.
    fn submit_ready(&mut self, ex: &mut dyn Executor) {
        let serial = ex.serial_device();
        while self.in_flight < ex.capacity().max(1) {
            let nodes = &self.dag.nodes;
            let busy = self.device_busy;
            let Some(p) = self
                .ready
                .iter()
                .position(|&i| !(serial && nodes[i].uses_device && busy))
            else {
                return;
            };
            let i = self.ready.remove(p).expect("position");
            let skip = blocked_by(
                self.dag,
                &self.results,
                &nodes[i],
                self.stop,
                self.cancel.load(Ordering::Relaxed),
            );
            if let Some(status) = skip {
                self.finish(i, not_run(status));
                continue;
            }
            let job = match self.job(i) {
                Ok(job) => job,
                Err(message) => {
                    let failed = Status::Failed {
                        message,
                        user: true,
                    };
                    self.finish(i, not_run(failed));
                    continue;
                }
            };
            match ex.submit(job) {
                Ok(()) => {
                    self.in_flight += 1;
                    if serial && self.dag.nodes[i].uses_device {
                        self.device_busy = true;
                    }
                }
                Err(e) => self.finish(
                    i,
                    not_run(Status::Failed {
                        message: e.to_string(),
                        user: false,
                    }),
                ),
            }
        }
    }

    /// Node `i`'s job: its inputs resolved against the finished upstream
    /// nodes, and its key; or why it cannot run, for the user.
    fn job(&self, i: usize) -> Result<StageJob, String> {
        let upstream = |j: usize| -> Option<Manifest> {
            self.results[j].as_ref().and_then(|r| r.manifest.clone())
        };
        let job = keyed_job(
            self.dag,
            self.reg,
            self.store,
            self.memo,
            i,
            self.opts.threads,
            &upstream,
        )?;
        if self.opts.force.get(i).copied().unwrap_or(false) {
            crate::plan::targets::evict(self.store, &job.key).map_err(|e| e.to_string())?;
        }
        Ok(job)
    }

    /// A finished job's result once its files are published to results/.
    fn published(&self, i: usize, mut r: NodeResult) -> NodeResult {
        if let (true, Some(key)) = (r.status.ok(), &r.key) {
            let node = &self.dag.nodes[i];
            let results = self.dag.project_root.join("results");
            if let Err(message) = publish_results(self.store, &results, node, key) {
                r.status = Status::Failed {
                    message,
                    user: false,
                };
            }
        }
        r
    }

    fn finish(&mut self, i: usize, result: NodeResult) {
        let line = finish_line(&self.dag.nodes[i], &result);
        match (&self.opts.progress, &self.overall) {
            (Some(m), Some(b)) if !m.is_hidden() => {
                let _ = m.println(line);
                b.inc(1);
            }
            _ => eprintln!("{line}"),
        }
        if matches!(result.status, Status::Failed { .. }) && !self.opts.keep_going {
            self.stop = true;
        }
        self.results[i] = Some(result);
        self.done += 1;
        for &d in &self.dependants[i] {
            self.waiting_on[d] -= 1;
            if self.waiting_on[d] == 0 {
                self.ready.push_back(d);
            }
        }
    }
}

fn not_run(status: Status) -> NodeResult {
    NodeResult::bare(status)
}

fn overall_bar(
    dag: &Dag,
    progress: Option<&indicatif::MultiProgress>,
) -> Option<indicatif::ProgressBar> {
    let m = progress?;
    let b = m.add(indicatif::ProgressBar::new(dag.nodes.len() as u64));
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
    Some(b)
}

/// Node `i` as a job: each input resolved (a path and its hash) given the
/// manifests of the finished upstream nodes, and the key. Err: why it
/// cannot run (a missing input, an upstream file that is not there, a
/// table metric no cell has), for the user.
pub fn keyed_job(
    dag: &Dag,
    reg: &Registry,
    store: &Store,
    memo: &Memo,
    i: usize,
    threads: usize,
    upstream: &dyn Fn(usize) -> Option<Manifest>,
) -> Result<StageJob, String> {
    let node = &dag.nodes[i];
    let keyed = key::key_node(dag, store, memo, i, threads, Cells::Missing, upstream);
    for (inp, r) in node.inputs.iter().zip(keyed.inputs) {
        match r {
            Ok(Resolved::Ready { .. } | Resolved::Upstream { .. }) => {}
            Ok(Resolved::Missing { path, declared }) => {
                let hint = reg
                    .get(&node.kind)
                    .and_then(|s| s.missing_input_hint(&node.params, &inp.slot, &path))
                    .map(|h| format!("\n  help: {h}"))
                    .unwrap_or_else(|| "\n  help: fix the path, or set the data root (data_root in the experiment, MRBM_DATA, or --data-root)".into());
                return Err(format!(
                    "{declared}: input `{}` of `{}`: {} does not exist{hint}",
                    inp.slot,
                    node.id,
                    path.display()
                ));
            }
            Ok(Resolved::BadFile { message }) => return Err(message),
            Err(e) => return Err(e.to_string()),
        }
    }
    if node.is_table() {
        if let Some(message) = crate::plan::tables::unknown_metric(dag, node, upstream) {
            return Err(message);
        }
    }
    Ok(keyed.job.expect("every input resolved"))
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
        if let Err(e) = crate::sys::confine::check_publish_target(results, dest) {
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
