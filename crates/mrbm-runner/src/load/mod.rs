//! The load phase: an experiment file parsed into [`config::LoadedExperiment`]
//! (with spans, for errors), its placeholders, and the raw `[executor]`
//! table. Imports nothing from the later phases.
pub mod config;
pub mod executor;
pub mod placeholders;
