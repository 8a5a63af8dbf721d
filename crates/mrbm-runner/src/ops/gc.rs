//! `mrbm gc`: delete the cache entries that no experiment of the project
//! references and that neither the last runs of an experiment nor a pinned
//! run used.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::RunnerError;
use crate::key::preview;
use crate::kinds::registry::Registry;
use crate::load::config;
use crate::plan::{self, Overrides};
use crate::report::history;
use crate::store::hashing::Memo;
use crate::store::Store;

/// What `mrbm gc` was asked.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// The project root holding experiments/.
    pub project: PathBuf,
    pub data_root: Option<PathBuf>,
    pub dry_run: bool,
    /// Keep the entries of the last K runs of each experiment.
    pub keep_runs: usize,
    /// Go on when an experiment does not load.
    pub force: bool,
}

/// Collect `store` (it waits for the runs using it to finish).
pub fn collect(store: &Store, reg: &Registry, o: &GcOptions) -> Result<u8, RunnerError> {
    // Exclusive: no run is using the cache while gc decides and deletes.
    let _guard = store.use_guard(true, &|| {
        eprintln!(
            "waiting for the runs using {} to finish before collecting",
            store.root.display()
        )
    })?;
    let mut keep = referenced_keys(store, reg, o)?;
    // The entries of the last runs of each experiment and of pinned runs.
    let from_runs = history::kept_keys(&history::load_all(&store.root), o.keep_runs);
    let by_runs = from_runs.difference(&keep).count();
    keep.extend(from_runs);
    let stale = if o.dry_run { 0 } else { store.clean_stale() };
    let Removed {
        entries,
        bytes,
        busy,
    } = remove_all_but(store, &keep, o.dry_run)?;
    let checkpoints = remove_orphan_checkpoints(store, &keep, o.dry_run)?;
    println!(
        "{} {entries} entries ({:.1} MB) and {checkpoints} training checkpoints; kept {} ({by_runs} only for the last {} runs or pinned runs){}; {stale} stale files cleaned",
        if o.dry_run { "would remove" } else { "removed" },
        bytes as f64 / 1e6,
        keep.len(),
        o.keep_runs,
        if busy > 0 {
            format!(" and {busy} in use")
        } else {
            String::new()
        }
    );
    Ok(0)
}

