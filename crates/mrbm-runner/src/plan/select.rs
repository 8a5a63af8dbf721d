//! The experiment a command works on, selected and expanded: the file
//! loaded, `--set`/`--sweep`/`--profile` applied, the plan built and cut to
//! the stages asked for; with the experiment's own run settings (device
//! key, profile, `[executor]`) for the run to resolve.

use std::path::PathBuf;

use crate::error::RunnerError;
use crate::kinds::registry::Registry;
use crate::load::config::{self, parse_set};
use crate::load::executor::ExecutorDecl;

use super::{Dag, Overrides};

/// Which experiment, and how: what the command line selects.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The experiment (or pipeline) file.
    pub file: PathBuf,
    /// Only these stages and what they need.
    pub stages: Vec<String>,
    /// `--set STAGE.PARAM=VALUE`.
    pub set: Vec<String>,
    /// `--sweep STAGE.PARAM=V1,V2`.
    pub sweep: Vec<String>,
    pub force_override: bool,
    pub profile: Option<String>,
    pub data_root: Option<PathBuf>,
}

/// An experiment's `device` key and where it is written, so that a device
/// this build or machine cannot give is reported at that line of the file
/// (the user may not know the file asks for one).
#[derive(Debug, Clone)]
pub struct DeviceKey {
    pub spec: String,
    pub file: std::path::PathBuf,
    pub line: usize,
    pub col: usize,
}

/// What [`build`] gives: the plan and the experiment's own run settings.
pub struct Built {
    pub dag: Dag,
    /// The experiment's `device` key (`--device` overrides it).
    pub device: Option<DeviceKey>,
    /// The profile in effect: --profile, or the experiment's default_profile.
    pub profile: Option<String>,
    /// The experiment's `[executor]` (the --executor flag overrides it).
    pub executor: Option<ExecutorDecl>,
    /// blake3 of the experiment file (and its pipeline), by path.
    pub sources: std::collections::BTreeMap<String, String>,
}

/// Load and expand the selected experiment.
pub fn build(select: &Selection, reg: &Registry) -> Result<Built, RunnerError> {
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
        DeviceKey {
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
    let mut dag = super::build(&exp, reg, &ov)?;
    if !select.stages.is_empty() {
        dag = super::targets::select(&dag, &select.stages)?;
    }
    Ok(Built {
        dag,
        device,
        profile: ov.profile.clone().or(exp.file.default_profile.clone()),
        executor: exp.file.executor.clone(),
        sources,
    })
}
