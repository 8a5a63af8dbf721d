//! The contract between the runner and the crates that implement stage kinds.
//!
//! The runner knows a stage kind only through the [`Stage`] trait: its name,
//! implementation version, input slots, how to canonicalise its parameters,
//! and how to run. Domain crates (mrbm-data, mrbm-core, mrbm-eval) implement
//! it next to the code it drives; the runner collects them in a registry.
//!
//! A stage writes everything it produces into `ctx.out_dir` (a temporary
//! directory that the runner publishes atomically into the cache) and returns
//! scalar metrics, which tables read. Stages never write outside `out_dir`:
//! the runner copies selected outputs to `results/` itself.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use serde_json::Value as JsonValue;

pub mod progress;

// The derive's code names `::mrbm_stage`, this crate included.
extern crate self as mrbm_stage;

/// `#[derive(ParamDocs)]` on a stage kind's params struct: each field's
/// name, type and doc comment for `mrbm params KIND` (see [`ParamDocs`]).
pub use mrbm_derive::ParamDocs;

/// One parameter of a stage kind as `mrbm params KIND` shows it: the key,
/// its Rust type and its doc comment (lines joined by spaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamDoc {
    pub name: &'static str,
    pub ty: &'static str,
    pub doc: &'static str,
}

/// The parameter docs of a params struct, from its fields' doc comments:
/// `#[derive(ParamDocs)]` writes it (a `#[serde(flatten)]` field gives the
/// fields of its own type, which derives it too).
pub trait ParamDocs {
    fn param_docs() -> Vec<ParamDoc>;
}

/// Re-exported for the runner and the stages (mrbm-device catches backend
/// panics with it).
pub use mrbm_device::panic_message;
/// The compute device: resolved once per process by mrbm-device and
/// handed to every stage in [`StageContext::device`].
pub use mrbm_device::{Device, DeviceId};

/// One named input of a stage kind.
#[derive(Debug, Clone, Copy)]
pub struct InputSlot {
    pub name: &'static str,
    /// File to take inside an upstream stage's output directory when the
    /// input names the stage alone (e.g. "data.safetensors").
    pub default_file: Option<&'static str>,
    pub required: bool,
    pub doc: &'static str,
}

impl InputSlot {
    pub const fn required(
        name: &'static str,
        default_file: Option<&'static str>,
        doc: &'static str,
    ) -> Self {
        InputSlot {
            required: true,
            ..InputSlot::optional(name, default_file, doc)
        }
    }
    pub const fn optional(
        name: &'static str,
        default_file: Option<&'static str>,
        doc: &'static str,
    ) -> Self {
        InputSlot {
            name,
            default_file,
            required: false,
            doc,
        }
    }
}

/// A parameter problem, reported by the runner with the TOML file, line and
/// column of the offending key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    /// The parameter key at fault, when one is.
    pub key: Option<String>,
    pub message: String,
    /// The nearest valid key or value, for "did you mean".
    pub suggestion: Option<String>,
}

impl ParamError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ParamError {
            key: Some(key.into()),
            message: message.into(),
            suggestion: None,
        }
    }
    pub fn with_suggestion(mut self, s: impl Into<String>) -> Self {
        self.suggestion = Some(s.into());
        self
    }
}

