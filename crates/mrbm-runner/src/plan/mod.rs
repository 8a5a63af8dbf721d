//! The expand phase: from a loaded experiment to the plan, the DAG of stage
//! instances ("nodes"). Each step is a module with its own product:
//!
//! 1. kinds are checked ([`expand::check_kinds`]);
//! 2. [`overrides`]: the profile and `--set` applied to the raw parameters;
//! 3. [`sweep`]: the sweep's axes (the file's and `--sweep`'s);
//! 4. [`inputs`]: every input resolved to a stage or a path, the stage
//!    graph and its topological order (cycles refused);
//! 5. [`sweep::reach`]: which axes reach each stage;
//! 6. [`expand`]: one node per stage and cell of the axes reaching it;
//! 7. [`tables`]: one node per table, reading the cells it names;
//! 8. [`publish`]: no two nodes publish to the same results path.

use std::path::{Path, PathBuf};

use mrbm_stage::JsonValue;

use crate::error::RunnerError;
use crate::kinds::registry::Registry;
use crate::load::config::{dir_of, LoadedExperiment};

pub mod expand;
pub mod inputs;
pub mod overrides;
pub mod prechecks;
pub mod publish;
pub mod select;
pub mod sweep;
pub mod tables;
pub mod targets;

pub use inputs::InputTarget;
pub use sweep::{Assign, Axis, AxisValue};

/// Where one input of a node comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    /// Another node's output directory, or a file inside it.
    Node { node: usize, file: Option<String> },
    /// A file or folder outside the cache. `declared` is "file:line:col".
    External { path: PathBuf, declared: String },
}

#[derive(Debug, Clone)]
pub struct NodeInput {
    pub slot: String,
    pub source: InputSource,
    /// Default file inside an upstream directory (from the stage's slot).
    pub default_file: Option<String>,
    /// Tables still run when such an input failed; ordinary inputs do not.
    pub soft: bool,
}

/// One stage instance (a sweep cell, or a stage the sweep does not touch).
#[derive(Debug, Clone)]
pub struct Node {
    /// Readable id: `train[N=255,lr=0.03]`, or the stage name.
    pub id: String,
    pub stage: String,
    pub kind: String,
    pub version: u32,
    /// Sweep axis -> value label, for the axes that reach this stage.
    pub cell: Vec<(String, String)>,
    pub params: JsonValue,
    pub inputs: Vec<NodeInput>,
    /// Output file -> project path, copied after the stage completes.
    pub publish: Vec<(String, PathBuf)>,
    pub uses_device: bool,
    /// Indices of the nodes this one reads.
    pub deps: Vec<usize>,
    /// Where it is declared ("file:line:col"), for errors found at run time.
    pub declared: String,
}

impl Node {
    /// Whether it is a `[[tables]]` node (a `table` stage over the cells it
    /// names): the one test of that kind outside `kinds/`.
    pub fn is_table(&self) -> bool {
        self.kind == crate::kinds::table::KIND
    }
}

#[derive(Debug, Clone)]
pub struct Dag {
    pub experiment: String,
    pub nodes: Vec<Node>,
    pub axes: Vec<Axis>,
    pub project_root: PathBuf,
    pub data_root: Option<PathBuf>,
}

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub sets: Vec<(String, String, toml::Value)>,
    /// `--sweep STAGE.PARAM=V1,V2`: a new axis, or new values for the axis
    /// that already sweeps STAGE.PARAM.
    pub sweeps: Vec<(String, String, Vec<toml::Value>)>,
    /// Let a --set change a parameter that a sweep axis sets.
    pub force_override: bool,
    pub profile: Option<String>,
    pub data_root: Option<PathBuf>,
}

/// The project root: the nearest ancestor of the experiment file holding
/// `.mrbm`, `.git` or `experiments/`; results/ and the cache live there.
pub fn project_root_for(file: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let mut dir = dir_of(&abs);
    loop {
        if dir.join(".mrbm").is_dir()
            || dir.join(".git").exists()
            || dir.join("experiments").is_dir()
        {
            return dir;
        }
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => return dir_of(&abs),
        }
    }
}

/// Expand `exp` into its DAG, with the overrides of the command line.
pub fn build(
    exp: &LoadedExperiment,
    registry: &Registry,
    ov: &Overrides,
) -> Result<Dag, RunnerError> {
    // Sorted (the stages are a BTreeMap): lookups binary-search it.
    let names: Vec<&str> = exp.stages.keys().map(String::as_str).collect();
    debug_assert!(names.windows(2).all(|w| w[0] < w[1]));
    expand::check_kinds(exp, registry)?;
    let raw = overrides::raw_params(exp, ov, &names)?;
    let axes = sweep::axes(exp, ov, &names)?;
    overrides::check_set_stages(exp, ov, &names)?;
    let data_root = inputs::data_root(exp, ov);
    let wiring = inputs::wire(exp, registry, &names, &axes, &data_root)?;
    let reach = inputs::reach(&axes, &wiring);
    overrides::check_sets_against_axes(ov, &axes)?;
    let project_root = project_root_for(&exp.source.path);
    let ctx = expand::Expansion {
        exp,
        registry,
        ov,
        raw: &raw,
        axes: &axes,
        wiring: &wiring,
        reach: &reach,
        project_root: &project_root,
    };
    let mut nodes = ctx.nodes()?;
    tables::add(exp, ov, &axes, &project_root, &names, &mut nodes)?;
    prechecks::table_metrics(registry, &nodes)?;
    publish::check_collisions(exp, &project_root, &nodes)?;
    Ok(Dag {
        experiment: exp.name.clone(),
        nodes,
        axes,
        project_root,
        data_root,
    })
}

/// The label of a sweep value in ids and tables: a string as is, anything
/// else as TOML.
pub(crate) fn label_of(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn split_target(k: &str) -> Option<(&str, &str)> {
    k.split_once('.')
        .filter(|(s, p)| !s.is_empty() && !p.is_empty())
}

pub(crate) fn check_stage_name(
    names: &[&str],
    stage: &str,
    err: impl FnOnce() -> RunnerError,
) -> Result<(), RunnerError> {
    if names.binary_search(&stage).is_ok() {
        Ok(())
    } else {
        Err(err())
    }
}

impl Dag {
    pub fn find(&self, id_or_stage: &str) -> Vec<usize> {
        let exact: Vec<usize> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.id == id_or_stage)
            .map(|(i, _)| i)
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.stage == id_or_stage)
            .map(|(i, _)| i)
            .collect()
    }
}
