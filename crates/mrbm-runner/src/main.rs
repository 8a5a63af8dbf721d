//! `mrbm`: declare an experiment in TOML, run it, rerun only what changed.
//!
//! This file only maps command-line arguments onto the runner's phases:
//! `load::config::load` -> `plan::build` (the plan) -> `Session` (`plan`, `run`)
//! -> `report`. See ARCHITECTURE.md.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{CommandFactory, Parser, Subcommand};
use mrbm_runner::key::preview;
use mrbm_runner::key::record::RunRecord;
use mrbm_runner::kinds::registry::Registry;
use mrbm_runner::kinds::table;
use mrbm_runner::load::config::{self, parse_set};
use mrbm_runner::load::executor::ExecutorDecl;
use mrbm_runner::ops::gc::{self, GcOptions};
use mrbm_runner::plan::{self, Dag, Overrides};
use mrbm_runner::report::{history, rundiff, summary};
use mrbm_runner::run::exec::{self, RunOptions};
use mrbm_runner::run::executors::slurm;
use mrbm_runner::run::job::{NodeResult, Status};
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
    cli_cache
        .clone()
        .or_else(|| std::env::var_os("MRBM_CACHE").map(PathBuf::from))
        .unwrap_or_else(|| project_root.join(".mrbm"))
}

/// What `build_dag` gives: the plan and the experiment's own run settings.
struct Built {
    dag: Dag,
    /// The experiment's `device` key (`--device` overrides it).
    device: Option<device::DeviceKey>,
    /// The profile in effect: --profile, or the experiment's default_profile.
    profile: Option<String>,
    /// The experiment's `[executor]` (the --executor flag overrides it).
    executor: Option<ExecutorDecl>,
    /// blake3 of the experiment file (and its pipeline), by path.
    sources: std::collections::BTreeMap<String, String>,
}

/// Load and expand the selected experiment.
fn build_dag(select: &Select, reg: &Registry) -> Result<Built, RunnerError> {
    if !select.file.is_file() {
        return Err(RunnerError::Usage(format!(
            "{}: no such file",
            select.file.display()
        )));
    }
    let exp = config::load(&select.file)?;
    let sets = select
        .set
        .iter()
        .map(|s| parse_set(s))
        .collect::<Result<Vec<_>, _>>()?;
    let sweeps = select
        .sweep
        .iter()
        .map(|s| config::parse_sweep(s))
        .collect::<Result<Vec<_>, _>>()?;
    let ov = Overrides {
        sets,
        sweeps,
        force_override: select.force_override,
        profile: select.profile.clone(),
        data_root: select.data_root.clone(),
    };
    let device = exp.file.device.clone().map(|spec| {
        let (line, col) = exp
            .source
            .span_of(&["device"])
            .map(|s| exp.source.line_col(s.start))
            .unwrap_or((0, 0));
        device::DeviceKey {
            spec,
            file: exp.source.path.clone(),
            line,
            col,
        }
    });
    let sources = std::iter::once(&exp.source)
        .chain(exp.pipeline_source.as_ref())
        .map(|s| {
            (
                s.path.display().to_string(),
                blake3::hash(s.text.as_bytes()).to_hex().to_string(),
            )
        })
        .collect();
    let mut dag = plan::build(&exp, reg, &ov)?;
    if !select.stages.is_empty() {
        dag = mrbm_runner::plan::targets::select(&dag, &select.stages)?;
    }
    Ok(Built {
        dag,
        device,
        profile: ov.profile.clone().or(exp.file.default_profile.clone()),
        executor: exp.file.executor.clone(),
        sources,
    })
}

