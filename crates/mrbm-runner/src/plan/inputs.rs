//! Every input resolved to another stage or an external path, the graph of
//! stages they make and its topological order (a cycle is an error).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use petgraph::graph::{DiGraph, NodeIndex};

use crate::error::RunnerError;
use crate::kinds::registry::Registry;
use crate::load::config::{dir_of, LoadedExperiment, Source};
use crate::sys::confine;
use mrbm_stage::InputSlot;

use super::sweep::Axis;
use super::Overrides;

/// Where an input comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputTarget {
    /// Another stage's output, or a file in it.
    Stage { stage: String, file: Option<String> },
    /// A path outside the cache, and the "file:line:col" that declared it.
    External { path: PathBuf, declared: String },
}

/// An input of a stage: its slot, where it comes from, and the slot's
/// default file inside an upstream output.
#[derive(Debug, Clone, PartialEq)]
pub struct WiredInput {
    pub slot: String,
    pub target: InputTarget,
    pub default_file: Option<String>,
}

/// An input that a sweep value sets: `"STAGE.inputs.SLOT" = "..."`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SweptSlot {
    pub axis: usize,
    pub value: usize,
    pub stage: String,
    pub slot: String,
}

/// The stages' inputs and the graph they make.
pub struct Wiring<'a> {
    pub graph: DiGraph<&'a str, ()>,
    /// The stages in topological order.
    pub order: Vec<NodeIndex>,
    /// Stage -> its declared inputs.
    pub declared: BTreeMap<&'a str, Vec<WiredInput>>,
    /// Inputs set by sweep values (they replace the declared ones in the
    /// cells of that value).
    pub swept: HashMap<SweptSlot, WiredInput>,
}

/// Where `data:` inputs are found: --data-root, MRBM_DATA, or the file's
/// `data_root` (relative to the file).
pub fn data_root(exp: &LoadedExperiment, ov: &Overrides) -> Option<PathBuf> {
    ov.data_root
        .clone()
        .or_else(|| std::env::var_os("MRBM_DATA").map(PathBuf::from))
        .or_else(|| {
            exp.file
                .data_root
                .as_ref()
                .map(|r| dir_of(&exp.source.path).join(r))
        })
}

/// What every input resolution shares: the declaring file, the stage
/// names (sorted) and the data root.
struct Resolver<'s> {
    src: &'s Source,
    names: &'s [&'s str],
    data_root: &'s Option<PathBuf>,
}

/// Resolve every declared and swept input, build the stage graph and sort it.
pub fn wire<'a>(
    exp: &'a LoadedExperiment,
    registry: &Registry,
    names: &[&'a str],
    axes: &[Axis],
    data_root: &Option<PathBuf>,
) -> Result<Wiring<'a>, RunnerError> {
    let mut graph: DiGraph<&'a str, ()> = DiGraph::new();
    let idx: HashMap<&str, NodeIndex> = names.iter().map(|n| (*n, graph.add_node(*n))).collect();
    let mut declared = BTreeMap::new();
    for name in exp.stages.keys() {
        let list = declared_inputs(exp, registry, names, data_root, name)?;
        for i in &list {
            if let InputTarget::Stage { stage, .. } = &i.target {
                graph.add_edge(idx[stage.as_str()], idx[name.as_str()], ());
            }
        }
        declared.insert(name.as_str(), list);
    }
    // Inputs set by the sweep: resolved like declared ones; every stage
    // they may read becomes an edge, so the order and the axes reaching a
    // stage hold for all cells.
    // (In the order they are written: the edges' order is the nodes'.)
    let swept = swept_inputs(exp, registry, names, axes, data_root)?;
    for (at, i) in &swept {
        if let InputTarget::Stage { stage, .. } = &i.target {
            graph.add_edge(idx[stage.as_str()], idx[at.stage.as_str()], ());
        }
    }
    let swept = swept.into_iter().collect();
    let order = petgraph::algo::toposort(&graph, None).map_err(|cycle| {
        let start = cycle.node_id();
        let path = find_cycle(&graph, start);
        let first = graph[start];
        let src = exp.stage_source(first);
        src.locate(
            src.span_of(&["stages", first]),
            format!("the stages form a cycle: {}", path.join(" -> ")),
            Some("a stage cannot depend, directly or not, on its own output".into()),
        )
    })?;
    Ok(Wiring {
        graph,
        order,
        declared,
        swept,
    })
}

