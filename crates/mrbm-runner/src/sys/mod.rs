//! What the runner needs of the operating system, under every phase: what
//! a signal must clean up ([`abort`]), process groups that nothing
//! outlives ([`procgroup`]) and paths kept inside their folder
//! ([`confine`]).
pub mod abort;
pub mod confine;
pub mod procgroup;
