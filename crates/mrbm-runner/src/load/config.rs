//! Pipeline and experiment files: the TOML schema, loading, and error
//! locations (file:line:col) for everything a user can get wrong.
//!
//! A pipeline file declares named stages:
//!
//! ```toml
//! [stages.train]
//! kind = "train"
//! inputs = { data = "split/train.safetensors" }
//! params = { N = 255, epochs = 5 }
//! publish = { "loss.png" = "results/loss_N{N}.png" }
//! ```
//!
//! An experiment file names a pipeline (`pipeline = "../pipelines/x.toml"`) or
//! declares its stages inline, and adds a sweep, profiles and tables.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Located, RunnerError};

/// One stage as declared in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageDecl {
    pub kind: Spanned<String>,
    #[serde(default)]
    pub params: toml::Table,
    /// slot -> stage name, `stage/file`, `data:relative/path` or a path.
    #[serde(default)]
    pub inputs: BTreeMap<String, Spanned<String>>,
    /// output file -> project path; `{param}` placeholders take sweep values.
    #[serde(default)]
    pub publish: BTreeMap<String, String>,
    /// Free text shown by `mrbm dag`.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    #[serde(default)]
    pub description: Option<String>,
    pub stages: BTreeMap<String, Spanned<StageDecl>>,
}

/// A table written to results/NAME.csv.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDecl {
    pub name: String,
    /// The stage whose cells fill the table.
    pub stage: Spanned<String>,
    /// Metric names of that stage (one column per metric when several).
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub metrics: Vec<String>,
    /// Sweep axis for the rows (e.g. "dataset", "N" or "train.N").
    #[serde(default)]
    pub rows: Option<String>,
    /// Sweep axis for the columns; without it, one column per metric.
    #[serde(default)]
    pub columns: Option<String>,
    /// Fixed extra columns (e.g. the paper's values): column -> row -> value.
    #[serde(default)]
    pub reference: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// Computed extra columns from another stage, one value per row (e.g. a
    /// baseline that the column sweep does not touch):
    /// `[tables.extra.baseline] stage = "svm_pixels", metric = "test_error"`.
    #[serde(default)]
    pub extra: BTreeMap<String, ExtraColumnDecl>,
    /// How to combine the cells of sweep axes named neither by `rows` nor
    /// by `columns`: "mean", "min" or "max". Without it such axes are an error.
    #[serde(default)]
    pub aggregate: Option<Spanned<String>>,
    /// With `aggregate`: the spread of the combined cells beside each
    /// column: "std" (sample standard deviation) or "range" (min and max).
    #[serde(default)]
    pub spread: Option<Spanned<String>>,
    /// Decimal places in the terminal and CSV.
    #[serde(default = "default_precision")]
    pub precision: usize,
}

/// One computed extra column of a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraColumnDecl {
    pub stage: String,
    pub metric: String,
}

fn default_precision() -> usize {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Path of a pipeline file, relative to this file.
    #[serde(default)]
    pub pipeline: Option<Spanned<String>>,
    /// Inline stages (merged over the pipeline's, same names replace).
    #[serde(default)]
    pub stages: BTreeMap<String, Spanned<StageDecl>>,
    /// Where `data:` inputs are looked up, relative to this file (the
    /// MRBM_DATA variable and --data-root override it).
    #[serde(default)]
    pub data_root: Option<String>,
    /// auto | cpu | wgpu | cuda[:INDEX]; --device overrides it.
    #[serde(default)]
    pub device: Option<String>,
    /// Axis -> values. `"stage.param" = [..]` sweeps one parameter (the axis
    /// is named after the parameter); `NAME = { param = "stage.param",
    /// values = [..] }` names the axis; a table of named variants, each a
    /// table of `"stage.param" = value`, sweeps several parameters together
    /// (e.g. a data set and its channels).
    #[serde(default)]
    pub sweep: BTreeMap<String, Spanned<toml::Value>>,
    /// Named sets of `"stage.param" = value` overrides (e.g. `scaled`, `full`).
    #[serde(default)]
    pub profiles: BTreeMap<String, Spanned<toml::Table>>,
    /// The profile used when --profile is not given.
    #[serde(default)]
    pub default_profile: Option<String>,
    #[serde(default)]
    pub tables: Vec<TableDecl>,
    /// Where the stages run: `[executor] kind = "slurm"` and Slurm's
    /// options (`mrbm_runner::load::executor`); `--executor` overrides the kind.
    #[serde(default)]
    pub executor: Option<crate::load::executor::ExecutorDecl>,
}

