//! Integrity on read: a cached entry's files are checked against the
//! hashes in its manifest before the entry is reused (and so before any
//! stage reads it), with the time and bytes it took counted for the run's
//! report (`mrbm run -v`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::{Found, Store};

static ENTRIES: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static NANOS: AtomicU64 = AtomicU64::new(0);

/// The entry `key`, its files checked (see [`Store::find`]).
pub fn check(store: &Store, key: &str) -> Found {
    let t = Instant::now();
    let found = store.find(key, false);
    let found = match found {
        Found::Hit(m) => match store.check_files(key, &m) {
            Ok(bytes) => {
                ENTRIES.fetch_add(1, Ordering::Relaxed);
                BYTES.fetch_add(bytes, Ordering::Relaxed);
                Found::Hit(m)
            }
            Err(why) => Found::Corrupt(why),
        },
        other => other,
    };
    NANOS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    found
}

/// Entries checked, bytes hashed and time spent (summed over threads) so far.
pub fn stats() -> (u64, u64, Duration) {
    (
        ENTRIES.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
        Duration::from_nanos(NANOS.load(Ordering::Relaxed)),
    )
}
