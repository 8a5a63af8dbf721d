//! `[executor]` in an experiment file, as the load phase reads it: the kind
//! (`local` or `slurm`; `--executor` overrides it) and the Slurm options.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[executor]` in an experiment file. `--executor` overrides `kind`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecutorDecl {
    /// `local` (default) or `slurm`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(flatten)]
    pub slurm: SlurmOptions,
}

/// Slurm options, from `[executor]`. Every one is optional: without them
/// the jobs get the cluster's defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub qos: Option<String>,
    /// Time limit of each job (Slurm's format: "30", "2:00:00", "1-00:00:00").
    #[serde(default)]
    pub time: Option<String>,
    /// Memory of each job (Slurm's format: "4G", "16000M").
    #[serde(default)]
    pub mem: Option<String>,
    /// GPUs per job for stages that use the accelerator (`--gpus=N`).
    #[serde(default)]
    pub gpus: Option<u32>,
    /// Per stage kind: `[executor.kinds.train] time = "24:00:00", mem = "32G"`.
    #[serde(default)]
    pub kinds: BTreeMap<String, KindLimits>,
    /// More sbatch arguments, each as one word: `["--constraint=a100"]`.
    #[serde(default)]
    pub sbatch_args: Vec<String>,
    /// Jobs in flight at most (default 100).
    #[serde(default)]
    pub max_jobs: Option<usize>,
    /// The mrbm binary the nodes run (default: this one; it must be on a
    /// path the nodes see). `--mrbm` overrides it.
    #[serde(default)]
    pub mrbm: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KindLimits {
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub mem: Option<String>,
    #[serde(default)]
    pub gpus: Option<u32>,
}
