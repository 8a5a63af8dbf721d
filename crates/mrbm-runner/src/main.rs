//! `mrbm`: declare an experiment in TOML, run it, rerun only what changed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{CommandFactory, Parser, Subcommand};
use mrbm_runner::config::{self, parse_set};
use mrbm_runner::dag::{self, Dag, Overrides};
use mrbm_runner::exec::{self, RunOptions, Status};
use mrbm_runner::hashing::Memo;
use mrbm_runner::history;
use mrbm_runner::plan;
use mrbm_runner::registry::Registry;
use mrbm_runner::store::Store;
use mrbm_runner::table;
use mrbm_runner::{device, output, RunnerError};

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
    Compare {
        /// Two or more run ids (or unique prefixes), from `mrbm runs`.
        #[arg(required = true, num_args = 2..)]
        runs: Vec<String>,
        /// CSV instead of an aligned table.
        #[arg(long)]
        csv: bool,
        /// Every metric of the tables' stages, not only those the tables show.
        #[arg(long)]
        all_metrics: bool,
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

/// The DAG, the experiment's `device` and the profile in effect (--profile
/// or the experiment's default_profile).
fn build_dag(
    select: &Select,
    reg: &Registry,
) -> Result<(Dag, Option<String>, Option<String>), RunnerError> {
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
    let device = exp.file.device.clone();
    let profile = ov.profile.clone().or(exp.file.default_profile.clone());
    Ok((dag::build(&exp, reg, &ov)?, device, profile))
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
        } => {
            let t0 = Instant::now();
            let (dag, file_device, profile) = build_dag(select, &reg)?;
            let spec = dev_flag
                .clone()
                .or(file_device)
                .unwrap_or_else(|| "auto".into());
            let device = device::resolve(&spec)?;
            let store = Store::open(&cache_dir(&cli.cache, &dag.project_root))?;
            // Shared with other runs; `mrbm gc` waits for it.
            let _in_use = store.use_guard(false, &|| {
                eprintln!(
                    "waiting for `mrbm gc` to finish with {}",
                    store.root.display()
                )
            })?;
            store.clean_stale();
            let memo = Memo::load(&store.root);
            let cancel = Arc::new(AtomicBool::new(false));
            {
                let c = cancel.clone();
                let _ = ctrlc::set_handler(move || {
                    if c.swap(true, Ordering::SeqCst) {
                        // Second Ctrl-C: leave now. Temporary entries are never
                        // trusted and our locks die with us, so the cache stays consistent.
                        eprintln!("\ninterrupted again: exiting");
                        std::process::exit(130);
                    }
                    eprintln!("\ninterrupt: finishing nothing new, cleaning up (Ctrl-C again to quit now)");
                });
            }
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            // On a terminal: bars. Otherwise the bars are kept hidden and a
            // line per running stage is printed every --progress-interval.
            let progress = if *quiet {
                None
            } else if std::io::stderr().is_terminal() {
                let m = indicatif::MultiProgress::new();
                output::set_display(&m);
                Some(m)
            } else {
                Some(indicatif::MultiProgress::with_draw_target(
                    indicatif::ProgressDrawTarget::hidden(),
                ))
            };
            let _ticker = progress.as_ref().filter(|m| m.is_hidden()).map(|_| {
                output::Ticker::start(std::time::Duration::from_secs_f64(*progress_interval))
            });
            let opts = RunOptions {
                jobs: jobs.unwrap_or(threads.min(4)),
                keep_going: *keep_going,
                device,
                threads,
                progress,
            };
            let results = exec::execute(&dag, &reg, &store, &memo, &opts, &cancel);
            drop(_ticker);
            let (entries, bytes, took) = mrbm_runner::integrity::stats();
            tracing::info!(
                "integrity: checked {entries} cached entries ({:.1} MB) against their manifests in {:.1} ms",
                bytes as f64 / 1e6,
                took.as_secs_f64() * 1e3
            );
            memo.save()?;
            exec::save_record(&store, &dag, &results)?;
            let run = history::record(
                &dag,
                &results,
                &history::Request {
                    file: select.file.clone(),
                    profile,
                    sets: select.set.clone(),
                    sweeps: select.sweep.clone(),
                    device: device.to_string(),
                },
            );
            history::save(&store, &run)?;
            // Tables, printed aligned.
            for (node, r) in dag.nodes.iter().zip(&results) {
                if node.kind == "table" && r.status.ok() {
                    if let Some((_, dest)) = node.publish.first() {
                        if let Ok(bytes) = std::fs::read(dest) {
                            println!(
                                "\n{} ({})",
                                node.id.trim_start_matches("table:"),
                                rel(dest, &dag.project_root)
                            );
                            print!("{}", table::render_aligned(&table::read_csv(&bytes)));
                        }
                    }
                }
            }
            print_summary(&dag, &results, &store, t0.elapsed().as_secs_f64(), device);
            println!("recorded as run {} (mrbm runs, mrbm compare)", run.id);
            if cancel.load(Ordering::Relaxed) {
                return Err(RunnerError::Interrupted);
            }
            let failed: Vec<&Status> = results
                .iter()
                .map(|r| &r.status)
                .filter(|s| matches!(s, Status::Failed { .. }))
                .collect();
            if failed.is_empty() {
                Ok(0)
            } else if failed
                .iter()
                .all(|s| matches!(s, Status::Failed { user: true, .. }))
            {
                Ok(2)
            } else {
                Ok(1)
            }
        }
        Command::Plan { select } => {
            let (dag, _, _) = build_dag(select, &reg)?;
            let store = Store::open(&cache_dir(&cli.cache, &dag.project_root))?;
            let memo = Memo::load(&store.root);
            let lines = plan::plan(&dag, &store, &memo)?;
            print!("{}", plan::render(&lines));
            memo.save()?;
            Ok(0)
        }
        Command::Dag { select, dot } => {
            let (dag, _, _) = build_dag(select, &reg)?;
            print!(
                "{}",
                if *dot {
                    render_dot(&dag)
                } else {
                    render_dag_text(&dag)
                }
            );
            Ok(0)
        }
        Command::Show { what } => show(&cli, what),
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
        } => compare(&cli, ids, *csv, *all_metrics),
        Command::Report {
            run,
            out,
            loss_scale,
        } => mrbm_runner::report::command(
            &existing_cache(&cli)?,
            &mrbm_runner::report::ReportRequest {
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
        } => gc(
            &cli,
            &reg,
            *dry_run,
            *keep_runs,
            project.clone(),
            data_root.clone(),
            *force,
        ),
        Command::Verify => {
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
            println!("verified {n} entries: {} ok, {bad} corrupt; removed {stale} stale temporary files or locks", n - bad);
            Ok(if bad > 0 { 1 } else { 0 })
        }
        Command::Devices { check } => device::print_devices(*check),
        Command::Kinds => {
            print!("{}", reg.describe_kinds());
            Ok(0)
        }
        Command::Params { kind } => match reg.describe_params(kind) {
            Some(text) => {
                print!("{text}");
                Ok(0)
            }
            None => {
                let help = match mrbm_stage::nearest(kind, reg.kinds()) {
                    Some(n) => format!("did you mean `{n}`? "),
                    None => String::new(),
                };
                Err(RunnerError::Usage(format!(
                    "no stage kind `{kind}`\n  help: {help}the kinds: {} (see `mrbm kinds`)",
                    reg.kinds().collect::<Vec<_>>().join(", ")
                )))
            }
        },
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "mrbm", &mut std::io::stdout());
            Ok(0)
        }
    }
}

