//! The content-addressed cache.
//!
//! ```text
//! CACHE/entries/KEY/manifest.json   what made it: kind, params, inputs, file hashes, timings
//! CACHE/entries/KEY/log.txt         the stage's log
//! CACHE/entries/KEY/out/...         the stage's files (and metrics.json)
//! CACHE/tmp/KEY.PID.N.HOST/         an entry being written (never trusted)
//! CACHE/locks/KEY.lock              "pid host time" of the process computing KEY
//! CACHE/resume/KEY/                checkpoints of a stage still computing KEY (removed on publish)
//! CACHE/quarantine/                 entries that `mrbm verify` found corrupt
//! CACHE/runs/EXPERIMENT.json        the last run's keys and params, for `plan`
//! CACHE/history/RUN.json            every run: arguments, commit, device, keys, metrics (history.rs)
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

pub mod hashing;
pub mod integrity;
pub mod remote;

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
    /// slot -> cache key of the upstream entry it read (inputs from other
    /// stages only), so the entries computed from a corrupt one can be found.
    #[serde(default)]
    pub input_keys: BTreeMap<String, String>,
    /// Files under out/, relative path -> hash and size.
    pub files: BTreeMap<String, FileEntry>,
    /// Hash of all of out/ (what a downstream stage's key uses).
    pub output_hash: String,
    /// JSON has no NaN: a NaN metric is written as null and read back as NaN.
    #[serde(deserialize_with = "metrics_with_nan")]
    pub metrics: BTreeMap<String, f64>,
    pub device: String,
    pub started: String,
    pub seconds: f64,
    pub tool_version: String,
    pub host: String,
    /// The executor's id of the job that computed it (a Slurm job id under
    /// `--executor slurm`). Caches written before executors were plugins
    /// call it `slurm_job`.
    #[serde(default, alias = "slurm_job", skip_serializing_if = "Option::is_none")]
    pub executor_job: Option<String>,
}

impl Manifest {
    /// What a downstream stage may know of this entry
    /// ([`mrbm_stage::StageContext::upstream`]).
    pub fn upstream(&self) -> mrbm_stage::Upstream {
        mrbm_stage::Upstream {
            stage_id: self.stage_id.clone(),
            kind: self.kind.clone(),
            key: self.key.clone(),
            metrics: self.metrics.clone(),
            device: self.device.clone(),
            host: self.host.clone(),
            started: self.started.clone(),
            seconds: self.seconds,
            tool_version: self.tool_version.clone(),
            executor_job: self.executor_job.clone(),
        }
    }
}

/// What [`Store::find`] found at a key.
// A hit carries its manifest by value: it is read once per lookup, and
// boxing it would only add an allocation to the common case.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Found {
    Hit(Manifest),
    Absent,
    /// Something is there but it is no whole, intact entry.
    Corrupt(String),
}

