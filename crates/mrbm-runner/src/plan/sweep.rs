//! The sweep's axes, from the experiment's `[sweep]` and `--sweep`, and
//! which axes reach each stage.

use std::collections::BTreeSet;

use crate::error::RunnerError;
use crate::load::config::LoadedExperiment;

use super::{check_stage_name, label_of, split_target, Overrides};

/// A sweep axis: its display name and its values.
#[derive(Debug, Clone)]
pub struct Axis {
    pub name: String,
    /// `stage.param` for a single-parameter axis.
    pub path: Option<String>,
    pub values: Vec<AxisValue>,
}

/// One value of a sweep axis: its label and the assignments it makes.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisValue {
    pub label: String,
    pub assigns: Vec<Assign>,
}

/// `STAGE.PARAM = value`, set by a sweep value (PARAM may be
/// `inputs.SLOT`, which rewires an input).
#[derive(Debug, Clone, PartialEq)]
pub struct Assign {
    pub stage: String,
    pub param: String,
    pub value: toml::Value,
}

/// One value picked from one axis: a coordinate of a sweep cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pick {
    pub axis: usize,
    pub value: usize,
}

impl Axis {
    /// An axis over one parameter: one value per label.
    fn of_param(
        name: String,
        path: String,
        stage: &str,
        param: &str,
        vals: &[toml::Value],
    ) -> Axis {
        Axis {
            name,
            path: Some(path),
            values: vals
                .iter()
                .map(|v| AxisValue {
                    label: label_of(v),
                    assigns: vec![Assign {
                        stage: stage.to_string(),
                        param: param.to_string(),
                        value: v.clone(),
                    }],
                })
                .collect(),
        }
    }

    /// Does the axis set STAGE.PARAM (or a part of it, or a table holding it)?
    pub fn sets(&self, stage: &str, param: &str) -> bool {
        self.values.iter().any(|v| {
            v.assigns.iter().any(|a| {
                a.stage == stage
                    && (a.param == param
                        || param.starts_with(&format!("{}.", a.param))
                        || a.param.starts_with(&format!("{param}.")))
            })
        })
    }

    /// Does any of its values assign something of `stage`?
    pub fn touches(&self, stage: &str) -> bool {
        self.values
            .iter()
            .any(|v| v.assigns.iter().any(|a| a.stage == stage))
    }

    pub fn labels(&self) -> Vec<String> {
        self.values.iter().map(|v| v.label.clone()).collect()
    }
}