fn rel(p: &Path, root: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// The summary fits in this many columns (stage ids are shortened).
const SUMMARY_WIDTH: usize = 100;
/// Warnings listed per stage in the summary; the rest are in its log.
const WARNINGS_SHOWN: usize = 5;

fn print_summary(
    dag: &Dag,
    results: &[exec::NodeResult],
    store: &Store,
    total: f64,
    device: mrbm_stage::Device,
) {
    print!("{}", summary_table(dag, results));
    let count = |f: &dyn Fn(&Status) -> bool| results.iter().filter(|r| f(&r.status)).count();
    println!(
        "{} ran, {} cached, {} failed, {} skipped in {total:.2}s on {device} (cache {})",
        count(&|s| matches!(s, Status::Ran)),
        count(&|s| matches!(s, Status::Cached)),
        count(&|s| matches!(s, Status::Failed { .. })),
        count(&|s| matches!(s, Status::Skipped { .. } | Status::Cancelled)),
        store.root.display()
    );
    print!("{}", summary_warnings(dag, results));
    for (node, r) in dag.nodes.iter().zip(results) {
        if let Status::Failed { message, .. } = &r.status {
            eprintln!("\nerror: {} failed: {message}", node.id);
            if let Some(l) = &r.log {
                eprintln!("  log: {}", l.display());
            }
        }
    }
}

/// Stage, status, seconds and a short key (`mrbm show KEY` gives the
/// entry's paths), within SUMMARY_WIDTH columns.
fn summary_table(dag: &Dag, results: &[exec::NodeResult]) -> String {
    let key_w = 12;
    let secs: Vec<String> = results
        .iter()
        .map(|r| format!("{:.2}", r.seconds))
        .collect();
    let secs_w = secs.iter().map(String::len).max().unwrap_or(0).max(7);
    // stage  status(9)  seconds  key
    let id_w = SUMMARY_WIDTH
        .saturating_sub(2 + 9 + 2 + secs_w + 2 + key_w)
        .max(10);
    let mut rows = vec![vec![
        "stage".to_string(),
        "status".into(),
        "seconds".into(),
        "key".into(),
    ]];
    for ((node, r), sec) in dag.nodes.iter().zip(results).zip(secs) {
        let key = r
            .key
            .as_deref()
            .map(|k| k.chars().take(key_w).collect())
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            shorten(&node.id, id_w),
            r.status.word().into(),
            sec,
            key,
        ]);
    }
    format!("\n{}", table::render_aligned(&rows))
}