/// A loaded source file, kept to turn byte spans into line:col.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Source, RunnerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RunnerError::Usage(format!("cannot read {}: {e}", path.display())))?;
        Ok(Source {
            path: path.to_path_buf(),
            text,
        })
    }

    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rsplit('\n')
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(0)
            + 1;
        (line, col)
    }

    /// "file:line:col" of a span ("file" alone without one).
    pub fn place(&self, span: Option<Range<usize>>) -> String {
        match span {
            Some(s) => {
                let (l, c) = self.line_col(s.start);
                format!("{}:{l}:{c}", self.path.display())
            }
            None => self.path.display().to_string(),
        }
    }

    pub fn locate(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        help: Option<String>,
    ) -> RunnerError {
        let (line, col) = span.map(|s| self.line_col(s.start)).unwrap_or((0, 0));
        RunnerError::Config(Box::new(Located {
            file: self.path.clone(),
            line,
            col,
            message: message.into(),
            help,
        }))
    }

    /// Span of the key at `path` (tables only), or of the deepest prefix found.
    pub fn span_of(&self, path: &[&str]) -> Option<Range<usize>> {
        let root = toml::de::DeTable::parse(&self.text).ok()?;
        let mut table = root.get_ref();
        let mut best = None;
        for (i, seg) in path.iter().enumerate() {
            let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *seg)?;
            best = Some(k.span());
            if i + 1 == path.len() {
                return best;
            }
            match v.get_ref() {
                toml::de::DeValue::Table(t) => table = t,
                _ => return best,
            }
        }
        best
    }

    /// Span of `key` in the `i`-th table of the array of tables at `path`
    /// (e.g. `name` in the second `[[tables]]`).
    pub fn span_of_item(&self, path: &[&str], i: usize, key: &str) -> Option<Range<usize>> {
        let root = toml::de::DeTable::parse(&self.text).ok()?;
        let mut table = root.get_ref();
        for (n, seg) in path.iter().enumerate() {
            let (_, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *seg)?;
            match v.get_ref() {
                toml::de::DeValue::Table(t) if n + 1 < path.len() => table = t,
                toml::de::DeValue::Array(a) if n + 1 == path.len() => {
                    let item = a.get(i)?;
                    let toml::de::DeValue::Table(t) = item.get_ref() else {
                        return Some(item.span());
                    };
                    return t
                        .iter()
                        .find(|(k, _)| k.get_ref().as_ref() == key)
                        .map(|(k, _)| k.span())
                        .or(Some(item.span()));
                }
                _ => return None,
            }
        }
        None
    }

    /// Span of the key at `path`, falling back to its longest existing prefix.
    pub fn span_or_prefix(&self, path: &[&str]) -> Option<Range<usize>> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.span_of(&path[..n]))
    }
}

/// Parse TOML into `T`, turning serde's errors into file:line:col messages
/// with the nearest valid key suggested.
pub fn parse_toml<T: for<'de> Deserialize<'de>>(src: &Source) -> Result<T, RunnerError> {
    toml::from_str::<T>(&src.text).map_err(|e| {
        let message = e.message().trim().to_string();
        let help = suggestion_from_serde(&message);
        let span = e.span().map(|s| unclosed_at(&src.text, &message, s));
        src.locate(span, message, help)
    })
}

/// An inline table or array left open (`params = { a = 1` then a newline)
/// is reported where the parser gave up: the start of a later line. Point
/// at the end of the last line with text before it instead, where the
/// closing bracket is missing.
fn unclosed_at(text: &str, message: &str, span: Range<usize>) -> Range<usize> {
    let unclosed = message.contains("inline table")
        || message.contains("expected `,`")
        || message.contains("expected `}`")
        || message.contains("expected `]`");
    let start = span.start.min(text.len());
    if !unclosed || (start > 0 && !text[..start].ends_with('\n')) {
        return span;
    }
    match text[..start].trim_end().len() {
        0 => span,
        end => end..end,
    }
}

