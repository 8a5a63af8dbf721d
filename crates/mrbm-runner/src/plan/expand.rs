//! One node per stage and sweep cell: the cell's parameters (sweep values,
//! then `--set`) canonicalised by the stage kind, its inputs wired to the
//! nodes of the same cell upstream, and its publish targets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mrbm_stage::{JsonValue, ParamError, Stage};

use crate::error::RunnerError;
use crate::kinds::registry::Registry;
use crate::load::config::{set_param, LoadedExperiment, Source};
use crate::sys::confine;

use super::inputs::{InputTarget, SweptSlot, WiredInput, Wiring};
use super::overrides::{apply_sets, RawParams};
use super::sweep::{combinations, Axis, Pick};
use super::{label_of, InputSource, Node, NodeInput, Overrides};

/// Every stage's kind is a registered one.
pub fn check_kinds(exp: &LoadedExperiment, registry: &Registry) -> Result<(), RunnerError> {
    for (name, (decl, _)) in &exp.stages {
        let kind = decl.get_ref().kind.get_ref();
        if registry.get(kind).is_some() {
            continue;
        }
        let valid = registry.kinds().collect::<Vec<_>>().join(", ");
        let help = match mrbm_stage::nearest(kind, registry.kinds()) {
            Some(n) => format!("did you mean `{n}`? valid kinds: {valid}"),
            None => format!("valid kinds: {valid}"),
        };
        return Err(exp.stage_source(name).locate(
            Some(decl.get_ref().kind.span()),
            format!("stage `{name}`: unknown stage kind `{kind}`"),
            Some(help),
        ));
    }
    Ok(())
}

/// Axis name -> value label, for the axes that reach a stage.
pub type Cell = Vec<(String, String)>;

/// What expanding the stages into nodes reads.
pub struct Expansion<'a> {
    pub exp: &'a LoadedExperiment,
    pub registry: &'a Registry,
    pub ov: &'a Overrides,
    pub raw: &'a RawParams,
    pub axes: &'a [Axis],
    pub wiring: &'a Wiring<'a>,
    pub reach: &'a HashMap<&'a str, Vec<usize>>,
    pub project_root: &'a Path,
}

/// One stage in one cell, being made into a node.
struct CellOf<'c> {
    name: &'c str,
    stage: &'c dyn Stage,
    src: &'c Source,
    combo: &'c [Pick],
    cell: Cell,
    id: String,
}

