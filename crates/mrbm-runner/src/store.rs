//! The content-addressed cache.
//!
//! ```text
//! CACHE/entries/KEY/manifest.json   what made it: kind, params, inputs, file hashes, timings
//! CACHE/entries/KEY/log.txt         the stage's log
//! CACHE/entries/KEY/out/...         the stage's files (and metrics.json)
//! CACHE/tmp/KEY.PID.N/              an entry being written (never trusted)
//! CACHE/locks/KEY.lock              "pid host time" of the process computing KEY
//! CACHE/quarantine/                 entries that `mrbm verify` found corrupt
//! CACHE/runs/EXPERIMENT.json        the last run's keys and params, for `plan`
//! CACHE/memo.json                   (path, size, mtime) -> hash of external files
//! ```
//!
//! An entry appears only by renaming a complete temporary directory (with
//! its manifest) into place, so a crash at any moment leaves either nothing
//! or a whole entry. Locks are per key, so two experiments never block each
//! other; a lock whose owner process is dead is broken.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::RunnerError;
use crate::hashing;

pub const MANIFEST: &str = "manifest.json";
pub const METRICS: &str = "metrics.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub hash: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub key: String,
    pub stage_id: String,
    pub kind: String,
    pub version: u32,
    pub params: serde_json::Value,
    /// slot -> content hash it was computed from.
    pub inputs: BTreeMap<String, String>,
    /// slot -> where it came from (upstream id or path), for people.
    pub input_sources: BTreeMap<String, String>,
    /// Files under out/, relative path -> hash and size.
    pub files: BTreeMap<String, FileEntry>,
    /// Hash of all of out/ (what a downstream stage's key uses).
    pub output_hash: String,
    pub metrics: BTreeMap<String, f64>,
    pub device: String,
    pub started: String,
    pub seconds: f64,
    pub tool_version: String,
    pub host: String,
}

pub struct Store {
    pub root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// Is process `pid` alive on this host?
pub fn pid_alive(pid: u32) -> bool {
    // kill(pid, 0) checks existence without sending a signal.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Write through a temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunnerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| RunnerError::cache(dir, e))?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| RunnerError::cache(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        RunnerError::cache(&tmp, e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| RunnerError::cache(path, e))
}

pub enum LockOutcome {
    Acquired(KeyLock),
    /// Another process published the entry while we waited.
    Published,
}

/// A held per-key lock; released on drop.
pub struct KeyLock {
    path: PathBuf,
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, RunnerError> {
        for d in ["entries", "tmp", "locks", "runs"] {
            std::fs::create_dir_all(root.join(d))
                .map_err(|e| RunnerError::cache(root.join(d), e))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(key)
    }

    pub fn out_dir(&self, key: &str) -> PathBuf {
        self.entry_dir(key).join("out")
    }

    pub fn has(&self, key: &str) -> bool {
        self.entry_dir(key).join(MANIFEST).is_file()
    }

    pub fn manifest(&self, key: &str) -> Result<Manifest, RunnerError> {
        let p = self.entry_dir(key).join(MANIFEST);
        let bytes = std::fs::read(&p).map_err(|e| RunnerError::cache(&p, e))?;
        serde_json::from_slice(&bytes).map_err(|e| RunnerError::cache(&p, e))
    }

    /// A fresh temporary directory for building the entry `key`.
    pub fn tmp_dir(&self, key: &str) -> Result<PathBuf, RunnerError> {
        let d = self.root.join("tmp").join(format!(
            "{key}.{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(d.join("out")).map_err(|e| RunnerError::cache(&d, e))?;
        Ok(d)
    }

    /// Take the lock for `key`, waiting for a live owner and breaking the
    /// lock of a dead one. `cancelled` aborts the wait.
    pub fn lock(
        &self,
        key: &str,
        cancelled: &dyn Fn() -> bool,
        waiting: &dyn Fn(&str),
    ) -> Result<LockOutcome, RunnerError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        let me = format!("{} {} {}\n", std::process::id(), hostname(), now_rfc3339());
        let mut told = false;
        loop {
            if self.has(key) {
                return Ok(LockOutcome::Published);
            }
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(me.as_bytes())
                        .map_err(|e| RunnerError::cache(&path, e))?;
                    let lock = KeyLock { path: path.clone() };
                    // It may have been published between our check and the lock.
                    if self.has(key) {
                        return Ok(LockOutcome::Published);
                    }
                    return Ok(LockOutcome::Acquired(lock));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path).unwrap_or_default();
                    if self.owner_dead(&owner, &path) {
                        // Steal by renaming to a unique name: only one breaker wins.
                        let stale = path.with_extension(format!(
                            "stale.{}.{}",
                            std::process::id(),
                            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
                        ));
                        if std::fs::rename(&path, &stale).is_ok() {
                            tracing::warn!(
                                "broke the lock of dead process ({}) on {key}",
                                owner.trim()
                            );
                            let _ = std::fs::remove_file(&stale);
                        }
                        continue;
                    }
                    if !told {
                        waiting(owner.trim());
                        told = true;
                    }
                    if cancelled() {
                        return Err(RunnerError::Interrupted);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(RunnerError::cache(&path, e)),
            }
        }
    }

    fn owner_dead(&self, owner: &str, path: &Path) -> bool {
        let mut parts = owner.split_whitespace();
        let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
        let host = parts.next();
        match (pid, host) {
            (Some(pid), Some(h)) if h == hostname() => !pid_alive(pid),
            // Another host: we cannot see its processes; trust the lock.
            (Some(_), Some(_)) => false,
            // Empty or unreadable: the owner died between create and write,
            // or is writing right now; give it a moment.
            _ => std::fs::metadata(path)
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(5))
                .unwrap_or(false),
        }
    }

