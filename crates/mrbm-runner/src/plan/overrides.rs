//! The raw parameters of each stage with the profile and `--set` applied,
//! and the checks on what the command line overrides.

use std::collections::BTreeMap;

use crate::error::RunnerError;
use crate::load::config::{set_param, LoadedExperiment};

use super::sweep::Axis;
use super::{check_stage_name, split_target, Overrides};

/// Stage name -> its raw TOML parameters.
pub type RawParams = BTreeMap<String, toml::Table>;

/// Each stage's parameters as written, with the chosen profile (the
/// command line's, else the file's default) applied.
pub fn raw_params(
    exp: &LoadedExperiment,
    ov: &Overrides,
    names: &[&str],
) -> Result<RawParams, RunnerError> {
    let mut raw: RawParams = exp
        .stages
        .iter()
        .map(|(n, (d, _))| (n.clone(), d.get_ref().params.clone()))
        .collect();
    let profile = ov
        .profile
        .clone()
        .or_else(|| exp.file.default_profile.clone());
    let Some(p) = &profile else {
        return Ok(raw);
    };
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
        let at = || exp.source.span_of(&["profiles", p, k]);
        let (stage, param) = split_target(k).ok_or_else(|| {
            exp.source
                .locate(at(), format!("profile key `{k}` must be STAGE.PARAM"), None)
        })?;
        check_stage_name(names, stage, || {
            exp.source.locate(
                at(),
                format!("profile `{p}` sets `{k}` but there is no stage `{stage}`"),
                None,
            )
        })?;
        set_param(raw.get_mut(stage).expect("checked"), param, v.clone());
    }
    Ok(raw)
}

/// Every `--set` names a stage of the experiment.
pub fn check_set_stages(
    exp: &LoadedExperiment,
    ov: &Overrides,
    names: &[&str],
) -> Result<(), RunnerError> {
    for (stage, param, _) in &ov.sets {
        check_stage_name(names, stage, || {
            let help = mrbm_stage::nearest(stage, names.iter().copied())
                .map(|n| format!("did you mean `{n}.{param}`?"));
            RunnerError::Usage(format!(
                "--set {stage}.{param}: there is no stage `{stage}` in {}{}",
                exp.source.path.display(),
                help.map(|h| format!("; {h}")).unwrap_or_default()
            ))
        })?;
    }
    Ok(())
}

/// A --set on a swept parameter would give every cell the same value
/// while the tables still label the cells by the axis: refused unless
/// `--force-override`.
pub fn check_sets_against_axes(ov: &Overrides, axes: &[Axis]) -> Result<(), RunnerError> {
    for (stage, param, v) in &ov.sets {
        let Some(a) = axes.iter().find(|a| a.sets(stage, param)) else {
            continue;
        };
        if ov.force_override {
            tracing::warn!(
                "--set {stage}.{param}={v} --force-override: every cell of the sweep axis `{}` gets this value, but ids and tables still label the cells by `{}`",
                a.name,
                a.name
            );
        } else {
            return Err(RunnerError::Usage(format!(
                "--set {stage}.{param}={v}: `{stage}.{param}` is swept by the axis `{}` (values {})\n  help: to run other values use --sweep {stage}.{param}=V1,V2,... (it replaces the axis's values); to set it in every cell anyway add --force-override",
                a.name,
                a.labels().join(", ")
            )));
        }
    }
    Ok(())
}

/// The `--set`s of one stage applied to its parameters.
pub fn apply_sets(ov: &Overrides, stage: &str, params: &mut toml::Table) {
    for (s, p, v) in &ov.sets {
        if s == stage {
            set_param(params, p, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::sweep::{Assign, AxisValue};

    fn ov(sets: &[(&str, &str, i64)], force: bool) -> Overrides {
        Overrides {
            sets: sets
                .iter()
                .map(|(s, p, v)| (s.to_string(), p.to_string(), toml::Value::Integer(*v)))
                .collect(),
            force_override: force,
            ..Default::default()
        }
    }

    fn axis() -> Axis {
        Axis {
            name: "N".into(),
            path: Some("train.n".into()),
            values: [1, 255]
                .iter()
                .map(|v| AxisValue {
                    label: v.to_string(),
                    assigns: vec![Assign {
                        stage: "train".into(),
                        param: "n".into(),
                        value: toml::Value::Integer(*v),
                    }],
                })
                .collect(),
        }
    }

    #[test]
    fn a_set_on_a_swept_parameter_is_refused_unless_forced() {
        let e = check_sets_against_axes(&ov(&[("train", "n", 3)], false), &[axis()]).unwrap_err();
        assert!(
            e.to_string()
                .contains("swept by the axis `N` (values 1, 255)"),
            "{e}"
        );
        check_sets_against_axes(&ov(&[("train", "n", 3)], true), &[axis()]).unwrap();
        check_sets_against_axes(&ov(&[("train", "lr", 3)], false), &[axis()]).unwrap();
    }

    #[test]
    fn sets_apply_to_their_own_stage_only() {
        let mut t = toml::Table::new();
        apply_sets(
            &ov(&[("train", "epochs", 3), ("svm", "C", 2)], false),
            "train",
            &mut t,
        );
        assert_eq!(t.get("epochs"), Some(&toml::Value::Integer(3)));
        assert!(t.get("C").is_none());
    }
}
