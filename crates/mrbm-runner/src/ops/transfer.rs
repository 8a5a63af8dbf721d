//! `mrbm push` and `mrbm pull`: which cache entries move between the local
//! cache and a [`Remote`], and the checks on the way.
//!
//! An experiment's entries are found as `plan` finds them: each node keyed
//! in topological order from its upstream entries' manifests, so a pull
//! walks down the graph, fetching an entry before keying what reads it.
//! A pulled entry is used only after its manifest names the key it was
//! asked for, the key recomputes from the manifest (kind, version,
//! parameters, input hashes), and every file matches its size and blake3
//! hash (the checks of `mrbm verify`); it is then published into the local
//! cache with the usual rename.

use std::collections::BTreeSet;

use crate::error::RunnerError;
use crate::key::{key_node, Cells};
use crate::plan::Dag;
use crate::store::hashing::{self, Memo};
use crate::store::remote::Remote;
use crate::store::{self, Found, Manifest, Store, MANIFEST};

/// What a pull found at a key: None when the remote lacks it, Err(why)
/// when its copy failed verification (and was dropped).
type Fetched = Option<Result<Manifest, String>>;

/// What became of one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Copied (pushed or pulled).
    Moved,
    /// The other side had it already.
    There,
    /// Not in the cache it would come from (push: never computed here;
    /// pull: not on the remote, so `run` computes it).
    Absent,
    /// Its key depends on an entry that is absent.
    Unknown,
    /// Refused: corrupt locally (push) or failed verification (pull).
    Refused(String),
}

/// One line of a transfer's report.
#[derive(Debug, Clone)]
pub struct Line {
    pub id: String,
    pub key: Option<String>,
    pub outcome: Outcome,
}

/// Push the entries of `dag` (every node whose key is known and whose
/// entry is here) to `remote`.
pub fn push_experiment(
    dag: &Dag,
    store: &Store,
    remote: &Remote,
) -> Result<Vec<Line>, RunnerError> {
    let on_remote = remote.list_for_push()?;
    let mut lines = walk(dag, store, &mut |_| Ok(None))?;
    for l in &mut lines {
        if let (Outcome::There, Some(key)) = (&l.outcome, &l.key) {
            l.outcome = push_one(store, remote, key, &on_remote)?;
        }
    }
    Ok(lines)
}

/// Push every entry of the local cache.
pub fn push_all(store: &Store, remote: &Remote) -> Result<Vec<Line>, RunnerError> {
    let on_remote = remote.list_for_push()?;
    let mut lines = Vec::new();
    for key in store
        .keys()
        .into_iter()
        .filter(|k| crate::store::remote::is_key(k))
    {
        let id = store
            .manifest(&key)
            .map(|m| m.stage_id)
            .unwrap_or_else(|_| "?".into());
        let outcome = push_one(store, remote, &key, &on_remote)?;
        lines.push(Line {
            id,
            key: Some(key),
            outcome,
        });
    }
    Ok(lines)
}

/// One local entry to the remote, checked first.
fn push_one(
    store: &Store,
    remote: &Remote,
    key: &str,
    on_remote: &BTreeSet<String>,
) -> Result<Outcome, RunnerError> {
    if on_remote.contains(key) {
        return Ok(Outcome::There);
    }
    match store.find(key, true) {
        Found::Hit(_) => {}
        Found::Absent => return Ok(Outcome::Absent),
        Found::Corrupt(why) => {
            return Ok(Outcome::Refused(format!(
                "corrupt here ({why}); `mrbm verify` quarantines it"
            )))
        }
    }
    Ok(if remote.upload(&store.entry_dir(key), key)? {
        Outcome::Moved
    } else {
        Outcome::There
    })
}

/// Pull what `dag` needs from `remote`: every entry whose key can be known
/// and that the local cache lacks.
pub fn pull_experiment(
    dag: &Dag,
    store: &Store,
    remote: &Remote,
) -> Result<Vec<Line>, RunnerError> {
    let on_remote = remote.list()?;
    let mut fetch = |key: &str| -> Result<Fetched, RunnerError> {
        if !on_remote.contains(key) {
            return Ok(None);
        }
        pull_one(store, remote, key)
    };
    walk(dag, store, &mut fetch)
}

/// Pull every entry of the remote that the local cache lacks.
pub fn pull_all(store: &Store, remote: &Remote) -> Result<Vec<Line>, RunnerError> {
    let mut lines = Vec::new();
    for key in remote.list()? {
        let (id, outcome) = match store.find(&key, false) {
            Found::Hit(m) => (m.stage_id, Outcome::There),
            _ => match pull_one(store, remote, &key)? {
                Some(Ok(m)) => (m.stage_id, Outcome::Moved),
                Some(Err(why)) => ("?".into(), Outcome::Refused(why)),
                None => ("?".into(), Outcome::Absent),
            },
        };
        lines.push(Line {
            id,
            key: Some(key),
            outcome,
        });
    }
    Ok(lines)
}

