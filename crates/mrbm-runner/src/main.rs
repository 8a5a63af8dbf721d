//! `mrbm`: declare an experiment in TOML, run it, rerun only what changed.
//!
//! This file only maps command-line arguments onto the runner's phases:
//! `load::config::load` -> `plan::build` (the plan) -> `Session` (`plan`, `run`)
//! -> `report`. See ARCHITECTURE.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{CommandFactory, Parser, Subcommand};
use mrbm_runner::key::preview;
use mrbm_runner::key::record::RunRecord;
use mrbm_runner::kinds::registry::Registry;
use mrbm_runner::kinds::table;
use mrbm_runner::ops::gc::{self, GcOptions};
use mrbm_runner::plan::select::{self, Selection};
use mrbm_runner::report::{history, rundiff, summary};
use mrbm_runner::run::executors::slurm;
use mrbm_runner::run::resolve::{RunArgs, RunOutcome, RunPlan};
use mrbm_runner::run::session::Session;
use mrbm_runner::run::{device, output};
use mrbm_runner::store::hashing::Memo;
use mrbm_runner::store::Store;
use mrbm_runner::RunnerError;

#[derive(Parser)]
#[command(
    name = "mrbm",
    version,
    about = "Declarative experiment pipelines for multinary RBMs: run, cache, compare."
)]
struct Cli {
    /// More output: -v echoes each stage's log lines (epochs, losses) as they
    /// are logged, -vv adds debug details; RUST_LOG overrides both. Default: warnings only.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Cache directory (default: .mrbm/ at the project root, or MRBM_CACHE).
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Select {
    /// The experiment (or pipeline) file.
    file: PathBuf,
    /// Only these stages and what they need: a stage name (all its
    /// cells), a stage id such as `train[N=1]`, or a table's name.
    #[arg(value_name = "STAGE")]
    stages: Vec<String>,
    /// Override a parameter: STAGE.PARAM=VALUE (repeatable).
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    set: Vec<String>,
    /// Sweep a parameter over several values (repeatable; values are TOML,
    /// comma-separated): --sweep train.epochs=10,30. Each adds an axis named
    /// after the parameter, or replaces the values of the experiment's axis
    /// that already sweeps it.
    #[arg(long = "sweep", value_name = "STAGE.PARAM=V1,V2,...")]
    sweep: Vec<String>,
    /// Let --set change a parameter that a sweep axis sets (in every cell,
    /// although the table still labels the cells by the axis).
    #[arg(long)]
    force_override: bool,
    /// A named profile of the experiment (e.g. scaled, full).
    #[arg(long)]
    profile: Option<String>,
    /// Where `data:` inputs are found (overrides data_root and MRBM_DATA).
    #[arg(long)]
    data_root: Option<PathBuf>,
}

impl Select {
    fn selection(&self) -> Selection {
        Selection {
            file: self.file.clone(),
            stages: self.stages.clone(),
            set: self.set.clone(),
            sweep: self.sweep.clone(),
            force_override: self.force_override,
            profile: self.profile.clone(),
            data_root: self.data_root.clone(),
        }
    }
}

/// What `push` and `pull` move, and where.
#[derive(clap::Args, Clone)]
struct RemoteArgs {
    /// The experiment whose entries move (omit with --all).
    #[arg(required_unless_present = "all")]
    file: Option<PathBuf>,
    /// Only these stages and what they need (as for `run`).
    #[arg(value_name = "STAGE")]
    stages: Vec<String>,
    /// The remote's name in mrbm.remotes.toml (default: its `default`, or
    /// the only one declared).
    #[arg(long, short)]
    remote: Option<String>,
    /// Every entry: of the local cache (push) or of the remote (pull).
    #[arg(long, conflicts_with = "file")]
    all: bool,
    /// Project root holding mrbm.remotes.toml, with --all (default: the current directory).
    #[arg(long)]
    project: Option<PathBuf>,
    /// As for `run`: the entries of the experiment with these overrides.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    set: Vec<String>,
    /// As for `run`.
    #[arg(long = "sweep", value_name = "STAGE.PARAM=V1,V2,...")]
    sweep: Vec<String>,
    /// As for `run`.
    #[arg(long)]
    profile: Option<String>,
    /// As for `run`.
    #[arg(long)]
    data_root: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment: every stage that is not already cached.
    Run {
        #[command(flatten)]
        select: Select,
        /// Stages run at once, at least 1 (accelerator stages run one at a
        /// time). Default: the number of cores, at most 4.
        #[arg(short, long, value_parser = parse_jobs)]
        jobs: Option<usize>,
        /// Threads for each stage's parallel work, at least 1 (as PyTorch's
        /// set_num_threads). Default: RAYON_NUM_THREADS when set, else the
        /// number of cores.
        #[arg(long, value_parser = parse_threads)]
        threads: Option<usize>,
        /// After a failure, finish the stages that do not depend on it.
        #[arg(short = 'k', long)]
        keep_going: bool,
        /// auto | cpu | wgpu | cuda[:INDEX] (overrides the experiment's `device`).
        #[arg(long)]
        device: Option<String>,
        /// No progress bars or progress lines.
        #[arg(long)]
        quiet: bool,
        /// When stderr is not a terminal (piped, nohup, Slurm): print a line
        /// per running stage every SECONDS (stage, step/total, loss, elapsed, ETA).
        #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_interval)]
        progress_interval: f64,
        /// Where the stages run: `local` (this machine) or `slurm` (one
        /// sbatch job per stage; README "Running on a cluster"). Overrides
        /// `[executor] kind` in the experiment.
        #[arg(long, value_parser = ["local", "slurm"])]
        executor: Option<String>,
        /// The mrbm binary Slurm jobs run (default: this one); it must be on
        /// a path the compute nodes see. Overrides `[executor] mrbm`.
        #[arg(long, value_name = "PATH")]
        mrbm: Option<PathBuf>,
        /// Recompute this stage (name, id or table) and every stage
        /// downstream of it, even when cached (repeatable).
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
    },
    /// Run one stage from its job spec in the cache (what a Slurm job runs).
    #[command(hide = true)]
    ExecStage {
        /// The stage's cache key (its spec is CACHE/jobs/KEY.json).
        key: String,
        /// auto | cpu | wgpu | cuda[:INDEX], resolved on this machine.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Show what `run` would do and why, without running anything.
    Plan {
        #[command(flatten)]
        select: Select,
    },
    /// Print the stage graph (text, or Graphviz with --dot).
    Dag {
        #[command(flatten)]
        select: Select,
        #[arg(long)]
        dot: bool,
    },
    /// Print the manifest of a cache entry, by stage id (from the last runs) or key.
    Show {
        /// A stage id such as `train[N=255]`, a stage name, or a key (prefix).
        what: String,
    },
    /// List recorded runs (newest last): id, time, changed parameters, metrics.
    Runs {
        /// Only the runs of this experiment (its name or file).
        experiment: Option<String>,
        /// Keep this run's cache entries through `mrbm gc` (an id or unique prefix).
        #[arg(long, value_name = "RUN", conflicts_with = "unpin")]
        pin: Option<String>,
        /// Let `mrbm gc` collect this run's entries again.
        #[arg(long, value_name = "RUN")]
        unpin: Option<String>,
        /// CSV instead of an aligned table.
        #[arg(long)]
        csv: bool,
    },
    /// Show runs' parameters and metrics side by side, with their differences.
    /// One run id: that run beside the run of its experiment before it.
    Compare {
        /// Run ids (or unique prefixes), from `mrbm runs`: two or more, or
        /// one to compare it with the previous run of its experiment.
        #[arg(required = true, num_args = 1..)]
        runs: Vec<String>,
        /// CSV instead of an aligned table.
        #[arg(long)]
        csv: bool,
        /// Every metric of the tables' stages, not only those the tables show.
        #[arg(long)]
        all_metrics: bool,
        /// Only the parameters that differ (what `mrbm params-diff` prints).
        #[arg(long)]
        params: bool,
    },
    /// The parameters that differ between runs (every stage's resolved
    /// parameters, defaults filled), like `dvc params diff`.
    ParamsDiff {
        /// Run ids (or unique prefixes): two or more, or one to compare it
        /// with the previous run of its experiment.
        #[arg(required = true, num_args = 1..)]
        runs: Vec<String>,
        /// CSV instead of an aligned table.
        #[arg(long)]
        csv: bool,
    },
    /// Write one self-contained HTML page about a run: tables with the
    /// paper's values, loss curves, metrics along the sweep axes, sample
    /// grids, provenance. Opens from file://, no network needed.
    Report {
        /// A run id (or unique prefix), or an experiment (its newest run).
        /// Default: the newest run.
        run: Option<String>,
        /// Where to write the page.
        #[arg(long, default_value = "results/report.html")]
        out: PathBuf,
        /// The loss curves' y axis: linear, log or symlog.
        #[arg(long, default_value = "linear", value_name = "SCALE")]
        loss_scale: String,
    },
    /// Copy cache entries to a remote cache (declared in mrbm.remotes.toml
    /// at the project root; README "Remote caches"): the entries an
    /// experiment's stages produced, or with --all every entry here.
    Push {
        #[command(flatten)]
        args: RemoteArgs,
    },
    /// Copy from a remote cache the entries an experiment needs (or with
    /// --all every entry there), each verified by hash before use; a run
    /// afterwards computes only what the remote lacked.
    Pull {
        #[command(flatten)]
        args: RemoteArgs,
    },
    /// Delete cache entries that no experiment under experiments/ references
    /// and that neither the last runs of an experiment nor a pinned run used.
    Gc {
        #[arg(long)]
        dry_run: bool,
        /// Keep the entries of the last K runs of each experiment.
        #[arg(long, value_name = "K", default_value = "5")]
        keep_runs: usize,
        /// Project root holding experiments/ (default: the current directory).
        #[arg(long)]
        project: Option<PathBuf>,
        /// Where `data:` inputs are found, as for `run` (overrides data_root and MRBM_DATA).
        #[arg(long)]
        data_root: Option<PathBuf>,
        /// Go on when an experiment file does not load (its entries are then deleted).
        #[arg(long)]
        force: bool,
    },
    /// Re-hash every cache entry; move corrupt ones to quarantine/.
    Verify,
    /// List compute devices (backends compiled in and what each finds).
    Devices {
        /// Run the device checks on every device found.
        #[arg(long)]
        check: bool,
    },
    /// List the stage kinds with their inputs.
    Kinds,
    /// Print a stage kind's parameters with their default values.
    Params {
        /// A stage kind, e.g. `train` (see `mrbm kinds`).
        kind: String,
    },
    /// Print a shell completion script: `mrbm completions bash > ~/.local/share/bash-completion/completions/mrbm`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `--jobs`: a count of at least one.
fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (1 runs the stages one after another)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number of stages")),
    }
}

/// `--threads`: a whole number, at least 1.
fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number of threads")),
    }
}

