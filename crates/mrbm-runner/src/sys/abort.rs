//! What this process holds that must not outlive it: the process groups of
//! running `command` stages, its temporary entry folders and its per-key
//! locks. Each is registered while held; [`exit_now`] (a second Ctrl-C)
//! kills the groups and removes the folders and locks before the process
//! exits, so nothing is left behind even then. (A SIGKILL runs no code: the
//! groups then die by their watchdog, see [`crate::sys::procgroup`], and the next
//! run breaks the dead locks and removes the dead folders.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Default)]
struct Held {
    /// Process group id -> how many registrations.
    groups: BTreeMap<i32, usize>,
    /// Temporary folders this process made.
    tmp: Vec<PathBuf>,
    /// Lock files with the text that makes them ours.
    locks: Vec<(PathBuf, String)>,
}

static HELD: Mutex<Held> = Mutex::new(Held {
    groups: BTreeMap::new(),
    tmp: Vec::new(),
    locks: Vec::new(),
});

fn held() -> std::sync::MutexGuard<'static, Held> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn add_group(pgid: i32) {
    *held().groups.entry(pgid).or_default() += 1;
}

pub fn remove_group(pgid: i32) {
    let mut h = held();
    if let Some(n) = h.groups.get_mut(&pgid) {
        *n -= 1;
        if *n == 0 {
            h.groups.remove(&pgid);
        }
    }
}

pub fn add_tmp(dir: &Path) {
    held().tmp.push(dir.to_path_buf());
}

pub fn add_lock(path: &Path, text: &str) {
    held().locks.push((path.to_path_buf(), text.to_string()));
}

pub fn remove_lock(path: &Path) {
    held().locks.retain(|(p, _)| p != path);
}

/// The process groups of the command stages running now.
pub fn groups() -> Vec<i32> {
    held().groups.keys().copied().collect()
}

/// Kill every registered process group, remove this process's temporary
/// folders and the locks it holds, and exit with `code`.
pub fn exit_now(code: i32) -> ! {
    cleanup();
    std::process::exit(code)
}

/// The work of [`exit_now`] without the exit.
pub fn cleanup() {
    let (groups, tmp, locks) = {
        let h = held();
        (
            h.groups.keys().copied().collect::<Vec<_>>(),
            h.tmp.clone(),
            h.locks.clone(),
        )
    };
    for g in groups {
        signal_group(g, libc::SIGKILL);
    }
    for d in tmp {
        // A stage thread may still be writing there: a few tries.
        for _ in 0..5 {
            match std::fs::remove_dir_all(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => break,
            }
        }
    }
    for (p, text) in locks {
        // Only our own: a lock broken and taken by another process stays.
        if std::fs::read_to_string(&p).ok().as_deref() == Some(text.as_str()) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Send `sig` to process group `pgid` (no error when it is gone).
pub fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) on a negative pid signals that group; no memory is touched.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}