    /// Hash every file of a built temporary directory's out/. Each file's
    /// own hash goes into the manifest (what `verify` checks); the combined
    /// output hash that downstream keys use takes metrics.json as the
    /// stage's metrics without its timings (`mrbm_stage::is_timing_metric`),
    /// so identical results give an identical hash.
    pub fn hash_outputs(
        &self,
        tmp: &Path,
        metrics: &mrbm_stage::Metrics,
    ) -> Result<(BTreeMap<String, FileEntry>, String), RunnerError> {
        let out = tmp.join("out");
        let files = hashing::list_files(&out).map_err(|e| RunnerError::cache(&out, e))?;
        let mut map = BTreeMap::new();
        for (rel, abs) in files {
            let size = std::fs::metadata(&abs)
                .map_err(|e| RunnerError::cache(&abs, e))?
                .len();
            let hash = hashing::hash_file(&abs).map_err(|e| RunnerError::cache(&abs, e))?;
            map.insert(rel, FileEntry { hash, size });
        }
        let results: BTreeMap<&String, &f64> = metrics
            .iter()
            .filter(|(k, _)| !mrbm_stage::is_timing_metric(k))
            .collect();
        let results = serde_json::to_vec(&results).map_err(|e| RunnerError::cache(&out, e))?;
        let combined = hashing::combine(
            &map.iter()
                .map(|(k, v)| {
                    if k == METRICS {
                        (k.clone(), blake3::hash(&results).to_hex().to_string())
                    } else {
                        (k.clone(), v.hash.clone())
                    }
                })
                .collect(),
        );
        Ok((map, combined))
    }

