//! Remote caches (`mrbm push`, `mrbm pull`; README "Remote caches"): a
//! folder remote, and an SSH remote against a real OpenSSH server on
//! 127.0.0.1 (`tools/sshd-test-server.sh up` starts one; `.ci/run` does,
//! and sets MRBM_REQUIRE_SSHD=1 so that the SSH tests fail rather than
//! skip there). Without a server that answers, and without that variable,
//! each SSH test prints a note and passes.
//!
//! For each kind of remote: push from one cache, pull into an empty one,
//! and the rerun there computes nothing; two pushes of the same entries at
//! once leave one whole copy each and no temporary folder (and remove the
//! upload of a push that died two days before); a pulled entry
//! whose files do not match its manifest is refused and recomputed.
//! Errors: an unknown remote (did you mean), an unreachable host, a login
//! refused.
//!
//! The stages are `command` stages running `sh`, so they take milliseconds.

mod common;
use common::{ok, run_in as run, stderr, stdout, text};

use std::path::{Path, PathBuf};
use std::process::Command;

/// a -> b -> c, and d alone; c's metric v goes to a table.
const CHAIN: &str = r#"
name = "chain"

[stages.a]
kind = "command"
params = { argv = ["sh", "-c", 'echo "$X" > "$MRBM_OUT/a.txt"'], env = { X = "1" } }

[stages.b]
kind = "command"
inputs = { in1 = "a/a.txt" }
params = { argv = ["sh", "-c", 'cat "$MRBM_IN_IN1" > "$MRBM_OUT/b.txt"'] }

[stages.c]
kind = "command"
inputs = { in1 = "b/b.txt" }
params = { argv = ["sh", "-c", 'echo "{{\"v\": 3}}" > "$MRBM_OUT/metrics.json"'] }

[stages.d]
kind = "command"
params = { argv = ["sh", "-c", 'echo d > "$MRBM_OUT/d.txt"'] }

[[tables]]
name = "chain"
stage = "c"
metrics = ["v"]
"#;

/// The stage ids of CHAIN, its table included.
const IDS: [&str; 5] = ["a", "b", "c", "d", "table:chain"];

/// A project with CHAIN and `mrbm.remotes.toml` = `remotes`.
fn project(remotes: &str) -> tempfile::TempDir {
    let p = common::project(&[("chain.toml", CHAIN)]);
    std::fs::write(p.path().join("mrbm.remotes.toml"), remotes).unwrap();
    p
}

