//! No process escapes a `command` stage (issue 31): its program runs in a
//! process group of its own under a watchdog. Ctrl-C or SIGTERM to `mrbm`
//! sends SIGTERM to the group (SIGKILL after the stage's grace period); a
//! second Ctrl-C kills the group at once; `kill -9` of `mrbm` kills it
//! through the watchdog; a program that ends leaves nothing running. After
//! each, no process of the program is alive (read from /proc) and, except
//! after `kill -9`, `locks/` and `tmp/` are empty.
//!
//! Each case's `sleep` has a duration unique to this test process and case,
//! so parallel tests never see each other's processes. Waits are guards
//! against a hang, not speed assertions.

mod common;
use common::{text, SpawnPiped};

use std::path::Path;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// A `sleep` argument nobody else uses: this process's id and the case.
fn marker(case: u32) -> String {
    format!("{}", 1_000_000 + std::process::id() * 10 + case)
}

/// The pids of live processes whose command line holds `sleep <marker>`.
fn survivors(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // A zombie has an empty command line: not alive.
        if cmd.contains(&format!("sleep {marker}")) {
            out.push(pid);
        }
    }
    out
}

/// Polls until no process of `marker` is left (true), or `secs` pass.
fn all_gone(marker: &str, secs: u64) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if survivors(marker).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn project(script: &str, extra: &str) -> tempfile::TempDir {
    let argv = format!("[\"sh\", \"-c\", {}]", toml_str(script));
    let exp = format!(
        "name = \"contain\"\n\n[stages.long]\nkind = \"command\"\nparams = {{ argv = {argv}{extra} }}\n"
    );
    common::project(&[("contain.toml", &exp)])
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn start(root: &Path) -> Child {
    common::mrbm_in(root)
        .args(["run", "experiments/contain.toml", "--quiet"])
        .spawn_piped()
}

/// Waits until `n` processes of `marker` run (the program is in its loop).
fn wait_for(child: &mut Child, marker: &str, n: usize) {
    let t0 = Instant::now();
    while survivors(marker).len() < n {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("the run ended ({s}) before its program started");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the program never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

fn empty(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Nothing of the program alive, no lock and no temporary folder left.
fn assert_clean(root: &Path, marker: &str, what: &str, out: &Output) {
    let t = text(out);
    assert!(
        all_gone(marker, 5),
        "{what}: processes left: {:?}\n{t}",
        survivors(marker)
    );
    let cache = root.join(".mrbm");
    assert_eq!(
        empty(&cache.join("locks")),
        Vec::<String>::new(),
        "{what}: {t}"
    );
    assert_eq!(
        empty(&cache.join("tmp")),
        Vec::<String>::new(),
        "{what}: {t}"
    );
}

const ONE: &str = "sleep {m}";
const TWO: &str = "sleep {m} & sleep {m}; wait";

#[test]
fn ctrl_c_or_sigterm_stops_the_whole_group_and_leaves_nothing() {
    let mut case = 0;
    for (sig, name) in [(libc::SIGINT, "Ctrl-C"), (libc::SIGTERM, "SIGTERM")] {
        for (script, procs) in [(ONE, 1), (TWO, 2)] {
            case += 1;
            let m = marker(case);
            let p = project(&script.replace("{m}", &m), "");
            let mut child = start(p.path());
            wait_for(&mut child, &m, procs);
            signal(&child, sig);
            let out = common::finish(child, name, 60);
            let what = format!("{name} on `{script}`");
            assert_eq!(out.status.code(), Some(130), "{what}: {}", text(&out));
            assert_clean(p.path(), &m, &what, &out);
        }
    }
}

#[test]
fn a_second_ctrl_c_kills_a_group_that_ignores_sigterm_and_cleans_up() {
    let m = marker(11);
    // The shell and its sleeps ignore SIGTERM: only SIGKILL ends them, and
    // the default grace period (10 s) is not waited for.
    let p = project(&format!("trap '' TERM; sleep {m} & sleep {m}; wait"), "");
    let mut child = start(p.path());
    wait_for(&mut child, &m, 2);
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first Ctrl-C did not wait for the grace period"
    );
    signal(&child, libc::SIGINT);
    let out = common::finish(child, "second Ctrl-C", 30);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert_clean(p.path(), &m, "second Ctrl-C", &out);
}

#[test]
fn the_grace_period_ends_in_sigkill() {
    let m = marker(12);
    let p = project(
        &format!("trap '' TERM; sleep {m} & sleep {m}; wait"),
        ", grace_s = 0.5",
    );
    let mut child = start(p.path());
    wait_for(&mut child, &m, 2);
    signal(&child, libc::SIGINT);
    let out = common::finish(child, "grace period", 60);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert_clean(p.path(), &m, "grace period", &out);
}

#[test]
fn kill_9_of_mrbm_takes_the_group_with_it() {
    for (case, script, procs) in [(21, ONE, 1), (22, TWO, 2)] {
        let m = marker(case);
        let p = project(&script.replace("{m}", &m), "");
        let mut child = start(p.path());
        wait_for(&mut child, &m, procs);
        let _ = child.kill(); // SIGKILL: no handler runs
        let _ = child.wait();
        assert!(
            all_gone(&m, 10),
            "`{script}`: orphans after kill -9 of mrbm: {:?}",
            survivors(&m)
        );
    }
}

#[test]
fn what_a_finished_program_left_running_is_killed() {
    let m = marker(31);
    // The program exits at once, leaving a background sleep that holds its
    // stdout: the stage finishes anyway and the sleep is gone.
    let p = project(&format!("sleep {m} & echo started"), "");
    let child = start(p.path());
    let out = common::finish(child, "finished program", 60);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_clean(p.path(), &m, "finished program", &out);
    let log = common::entry_of(&p.path().join(".mrbm"), "long")
        .map(|e| std::fs::read_to_string(e.join("log.txt")).unwrap())
        .unwrap_or_default();
    assert!(log.contains("stdout: started"), "{log}");
}