/// The declared inputs of stage `name`, each checked against its kind's
/// slots; a required slot left out is an error.
fn declared_inputs(
    exp: &LoadedExperiment,
    registry: &Registry,
    names: &[&str],
    data_root: &Option<PathBuf>,
    name: &str,
) -> Result<Vec<WiredInput>, RunnerError> {
    let (decl, _) = &exp.stages[name];
    let decl = decl.get_ref();
    let kind = decl.kind.get_ref();
    let stage = registry.get(kind).expect("kind checked");
    let slots = stage.inputs();
    // An open kind (collect) takes any name: a stage's folder, no default file.
    let open_slot = InputSlot::optional("", None, "");
    let src = exp.stage_source(name);
    let r = Resolver {
        src,
        names,
        data_root,
    };
    let mut list = Vec::new();
    for (slot, value) in &decl.inputs {
        // The value's own span: re-parsing the file for the key's span
        // on every input made building the DAG quadratic in its size.
        let span = Some(value.span());
        let found = slots
            .iter()
            .find(|s| s.name == slot)
            .or_else(|| stage.open_inputs().then_some(&open_slot));
        let Some(spec) = found else {
            let span = src.span_of(&["stages", name, "inputs", slot]).or(span);
            let valid: Vec<&str> = slots.iter().map(|s| s.name).collect();
            let help = mrbm_stage::nearest(slot, valid.iter().copied())
                .map(|n| format!("did you mean `{n}`?"))
                .unwrap_or_else(|| {
                    format!("stage kind `{kind}` takes inputs: {}", list_or_none(&valid))
                });
            return Err(src.locate(
                span,
                format!("stage `{name}`: unknown input `{slot}`"),
                Some(help),
            ));
        };
        let target = r.target(
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
        )?;
        list.push(WiredInput {
            slot: slot.clone(),
            target,
            default_file: spec.default_file.map(str::to_string),
        });
    }
    if let Some(spec) = slots
        .iter()
        .find(|s| s.required && !decl.inputs.contains_key(s.name))
    {
        return Err(src.locate(
            src.span_of(&["stages", name]),
            format!(
                "stage `{name}` ({kind}) needs input `{}`: {}",
                spec.name, spec.doc
            ),
            Some(format!(
                "add `inputs = {{ {} = \"<stage or path>\" }}`",
                spec.name
            )),
        ));
    }
    Ok(list)
}

fn list_or_none(valid: &[&str]) -> String {
    if valid.is_empty() {
        "none".into()
    } else {
        valid.join(", ")
    }
}

/// Inputs set by sweep values (`"STAGE.inputs.SLOT" = "..."` in a variant
/// or axis), resolved like declared ones.
fn swept_inputs(
    exp: &LoadedExperiment,
    registry: &Registry,
    names: &[&str],
    axes: &[Axis],
    data_root: &Option<PathBuf>,
) -> Result<Vec<(SweptSlot, WiredInput)>, RunnerError> {
    let r = Resolver {
        src: &exp.source,
        names,
        data_root,
    };
    let mut swept = Vec::new();
    for (ai, a) in axes.iter().enumerate() {
        for (vi, value) in a.values.iter().enumerate() {
            let label = &value.label;
            for assign in &value.assigns {
                let Some(slot) = assign.param.strip_prefix("inputs.") else {
                    continue;
                };
                let stage_name = &assign.stage;
                let span = exp
                    .source
                    .span_of(&["sweep", &a.name])
                    .or_else(|| exp.source.span_of(&["sweep"]));
                let (decl, _) = &exp.stages[stage_name];
                let kind = decl.get_ref().kind.get_ref();
                let stage = registry.get(kind).expect("kind checked");
                let Some(spec) = stage.inputs().iter().find(|s| s.name == slot) else {
                    let valid: Vec<&str> = stage.inputs().iter().map(|s| s.name).collect();
                    return Err(exp.source.locate(span, format!("sweep axis `{}`, value `{label}`: stage `{stage_name}` ({kind}) has no input `{slot}`", a.name), Some(format!("its inputs: {}", list_or_none(&valid)))));
                };
                let Some(text) = assign.value.as_str() else {
                    return Err(exp.source.locate(span, format!("sweep axis `{}`, value `{label}`: input `{stage_name}.inputs.{slot}` must be a string", a.name), None));
                };
                let at = span.clone().map(|s| s.start).unwrap_or(0);
                let target = r.target(stage_name, slot, text, &|| span.clone(), &|| {
                    let (l, c) = exp.source.line_col(at);
                    format!("{}:{l}:{c}", exp.source.path.display())
                })?;
                swept.push((
                    SweptSlot {
                        axis: ai,
                        value: vi,
                        stage: stage_name.clone(),
                        slot: slot.to_string(),
                    },
                    WiredInput {
                        slot: slot.to_string(),
                        target,
                        default_file: spec.default_file.map(str::to_string),
                    },
                ));
            }
        }
    }
    Ok(swept)
}