/// Download entry `key` into a temporary folder of the local cache,
/// verify it and publish it. None: the remote lacks it; Some(Err(why)):
/// it failed verification and was dropped.
fn pull_one(store: &Store, remote: &Remote, key: &str) -> Result<Fetched, RunnerError> {
    let Some(_lock) = store.try_lock(key)? else {
        // Another process here is computing or pulling it.
        return Ok(Some(Err("another mrbm here holds its lock".into())));
    };
    if let Found::Hit(m) = store.find(key, false) {
        return Ok(Some(Ok(m)));
    }
    let tmp = store.tmp_dir(key)?;
    let result = (|| {
        if !remote.download(key, &tmp)? {
            return Ok(None);
        }
        Ok(Some(verify_download(&tmp, key)))
    })();
    let result: Result<_, RunnerError> =
        result.map_err(|e: crate::store::remote::RemoteError| e.into());
    match result {
        Ok(Some(Ok(m))) => {
            store.publish(&tmp, &m)?;
            Ok(Some(Ok(m)))
        }
        other => {
            let _ = std::fs::remove_dir_all(&tmp);
            other
        }
    }
}

/// A downloaded entry (manifest.json, out/) checked before use: its
/// manifest names `key`, the key recomputes from it, its files match.
pub fn verify_download(dir: &std::path::Path, key: &str) -> Result<Manifest, String> {
    let bytes = std::fs::read(dir.join(MANIFEST)).map_err(|e| format!("manifest: {e}"))?;
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("manifest unreadable: {e}"))?;
    if m.key != key {
        return Err(format!("its manifest says key {}", m.key));
    }
    let doc = serde_json::json!({
        "kind": m.kind,
        "version": m.version,
        "params": mrbm_stage::key_params(&m.params),
        "inputs": m.inputs,
    });
    let recomputed = hashing::hash_bytes(&serde_json::to_vec(&doc).expect("json"));
    if recomputed != key {
        return Err(format!(
            "its manifest (kind, version, parameters, inputs) hashes to {}, not to its key",
            &recomputed[..12.min(recomputed.len())]
        ));
    }
    store::check_out_files(&dir.join("out"), &m)?;
    Ok(m)
}

/// Key each node in topological order from its upstream manifests; an
/// entry not in the local cache is asked of `fetch` (None: not there).
fn walk(
    dag: &Dag,
    store: &Store,
    fetch: &mut dyn FnMut(&str) -> Result<Fetched, RunnerError>,
) -> Result<Vec<Line>, RunnerError> {
    let memo = Memo::load(&store.root);
    let mut manifests: Vec<Option<Manifest>> = vec![None; dag.nodes.len()];
    let mut lines = Vec::new();
    for (i, node) in dag.nodes.iter().enumerate() {
        let keyed = key_node(dag, store, &memo, i, 1, Cells::Pending, &|j| {
            manifests[j].clone()
        });
        if let Some(e) = keyed.inputs.into_iter().find_map(Result::err) {
            return Err(e);
        }
        let Some(job) = keyed.job else {
            lines.push(Line {
                id: node.id.clone(),
                key: None,
                outcome: Outcome::Unknown,
            });
            continue;
        };
        let outcome = match store.find(&job.key, false) {
            Found::Hit(m) => {
                manifests[i] = Some(m);
                Outcome::There
            }
            _ => match fetch(&job.key)? {
                Some(Ok(m)) => {
                    manifests[i] = Some(m);
                    Outcome::Moved
                }
                Some(Err(why)) => Outcome::Refused(why),
                None => Outcome::Absent,
            },
        };
        lines.push(Line {
            id: node.id.clone(),
            key: Some(job.key),
            outcome,
        });
    }
    let _ = memo.save();
    Ok(lines)
}

/// The report of a push or pull, one line per entry and a summary; the
/// exit code (1 when an entry was refused).
pub fn render(lines: &[Line], pull: bool, remote: &Remote) -> (String, u8) {
    let (moved, there) = if pull {
        ("pulled", "here already")
    } else {
        ("pushed", "on the remote already")
    };
    let mut out = String::new();
    let short = |k: &Option<String>| {
        k.as_deref()
            .map_or("-", |k| &k[..12.min(k.len())])
            .to_string()
    };
    let mut counts = [0usize; 5];
    for l in lines {
        let (i, word) = match &l.outcome {
            Outcome::Moved => (0, moved.to_string()),
            Outcome::There => (1, there.to_string()),
            Outcome::Absent if pull => (2, "not on the remote (run computes it)".into()),
            Outcome::Absent => (2, "not in this cache (run it first)".into()),
            Outcome::Unknown => (3, "key unknown until its inputs exist".into()),
            Outcome::Refused(why) => (4, format!("REFUSED: {why}")),
        };
        counts[i] += 1;
        out.push_str(&format!("{:<10} {:<12} {}\n", short(&l.key), l.id, word));
    }
    let dir = if pull { "from" } else { "to" };
    let others: Vec<String> = [
        (counts[1], there),
        (
            counts[2],
            if pull {
                "not on the remote"
            } else {
                "not in this cache"
            },
        ),
        (counts[3], "with keys unknown yet"),
        (counts[4], "REFUSED"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, w)| format!("{n} {w}"))
    .collect();
    out.push_str(&format!(
        "{moved} {} entries {dir} remote `{}` ({}){}{}\n",
        counts[0],
        remote.name,
        remote.url(),
        if others.is_empty() { "" } else { "; " },
        others.join(", ")
    ));
    (out, u8::from(counts[4] > 0))
}
