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

/// Relative path (with `/`) -> absolute path of every file under `dir`, sorted.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
    {
        let e = e.map_err(|e| std::io::Error::other(e.to_string()))?;
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, e.path().to_path_buf()));
        }
    }
    Ok(out)
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
        if path.is_dir() {
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
}
