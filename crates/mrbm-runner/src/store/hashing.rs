//! Content hashes (blake3) of files and folders, with a (path, size, mtime)
//! memo so that a 200k-file data set is not re-read on every run.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::RunnerError;

pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Hash of a file's content, streamed.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Combine (relative path, file hash) pairs into one folder hash.
pub fn combine(files: &BTreeMap<String, String>) -> String {
    let mut h = blake3::Hasher::new();
    for (rel, fh) in files {
        h.update(rel.as_bytes());
        h.update(&[0]);
        h.update(fh.as_bytes());
        h.update(&[0]);
    }
    h.finalize().to_hex().to_string()
}

/// Relative path (with `/`) -> absolute path of every file under `dir`,
/// sorted. Symlinks are followed only while they stay inside `dir` (one
/// that leads out is an error: what it names would be read but not be part
/// of the folder); FIFOs, sockets and devices are refused.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let root = std::fs::canonicalize(dir)?;
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
    {
        let e = e.map_err(|e| std::io::Error::other(e.to_string()))?;
        if e.path_is_symlink() && e.depth() > 0 {
            let target = std::fs::canonicalize(e.path())?;
            if !target.starts_with(&root) {
                return Err(std::io::Error::other(format!(
                    "{} is a symlink to {}, outside {}: copy what it names into the folder, or declare it as an input of its own",
                    e.path().display(),
                    target.display(),
                    dir.display()
                )));
            }
        }
        let ft = e.file_type();
        if ft.is_file() {
            let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, e.path().to_path_buf()));
        } else if !ft.is_dir() {
            return Err(not_regular(e.path()));
        }
    }
    Ok(out)
}

fn not_regular(p: &Path) -> std::io::Error {
    std::io::Error::other(format!(
        "{} is not a regular file or folder (a FIFO, socket or device): it cannot be an input",
        p.display()
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    size: u64,
    mtime_ns: u128,
}

fn stat(path: &Path) -> std::io::Result<(Stat, SystemTime)> {
    let m = std::fs::metadata(path)?;
    let mtime = m.modified()?;
    let ns = mtime
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Ok((
        Stat {
            size: m.len(),
            mtime_ns: ns,
        },
        mtime,
    ))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct MemoFile {
    entries: BTreeMap<String, (Stat, String)>,
}

/// The memo of external file hashes, kept in the cache as `memo.json`.
pub struct Memo {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, (Stat, String)>>,
    dirty: Mutex<bool>,
}

impl Memo {
    pub fn load(cache: &Path) -> Memo {
        let path = cache.join("memo.json");
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<MemoFile>(&b).ok())
            .map(|m| m.entries)
            .unwrap_or_default();
        Memo {
            path,
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// Hash of a file, from the memo when its size and mtime are unchanged.
    /// Files modified in the last two seconds are not memoised: a write in
    /// the same clock tick could otherwise go unnoticed.
    pub fn file(&self, path: &Path) -> std::io::Result<String> {
        let key = path.to_string_lossy().into_owned();
        let (st, mtime) = stat(path)?;
        if let Some((s, h)) = self.entries.lock().expect("memo lock").get(&key) {
            if *s == st {
                return Ok(h.clone());
            }
        }
        let h = hash_file(path)?;
        let fresh = SystemTime::now()
            .duration_since(mtime)
            .map(|d| d < Duration::from_secs(2))
            .unwrap_or(true);
        if !fresh {
            self.entries
                .lock()
                .expect("memo lock")
                .insert(key, (st, h.clone()));
            *self.dirty.lock().expect("memo lock") = true;
        }
        Ok(h)
    }

    /// Hash of a file or of a whole folder (its files' paths and contents).
    pub fn path(&self, path: &Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_dir() && !meta.is_file() {
            return Err(not_regular(path));
        }
        if meta.is_dir() {
            let files = list_files(path)?;
            let mut map = BTreeMap::new();
            for (rel, abs) in files {
                map.insert(rel, self.file(&abs)?);
            }
            Ok(combine(&map))
        } else {
            self.file(path)
        }
    }

    /// Write the memo back, merged with what another process may have saved.
    pub fn save(&self) -> Result<(), RunnerError> {
        if !*self.dirty.lock().expect("memo lock") {
            return Ok(());
        }
        let mut merged = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<MemoFile>(&b).ok())
            .map(|m| m.entries)
            .unwrap_or_default();
        merged.extend(self.entries.lock().expect("memo lock").clone());
        let bytes = serde_json::to_vec(&MemoFile { entries: merged })
            .map_err(|e| RunnerError::cache(&self.path, e))?;
        crate::store::write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_hash_depends_on_names_and_content() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"1").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), b"2").unwrap();
        let memo = Memo::load(d.path());
        let h1 = memo.path(d.path()).unwrap();
        std::fs::write(d.path().join("sub/b"), b"3").unwrap();
        let h2 = memo.path(d.path()).unwrap();
        assert_ne!(h1, h2);
        std::fs::rename(d.path().join("a"), d.path().join("c")).unwrap();
        assert_ne!(memo.path(d.path()).unwrap(), h2);
    }

    #[cfg(unix)]
    #[test]
    fn no_symlinks_out_and_no_special_files() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in");
        std::fs::create_dir_all(input.join("sub")).unwrap();
        std::fs::write(input.join("a"), b"1").unwrap();
        std::fs::write(d.path().join("secret"), b"2").unwrap();
        let memo = Memo::load(d.path());
        // A link that stays inside is followed.
        std::os::unix::fs::symlink(input.join("a"), input.join("sub/link")).unwrap();
        let files = list_files(&input).unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        memo.path(&input).unwrap();
        // One that leads out is refused.
        std::os::unix::fs::symlink(d.path().join("secret"), input.join("out")).unwrap();
        let e = memo.path(&input).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        std::fs::remove_file(input.join("out")).unwrap();
        std::os::unix::fs::symlink(d.path(), input.join("up")).unwrap();
        assert!(memo.path(&input).is_err());
        std::fs::remove_file(input.join("up")).unwrap();
        // A FIFO, inside a folder or named alone, is refused (not read: that would block).
        let fifo = input.join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = memo.path(&input).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(memo.path(&fifo).is_err());
        assert!(memo.path(Path::new("/dev/null")).is_err());
    }
}