/// `s` cut to `w` characters, the middle replaced by `..`.
fn shorten(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    let head = (w - 2) / 2;
    let tail = w - 2 - head;
    let chars: Vec<char> = s.chars().collect();
    format!(
        "{}..{}",
        chars[..head].iter().collect::<String>(),
        chars[n - tail..].iter().collect::<String>()
    )
}

/// The warnings in the logs of the stages of this run, per stage.
fn summary_warnings(dag: &Dag, results: &[exec::NodeResult]) -> String {
    let mut s = String::new();
    for (node, r) in dag.nodes.iter().zip(results) {
        let Some(text) = r.log.as_ref().and_then(|l| std::fs::read_to_string(l).ok()) else {
            continue;
        };
        let w = output::warnings_in_log(&text);
        if w.is_empty() {
            continue;
        }
        if s.is_empty() {
            s.push_str("\nwarnings:\n");
        }
        s.push_str(&format!(
            "  {}{}:\n",
            node.id,
            if r.status == Status::Cached {
                " (cached)"
            } else {
                ""
            }
        ));
        for line in w.iter().take(WARNINGS_SHOWN) {
            s.push_str(&format!("    {line}\n"));
        }
        if w.len() > WARNINGS_SHOWN {
            s.push_str(&format!(
                "    and {} more in its log (mrbm show {})\n",
                w.len() - WARNINGS_SHOWN,
                r.key
                    .as_deref()
                    .map(|k| &k[..k.len().min(12)])
                    .unwrap_or(&node.id)
            ));
        }
    }
    s
}

fn render_dag_text(dag: &Dag) -> String {
    let mut s = String::new();
    for n in &dag.nodes {
        let ins: Vec<String> = n
            .inputs
            .iter()
            .map(|i| match &i.source {
                dag::InputSource::Node { node, file } => format!(
                    "{}={}{}",
                    i.slot,
                    dag.nodes[*node].id,
                    file.as_ref().map(|f| format!("/{f}")).unwrap_or_default()
                ),
                dag::InputSource::External { path, .. } => format!("{}={}", i.slot, path.display()),
            })
            .collect();
        s.push_str(&format!(
            "{} ({}){}\n",
            n.id,
            n.kind,
            if ins.is_empty() {
                String::new()
            } else {
                format!(" <- {}", ins.join(", "))
            }
        ));
    }
    s
}

