//! Evaluation for mrbm: a LIBLINEAR-style linear SVM ([`svm`]), Gaussian
//! statistics and the Frechet distance ([`frechet`]), and pytorch-fid's
//! Inception-v3 ([`inception`]), with the stage kinds `svm`, `fid_stats` and
//! `fid` ([`stages`]).
use mrbm_stage::Stage;

pub mod frechet;
pub mod inception;
mod inception_host;
pub mod judge;
pub mod judge_stages;
pub mod linalg;
pub mod manifold;
pub mod stages;
pub mod svm;

/// The stage kinds this crate implements, for the runner's registry.
pub fn stages() -> Vec<Box<dyn Stage>> {
    vec![
        Box::new(stages::SvmStage),
        Box::new(stages::FidStatsStage),
        Box::new(stages::FidStage),
        Box::new(judge_stages::JudgeFitStage),
        Box::new(judge_stages::JudgeStage),
    ]
}
