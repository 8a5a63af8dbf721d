//! End-to-end checks of issue 16 ("Integrity") on the `mrbm` binary:
//! SIGTERM and SIGHUP handled like Ctrl-C, and a `gc` that cannot destroy
//! live work (data root, experiment files that do not load, locks, runs in
//! progress). Pipelines here are tiny: a synthetic or 4-image data set.

mod common;
use common::{entries, mrbm, project, run_in, text, SpawnPiped};

use std::io::BufRead;
use std::path::Path;

fn key_of(root: &Path, exp: &str, id: &str) -> String {
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join(format!(".mrbm/runs/{exp}.json"))).unwrap(),
    )
    .unwrap();
    rec["stages"][id]["key"].as_str().unwrap().to_string()
}

const SHAPES: &str = r#"
[stages.shapes]
kind = "dataset"
params = { format = "synthetic", n = 40, size = 8, classes = 2, seed = 1 }
"#;

/// `mrbm run experiments/a.toml --quiet EXTRA` in `dir`, which must succeed.
fn run_a(dir: &Path, extra: &[&str]) {
    let mut args = vec!["run", "experiments/a.toml", "--quiet"];
    args.extend_from_slice(extra);
    let o = run_in(dir, &args);
    assert!(o.status.success(), "{}", text(&o));
}

/// The signal arrives while the run waits for a stage's lock, held by a
/// live process (this test): deterministic, whatever the machine's speed.
#[test]
fn sigterm_and_sighup_stop_like_ctrl_c() {
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let p = project(&[("a.toml", SHAPES)]);
        run_a(p.path(), &[]);
        let key = key_of(p.path(), "a", "shapes");
        std::fs::remove_dir_all(p.path().join(format!(".mrbm/entries/{key}"))).unwrap();
        let host = common::hostname();
        let lock = p.path().join(format!(".mrbm/locks/{key}.lock"));
        let planted = format!("{} {} 2026-01-01T00:00:00Z\n", std::process::id(), host);
        std::fs::write(&lock, &planted).unwrap();
        let mut child = mrbm()
            .current_dir(p.path())
            .args(["run", "experiments/a.toml", "--quiet"])
            .spawn_piped();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("waiting shapes") {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "no waiting line");
        }
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
        let status = child.wait().unwrap();
        // Interrupted like Ctrl-C (130), not killed by the signal.
        assert_eq!(status.code(), Some(130), "signal {sig}: {status:?}\n{rest}");
        assert!(rest.contains("interrupt"), "signal {sig}: {rest}");
        // Only the planted lock is there, untouched; no temporary folder.
        let locks: Vec<_> = std::fs::read_dir(p.path().join(".mrbm/locks"))
            .unwrap()
            .collect();
        assert_eq!(locks.len(), 1, "signal {sig}: {locks:?}");
        assert_eq!(std::fs::read_to_string(&lock).unwrap(), planted);
        assert!(
            std::fs::read_dir(p.path().join(".mrbm/tmp"))
                .unwrap()
                .next()
                .is_none(),
            "signal {sig}: a temporary folder was left behind"
        );
    }
}

