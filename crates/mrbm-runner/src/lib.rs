//! The mrbm runner: pipeline schema, DAG expansion, content-hash cache,
//! executor, tables, and the `mrbm` command line.
pub mod collect;
pub mod command;
pub mod config;
pub mod confine;
pub mod dag;
pub mod device;
pub mod error;
pub mod exec;
pub mod hashing;
pub mod history;
pub mod integrity;
pub mod output;
pub mod plan;
pub mod registry;
pub mod report;
pub mod store;
pub mod table;

pub use error::RunnerError;