/// Why a stage did not complete. `User` errors (bad parameters, missing or
/// malformed data) make `mrbm` exit 2; `Failed` (NaN in training, a bug,
/// an I/O failure) exit 1. Nothing is cached either way.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    User(String),
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Cancelled,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StageError {
    pub fn user(e: impl fmt::Display) -> Self {
        StageError::User(e.to_string())
    }
    pub fn failed(e: impl fmt::Display) -> Self {
        StageError::Failed(e.to_string())
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StageError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn is_user_error(&self) -> bool {
        matches!(self, StageError::User(_))
    }
}

/// Scalar results of a stage (test error, FID, final loss...). Tables read
/// these; the runner stores them as `metrics.json` in the cache entry.
pub type Metrics = BTreeMap<String, f64>;

/// Metrics that measure time (`seconds`, `*_seconds`, `*per_second`) differ
/// from run to run: they are recorded and can be tabulated, but they are not
/// part of a stage's output hash, so a rerun that computes the same results
/// leaves the stages downstream cached. Stages put timings only here, never
/// in their other output files.
pub fn is_timing_metric(name: &str) -> bool {
    name == "seconds" || name.ends_with("_seconds") || name.ends_with("per_second")
}

/// Parameters that say how a stage runs, not what it computes (how often
/// it checkpoints): they can never change its outputs, so the runner leaves
/// them out of the stage key. A stage kind may accept any of them.
pub const RUN_ONLY_PARAMS: &[&str] = &["checkpoint_every", "checkpoint_minutes"];

/// The canonical parameters as the stage key sees them: without
/// [`RUN_ONLY_PARAMS`].
pub fn key_params(params: &JsonValue) -> JsonValue {
    match params {
        JsonValue::Object(m) => JsonValue::Object(
            m.iter()
                .filter(|(k, _)| !RUN_ONLY_PARAMS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        v => v.clone(),
    }
}

/// The cache entry behind an input that another stage produced, as the
/// runner read it from that entry's manifest: what it computed (its
/// metrics) and where, when and by what. A stage reads it with
/// [`StageContext::upstream`] and never works out the cache layout itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Upstream {
    /// Readable id of the stage that computed it, e.g. `svm[N=1]`.
    pub stage_id: String,
    pub kind: String,
    /// Its cache key.
    pub key: String,
    /// Its metrics (a NaN metric is NaN here).
    pub metrics: Metrics,
    /// The device, host and start time of the run that computed it, its
    /// duration in seconds and the tool version (`mrbm 0.1.0`).
    pub device: String,
    pub host: String,
    pub started: String,
    pub seconds: f64,
    pub tool_version: String,
    /// The executor's id of the job that computed it (a Slurm job id), if
    /// it has one.
    pub executor_job: Option<String>,
}

/// Everything a running stage may use.
pub struct StageContext<'a> {
    /// Readable id, e.g. `train[N=255,lr=0.03]`.
    pub stage_id: &'a str,
    /// Canonical parameters, as returned by [`Stage::params`].
    pub params: &'a JsonValue,
    /// Input slot name -> path (a file, or a directory for folder inputs).
    pub inputs: &'a BTreeMap<String, PathBuf>,
    /// Write all outputs here; it exists and is empty when `run` starts.
    pub out_dir: &'a Path,
    /// The device, resolved once by the runner; stages take burn's device
    /// from it (`ctx.device.burn()`).
    pub device: &'a Device,
    /// Threads this stage may use (rayon and the tensor backend).
    pub threads: usize,
    pub progress: Option<&'a indicatif::MultiProgress>,
    pub cancel: &'a AtomicBool,
    pub log: &'a Mutex<Box<dyn std::io::Write + Send>>,
    /// A folder kept across runs for this stage key (`CACHE/resume/KEY/`),
    /// where a long stage keeps checkpoints to resume from after an
    /// interruption; the runner removes it once the entry is published.
    /// None: no resuming (tests, one-off runs).
    pub resume_dir: Option<&'a Path>,
    /// Input slot -> the cache entry behind it, for the inputs that other
    /// stages produced (empty outside the runner).
    pub upstream: &'a BTreeMap<String, Upstream>,
}

/// Runs `stage` with its canonical `params` on `inputs` into `out` (made
/// first) as the runner would, but outside it: 2 threads, no progress bars,
/// a log nobody reads, no resume folder and no upstream entries. For the
/// tests of the crates that define stage kinds.
#[doc(hidden)]
pub fn run_detached(
    stage: &dyn Stage,
    params: &JsonValue,
    inputs: &[(&str, &Path)],
    out: &Path,
    device: &Device,
) -> Result<Metrics, StageError> {
    let inputs: BTreeMap<String, PathBuf> = inputs
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_path_buf()))
        .collect();
    std::fs::create_dir_all(out).map_err(|e| StageError::io(out, e))?;
    let cancel = AtomicBool::new(false);
    let log: Mutex<Box<dyn std::io::Write + Send>> = Mutex::new(Box::new(std::io::sink()));
    let ctx = StageContext {
        stage_id: stage.kind(),
        params,
        inputs: &inputs,
        out_dir: out,
        device,
        threads: 2,
        progress: None,
        cancel: &cancel,
        log: &log,
        resume_dir: None,
        upstream: &BTreeMap::new(),
    };
    stage.run(&ctx)
}

