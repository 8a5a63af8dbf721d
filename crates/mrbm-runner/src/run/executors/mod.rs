//! Where ready jobs run: the [`Executor`] trait, and its implementations,
//! [`local::LocalExecutor`] (threads of this process) and
//! [`slurm::SlurmExecutor`] (one Slurm job per stage). Both run a job with
//! [`crate::run::worker::run_job`].

use std::time::Duration;

use crate::error::RunnerError;
use crate::key::job::StageJob;
use crate::run::job::NodeResult;

pub mod local;
pub mod slurm;

/// Where ready jobs run. The session submits a job once all its inputs are
/// published, never more than `capacity()` at a time, and collects results
/// with `wait_any`.
pub trait Executor {
    /// How many jobs may be in flight at once.
    fn capacity(&self) -> usize;
    /// Whether jobs that use the accelerator must run one at a time (they
    /// share one device); the session then submits one such job at a time.
    fn serial_device(&self) -> bool {
        false
    }
    /// Start a job (it runs in the background).
    fn submit(&mut self, job: StageJob) -> Result<(), RunnerError>;
    /// Results of the jobs that finished, by [`StageJob::job`]: waits up to
    /// `timeout` for the first, then returns every one that is done.
    fn wait_any(&mut self, timeout: Duration) -> Vec<(usize, NodeResult)>;
    /// Stop: jobs not yet started come back cancelled; running ones see the
    /// cancel flag.
    fn cancel_all(&mut self);
}