/// The axes of the experiment's `[sweep]`, then those of `--sweep` (which
/// replace the values of an axis sweeping the same parameter).
pub fn axes(
    exp: &LoadedExperiment,
    ov: &Overrides,
    names: &[&str],
) -> Result<Vec<Axis>, RunnerError> {
    let mut axes = Vec::new();
    for (axis_name, value) in &exp.file.sweep {
        axes.push(file_axis(exp, names, axis_name, value.get_ref())?);
    }
    check_disjoint(exp, &axes)?;
    let mut given = BTreeSet::new();
    for (stage, param, values) in &ov.sweeps {
        if !given.insert((stage, param)) {
            return Err(RunnerError::Usage(format!(
                "--sweep {stage}.{param} is given twice\n  help: give all its values in one: --sweep {stage}.{param}=A,B,C"
            )));
        }
        if let Some(d) = duplicate_label(values) {
            return Err(RunnerError::Usage(format!(
                "--sweep {stage}.{param}: the value {d} is given twice (each value makes one cell)"
            )));
        }
        cli_axis(exp, names, &mut axes, stage, param, values)?;
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
    Ok(axes)
}

/// No two axes of the file set the same parameter (or a part of one): a
/// cell takes a value from each axis, so one would silently override the
/// other.
fn check_disjoint(exp: &LoadedExperiment, axes: &[Axis]) -> Result<(), RunnerError> {
    for (i, a) in axes.iter().enumerate() {
        for b in &axes[i + 1..] {
            let clash = a
                .values
                .iter()
                .flat_map(|v| &v.assigns)
                .find(|x| b.sets(&x.stage, &x.param));
            if let Some(x) = clash {
                return Err(exp.source.locate(
                    exp.source.span_or_prefix(&["sweep", &b.name]),
                    format!(
                        "sweep axes `{}` and `{}` both set `{}.{}`: a cell takes a value from each axis, so one would silently override the other",
                        a.name, b.name, x.stage, x.param
                    ),
                    Some(format!(
                        "set `{}.{}` in one axis only: give each value of that axis the setting it needs, or split the experiment",
                        x.stage, x.param
                    )),
                ));
            }
        }
    }
    Ok(())
}

/// One axis of the file's `[sweep]`: a list over STAGE.PARAM, a
/// `{ param, values }` table, or a table of named variants.
fn file_axis(
    exp: &LoadedExperiment,
    names: &[&str],
    axis_name: &str,
    value: &toml::Value,
) -> Result<Axis, RunnerError> {
    let span = exp.source.span_of(&["sweep", axis_name]);
    let bad = |msg: String| exp.source.locate(span.clone(), msg, None);
    let no_stage = |stage: &str| {
        bad(format!(
            "sweep axis `{axis_name}`: there is no stage `{stage}`"
        ))
    };
    match value {
        toml::Value::Array(vals) => {
            let (stage, param) = split_target(axis_name).ok_or_else(|| bad(format!("sweep axis `{axis_name}`: a list sweeps one parameter and must be named STAGE.PARAM")))?;
            check_stage_name(names, stage, || no_stage(stage))?;
            if vals.is_empty() {
                return Err(bad(format!("sweep axis `{axis_name}` has no values")));
            }
            if let Some(d) = duplicate_label(vals) {
                return Err(bad(format!(
                    "sweep axis `{axis_name}`: the value {d} is given twice (each value makes one cell)"
                )));
            }
            Ok(Axis::of_param(
                param.to_string(),
                axis_name.to_string(),
                stage,
                param,
                vals,
            ))
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
            check_stage_name(names, stage, || no_stage(stage))?;
            if let Some(extra) = t.keys().find(|k| *k != "param" && *k != "values") {
                return Err(bad(format!("sweep axis `{axis_name}`: unknown key `{extra}` (expected `param` and `values`)")));
            }
            let vals = t["values"].as_array().cloned().unwrap_or_default();
            if vals.is_empty() {
                return Err(bad(format!("sweep axis `{axis_name}` has no values")));
            }
            if let Some(d) = duplicate_label(&vals) {
                return Err(bad(format!(
                    "sweep axis `{axis_name}`: the value {d} is given twice (each value makes one cell)"
                )));
            }
            Ok(Axis::of_param(
                axis_name.to_string(),
                target.to_string(),
                stage,
                param,
                &vals,
            ))
        }
        toml::Value::Table(variants) => {
            let mut values = Vec::new();
            for (label, assigns) in variants {
                let assigns = assigns.as_table().ok_or_else(|| bad(format!("sweep axis `{axis_name}`: variant `{label}` must be a table of \"STAGE.PARAM\" = value")))?;
                let mut list = Vec::new();
                for (k, v) in assigns {
                    let (stage, param) = split_target(k).ok_or_else(|| bad(format!("sweep axis `{axis_name}`, variant `{label}`: key `{k}` must be STAGE.PARAM")))?;
                    check_stage_name(names, stage, || {
                        bad(format!("sweep axis `{axis_name}`, variant `{label}`: there is no stage `{stage}`"))
                    })?;
                    list.push(Assign {
                        stage: stage.to_string(),
                        param: param.to_string(),
                        value: v.clone(),
                    });
                }
                values.push(AxisValue {
                    label: label.clone(),
                    assigns: list,
                });
            }
            if values.is_empty() {
                return Err(bad(format!("sweep axis `{axis_name}` has no variants")));
            }
            Ok(Axis {
                name: axis_name.to_string(),
                path: None,
                values,
            })
        }
        _ => Err(bad(format!(
            "sweep axis `{axis_name}`: expected a list of values or a table of named variants"
        ))),
    }
}

/// The first value whose label (what names its cell) repeats an earlier
/// one's: two such values would make two stages with one id.
fn duplicate_label(vals: &[toml::Value]) -> Option<String> {
    let mut seen = BTreeSet::new();
    vals.iter()
        .map(super::label_of)
        .find(|l| !seen.insert(l.clone()))
}

/// `--sweep STAGE.PARAM=V1,V2`: new values for the axis over STAGE.PARAM,
/// or a new axis.
fn cli_axis(
    exp: &LoadedExperiment,
    names: &[&str],
    axes: &mut Vec<Axis>,
    stage: &str,
    param: &str,
    values: &[toml::Value],
) -> Result<(), RunnerError> {
    let target = format!("{stage}.{param}");
    check_stage_name(names, stage, || {
        let help = mrbm_stage::nearest(stage, names.iter().copied())
            .map(|n| format!("; did you mean `{n}.{param}`?"));
        RunnerError::Usage(format!(
            "--sweep {target}: there is no stage `{stage}` in {}{}",
            exp.source.path.display(),
            help.unwrap_or_default()
        ))
    })?;
    let name = if axes.iter().any(|a| a.name == param) {
        target.clone()
    } else {
        param.to_string()
    };
    let axis = Axis::of_param(name, target.clone(), stage, param, values);
    if let Some(a) = axes.iter_mut().find(|a| a.path.as_deref() == Some(&target)) {
        a.values = axis.values;
        return Ok(());
    }
    if let Some(a) = axes.iter().find(|a| a.sets(stage, param)) {
        return Err(RunnerError::Usage(format!(
            "--sweep {target}: the sweep axis `{}` of {} already sets `{target}` together with other parameters\n  help: choose that axis's variants in the file, or remove it",
            a.name,
            exp.source.path.display()
        )));
    }
    axes.push(axis);
    Ok(())
}

/// Every combination of the given axes' values.
pub fn combinations(axes: &[Axis], which: &[usize]) -> Vec<Vec<Pick>> {
    let mut out: Vec<Vec<Pick>> = vec![vec![]];
    for &axis in which {
        let mut next = Vec::new();
        for prefix in &out {
            for value in 0..axes[axis].values.len() {
                let mut c = prefix.clone();
                c.push(Pick { axis, value });
                next.push(c);
            }
        }
        out = next;
    }
    out
}

/// The labels of the named axis, in the order they are written.
pub fn axis_order(axes: &[Axis], axis: &Option<String>) -> Vec<String> {
    axis.as_ref()
        .and_then(|a| axes.iter().find(|x| &x.name == a))
        .map(Axis::labels)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(name: &str, stage: &str, param: &str, vals: &[i64]) -> Axis {
        let vals: Vec<toml::Value> = vals.iter().map(|v| toml::Value::Integer(*v)).collect();
        Axis::of_param(name.into(), format!("{stage}.{param}"), stage, param, &vals)
    }

    #[test]
    fn combinations_enumerate_every_cell_in_axis_order() {
        let axes = [
            axis("a", "s", "x", &[1, 2]),
            axis("b", "s", "y", &[3, 4, 5]),
        ];
        let c = combinations(&axes, &[0, 1]);
        assert_eq!(c.len(), 6);
        assert_eq!(
            c[1],
            [Pick { axis: 0, value: 0 }, Pick { axis: 1, value: 1 }]
        );
        assert_eq!(combinations(&axes, &[]), vec![Vec::<Pick>::new()]);
    }

    #[test]
    fn an_axis_sets_a_parameter_its_parts_and_the_table_holding_it() {
        let a = axis("lr", "train", "optim.lr", &[1]);
        assert!(a.sets("train", "optim.lr"));
        assert!(a.sets("train", "optim"));
        assert!(a.sets("train", "optim.lr.x"));
        assert!(!a.sets("train", "optim.momentum"));
        assert!(!a.sets("other", "optim.lr"));
        assert!(a.touches("train") && !a.touches("svm"));
    }

    #[test]
    fn a_repeated_value_is_found_by_its_label() {
        let v = |x: i64| toml::Value::Integer(x);
        assert_eq!(duplicate_label(&[v(1), v(2), v(1)]).as_deref(), Some("1"));
        assert_eq!(duplicate_label(&[v(1), v(2)]), None);
        let s = toml::Value::String("1".into());
        assert_eq!(duplicate_label(&[v(1), s]).as_deref(), Some("1"));
    }

    #[test]
    fn labels_keep_the_written_order() {
        let axes = [axis("N", "train", "n", &[255, 1, 15])];
        assert_eq!(axis_order(&axes, &Some("N".into())), ["255", "1", "15"]);
        assert!(axis_order(&axes, &None).is_empty());
    }
}
