//! The runner's folders are phases, and imports go one way (ARCHITECTURE.md,
//! "The runner's folders"): a module may name only modules on a lower
//! layer, never one above it, so the module graph has no circle.
//!
//! This reads every `.rs` under `src/`, takes the `crate::X` paths (and
//! `super::` paths that climb to the crate root) outside comments, and
//! checks the graph between top-level modules: (a) it has no cycle, (b)
//! each edge goes down the layers below. `cargo test -p mrbm-runner --test
//! layering -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first: a module may import only modules listed before it.
const LAYERS: &[&str] = &[
    "error", "sys", "store", "kinds", "load", "plan", "key", "run", "report", "ops",
];

/// Top-level module -> the top-level modules it names (with one place each).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under src/: `run/executors/slurm.rs` ->
/// [run, executors, slurm]; `store/mod.rs` -> [store]; `error.rs` -> [error].
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a line, without its `//` comment (doc comments included).
/// A `//` inside a string literal cuts the line short, which loses nothing
/// that names a module.
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules a line of code names: `crate::X`, `crate::{X, Y}`,
/// and `super::X` where the `super`s climb out of the file's folder.
fn named(code: &str, path: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let id = ident_at(item.trim());
                if !id.is_empty() && id != "self" {
                    out.push(id);
                }
            }
        } else {
            let id = ident_at(after);
            if !id.is_empty() {
                out.push(id);
            }
        }
        rest = after;
    }
    // `super::` climbs from the file's module; `super::*` (a test module
    // reading its file) is the file itself.
    let mut rest = code;
    while let Some(i) = rest.find("super::") {
        let before_ok = i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == ':');
        let mut after = &rest[i..];
        let mut ups = 0;
        while let Some(a) = after.strip_prefix("super::") {
            ups += 1;
            after = a;
        }
        let id = ident_at(after);
        if before_ok && !id.is_empty() && ups >= path.len() {
            out.push(id);
        }
        rest = &rest[i + "super::".len() * ups.max(1)..];
    }
    out
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    files.sort();
    let mut g = Graph::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let path = module_path(rel);
        let from = path[0].clone();
        if from == "lib" || from == "main" {
            continue; // the crate root declares modules; main.rs is the binary
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let entry = g.entry(from.clone()).or_default();
        for (n, line) in text.lines().enumerate() {
            for to in named(code_of(line), &path) {
                if to != from {
                    entry
                        .entry(to)
                        .or_insert_with(|| format!("{}:{}", rel.display(), n + 1));
                }
            }
        }
    }
    g
}

/// A cycle in the graph, as the modules on it, if any.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        m: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut c = stack[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for to in g.get(m).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(g, to, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = visit(g, m, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// Edges that do not go down the layers: "from -> to (at file:line)".
fn back_edges(g: &Graph) -> Vec<String> {
    let level = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut bad = Vec::new();
    for (from, tos) in g {
        for (to, at) in tos {
            match (level(from), level(to)) {
                (Some(a), Some(b)) if b < a => {}
                (Some(_), Some(_)) => bad.push(format!(
                    "{from} -> {to} (at {at}): `{to}` is not below `{from}`"
                )),
                _ => bad.push(format!(
                    "{from} -> {to} (at {at}): a module missing from LAYERS in tests/layering.rs"
                )),
            }
        }
    }
    bad
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_runner_s_modules_import_one_way_and_form_no_circle() {
    let g = graph(&src());
    for (from, tos) in &g {
        let list: Vec<&str> = tos.keys().map(String::as_str).collect();
        println!("{from:>7} -> {}", list.join(", "));
    }
    assert!(g.len() >= LAYERS.len() - 1, "no modules found: {g:?}");
    let cycle = find_cycle(&g).map(|c| format!("an import circle: {}\n", c.join(" -> ")));
    let bad = back_edges(&g);
    assert!(
        cycle.is_none() && bad.is_empty(),
        "{}imports running up the layers ({}):\n{}",
        cycle.unwrap_or_default(),
        LAYERS.join(" < "),
        bad.join("\n")
    );
}

#[test]
fn the_checks_see_a_back_edge_a_group_and_a_climbing_super() {
    let p = |s: &str| s.split('/').map(str::to_string).collect::<Vec<_>>();
    assert_eq!(named("use crate::run::job::Status;", &p("key")), ["run"]);
    assert_eq!(
        named("use crate::{plan::Dag, store, self};", &p("key/job")),
        ["plan", "store"]
    );
    assert_eq!(
        named("use super::Executor;", &p("run/executors/local")),
        Vec::<String>::new()
    );
    assert_eq!(named("use super::super::run::x;", &p("key/job")), ["run"]);
    assert_eq!(named("use super::*;", &p("key")), Vec::<String>::new());
    assert!(named(code_of("/// see [`crate::run`]"), &p("key")).is_empty());

    let mut g = Graph::new();
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), "x.rs:1".into());
    };
    edge(&mut g, "run", "key");
    edge(&mut g, "key", "store");
    assert!(find_cycle(&g).is_none());
    assert!(back_edges(&g).is_empty());
    edge(&mut g, "store", "run");
    assert_eq!(find_cycle(&g).unwrap(), ["key", "store", "run", "key"]);
    assert_eq!(back_edges(&g).len(), 1);
    assert!(back_edges(&g)[0].starts_with("store -> run (at x.rs:1)"));
}

/// Kind names the runner may not spell outside `kinds/`: every kind the
/// registry holds, its own (tested through `Node::is_table` and
/// `kinds::table::KIND`) and the domain's (known only through
/// `mrbm_stage::Stage`), so a new kind is covered without editing this list.
fn kind_names() -> Vec<&'static str> {
    mrbm_runner::kinds::registry::Registry::builtin()
        .kinds()
        .collect()
}

/// Where a kind is still named outside `kinds/` today, as "file: kind".
/// Shrink it; a new entry is a regression.
const STILL_NAMED: &[&str] = &[];

#[test]
fn no_kind_is_named_outside_kinds_but_the_known_debts() {
    let src = src();
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        if rel.starts_with("kinds/") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // Tests may name kinds: code only, up to the test module.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for kind in kind_names() {
            let quoted = format!("\"{kind}\"");
            if code.lines().any(|l| code_of(l).contains(&quoted)) {
                found.push(format!("{rel}: {kind}"));
            }
        }
    }
    assert_eq!(
        found, STILL_NAMED,
        "kind names outside kinds/ (left) against the known ones (right)"
    );
}