fn dispatch(cli: Cli) -> Result<u8, RunnerError> {
    let reg = Registry::builtin();
    match &cli.command {
        Command::Run {
            select,
            jobs,
            keep_going,
            device: dev_flag,
            quiet,
            progress_interval,
            executor,
            mrbm,
            force,
        } => run(
            &cli,
            &reg,
            select,
            &RunArgs {
                jobs: *jobs,
                keep_going: *keep_going,
                device: dev_flag.clone(),
                quiet: *quiet,
                progress_interval: *progress_interval,
                executor: executor.clone(),
                mrbm: mrbm.clone(),
                force: force.clone(),
            },
        ),
        Command::Plan { select } => {
            let dag = build_dag(select, &reg)?.dag;
            let store = Store::open(&cache_dir(&cli.cache, &dag.project_root))?;
            let memo = Memo::load(&store.root);
            let lines = Session::new(&reg, &store, &memo).plan(&dag)?;
            print!("{}", preview::render(&lines));
            memo.save()?;
            Ok(0)
        }
        Command::Dag { select, dot } => {
            let dag = build_dag(select, &reg)?.dag;
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
        Command::ExecStage { key, device } => exec_stage(&cli, &reg, key, device),
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
            let select = Select {
                file: file.clone(),
                stages: a.stages.clone(),
                set: a.set.clone(),
                sweep: a.sweep.clone(),
                force_override: false,
                profile: a.profile.clone(),
                data_root: a.data_root.clone(),
            };
            let dag = build_dag(&select, reg)?.dag;
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

/// What `mrbm run` was asked, besides the experiment.
struct RunArgs {
    jobs: Option<usize>,
    keep_going: bool,
    device: Option<String>,
    quiet: bool,
    progress_interval: f64,
    executor: Option<String>,
    mrbm: Option<PathBuf>,
    force: Vec<String>,
}

/// Where the stages of a run go: this machine's threads, or Slurm.
enum Target {
    Local,
    Slurm(Box<mrbm_runner::load::executor::SlurmOptions>),
}

/// The executor asked for (--executor, else the experiment's `[executor]`).
fn target(select: &Select, a: &RunArgs, decl: Option<ExecutorDecl>) -> Result<Target, RunnerError> {
    let decl = decl.unwrap_or_default();
    match a.executor.as_deref().or(decl.kind.as_deref()) {
        None | Some("local") => Ok(Target::Local),
        Some("slurm") => {
            let mut o = decl.slurm;
            if a.mrbm.is_some() {
                o.mrbm = a.mrbm.clone();
            }
            if let Some(j) = a.jobs {
                o.max_jobs = Some(j);
            }
            Ok(Target::Slurm(Box::new(o)))
        }
        Some(other) => Err(RunnerError::Usage(format!(
            "{}: [executor] kind = \"{other}\": the executors are `local` and `slurm`",
            select.file.display()
        ))),
    }
}

/// `mrbm run`: expand, resolve the device, run the plan in a session, then
/// record and report.
fn run(cli: &Cli, reg: &Registry, select: &Select, a: &RunArgs) -> Result<u8, RunnerError> {
    let t0 = Instant::now();
    let Built {
        dag,
        device: file_device,
        profile,
        executor: file_executor,
        sources,
    } = build_dag(select, reg)?;
    // --device wins over the file's key; an error from the key names its line.
    let from_file = file_device.filter(|_| a.device.is_none());
    let spec = a
        .device
        .clone()
        .or(from_file.as_ref().map(|k| k.spec.clone()))
        .unwrap_or_else(|| "auto".into());
    let target = target(select, a, file_executor)?;
    // On Slurm the nodes resolve the device: the machine that plans (a
    // login node) may have no GPU.
    let (device, where_, recorded) = match &target {
        Target::Local => {
            let d = match &from_file {
                Some(key) => device::resolve_key(key)?,
                None => device::resolve(&spec)?,
            };
            let name = d.to_string();
            (d, name.clone(), name)
        }
        Target::Slurm(_) => (
            mrbm_stage::Device::cpu(),
            format!("Slurm (device {spec} on the nodes)"),
            format!("slurm:{spec}"),
        ),
    };
    let store = Store::open(&cache_dir(&cli.cache, &dag.project_root))?;
    store.check_writable()?;
    // Shared with other runs; `mrbm gc` waits for it.
    let _in_use = store.use_guard(false, &|| {
        eprintln!(
            "waiting for `mrbm gc` to finish with {}",
            store.root.display()
        )
    })?;
    store.clean_stale();
    let memo = Memo::load(&store.root);
    let cancel = cancel_on_interrupt();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let progress = progress_display(a.quiet);
    let ticker = progress
        .as_ref()
        .filter(|m| m.is_hidden())
        .map(|_| output::Ticker::start(std::time::Duration::from_secs_f64(a.progress_interval)));
    let opts = RunOptions {
        jobs: a.jobs.unwrap_or(threads.min(4)),
        keep_going: a.keep_going,
        device,
        threads,
        progress,
        force: mrbm_runner::plan::targets::forced(&dag, &a.force)?,
    };
    if matches!(target, Target::Local) {
        // Sizes from parameters alone, before any stage starts.
        mrbm_runner::plan::prechecks::memory(reg, &dag)?;
    }
    let session = Session::new(reg, &store, &memo);
    let (results, timings) = match target {
        Target::Local => (session.run(&dag, &opts, &cancel), Vec::new()),
        Target::Slurm(o) => run_on_slurm(cli, &session, &dag, &opts, &cancel, *o, &spec)?,
    };
    drop(ticker);
    let (entries, bytes, took) = mrbm_runner::store::integrity::stats();
    tracing::info!(
        "integrity: checked {entries} cached entries ({:.1} MB) against their manifests in {:.1} ms",
        bytes as f64 / 1e6,
        took.as_secs_f64() * 1e3
    );
    memo.save()?;
    exec::save_record(&store, &dag, &results)?;
    let request = history::Request {
        file: select.file.clone(),
        profile,
        sets: select.set.clone(),
        sweeps: select.sweep.clone(),
        device: recorded,
        sources,
        interrupted: cancel.load(Ordering::Relaxed),
    };
    let run = history::record(&dag, &results, &request);
    history::save(&store, &run)?;
    print!("{}", summary::tables(&dag, &results));
    summary::print_summary(&dag, &results, &store, t0.elapsed().as_secs_f64(), &where_);
    if !timings.is_empty() {
        println!("{}", slurm::timing_summary(&timings));
    }
    println!("recorded as run {} (mrbm runs, mrbm compare)", run.id);
    if cancel.load(Ordering::Relaxed) {
        return Err(RunnerError::Interrupted);
    }
    Ok(summary::exit_code(&results))
}

/// The session's plan run through the Slurm executor; with its jobs' timings.
#[allow(clippy::type_complexity)]
fn run_on_slurm(
    cli: &Cli,
    session: &Session,
    dag: &Dag,
    opts: &RunOptions,
    cancel: &AtomicBool,
    o: mrbm_runner::load::executor::SlurmOptions,
    spec: &str,
) -> Result<(Vec<NodeResult>, Vec<slurm::JobTiming>), RunnerError> {
    if !slurm::available() {
        return Err(RunnerError::Usage(
            "--executor slurm: no Slurm controller answers `sinfo` here (is this a Slurm login node?)\n  help: run without --executor slurm (or with --executor local)".into(),
        ));
    }
    let say: Box<dyn Fn(String)> = match &opts.progress {
        Some(m) if !m.is_hidden() => {
            let m = m.clone();
            Box::new(move |line: String| {
                let _ = m.println(line);
            })
        }
        _ => Box::new(|line: String| eprintln!("{line}")),
    };
    let mut ex = slurm::SlurmExecutor::new(session.store, o, spec, cli.verbose, say)?;
    let r = session.run_on(&mut ex, dag, opts, cancel);
    Ok((r, ex.timings().to_vec()))
}

/// A flag Ctrl-C (or SIGTERM, SIGHUP) sets; a second one exits at once.
fn cancel_on_interrupt() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if c.swap(true, Ordering::SeqCst) {
            // Second Ctrl-C: leave now. Our Slurm jobs go too.
            // Command stages' process groups are killed, and this
            // process's temporary folders and locks removed, first.
            slurm::scancel(&slurm::in_flight_ids());
            eprintln!("\ninterrupted again: exiting");
            mrbm_runner::sys::abort::exit_now(130);
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

/// `mrbm exec-stage --cache DIR KEY`: what a Slurm job runs on its node.
/// It reads the job the planner wrote into the shared cache and runs it
/// with the same lock, temporary folder and atomic publish as a local run.
/// Exit status: 0 published (or already there), 1 the stage failed, 2 a
/// user error, 130 cancelled (scancel sends SIGTERM).
fn exec_stage(cli: &Cli, reg: &Registry, key: &str, spec: &str) -> Result<u8, RunnerError> {
    use mrbm_runner::key::job::StageJob;
    use mrbm_runner::run::worker::{run_job, Runtime};
    eprintln!(
        "{}{:.3} on {} (key {key})",
        slurm::STARTED,
        slurm::unix_now(),
        mrbm_runner::store::hostname()
    );
    let root = cli
        .cache
        .clone()
        .or_else(|| std::env::var_os("MRBM_CACHE").map(PathBuf::from))
        .ok_or_else(|| RunnerError::Usage("exec-stage needs --cache DIR".into()))?;
    let store = Store::open(&root)?;
    let mut job = StageJob::load(&StageJob::path_in(&store, key))?;
    let device = device::resolve(spec)?;
    // The threads of this node, not of the machine that planned.
    job.threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memo = Memo::load(&store.root);
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
