//! The mrbm runner owns everything between an experiment file and a CSV
//! row, as a chain of phases, one folder each (ARCHITECTURE.md, "The
//! runner's folders"). Imports run one way, from a later phase to an
//! earlier one, never back (`tests/layering.rs` checks it):
//!
//! - [`load`]: the experiment file parsed (the schema, with spans for
//!   errors; placeholders; the raw `[executor]` table);
//! - [`plan`]: overrides, sweep, inputs, expansion, tables, prechecks,
//!   targets: the DAG of nodes;
//! - [`key`]: each node's inputs resolved and its key computed, as a job;
//!   `mrbm plan`'s preview; the record of the last run;
//! - [`run`]: the scheduler over an executor (local threads or Slurm), the
//!   worker that runs one job against the cache, the session, the device;
//! - [`report`]: the summary, the run history, `mrbm report`'s HTML and
//!   run comparisons;
//! - [`ops`]: commands over the cache that plan experiments (gc,
//!   push/pull).
//!
//! Below them all: [`kinds`] (the runner's own stage kinds, `table`,
//! `collect` and `command`, and the registry of every kind), [`store`] (the
//! content-addressed cache, file hashes, integrity, remotes) and [`sys`]
//! (abort on signals, process groups, path confinement). main.rs maps the
//! `mrbm` command line onto them.
pub mod error;
pub mod key;
pub mod kinds;
pub mod load;
pub mod ops;
pub mod plan;
pub mod report;
pub mod run;
pub mod store;
pub mod sys;

pub use error::RunnerError;
