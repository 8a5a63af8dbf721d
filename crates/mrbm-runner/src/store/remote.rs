//! Remote caches for `mrbm push` and `mrbm pull` (README "Remote caches").
//!
//! A remote holds entries in the cache's own layout:
//!
//! ```text
//! REMOTE/entries/KEY/{manifest.json,log.txt,out/...}   a whole entry
//! REMOTE/tmp/KEY.PID.N.HOST/                           an upload in progress (never read)
//! ```
//!
//! An entry appears on a remote only by renaming a whole uploaded folder
//! into `entries/KEY`, and a rename onto an existing entry fails, so two
//! pushes of one entry at once leave one whole copy (the second one's
//! folder is dropped). Remotes are declared in `mrbm.remotes.toml` at the
//! project root (beside `experiments/`):
//!
//! ```toml
//! default = "team"
//!
//! [remote.team]              # a folder, e.g. on a shared file system
//! path = "/mnt/shared/mrbm-cache"
//!
//! [remote.cluster]           # a folder on a host reached with the system `ssh`
//! ssh = "alice@login.example.org"
//! path = "mrbm-cache"        # relative: in the remote user's home
//! port = 2222                # optional, as are identity, ssh_config and ssh_options
//! ```
//!
//! SSH remotes run the system `ssh` client (no library): `tar` streams the
//! entry through it and the remote shell renames it into place, so the
//! remote needs a POSIX shell, `tar` and GNU `mv` (any Linux).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use crate::error::RunnerError;
use crate::store::MANIFEST;

/// The file that declares the remotes, at the project root.
pub const REMOTES_FILE: &str = "mrbm.remotes.toml";

/// What went wrong with a remote.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// `mrbm.remotes.toml` does not parse or declares something impossible.
    #[error("{file}: {message}")]
    Config { file: PathBuf, message: String },
    /// No `mrbm.remotes.toml` at the project root.
    #[error("no remote is declared: {} does not exist\n  help: declare one, e.g.\n    [remote.team]\n    path = \"/mnt/shared/mrbm-cache\"\n  (README \"Remote caches\")", file.display())]
    NoConfig { file: PathBuf },
    /// `--remote NAME` names no declared remote.
    #[error("{}: no remote `{name}`\n  help: {help}", file.display())]
    Unknown {
        file: PathBuf,
        name: String,
        help: String,
    },
    /// Several remotes, no `default`, no `--remote`.
    #[error("{}: several remotes ({names}) and no `default = \"NAME\"`\n  help: pick one with --remote NAME", file.display())]
    NoDefault { file: PathBuf, names: String },
    /// The host does not answer (refused, unknown name, timeout, host key).
    #[error("remote `{remote}` ({url}) is unreachable: {why}")]
    Unreachable {
        remote: String,
        url: String,
        why: String,
    },
    /// The login or a file on the remote was refused.
    #[error("remote `{remote}` ({url}): permission denied: {why}")]
    PermissionDenied {
        remote: String,
        url: String,
        why: String,
    },
    /// Any other failure on the remote or in the transfer.
    #[error("remote `{remote}` ({url}): {why}")]
    Failed {
        remote: String,
        url: String,
        why: String,
    },
}

impl From<RemoteError> for RunnerError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Failed { .. } => RunnerError::StageFailed(e.to_string()),
            RemoteError::Unreachable { .. } | RemoteError::PermissionDenied { .. } => {
                RunnerError::Data(e.to_string())
            }
            _ => RunnerError::Usage(e.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemotesFile {
    /// The remote used without --remote (optional with one remote).
    default: Option<String>,
    #[serde(default)]
    remote: BTreeMap<String, RemoteDecl>,
}

/// One `[remote.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteDecl {
    /// The remote cache folder: local (relative to the project root) or,
    /// with `ssh`, on that host (relative to the login's home).
    path: String,
    /// `[user@]host` (or a Host of ~/.ssh/config): an SSH remote.
    ssh: Option<String>,
    port: Option<u16>,
    /// A private key for `ssh -i` (relative to the project root).
    identity: Option<PathBuf>,
    /// An ssh_config file for `ssh -F` (relative to the project root).
    ssh_config: Option<PathBuf>,
    /// Extra `ssh -o` options, e.g. "StrictHostKeyChecking=accept-new".
    #[serde(default)]
    ssh_options: Vec<String>,
}