/// `mrbm run` with cache `cache`: each node's status word from the record.
fn run_statuses(dir: &Path, cache: &Path) -> Vec<(String, String)> {
    let c = cache.to_str().unwrap();
    let out = run(
        dir,
        &["--cache", c, "run", "--quiet", "experiments/chain.toml"],
    );
    let text = ok(&out);
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("recorded as run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in:\n{text}"))
        .to_string();
    let bytes = std::fs::read(cache.join(format!("history/{id}.json"))).unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    rec["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `mrbm --cache CACHE ARGS` in `dir`.
fn with_cache(dir: &Path, cache: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--cache", cache.to_str().unwrap()];
    all.extend_from_slice(args);
    run(dir, &all)
}

/// The entry keys on a remote folder, and what is left in its tmp/.
fn remote_state(remote: &Path) -> (Vec<String>, usize) {
    let mut keys: Vec<String> = std::fs::read_dir(remote.join("entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    keys.sort();
    for k in &keys {
        let m = remote.join("entries").join(k).join("manifest.json");
        assert!(m.is_file(), "remote entry {k} has no manifest");
    }
    let tmp = std::fs::read_dir(remote.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    (keys, tmp)
}

/// The round trip: run in cache A, push, pull into the empty cache B,
/// then a run on B computes nothing and publishes the same table.
fn round_trip(dir: &Path, remote_dir: &Path, remote_args: &[&str]) {
    let a = dir.join("cache-a");
    let b = dir.join("cache-b");
    let first = run_statuses(dir, &a);
    assert!(first.iter().all(|(_, s)| s == "ran"), "{first:?}");
    let table = std::fs::read(dir.join("results/chain.csv")).unwrap();
    std::fs::remove_file(dir.join("results/chain.csv")).unwrap();

    let mut push = vec!["push", "experiments/chain.toml"];
    push.extend_from_slice(remote_args);
    let out = ok(&with_cache(dir, &a, &push));
    assert!(out.contains("pushed 5 entries to remote"), "{out}");
    let (keys, tmp) = remote_state(remote_dir);
    assert_eq!((keys.len(), tmp), (5, 0), "{keys:?}");
    // A second push finds everything there.
    let out = ok(&with_cache(dir, &a, &push));
    assert!(
        out.contains("pushed 0 entries") && out.contains("5 on the remote already"),
        "{out}"
    );

    let mut pull = vec!["pull", "experiments/chain.toml"];
    pull.extend_from_slice(remote_args);
    let out = ok(&with_cache(dir, &b, &pull));
    assert!(out.contains("pulled 5 entries from remote"), "{out}");
    let second = run_statuses(dir, &b);
    assert_eq!(second.len(), IDS.len(), "{second:?}");
    assert!(
        second.iter().all(|(_, s)| s == "cached"),
        "the run after a pull computed something: {second:?}"
    );
    assert_eq!(std::fs::read(dir.join("results/chain.csv")).unwrap(), table);
}

/// Two pushes of the same entries at once: both succeed, one whole copy.
fn concurrent_pushes(dir: &Path, remote_dir: &Path) {
    let a = dir.join("cache-a");
    ok(&with_cache(
        dir,
        &a,
        &["run", "--quiet", "experiments/chain.toml"],
    ));
    // What a push that died two days ago left: the next push removes it.
    let stale = remote_dir.join("tmp/0123abcd.999.0.elsewhere");
    std::fs::create_dir_all(stale.join("out")).unwrap();
    let two_days = std::time::Duration::from_secs(2 * 24 * 3600);
    std::fs::File::open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - two_days)
        .unwrap();
    let spawn = || {
        common::mrbm_in(dir)
            .args(["--cache", a.to_str().unwrap(), "push", "--all"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(), spawn());
    let (o1, o2) = (
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    );
    let (t1, t2) = (ok(&o1), ok(&o2));
    let (keys, tmp) = remote_state(remote_dir);
    assert_eq!((keys.len(), tmp), (5, 0), "{keys:?}\n{t1}\n{t2}");
    // Each entry was pushed by one of them; the other found it there.
    let pushed = |t: &str| t.lines().filter(|l| l.ends_with(" pushed")).count();
    assert_eq!(pushed(&t1) + pushed(&t2), 5, "{t1}\n{t2}");
    // Every copy is whole: a pull into an empty cache verifies each.
    let c = dir.join("cache-c");
    let out = ok(&with_cache(dir, &c, &["pull", "--all"]));
    assert!(out.contains("pulled 5 entries"), "{out}");
}

/// A remote entry whose file no longer matches its manifest is refused
/// (exit 1, named), not published, and the run computes it.
fn tampered_entry_is_refused(dir: &Path, remote_dir: &Path, remote_args: &[&str]) {
    let a = dir.join("cache-a");
    ok(&with_cache(
        dir,
        &a,
        &["run", "--quiet", "experiments/chain.toml"],
    ));
    let mut push = vec!["push", "experiments/chain.toml"];
    push.extend_from_slice(remote_args);
    ok(&with_cache(dir, &a, &push));
    let d_entry = std::fs::read_dir(remote_dir.join("entries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("out/d.txt").is_file())
        .expect("d's entry on the remote");
    std::fs::write(d_entry.join("out/d.txt"), "e\n").unwrap();

    let b = dir.join("cache-b");
    let mut pull = vec!["pull", "experiments/chain.toml"];
    pull.extend_from_slice(remote_args);
    let out = with_cache(dir, &b, &pull);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = stdout(&out);
    let d_line = t.lines().find(|l| l.contains(" d ")).unwrap_or("");
    assert!(
        d_line.contains("REFUSED") && d_line.contains("d.txt"),
        "{t}"
    );
    assert!(t.contains("pulled 4 entries"), "{t}");
    let statuses = run_statuses(dir, &b);
    let d = statuses.iter().find(|(id, _)| id == "d").unwrap();
    assert_eq!(d.1, "ran", "{statuses:?}");
    assert_eq!(
        std::fs::read_to_string(
            b.join("entries")
                .join(d_entry.file_name().unwrap())
                .join("out/d.txt")
        )
        .unwrap(),
        "d\n"
    );
}

// ---- a folder remote ------------------------------------------------------

fn folder_project() -> (tempfile::TempDir, PathBuf) {
    let p = project("[remote.team]\npath = \"shared-cache\"\n");
    let r = p.path().join("shared-cache");
    (p, r)
}

#[test]
fn folder_remote_push_pull_then_nothing_runs() {
    let (p, r) = folder_project();
    round_trip(p.path(), &r, &[]);
}

#[test]
fn folder_remote_two_pushes_at_once_leave_one_whole_copy() {
    let (p, r) = folder_project();
    concurrent_pushes(p.path(), &r);
}

#[test]
fn folder_remote_tampered_entry_is_refused() {
    let (p, r) = folder_project();
    tampered_entry_is_refused(p.path(), &r, &["--remote", "team"]);
}

#[test]
fn remote_mistakes_are_named() {
    let p = project("[remote.team]\npath = \"x\"\n[remote.cluster]\npath = \"y\"\n");
    let dir = p.path();
    let out = run(dir, &["pull", "experiments/chain.toml", "--remote", "teem"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let e = stderr(&out);
    assert!(
        e.contains("no remote `teem`") && e.contains("did you mean `team`?"),
        "{e}"
    );
    let out = run(dir, &["push", "experiments/chain.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("several remotes"), "{}", stderr(&out));
    // A folder remote that does not exist (yet: a push would create it).
    let out = run(dir, &["pull", "experiments/chain.toml", "--remote", "team"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let e = stderr(&out);
    assert!(
        e.contains("remote `team`") && e.contains("unreachable: no such folder"),
        "{e}"
    );
    // No remotes file at all.
    std::fs::remove_file(dir.join("mrbm.remotes.toml")).unwrap();
    let out = run(dir, &["pull", "--all"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("no remote is declared"),
        "{}",
        stderr(&out)
    );
    // A host that does not answer (nothing listens on port 1).
    std::fs::write(
        dir.join("mrbm.remotes.toml"),
        "[remote.lab]\nssh = \"127.0.0.1\"\nport = 1\npath = \"c\"\n",
    )
    .unwrap();
    let out = run(dir, &["pull", "experiments/chain.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let e = stderr(&out);
    assert!(
        e.contains("remote `lab` (127.0.0.1:c) is unreachable"),
        "{e}"
    );
}

// ---- an SSH remote against a real sshd ----------------------------------

/// The test server's settings from `tools/sshd-test-server.sh up`.
struct Sshd {
    port: String,
    user: String,
    key: String,
    stranger_key: String,
    known_hosts: String,
}

fn sshd(test: &str) -> Option<Sshd> {
    let dir = std::env::var("MRBM_SSHD_DIR").unwrap_or_else(|_| "/tmp/mrbm-sshd".into());
    let env = std::fs::read_to_string(Path::new(&dir).join("env")).unwrap_or_default();
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let s = (|| {
        Some(Sshd {
            port: get("MRBM_SSHD_PORT")?,
            user: get("MRBM_SSHD_USER")?,
            key: get("MRBM_SSHD_KEY")?,
            stranger_key: get("MRBM_SSHD_STRANGER_KEY")?,
            known_hosts: get("MRBM_SSHD_KNOWN_HOSTS")?,
        })
    })();
    let answers = s.as_ref().is_some_and(|s| {
        Command::new("ssh")
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-p",
                &s.port,
            ])
            .args(["-i", &s.key, "-o", "IdentitiesOnly=yes"])
            .args(["-o", &format!("UserKnownHostsFile={}", s.known_hosts)])
            .arg(format!("{}@127.0.0.1", s.user))
            .arg("true")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !answers {
        if std::env::var("MRBM_REQUIRE_SSHD").as_deref() == Ok("1") {
            panic!("{test}: MRBM_REQUIRE_SSHD=1 but no test sshd answers (start one: tools/sshd-test-server.sh up)");
        }
        println!("note: {test} skipped: no test sshd answers (tools/sshd-test-server.sh up starts one; MRBM_REQUIRE_SSHD=1 makes this a failure)");
        return None;
    }
    s
}

/// A project whose remote `lab` is the folder `remote` on the test sshd,
/// logged in with `key`.
fn ssh_project(s: &Sshd, key: &str) -> (tempfile::TempDir, PathBuf) {
    let p = common::project(&[("chain.toml", CHAIN)]);
    let r = p.path().join("on-the-server");
    let remotes = format!(
        "[remote.lab]\nssh = \"{}@127.0.0.1\"\nport = {}\nidentity = \"{key}\"\n\
         ssh_options = [\"UserKnownHostsFile={}\", \"StrictHostKeyChecking=yes\"]\npath = \"{}\"\n",
        s.user,
        s.port,
        s.known_hosts,
        r.display()
    );
    std::fs::write(p.path().join("mrbm.remotes.toml"), remotes).unwrap();
    (p, r)
}

#[test]
fn ssh_remote_push_pull_then_nothing_runs() {
    let Some(s) = sshd("ssh_remote_push_pull_then_nothing_runs") else {
        return;
    };
    let (p, r) = ssh_project(&s, &s.key);
    round_trip(p.path(), &r, &["--remote", "lab"]);
}

#[test]
fn ssh_remote_two_pushes_at_once_leave_one_whole_copy() {
    let Some(s) = sshd("ssh_remote_two_pushes_at_once_leave_one_whole_copy") else {
        return;
    };
    let (p, r) = ssh_project(&s, &s.key);
    concurrent_pushes(p.path(), &r);
}

#[test]
fn ssh_remote_tampered_entry_is_refused() {
    let Some(s) = sshd("ssh_remote_tampered_entry_is_refused") else {
        return;
    };
    let (p, r) = ssh_project(&s, &s.key);
    tampered_entry_is_refused(p.path(), &r, &[]);
}

#[test]
fn ssh_remote_login_refused_is_permission_denied() {
    let Some(s) = sshd("ssh_remote_login_refused_is_permission_denied") else {
        return;
    };
    let (p, _) = ssh_project(&s, &s.stranger_key);
    let out = run(p.path(), &["pull", "experiments/chain.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let e = stderr(&out);
    assert!(
        e.contains("remote `lab`") && e.contains("permission denied"),
        "{e}"
    );
    assert!(e.contains("publickey"), "{e}");
}