impl Expansion<'_> {
    /// The nodes of every stage in topological order, cell by cell.
    pub fn nodes(&self) -> Result<Vec<Node>, RunnerError> {
        let mut nodes: Vec<Node> = Vec::new();
        let mut by_cell: HashMap<(String, Cell), usize> = HashMap::new();
        for n in &self.wiring.order {
            let name = self.wiring.graph[*n];
            let (decl, _) = &self.exp.stages[name];
            let stage = self
                .registry
                .get(decl.get_ref().kind.get_ref())
                .expect("kind checked");
            let src = self.exp.stage_source(name);
            for combo in combinations(self.axes, &self.reach[name]) {
                let cell: Cell = combo
                    .iter()
                    .map(|p| {
                        let a = &self.axes[p.axis];
                        (a.name.clone(), a.values[p.value].label.clone())
                    })
                    .collect();
                let c = CellOf {
                    name,
                    stage,
                    src,
                    combo: &combo,
                    id: node_id(name, &cell),
                    cell,
                };
                let node = self.node(&c, &by_cell)?;
                by_cell.insert((name.to_string(), c.cell), nodes.len());
                nodes.push(node);
            }
        }
        Ok(nodes)
    }

    fn node(
        &self,
        c: &CellOf,
        by_cell: &HashMap<(String, Cell), usize>,
    ) -> Result<Node, RunnerError> {
        let (decl, _) = &self.exp.stages[c.name];
        let decl = decl.get_ref();
        let mut params = self.raw[c.name].clone();
        for p in c.combo {
            for a in &self.axes[p.axis].values[p.value].assigns {
                if a.stage == c.name && !a.param.starts_with("inputs.") {
                    set_param(&mut params, &a.param, a.value.clone());
                }
            }
        }
        let before_sets = params.clone();
        apply_sets(self.ov, c.name, &mut params);
        check_finite(self.exp, c, &params, self.axes, self.ov)?;
        let canon = self.canonical(c, &params, &before_sets)?;
        let (inputs, deps) = self.inputs(c, by_cell);
        let mut publish = Vec::new();
        for (file, to) in &decl.publish {
            let filled = fill_template(to, &c.cell, &params);
            crate::load::placeholders::check_publish(
                c.src,
                (c.name, &c.id),
                (file, to, &filled),
                &c.cell,
                &params,
            )?;
            let dest = publish_target(self.project_root, file, &filled).map_err(|why| {
                c.src.locate(
                    c.src.span_or_prefix(&["stages", c.name, "publish", file]),
                    format!("stage `{}`: publish `{file}` = \"{to}\": {why}", c.id),
                    Some("publish targets are paths under the project's results/ folder, e.g. \"results/samples_{cell}.png\"".into()),
                )
            })?;
            publish.push((file.clone(), dest));
        }
        Ok(Node {
            id: c.id.clone(),
            stage: c.name.to_string(),
            kind: decl.kind.get_ref().clone(),
            version: c.stage.version_for(&canon),
            cell: c.cell.clone(),
            params: canon,
            inputs,
            publish,
            uses_device: c.stage.uses_device(),
            deps,
            // The file only: finding the line means parsing it again,
            // which a DAG of many nodes cannot afford per node.
            declared: c.src.path.display().to_string(),
        })
    }

    /// The stage kind's canonical parameters, or an error pointing at the
    /// `--set` at fault (when the parameters without them are fine) or at
    /// the key in the file.
    fn canonical(
        &self,
        c: &CellOf,
        params: &toml::Table,
        before_sets: &toml::Table,
    ) -> Result<JsonValue, RunnerError> {
        let kind = self.exp.stages[c.name].0.get_ref().kind.get_ref();
        c.stage.params(params).map_err(|e| {
            let mine: Vec<&(String, String, toml::Value)> = self
                .ov
                .sets
                .iter()
                .filter(|(s, _, _)| s == c.name)
                .collect();
            if !mine.is_empty() && c.stage.params(before_sets).is_ok() {
                return set_error(&e, &mine, c, kind);
            }
            let mut path = vec!["stages", c.name, "params"];
            if let Some(k) = &e.key {
                path.push(k.as_str());
            }
            let help = e
                .suggestion
                .as_ref()
                .map(|s| format!("did you mean `{s}`?"));
            c.src.locate(
                c.src.span_or_prefix(&path),
                format!("stage `{}` ({kind}): {}", c.id, e.message),
                help,
            )
        })
    }

    /// The cell's inputs: the declared ones, then those this cell's sweep
    /// values set (which replace them), each wired to the upstream node of
    /// the same cell.
    fn inputs(
        &self,
        c: &CellOf,
        by_cell: &HashMap<(String, Cell), usize>,
    ) -> (Vec<NodeInput>, Vec<usize>) {
        let mut wanted: Vec<WiredInput> = self.wiring.declared[c.name].clone();
        for p in c.combo {
            for (at, w) in &self.wiring.swept {
                let SweptSlot {
                    axis, value, stage, ..
                } = at;
                if *axis == p.axis && *value == p.value && stage == c.name {
                    wanted.retain(|x| x.slot != w.slot);
                    wanted.push(w.clone());
                }
            }
        }
        wanted.sort_by(|a, b| a.slot.cmp(&b.slot));
        let mut inputs = Vec::new();
        let mut deps = Vec::new();
        for w in wanted {
            let source = match w.target {
                InputTarget::Stage { stage: up, file } => {
                    let up_cell: Cell = c
                        .cell
                        .iter()
                        .filter(|(a, _)| {
                            self.reach[up.as_str()]
                                .iter()
                                .any(|ai| &self.axes[*ai].name == a)
                        })
                        .cloned()
                        .collect();
                    let node = by_cell[&(up, up_cell)];
                    deps.push(node);
                    InputSource::Node { node, file }
                }
                InputTarget::External { path, declared } => {
                    InputSource::External { path, declared }
                }
            };
            inputs.push(NodeInput {
                slot: w.slot,
                source,
                default_file: w.default_file,
                soft: false,
            });
        }
        (inputs, deps)
    }
}