impl<'a> StageContext<'a> {
    /// Deserialize the canonical parameters into the stage's typed struct.
    pub fn typed_params<T: DeserializeOwned>(&self) -> Result<T, StageError> {
        serde_json::from_value(self.params.clone()).map_err(|e| {
            StageError::Failed(format!("internal: canonical params do not parse: {e}"))
        })
    }

    /// The path of a required input slot.
    pub fn input(&self, slot: &str) -> Result<&Path, StageError> {
        self.inputs.get(slot).map(|p| p.as_path()).ok_or_else(|| {
            StageError::User(format!("stage `{}` needs input `{slot}`", self.stage_id))
        })
    }

    pub fn optional_input(&self, slot: &str) -> Option<&Path> {
        self.inputs.get(slot).map(|p| p.as_path())
    }

    /// The cache entry behind an input slot that another stage produced;
    /// None when the slot has no entry (a table cell whose stage failed)
    /// or the input is a file of the user's.
    pub fn upstream(&self, slot: &str) -> Option<&Upstream> {
        self.upstream.get(slot)
    }

    pub fn out(&self, file: &str) -> PathBuf {
        self.out_dir.join(file)
    }

    /// Err(Cancelled) once Ctrl-C was pressed; call it between batches.
    pub fn check_cancel(&self) -> Result<(), StageError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// A progress bar under the runner's display (hidden when there is none).
    ///
    /// On a terminal it is drawn with the others; when the runner's display
    /// is hidden (no terminal) it is registered in [`progress`] and the
    /// runner prints it as a plain line every `--progress-interval`.
    pub fn bar(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        let bar = match self.progress {
            Some(m) if m.is_hidden() => {
                // Not added to the hidden display: it keeps its own clock
                // and state, which the runner reads.
                let b = indicatif::ProgressBar::with_draw_target(
                    Some(len),
                    indicatif::ProgressDrawTarget::hidden(),
                );
                progress::register(&b);
                b
            }
            Some(m) => m.add(indicatif::ProgressBar::new(len)),
            None => indicatif::ProgressBar::hidden(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(progress::bar_template(
                progress::color_enabled(),
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(self.stage_id.to_string());
        bar.set_message(what.to_string());
        bar
    }

    /// Record a warning (a model that did not converge, dead units, data
    /// skipped): it goes to the log as `warning: ...`, is printed above the
    /// progress bars (or by the runner when there is no terminal), and the
    /// end-of-run summary lists it under the stage.
    pub fn warn(&self, message: impl AsRef<str>) {
        let message = message.as_ref();
        self.log(format!("{WARNING_PREFIX}{message}"));
        match self.progress {
            // The runner echoes the log's warning lines itself.
            Some(m) if m.is_hidden() => {}
            Some(m) => {
                let _ = m.println(format!("warning: {}: {message}", self.stage_id));
            }
            None => eprintln!("warning: {}: {message}", self.stage_id),
        }
    }

    /// Append a line to this stage's log file (kept in the cache entry).
    pub fn log(&self, line: impl AsRef<str>) {
        if let Ok(mut w) = self.log.lock() {
            let _ = writeln!(w, "{}", line.as_ref());
        }
    }
}

use std::io::Write as _;

/// How a warning line starts in a stage's log (see [`StageContext::warn`]).
pub const WARNING_PREFIX: &str = "warning: ";

/// A stage kind.
pub trait Stage: Send + Sync {
    /// The `kind = "..."` name in pipeline files.
    fn kind(&self) -> &'static str;
    /// Bump whenever the outputs for the same parameters and inputs change.
    fn version(&self) -> u32;
    /// The version that keys a run with these canonical parameters: a kind
    /// whose outputs changed for some parameters only bumps those (see
    /// [`TypedStage::version_for`]), so its other cached entries stay.
    fn version_for(&self, _params: &JsonValue) -> u32 {
        self.version()
    }
    fn inputs(&self) -> &'static [InputSlot];
    /// Whether inputs under names other than [`Stage::inputs`]' are taken
    /// too, each a stage's folder (collect: any upstream's metrics, under
    /// the name the experiment gives it). Default: only the declared slots.
    fn open_inputs(&self) -> bool {
        false
    }
    /// One line saying what the kind does, for `mrbm kinds` and `mrbm
    /// params`.
    fn about(&self) -> &'static str {
        ""
    }
    /// Each parameter's key, type and doc, for `mrbm params` (see
    /// [`ParamDocs`]); empty when the kind documents none.
    fn param_docs(&self) -> Vec<ParamDoc> {
        Vec::new()
    }
    /// Validate the raw TOML parameters and return their canonical form:
    /// defaults filled in, so that writing a default explicitly changes no key.
    fn params(&self, raw: &toml::Table) -> Result<JsonValue, ParamError>;
    /// Whether it runs tensor work on the selected device (accelerator
    /// stages run one at a time per device).
    fn uses_device(&self) -> bool {
        false
    }
    /// The output file `mrbm report` draws as this stage's loss curve (a
    /// `step,loss` CSV), if any: the report asks the kind, it knows no kind.
    fn loss_curve(&self) -> Option<&'static str> {
        None
    }
    /// A friendlier message when an external input path does not exist (e.g.
    /// where a data set is published and which files were expected).
    fn missing_input_hint(&self, _params: &JsonValue, _slot: &str, _path: &Path) -> Option<String> {
        None
    }
    /// Every metric `run` may return for these canonical parameters, so
    /// that a table naming another is refused before anything runs. None:
    /// not known before it runs (the user's program decides, say).
    fn metrics(&self, _params: &JsonValue) -> Option<Vec<String>> {
        None
    }
    /// A lower bound on the memory (bytes) a run with these canonical
    /// parameters needs, from the parameters alone (inputs unknown), with
    /// what it is for; checked before any stage of the run starts, so an
    /// absurd size is refused before hours of upstream work. None: no bound.
    fn memory_floor(&self, _params: &JsonValue) -> Option<(f64, String)> {
        None
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics, StageError>;
}

/// A stage kind with typed parameters: the runner-facing [`Stage`] comes
/// from a blanket impl, which parses and canonicalises `Params` (unknown
/// keys get "did you mean"), runs [`TypedStage::validate`], and hands `run`
/// the typed parameters. Use `#[serde(default)]` on the struct and one
/// `Default` impl so that writing a default explicitly changes no key.
pub trait TypedStage: Send + Sync {
    /// The `kind = "..."` name in pipeline files.
    const KIND: &'static str;
    /// Bump whenever the outputs for the same parameters and inputs change.
    const VERSION: u32;
    /// The version for these parameters: VERSION unless a change moved the
    /// outputs of some parameters only (say which in a comment).
    fn version_for(_params: &Self::Params) -> u32 {
        Self::VERSION
    }
    const INPUTS: &'static [InputSlot];
    /// One line for `mrbm kinds`: what the kind does.
    const ABOUT: &'static str;
    /// Whether it runs tensor work on the selected device.
    const USES_DEVICE: bool = false;
    /// See [`Stage::loss_curve`].
    const LOSS_CURVE: Option<&'static str> = None;
    /// Its parameters: `#[derive(ParamDocs)]` gives `mrbm params` their
    /// doc comments.
    type Params: DeserializeOwned + Serialize + Default + ParamDocs;
    /// Every key `Params` accepts, for "did you mean" on a misspelt one.
    /// serde lists them itself for a plain struct; a `Params` that
    /// `#[serde(flatten)]`s library structs lists the union of theirs
    /// (serde cannot, see [`field_names`]).
    fn param_names() -> Vec<&'static str> {
        field_names::<Self::Params>().to_vec()
    }
    /// Checks serde cannot express (ranges, combinations).
    fn validate(_params: &Self::Params) -> Result<(), ParamError> {
        Ok(())
    }
    /// A friendlier message when an external input path does not exist
    /// (see [`Stage::missing_input_hint`]).
    fn missing_input_hint(&self, _params: &JsonValue, _slot: &str, _path: &Path) -> Option<String> {
        None
    }
    /// See [`Stage::metrics`].
    fn metrics(_params: &Self::Params) -> Option<Vec<&'static str>> {
        None
    }
    /// See [`Stage::memory_floor`].
    fn memory_floor(_params: &Self::Params) -> Option<(f64, String)> {
        None
    }
    fn run(&self, ctx: &StageContext, params: Self::Params) -> Result<Metrics, StageError>;
}

impl<T: TypedStage> Stage for T {
    fn kind(&self) -> &'static str {
        T::KIND
    }
    fn version(&self) -> u32 {
        T::VERSION
    }
    fn version_for(&self, params: &JsonValue) -> u32 {
        match serde_json::from_value::<T::Params>(params.clone()) {
            Ok(p) => T::version_for(&p),
            Err(_) => T::VERSION,
        }
    }
    fn inputs(&self) -> &'static [InputSlot] {
        T::INPUTS
    }
    fn about(&self) -> &'static str {
        T::ABOUT
    }
    fn param_docs(&self) -> Vec<ParamDoc> {
        T::Params::param_docs()
    }
    fn params(&self, raw: &toml::Table) -> Result<JsonValue, ParamError> {
        let (typed, canon) = parse_params::<T::Params>(raw).map_err(|mut e| {
            // serde names no alternatives for a struct with flattened parts:
            // the same message and suggestion as for a plain struct.
            if e.message.starts_with("unknown field") && !e.message.contains(", expected") {
                let names = T::param_names();
                if let Some(key) = &e.key {
                    e.suggestion = nearest(key, names.iter().copied()).map(str::to_string);
                }
                let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                e.message = format!("{}, expected one of {}", e.message, list.join(", "));
            }
            e
        })?;
        T::validate(&typed)?;
        Ok(canon)
    }
    fn uses_device(&self) -> bool {
        T::USES_DEVICE
    }
    fn loss_curve(&self) -> Option<&'static str> {
        T::LOSS_CURVE
    }
    fn missing_input_hint(&self, params: &JsonValue, slot: &str, path: &Path) -> Option<String> {
        TypedStage::missing_input_hint(self, params, slot, path)
    }
    fn metrics(&self, params: &JsonValue) -> Option<Vec<String>> {
        let p: T::Params = serde_json::from_value(params.clone()).ok()?;
        Some(T::metrics(&p)?.into_iter().map(str::to_string).collect())
    }
    fn memory_floor(&self, params: &JsonValue) -> Option<(f64, String)> {
        let p: T::Params = serde_json::from_value(params.clone()).ok()?;
        T::memory_floor(&p)
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics, StageError> {
        let params = ctx.typed_params::<T::Params>()?;
        TypedStage::run(self, ctx, params)
    }
}