fn render_dot(dag: &Dag) -> String {
    let mut s = String::from(
        "digraph mrbm {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    for (i, n) in dag.nodes.iter().enumerate() {
        s.push_str(&format!(
            "  n{i} [label=\"{}\\n({})\"];\n",
            n.id.replace('"', "\\\""),
            n.kind
        ));
    }
    for (i, n) in dag.nodes.iter().enumerate() {
        for inp in &n.inputs {
            match &inp.source {
                dag::InputSource::Node { node, .. } => {
                    s.push_str(&format!("  n{node} -> n{i} [label=\"{}\"];\n", inp.slot))
                }
                dag::InputSource::External { path, .. } => s.push_str(&format!(
                    "  \"{}\" [shape=folder];\n  \"{}\" -> n{i} [label=\"{}\"];\n",
                    path.display(),
                    path.display(),
                    inp.slot
                )),
            }
        }
    }
    s.push_str("}\n");
    s
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
                let rec: exec::RunRecord = std::fs::read(e.path())
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

fn compare(cli: &Cli, ids: &[String], csv: bool, all_metrics: bool) -> Result<u8, RunnerError> {
    let store = existing_cache(cli)?;
    let all = history::load_all(&store.root);
    let picked = ids
        .iter()
        .map(|p| history::find(&all, p))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = history::compare_rows(&picked, all_metrics);
    if csv {
        print!("{}", history::to_csv(&rows));
    } else {
        print!("{}", table::render_aligned(&rows));
    }
    Ok(0)
}

fn gc(
    cli: &Cli,
    reg: &Registry,
    dry_run: bool,
    keep_runs: usize,
    project: Option<PathBuf>,
    data_root: Option<PathBuf>,
    force: bool,
) -> Result<u8, RunnerError> {
    let project = project.unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
    let root = cache_dir(&cli.cache, &project);
    let store = Store::open(&root)?;
    // Exclusive: no run is using the cache while gc decides and deletes.
    let _guard = store.use_guard(true, &|| {
        eprintln!(
            "waiting for the runs using {} to finish before collecting",
            store.root.display()
        )
    })?;
    let memo = Memo::load(&store.root);
    let mut keep = std::collections::BTreeSet::new();
    let exp_dir = project.join("experiments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&exp_dir)
        .map_err(|e| {
            RunnerError::Usage(format!(
                "{}: {e} (run gc from the project root or pass --project)",
                exp_dir.display()
            ))
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut problems = Vec::new();
    for f in files {
        let exp = match config::load(&f) {
            Ok(e) => e,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let mut profiles: Vec<Option<String>> = vec![None];
        profiles.extend(exp.file.profiles.keys().cloned().map(Some));
        for p in profiles {
            let ov = Overrides {
                profile: p.clone(),
                data_root: data_root.clone(),
                ..Default::default()
            };
            match dag::build(&exp, reg, &ov) {
                Ok(dag) => {
                    for l in plan::plan(&dag, &store, &memo)? {
                        if let Some(k) = l.key {
                            keep.insert(k);
                        }
                    }
                }
                Err(e) => problems.push(match &p {
                    Some(p) => format!("{e} (profile `{p}`)"),
                    None => e.to_string(),
                }),
            }
        }
    }
    if !problems.is_empty() {
        let list = problems
            .iter()
            .map(|p| format!("  {}", p.replace('\n', "\n  ")))
            .collect::<Vec<_>>()
            .join("\n");
        if !force {
            return Err(RunnerError::Usage(format!(
                "gc: {} experiment(s) under {} do not load, so what they use is unknown; nothing was deleted:\n{list}\n  help: fix them (a `data:` input needs --data-root or MRBM_DATA), or pass --force to delete what only they use",
                problems.len(),
                exp_dir.display()
            )));
        }
        eprintln!("warning: --force: collecting although these do not load:\n{list}");
    }
    // The entries of the last runs of each experiment and of pinned runs.
    let from_runs = history::kept_keys(&history::load_all(&store.root), keep_runs);
    let by_runs = from_runs.difference(&keep).count();
    keep.extend(from_runs);
    let stale = if dry_run { 0 } else { store.clean_stale() };
    let mut removed = 0u64;
    let mut bytes = 0u64;
    let mut busy = 0u64;
    for k in store.keys() {
        if !keep.contains(&k) {
            // An entry whose key is locked is being written or replaced: leave it.
            let Some(lock) = store.try_lock(&k)? else {
                busy += 1;
                println!("in use {k} (locked by a running stage): kept");
                continue;
            };
            let dir = store.entry_dir(&k);
            let size: u64 = walkdir::WalkDir::new(&dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum();
            let id = store.manifest(&k).map(|m| m.stage_id).unwrap_or_default();
            println!(
                "{} {k} {id} ({:.1} MB)",
                if dry_run { "would remove" } else { "removed" },
                size as f64 / 1e6
            );
            if !dry_run {
                // Rename first so a concurrent reader never sees a half-deleted entry.
                let trash = store
                    .root
                    .join("tmp")
                    .join(format!("gc-{k}.{}", std::process::id()));
                std::fs::rename(&dir, &trash).map_err(|e| RunnerError::cache(&dir, e))?;
                let _ = std::fs::remove_dir_all(&trash);
            }
            drop(lock);
            removed += 1;
            bytes += size;
        }
    }
    println!(
        "{} {removed} entries ({:.1} MB); kept {} ({by_runs} only for the last {keep_runs} runs or pinned runs){}; {stale} stale files cleaned",
        if dry_run { "would remove" } else { "removed" },
        bytes as f64 / 1e6,
        keep.len(),
        if busy > 0 {
            format!(" and {busy} in use")
        } else {
            String::new()
        }
    );
    Ok(0)
}