/// A declared remote, ready to use.
#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Dir(PathBuf),
    Ssh {
        host: String,
        path: String,
        args: Vec<String>,
    },
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The remote `name` (or the default one) declared in the project's
/// `mrbm.remotes.toml`.
pub fn find(project_root: &Path, name: Option<&str>) -> Result<Remote, RemoteError> {
    let file = project_root.join(REMOTES_FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RemoteError::NoConfig { file })
        }
        Err(e) => {
            return Err(RemoteError::Config {
                file,
                message: e.to_string(),
            })
        }
    };
    let decls: RemotesFile = toml::from_str(&text).map_err(|e| RemoteError::Config {
        file: file.clone(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let names: Vec<&str> = decls.remote.keys().map(String::as_str).collect();
    let chosen = match (name, decls.default.as_deref()) {
        (Some(n), _) | (None, Some(n)) => n.to_string(),
        (None, None) if names.len() == 1 => names[0].to_string(),
        (None, None) if names.is_empty() => {
            return Err(RemoteError::Config {
                file,
                message: "declares no `[remote.NAME]` table".into(),
            })
        }
        (None, None) => {
            return Err(RemoteError::NoDefault {
                names: names.join(", "),
                file,
            })
        }
    };
    let Some(decl) = decls.remote.get(&chosen) else {
        let help = match mrbm_stage::nearest(&chosen, names.iter().copied()) {
            Some(n) => format!("did you mean `{n}`? the remotes: {}", names.join(", ")),
            None if names.is_empty() => "it declares none".to_string(),
            None => format!("the remotes: {}", names.join(", ")),
        };
        return Err(RemoteError::Unknown {
            file,
            name: chosen,
            help,
        });
    };
    Remote::from_decl(&chosen, decl, project_root).map_err(|message| RemoteError::Config {
        file,
        message: format!("[remote.{chosen}]: {message}"),
    })
}

impl Remote {
    fn from_decl(name: &str, d: &RemoteDecl, root: &Path) -> Result<Remote, String> {
        if d.path.is_empty() {
            return Err("`path` is empty".into());
        }
        let Some(host) = &d.ssh else {
            if d.port.is_some()
                || d.identity.is_some()
                || d.ssh_config.is_some()
                || !d.ssh_options.is_empty()
            {
                return Err(
                    "`port`, `identity`, `ssh_config` and `ssh_options` need `ssh = \"[user@]host\"`"
                        .into(),
                );
            }
            return Ok(Remote {
                name: name.into(),
                kind: Kind::Dir(root.join(&d.path)),
            });
        };
        if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
            return Err(format!("`ssh = \"{host}\"` is no [user@]host"));
        }
        let mut args: Vec<String> = vec![
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ConnectTimeout=15".into(),
        ];
        if let Some(f) = &d.ssh_config {
            args.extend(["-F".into(), root.join(f).display().to_string()]);
        }
        if let Some(p) = d.port {
            args.extend(["-p".into(), p.to_string()]);
        }
        if let Some(i) = &d.identity {
            args.extend(["-i".into(), root.join(i).display().to_string()]);
            args.extend(["-o".into(), "IdentitiesOnly=yes".into()]);
        }
        for o in &d.ssh_options {
            args.extend(["-o".into(), o.clone()]);
        }
        Ok(Remote {
            name: name.into(),
            kind: Kind::Ssh {
                host: host.clone(),
                path: d.path.trim_end_matches('/').to_string(),
                args,
            },
        })
    }

    /// Where it is, for people: a folder, or `HOST:PATH` as scp writes it.
    pub fn url(&self) -> String {
        match &self.kind {
            Kind::Dir(p) => p.display().to_string(),
            Kind::Ssh { host, path, .. } => format!("{host}:{path}"),
        }
    }

    fn err(&self, why: impl std::fmt::Display) -> RemoteError {
        RemoteError::Failed {
            remote: self.name.clone(),
            url: self.url(),
            why: why.to_string(),
        }
    }

    /// An I/O error on a folder remote, typed.
    fn io_err(&self, what: &str, e: std::io::Error) -> RemoteError {
        let why = format!("{what}: {e}");
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => RemoteError::PermissionDenied {
                remote: self.name.clone(),
                url: self.url(),
                why,
            },
            _ => self.err(why),
        }
    }

    /// The keys of the whole entries on the remote (none when the folder
    /// does not exist yet).
    pub fn list(&self) -> Result<BTreeSet<String>, RemoteError> {
        match &self.kind {
            Kind::Dir(root) => {
                let entries = root.join("entries");
                if !root.exists() {
                    return Err(RemoteError::Unreachable {
                        remote: self.name.clone(),
                        url: self.url(),
                        why: "no such folder (a push creates it)".into(),
                    });
                }
                let rd = match std::fs::read_dir(&entries) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(BTreeSet::new())
                    }
                    Err(e) => return Err(self.io_err(&entries.display().to_string(), e)),
                };
                Ok(rd
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().join(MANIFEST).is_file())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect())
            }
            Kind::Ssh { path, .. } => {
                let script = format!(
                    "d={}/entries; [ -d \"$d\" ] || exit 0; cd \"$d\" || exit 3; \
                     for k in *; do [ -f \"$k/{MANIFEST}\" ] && echo \"$k\"; done; exit 0",
                    sh_quote(path)
                );
                let out = self.ssh_output(&script, None)?;
                Ok(String::from_utf8_lossy(&out)
                    .lines()
                    .filter(|l| is_key(l))
                    .map(str::to_string)
                    .collect())
            }
        }
    }

    /// [`Remote::list`] for a push: a folder remote that does not exist
    /// yet is empty (the push creates it). Uploads left in `tmp/` by pushes
    /// that died (older than [`STALE_UPLOAD_MINUTES`]) are removed first.
    pub fn list_for_push(&self) -> Result<BTreeSet<String>, RemoteError> {
        match &self.kind {
            Kind::Dir(root) if !root.exists() => return Ok(BTreeSet::new()),
            Kind::Dir(root) => remove_stale_uploads(&root.join("tmp")),
            Kind::Ssh { path, .. } => {
                let script = format!(
                    "t={}/tmp; [ -d \"$t\" ] || exit 0; \
                     find \"$t\" -mindepth 1 -maxdepth 1 -mmin +{STALE_UPLOAD_MINUTES} -exec rm -rf {{}} + ; exit 0",
                    sh_quote(path)
                );
                self.ssh_output(&script, None)?;
            }
        }
        self.list()
    }

    /// Upload the entry folder `src` as `entries/KEY`: into a temporary
    /// folder, then renamed into place. Ok(false) when the remote already
    /// had it (or another push put it there first).
    pub fn upload(&self, src: &Path, key: &str) -> Result<bool, RemoteError> {
        check_key(key);
        let tag = tmp_tag(key);
        match &self.kind {
            Kind::Dir(root) => self.dir_upload(root, src, key, &tag),
            Kind::Ssh { path, .. } => {
                let r = sh_quote(path);
                let script = format!(
                    "set -e; r={r}; mkdir -p \"$r/tmp\" \"$r/entries\"; \
                     if [ -f \"$r/entries/{key}/{MANIFEST}\" ]; then cat >/dev/null; echo there; exit 0; fi; \
                     t=\"$r/tmp/{tag}\"; mkdir \"$t\"; \
                     if ! tar -xf - -C \"$t\"; then rm -rf \"$t\"; exit 3; fi; \
                     if mv -T \"$t\" \"$r/entries/{key}\" 2>/dev/null; then echo pushed; exit 0; fi; \
                     rm -rf \"$t\"; \
                     if [ -f \"$r/entries/{key}/{MANIFEST}\" ]; then echo there; exit 0; fi; \
                     echo \"could not rename $t to $r/entries/{key}\" >&2; exit 3"
                );
                let mut tar = Command::new("tar")
                    .arg("-C")
                    .arg(src)
                    .args(["-cf", "-", "."])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| self.err(format!("cannot run `tar`: {e}")))?;
                let stdin = tar.stdout.take().map(Stdio::from);
                let out = self.ssh_output(&script, stdin);
                let tar_out = tar.wait_with_output();
                let out = out?;
                match tar_out {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => {
                        return Err(self.err(format!(
                            "tar of {} failed: {}",
                            src.display(),
                            String::from_utf8_lossy(&o.stderr).trim()
                        )))
                    }
                    Err(e) => return Err(self.err(format!("tar: {e}"))),
                }
                Ok(String::from_utf8_lossy(&out).trim() == "pushed")
            }
        }
    }

    fn dir_upload(
        &self,
        root: &Path,
        src: &Path,
        key: &str,
        tag: &str,
    ) -> Result<bool, RemoteError> {
        let entries = root.join("entries");
        let tmp_root = root.join("tmp");
        for d in [&entries, &tmp_root] {
            std::fs::create_dir_all(d).map_err(|e| self.io_err(&d.display().to_string(), e))?;
        }
        let dest = entries.join(key);
        if dest.join(MANIFEST).is_file() {
            return Ok(false);
        }
        let tmp = tmp_root.join(tag);
        if let Err(e) = copy_tree(src, &tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(self.io_err(&tmp.display().to_string(), e));
        }
        place(&tmp, &dest).map_err(|e| self.io_err(&dest.display().to_string(), e))
    }

    /// Download `entries/KEY` into the folder `into` (which may exist).
    /// Ok(false) when the remote has no whole entry at KEY. Nothing is
    /// checked here: the caller verifies the hashes before use.
    pub fn download(&self, key: &str, into: &Path) -> Result<bool, RemoteError> {
        check_key(key);
        match &self.kind {
            Kind::Dir(root) => {
                let src = root.join("entries").join(key);
                if !src.join(MANIFEST).is_file() {
                    return Ok(false);
                }
                copy_tree(&src, into).map_err(|e| self.io_err(&src.display().to_string(), e))?;
                Ok(true)
            }
            Kind::Ssh { path, .. } => {
                std::fs::create_dir_all(into)
                    .map_err(|e| self.err(format!("{}: {e}", into.display())))?;
                let script = format!(
                    "d={}/entries/{key}; [ -f \"$d/{MANIFEST}\" ] || exit 4; cd \"$d\" && tar -cf - .",
                    sh_quote(path)
                );
                let mut ssh = self.ssh_command(&script);
                let mut child = ssh
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| self.err(format!("cannot run `ssh`: {e}")))?;
                let tar_in = child
                    .stdout
                    .take()
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null());
                let tar = Command::new("tar")
                    .arg("-C")
                    .arg(into)
                    .args(["-xf", "-"])
                    .stdin(tar_in)
                    .stderr(Stdio::piped())
                    .output();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let status = child.wait().map_err(|e| self.err(e))?;
                match status.code() {
                    Some(0) => {}
                    Some(4) => return Ok(false),
                    code => return Err(self.classify(code, &err)),
                }
                match tar {
                    Ok(o) if o.status.success() => Ok(true),
                    Ok(o) => Err(self.err(format!(
                        "tar into {} failed: {}",
                        into.display(),
                        String::from_utf8_lossy(&o.stderr).trim()
                    ))),
                    Err(e) => Err(self.err(format!("cannot run `tar`: {e}"))),
                }
            }
        }
    }

    fn ssh_command(&self, script: &str) -> Command {
        let Kind::Ssh { host, args, .. } = &self.kind else {
            unreachable!("ssh_command on a folder remote")
        };
        let mut c = Command::new("ssh");
        c.args(args).arg(host).arg(script);
        c
    }

    /// Run `script` on the SSH remote; its stdout, or the typed failure.
    fn ssh_output(&self, script: &str, stdin: Option<Stdio>) -> Result<Vec<u8>, RemoteError> {
        let out = self
            .ssh_command(script)
            .stdin(stdin.unwrap_or(Stdio::null()))
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    self.err("the `ssh` client is not installed (Debian: openssh-client)")
                }
                _ => self.err(format!("cannot run `ssh`: {e}")),
            })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(self.classify(out.status.code(), &String::from_utf8_lossy(&out.stderr)))
    }

    /// An ssh failure, typed: 255 is ssh's own (connection, login).
    fn classify(&self, code: Option<i32>, stderr: &str) -> RemoteError {
        let why = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
            .collect::<Vec<_>>()
            .join("; ");
        let why = if why.is_empty() {
            format!("ssh exited with {code:?}")
        } else {
            why
        };
        let (remote, url) = (self.name.clone(), self.url());
        if why.contains("Permission denied") {
            RemoteError::PermissionDenied { remote, url, why }
        } else if code == Some(255) {
            RemoteError::Unreachable { remote, url, why }
        } else {
            RemoteError::Failed { remote, url, why }
        }
    }
}