/// Metrics where a NaN was written as null (JSON has no NaN).
pub(crate) fn metrics_with_nan<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, f64>, D::Error> {
    let m = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

pub struct Store {
    pub root: PathBuf,
    /// A lock without a heartbeat for this long is broken.
    pub lock_timeout: Duration,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Check the files under an entry's `out` folder against its manifest
/// (same names, sizes and blake3 hashes; no file added). Returns the bytes
/// read. Also what `mrbm pull` checks a downloaded entry with.
pub fn check_out_files(out: &Path, m: &Manifest) -> Result<u64, String> {
    let on_disk = hashing::list_files(out).map_err(|e| e.to_string())?;
    if let Some((n, _)) = on_disk.iter().find(|(r, _)| !m.files.contains_key(r)) {
        return Err(format!("{n}: file not in the manifest"));
    }
    if let Some(bad) = m
        .files
        .keys()
        .find(|r| crate::sys::confine::clean_relative(r).is_err())
    {
        return Err(format!("the manifest names `{bad}`, outside the entry"));
    }
    let mut bytes = 0;
    for (rel, fe) in &m.files {
        let p = out.join(rel);
        let size = std::fs::metadata(&p)
            .map_err(|e| format!("{rel}: {e}"))?
            .len();
        if size != fe.size {
            return Err(format!(
                "{rel}: size changed ({size} bytes, {} in the manifest)",
                fe.size
            ));
        }
        let h = hashing::hash_file(&p).map_err(|e| format!("{rel}: {e}"))?;
        if h != fe.hash {
            return Err(format!(
                "{rel}: content changed (hash {} != {})",
                &h[..12],
                fe.hash.get(..12).unwrap_or(&fe.hash)
            ));
        }
        bytes += size;
    }
    Ok(bytes)
}

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

/// Write through a temporary file in the same folder, fsync, rename
/// ([`mrbm_stage::write_atomic_io`], with the runner's error).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunnerError> {
    mrbm_stage::write_atomic_io(path, bytes).map_err(|(p, e)| RunnerError::cache(&p, e))
}

pub enum LockOutcome {
    Acquired(KeyLock),
    /// Another process published the entry while we waited.
    Published,
}

/// How long a lock may go without a heartbeat before any process may break
/// it, whatever its host: MRBM_LOCK_TIMEOUT seconds, default 2 minutes.
pub fn default_lock_timeout() -> Duration {
    std::env::var("MRBM_LOCK_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(120))
}

/// Who holds a lock: written into the lock file as one JSON line. The
/// file's modification time is the heartbeat, renewed while the stage runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockOwner {
    pub pid: u32,
    pub host: String,
    /// The process's start time (clock ticks since boot, /proc/PID/stat),
    /// so a PID reused by another process is told apart.
    #[serde(default)]
    pub start: Option<u64>,
    /// The kernel's boot id: after a reboot every old lock is dead.
    #[serde(default)]
    pub boot: Option<String>,
    pub time: String,
}

impl LockOwner {
    pub fn me() -> LockOwner {
        let pid = std::process::id();
        LockOwner {
            pid,
            host: hostname(),
            start: process_start(pid),
            boot: boot_id(),
            time: now_rfc3339(),
        }
    }

    /// A lock file's text: this format, or the older "pid host time".
    pub fn parse(text: &str) -> Option<LockOwner> {
        if let Ok(o) = serde_json::from_str::<LockOwner>(text.trim()) {
            return Some(o);
        }
        let mut p = text.split_whitespace();
        let pid = p.next()?.parse::<u32>().ok()?;
        let host = p.next()?.to_string();
        Some(LockOwner {
            pid,
            host,
            start: None,
            boot: None,
            time: p.next().unwrap_or_default().to_string(),
        })
    }

    fn line(&self) -> String {
        format!("{}\n", serde_json::to_string(self).expect("json"))
    }

    /// Why this owner is known to be gone, if it is. `age` is the time
    /// since the lock's last heartbeat.
    pub fn dead_because(&self, age: Duration, timeout: Duration) -> Option<String> {
        if age > timeout {
            return Some(format!(
                "no heartbeat for {:.0}s (timeout {:.0}s)",
                age.as_secs_f64(),
                timeout.as_secs_f64()
            ));
        }
        if self.host != hostname() {
            // Another host: its heartbeat is all we can see.
            return None;
        }
        if let (Some(b), Some(now)) = (&self.boot, boot_id()) {
            if *b != now {
                return Some("taken before this machine restarted".into());
            }
        }
        if !pid_alive(self.pid) {
            return Some(format!("process {} is gone", self.pid));
        }
        if let (Some(s), Some(now)) = (self.start, process_start(self.pid)) {
            if s != now {
                return Some(format!(
                    "process id {} now belongs to another process",
                    self.pid
                ));
            }
        }
        None
    }
}

/// A process's start time in clock ticks since boot (Linux), if known.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // after the last ')' start at field 3; the start time is field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn heartbeat_age(path: &Path) -> Option<Duration> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(m.elapsed().unwrap_or_default())
}

