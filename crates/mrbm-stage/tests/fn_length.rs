//! No function in the workspace's non-test code runs over [`MAX_LINES`]
//! lines (from its `fn` line to its closing brace, as rustfmt lays it out).
//! Every crate's `src/` (and `build.rs`) is measured, mrbm-runner included
//! (a long function is a phase that wants splitting into named steps); a
//! crate can be let off while it is reorganised with [`enforced`].

use std::path::{Path, PathBuf};

const MAX_LINES: usize = 120;

/// Whether a crate's long functions fail the test.
fn enforced(_krate: &str) -> bool {
    true
}

/// A function with a body: crate, file, first line, name, length in lines.
#[derive(Debug)]
struct Fn {
    krate: String,
    file: PathBuf,
    line: usize,
    name: String,
    lines: usize,
}

fn indent(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

/// The closing line of the item that opens at `start` with indentation
/// `ind`: the next line that starts with `}` at that indentation.
fn close(lines: &[&str], start: usize, ind: usize) -> usize {
    (start + 1..lines.len())
        .find(|&k| indent(lines[k]) == ind && lines[k].trim_start().starts_with('}'))
        .unwrap_or(lines.len() - 1)
}

/// The name of the function declared on `l`, if one is (`fn`, `pub fn`,
/// `pub(crate) const unsafe fn`...).
fn fn_name(l: &str) -> Option<&str> {
    let mut words = l.split_whitespace();
    loop {
        let w = words.next()?;
        if w == "fn" {
            let name = words.next()?;
            let end = name
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(name.len());
            return Some(&name[..end]);
        }
        let modifier = w == "pub"
            || w.starts_with("pub(")
            || ["const", "async", "unsafe", "extern", "\"C\"", "default"].contains(&w);
        if !modifier {
            return None;
        }
    }
}

fn measure(krate: &str, file: &Path, text: &str, out: &mut Vec<Fn>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        // Test code: the item after #[cfg(test)] is skipped whole.
        if l.trim() == "#[cfg(test)]" {
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim_start().starts_with("#[") {
                j += 1;
            }
            i = if j < lines.len() && lines[j].trim_end().ends_with(';') {
                j + 1
            } else {
                close(&lines, j, indent(l)) + 1
            };
            continue;
        }
        if let Some(name) = fn_name(l) {
            // The signature ends with `{` (a body) or `;` (a declaration).
            let Some(open) = (i..lines.len()).find(|&j| {
                let t = lines[j].trim_end();
                t.ends_with('{') || t.ends_with(';') || t.ends_with("{}")
            }) else {
                break;
            };
            let t = lines[open].trim_end();
            if !t.ends_with(';') {
                let end = if t.ends_with("{}") {
                    open
                } else {
                    close(&lines, open, indent(l))
                };
                out.push(Fn {
                    krate: krate.to_string(),
                    file: file.to_path_buf(),
                    line: i + 1,
                    name: name.to_string(),
                    lines: end - i + 1,
                });
            }
        }
        i += 1;
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn workspace_functions() -> Vec<Fn> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut fns = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let krate = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        if dir.join("build.rs").is_file() {
            files.push(dir.join("build.rs"));
        }
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let rel = f.strip_prefix(&crates).unwrap_or(&f).to_path_buf();
            measure(&krate, &rel, &text, &mut fns);
        }
    }
    fns
}

#[test]
fn no_function_over_the_limit() {
    let fns = workspace_functions();
    assert!(fns.len() > 500, "found only {} functions", fns.len());
    for krate in ["mrbm-runner", "mrbm-core", "mrbm-data"] {
        assert!(fns.iter().any(|f| f.krate == krate), "no {krate} found");
    }
    let mut failing = Vec::new();
    for f in fns.iter().filter(|f| f.lines > MAX_LINES) {
        let row = format!(
            "{:>4} lines  {}:{}  {}",
            f.lines,
            f.file.display(),
            f.line,
            f.name
        );
        if enforced(&f.krate) {
            failing.push(row);
        } else {
            println!("not enforced yet: {row}");
        }
    }
    assert!(
        failing.is_empty(),
        "functions over {MAX_LINES} lines (split them):\n{}",
        failing.join("\n")
    );
}

/// The measure itself: a function's lines, nested items, declarations
/// and test modules.
#[test]
fn the_measure() {
    let text = "\
fn short() {
    let x = 1;
}

pub(crate) fn nested(a: u8,
    b: u8,
) -> u8 {
    fn inner() {}
    if a > b {
        a
    } else {
        b
    }
}

trait T {
    fn declared(&self);
}

#[cfg(test)]
mod tests {
    fn in_tests() {
        let y = 2;
    }
}
";
    let mut out = Vec::new();
    measure("c", Path::new("f.rs"), text, &mut out);
    let got: Vec<(&str, usize)> = out.iter().map(|f| (f.name.as_str(), f.lines)).collect();
    assert_eq!(got, [("short", 3), ("nested", 10), ("inner", 1)]);
}
