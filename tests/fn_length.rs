//! No function in crates/mrbm-runner is longer than 120 lines (issue 14):
//! a long function there is a phase that wants splitting into named steps.

use std::path::Path;

const LIMIT: usize = 120;

/// (lines, name) of each function with a body in `text`: from its `fn`
/// line to the closing brace at the same indentation.
fn function_lengths(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let t = line.trim_start();
        let head = [
            "pub fn ",
            "pub(crate) fn ",
            "fn ",
            "pub const fn ",
            "const fn ",
        ]
        .iter()
        .any(|p| t.starts_with(p));
        if head && !t.ends_with(';') {
            let close = format!("{}}}", &line[..indent]);
            if let Some(end) = (i + 1..lines.len()).find(|&j| lines[j] == close) {
                let name = t.split('(').next().unwrap_or(t).to_string();
                out.push((end - i + 1, name));
                i = end;
            }
        }
        i += 1;
    }
    out
}

#[test]
fn lengths_are_counted_from_fn_to_its_closing_brace() {
    let text = "fn a() {\n    x();\n}\n\nimpl T {\n    pub fn b(\n        y: u8,\n    ) {\n        fn c() {}\n    }\n    fn d();\n}\n";
    assert_eq!(
        function_lengths(text),
        vec![(3, "fn a".to_string()), (5, "pub fn b".to_string())]
    );
}

#[test]
fn no_runner_function_is_over_the_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut too_long = Vec::new();
    let mut files = 0;
    for e in walkdir::WalkDir::new(&src).into_iter().flatten() {
        if e.path().extension().is_some_and(|x| x == "rs") {
            files += 1;
            let text = std::fs::read_to_string(e.path()).unwrap();
            for (n, name) in function_lengths(&text) {
                if n > LIMIT {
                    too_long.push(format!("{}: {name}: {n} lines", e.path().display()));
                }
            }
        }
    }
    assert!(
        files > 10,
        "found only {files} source files under {}",
        src.display()
    );
    assert!(
        too_long.is_empty(),
        "over {LIMIT} lines:\n{}",
        too_long.join("\n")
    );
}