/// An upload folder under a remote's `tmp/` untouched for this long is
/// taken for the leftover of a push that died, and removed by the next push.
pub const STALE_UPLOAD_MINUTES: u64 = 24 * 60;

/// Remove the folders under `tmp` older than [`STALE_UPLOAD_MINUTES`].
fn remove_stale_uploads(tmp: &Path) {
    let limit = std::time::Duration::from_secs(STALE_UPLOAD_MINUTES * 60);
    for e in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > limit);
        if old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Rename the whole folder `tmp` to `dest`. A rename onto a folder that
/// is not empty fails, so when two pushes race the first one wins and the
/// second finds a whole entry there: Ok(false), its copy removed.
fn place(tmp: &Path, dest: &Path) -> std::io::Result<bool> {
    match std::fs::rename(tmp, dest) {
        Ok(()) => Ok(true),
        Err(e) => {
            let _ = std::fs::remove_dir_all(tmp);
            if dest.join(MANIFEST).is_file() {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// A cache key: lower-case hex, so that it is safe in a remote command.
pub fn is_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_key(key: &str) {
    assert!(is_key(key), "internal error: `{key}` is no cache key");
}

/// A temporary name unique to this process, host and upload.
fn tmp_tag(key: &str) -> String {
    let host: String = crate::store::hostname()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    format!(
        "{key}.{}.{}.{host}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `s` quoted for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Copy the regular files and folders under `src` into `dest`, each file
/// synced (a remote folder may be on a network file system).
fn copy_tree(src: &Path, dest: &Path) -> std::io::Result<()> {
    for e in walkdir::WalkDir::new(src) {
        let e = e.map_err(std::io::Error::other)?;
        let rel = e.path().strip_prefix(src).map_err(std::io::Error::other)?;
        let to = dest.join(rel);
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&to)?;
        } else if e.file_type().is_file() {
            std::fs::copy(e.path(), &to)?;
            std::fs::File::open(&to)?.sync_all()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(REMOTES_FILE), text).unwrap();
    }

    #[test]
    fn remotes_are_found_by_name_default_or_alone() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "[remote.team]\npath = \"shared\"\n");
        let r = find(d.path(), None).unwrap();
        assert_eq!(r.name, "team");
        assert_eq!(r.url(), d.path().join("shared").display().to_string());

        write(
            d.path(),
            "default = \"b\"\n[remote.a]\npath = \"x\"\n[remote.b]\nssh = \"me@h\"\npath = \"c/\"\nport = 2222\n",
        );
        let r = find(d.path(), None).unwrap();
        assert_eq!((r.name.as_str(), r.url()), ("b", "me@h:c".to_string()));
        assert_eq!(find(d.path(), Some("a")).unwrap().name, "a");
    }

    #[test]
    fn mistakes_in_the_remotes_file_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = find(d.path(), None).unwrap_err();
        assert!(matches!(e, RemoteError::NoConfig { .. }), "{e}");
        write(
            d.path(),
            "[remote.team]\npath = \"x\"\n[remote.cluster]\npath = \"y\"\n",
        );
        let e = find(d.path(), Some("teem")).unwrap_err().to_string();
        assert!(
            e.contains("no remote `teem`") && e.contains("did you mean `team`?"),
            "{e}"
        );
        let e = find(d.path(), None).unwrap_err().to_string();
        assert!(
            e.contains("no `default") && e.contains("cluster, team"),
            "{e}"
        );
        write(d.path(), "[remote.team]\npth = \"x\"\n");
        let e = find(d.path(), None).unwrap_err().to_string();
        assert!(e.contains("pth") && e.contains(REMOTES_FILE), "{e}");
        write(d.path(), "[remote.team]\npath = \"x\"\nport = 22\n");
        let e = find(d.path(), None).unwrap_err().to_string();
        assert!(e.contains("need `ssh"), "{e}");
        write(
            d.path(),
            "[remote.team]\npath = \"x\"\nssh = \"-oProxyCommand=x\"\n",
        );
        let e = find(d.path(), None).unwrap_err().to_string();
        assert!(e.contains("no [user@]host"), "{e}");
    }

    #[test]
    fn a_folder_remote_keeps_one_whole_copy_of_an_entry() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("entry");
        std::fs::create_dir_all(src.join("out")).unwrap();
        std::fs::write(src.join(MANIFEST), "{}").unwrap();
        std::fs::write(src.join("out/a.txt"), "a").unwrap();
        write(d.path(), "[remote.r]\npath = \"remote\"\n");
        let r = find(d.path(), None).unwrap();
        assert!(
            r.list().is_err(),
            "a folder that does not exist yet is named"
        );
        assert!(r.upload(&src, "abc123").unwrap());
        assert!(
            !r.upload(&src, "abc123").unwrap(),
            "the second push finds it"
        );
        assert_eq!(r.list().unwrap(), BTreeSet::from(["abc123".to_string()]));
        let tmp_left = std::fs::read_dir(d.path().join("remote/tmp"))
            .unwrap()
            .count();
        assert_eq!(tmp_left, 0, "no temporary folder is left");
        let into = d.path().join("pulled");
        assert!(r.download("abc123", &into).unwrap());
        assert_eq!(
            std::fs::read_to_string(into.join("out/a.txt")).unwrap(),
            "a"
        );
        assert!(!r.download("abc124", &into).unwrap());
    }

    #[test]
    fn the_second_of_two_racing_uploads_finds_the_first_one_whole() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, text: &str| {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.join("out")).unwrap();
            std::fs::write(p.join(MANIFEST), text).unwrap();
            p
        };
        let (one, two) = (mk("tmp1", "one"), mk("tmp2", "two"));
        let dest = d.path().join("entries/k");
        std::fs::create_dir_all(d.path().join("entries")).unwrap();
        assert!(place(&one, &dest).unwrap());
        assert!(!place(&two, &dest).unwrap(), "the loser is told");
        assert!(!two.exists(), "the loser's copy is removed");
        assert_eq!(std::fs::read_to_string(dest.join(MANIFEST)).unwrap(), "one");
        // A folder without a manifest in the way is an error, not a success.
        let (three, blocked) = (mk("tmp3", "three"), d.path().join("entries/j"));
        std::fs::create_dir_all(blocked.join("junk")).unwrap();
        assert!(place(&three, &blocked).is_err());
    }

    #[test]
    fn a_push_removes_uploads_left_by_pushes_that_died() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "[remote.r]\npath = \"remote\"\n");
        let tmp = d.path().join("remote/tmp");
        let (old, fresh) = (tmp.join("k.1.0.h"), tmp.join("k.2.0.h"));
        std::fs::create_dir_all(&old).unwrap();
        std::fs::create_dir_all(&fresh).unwrap();
        let two_days = std::time::Duration::from_secs(2 * 24 * 3600);
        let t = std::time::SystemTime::now() - two_days;
        std::fs::File::open(&old).unwrap().set_modified(t).unwrap();
        let r = find(d.path(), None).unwrap();
        r.list_for_push().unwrap();
        assert!(!old.exists(), "a two-day-old upload is removed");
        assert!(fresh.exists(), "an upload in progress is kept");
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert!(is_key("0af3") && !is_key("0af3;rm") && !is_key(""));
    }
}