/// `--progress-interval`: seconds, more than zero.
fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() && x < 1e9 => Ok(x),
        _ => Err(format!("`{s}` is not a number of seconds above 0")),
    }
}

fn main() -> ExitCode {
    // `mrbm devices | head` or `mrbm dag x.toml | less` then quitting: end
    // quietly like other Unix tools instead of panicking on a broken pipe
    // (Rust ignores SIGPIPE by default). The cache stays consistent: entries
    // are published atomically.
    #[cfg(unix)]
    // SAFETY: resets one signal's disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Freed tensors stay in the process for the next training step instead
    // of going back to the kernel (mrbm-device's host_memory says why).
    mrbm_device::host_memory::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    output::init_tracing(cli.verbose);
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn cache_dir(cli_cache: &Option<PathBuf>, project_root: &Path) -> PathBuf {
    mrbm_runner::store::cache_dir(cli_cache.as_deref(), project_root)
}

/// `mrbm plan`: one line per stage, run (and why) or cached.
fn plan(cli: &Cli, reg: &Registry, select: &Select) -> Result<u8, RunnerError> {
    let dag = select::build(&select.selection(), reg)?.dag;
    let store = Store::open(&cache_dir(&cli.cache, &dag.project_root))?;
    let memo = Memo::load(&store.root);
    let lines = Session::new(reg, &store, &memo).plan(&dag)?;
    print!("{}", preview::render(&lines));
    memo.save()?;
    Ok(0)
}

fn dispatch(cli: Cli) -> Result<u8, RunnerError> {
    let reg = Registry::builtin();
    match &cli.command {
        Command::Run {
            select,
            jobs,
            threads,
            keep_going,
            device: dev_flag,
            quiet,
            progress_interval,
            executor,
            mrbm,
            force,
        } => run(
            &reg,
            select,
            &RunArgs {
                jobs: *jobs,
                threads: *threads,
                keep_going: *keep_going,
                device: dev_flag.clone(),
                quiet: *quiet,
                progress_interval: *progress_interval,
                executor: executor.clone(),
                mrbm: mrbm.clone(),
                force: force.clone(),
                cache: cli.cache.clone(),
                verbose: cli.verbose,
            },
        ),
        Command::Plan { select } => plan(&cli, &reg, select),
        Command::Dag { select, dot } => {
            let dag = select::build(&select.selection(), &reg)?.dag;
            print!(
                "{}",
                if *dot {
                    summary::render_dot(&dag)
                } else {
                    summary::render_dag_text(&dag)
                }
            );
            Ok(0)
        }
        Command::Show { what } => show(&cli, what),
        Command::ExecStage { key, device } => {
            slurm::exec_stage(cli.cache.clone(), &reg, key, device)
        }
        Command::Runs {
            experiment,
            pin,
            unpin,
            csv,
        } => runs(
            &cli,
            experiment.as_deref(),
            pin.as_deref(),
            unpin.as_deref(),
            *csv,
        ),
        Command::Compare {
            runs: ids,
            csv,
            all_metrics,
            params,
        } => compare(&cli, ids, *csv, *all_metrics, *params),
        Command::ParamsDiff { runs: ids, csv } => compare(&cli, ids, *csv, false, true),
        Command::Report {
            run,
            out,
            loss_scale,
        } => mrbm_runner::report::html::command(
            &existing_cache(&cli)?,
            &mrbm_runner::report::html::ReportRequest {
                run: run.clone(),
                out: out.clone(),
                y_scale: loss_scale.clone(),
            },
        ),
        Command::Gc {
            dry_run,
            keep_runs,
            project,
            data_root,
            force,
        } => {
            let project = project
                .clone()
                .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
            let store = Store::open(&cache_dir(&cli.cache, &project))?;
            let opts = GcOptions {
                project,
                data_root: data_root.clone(),
                dry_run: *dry_run,
                keep_runs: *keep_runs,
                force: *force,
            };
            gc::collect(&store, &reg, &opts)
        }
        Command::Push { args } => push_pull(&cli, &reg, args, false),
        Command::Pull { args } => push_pull(&cli, &reg, args, true),
        Command::Verify => verify(&cli),
        Command::Devices { check } => device::print_devices(*check),
        Command::Kinds => {
            print!("{}", reg.describe_kinds());
            Ok(0)
        }
        Command::Params { kind } => params(&reg, kind),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "mrbm", &mut std::io::stdout());
            Ok(0)
        }
    }
}