/// The keys the experiments under experiments/ would use, with every
/// profile. An experiment that does not load is an error unless `force`.
fn referenced_keys(
    store: &Store,
    reg: &Registry,
    o: &GcOptions,
) -> Result<BTreeSet<String>, RunnerError> {
    let memo = Memo::load(&store.root);
    let mut keep = BTreeSet::new();
    let exp_dir = o.project.join("experiments");
    let mut problems = Vec::new();
    for f in experiment_files(&exp_dir)? {
        let exp = match config::load(&f) {
            Ok(e) => e,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let mut profiles: Vec<Option<String>> = vec![None];
        profiles.extend(exp.file.profiles.keys().cloned().map(Some));
        for p in profiles {
            let ov = Overrides {
                profile: p.clone(),
                data_root: o.data_root.clone(),
                ..Default::default()
            };
            match plan::build(&exp, reg, &ov) {
                Ok(dag) => keep.extend(
                    preview::plan(&dag, store, &memo)?
                        .into_iter()
                        .filter_map(|l| l.key),
                ),
                Err(e) => problems.push(match &p {
                    Some(p) => format!("{e} (profile `{p}`)"),
                    None => e.to_string(),
                }),
            }
        }
    }
    if problems.is_empty() {
        return Ok(keep);
    }
    let list = problems
        .iter()
        .map(|p| format!("  {}", p.replace('\n', "\n  ")))
        .collect::<Vec<_>>()
        .join("\n");
    if !o.force {
        return Err(RunnerError::Usage(format!(
            "gc: {} experiment(s) under {} do not load, so what they use is unknown; nothing was deleted:\n{list}\n  help: fix them (a `data:` input needs --data-root or MRBM_DATA), or pass --force to delete what only they use",
            problems.len(),
            exp_dir.display()
        )));
    }
    eprintln!("warning: --force: collecting although these do not load:\n{list}");
    Ok(keep)
}

/// The `*.toml` files of `dir`, sorted.
fn experiment_files(dir: &Path) -> Result<Vec<PathBuf>, RunnerError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            RunnerError::Usage(format!(
                "{}: {e} (run gc from the project root or pass --project)",
                dir.display()
            ))
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

#[derive(Debug, Default, PartialEq)]
struct Removed {
    entries: u64,
    bytes: u64,
    /// Entries left because a running stage holds their key's lock.
    busy: u64,
}

/// Remove (or, dry, list) every entry whose key is not in `keep`.
fn remove_all_but(
    store: &Store,
    keep: &BTreeSet<String>,
    dry_run: bool,
) -> Result<Removed, RunnerError> {
    let mut out = Removed::default();
    for k in store.keys().into_iter().filter(|k| !keep.contains(k)) {
        // An entry whose key is locked is being written or replaced: leave it.
        let Some(lock) = store.try_lock(&k)? else {
            out.busy += 1;
            println!("in use {k} (locked by a running stage): kept");
            continue;
        };
        let dir = store.entry_dir(&k);
        let size: u64 = walkdir::WalkDir::new(&dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        let id = store.manifest(&k).map(|m| m.stage_id).unwrap_or_default();
        println!(
            "{} {k} {id} ({:.1} MB)",
            if dry_run { "would remove" } else { "removed" },
            size as f64 / 1e6
        );
        if !dry_run {
            // Rename first so a concurrent reader never sees a half-deleted entry.
            let trash = store
                .root
                .join("tmp")
                .join(format!("gc-{k}.{}", std::process::id()));
            std::fs::rename(&dir, &trash).map_err(|e| RunnerError::cache(&dir, e))?;
            let _ = std::fs::remove_dir_all(&trash);
        }
        drop(lock);
        out.entries += 1;
        out.bytes += size;
    }
    Ok(out)
}

/// Remove (or, dry, list) the resume folders (`CACHE/resume/KEY/`, written
/// by long stages so an interrupted run goes on where it stopped) that no
/// rerun can use: their key is no experiment's any more, or its entry was
/// published meanwhile. A checkpoint of a key still wanted is kept: the
/// next `mrbm run` resumes from it. Returns how many went.
fn remove_orphan_checkpoints(
    store: &Store,
    keep: &BTreeSet<String>,
    dry_run: bool,
) -> Result<usize, RunnerError> {
    let dir = store.root.join("resume");
    let Ok(read) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut removed = 0;
    for e in read.flatten() {
        let key = e.file_name().to_string_lossy().to_string();
        let published = store.entry_dir(&key).join("manifest.json").exists();
        if keep.contains(&key) && !published {
            continue;
        }
        let Some(lock) = store.try_lock(&key)? else {
            continue; // a stage is training from it right now
        };
        println!(
            "{} checkpoint {key}{}",
            if dry_run { "would remove" } else { "removed" },
            if published {
                " (its entry is published)"
            } else {
                ""
            }
        );
        if !dry_run {
            std::fs::remove_dir_all(e.path()).map_err(|err| RunnerError::cache(e.path(), err))?;
        }
        drop(lock);
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiment_files_are_the_sorted_toml_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.toml", "a.toml", "notes.md"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let names: Vec<String> = experiment_files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.toml", "b.toml"]);
        assert!(experiment_files(&dir.path().join("none")).is_err());
    }

    #[test]
    fn an_empty_cache_has_nothing_to_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = remove_all_but(&store, &BTreeSet::new(), true).unwrap();
        assert_eq!(r, Removed::default());
    }

    #[test]
    fn checkpoints_go_unless_a_wanted_key_can_still_resume_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let resume = dir.path().join("resume");
        for k in ["wanted", "orphan", "published"] {
            std::fs::create_dir_all(resume.join(k)).unwrap();
            std::fs::write(resume.join(k).join("checkpoint.safetensors"), b"x").unwrap();
        }
        std::fs::create_dir_all(store.entry_dir("published")).unwrap();
        std::fs::write(store.entry_dir("published").join("manifest.json"), b"{}").unwrap();
        let keep: BTreeSet<String> = ["wanted", "published"].map(String::from).into();
        assert_eq!(remove_orphan_checkpoints(&store, &keep, true).unwrap(), 2);
        assert!(resume.join("orphan").exists(), "a dry run removes nothing");
        assert_eq!(remove_orphan_checkpoints(&store, &keep, false).unwrap(), 2);
        assert!(resume.join("wanted").exists());
        assert!(!resume.join("orphan").exists());
        assert!(!resume.join("published").exists());
    }
}