/// Parse raw TOML parameters into `T` (which should use
/// `#[serde(deny_unknown_fields)]` and defaults) and return it with its
/// canonical JSON form. Unknown keys get the nearest valid key suggested.
pub fn parse_params<T: DeserializeOwned + Serialize>(
    raw: &toml::Table,
) -> Result<(T, JsonValue), ParamError> {
    let value = toml::Value::Table(raw.clone());
    let typed: T = T::deserialize(value).map_err(|e| {
        let mut err = param_error_from_message(e.message());
        if err.key.is_none() {
            err.key = culprit_key::<T>(raw, e.message());
        }
        err
    })?;
    let canon = canonical_json(&typed)?;
    Ok((typed, canon))
}

/// The canonical JSON form of parameters already parsed (e.g. after a
/// stage filled its defaults), as [`parse_params`] gives it.
pub fn canonical_json<T: Serialize>(typed: &T) -> Result<JsonValue, ParamError> {
    serde_json::to_value(typed).map_err(|e| ParamError {
        key: None,
        message: e.to_string(),
        suggestion: None,
    })
}

/// serde's type errors ("invalid type: string \"x\", expected f64") name no
/// key. Find it: the key whose value alone, with every other parameter at
/// its default, gives the same message. None when no single key does.
fn culprit_key<T: DeserializeOwned>(raw: &toml::Table, message: &str) -> Option<String> {
    raw.iter().find_map(|(k, v)| {
        let mut one = toml::Table::new();
        one.insert(k.clone(), v.clone());
        match T::deserialize(toml::Value::Table(one)) {
            Err(e) if e.message() == message => Some(k.clone()),
            _ => None,
        }
    })
}