/// `mrbm push` / `mrbm pull`.
fn push_pull(cli: &Cli, reg: &Registry, a: &RemoteArgs, pull: bool) -> Result<u8, RunnerError> {
    use mrbm_runner::ops::transfer;
    use mrbm_runner::store::remote;
    let (root, dag) = match &a.file {
        Some(file) => {
            let select = Selection {
                file: file.clone(),
                stages: a.stages.clone(),
                set: a.set.clone(),
                sweep: a.sweep.clone(),
                force_override: false,
                profile: a.profile.clone(),
                data_root: a.data_root.clone(),
            };
            let dag = select::build(&select, reg)?.dag;
            (dag.project_root.clone(), Some(dag))
        }
        None => (
            a.project
                .clone()
                .unwrap_or_else(|| std::env::current_dir().unwrap_or_default()),
            None,
        ),
    };
    let remote = remote::find(&root, a.remote.as_deref())?;
    let cache = cache_dir(&cli.cache, &root);
    if !pull && !cache.is_dir() {
        return Err(RunnerError::Usage(format!(
            "no cache at {} to push (run the experiment first, or use --cache DIR)",
            cache.display()
        )));
    }
    let store = Store::open(&cache)?;
    if pull {
        store.check_writable()?;
    }
    let lines = match (&dag, pull) {
        (Some(d), false) => transfer::push_experiment(d, &store, &remote)?,
        (Some(d), true) => transfer::pull_experiment(d, &store, &remote)?,
        (None, false) => transfer::push_all(&store, &remote)?,
        (None, true) => transfer::pull_all(&store, &remote)?,
    };
    let (text, code) = transfer::render(&lines, pull, &remote);
    print!("{text}");
    Ok(code)
}

