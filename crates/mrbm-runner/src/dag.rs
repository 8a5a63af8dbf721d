//! From a loaded experiment to the DAG of stage instances ("nodes"):
//! check kinds, inputs and cycles, apply profile / --set overrides, expand the
//! sweep over the stages it touches and everything downstream, and add one
//! node per table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use mrbm_stage::JsonValue;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::config::{dir_of, set_param, LoadedExperiment, Source};
use crate::confine;
use crate::error::RunnerError;
use crate::registry::Registry;
use crate::table::{TableCell, TableParams};

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

/// A sweep axis: its display name and its values, each a label and the
/// parameter assignments it makes.
#[derive(Debug, Clone)]
pub struct Axis {
    pub name: String,
    /// `stage.param` for a single-parameter axis.
    pub path: Option<String>,
    pub values: Vec<AxisValue>,
}

/// One value of a sweep axis: its label and the (stage, parameter, value)
/// assignments it makes.
pub type AxisValue = (String, Vec<(String, String, toml::Value)>);

/// Where an input comes from: another stage (and a file in its output), or
/// an external path (and the "file:line:col" that declared it).
pub type InputTarget = Result<(String, Option<String>), (PathBuf, String)>;

/// A resolved input: slot, target, the slot's default file.
type ResolvedInput = (String, InputTarget, Option<String>);

/// Inputs set by sweep values: (axis, value, stage, slot) -> (target,
/// the slot's default file).
type SweptInputs = HashMap<(usize, usize, String, String), (InputTarget, Option<String>)>;

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