    /// Write the manifest into `tmp`, sync it, and rename it into place.
    pub fn publish(&self, tmp: &Path, manifest: &Manifest) -> Result<(), RunnerError> {
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| RunnerError::cache(tmp, e))?;
        write_atomic(&tmp.join(MANIFEST), &bytes)?;
        sync_tree(tmp);
        let dest = self.entry_dir(&manifest.key);
        match std::fs::rename(tmp, &dest) {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(self.root.join("entries")) {
                    let _ = d.sync_all();
                }
                Ok(())
            }
            // Someone else published the same key: theirs is as good as ours.
            Err(_) if self.has(&manifest.key) => {
                let _ = std::fs::remove_dir_all(tmp);
                Ok(())
            }
            Err(e) => Err(RunnerError::cache(&dest, e)),
        }
    }

    pub fn keys(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("entries"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Check an entry's files against its manifest; Err(reason) if corrupt.
    pub fn verify_entry(&self, key: &str) -> Result<(), String> {
        let m = self
            .manifest(key)
            .map_err(|e| format!("manifest unreadable: {e}"))?;
        if m.key != key {
            return Err(format!("manifest says key {}", m.key));
        }
        let out = self.out_dir(key);
        let on_disk = hashing::list_files(&out).map_err(|e| e.to_string())?;
        let names: Vec<&String> = on_disk.iter().map(|(r, _)| r).collect();
        for (rel, fe) in &m.files {
            let p = out.join(rel);
            let h = hashing::hash_file(&p).map_err(|e| format!("{rel}: {e}"))?;
            if h != fe.hash {
                return Err(format!(
                    "{rel}: content changed (hash {} != {})",
                    &h[..12],
                    &fe.hash[..12]
                ));
            }
        }
        for n in names {
            if !m.files.contains_key(n) {
                return Err(format!("{n}: file not in the manifest"));
            }
        }
        Ok(())
    }

    pub fn quarantine(&self, key: &str) -> Result<PathBuf, RunnerError> {
        let q = self.root.join("quarantine");
        std::fs::create_dir_all(&q).map_err(|e| RunnerError::cache(&q, e))?;
        let dest = q.join(format!("{key}.{}", now_rfc3339().replace(':', "")));
        std::fs::rename(self.entry_dir(key), &dest).map_err(|e| RunnerError::cache(&dest, e))?;
        Ok(dest)
    }

    /// Remove temporary directories and locks left by dead processes.
    pub fn clean_stale(&self) -> usize {
        let mut n = 0;
        let me = hostname();
        if let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.split('.').nth(1).and_then(|p| p.parse::<u32>().ok());
                if let Some(pid) = pid {
                    if pid != std::process::id()
                        && !pid_alive(pid)
                        && std::fs::remove_dir_all(e.path()).is_ok()
                    {
                        n += 1;
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.root.join("locks")) {
            for e in rd.flatten() {
                let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
                let mut p = owner.split_whitespace();
                if let (Some(pid), Some(host)) =
                    (p.next().and_then(|x| x.parse::<u32>().ok()), p.next())
                {
                    if host == me && !pid_alive(pid) && std::fs::remove_file(e.path()).is_ok() {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    pub fn runs_file(&self, experiment: &str) -> PathBuf {
        self.root
            .join("runs")
            .join(format!("{}.json", experiment.replace(['/', '\\'], "_")))
    }
}

/// fsync every file and folder under `dir` so a power cut after the rename
/// cannot expose empty files.
fn sync_tree(dir: &Path) {
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if let Ok(f) = std::fs::File::open(e.path()) {
            let _ = f.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_owner_lock_is_broken() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        // A pid that cannot be alive (beyond pid_max on Linux).
        std::fs::write(
            d.path().join("locks/k.lock"),
            format!("4194999 {} x\n", hostname()),
        )
        .unwrap();
        match s.lock("k", &|| false, &|_| {}).unwrap() {
            LockOutcome::Acquired(l) => drop(l),
            LockOutcome::Published => panic!("nothing was published"),
        }
        assert!(!d.path().join("locks/k.lock").exists());
    }

    #[test]
    fn live_owner_blocks_until_cancelled() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        std::fs::write(
            d.path().join("locks/k.lock"),
            format!("{} {} x\n", std::process::id(), hostname()),
        )
        .unwrap();
        let r = s.lock("k", &|| true, &|_| {});
        assert!(matches!(r, Err(RunnerError::Interrupted)));
    }

    #[test]
    fn timestamps_are_iso() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20"));
    }
}