/// The field names serde's derived `Deserialize` of the struct `T` accepts
/// (renames applied, fields skipped when serializing included), read from
/// the list serde hands its deserializer. Empty for anything else, e.g. a
/// struct with `#[serde(flatten)]` fields, which serde reads as a map.
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Deserializer, Error as _, Visitor};
    type E = serde::de::value::Error;
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = E;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, E> {
            Err(E::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, E> {
            *self.0 = fields;
            Err(E::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Helper for the common case `fn params(..) { canonical::<MyParams>(raw) }`.
pub fn canonical<T: DeserializeOwned + Serialize>(
    raw: &toml::Table,
) -> Result<JsonValue, ParamError> {
    parse_params::<T>(raw).map(|(_, v)| v)
}

/// Turn serde's messages into a ParamError with the key and a suggestion.
fn param_error_from_message(msg: &str) -> ParamError {
    // serde: "unknown field `lrr`, expected one of `lr`, `epochs`"
    //        "unknown variant `foo`, expected one of `a`, `b`"
    //        "missing field `x`"
    let ticks: Vec<&str> = msg.split('`').skip(1).step_by(2).collect();
    let mut err = ParamError {
        key: None,
        message: msg.trim().to_string(),
        suggestion: None,
    };
    if msg.starts_with("unknown field") || msg.starts_with("missing field") {
        err.key = ticks.first().map(|s| s.to_string());
    }
    if (msg.starts_with("unknown field") || msg.starts_with("unknown variant")) && ticks.len() > 1 {
        let bad = ticks[0];
        err.suggestion = nearest(bad, ticks[1..].iter().copied()).map(|s| s.to_string());
    }
    err
}

/// The candidate closest to `word` by edit distance, if reasonably close.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase());
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, c));
        }
    }
    best.filter(|(s, _)| *s >= 0.7).map(|(_, c)| c)
}

