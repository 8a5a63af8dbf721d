//! A run resolved once: from what `mrbm run` was asked and the experiment
//! selected, the executor, the device request, the cache, the jobs and
//! threads and the progress display ([`RunPlan::resolve`]), then the run
//! itself ([`RunPlan::run`]). main.rs only maps the command line onto
//! [`RunArgs`]; the history and the summary come after (crate::report).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::RunnerError;
use crate::kinds::registry::Registry;
use crate::load::executor::ExecutorDecl;
use crate::plan::select::Built;
use crate::plan::{prechecks, targets, Dag};
use crate::run::exec::{self, RunOptions};
use crate::run::executors::{
    self, DeviceRequest, ExecutorFlags, Placement, RunContext, RunExecutor,
};
use crate::run::job::NodeResult;
use crate::run::output;
use crate::store::hashing::Memo;
use crate::store::{self, Store};

/// What `mrbm run` was asked, besides the experiment.
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    pub jobs: Option<usize>,
    /// `--threads` (each stage's parallel work).
    pub threads: Option<usize>,
    pub keep_going: bool,
    /// `--device` (over the experiment's `device` key).
    pub device: Option<String>,
    pub quiet: bool,
    pub progress_interval: f64,
    /// `--executor` (over the experiment's `[executor] kind`).
    pub executor: Option<String>,
    pub mrbm: Option<PathBuf>,
    pub force: Vec<String>,
    /// `--cache`.
    pub cache: Option<PathBuf>,
    /// `-v` count.
    pub verbose: u8,
}

/// A run with everything decided.
pub struct RunPlan {
    pub dag: Dag,
    pub executor: Box<dyn RunExecutor>,
    pub device: DeviceRequest,
    pub placement: Placement,
    pub store: Store,
    /// Jobs, threads, progress and `--force`.
    pub opts: RunOptions,
    pub cancel: Arc<AtomicBool>,
    /// The profile in effect and the sources' hashes, for the history.
    pub profile: Option<String>,
    pub sources: BTreeMap<String, String>,
    progress_interval: f64,
}

/// What a run gives back: one result per node, and the executor's note.
pub struct RunOutcome {
    pub results: Vec<NodeResult>,
    pub note: Option<String>,
}

impl RunPlan {
    /// Decide everything about the run of `built` (the experiment at
    /// `file`) before any stage starts.
    pub fn resolve(
        args: &RunArgs,
        built: Built,
        reg: &Registry,
        file: &std::path::Path,
    ) -> Result<RunPlan, RunnerError> {
        let Built {
            dag,
            device: file_device,
            profile,
            executor: file_executor,
            sources,
        } = built;
        // --device wins over the file's key; an error from the key names its line.
        let key = file_device.filter(|_| args.device.is_none());
        let spec = args
            .device
            .clone()
            .or(key.as_ref().map(|k| k.spec.clone()))
            .unwrap_or_else(|| "auto".into());
        let device = DeviceRequest { spec, key };
        let mut executor = executor_of(args, file_executor.as_ref(), file)?;
        let placement = executor.place(&device)?;
        let store = Store::open(&store::cache_dir(args.cache.as_deref(), &dag.project_root))?;
        store.check_writable()?;
        let cancel = cancel_on_interrupt();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let threads = args
            .threads
            .unwrap_or_else(|| threads_from_env().unwrap_or(cores));
        let opts = RunOptions {
            jobs: args.jobs.unwrap_or(cores.min(4)),
            keep_going: args.keep_going,
            threads,
            progress: progress_display(args.quiet),
            force: targets::forced(&dag, &args.force)?,
        };
        if placement.checks_memory_here {
            // Sizes from parameters alone, before any stage starts.
            prechecks::memory(reg, &dag)?;
        }
        Ok(RunPlan {
            dag,
            executor,
            device,
            placement,
            store,
            opts,
            cancel,
            profile,
            sources,
            progress_interval: args.progress_interval,
        })
    }

    /// Run the plan through its executor, then save the hash memo and the
    /// record `mrbm plan` compares with. Waits while `mrbm gc` holds the
    /// cache.
    pub fn run(&self, reg: &Registry) -> Result<RunOutcome, RunnerError> {
        let store = &self.store;
        // Shared with other runs; `mrbm gc` waits for it.
        let _in_use = store.use_guard(false, &|| {
            eprintln!(
                "waiting for `mrbm gc` to finish with {}",
                store.root.display()
            )
        })?;
        store.clean_stale();
        let memo = Memo::load(&store.root);
        let ticker = self
            .opts
            .progress
            .as_ref()
            .filter(|m| m.is_hidden())
            .map(|_| {
                output::Ticker::start(std::time::Duration::from_secs_f64(self.progress_interval))
            });
        let (results, note) = self.executor.run(RunContext {
            registry: reg,
            store,
            memo: &memo,
            dag: &self.dag,
            opts: &self.opts,
            cancel: &self.cancel,
            device: &self.device,
        })?;
        drop(ticker);
        let (entries, bytes, took) = store::integrity::stats();
        tracing::info!(
            "integrity: checked {entries} cached entries ({:.1} MB) against their manifests in {:.1} ms",
            bytes as f64 / 1e6,
            took.as_secs_f64() * 1e3
        );
        memo.save()?;
        exec::save_record(store, &self.dag, &results)?;
        Ok(RunOutcome { results, note })
    }

    /// Whether Ctrl-C stopped the run.
    pub fn interrupted(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// The executor asked for (--executor, else the experiment's `[executor]`).
fn executor_of(
    args: &RunArgs,
    decl: Option<&ExecutorDecl>,
    file: &std::path::Path,
) -> Result<Box<dyn RunExecutor>, RunnerError> {
    let flags = ExecutorFlags {
        jobs: args.jobs,
        mrbm: args.mrbm.clone(),
        verbose: args.verbose,
    };
    executors::resolve(args.executor.as_deref(), decl, &flags, file)
}

/// A flag Ctrl-C (or SIGTERM, SIGHUP) sets; a second one exits at once.
fn cancel_on_interrupt() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if c.swap(true, Ordering::SeqCst) {
            // Second Ctrl-C: leave now. What the executors started outside
            // (Slurm jobs) goes too. Command stages' process groups are
            // killed, and this process's temporary folders and locks
            // removed, first.
            executors::abort_all_now();
            eprintln!("\ninterrupted again: exiting");
            crate::sys::abort::exit_now(130);
        }
        eprintln!("\ninterrupt: finishing nothing new, cleaning up (Ctrl-C again to quit now)");
    });
    cancel
}

/// On a terminal: bars. Otherwise the bars are kept hidden and a line per
/// running stage is printed every --progress-interval.
fn progress_display(quiet: bool) -> Option<indicatif::MultiProgress> {
    if quiet {
        None
    } else if std::io::stderr().is_terminal() {
        let m = indicatif::MultiProgress::new();
        output::set_display(&m);
        Some(m)
    } else {
        Some(indicatif::MultiProgress::with_draw_target(
            indicatif::ProgressDrawTarget::hidden(),
        ))
    }
}

/// RAYON_NUM_THREADS, as rayon's own pools read it: a whole number above 0
/// (0 or anything else: not set).
fn threads_from_env() -> Option<usize> {
    std::env::var("RAYON_NUM_THREADS")
        .ok()?
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
}
