//! The `collect` stage kind: gathers the metrics of several upstream stages
//! of one sweep cell into one metrics set, each prefixed by its input name
//! (`svm` + `test_error` -> `svm_test_error`), so one `[[tables]]` entry
//! can show a model's likelihood, its features' SVM error and its training
//! time side by side. Any input name is taken (the listed slots are the
//! usual ones, for `mrbm kinds`). It computes nothing; an absent input adds
//! nothing.

use std::collections::BTreeMap;

use mrbm_stage::{InputSlot, JsonValue, Metrics, ParamError, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

pub struct CollectStage;

/// No parameters: what to gather is said by the inputs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectParams {}

const SLOTS: &[InputSlot] = &[
    InputSlot::optional("train", None, "a train stage"),
    InputSlot::optional("loglik", None, "a loglik stage"),
    InputSlot::optional("svm", None, "an svm stage"),
    InputSlot::optional(
        "baseline",
        None,
        "a baseline's stage (e.g. an svm on raw pixels)",
    ),
    InputSlot::optional("sample", None, "a sample stage (from noise)"),
    InputSlot::optional("sample_data", None, "a sample stage (from data)"),
    InputSlot::optional(
        "sample_annealed",
        None,
        "a sample stage (from noise, annealed)",
    ),
    InputSlot::optional("reconstruct", None, "a reconstruct stage"),
    InputSlot::optional(
        "loglik_check",
        None,
        "a second loglik stage (e.g. more betas, to see AIS converge)",
    ),
    InputSlot::optional("fid", None, "a fid stage"),
    InputSlot::optional(
        "bracket",
        None,
        "a loglik stage with raise_images set (AIS and RAISE bounds on the same images)",
    ),
];

impl Stage for CollectStage {
    fn kind(&self) -> &'static str {
        "collect"
    }
    fn about(&self) -> &'static str {
        "gather several upstream stages' metrics into one set for a table"
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> &'static [InputSlot] {
        SLOTS
    }
    /// Any other name is taken too: that stage's metrics, prefixed by it.
    fn open_inputs(&self) -> bool {
        true
    }
    fn params(&self, raw: &toml::Table) -> Result<JsonValue, ParamError> {
        mrbm_stage::canonical::<CollectParams>(raw)
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics, StageError> {
        let mut out = Metrics::new();
        for (name, dir) in ctx.inputs {
            let path = dir.join("metrics.json");
            let bytes = std::fs::read(&path).map_err(|e| StageError::io(&path, e))?;
            // JSON has no NaN: a NaN metric was written as null.
            let m: BTreeMap<String, Option<f64>> = serde_json::from_slice(&bytes).map_err(|e| {
                StageError::Failed(format!("{}: not a metrics file: {e}", path.display()))
            })?;
            for (k, v) in m {
                out.insert(format!("{name}_{k}"), v.unwrap_or(f64::NAN));
            }
        }
        Ok(out)
    }
}