fn label_of(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn build(
    exp: &LoadedExperiment,
    registry: &Registry,
    ov: &Overrides,
) -> Result<Dag, RunnerError> {
    // Sorted (the stages are a BTreeMap): lookups below binary-search it.
    let names: Vec<&str> = exp.stages.keys().map(String::as_str).collect();
    debug_assert!(names.windows(2).all(|w| w[0] < w[1]));
    let src_of = |stage: &str| -> &Source { exp.stage_source(stage) };

    // 1. Kinds.
    for (name, (decl, _)) in &exp.stages {
        let kind = decl.get_ref().kind.get_ref();
        if registry.get(kind).is_none() {
            let help = match mrbm_stage::nearest(kind, registry.kinds()) {
                Some(n) => format!(
                    "did you mean `{n}`? valid kinds: {}",
                    registry.kinds().collect::<Vec<_>>().join(", ")
                ),
                None => format!(
                    "valid kinds: {}",
                    registry.kinds().collect::<Vec<_>>().join(", ")
                ),
            };
            return Err(src_of(name).locate(
                Some(decl.get_ref().kind.span()),
                format!("stage `{name}`: unknown stage kind `{kind}`"),
                Some(help),
            ));
        }
    }

    // 2. Raw params with profile and --set overrides applied.
    let mut raw: BTreeMap<String, toml::Table> = exp
        .stages
        .iter()
        .map(|(n, (d, _))| (n.clone(), d.get_ref().params.clone()))
        .collect();
    let profile = ov
        .profile
        .clone()
        .or_else(|| exp.file.default_profile.clone());
    if let Some(p) = &profile {
        let table = exp.file.profiles.get(p).ok_or_else(|| {
            let known: Vec<&str> = exp.file.profiles.keys().map(String::as_str).collect();
            RunnerError::Usage(format!(
                "{}: no profile `{p}`; this experiment has {}",
                exp.source.path.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })?;
        for (k, v) in table.get_ref() {
            let (stage, param) = split_target(k).ok_or_else(|| {
                exp.source.locate(
                    exp.source.span_of(&["profiles", p, k]),
                    format!("profile key `{k}` must be STAGE.PARAM"),
                    None,
                )
            })?;
            check_stage_name(&names, stage, || {
                exp.source.locate(
                    exp.source.span_of(&["profiles", p, k]),
                    format!("profile `{p}` sets `{k}` but there is no stage `{stage}`"),
                    None,
                )
            })?;
            set_param(raw.get_mut(stage).expect("checked"), param, v.clone());
        }
    }

    // 3. The sweep's axes.
    let mut axes = Vec::new();
    for (axis_name, value) in &exp.file.sweep {
        let span = exp.source.span_of(&["sweep", axis_name]);
        let bad = |msg: String| exp.source.locate(span.clone(), msg, None);
        match value.get_ref() {
            toml::Value::Array(vals) => {
                let (stage, param) = split_target(axis_name).ok_or_else(|| bad(format!("sweep axis `{axis_name}`: a list sweeps one parameter and must be named STAGE.PARAM")))?;
                check_stage_name(&names, stage, || {
                    bad(format!(
                        "sweep axis `{axis_name}`: there is no stage `{stage}`"
                    ))
                })?;
                if vals.is_empty() {
                    return Err(bad(format!("sweep axis `{axis_name}` has no values")));
                }
                axes.push(Axis {
                    name: param.to_string(),
                    path: Some(axis_name.clone()),
                    values: vals
                        .iter()
                        .map(|v| {
                            (
                                label_of(v),
                                vec![(stage.to_string(), param.to_string(), v.clone())],
                            )
                        })
                        .collect(),
                });
            }
            toml::Value::Table(t)
                if t.get("param").is_some_and(|v| v.is_str())
                    && t.get("values").is_some_and(|v| v.is_array()) =>
            {
                // `N = { param = "train.n", values = [1, 255] }`: one parameter, axis named by the user.
                let target = t["param"].as_str().unwrap_or_default();
                let (stage, param) = split_target(target).ok_or_else(|| {
                    bad(format!(
                        "sweep axis `{axis_name}`: param must be STAGE.PARAM, found `{target}`"
                    ))
                })?;
                check_stage_name(&names, stage, || {
                    bad(format!(
                        "sweep axis `{axis_name}`: there is no stage `{stage}`"
                    ))
                })?;
                if let Some(extra) = t.keys().find(|k| *k != "param" && *k != "values") {
                    return Err(bad(format!("sweep axis `{axis_name}`: unknown key `{extra}` (expected `param` and `values`)")));
                }
                let vals = t["values"].as_array().cloned().unwrap_or_default();
                if vals.is_empty() {
                    return Err(bad(format!("sweep axis `{axis_name}` has no values")));
                }
                axes.push(Axis {
                    name: axis_name.clone(),
                    path: Some(target.to_string()),
                    values: vals
                        .iter()
                        .map(|v| {
                            (
                                label_of(v),
                                vec![(stage.to_string(), param.to_string(), v.clone())],
                            )
                        })
                        .collect(),
                });
            }
            toml::Value::Table(variants) => {
                let mut values = Vec::new();
                for (label, assigns) in variants {
                    let assigns = assigns.as_table().ok_or_else(|| bad(format!("sweep axis `{axis_name}`: variant `{label}` must be a table of \"STAGE.PARAM\" = value")))?;
                    let mut list = Vec::new();
                    for (k, v) in assigns {
                        let (stage, param) = split_target(k).ok_or_else(|| bad(format!("sweep axis `{axis_name}`, variant `{label}`: key `{k}` must be STAGE.PARAM")))?;
                        check_stage_name(&names, stage, || {
                            bad(format!("sweep axis `{axis_name}`, variant `{label}`: there is no stage `{stage}`"))
                        })?;
                        list.push((stage.to_string(), param.to_string(), v.clone()));
                    }
                    values.push((label.clone(), list));
                }
                if values.is_empty() {
                    return Err(bad(format!("sweep axis `{axis_name}` has no variants")));
                }
                axes.push(Axis {
                    name: axis_name.clone(),
                    path: None,
                    values,
                });
            }
            _ => {
                return Err(bad(format!(
                "sweep axis `{axis_name}`: expected a list of values or a table of named variants"
            )))
            }
        }
    }
    // Axes from --sweep.
    for (stage, param, values) in &ov.sweeps {
        let target = format!("{stage}.{param}");
        check_stage_name(&names, stage, || {
            let help = mrbm_stage::nearest(stage, names.iter().copied())
                .map(|n| format!("; did you mean `{n}.{param}`?"));
            RunnerError::Usage(format!(
                "--sweep {target}: there is no stage `{stage}` in {}{}",
                exp.source.path.display(),
                help.unwrap_or_default()
            ))
        })?;
        let vals: Vec<AxisValue> = values
            .iter()
            .map(|v| (label_of(v), vec![(stage.clone(), param.clone(), v.clone())]))
            .collect();
        if let Some(a) = axes.iter_mut().find(|a| a.path.as_deref() == Some(&target)) {
            a.values = vals;
            continue;
        }
        if let Some(a) = axes.iter().find(|a| axis_sets(a, stage, param)) {
            return Err(RunnerError::Usage(format!(
                "--sweep {target}: the sweep axis `{}` of {} already sets `{target}` together with other parameters\n  help: choose that axis's variants in the file, or remove it",
                a.name,
                exp.source.path.display()
            )));
        }
        let name = if axes.iter().any(|a| &a.name == param) {
            target.clone()
        } else {
            param.clone()
        };
        axes.push(Axis {
            name,
            path: Some(target),
            values: vals,
        });
    }
    let mut seen = BTreeSet::new();
    for a in &axes {
        if !seen.insert(a.name.clone()) {
            return Err(exp.source.locate(
                exp.source.span_of(&["sweep"]),
                format!("two sweep axes are both called `{}`", a.name),
                Some("name a variant axis differently".into()),
            ));
        }
    }
    for (stage, param, _) in &ov.sets {
        check_stage_name(&names, stage, || {
            let help = mrbm_stage::nearest(stage, names.iter().copied())
                .map(|n| format!("did you mean `{n}.{param}`?"));
            RunnerError::Usage(format!(
                "--set {stage}.{param}: there is no stage `{stage}` in {}{}",
                exp.source.path.display(),
                help.map(|h| format!("; {h}")).unwrap_or_default()
            ))
        })?;
    }

    // 4. Stage-level edges and cycle check.
    let mut graph: DiGraph<&str, ()> = DiGraph::new();
    let idx: HashMap<&str, NodeIndex> = names.iter().map(|n| (*n, graph.add_node(*n))).collect();
    let data_root = ov
        .data_root
        .clone()
        .or_else(|| std::env::var_os("MRBM_DATA").map(PathBuf::from))
        .or_else(|| {
            exp.file
                .data_root
                .as_ref()
                .map(|r| dir_of(&exp.source.path).join(r))
        });
    // per stage: slot -> (upstream stage, file) or external path
    let mut resolved: BTreeMap<&str, Vec<ResolvedInput>> = BTreeMap::new();
    for (name, (decl, _)) in &exp.stages {
        let decl = decl.get_ref();
        let stage = registry.get(decl.kind.get_ref()).expect("kind checked");
        let src = src_of(name);
        let slots = stage.inputs();
        let mut list = Vec::new();
        for (slot, value) in &decl.inputs {
            // The value's own span: re-parsing the file for the key's span
            // on every input made building the DAG quadratic in its size.
            let span = Some(value.span());
            let Some(spec) = slots.iter().find(|s| s.name == slot) else {
                let span = src.span_of(&["stages", name, "inputs", slot]).or(span);
                let valid: Vec<&str> = slots.iter().map(|s| s.name).collect();
                let help = mrbm_stage::nearest(slot, valid.iter().copied())
                    .map(|n| format!("did you mean `{n}`?"))
                    .unwrap_or_else(|| {
                        format!(
                            "stage kind `{}` takes inputs: {}",
                            decl.kind.get_ref(),
                            if valid.is_empty() {
                                "none".into()
                            } else {
                                valid.join(", ")
                            }
                        )
                    });
                return Err(src.locate(
                    span,
                    format!("stage `{name}`: unknown input `{slot}`"),
                    Some(help),
                ));
            };
            let target = resolve_target(
                name,
                slot,
                value.get_ref(),
                &|| {
                    src.span_of(&["stages", name, "inputs", slot])
                        .or_else(|| Some(value.span()))
                },
                &|| {
                    let (l, c) = src.line_col(value.span().start);
                    format!("{}:{l}:{c}", src.path.display())
                },
                src,
                &names,
                &data_root,
            )?;
            if let Ok((up, _)) = &target {
                graph.add_edge(idx[up.as_str()], idx[name.as_str()], ());
            }
            list.push((slot.clone(), target, spec.default_file.map(str::to_string)));
        }
        for spec in slots.iter().filter(|s| s.required) {
            if !decl.inputs.contains_key(spec.name) {
                return Err(src.locate(
                    src.span_of(&["stages", name]),
                    format!(
                        "stage `{name}` ({}) needs input `{}`: {}",
                        decl.kind.get_ref(),
                        spec.name,
                        spec.doc
                    ),
                    Some(format!(
                        "add `inputs = {{ {} = \"<stage or path>\" }}`",
                        spec.name
                    )),
                ));
            }
        }
        resolved.insert(name.as_str(), list);
    }
    // Inputs set by the sweep (`"STAGE.inputs.SLOT" = "..."` in a variant or
    // axis): resolved like declared ones; every stage they may read becomes
    // an edge, so the order and the axes reaching a stage hold for all cells.
    let mut swept_inputs: SweptInputs = HashMap::new();
    for (ai, a) in axes.iter().enumerate() {
        for (vi, (label, assigns)) in a.values.iter().enumerate() {
            for (stage_name, param, v) in assigns {
                let Some(slot) = param.strip_prefix("inputs.") else {
                    continue;
                };
                let span = exp
                    .source
                    .span_of(&["sweep", &a.name])
                    .or_else(|| exp.source.span_of(&["sweep"]));
                let (decl, _) = &exp.stages[stage_name];
                let kind = decl.get_ref().kind.get_ref();
                let stage = registry.get(kind).expect("kind checked");
                let Some(spec) = stage.inputs().iter().find(|s| s.name == slot) else {
                    let valid: Vec<&str> = stage.inputs().iter().map(|s| s.name).collect();
                    return Err(exp.source.locate(span, format!("sweep axis `{}`, value `{label}`: stage `{stage_name}` ({kind}) has no input `{slot}`", a.name), Some(format!("its inputs: {}", if valid.is_empty() { "none".into() } else { valid.join(", ") }))));
                };
                let Some(text) = v.as_str() else {
                    return Err(exp.source.locate(span, format!("sweep axis `{}`, value `{label}`: input `{stage_name}.inputs.{slot}` must be a string", a.name), None));
                };
                let at = span.clone().map(|s| s.start).unwrap_or(0);
                let target = resolve_target(
                    stage_name,
                    slot,
                    text,
                    &|| span.clone(),
                    &|| {
                        let (l, c) = exp.source.line_col(at);
                        format!("{}:{l}:{c}", exp.source.path.display())
                    },
                    &exp.source,
                    &names,
                    &data_root,
                )?;
                if let Ok((up, _)) = &target {
                    graph.add_edge(idx[up.as_str()], idx[stage_name.as_str()], ());
                }
                swept_inputs.insert(
                    (ai, vi, stage_name.clone(), slot.to_string()),
                    (target, spec.default_file.map(str::to_string)),
                );
            }
        }
    }
    let order = match petgraph::algo::toposort(&graph, None) {
        Ok(o) => o,
        Err(cycle) => {
            let start = cycle.node_id();
            let path = find_cycle(&graph, start);
            let first = graph[start];
            let src = src_of(first);
            return Err(src.locate(
                src.span_of(&["stages", first]),
                format!("the stages form a cycle: {}", path.join(" -> ")),
                Some("a stage cannot depend, directly or not, on its own output".into()),
            ));
        }
    };

    // 5. Which axes reach each stage: those touching it or anything upstream.
    let mut reach: HashMap<&str, Vec<usize>> = HashMap::new();
    for n in &order {
        let name = graph[*n];
        let mut set: BTreeSet<usize> = BTreeSet::new();
        for (ai, a) in axes.iter().enumerate() {
            if a.values
                .iter()
                .any(|(_, assigns)| assigns.iter().any(|(s, _, _)| s == name))
            {
                set.insert(ai);
            }
        }
        for up in graph.neighbors_directed(*n, petgraph::Direction::Incoming) {
            set.extend(reach[graph[up]].iter().copied());
        }
        reach.insert(name, set.into_iter().collect());
    }

    // 6. Expand into nodes, in topological order.
    let project_root = project_root_for(&exp.source.path);
    let mut nodes: Vec<Node> = Vec::new();
    // A --set on a swept parameter would give every cell the same value
    // while the tables still label the cells by the axis.
    for (stage, param, v) in &ov.sets {
        if let Some(a) = axes.iter().find(|a| axis_sets(a, stage, param)) {
            if ov.force_override {
                tracing::warn!(
                    "--set {stage}.{param}={v} --force-override: every cell of the sweep axis `{}` gets this value, but ids and tables still label the cells by `{}`",
                    a.name,
                    a.name
                );
            } else {
                let labels: Vec<&str> = a.values.iter().map(|(l, _)| l.as_str()).collect();
                return Err(RunnerError::Usage(format!(
                    "--set {stage}.{param}={v}: `{stage}.{param}` is swept by the axis `{}` (values {})\n  help: to run other values use --sweep {stage}.{param}=V1,V2,... (it replaces the axis's values); to set it in every cell anyway add --force-override",
                    a.name,
                    labels.join(", ")
                )));
            }
        }
    }
    let mut by_cell: HashMap<(String, Vec<(String, String)>), usize> = HashMap::new();
    for n in &order {
        let name = graph[*n];
        let (decl, _) = &exp.stages[name];
        let decl = decl.get_ref();
        let stage = registry.get(decl.kind.get_ref()).expect("kind checked");
        let src = src_of(name);
        for combo in combinations(&axes, &reach[name]) {
            let mut params = raw[name].clone();
            for (ai, vi) in &combo {
                for (s, p, v) in &axes[*ai].values[*vi].1 {
                    if s == name && !p.starts_with("inputs.") {
                        set_param(&mut params, p, v.clone());
                    }
                }
            }
            let before_sets = params.clone();
            for (s, p, v) in &ov.sets {
                if s == name {
                    set_param(&mut params, p, v.clone());
                }
            }
            let cell: Vec<(String, String)> = combo
                .iter()
                .map(|(ai, vi)| (axes[*ai].name.clone(), axes[*ai].values[*vi].0.clone()))
                .collect();
            let id = if cell.is_empty() {
                name.to_string()
            } else {
                format!(
                    "{name}[{}]",
                    cell.iter()
                        .map(|(a, v)| format!("{a}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            };
            check_finite(exp, src, name, &id, &params, &combo, &axes, ov)?;
            let canon = stage.params(&params).map_err(|e| {
                // A bad --set value is the command line's fault.
                // (it is when the parameters without --set are fine).
                let mine: Vec<&(String, String, toml::Value)> =
                    ov.sets.iter().filter(|(s, _, _)| s == name).collect();
                let culprit = if !mine.is_empty() && stage.params(&before_sets).is_ok() {
                    mine.iter()
                        .find(|(_, p, _)| {
                            e.key
                                .as_deref()
                                .is_some_and(|k| p.split('.').next() == k.split('.').next())
                        })
                        .or_else(|| {
                            mine.iter().find(|(_, _, v)| {
                                v.is_array() || v.as_str().is_some_and(|t| t.contains(','))
                            })
                        })
                        .or(mine.first())
                        .copied()
                } else {
                    None
                };
                if let Some((_, p, v)) = culprit {
                    let several = match v {
                        toml::Value::Array(a) => Some(
                            a.iter()
                                .map(label_of)
                                .collect::<Vec<_>>()
                                .join(","),
                        ),
                        toml::Value::String(t) if t.contains(',') => Some(t.clone()),
                        _ => None,
                    };
                    return RunnerError::Usage(format!(
                        "--set {name}.{p}={v}: stage `{id}` ({}): {}{}",
                        decl.kind.get_ref(),
                        e.message,
                        match several {
                            Some(list) => format!("\n  help: --set gives one value; to run several, sweep them: --sweep {name}.{p}={list}"),
                            None => String::new(),
                        }
                    ));
                }
                let mut path = vec!["stages", name, "params"];
                if let Some(k) = &e.key {
                    path.push(k.as_str());
                }
                let help = e
                    .suggestion
                    .as_ref()
                    .map(|s| format!("did you mean `{s}`?"));
                src.locate(
                    src.span_or_prefix(&path),
                    format!("stage `{id}` ({}): {}", decl.kind.get_ref(), e.message),
                    help,
                )
            })?;
            let mut inputs = Vec::new();
            let mut deps = Vec::new();
            // Declared inputs, then those this cell's sweep values set (which replace them).
            let mut wanted: Vec<ResolvedInput> = resolved[name].clone();
            for (ai, vi) in &combo {
                for ((a, v, s, slot), (target, default_file)) in &swept_inputs {
                    if a == ai && v == vi && s == name {
                        wanted.retain(|(sl, _, _)| sl != slot);
                        wanted.push((slot.clone(), target.clone(), default_file.clone()));
                    }
                }
            }
            wanted.sort_by(|a, b| a.0.cmp(&b.0));
            for (slot, target, default_file) in &wanted {
                let source = match target {
                    Ok((up, file)) => {
                        let up_cell: Vec<(String, String)> = cell
                            .iter()
                            .filter(|(a, _)| {
                                reach[up.as_str()].iter().any(|ai| &axes[*ai].name == a)
                            })
                            .cloned()
                            .collect();
                        let node = by_cell[&(up.clone(), up_cell)];
                        deps.push(node);
                        InputSource::Node {
                            node,
                            file: file.clone(),
                        }
                    }
                    Err((path, declared)) => InputSource::External {
                        path: path.clone(),
                        declared: declared.clone(),
                    },
                };
                inputs.push(NodeInput {
                    slot: slot.clone(),
                    source,
                    default_file: default_file.clone(),
                    soft: false,
                });
            }
            let mut publish = Vec::new();
            for (file, to) in &decl.publish {
                let filled = fill_template(to, &cell, &params);
                let dest = publish_target(&project_root, file, &filled).map_err(|why| {
                    src.locate(
                        src.span_or_prefix(&["stages", name, "publish", file]),
                        format!("stage `{id}`: publish `{file}` = \"{to}\": {why}"),
                        Some("publish targets are paths under the project's results/ folder, e.g. \"results/samples_{cell}.png\"".into()),
                    )
                })?;
                publish.push((file.clone(), dest));
            }
            by_cell.insert((name.to_string(), cell.clone()), nodes.len());
            nodes.push(Node {
                id,
                stage: name.to_string(),
                kind: decl.kind.get_ref().clone(),
                version: stage.version(),
                cell,
                params: canon,
                inputs,
                publish,
                uses_device: stage.uses_device(),
                deps,
                // The file only: finding the line means parsing it again,
                // which a DAG of many nodes cannot afford per node.
                declared: src.path.display().to_string(),
            });
        }
    }

    // 7. Tables.
    for (ti, t) in exp.file.tables.iter().enumerate() {
        let tsrc = &exp.source;
        // Table errors point at the table's `stage` key.
        let tspan = || Some(t.stage.span());
        let stage = t.stage.get_ref();
        if !exp.stages.contains_key(stage) {
            let help = mrbm_stage::nearest(stage, names.iter().copied())
                .map(|n| format!("did you mean `{n}`?"));
            return Err(tsrc.locate(
                tspan(),
                format!("table `{}`: there is no stage `{stage}`", t.name),
                help,
            ));
        }
        let mut metrics = t.metrics.clone();
        if let Some(m) = &t.metric {
            metrics.insert(0, m.clone());
        }
        if metrics.is_empty() {
            return Err(tsrc.locate(
                tspan(),
                format!("table `{}` names no metric", t.name),
                Some("add `metric = \"test_error\"` (or `metrics = [...]`)".into()),
            ));
        }
        let find_axis = |want: &Option<String>| -> Result<Option<String>, RunnerError> {
            match want {
                None => Ok(None),
                Some(w) => axes
                    .iter()
                    .find(|a| &a.name == w || a.path.as_deref() == Some(w.as_str()))
                    .map(|a| Some(a.name.clone()))
                    .ok_or_else(|| {
                        let valid: Vec<&str> = axes.iter().map(|a| a.name.as_str()).collect();
                        tsrc.locate(
                            tspan(),
                            format!("table `{}`: `{w}` is not a sweep axis", t.name),
                            Some(format!(
                                "sweep axes: {}",
                                if valid.is_empty() {
                                    "none".into()
                                } else {
                                    valid.join(", ")
                                }
                            )),
                        )
                    }),
            }
        };
        let rows = find_axis(&t.rows)?;
        let columns = find_axis(&t.columns)?;
        if let Some(how) = &t.aggregate {
            if !crate::table::AGGREGATES.contains(&how.get_ref().as_str()) {
                return Err(tsrc.locate(
                    Some(how.span()),
                    format!(
                        "table `{}`: aggregate = \"{}\" is not known",
                        t.name,
                        how.get_ref()
                    ),
                    Some(format!("one of: {}", crate::table::AGGREGATES.join(", "))),
                ));
            }
        }
        // Axes of several values that reach the stage but that the table
        // does not name: their cells would share a row and column.
        let mut unnamed: Vec<&str> = Vec::new();
        for a in &axes {
            let named = Some(&a.name) == rows.as_ref() || Some(&a.name) == columns.as_ref();
            if !named
                && a.values.len() > 1
                && nodes
                    .iter()
                    .any(|n| &n.stage == stage && n.cell.iter().any(|(x, _)| x == &a.name))
            {
                unnamed.push(a.name.as_str());
            }
        }
        if !unnamed.is_empty() && t.aggregate.is_none() {
            let from_cli: String = ov
                .sweeps
                .iter()
                .map(|(s, p, _)| format!("{s}.{p}"))
                .filter(|target| {
                    axes.iter().any(|a| {
                        a.path.as_deref() == Some(target.as_str())
                            && unnamed.contains(&a.name.as_str())
                    })
                })
                .map(|target| format!("; `{target}` is swept by --sweep {target}"))
                .collect();
            let list = unnamed
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(tsrc.locate(
                tspan(),
                format!(
                    "table `{}`: stage `{stage}` is swept over {list}, which the table names neither as `rows` nor as `columns`; each of its cells would hold several results",
                    t.name
                ),
                Some(format!(
                    "name {} as `rows` or `columns`, or say how to combine them: aggregate = \"mean\" (or \"min\", \"max\"){}",
                    if unnamed.len() == 1 { "it" } else { "them" },
                    from_cli
                )),
            ));
        }
        let mut cells = Vec::new();
        let mut inputs = Vec::new();
        let mut deps = Vec::new();
        for (i, node) in nodes.iter().enumerate().filter(|(_, n)| &n.stage == stage) {
            let pick = |axis: &Option<String>| {
                axis.as_ref().and_then(|a| {
                    node.cell
                        .iter()
                        .find(|(n, _)| n == a)
                        .map(|(_, v)| v.clone())
                })
            };
            let slot = format!("cell{}", cells.len());
            cells.push(TableCell {
                slot: slot.clone(),
                id: node.id.clone(),
                row: pick(&rows).unwrap_or_else(|| "all".into()),
                column: pick(&columns),
            });
            inputs.push(NodeInput {
                slot,
                source: InputSource::Node {
                    node: i,
                    file: None,
                },
                default_file: None,
                soft: true,
            });
            deps.push(i);
        }
        // Computed extra columns: one cell per node of their stage, placed
        // by the row axis.
        let mut extra = Vec::new();
        for (header, x) in &t.extra {
            if !exp.stages.contains_key(&x.stage) {
                let help = mrbm_stage::nearest(&x.stage, names.iter().copied())
                    .map(|n| format!("did you mean `{n}`?"));
                return Err(tsrc.locate(
                    tspan(),
                    format!(
                        "table `{}`: extra column `{header}` names no stage `{}`",
                        t.name, x.stage
                    ),
                    help,
                ));
            }
            for (i, node) in nodes.iter().enumerate().filter(|(_, n)| n.stage == x.stage) {
                let row = rows
                    .as_ref()
                    .and_then(|a| {
                        node.cell
                            .iter()
                            .find(|(n, _)| n == a)
                            .map(|(_, v)| v.clone())
                    })
                    .unwrap_or_else(|| "all".into());
                let slot = format!("extra{}", extra.len());
                extra.push(crate::table::ExtraCell {
                    slot: slot.clone(),
                    header: header.clone(),
                    metric: x.metric.clone(),
                    row,
                });
                inputs.push(NodeInput {
                    slot,
                    source: InputSource::Node {
                        node: i,
                        file: None,
                    },
                    default_file: None,
                    soft: true,
                });
                deps.push(i);
            }
        }
        let row_order = axis_order(&axes, &rows);
        let column_order = axis_order(&axes, &columns);
        let reference = t
            .reference
            .iter()
            .map(|(col, m)| {
                (
                    col.clone(),
                    m.iter().map(|(r, v)| (r.clone(), v.clone())).collect(),
                )
            })
            .collect();
        let tp = TableParams {
            name: t.name.clone(),
            metrics,
            rows,
            columns,
            row_order,
            column_order,
            cells,
            reference,
            precision: t.precision,
            extra,
            aggregate: t.aggregate.as_ref().map(|a| a.get_ref().clone()),
        };
        let params = serde_json::to_value(&tp).map_err(|e| RunnerError::Usage(e.to_string()))?;
        let id = format!("table:{}", t.name);
        let results = project_root.join("results");
        let mut publish = Vec::new();
        for (file, suffix) in [("table.csv", "csv"), ("provenance.json", "provenance.json")] {
            let dest = confine::clean_relative(&t.name)
                .and_then(|_| {
                    publish_target(&project_root, file, &format!("results/{}.{suffix}", t.name))
                })
                .map_err(|why| {
                    tsrc.locate(
                        tsrc.span_of_item(&["tables"], ti, "name").or_else(tspan),
                        format!("table name `{}`: {why}", t.name),
                        Some(format!(
                            "a table is written to results/NAME.csv in the project ({}); name it without `..` or a leading `/`",
                            results.display()
                        )),
                    )
                })?;
            publish.push((file.to_string(), dest));
        }
        nodes.push(Node {
            id,
            stage: format!("table:{}", t.name),
            kind: "table".into(),
            version: crate::table::VERSION,
            cell: vec![],
            params,
            inputs,
            publish,
            uses_device: false,
            deps,
            declared: tsrc.place(
                tsrc.span_of_item(&["tables"], ti, "metrics")
                    .or_else(|| tsrc.span_of_item(&["tables"], ti, "metric"))
                    .or_else(tspan),
            ),
        });
    }

    Ok(Dag {
        experiment: exp.name.clone(),
        nodes,
        axes,
        project_root,
        data_root,
    })
}

/// Resolve one input's text: another stage (`stage` or `stage/file`), a
/// `data:` path under the data root, or a path relative to the declaring file.
// Each argument is one part of the input's context; a struct for one call
// site pair would only rename them.
#[allow(clippy::too_many_arguments)]
fn resolve_target(
    name: &str,
    slot: &str,
    text: &str,
    // Where errors point (the key's span): computed only on an error, since
    // finding a key's span re-parses the file.
    span: &dyn Fn() -> Option<std::ops::Range<usize>>,
    // "file:line:col" of the input, computed only when needed (an external
    // path records it; computing it for every input was quadratic).
    declared: &dyn Fn() -> String,
    src: &Source,
    names: &[&str],
    data_root: &Option<PathBuf>,
) -> Result<InputTarget, RunnerError> {
    let first = text.split('/').next().unwrap_or(text);
    if names.binary_search(&first).is_ok() && !text.starts_with("data:") {
        let rest = text[first.len()..].trim_start_matches('/');
        if first == name {
            return Err(src.locate(span(), format!("stage `{name}` reads its own output"), None));
        }
        Ok(Ok((
            first.to_string(),
            (!rest.is_empty()).then(|| rest.to_string()),
        )))
    } else if let Some(rel) = text.strip_prefix("data:") {
        let Some(root) = data_root else {
            return Err(src.locate(span(), format!("stage `{name}`: input `{slot}` = \"{text}\" needs a data root"), Some("set `data_root = \"...\"` in the experiment, the MRBM_DATA variable, or --data-root".into())));
        };
        let bad = |why: String| {
            src.locate(
                span(),
                format!("stage `{name}`: input `{slot}` = \"{text}\": {why}"),
                Some(format!(
                    "`data:` paths stay inside the data root ({}); write data kept elsewhere as a plain path",
                    root.display()
                )),
            )
        };
        let clean = confine::clean_relative(rel).map_err(&bad)?;
        let path = root.join(clean);
        confine::no_symlink_escape(root, &path).map_err(&bad)?;
        Ok(Err((path, declared())))
    } else {
        if !text.contains('/') && !text.contains('.') && !Path::new(text).exists() {
            let help = mrbm_stage::nearest(text, names.iter().copied()).map(|n| format!("did you mean stage `{n}`?")).unwrap_or_else(|| "name a stage, `stage/file`, `data:relative/path`, or a path relative to this file".into());
            return Err(src.locate(span(), format!("stage `{name}`: input `{slot}` = \"{text}\" names no stage and no existing file"), Some(help)));
        }
        Ok(Err((dir_of(&src.path).join(text), declared())))
    }
}

/// Does an axis set STAGE.PARAM (or a part of it, or a table holding it)?
fn axis_sets(a: &Axis, stage: &str, param: &str) -> bool {
    a.values.iter().any(|(_, assigns)| {
        assigns.iter().any(|(s, p, _)| {
            s == stage
                && (p == param
                    || param.starts_with(&format!("{p}."))
                    || p.starts_with(&format!("{param}.")))
        })
    })
}

fn axis_order(axes: &[Axis], axis: &Option<String>) -> Vec<String> {
    axis.as_ref()
        .and_then(|a| axes.iter().find(|x| &x.name == a))
        .map(|a| a.values.iter().map(|(l, _)| l.clone()).collect())
        .unwrap_or_default()
}

fn split_target(k: &str) -> Option<(&str, &str)> {
    k.split_once('.')
        .filter(|(s, p)| !s.is_empty() && !p.is_empty())
}

fn check_stage_name(
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

/// Every combination of the given axes' values, as (axis, value) pairs.
fn combinations(axes: &[Axis], which: &[usize]) -> Vec<Vec<(usize, usize)>> {
    let mut out: Vec<Vec<(usize, usize)>> = vec![vec![]];
    for &ai in which {
        let mut next = Vec::new();
        for prefix in &out {
            for vi in 0..axes[ai].values.len() {
                let mut c = prefix.clone();
                c.push((ai, vi));
                next.push(c);
            }
        }
        out = next;
    }
    out
}

/// Where a node's output `file` is published: `to` (filled in) must be a
/// clean path under the project's results/ folder that no symlink leads
/// out of, and `file` a clean path inside the entry.
fn publish_target(project_root: &Path, file: &str, to: &str) -> Result<PathBuf, String> {
    confine::clean_relative(file)?;
    let rel = confine::clean_relative(to)?;
    let mut parts = rel.components();
    if parts.next().map(|c| c.as_os_str()) != Some(std::ffi::OsStr::new("results"))
        || parts.next().is_none()
    {
        return Err(format!("`{to}` is not under results/"));
    }
    let dest = project_root.join(rel);
    confine::no_symlink_escape(&project_root.join("results"), &dest)?;
    Ok(dest)
}

/// Parameters must be finite numbers: `nan` and `inf` are refused where
/// they were written (a `--set`, a sweep value, or the stage's own key).
#[allow(clippy::too_many_arguments)]
fn check_finite(
    exp: &LoadedExperiment,
    src: &Source,
    stage: &str,
    id: &str,
    params: &toml::Table,
    combo: &[(usize, usize)],
    axes: &[Axis],
    ov: &Overrides,
) -> Result<(), RunnerError> {
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
        for (ai, vi) in combo {
            let a = &axes[*ai];
            if a.values[*vi]
                .1
                .iter()
                .any(|(s, p, v)| s == stage && top(p) && bad(v).is_some())
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
fn fill_template(t: &str, cell: &[(String, String)], params: &toml::Table) -> String {
    let mut s = t.to_string();
    for (a, v) in cell {
        s = s.replace(&format!("{{{a}}}"), v);
    }
    for (k, v) in params {
        s = s.replace(&format!("{{{k}}}"), &label_of(v));
    }
    let all = cell
        .iter()
        .map(|(a, v)| format!("{a}{v}"))
        .collect::<Vec<_>>()
        .join("_");
    s.replace("{cell}", &all)
}

/// The stage names around a cycle through `start`, e.g. [a, b, c, a].
fn find_cycle(g: &DiGraph<&str, ()>, start: NodeIndex) -> Vec<String> {
    fn dfs(
        g: &DiGraph<&str, ()>,
        at: NodeIndex,
        start: NodeIndex,
        path: &mut Vec<NodeIndex>,
        seen: &mut BTreeSet<NodeIndex>,
    ) -> bool {
        for next in g.neighbors(at) {
            if next == start {
                return true;
            }
            if seen.insert(next) {
                path.push(next);
                if dfs(g, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start];
    let mut seen = BTreeSet::new();
    dfs(g, start, start, &mut path, &mut seen);
    path.push(start);
    path.into_iter().map(|i| g[i].to_string()).collect()
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
