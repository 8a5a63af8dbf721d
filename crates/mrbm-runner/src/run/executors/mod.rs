//! Where ready jobs run. Executors are plugins: each is one file here that
//! owns its settings (it parses the raw `[executor]` table itself), its
//! worker entry and its job id, plus one line in [`KINDS`].
//!
//! - [`ExecutorKind`]: the executor as `[executor] kind = "NAME"` (or
//!   `--executor NAME`) names it; it checks and reads its settings;
//! - [`RunExecutor`]: configured for one run, it places the run (resolves
//!   the device, or leaves that to its workers) and runs the session's plan;
//! - [`Executor`]: what the scheduler submits jobs to while the run goes.
//!
//! Today: [`local`] (threads of this process) and [`slurm`] (one Slurm job
//! per stage). Both run a job with [`crate::run::worker::run_job`].

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::error::RunnerError;
use crate::kinds::registry::Registry;
use crate::load::executor::ExecutorDecl;
use crate::plan::select::DeviceKey;
use crate::plan::Dag;
use crate::run::exec::{self, RunOptions};
use crate::run::job::NodeResult;
use crate::store::hashing::Memo;
use crate::store::Store;

/// What the scheduler submits jobs to (defined beside it).
pub use crate::run::exec::Executor;

pub mod local;
pub mod slurm;

/// Every executor. A new one is a file in this folder and a line here.
pub const KINDS: &[&dyn ExecutorKind] = &[&local::Local, &slurm::Slurm];

/// What the command line adds to an executor's settings.
#[derive(Debug, Clone, Default)]
pub struct ExecutorFlags {
    /// `--jobs`: for an executor that submits jobs, the most in flight.
    pub jobs: Option<usize>,
    /// `--mrbm`: the binary the workers run.
    pub mrbm: Option<PathBuf>,
    /// `-v` count: how much the workers log.
    pub verbose: u8,
}

/// The device a run asks for: `--device`, else the experiment's `device`
/// key (with its place in the file, for errors), else `auto`.
#[derive(Debug, Clone)]
pub struct DeviceRequest {
    pub spec: String,
    /// The experiment's key, when the request comes from it.
    pub key: Option<DeviceKey>,
}

/// Where a run's stages go, as the summary and the history say it.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// For the summary: `cpu`, `Slurm (device auto on the nodes)`.
    pub shown: String,
    /// For the run's history record.
    pub recorded: String,
    /// Whether the stages run on this machine, so that their sizes are
    /// checked against its memory before any starts.
    pub checks_memory_here: bool,
}

/// What a configured executor runs: the session's plan.
pub struct RunContext<'a> {
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub memo: &'a Memo,
    pub dag: &'a Dag,
    pub opts: &'a RunOptions,
    pub cancel: &'a AtomicBool,
    pub device: &'a DeviceRequest,
}

impl RunContext<'_> {
    /// The plan scheduled onto `ex`: one result per node.
    pub fn schedule(&self, ex: &mut dyn Executor) -> Vec<NodeResult> {
        let (reg, store, memo) = (self.registry, self.store, self.memo);
        exec::Scheduler::new(self.dag, reg, store, memo, self.opts, self.cancel).run(ex)
    }
}

/// An executor, as `[executor] kind = "NAME"` names it.
pub trait ExecutorKind: Sync {
    fn name(&self) -> &'static str;
    /// Whether it takes these settings (the `[executor]` table less `kind`):
    /// why not, if not.
    fn check(&self, settings: &toml::Table) -> Result<(), String>;
    /// The executor for one run, from its settings and the flags.
    fn configure(
        &self,
        settings: &toml::Table,
        flags: &ExecutorFlags,
    ) -> Result<Box<dyn RunExecutor>, RunnerError>;
    /// A second Ctrl-C: stop at once what it started outside this process.
    fn abort_now(&self) {}
}

/// An executor configured for one run.
pub trait RunExecutor {
    /// Resolve the device here, or say that the workers will: where the
    /// run goes. Called once, before the run.
    fn place(&mut self, request: &DeviceRequest) -> Result<Placement, RunnerError>;
    /// Run the session's plan: one result per node, and a note to print
    /// after the summary (e.g. the jobs' timings).
    fn run(&self, ctx: RunContext) -> Result<(Vec<NodeResult>, Option<String>), RunnerError>;
}