/// `mrbm verify`: re-hash every entry, quarantine the corrupt ones.
fn verify(cli: &Cli) -> Result<u8, RunnerError> {
    let root = cache_dir(&cli.cache, &std::env::current_dir().unwrap_or_default());
    if !root.is_dir() {
        return Err(RunnerError::Usage(format!(
            "no cache at {} (use --cache DIR)",
            root.display()
        )));
    }
    let store = Store::open(&root)?;
    let stale = store.clean_stale();
    let (n, corrupt, moved) = store.verify_all()?;
    for (k, why) in &corrupt {
        println!("corrupt {k}: {why}");
    }
    for (k, id, dest) in &moved {
        let from = if corrupt.iter().any(|(c, _)| c == k) {
            String::new()
        } else {
            " (computed from a corrupt entry)".to_string()
        };
        println!("  moved {k} {id}{from} to {}", dest.display());
    }
    let bad = moved.len();
    let (checkpoints, damaged) = verify_checkpoints(&store);
    println!(
        "verified {n} entries: {} ok, {bad} corrupt; removed {stale} stale temporary files or locks",
        n - bad
    );
    if checkpoints > 0 {
        println!(
            "verified {checkpoints} resume checkpoints: {} ok, {damaged} damaged (a run trains those stages from the start)",
            checkpoints - damaged
        );
    }
    Ok(if bad + damaged > 0 { 1 } else { 0 })
}

