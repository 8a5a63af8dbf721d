//! Placeholders left unfilled in a publish path (`{train.lr}`, `{seeed}`):
//! refused when the plan is built, at the publish key's file:line, with the
//! nearest placeholder the stage has. Before, the path was written with
//! the braces in it and the run exited 0.

use crate::error::RunnerError;
use crate::load::config::Source;

/// The first `{name}` in `s` (a name without spaces or braces), if any.
pub fn first_placeholder(s: &str) -> Option<&str> {
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let name = &after[..close];
        if !name.is_empty() && !name.contains(['{', ' ', '/']) {
            return Some(name);
        }
        rest = after;
    }
    None
}

/// Refuse a publish target whose template left a placeholder unfilled:
/// `(stage, id)` is the node, `(file, template, filled)` its publish entry
/// (the output file, the path as written, the path with the cell filled in).
pub fn check_publish(
    src: &Source,
    (stage, id): (&str, &str),
    (file, template, filled): (&str, &str, &str),
    cell: &[(String, String)],
    params: &toml::Table,
) -> Result<(), RunnerError> {
    let Some(name) = first_placeholder(filled) else {
        return Ok(());
    };
    let mut have: Vec<String> = cell.iter().map(|(a, _)| a.clone()).collect();
    have.push("cell".into());
    let axes = have.len();
    have.extend(params.keys().cloned());
    let help = match mrbm_stage::nearest(name, have.iter().map(String::as_str)) {
        Some(n) => format!("did you mean `{{{n}}}`? "),
        None => String::new(),
    };
    let list = |v: &[String]| {
        v.iter()
            .map(|x| format!("{{{x}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(src.locate(
        src.span_or_prefix(&["stages", stage, "publish", file]),
        format!("stage `{id}`: publish `{file}` = \"{template}\": no placeholder `{{{name}}}`"),
        Some(format!(
            "{help}a publish path can name the cell's sweep axes and {{cell}} ({}){}",
            list(&have[..axes]),
            if have.len() > axes {
                format!(
                    ", or one of this stage's own parameters ({})",
                    list(&have[axes..])
                )
            } else {
                String::new()
            }
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_unfilled_placeholder() {
        assert_eq!(
            first_placeholder("results/a_{train.lr}.png"),
            Some("train.lr")
        );
        assert_eq!(first_placeholder("results/a_1.png"), None);
        assert_eq!(first_placeholder("results/{}x{N}.png"), Some("N"));
        assert_eq!(first_placeholder("results/{open.png"), None);
    }

    #[test]
    fn an_unfilled_placeholder_is_an_error_with_the_nearest_name() {
        let src = Source {
            path: "e.toml".into(),
            text: "[stages.s]\nkind = \"sample\"\npublish = { \"grid.png\" = \"results/g_{NN}.png\" }\n"
                .into(),
        };
        let cell = vec![("N".to_string(), "1".to_string())];
        let mut params = toml::Table::new();
        params.insert("seed".into(), toml::Value::Integer(1));
        let e = check_publish(
            &src,
            ("s", "s[N=1]"),
            ("grid.png", "results/g_{NN}.png", "results/g_{NN}.png"),
            &cell,
            &params,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("e.toml:3:"), "{e}");
        assert!(e.contains("no placeholder `{NN}`"), "{e}");
        assert!(e.contains("did you mean `{N}`?"), "{e}");
        assert!(e.contains("{seed}"), "{e}");
        check_publish(
            &src,
            ("s", "s[N=1]"),
            ("grid.png", "results/g_{N}.png", "results/g_1.png"),
            &cell,
            &params,
        )
        .unwrap();
    }
}