/// The executor kind called `name`.
pub fn find(name: &str) -> Option<&'static dyn ExecutorKind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

/// `local` and `slurm`: the names, for messages.
fn names() -> String {
    let n: Vec<String> = KINDS.iter().map(|k| format!("`{}`", k.name())).collect();
    match n.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => n.join(""),
    }
}

/// The executor of a run: `flag` (`--executor`), else the experiment's
/// `[executor] kind`, else `local`; configured with the table's settings.
/// The settings must suit some executor (an executor is often chosen at
/// the command line, over a file written for another), so a misspelt key
/// is refused whichever runs.
pub fn resolve(
    flag: Option<&str>,
    decl: Option<&ExecutorDecl>,
    flags: &ExecutorFlags,
    file: &Path,
) -> Result<Box<dyn RunExecutor>, RunnerError> {
    let empty = toml::Table::new();
    let settings = decl.map(|d| &d.settings).unwrap_or(&empty);
    let name = flag
        .or(decl.and_then(|d| d.kind.as_deref()))
        .unwrap_or("local");
    let Some(kind) = find(name) else {
        return Err(RunnerError::Usage(format!(
            "{}: [executor] kind = \"{name}\": the executors are {}",
            file.display(),
            names()
        )));
    };
    if !settings.is_empty() {
        let why: Vec<String> = KINDS
            .iter()
            .filter_map(|k| {
                k.check(settings)
                    .err()
                    .map(|e| format!("{}: {e}", k.name()))
            })
            .collect();
        if why.len() == KINDS.len() {
            return Err(RunnerError::Usage(format!(
                "{}: [executor]: no executor takes these settings ({})",
                file.display(),
                why.join("; ")
            )));
        }
    }
    kind.configure(settings, flags)
}

/// A second Ctrl-C: every executor stops what it started outside.
pub fn abort_all_now() {
    for k in KINDS {
        k.abort_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(text: &str) -> ExecutorDecl {
        toml::from_str(text).unwrap()
    }

    fn err(r: Result<Box<dyn RunExecutor>, RunnerError>) -> String {
        match r {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn each_kind_is_found_by_its_name_once() {
        let listed: Vec<&str> = KINDS.iter().map(|k| k.name()).collect();
        assert_eq!(listed, ["local", "slurm"]);
        assert_eq!(find("slurm").unwrap().name(), "slurm");
        assert!(find("kubernetes").is_none());
        assert_eq!(names(), "`local` and `slurm`");
    }

    #[test]
    fn the_flag_wins_over_the_file_and_an_unknown_kind_is_refused() {
        let f = Path::new("x.toml");
        let flags = ExecutorFlags::default();
        let e = err(resolve(None, Some(&decl("kind = \"k8s\"")), &flags, f));
        assert!(
            e.contains("x.toml: [executor] kind = \"k8s\": the executors are `local` and `slurm`"),
            "{e}"
        );
        // --executor local over a file written for Slurm: its settings are kept
        // for Slurm, and the run is local (it resolves the device here).
        let slurm_file = decl("kind = \"slurm\"\npartition = \"gpu\"");
        let mut ex = resolve(Some("local"), Some(&slurm_file), &flags, f).unwrap();
        let req = DeviceRequest {
            spec: "cpu".into(),
            key: None,
        };
        let p = ex.place(&req).unwrap();
        assert!(p.checks_memory_here);
        assert_eq!(p.recorded, "cpu");
        let mut ex = resolve(None, Some(&slurm_file), &flags, f).unwrap();
        let p = ex.place(&req).unwrap();
        assert!(!p.checks_memory_here);
        assert_eq!(p.recorded, "slurm:cpu");
        assert_eq!(p.shown, "Slurm (device cpu on the nodes)");
    }

    #[test]
    fn a_setting_no_executor_takes_is_refused_whichever_runs() {
        let f = Path::new("x.toml");
        let flags = ExecutorFlags::default();
        let typo = decl("partiton = \"gpu\"");
        for flag in [None, Some("local"), Some("slurm")] {
            let e = err(resolve(flag, Some(&typo), &flags, f));
            assert!(
                e.contains("x.toml: [executor]: no executor takes these settings"),
                "{e}"
            );
            assert!(e.contains("partiton"), "{e}");
        }
        assert!(resolve(None, None, &flags, f).is_ok());
    }
}
