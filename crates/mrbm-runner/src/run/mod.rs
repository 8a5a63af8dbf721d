//! The run phase: the [`session::Session`] submits keyed jobs through the
//! scheduler ([`exec`]) to an executor ([`executors`]: local threads or
//! Slurm), and each job runs in a worker ([`worker::run_job`]) against the
//! cache; what comes back is a [`job::NodeResult`]. Also the device request
//! ([`device`]) and the terminal output ([`output`]).
pub mod device;
pub mod exec;
pub mod executors;
pub mod job;
pub mod output;
pub mod resolve;
pub mod session;
pub mod worker;
