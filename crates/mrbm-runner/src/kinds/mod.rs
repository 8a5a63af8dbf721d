//! The runner's own stage kinds (`table`, `collect`, `command`) and the
//! [`registry::Registry`] of every kind. Below the phases: it knows the
//! cache ([`crate::store`]) and the process groups ([`crate::sys`]), not the
//! plan.
pub mod collect;
pub mod command;
pub mod registry;
pub mod table;
