//! The mrbm runner owns everything between an experiment file and a CSV
//! row, as a chain of phases with typed products (ARCHITECTURE.md):
//! [`config::load`] (the schema, with spans for errors) -> [`dag::build`]
//! (overrides, sweep, inputs, expansion, tables: the plan) ->
//! [`session::Session`] (`key` a node, `plan`, `run`) -> [`exec`] (the
//! scheduler) over an [`executor::Executor`] (local threads, or
//! [`slurm`]; both call [`executor::run_job`] against the content-addressed
//! [`store`]) -> [`summary`] and [`history`] (`mrbm report` renders a
//! recorded run as HTML: [`report`]). It also
//! owns the built-in `table`, `collect` and `command` kinds, the registry
//! of all kinds, and the `mrbm` command line (main.rs only dispatches).
pub mod abort;
pub mod collect;
pub mod command;
pub mod config;
pub mod confine;
pub mod dag;
pub mod device;
pub mod error;
pub mod exec;
pub mod executor;
pub mod gc;
pub mod hashing;
pub mod history;
pub mod integrity;
pub mod output;
pub mod plan;
pub mod procgroup;
pub mod registry;
pub mod remote;
pub mod report;
pub mod rundiff;
pub mod session;
pub mod slurm;
pub mod store;
pub mod summary;
pub mod table;
pub mod targets;
pub mod transfer;

pub use error::RunnerError;