/// Resolve an input path: a directory that holds `default_file` gives that
/// file; anything else is returned as is.
pub fn resolve_file(path: &Path, default_file: &str) -> PathBuf {
    if path.is_dir() {
        path.join(default_file)
    } else {
        path.to_path_buf()
    }
}

/// The memory this process may still use, in bytes: MRBM_MAX_MEMORY (bytes)
/// when set, else the system's MemAvailable (Linux), else None (unknown).
pub fn available_memory() -> Option<u64> {
    if let Some(v) = std::env::var("MRBM_MAX_MEMORY")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(v);
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuse, before allocating, work whose estimated peak memory exceeds what
/// is available: a user error that names the estimate and what drives it,
/// never an allocation abort that kills sibling stages. `bytes` is a
/// float so absurd sizes cannot overflow.
pub fn check_memory(bytes: f64, what: &str) -> Result<(), StageError> {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let Some(avail) = available_memory() else {
        return Ok(());
    };
    if !bytes.is_finite() || bytes > avail as f64 {
        return Err(StageError::User(format!(
            "{what} needs about {:.1} GiB of memory, more than the {:.1} GiB available (MemAvailable, or MRBM_MAX_MEMORY): make it smaller",
            bytes / GIB,
            avail as f64 / GIB
        )));
    }
    Ok(())
}

/// Write `bytes` to `path` through a temporary file in the same folder
/// (created if need be), fsync and a rename, so a crash never leaves a
/// half-written file behind and the content is on disk once it returns.
/// The temporary file never stays behind, whatever fails. Err: the path at
/// fault and why. The one implementation every crate uses.
pub fn write_atomic_io(path: &Path, bytes: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written =
        std::fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err((tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        (path.to_path_buf(), e)
    })
}

/// [`write_atomic_io`] for stages.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StageError> {
    write_atomic_io(path, bytes).map_err(|(p, e)| StageError::io(p, e))
}

/// A rayon pool of `threads` threads (at least one): stages run their
/// parallel work in it to stay within their share of the machine.
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, StageError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| StageError::failed(format!("cannot start {threads} threads: {e}")))
}