/// A held per-key lock; released on drop. A thread renews its heartbeat
/// (the lock file's modification time) until then.
pub struct KeyLock {
    path: PathBuf,
    text: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl KeyLock {
    fn new(path: PathBuf, text: String, every: Duration) -> KeyLock {
        crate::sys::abort::add_lock(&path, &text);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (p, t) = (path.clone(), text.clone());
        let beat = std::thread::Builder::new()
            .name("mrbm-lock-heartbeat".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    // Renew only our own lock: if it was broken and taken by
                    // another process, leave theirs alone.
                    if std::fs::read_to_string(&p).ok().as_deref() != Some(t.as_str()) {
                        tracing::warn!("{}: our lock was broken by another process", p.display());
                        return;
                    }
                    if let Ok(f) = std::fs::OpenOptions::new().append(true).open(&p) {
                        let _ = f.set_modified(SystemTime::now());
                    }
                }
            })
            .ok();
        KeyLock {
            path,
            text,
            stop: Some(tx),
            beat,
        }
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(b) = self.beat.take() {
            let _ = b.join();
        }
        if std::fs::read_to_string(&self.path).ok().as_deref() == Some(self.text.as_str()) {
            let _ = std::fs::remove_file(&self.path);
        }
        crate::sys::abort::remove_lock(&self.path);
    }
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, RunnerError> {
        for d in ["entries", "tmp", "locks", "runs"] {
            std::fs::create_dir_all(root.join(d)).map_err(|e| not_writable(root, e))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            lock_timeout: default_lock_timeout(),
        })
    }

    /// A user error naming the folder when this process cannot write in
    /// the cache (read-only folder or file system, another owner): checked
    /// by the commands that write before they do anything.
    pub fn check_writable(&self) -> Result<(), RunnerError> {
        let probe = self.root.join("tmp").join(format!(
            ".write-test.{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::File::create(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                Ok(())
            }
            Err(e) => Err(not_writable(&self.root, e)),
        }
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

    /// A fresh temporary directory for building the entry `key`. Its name
    /// holds the process and the host, so that on a cache shared between
    /// hosts (Slurm) only the host that made it judges whether it is stale.
    pub fn tmp_dir(&self, key: &str) -> Result<PathBuf, RunnerError> {
        let d = self.root.join("tmp").join(format!(
            "{key}.{}.{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed),
            hostname()
        ));
        std::fs::create_dir_all(d.join("out")).map_err(|e| RunnerError::cache(&d, e))?;
        crate::sys::abort::add_tmp(&d);
        Ok(d)
    }

    /// Take the lock for `key`, waiting for a live owner and breaking the
    /// lock of a dead one (gone, its PID reused, or no heartbeat for the
    /// lock timeout, whatever its host). `cancelled` aborts the wait.
    pub fn lock(
        &self,
        key: &str,
        cancelled: &dyn Fn() -> bool,
        waiting: &dyn Fn(&str),
    ) -> Result<LockOutcome, RunnerError> {
        self.lock_with(key, true, cancelled, waiting)
    }

    /// [`Store::lock`]; with `stop_if_published` false, the lock is taken
    /// even when an entry is there (to replace a corrupt one).
    pub fn lock_with(
        &self,
        key: &str,
        stop_if_published: bool,
        cancelled: &dyn Fn() -> bool,
        waiting: &dyn Fn(&str),
    ) -> Result<LockOutcome, RunnerError> {
        let path = self.lock_path(key);
        let me = LockOwner::me().line();
        let mut told = false;
        let published = || stop_if_published && self.has(key);
        loop {
            if published() {
                return Ok(LockOutcome::Published);
            }
            if let Some(l) = self.try_lock_path(&path, &me)? {
                // It may have been published between our check and the lock.
                if published() {
                    return Ok(LockOutcome::Published);
                }
                return Ok(LockOutcome::Acquired(l));
            }
            if self.break_if_dead(&path) {
                continue;
            }
            if !told {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                let shown = LockOwner::parse(&owner)
                    .map(|o| format!("{} on {}", o.pid, o.host))
                    .unwrap_or_else(|| owner.trim().to_string());
                waiting(&shown);
                told = true;
            }
            if cancelled() {
                return Err(RunnerError::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Take the lock for `key` only if it is free (or its owner is dead);
    /// `None` when a live process holds it.
    pub fn try_lock(&self, key: &str) -> Result<Option<KeyLock>, RunnerError> {
        let path = self.lock_path(key);
        let me = LockOwner::me().line();
        for _ in 0..2 {
            if let Some(l) = self.try_lock_path(&path, &me)? {
                return Ok(Some(l));
            }
            if !self.break_if_dead(&path) {
                return Ok(None);
            }
        }
        Ok(None)
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lock"))
    }

    fn try_lock_path(&self, path: &Path, me: &str) -> Result<Option<KeyLock>, RunnerError> {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(me.as_bytes())
                    .map_err(|e| RunnerError::cache(path, e))?;
                let every = (self.lock_timeout / 4).max(Duration::from_millis(20));
                Ok(Some(KeyLock::new(
                    path.to_path_buf(),
                    me.to_string(),
                    every,
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(RunnerError::cache(path, e)),
        }
    }

    /// Why the lock at `path` is stale, if it is.
    fn lock_dead(&self, path: &Path) -> Option<(String, String)> {
        let owner = std::fs::read_to_string(path).ok()?;
        let age = heartbeat_age(path)?;
        match LockOwner::parse(&owner) {
            Some(o) => o
                .dead_because(age, self.lock_timeout)
                .map(|why| (owner, why)),
            // Empty or unreadable: the owner died between create and write,
            // or is writing right now; give it a moment.
            None => (age > Duration::from_secs(5)).then(|| (owner, "empty lock file".into())),
        }
    }

    /// Break the lock at `path` if its owner is dead; true if it was
    /// broken (by us or by another process just now).
    fn break_if_dead(&self, path: &Path) -> bool {
        let Some((owner, why)) = self.lock_dead(path) else {
            return false;
        };
        // Steal by renaming to a unique name: only one breaker wins. If the
        // lock changed hands meanwhile, put the live one back.
        let stale = path.with_extension(format!(
            "stale.{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        if std::fs::rename(path, &stale).is_ok() {
            if std::fs::read_to_string(&stale).ok().as_deref() == Some(owner.as_str()) {
                tracing::warn!(
                    "broke the lock {} ({}): {why}",
                    path.display(),
                    owner.trim()
                );
                let _ = std::fs::remove_file(&stale);
            } else if std::fs::hard_link(&stale, path).is_ok() {
                let _ = std::fs::remove_file(&stale);
                return false;
            } else {
                let _ = std::fs::remove_file(&stale);
            }
        }
        true
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
    /// A leftover at the entry's place that is no whole entry (no readable
    /// manifest) is moved to quarantine first; the caller holds the lock.
    pub fn publish(&self, tmp: &Path, manifest: &Manifest) -> Result<(), RunnerError> {
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| RunnerError::cache(tmp, e))?;
        write_atomic(&tmp.join(MANIFEST), &bytes)?;
        sync_tree(tmp);
        let dest = self.entry_dir(&manifest.key);
        let mut tries = 0;
        loop {
            match std::fs::rename(tmp, &dest) {
                Ok(()) => {
                    if let Ok(d) = std::fs::File::open(self.root.join("entries")) {
                        let _ = d.sync_all();
                    }
                    return Ok(());
                }
                Err(e) => match self.find(&manifest.key, false) {
                    // Someone else published the same key: theirs is as good as ours.
                    Found::Hit(_) => {
                        let _ = std::fs::remove_dir_all(tmp);
                        return Ok(());
                    }
                    Found::Corrupt(why) if tries == 0 => {
                        tries += 1;
                        let moved = self.quarantine(&manifest.key)?;
                        tracing::warn!(
                            "cache entry {} was not whole ({why}); moved to {}",
                            manifest.key,
                            moved.display()
                        );
                    }
                    _ => return Err(RunnerError::cache(&dest, e)),
                },
            }
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

    /// The entry `key` as found on disk: whole (its manifest reads, names
    /// this key and, with `check_files`, every file matches its hash and
    /// size and no file was added), absent, or corrupt (why).
    pub fn find(&self, key: &str, check_files: bool) -> Found {
        let dir = self.entry_dir(key);
        let bytes = match std::fs::read(dir.join(MANIFEST)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match std::fs::symlink_metadata(&dir) {
                    Ok(_) => Found::Corrupt("it has no manifest".into()),
                    Err(_) => Found::Absent,
                };
            }
            Err(e) => return Found::Corrupt(format!("manifest unreadable: {e}")),
        };
        let m: Manifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => return Found::Corrupt(format!("manifest unreadable: {e}")),
        };
        if m.key != key {
            return Found::Corrupt(format!("its manifest says key {}", m.key));
        }
        if check_files {
            if let Err(why) = self.check_files(key, &m) {
                return Found::Corrupt(why);
            }
        }
        Found::Hit(m)
    }

    /// Check the files of entry `key` against its manifest: same names,
    /// sizes and blake3 hashes. Returns the bytes read.
    pub fn check_files(&self, key: &str, m: &Manifest) -> Result<u64, String> {
        check_out_files(&self.out_dir(key), m)
    }

    /// Check an entry's files against its manifest; Err(reason) if corrupt.
    pub fn verify_entry(&self, key: &str) -> Result<(), String> {
        match self.find(key, true) {
            Found::Hit(_) => Ok(()),
            Found::Absent => Err("no such entry".into()),
            Found::Corrupt(why) => Err(why),
        }
    }

    /// Move entry `key` to quarantine/ (nothing to do if it is gone).
    pub fn quarantine(&self, key: &str) -> Result<PathBuf, RunnerError> {
        let q = self.root.join("quarantine");
        std::fs::create_dir_all(&q).map_err(|e| RunnerError::cache(&q, e))?;
        let dest = q.join(format!(
            "{key}.{}.{}.{}",
            now_rfc3339().replace(':', ""),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::rename(self.entry_dir(key), &dest) {
            Ok(()) => Ok(dest),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dest),
            Err(e) => Err(RunnerError::cache(&dest, e)),
        }
    }

    /// Move entry `key` and every entry computed from it, directly or not,
    /// to quarantine/. Returns (key, stage id, where it went) of each, the
    /// corrupt entry first.
    pub fn quarantine_with_descendants(
        &self,
        key: &str,
    ) -> Result<Vec<(String, String, PathBuf)>, RunnerError> {
        let all: Vec<(String, Option<Manifest>)> = self
            .keys()
            .into_iter()
            .map(|k| {
                let m = match self.find(&k, false) {
                    Found::Hit(m) => Some(m),
                    _ => None,
                };
                (k, m)
            })
            .collect();
        let mut bad: Vec<String> = vec![key.to_string()];
        // Content hashes of the bad entries' outputs, for manifests written
        // before entries recorded their upstream keys.
        let mut bad_hashes: std::collections::BTreeSet<String> = Default::default();
        let mut moved = Vec::new();
        let mut i = 0;
        while i < bad.len() {
            let k = bad[i].clone();
            i += 1;
            let m = all
                .iter()
                .find(|(x, _)| *x == k)
                .and_then(|(_, m)| m.clone());
            if let Some(m) = &m {
                bad_hashes.insert(m.output_hash.clone());
                bad_hashes.extend(m.files.values().map(|f| f.hash.clone()));
            }
            for (other, om) in &all {
                let Some(om) = om else { continue };
                if bad.contains(other) {
                    continue;
                }
                let from_bad = if om.input_keys.is_empty() {
                    om.inputs.values().any(|h| bad_hashes.contains(h))
                } else {
                    om.input_keys.values().any(|u| *u == k)
                };
                if from_bad {
                    bad.push(other.clone());
                }
            }
            let id = m.map(|m| m.stage_id).unwrap_or_default();
            moved.push((k.clone(), id, self.quarantine(&k)?));
        }
        Ok(moved)
    }

    /// Check every entry; move each corrupt one and everything computed
    /// from it to quarantine/. Returns (entries checked, corrupt ones with
    /// why, the quarantined (key, stage id, where) list).
    #[allow(clippy::type_complexity)]
    pub fn verify_all(
        &self,
    ) -> Result<(usize, Vec<(String, String)>, Vec<(String, String, PathBuf)>), RunnerError> {
        let keys = self.keys();
        let mut corrupt = Vec::new();
        let mut moved: Vec<(String, String, PathBuf)> = Vec::new();
        for k in &keys {
            if moved.iter().any(|(m, _, _)| m == k) {
                continue;
            }
            match self.find(k, true) {
                Found::Hit(_) | Found::Absent => {}
                Found::Corrupt(why) => {
                    corrupt.push((k.clone(), why));
                    moved.extend(self.quarantine_with_descendants(k)?);
                }
            }
        }
        Ok((keys.len(), corrupt, moved))
    }

    /// Remove temporary directories and locks left by dead processes.
    pub fn clean_stale(&self) -> usize {
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let mut parts = name.splitn(4, '.');
                let pid = parts.nth(1).and_then(|p| p.parse::<u32>().ok());
                // KEY.PID.N.HOST; older names have no host (this one's).
                let here = parts.nth(1).is_none_or(|h| h == hostname());
                if let Some(pid) = pid.filter(|_| here) {
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
                let p = e.path();
                if p.extension().is_some_and(|x| x == "lock") && self.break_if_dead(&p) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Held by every `mrbm run` (shared) and by `gc` (exclusive), so gc
    /// never deletes what a run may be about to read. Released on drop.
    pub fn use_guard(
        &self,
        exclusive: bool,
        waiting: &dyn Fn(),
    ) -> Result<std::fs::File, RunnerError> {
        let p = self.root.join("gc.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| RunnerError::cache(&p, e))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        use std::os::fd::AsRawFd;
        let flock = |op: i32| -> std::io::Result<()> {
            // SAFETY: flock on a file descriptor we own.
            match unsafe { libc::flock(f.as_raw_fd(), op) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        };
        match flock(op | libc::LOCK_NB) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                waiting();
                loop {
                    match flock(op) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(RunnerError::cache(&p, e)),
                    }
                }
            }
            // A file system without flock (some network mounts): go on
            // unguarded, with the per-key locks only.
            Err(e) => tracing::warn!(
                "{}: cannot lock ({e}); gc and runs are not kept apart",
                p.display()
            ),
        }
        Ok(f)
    }

    pub fn runs_file(&self, experiment: &str) -> PathBuf {
        self.root
            .join("runs")
            .join(format!("{}.json", experiment.replace(['/', '\\'], "_")))
    }
}

/// A cache folder that cannot be written: a user error (exit 2) when it is
/// a matter of permissions or a read-only file system, naming the folder.
fn not_writable(root: &Path, e: std::io::Error) -> RunnerError {
    use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
    match e.kind() {
        PermissionDenied | ReadOnlyFilesystem => RunnerError::Usage(format!(
            "the cache folder {} is not writable ({e})\n  help: make it writable, or put the cache elsewhere with --cache DIR (or MRBM_CACHE)",
            root.display()
        )),
        _ => RunnerError::cache(root, e),
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

/// The cache folder: `--cache`, else `MRBM_CACHE`, else `.mrbm/` in the
/// project.
pub fn cache_dir(flag: Option<&Path>, project_root: &Path) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("MRBM_CACHE").map(PathBuf::from))
        .unwrap_or_else(|| project_root.join(".mrbm"))
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

    fn owner_line(o: &LockOwner) -> String {
        o.line()
    }

    fn set_age(path: &Path, age: Duration) {
        let f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    fn acquired(s: &Store) -> bool {
        match s.lock("k", &|| true, &|_| {}) {
            Ok(LockOutcome::Acquired(_)) => true,
            Err(RunnerError::Interrupted) => false,
            Ok(LockOutcome::Published) => panic!("nothing was published"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn lock_records_pid_host_start_and_boot() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let LockOutcome::Acquired(l) = s.lock("k", &|| false, &|_| {}).unwrap() else {
            panic!("not acquired")
        };
        let text = std::fs::read_to_string(d.path().join("locks/k.lock")).unwrap();
        let o = LockOwner::parse(&text).unwrap();
        assert_eq!(o.pid, std::process::id());
        assert_eq!(o.host, hostname());
        assert!(o.start.is_some() && o.start == process_start(o.pid));
        drop(l);
        assert!(!d.path().join("locks/k.lock").exists());
    }

    #[test]
    fn reused_pid_is_detected_through_the_start_time() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        // Our own (live) pid, but a process started at another time.
        let mut o = LockOwner::me();
        o.start = o.start.map(|t| t + 12345);
        std::fs::write(d.path().join("locks/k.lock"), owner_line(&o)).unwrap();
        assert!(acquired(&s), "a lock of a reused pid blocks");
    }

    #[test]
    fn other_hosts_lock_is_broken_only_without_heartbeat() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let path = d.path().join("locks/k.lock");
        for text in [
            owner_line(&LockOwner {
                pid: 1,
                host: "some-other-host".into(),
                start: Some(1),
                boot: None,
                time: now_rfc3339(),
            }),
            // The older "pid host time" format.
            "1 some-other-host 2026-01-01T00:00:00Z\n".to_string(),
        ] {
            std::fs::write(&path, &text).unwrap();
            assert!(!acquired(&s), "a fresh lock of another host was broken");
            set_age(&path, s.lock_timeout + Duration::from_secs(5));
            assert!(acquired(&s), "a lock without heartbeat blocks");
            assert!(!path.exists());
        }
        // Same host, live process, stale heartbeat (stopped, hung): broken too.
        std::fs::write(&path, owner_line(&LockOwner::me())).unwrap();
        set_age(&path, s.lock_timeout + Duration::from_secs(5));
        assert!(acquired(&s));
    }

    #[test]
    fn heartbeat_keeps_a_held_lock_alive() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        s.lock_timeout = Duration::from_millis(400);
        let path = d.path().join("locks/k.lock");
        let LockOutcome::Acquired(l) = s.lock("k", &|| false, &|_| {}).unwrap() else {
            panic!("not acquired")
        };
        // Pretend the heartbeat is due: it makes the lock fresh again.
        set_age(&path, Duration::from_secs(3600));
        let mut renewed = false;
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(20));
            if heartbeat_age(&path).unwrap() < Duration::from_secs(60) {
                renewed = true;
                break;
            }
        }
        assert!(renewed, "the heartbeat was not renewed");
        drop(l);
        assert!(!path.exists());
    }

    #[test]
    fn clean_stale_leaves_other_hosts_temporary_entries() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        // A pid that cannot be alive here (beyond pid_max on Linux).
        let here = d.path().join(format!("tmp/k.4194999.0.{}", hostname()));
        let old = d.path().join("tmp/k.4194999.1");
        let there = d.path().join("tmp/k.4194999.2.some-other-host");
        for p in [&here, &old, &there] {
            std::fs::create_dir_all(p).unwrap();
        }
        assert_eq!(s.clean_stale(), 2);
        assert!(!here.exists() && !old.exists());
        assert!(there.exists(), "a live entry of another host was removed");
        let t = s.tmp_dir("k").unwrap();
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.ends_with(&format!(".{}", hostname())), "{name}");
    }

    #[test]
    fn clean_stale_clears_locks_of_reused_pids() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let mut o = LockOwner::me();
        o.start = o.start.map(|t| t + 1);
        std::fs::write(d.path().join("locks/a.lock"), owner_line(&o)).unwrap();
        std::fs::write(d.path().join("locks/b.lock"), owner_line(&LockOwner::me())).unwrap();
        assert_eq!(s.clean_stale(), 1);
        assert!(!d.path().join("locks/a.lock").exists());
        assert!(d.path().join("locks/b.lock").exists());
    }

    #[test]
    fn a_manifest_with_a_nan_metric_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let m = Manifest {
            key: "k".into(),
            stage_id: "a".into(),
            kind: "a".into(),
            version: 1,
            params: serde_json::Value::Null,
            inputs: BTreeMap::new(),
            input_sources: BTreeMap::new(),
            input_keys: BTreeMap::new(),
            files: BTreeMap::new(),
            output_hash: String::new(),
            metrics: BTreeMap::from([("loglik".to_string(), f64::NAN)]),
            device: "cpu".into(),
            started: now_rfc3339(),
            seconds: 0.0,
            tool_version: String::new(),
            host: String::new(),
            executor_job: None,
        };
        let tmp = s.tmp_dir("k").unwrap();
        s.publish(&tmp, &m).unwrap();
        match s.find("k", true) {
            Found::Hit(m) => assert!(m.metrics["loglik"].is_nan()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_job_id_is_written_as_executor_job_and_read_from_old_slurm_job() {
        let m = Manifest {
            key: "k".into(),
            stage_id: "a".into(),
            kind: "a".into(),
            version: 1,
            params: serde_json::Value::Null,
            inputs: BTreeMap::new(),
            input_sources: BTreeMap::new(),
            input_keys: BTreeMap::new(),
            files: BTreeMap::new(),
            output_hash: String::new(),
            metrics: BTreeMap::new(),
            device: "cpu".into(),
            started: String::new(),
            seconds: 0.0,
            tool_version: String::new(),
            host: String::new(),
            executor_job: Some("4242".into()),
        };
        let new = serde_json::to_string(&m).unwrap();
        assert!(new.contains("\"executor_job\":\"4242\""), "{new}");
        assert!(!new.contains("slurm_job"), "{new}");
        // A manifest a cache written before executors were plugins holds.
        let old = new.replace("executor_job", "slurm_job");
        let back: Manifest = serde_json::from_str(&old).unwrap();
        assert_eq!(back.executor_job.as_deref(), Some("4242"));
        assert_eq!(back.upstream().executor_job.as_deref(), Some("4242"));
        // None is left out, and reads back as None.
        let none = Manifest {
            executor_job: None,
            ..m
        };
        let text = serde_json::to_string(&none).unwrap();
        assert!(!text.contains("executor_job"), "{text}");
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.executor_job, None);
    }

    #[test]
    fn timestamps_are_iso() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20"));
    }
}