/// `train[N=255,lr=0.03]`, or the stage name for a stage no axis reaches.
pub fn node_id(name: &str, cell: &Cell) -> String {
    if cell.is_empty() {
        return name.to_string();
    }
    let parts: Vec<String> = cell.iter().map(|(a, v)| format!("{a}={v}")).collect();
    format!("{name}[{}]", parts.join(","))
}

/// A bad --set value is the command line's fault: name the --set, and
/// suggest --sweep for a list.
fn set_error(
    e: &ParamError,
    mine: &[&(String, String, toml::Value)],
    c: &CellOf,
    kind: &str,
) -> RunnerError {
    let culprit = mine
        .iter()
        .find(|(_, p, _)| {
            e.key
                .as_deref()
                .is_some_and(|k| p.split('.').next() == k.split('.').next())
        })
        .or_else(|| {
            mine.iter()
                .find(|(_, _, v)| v.is_array() || v.as_str().is_some_and(|t| t.contains(',')))
        })
        .or(mine.first())
        .copied();
    let (_, p, v) = culprit.expect("some --set of this stage");
    let name = c.name;
    let several = match v {
        toml::Value::Array(a) => Some(a.iter().map(label_of).collect::<Vec<_>>().join(",")),
        toml::Value::String(t) if t.contains(',') => Some(t.clone()),
        _ => None,
    };
    RunnerError::Usage(format!(
        "--set {name}.{p}={v}: stage `{}` ({kind}): {}{}",
        c.id,
        e.message,
        match (several, &suggestion(e)) {
            (Some(list), _) => format!("\n  help: --set gives one value; to run several, sweep them: --sweep {name}.{p}={list}"),
            (None, Some(s)) => {
                // `evn.K` with `env` suggested: `env.K`.
                let fixed = match p.split_once('.') {
                    Some((_, rest)) => format!("{s}.{rest}"),
                    None => s.clone(),
                };
                format!("\n  help: did you mean `--set {name}.{fixed}={v}`?")
            }
            (None, None) => String::new(),
        }
    ))
}

/// The parameter a ParamError suggests, or, for serde's "unknown field
/// `evn`, expected `argv` or `env`", the nearest of those it lists.
fn suggestion(e: &ParamError) -> Option<String> {
    if e.suggestion.is_some() {
        return e.suggestion.clone();
    }
    if !e.message.starts_with("unknown field") {
        return None;
    }
    let ticks: Vec<&str> = e.message.split('`').skip(1).step_by(2).collect();
    let (bad, valid) = ticks.split_first()?;
    mrbm_stage::nearest(bad, valid.iter().copied()).map(str::to_string)
}

/// Where a node's output `file` is published: `to` (filled in) must be a
/// clean path under the project's results/ folder that no symlink leads
/// out of, and `file` a clean path inside the entry.
pub fn publish_target(project_root: &Path, file: &str, to: &str) -> Result<PathBuf, String> {
    confine::clean_relative(file)?;
    let rel = confine::clean_relative(to)?;
    let mut parts = rel.components();
    if parts.next().map(|c| c.as_os_str()) != Some(std::ffi::OsStr::new("results"))
        || parts.next().is_none()
    {
        return Err(format!("`{to}` is not under results/"));
    }
    let dest = project_root.join(rel);
    confine::check_publish_target(&project_root.join("results"), &dest)?;
    Ok(dest)
}