/// Run `f` in a [`thread_pool`] of `threads` threads.
pub fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> Result<T, StageError> {
    Ok(thread_pool(threads)?.install(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        #[serde(default = "default_lr")]
        lr: f64,
        #[serde(default)]
        epochs: u32,
    }
    fn default_lr() -> f64 {
        0.03
    }

    /// serde's own field list, renames included; none for a struct read
    /// as a map (flatten) or for a non-struct.
    #[test]
    fn field_names_are_what_serde_accepts() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct R {
            #[serde(rename = "C")]
            c: f64,
            #[serde(skip_serializing)]
            quiet: bool,
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct F {
            #[serde(flatten)]
            p: P,
        }
        assert_eq!(field_names::<P>(), &["lr", "epochs"]);
        assert_eq!(field_names::<R>(), &["C", "quiet"]);
        assert!(field_names::<F>().is_empty());
        assert!(field_names::<u32>().is_empty());
    }

    #[test]
    fn write_atomic_replaces_the_whole_file_and_makes_its_folder() {
        let d = tempdir_for("wa-ok");
        let target = d.join("sub").join("t.csv");
        write_atomic(&target, b"first, longer").unwrap();
        write_atomic(&target, b"2").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"2");
        let names: Vec<_> = std::fs::read_dir(d.join("sub")).unwrap().collect();
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(names.len(), 1, "{names:?}");
    }

    fn tempdir_for(what: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mrbm-stage-{what}-{}", std::process::id()))
    }

    /// Scales its parameter; refuses a negative factor.
    struct Scale;
    #[derive(Debug, Default, Serialize, Deserialize, crate::ParamDocs)]
    #[serde(default, deny_unknown_fields)]
    struct ScaleParams {
        /// The factor y is 2 times.
        ///
        /// Not negative.
        factor: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    }
    impl TypedStage for Scale {
        const KIND: &'static str = "scale";
        const ABOUT: &'static str = "twice a factor";
        const VERSION: u32 = 2;
        const INPUTS: &'static [InputSlot] = &[];
        type Params = ScaleParams;
        fn validate(p: &ScaleParams) -> Result<(), ParamError> {
            if p.factor < 0.0 {
                return Err(ParamError::new("factor", "must not be negative"));
            }
            Ok(())
        }
        fn run(&self, _ctx: &StageContext, p: ScaleParams) -> Result<Metrics, StageError> {
            Ok(Metrics::from([("y".to_string(), 2.0 * p.factor)]))
        }
    }

    /// The derive reads doc comments, `rename` and `flatten`, and writes
    /// types as rustfmt does; a typed stage hands them to `Stage`.
    #[test]
    fn param_docs_come_from_the_params_struct() {
        #[derive(Serialize, Deserialize, Default, crate::ParamDocs)]
        struct Inner {
            /// Learning rate.
            lr: f64,
        }
        #[derive(Serialize, Deserialize, Default, crate::ParamDocs)]
        struct Outer {
            /// Cost, as LIBLINEAR's
            /// C.
            #[serde(rename = "C", default)]
            c: f64,
            #[serde(flatten)]
            inner: Inner,
            path: Option<Vec<(String, std::path::PathBuf)>>,
        }
        let d = |name, ty, doc| ParamDoc { name, ty, doc };
        assert_eq!(
            Outer::param_docs(),
            [
                d("C", "f64", "Cost, as LIBLINEAR's C."),
                d("lr", "f64", "Learning rate."),
                d("path", "Option<Vec<(String, std::path::PathBuf)>>", ""),
            ]
        );
        let s: &dyn Stage = &Scale;
        assert_eq!(s.about(), "twice a factor");
        assert_eq!(
            s.param_docs(),
            [
                d("factor", "f64", "The factor y is 2 times.  Not negative."),
                d("note", "Option<String>", "")
            ]
        );
    }

    #[test]
    fn a_typed_stage_is_a_stage_with_canonical_checked_params() {
        let s: &dyn Stage = &Scale;
        assert_eq!(
            (s.kind(), s.version(), s.uses_device()),
            ("scale", 2, false)
        );
        let t = |text: &str| -> toml::Table { toml::from_str(text).unwrap() };
        // Defaults filled in; an unset optional leaves the canonical form alone.
        assert_eq!(
            s.params(&t("")).unwrap(),
            serde_json::json!({"factor": 0.0})
        );
        assert_eq!(
            s.params(&t("factor = 0.0")).unwrap(),
            s.params(&t("")).unwrap()
        );
        let e = s.params(&t("factr = 1.0")).unwrap_err();
        assert_eq!(e.suggestion.as_deref(), Some("factor"));
        let e = s.params(&t("factor = -1.0")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("factor"));
        let canon = s.params(&t("factor = 1.5")).unwrap();
        let (m, _) = with_ctx_params(&canon, |ctx| s.run(ctx).unwrap());
        assert_eq!(m["y"], 3.0);
    }

    #[test]
    fn panic_messages_are_read_from_either_payload() {
        let s = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(s.as_ref()).as_deref(), Some("plain"));
        let n = 3;
        let f = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(panic_message(f.as_ref()).as_deref(), Some("formatted 3"));
        let o = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(o.as_ref()), None);
    }

    #[test]
    fn the_pool_has_the_threads_asked_for_and_at_least_one() {
        assert_eq!(in_pool(3, rayon::current_num_threads).unwrap(), 3);
        assert_eq!(in_pool(0, rayon::current_num_threads).unwrap(), 1);
    }

    #[test]
    fn write_atomic_leaves_no_temporary_file_when_it_fails() {
        let d = std::env::temp_dir().join(format!("mrbm-stage-wa-{}", std::process::id()));
        let target = d.join("t.csv");
        std::fs::create_dir_all(target.join("x")).unwrap();
        assert!(write_atomic(&target, b"1").is_err());
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(names.len(), 1, "{names:?}");
    }

    /// A context with these parameters and a log nobody reads.
    fn with_ctx_params<R>(params: &JsonValue, f: impl FnOnce(&StageContext) -> R) -> (R, ()) {
        let log: Mutex<Box<dyn std::io::Write + Send>> = Mutex::new(Box::new(std::io::sink()));
        let inputs = BTreeMap::new();
        let cancel = AtomicBool::new(false);
        let ctx = StageContext {
            stage_id: "scale",
            params,
            inputs: &inputs,
            out_dir: Path::new("."),
            device: &Device::cpu(),
            threads: 1,
            progress: None,
            cancel: &cancel,
            log: &log,
            resume_dir: None,
            upstream: &BTreeMap::new(),
        };
        (f(&ctx), ())
    }

    fn with_ctx<R>(
        progress: Option<&indicatif::MultiProgress>,
        f: impl FnOnce(&StageContext) -> R,
    ) -> (R, String) {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let log: Mutex<Box<dyn std::io::Write + Send>> = Mutex::new(Box::new(buf.clone()));
        let params = JsonValue::Null;
        let inputs = BTreeMap::new();
        let cancel = AtomicBool::new(false);
        let ctx = StageContext {
            stage_id: "train[N=7]",
            params: &params,
            inputs: &inputs,
            out_dir: Path::new("."),
            device: &Device::cpu(),
            threads: 1,
            progress,
            cancel: &cancel,
            log: &log,
            resume_dir: None,
            upstream: &BTreeMap::new(),
        };
        let r = f(&ctx);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (r, text)
    }

    #[test]
    fn bars_under_a_hidden_display_give_plain_progress_lines() {
        let m = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
        let (bar, _) = with_ctx(Some(&m), |ctx| ctx.bar(40, "training"));
        bar.set_position(10);
        bar.set_message("loss 0.5000");
        let lines = progress::plain_lines();
        let mine: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("train[N=7]"))
            .collect();
        assert_eq!(mine.len(), 1, "{lines:?}");
        assert!(mine[0].contains("10/40 (25%) loss 0.5000"), "{}", mine[0]);
        bar.finish_and_clear();
        assert!(!progress::plain_lines()
            .iter()
            .any(|l| l.starts_with("train[N=7]")));
        // Without a display, bars are not reported.
        let (bar, _) = with_ctx(None, |ctx| ctx.bar(40, "training"));
        bar.set_position(3);
        assert!(!progress::plain_lines()
            .iter()
            .any(|l| l.starts_with("train[N=7]")));
    }

    #[test]
    fn warn_goes_to_the_log_with_the_warning_prefix() {
        let m = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
        let (_, log) = with_ctx(Some(&m), |ctx| ctx.warn("max_iter reached"));
        assert_eq!(log, "warning: max_iter reached\n");
    }

    #[test]
    fn type_errors_name_their_key() {
        let raw: toml::Table = toml::from_str("epochs = 2\nlr = \"fast\"").unwrap();
        let err = parse_params::<P>(&raw).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("lr"), "{}", err.message);
    }

    #[test]
    fn unknown_key_suggests_nearest() {
        let raw: toml::Table = toml::from_str("lrr = 0.1").unwrap();
        let err = parse_params::<P>(&raw).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("lrr"));
        assert_eq!(err.suggestion.as_deref(), Some("lr"));
    }

    #[test]
    fn defaults_and_spelling_do_not_change_canonical_form() {
        let a: toml::Table = toml::from_str("epochs = 2").unwrap();
        let b: toml::Table = toml::from_str("lr = 3e-2\nepochs = 2").unwrap();
        assert_eq!(canonical::<P>(&a).unwrap(), canonical::<P>(&b).unwrap());
        let c: toml::Table = toml::from_str("lr = 0.01\nepochs = 2").unwrap();
        assert_ne!(canonical::<P>(&a).unwrap(), canonical::<P>(&c).unwrap());
    }
}
