//! After a run: the terminal summary ([`summary`]), the history of runs
//! ([`history`]), `mrbm report`'s HTML page ([`html`]) and the comparison
//! of two runs ([`rundiff`]).
pub mod history;
pub mod html;
pub mod record;
pub mod rundiff;
pub mod summary;