#[test]
fn gc_refuses_when_an_experiment_does_not_load() {
    let p = project(&[("a.toml", SHAPES)]);
    run_a(p.path(), &[]);
    // Another result, referenced by no experiment, that gc may collect.
    run_a(p.path(), &["--set", "shapes.seed=2"]);
    assert_eq!(entries(&p.path().join(".mrbm")).len(), 2);
    std::fs::write(p.path().join("experiments/broken.toml"), "[stages.x\n").unwrap();
    let o = run_in(p.path(), &["gc"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("broken.toml:1:") && t.contains("nothing was deleted") && t.contains("--force"),
        "{t}"
    );
    assert_eq!(entries(&p.path().join(".mrbm")).len(), 2);
    // --keep-runs 0: collect by experiments/ alone (by default the last
    // runs' entries are kept too).
    let o = run_in(p.path(), &["gc", "--force", "--keep-runs", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(entries(&p.path().join(".mrbm")).len(), 1);
}

/// Four 2x2 images in the IDX format, as MNIST ships them, and their
/// labels: the two files' bytes.
fn mini_idx() -> (Vec<u8>, [u8; 12]) {
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 2];
    images.extend((0..16u8).map(|i| i * 16));
    (images, [0, 0, 8, 1, 0, 0, 0, 4, 0, 1, 0, 1])
}

#[test]
fn gc_takes_the_data_root() {
    let p = project(&[(
        "d.toml",
        "[stages.digits]\nkind = \"dataset\"\ninputs = { dir = \"data:mini\" }\nparams = { format = \"idx\" }\n",
    )]);
    let data = p.path().join("elsewhere/mini");
    std::fs::create_dir_all(&data).unwrap();
    let (images, labels) = mini_idx();
    std::fs::write(data.join("train-images-idx3-ubyte"), images).unwrap();
    std::fs::write(data.join("train-labels-idx1-ubyte"), labels).unwrap();
    let root = p.path().join("elsewhere");
    let root = root.to_str().unwrap();
    let o = run_in(
        p.path(),
        &["run", "experiments/d.toml", "--data-root", root],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(entries(&p.path().join(".mrbm")).len(), 1);
    // Without the data root gc cannot tell what the experiment uses: it refuses.
    let o = run_in(p.path(), &["gc"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--data-root"), "{}", text(&o));
    assert_eq!(entries(&p.path().join(".mrbm")).len(), 1);
    let o = run_in(p.path(), &["gc", "--data-root", root]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("removed 0 entries"), "{}", text(&o));
    assert_eq!(entries(&p.path().join(".mrbm")).len(), 1);
}

#[test]
fn gc_leaves_locked_entries_and_waits_for_runs() {
    let p = project(&[("a.toml", SHAPES)]);
    run_a(p.path(), &["--set", "shapes.seed=2"]);
    let key = key_of(p.path(), "a", "shapes");
    // A live process holds the entry's key (it is replacing it).
    let host = common::hostname();
    let lock = p.path().join(format!(".mrbm/locks/{key}.lock"));
    std::fs::write(
        &lock,
        format!("{} {} 2026-01-01T00:00:00Z\n", std::process::id(), host),
    )
    .unwrap();
    let o = run_in(p.path(), &["gc", "--keep-runs", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("in use"), "{}", text(&o));
    assert_eq!(entries(&p.path().join(".mrbm")).len(), 1);
    std::fs::remove_file(&lock).unwrap();

    // A run in progress (holding the cache's shared guard): gc waits for it.
    let guard = std::fs::File::open(p.path().join(".mrbm/gc.lock")).unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc::flock(guard.as_raw_fd(), libc::LOCK_SH) }, 0);
    let mut gc = mrbm()
        .current_dir(p.path())
        .args(["gc", "--keep-runs", "0"])
        .spawn_piped();
    let mut err = std::io::BufReader::new(gc.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("waiting for the runs"), "{line}");
    assert_eq!(
        entries(&p.path().join(".mrbm")).len(),
        1,
        "gc deleted while a run was going on"
    );
    drop(guard);
    let status = gc.wait().unwrap();
    assert!(status.success());
    assert_eq!(entries(&p.path().join(".mrbm")).len(), 0);
}

/// The files the dataset stage reads (`images`/`labels`, here in a
/// sub-folder of its `dir`) are hashed into its key: editing one reruns the
/// stage with the new bytes. It used to keep the stale entry (same key,
/// different data).
#[test]
fn editing_the_images_file_reruns_the_dataset() {
    let p = project(&[(
        "d.toml",
        "[stages.digits]\nkind = \"dataset\"\ninputs = { dir = \"data:mini\" }\nparams = { format = \"idx\", images = \"sub/imgs\", labels = \"sub/lbls\" }\n",
    )]);
    let data = p.path().join("data/mini/sub");
    std::fs::create_dir_all(&data).unwrap();
    let (mut images, labels) = mini_idx();
    std::fs::write(data.join("imgs"), &images).unwrap();
    std::fs::write(data.join("lbls"), labels).unwrap();
    let args = ["run", "experiments/d.toml", "--data-root", "data"];
    let o = run_in(p.path(), &args);
    assert!(o.status.success(), "{}", text(&o));
    let first = key_of(p.path(), "d", "digits");
    let o = run_in(p.path(), &args);
    assert_eq!(key_of(p.path(), "d", "digits"), first, "{}", text(&o));
    // One pixel of the images file changes.
    *images.last_mut().unwrap() ^= 0xff;
    std::fs::write(data.join("imgs"), &images).unwrap();
    let o = run_in(p.path(), &args);
    assert!(o.status.success(), "{}", text(&o));
    let second = key_of(p.path(), "d", "digits");
    assert_ne!(
        second,
        first,
        "edited images kept the old key:\n{}",
        text(&o)
    );
    assert_eq!(entries(&p.path().join(".mrbm")).len(), 2);
}

/// `mrbm verify` clears locks nobody holds any more: a dead PID on this
/// host, a reused PID (live, but started at another time), and another
/// host's lock whose heartbeat stopped long ago. A live lock stays.
#[test]
fn verify_clears_stale_locks_and_keeps_live_ones() {
    let p = project(&[("a.toml", SHAPES)]);
    run_a(p.path(), &[]);
    let host = common::hostname();
    let boot = common::boot_id();
    // A PID that does not exist: above the kernel's pid_max.
    let dead = 4_194_305u32;
    let locks = p.path().join(".mrbm/locks");
    let owner = |pid: u32, host: &str, start: Option<u64>, time: &str| {
        format!(
            "{}\n",
            serde_json::json!({"pid": pid, "host": host, "start": start, "boot": boot, "time": time})
        )
    };
    std::fs::write(
        locks.join("dead.lock"),
        owner(dead, &host, Some(5), "2026-01-01T00:00:00Z"),
    )
    .unwrap();
    std::fs::write(
        locks.join("reused.lock"),
        owner(1, &host, Some(1), "2026-01-01T00:00:00Z"),
    )
    .unwrap();
    std::fs::write(
        locks.join("elsewhere.lock"),
        owner(1234, "another-host", Some(5), "2020-01-01T00:00:00Z"),
    )
    .unwrap();
    // Its heartbeat (the file's modification time) stopped an hour ago.
    std::fs::File::options()
        .write(true)
        .open(locks.join("elsewhere.lock"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    // This test's own process: alive, started when it says.
    let me_start = std::fs::read_to_string(format!("/proc/{}/stat", std::process::id()))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse::<u64>()
        .unwrap();
    std::fs::write(
        locks.join("live.lock"),
        owner(
            std::process::id(),
            &host,
            Some(me_start),
            "2026-01-01T00:00:00Z",
        ),
    )
    .unwrap();
    let o = run_in(p.path(), &["verify"]);
    assert!(o.status.success(), "{}", text(&o));
    for stale in ["dead", "reused", "elsewhere"] {
        assert!(
            !locks.join(format!("{stale}.lock")).exists(),
            "verify left the {stale} lock:\n{}",
            text(&o)
        );
    }
    assert!(locks.join("live.lock").exists(), "verify broke a live lock");
}

/// A bad `--set` is reported as the command-line argument it came from,
/// never at a line of the experiment file (which does not hold it).
#[test]
fn set_errors_name_the_command_line_argument() {
    let p = project(&[("a.toml", SHAPES)]);
    for (arg, why) in [
        ("shapes.n=many", "invalid type"),
        ("shapes.seed=nan", "must be finite"),
        ("shapes.sizes=3", "unknown field"),
        ("nostage.n=3", "nostage"),
    ] {
        let o = run_in(p.path(), &["plan", "experiments/a.toml", "--set", arg]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{arg}: {t}");
        let key = arg.split('=').next().unwrap();
        assert!(t.contains(&format!("--set {key}")), "{arg}: {t}");
        assert!(t.contains(why), "{arg}: {t}");
        assert!(!t.contains("a.toml:"), "{arg} blamed on a file line: {t}");
    }
}
