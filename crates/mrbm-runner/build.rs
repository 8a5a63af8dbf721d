//! `mrbm params KIND` shows each parameter's doc comment, read here from the
//! structs the stages deserialize (no hand-kept list): a `pub struct
//! KindParams` names its kind, and a library's own struct is marked with a
//! `// mrbm params: KIND` line above it (several structs may make up one
//! kind's parameters: a `#[serde(flatten)]` field is not a parameter, the
//! fields of the struct it names are). Crates not found next to this one
//! (a packaged build) just give no docs.

use std::path::Path;

const SOURCES: &[&str] = &[
    "../mrbm-data/src/stages.rs",
    "../mrbm-core/src/stages.rs",
    "../mrbm-core/src/stack.rs",
    "../mrbm-core/src/train.rs",
    "../mrbm-eval/src/stages.rs",
    "../mrbm-eval/src/svm.rs",
    "../mrbm-eval/src/judge.rs",
    "../mrbm-eval/src/judge_stages.rs",
    "src/command.rs",
    "src/table.rs",
    "src/collect.rs",
];

fn main() {
    let mut rows = Vec::new();
    for src in SOURCES {
        println!("cargo:rerun-if-changed={src}");
        if let Ok(text) = std::fs::read_to_string(src) {
            parse(&text, &mut rows);
        }
    }
    let mut out = String::from(
        "/// (kind, parameter, Rust type, doc) of the built-in kinds.\npub const PARAM_DOCS: &[(&str, &str, &str, &str)] = &[\n",
    );
    for (k, p, t, d) in rows {
        out.push_str(&format!("    ({k:?}, {p:?}, {t:?}, {d:?}),\n"));
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("param_docs.rs");
    std::fs::write(dest, out).unwrap();
}

/// `FidStatsParams` -> `fid_stats`.
fn snake(camel: &str) -> String {
    let mut s = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

fn parse(text: &str, rows: &mut Vec<(String, String, String, String)>) {
    let mut kind: Option<String> = None;
    let mut doc: Vec<String> = Vec::new();
    let mut rename: Option<String> = None;
    let mut flatten = false;
    // From a `// mrbm params: KIND` line to the struct it marks.
    let mut marked: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(k) = &kind {
            if line.starts_with('}') {
                kind = None;
                continue;
            }
            if let Some(d) = t.strip_prefix("///") {
                doc.push(d.trim().to_string());
            } else if t.starts_with("#[serde(") {
                if let Some(r) = t.split("rename = \"").nth(1) {
                    rename = r.split('"').next().map(str::to_string);
                }
                flatten |= t.contains("flatten");
            } else if let Some((name, ty)) = t
                .strip_prefix("pub ")
                .unwrap_or(t)
                .split_once(':')
                .filter(|(n, _)| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                let name = rename.take().unwrap_or_else(|| name.to_string());
                let ty = ty.trim().trim_end_matches(',').to_string();
                if !std::mem::take(&mut flatten) {
                    rows.push((k.clone(), name, ty, doc.join(" ")));
                }
                doc.clear();
            } else if t.is_empty() || t.starts_with("//") {
            } else {
                doc.clear();
                rename = None;
                flatten = false;
            }
        } else if let Some(k) = t.strip_prefix("// mrbm params:") {
            marked = Some(k.trim().to_string());
        } else if let Some(rest) = t.strip_prefix("pub struct ") {
            let by_name = rest
                .split_whitespace()
                .next()
                .and_then(|name| name.strip_suffix("Params"))
                .filter(|base| !base.is_empty())
                .map(snake);
            if rest.trim_end().ends_with('{') {
                kind = marked.take().or(by_name);
                doc.clear();
                rename = None;
                flatten = false;
            }
        }
    }
}