/// Parameters must be finite numbers: `nan` and `inf` are refused where
/// they were written (a `--set`, a sweep value, or the stage's own key).
fn check_finite(
    exp: &LoadedExperiment,
    c: &CellOf,
    params: &toml::Table,
    axes: &[Axis],
    ov: &Overrides,
) -> Result<(), RunnerError> {
    let (src, stage, id, combo) = (c.src, c.name, c.id.as_str(), c.combo);
    let sets = &ov.sets;
    fn bad(v: &toml::Value) -> Option<String> {
        match v {
            toml::Value::Float(f) if !f.is_finite() => Some(f.to_string()),
            toml::Value::Array(a) => a.iter().find_map(bad),
            toml::Value::Table(t) => t.values().find_map(bad),
            _ => None,
        }
    }
    for (key, v) in params {
        let Some(shown) = bad(v) else { continue };
        let msg = format!("stage `{id}`: parameter `{key}` must be finite, not {shown}");
        let top = |p: &str| p.split('.').next() == Some(key.as_str());
        if let Some((_, p, v)) = sets
            .iter()
            .find(|(s, p, v)| s == stage && top(p) && bad(v).is_some())
        {
            return Err(RunnerError::Usage(format!(
                "--set {stage}.{p}={}: {msg}",
                bad(v).unwrap_or_default()
            )));
        }
        for pick in combo {
            let a = &axes[pick.axis];
            if a.values[pick.value]
                .assigns
                .iter()
                .any(|x| x.stage == stage && top(&x.param) && bad(&x.value).is_some())
            {
                if let Some((s, p, _)) = ov
                    .sweeps
                    .iter()
                    .find(|(s, p, _)| a.path.as_deref() == Some(format!("{s}.{p}").as_str()))
                {
                    return Err(RunnerError::Usage(format!(
                        "--sweep {s}.{p}: sweep axis `{}`: {msg}",
                        a.name
                    )));
                }
                return Err(exp.source.locate(
                    exp.source.span_of(&["sweep", &a.name]).or_else(|| {
                        a.path
                            .as_deref()
                            .and_then(|p| exp.source.span_of(&["sweep", p]))
                    }),
                    format!("sweep axis `{}`: {msg}", a.name),
                    None,
                ));
            }
        }
        return Err(src.locate(
            src.span_or_prefix(&["stages", stage, "params", key]),
            msg,
            None,
        ));
    }
    Ok(())
}

/// `{N}` -> the cell's value of axis N (or the parameter N), `{cell}` -> all.
pub fn fill_template(t: &str, cell: &[(String, String)], params: &toml::Table) -> String {
    let mut s = t.to_string();
    for (a, v) in cell {
        s = s.replace(&format!("{{{a}}}"), &file_safe(v));
    }
    for (k, v) in params {
        s = s.replace(&format!("{{{k}}}"), &file_safe(&label_of(v)));
    }
    let all = cell
        .iter()
        .map(|(a, v)| file_safe(&format!("{a}{v}")))
        .collect::<Vec<_>>()
        .join("_");
    s.replace("{cell}", &all)
}

/// A value as it may stand in a file name on any system: ASCII letters,
/// digits and `. _ - + =` kept, anything else (`:` of a `data:` input,
/// `/` of a path, quotes, spaces) replaced by `-`, so a sweep over inputs
/// neither publishes `results/x_dirdata:faces.png` nor opens a folder.
fn file_safe(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+=".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(pairs: &[(&str, &str)]) -> Cell {
        pairs
            .iter()
            .map(|(a, v)| (a.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ids_name_the_cell_in_axis_order() {
        assert_eq!(node_id("train", &cell(&[])), "train");
        assert_eq!(
            node_id("train", &cell(&[("N", "255"), ("lr", "0.03")])),
            "train[N=255,lr=0.03]"
        );
    }

    #[test]
    fn templates_take_axes_then_parameters_then_the_whole_cell() {
        let mut params = toml::Table::new();
        params.insert("seed".into(), toml::Value::Integer(7));
        let c = cell(&[("N", "255"), ("lr", "0.03")]);
        assert_eq!(
            fill_template("results/s_{N}_{seed}_{cell}.png", &c, &params),
            "results/s_255_7_N255_lr0.03.png"
        );
    }

    #[test]
    fn template_values_are_made_safe_for_file_names() {
        let mut params = toml::Table::new();
        params.insert("dir".into(), toml::Value::String("data:celeba/x y".into()));
        let c = cell(&[("inputs.dir", "data:celeba-sample"), ("lr", "-0.5e-3")]);
        assert_eq!(
            fill_template("results/s_{cell}_{dir}_{lr}.png", &c, &params),
            "results/s_inputs.dirdata-celeba-sample_lr-0.5e-3_data-celeba-x-y_-0.5e-3.png"
        );
    }

    #[test]
    fn publish_targets_stay_under_results() {
        let root = tempfile::tempdir().unwrap();
        let ok = publish_target(root.path(), "table.csv", "results/t.csv").unwrap();
        assert_eq!(ok, root.path().join("results/t.csv"));
        assert!(publish_target(root.path(), "table.csv", "results").is_err());
        assert!(publish_target(root.path(), "table.csv", "elsewhere/t.csv").is_err());
        assert!(publish_target(root.path(), "table.csv", "results/../../t.csv").is_err());
        assert!(publish_target(root.path(), "../x", "results/t.csv").is_err());
    }
}