impl Resolver<'_> {
    /// Resolve one input's text: another stage (`stage` or `stage/file`), a
    /// `data:` path under the data root, or a path relative to the
    /// declaring file. `span` (where errors point) and `declared` ("file:
    /// line:col", kept by an external path) are computed only when needed:
    /// both re-read the file.
    fn target(
        &self,
        name: &str,
        slot: &str,
        text: &str,
        span: &dyn Fn() -> Option<Range<usize>>,
        declared: &dyn Fn() -> String,
    ) -> Result<InputTarget, RunnerError> {
        let (src, names) = (self.src, self.names);
        let first = text.split('/').next().unwrap_or(text);
        if names.binary_search(&first).is_ok() && !text.starts_with("data:") {
            let rest = text[first.len()..].trim_start_matches('/');
            if first == name {
                return Err(src.locate(
                    span(),
                    format!("stage `{name}` reads its own output"),
                    None,
                ));
            }
            Ok(InputTarget::Stage {
                stage: first.to_string(),
                file: (!rest.is_empty()).then(|| rest.to_string()),
            })
        } else if let Some(rel) = text.strip_prefix("data:") {
            let Some(root) = self.data_root else {
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
            Ok(InputTarget::External {
                path,
                declared: declared(),
            })
        } else {
            // Relative to the declaring file, as the README says (never to
            // the folder mrbm runs in).
            let path = dir_of(&src.path).join(text);
            if !text.contains('/') && !text.contains('.') && !path.exists() {
                let help = mrbm_stage::nearest(text, names.iter().copied()).map(|n| format!("did you mean stage `{n}`?")).unwrap_or_else(|| "name a stage, `stage/file`, `data:relative/path`, or a path relative to this file".into());
                return Err(src.locate(span(), format!("stage `{name}`: input `{slot}` = \"{text}\" names no stage and no existing file"), Some(help)));
            }
            // `splt/train.safetensors`: no such file, and its first part is
            // one typo away from a stage. Refused now (run would fail on
            // the missing file) with the stage it likely means.
            if text.contains('/') && !path.exists() && !Path::new(first).is_absolute() {
                if let Some(n) = mrbm_stage::nearest(first, names.iter().copied())
                    .filter(|n| strsim::jaro_winkler(first, n) >= 0.8)
                {
                    let rest = text[first.len()..].trim_start_matches('/');
                    return Err(src.locate(
                        span(),
                        format!("stage `{name}`: input `{slot}` = \"{text}\": no stage `{first}` and no file {}", path.display()),
                        Some(format!("did you mean stage `{n}` (\"{n}/{rest}\")?")),
                    ));
                }
            }
            Ok(InputTarget::External {
                path,
                declared: declared(),
            })
        }
    }
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

/// Which sweep axes reach each stage: those touching it or anything upstream.
pub fn reach<'a>(axes: &[Axis], wiring: &Wiring<'a>) -> HashMap<&'a str, Vec<usize>> {
    let mut reach: HashMap<&str, Vec<usize>> = HashMap::new();
    for n in &wiring.order {
        let name = wiring.graph[*n];
        let mut set: BTreeSet<usize> = BTreeSet::new();
        set.extend((0..axes.len()).filter(|ai| axes[*ai].touches(name)));
        for up in wiring
            .graph
            .neighbors_directed(*n, petgraph::Direction::Incoming)
        {
            set.extend(reach[wiring.graph[up]].iter().copied());
        }
        reach.insert(name, set.into_iter().collect());
    }
    reach
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_is_named_from_its_first_stage_back_to_it() {
        let mut g: DiGraph<&str, ()> = DiGraph::new();
        let a = g.add_node("a");
        let b = g.add_node("b");
        let c = g.add_node("c");
        let d = g.add_node("d");
        g.add_edge(a, b, ());
        g.add_edge(b, c, ());
        g.add_edge(c, a, ());
        g.add_edge(c, d, ());
        assert_eq!(find_cycle(&g, a), ["a", "b", "c", "a"]);
    }
}
