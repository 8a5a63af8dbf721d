//! No tracked file names a path of the machine the project was written on:
//! scripts and tests find the shared data through MRBM_SHARED_DATA or
//! ../shared/data, and Python through $PYTHON or the project's .venv
//! (tools/reference-env.sh). A path like the development machine's shared
//! folder or venv would not exist on a user's machine.

use std::process::Command;

/// Prefixes that only exist on the development machines, built from their
/// parts so that this file does not name them itself.
fn machine_paths() -> Vec<String> {
    let mut all: Vec<String> = ["shared", "venv", "main", "tgt"]
        .iter()
        .map(|leaf| format!("/{}/{leaf}", "work"))
        .collect();
    all.push(format!("/{}/", "root"));
    all
}

#[test]
fn no_tracked_file_names_a_path_of_the_development_machine() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let listed = Command::new("git")
        .args(["-C", root, "ls-files", "-z"])
        .output();
    let Ok(out) = listed else {
        println!("note: skipped: git is not available");
        return;
    };
    if !out.status.success() {
        println!("note: skipped: not a git checkout");
        return;
    }
    let prefixes = machine_paths();
    let mut offenders = Vec::new();
    for name in out.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name);
        if name.ends_with(".lock") {
            continue;
        }
        let Ok(text) = std::fs::read(format!("{root}/{name}")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&text);
        for (i, line) in text.lines().enumerate() {
            if let Some(p) = prefixes.iter().find(|p| line.contains(p.as_str())) {
                offenders.push(format!("{name}:{}: `{p}`", i + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "tracked files name paths of the development machine (use MRBM_SHARED_DATA, ../shared/data, $PYTHON or .venv):\n{}",
        offenders.join("\n")
    );
}