/// The resume checkpoints under CACHE/resume/KEY/ checked against their
/// manifests; each damaged one is named. (checked, damaged)
fn verify_checkpoints(store: &Store) -> (usize, usize) {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(store.root.join("resume"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let (mut n, mut damaged) = (0, 0);
    for d in dirs {
        n += std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .count();
        for (f, why) in mrbm_core::resume::verify_dir(&d) {
            println!("damaged checkpoint {}: {why}", f.display());
            damaged += 1;
        }
    }
    (n, damaged)
}

/// `mrbm params KIND`.
fn params(reg: &Registry, kind: &str) -> Result<u8, RunnerError> {
    let Some(text) = reg.describe_params(kind) else {
        let help = match mrbm_stage::nearest(kind, reg.kinds()) {
            Some(n) => format!("did you mean `{n}`? "),
            None => String::new(),
        };
        return Err(RunnerError::Usage(format!(
            "no stage kind `{kind}`\n  help: {help}the kinds: {} (see `mrbm kinds`)",
            reg.kinds().collect::<Vec<_>>().join(", ")
        )));
    };
    print!("{text}");
    Ok(0)
}

/// `mrbm run`: the run resolved once (executor, device, cache, jobs), run,
/// then recorded and reported.
fn run(reg: &Registry, select: &Select, a: &RunArgs) -> Result<u8, RunnerError> {
    let t0 = Instant::now();
    let built = select::build(&select.selection(), reg)?;
    let plan = RunPlan::resolve(a, built, reg, &select.file)?;
    let RunOutcome { results, note } = plan.run(reg)?;
    let dag = &plan.dag;
    let request = history::Request {
        file: select.file.clone(),
        profile: plan.profile.clone(),
        sets: select.set.clone(),
        sweeps: select.sweep.clone(),
        device: plan.placement.recorded.clone(),
        sources: plan.sources.clone(),
        interrupted: plan.interrupted(),
    };
    let run = history::record(dag, &results, &request);
    history::save(&plan.store, &run)?;
    print!("{}", summary::tables(dag, &results));
    let seconds = t0.elapsed().as_secs_f64();
    summary::print_summary(dag, &results, &plan.store, seconds, &plan.placement.shown);
    if let Some(note) = note {
        println!("{note}");
    }
    println!("recorded as run {} (mrbm runs, mrbm compare)", run.id);
    if plan.interrupted() {
        return Err(RunnerError::Interrupted);
    }
    Ok(summary::exit_code(&results))
}

fn show(cli: &Cli, what: &str) -> Result<u8, RunnerError> {
    let root = cache_dir(&cli.cache, &std::env::current_dir().unwrap_or_default());
    let store = Store::open(&root)?;
    let keys = store.keys();
    let mut key = keys
        .iter()
        .find(|k| k.starts_with(what) && what.len() >= 6)
        .cloned();
    if key.is_none() {
        // Look the id up in the records of past runs.
        if let Ok(rd) = std::fs::read_dir(root.join("runs")) {
            for e in rd.flatten() {
                let rec: RunRecord = std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                if let Some(r) = rec.stages.get(what) {
                    key = Some(r.key.clone());
                } else if let Some((_, r)) = rec
                    .stages
                    .iter()
                    .find(|(id, _)| id.split('[').next() == Some(what))
                {
                    key = Some(r.key.clone());
                }
            }
        }
    }
    let Some(key) = key else {
        return Err(RunnerError::Usage(format!("`{what}` is neither a key in {} nor a stage id of a past run (run the experiment first)", root.display())));
    };
    if !store.has(&key) {
        return Err(RunnerError::Usage(format!(
            "`{what}` last ran as {key}, which is no longer in the cache"
        )));
    }
    let bytes = std::fs::read(store.entry_dir(&key).join("manifest.json"))
        .map_err(|e| RunnerError::cache(store.entry_dir(&key), e))?;
    println!("{}", String::from_utf8_lossy(&bytes));
    println!("entry: {}", store.entry_dir(&key).display());
    Ok(0)
}

/// The cache `runs`, `compare` and `show` read: --cache, MRBM_CACHE or ./.mrbm.
fn existing_cache(cli: &Cli) -> Result<Store, RunnerError> {
    let root = cache_dir(&cli.cache, &std::env::current_dir().unwrap_or_default());
    if !root.is_dir() {
        return Err(RunnerError::Usage(format!(
            "no cache at {} (run from the project root, or use --cache DIR)",
            root.display()
        )));
    }
    Store::open(&root)
}

fn runs(
    cli: &Cli,
    experiment: Option<&str>,
    pin: Option<&str>,
    unpin: Option<&str>,
    csv: bool,
) -> Result<u8, RunnerError> {
    let store = existing_cache(cli)?;
    if let Some(p) = pin.or(unpin) {
        let run = history::set_pin(&store, p, pin.is_some())?;
        println!(
            "{} run {} ({}, {})",
            if pin.is_some() { "pinned" } else { "unpinned" },
            run.id,
            run.experiment,
            run.time
        );
        return Ok(0);
    }
    let all = history::load_all(&store.root);
    let list: Vec<&history::Run> = all
        .iter()
        .filter(|r| experiment.is_none_or(|e| history::matches(r, e)))
        .collect();
    if list.is_empty() {
        return Err(RunnerError::Usage(match experiment {
            Some(e) => format!(
                "no recorded run of `{e}` in {} (experiments with runs: {})",
                store.root.display(),
                all.iter()
                    .map(|r| r.experiment.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!("no recorded runs in {}", store.root.display()),
        }));
    }
    let (rows, hidden) = history::list_rows(&list);
    if csv {
        print!("{}", history::to_csv(&rows));
    } else {
        print!("{}", table::render_aligned(&rows));
        if hidden > 0 {
            println!("({hidden} more metrics: mrbm compare RUN RUN)");
        }
    }
    Ok(0)
}

fn compare(
    cli: &Cli,
    ids: &[String],
    csv: bool,
    all_metrics: bool,
    only_params: bool,
) -> Result<u8, RunnerError> {
    let store = existing_cache(cli)?;
    for id in ids {
        history::refuse_unreadable(&store.root, id)?;
    }
    let all = history::load_all(&store.root);
    let mut picked = ids
        .iter()
        .map(|p| history::find(&all, p))
        .collect::<Result<Vec<_>, _>>()?;
    if let [one] = picked[..] {
        let before = rundiff::previous(&all, one)?;
        eprintln!(
            "comparing run {} with the run of {} before it, {} ({}); give two or more ids to choose",
            one.id, one.experiment, before.id, before.time
        );
        picked.insert(0, before);
    }
    let rows = if only_params {
        rundiff::params_diff_rows(&picked)
    } else {
        history::compare_rows(&picked, all_metrics)
    };
    if csv {
        print!("{}", history::to_csv(&rows));
    } else if only_params && rows.len() == 1 && rundiff::no_params_note(&picked).is_none() {
        println!(
            "no parameter differs between runs {}",
            picked
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        print!("{}", table::render_aligned(&rows));
    }
    if let Some(note) = rundiff::no_params_note(&picked) {
        eprintln!("note: {note}");
    }
    Ok(0)
}
