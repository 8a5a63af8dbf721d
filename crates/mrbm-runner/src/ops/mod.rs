//! Commands over the cache that plan experiments to know what is live:
//! `mrbm gc` ([`gc`]) and `mrbm push`/`pull` ([`transfer`]). The top of
//! the runner: nothing imports them but main.rs.
pub mod gc;
pub mod transfer;