/// "unknown field `x`, expected one of `a`, `b`" -> "did you mean `a`?"
pub fn suggestion_from_serde(message: &str) -> Option<String> {
    if !(message.starts_with("unknown field") || message.starts_with("unknown variant")) {
        return None;
    }
    let ticks: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let (bad, valid) = ticks.split_first()?;
    match mrbm_stage::nearest(bad, valid.iter().copied()) {
        Some(n) => Some(format!("did you mean `{n}`?")),
        None => Some(format!(
            "valid keys: {}",
            valid
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// An experiment with its pipeline resolved: every stage, with the source
/// it was declared in (for error locations).
#[derive(Debug, Clone)]
pub struct LoadedExperiment {
    pub name: String,
    pub file: ExperimentFile,
    pub source: Source,
    pub pipeline_source: Option<Source>,
    /// name -> (declaration, declared in the experiment file?)
    pub stages: BTreeMap<String, (Spanned<StageDecl>, bool)>,
}

impl LoadedExperiment {
    pub fn stage_source(&self, name: &str) -> &Source {
        match self.stages.get(name) {
            Some((_, false)) => self.pipeline_source.as_ref().unwrap_or(&self.source),
            _ => &self.source,
        }
    }

    /// The directory relative paths in a stage's declaration are taken from.
    pub fn stage_dir(&self, name: &str) -> PathBuf {
        dir_of(&self.stage_source(name).path)
    }
}

pub fn dir_of(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Load an experiment file, or a bare pipeline file (no sweep, no tables).
pub fn load(path: &Path) -> Result<LoadedExperiment, RunnerError> {
    let source = Source::read(path)?;
    // A file with only [stages] and description is also a valid experiment.
    let file: ExperimentFile = parse_toml(&source)?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("experiment")
        .to_string();
    let mut stages = BTreeMap::new();
    let mut pipeline_source = None;
    if let Some(p) = &file.pipeline {
        let ppath = dir_of(path).join(p.get_ref());
        if !ppath.is_file() {
            return Err(source.locate(
                Some(p.span()),
                format!(
                    "pipeline file `{}` not found (looked at {})",
                    p.get_ref(),
                    ppath.display()
                ),
                Some("the path is relative to this experiment file".into()),
            ));
        }
        let psrc = Source::read(&ppath)?;
        let pf: PipelineFile = parse_toml(&psrc)?;
        for (name, decl) in pf.stages {
            stages.insert(name, (decl, false));
        }
        pipeline_source = Some(psrc);
    }
    for (name, decl) in &file.stages {
        stages.insert(name.clone(), (decl.clone(), true));
    }
    if stages.is_empty() {
        return Err(source.locate(
            None,
            "no stages: declare `[stages.NAME]` tables or a `pipeline = \"path\"`",
            None,
        ));
    }
    Ok(LoadedExperiment {
        name: file.name.clone().unwrap_or(stem),
        file,
        source,
        pipeline_source,
        stages,
    })
}

/// Parse a `--set STAGE.PARAM=VALUE` override. The value is TOML (numbers,
/// booleans, strings, arrays); a bare word is taken as a string.
pub fn parse_set(arg: &str) -> Result<(String, String, toml::Value), RunnerError> {
    let usage = || {
        RunnerError::Usage(format!(
            "--set `{arg}`: expected STAGE.PARAM=VALUE, e.g. --set train.lr=0.01"
        ))
    };
    let (lhs, rhs) = arg.split_once('=').ok_or_else(usage)?;
    let (stage, param) = lhs.trim().split_once('.').ok_or_else(usage)?;
    if stage.is_empty() || param.is_empty() {
        return Err(usage());
    }
    Ok((
        stage.to_string(),
        param.to_string(),
        parse_value(rhs.trim()),
    ))
}

/// Parse a `--sweep STAGE.PARAM=V1,V2,...` axis. The values are TOML
/// (`10,30`, `0.1,0.01`, `"a","b"`); bare words become strings.
pub fn parse_sweep(arg: &str) -> Result<(String, String, Vec<toml::Value>), RunnerError> {
    let usage = |why: &str| {
        RunnerError::Usage(format!(
            "--sweep `{arg}`: {why}, e.g. --sweep train.epochs=10,30"
        ))
    };
    let (lhs, rhs) = arg
        .split_once('=')
        .ok_or_else(|| usage("expected STAGE.PARAM=V1,V2,..."))?;
    let (stage, param) = lhs
        .trim()
        .split_once('.')
        .ok_or_else(|| usage("expected STAGE.PARAM=V1,V2,..."))?;
    if stage.is_empty() || param.is_empty() {
        return Err(usage("expected STAGE.PARAM=V1,V2,..."));
    }
    let rhs = rhs.trim();
    // `[10,30]` is accepted too.
    let inner = rhs
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(rhs);
    let values = match toml::from_str::<toml::Table>(&format!("v = [{inner}]")) {
        Ok(mut t) => match t.remove("v") {
            Some(toml::Value::Array(a)) => a,
            _ => vec![],
        },
        // Not a TOML list (e.g. bare words): split at commas.
        Err(_) => inner.split(',').map(|v| parse_value(v.trim())).collect(),
    };
    if values.is_empty() {
        return Err(usage("no values"));
    }
    Ok((stage.to_string(), param.to_string(), values))
}

/// A TOML value from a command-line string; a bare word becomes a string.
pub fn parse_value(text: &str) -> toml::Value {
    let doc = format!("v = {text}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_string())),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// Set `params[param]`, where param may be dotted into nested tables.
pub fn set_param(params: &mut toml::Table, param: &str, value: toml::Value) {
    let mut parts: Vec<&str> = param.split('.').collect();
    let last = parts.pop().unwrap_or(param);
    let mut t = params;
    for p in parts {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unclosed_inline_table_is_reported_on_its_own_line() {
        let src = |text: &str| Source {
            path: "x.toml".into(),
            text: text.into(),
        };
        // The parser gives up at line 7 (`[stages.b]`); the `}` is missing on 5.
        let open = "name = \"x\"\n\n[stages.a]\nkind = \"c\"\nparams = { argv = [\"true\"]\n\n[stages.b]\n";
        let e = parse_toml::<toml::Table>(&src(open))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml:5:"), "{e}");
        // A duplicate key is where the parser says: the second key.
        let dup = "name = \"x\"\n\n[stages.a]\nparams = 1\nparams = 3\n";
        let e = parse_toml::<toml::Table>(&src(dup))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml:5:1"), "{e}");
    }

    #[test]
    fn line_col_and_key_spans() {
        let src = Source {
            path: "x.toml".into(),
            text: "[stages.a]\nkind = \"t\"\nparams = { lr = 1 }\n".into(),
        };
        let span = src.span_of(&["stages", "a", "params", "lr"]).unwrap();
        assert_eq!(src.line_col(span.start), (3, 12));
        assert_eq!(
            src.line_col(src.span_of(&["stages", "a", "kind"]).unwrap().start),
            (2, 1)
        );
        assert!(src.span_of(&["stages", "b"]).is_none());
        assert!(src.span_or_prefix(&["stages", "a", "zzz"]).is_some());
    }

    #[test]
    fn set_values_are_typed() {
        assert_eq!(parse_set("svm.C=2").unwrap().2, toml::Value::Integer(2));
        assert_eq!(
            parse_set("train.lr=0.01").unwrap().2,
            toml::Value::Float(0.01)
        );
        assert_eq!(
            parse_set("train.coupling=backprop").unwrap().2,
            toml::Value::String("backprop".into())
        );
        assert!(parse_set("nodot=1").is_err());
    }

    #[test]
    fn sweep_values_are_typed_lists() {
        let (s, p, v) = parse_sweep("train.epochs=10,30").unwrap();
        assert_eq!((s.as_str(), p.as_str()), ("train", "epochs"));
        assert_eq!(v, vec![toml::Value::Integer(10), toml::Value::Integer(30)]);
        assert_eq!(
            parse_sweep("train.lr=[0.1, 0.01]").unwrap().2,
            vec![toml::Value::Float(0.1), toml::Value::Float(0.01)]
        );
        assert_eq!(
            parse_sweep("svm.kernel=linear,rbf").unwrap().2,
            vec![
                toml::Value::String("linear".into()),
                toml::Value::String("rbf".into())
            ]
        );
        assert!(parse_sweep("train.epochs=").is_err());
        assert!(parse_sweep("epochs=1,2").is_err());
    }
}
