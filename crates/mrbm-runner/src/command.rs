//! The `command` stage kind: runs the user's own program as a cached stage.
//!
//! ```toml
//! [stages.count]
//! kind = "command"
//! inputs = { in1 = "scripts/count.py", in2 = "samples" }
//! params = { argv = ["python3", "{in1}", "{in2}", "{out}/counts.csv"], env = { LANG = "C" } }
//! ```
//!
//! Inputs go in the fixed optional slots `in1`..`in4` (files, folders or
//! other stages' outputs). Their paths replace `{in1}`..`{in4}` in `argv`
//! and are also given as `MRBM_IN_IN1`..`MRBM_IN_IN4`; the output folder
//! replaces `{out}` and is `MRBM_OUT`. The program writes its files there,
//! and optionally `metrics.json` (an object of numbers) which tables read.
//! It runs without a shell, in the directory `mrbm` runs in, with the
//! environment of `mrbm` plus `env`. Its stdout and stderr go to the stage
//! log (and to the terminal with `-v`); a non-zero exit fails the stage and
//! shows the last lines of its stderr.
//!
//! The key covers `argv`, `env` and the content of every input: put the
//! script itself in an input slot so that editing it runs the stage again.
//! The program found on PATH (`python3`) and the rest of the environment are
//! not part of the key.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use mrbm_stage::{InputSlot, JsonValue, Metrics, ParamError, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

pub struct CommandStage;

/// The input slots of `command`.
pub const SLOTS: [&str; 4] = ["in1", "in2", "in3", "in4"];

const INPUTS: &[InputSlot] = &[
    InputSlot::optional(
        "in1",
        None,
        "a file, folder or stage output; `{in1}` in argv, MRBM_IN_IN1 in the environment",
    ),
    InputSlot::optional("in2", None, "as in1: `{in2}`, MRBM_IN_IN2"),
    InputSlot::optional("in3", None, "as in1: `{in3}`, MRBM_IN_IN3"),
    InputSlot::optional("in4", None, "as in1: `{in4}`, MRBM_IN_IN4"),
];

/// Lines of the program's stderr shown when it fails.
const STDERR_TAIL: usize = 20;

/// Parameters of `command`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// The program and its arguments, run without a shell; `{out}` and
    /// `{in1}`..`{in4}` are replaced by paths.
    pub argv: Vec<String>,
    /// Environment variables set for the program (part of the key).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl CommandParams {
    fn check(&self) -> Result<(), ParamError> {
        if self.argv.first().is_none_or(|p| p.is_empty()) {
            return Err(ParamError::new(
                "argv",
                "argv needs the program to run, e.g. argv = [\"python3\", \"{in1}\", \"{out}\"]",
            ));
        }
        // Unknown placeholders and unbalanced braces, when the plan is
        // built (at the file's line), not when the stage runs; whether an
        // input is given is known only per node.
        let all: Vec<(String, String)> = SLOTS
            .iter()
            .chain(&["out"])
            .map(|s| (format!("{{{s}}}"), String::new()))
            .collect();
        for a in &self.argv {
            substitute(a, &all).map_err(|m| ParamError::new("argv", m))?;
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ParamError::new(
                    "env",
                    format!("`{k}` is not an environment variable name"),
                ));
            }
        }
        Ok(())
    }
}

impl Stage for CommandStage {
    fn kind(&self) -> &'static str {
        "command"
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> &'static [InputSlot] {
        INPUTS
    }
    fn about(&self) -> &'static str {
        "run your own program (argv, no shell) on inputs in1..in4; it writes into {out}, optionally metrics.json"
    }
    fn params(&self, raw: &toml::Table) -> Result<JsonValue, ParamError> {
        let (p, canon) = mrbm_stage::parse_params::<CommandParams>(raw)?;
        p.check()?;
        Ok(canon)
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics, StageError> {
        let p: CommandParams = ctx.typed_params()?;
        let mut vars: Vec<(String, String)> =
            vec![("{out}".into(), ctx.out_dir.to_string_lossy().into_owned())];
        for slot in SLOTS {
            if let Some(path) = ctx.optional_input(slot) {
                vars.push((format!("{{{slot}}}"), path.to_string_lossy().into_owned()));
            }
        }
        let argv: Vec<String> = p
            .argv
            .iter()
            .map(|a| substitute(a, &vars))
            .collect::<Result<_, _>>()
            .map_err(StageError::User)?;
        ctx.log(format!("command: {}", shell_words(&argv)));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .envs(&p.env)
            .env("MRBM_OUT", ctx.out_dir)
            .env("MRBM_THREADS", ctx.threads.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for slot in SLOTS {
            if let Some(path) = ctx.optional_input(slot) {
                cmd.env(format!("MRBM_IN_{}", slot.to_uppercase()), path);
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            StageError::User(format!(
                "stage `{}`: cannot start `{}`: {e}",
                ctx.stage_id, argv[0]
            ))
        })?;
        let bar = ctx.bar(0, &argv[0]);
        let tail = Mutex::new(VecDeque::new());
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let status = std::thread::scope(|s| {
            s.spawn(|| {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    ctx.log(format!("stdout: {line}"));
                }
            });
            s.spawn(|| {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    ctx.log(format!("stderr: {line}"));
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == STDERR_TAIL {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            });
            loop {
                match child.try_wait() {
                    Ok(Some(st)) => break Ok(st),
                    Ok(None) => {}
                    Err(e) => {
                        break Err(StageError::failed(format!("waiting for {}: {e}", argv[0])))
                    }
                }
                if ctx.check_cancel().is_err() {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(StageError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        bar.finish_and_clear();
        let status = status?;
        if !status.success() {
            let tail = tail.into_inner().unwrap_or_default();
            let how = match status.code() {
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".to_string(),
            };
            let mut msg = format!("`{}` {how}", argv[0]);
            if tail.is_empty() {
                msg.push_str(" (its stderr was empty)");
            } else {
                msg.push_str("; the end of its stderr:");
                for l in tail {
                    msg.push_str(&format!("\n    {l}"));
                }
            }
            return Err(StageError::Failed(msg));
        }
        read_metrics(&ctx.out("metrics.json"))
    }
}

/// Replace `{out}`, `{in1}`.. in `arg`; `{{` and `}}` are literal braces.
/// A placeholder of an input that is not given is an error.
fn substitute(arg: &str, vars: &[(String, String)]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let r = &rest[i..];
        if r.starts_with("{{") || r.starts_with("}}") {
            out.push_str(&r[..1]);
            rest = &r[2..];
            continue;
        }
        if r.starts_with('}') {
            return Err(format!(
                "argv `{arg}`: a lone `}}` (write `}}}}` for a brace)"
            ));
        }
        let Some(end) = r.find('}') else {
            return Err(format!(
                "argv `{arg}`: `{{` is not closed (write `{{{{` for a brace)"
            ));
        };
        let name = &r[..=end];
        match vars.iter().find(|(k, _)| k == name) {
            Some((_, v)) => out.push_str(v),
            None if SLOTS.iter().any(|s| format!("{{{s}}}") == name) => {
                return Err(format!(
                    "argv `{arg}` uses {name} but the stage has no input `{}`",
                    &name[1..name.len() - 1]
                ))
            }
            None => {
                let bare = &name[1..name.len() - 1];
                let near = mrbm_stage::nearest(bare, SLOTS.iter().copied().chain(["out"]))
                    .map(|n| format!("did you mean {{{n}}}? "))
                    .unwrap_or_default();
                return Err(format!(
                    "argv `{arg}`: unknown placeholder {name} ({near}there are {{out}}, {{in1}}..{{in4}}; write `{{{{` for a brace)"
                ));
            }
        }
        rest = &r[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The program's `metrics.json`, if it wrote one: an object of numbers.
fn read_metrics(path: &std::path::Path) -> Result<Metrics, StageError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Metrics::new()),
        Err(e) => return Err(StageError::io(path, e)),
    };
    let bad = |why: String| {
        StageError::User(format!(
            "{}: the program's metrics.json must be an object of numbers, e.g. {{\"accuracy\": 0.93}}: {why}",
            path.display()
        ))
    };
    let v: serde_json::Map<String, JsonValue> =
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut m = Metrics::new();
    for (k, x) in v {
        match x.as_f64() {
            Some(f) => {
                m.insert(k, f);
            }
            None => return Err(bad(format!("`{k}` is {x}"))),
        }
    }
    Ok(m)
}

/// argv as one would type it, for the log.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, String)> {
        vec![
            ("{out}".into(), "/o".into()),
            ("{in1}".into(), "/a b".into()),
        ]
    }

    #[test]
    fn placeholders_are_replaced() {
        assert_eq!(substitute("{out}/x.csv", &vars()).unwrap(), "/o/x.csv");
        assert_eq!(substitute("--in={in1}", &vars()).unwrap(), "--in=/a b");
        assert_eq!(substitute("{{json}}", &vars()).unwrap(), "{json}");
        assert!(substitute("{in2}", &vars())
            .unwrap_err()
            .contains("no input `in2`"));
        assert!(substitute("{oops}", &vars())
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(substitute("{out", &vars()).is_err());
        let e = substitute("{in5}", &vars()).unwrap_err();
        assert!(e.contains("did you mean {in1}?"), "{e}");
        // Found when the parameters are read, i.e. by `mrbm plan`.
        let mut raw = toml::Table::new();
        raw.insert(
            "argv".into(),
            toml::Value::Array(vec!["echo".into(), "{in5}".into()]),
        );
        let e = CommandStage.params(&raw).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("argv"));
        assert!(
            e.message.contains("unknown placeholder {in5}"),
            "{}",
            e.message
        );
    }

    #[test]
    fn params_need_a_program_and_fill_env() {
        let s = CommandStage;
        let raw: toml::Table = toml::from_str("argv = []").unwrap();
        assert_eq!(s.params(&raw).unwrap_err().key.as_deref(), Some("argv"));
        let raw: toml::Table = toml::from_str("argv = [\"true\"]").unwrap();
        let raw2: toml::Table = toml::from_str("argv = [\"true\"]\nenv = {}").unwrap();
        assert_eq!(s.params(&raw).unwrap(), s.params(&raw2).unwrap());
        let raw: toml::Table = toml::from_str("argv = [\"true\"]\nargs = 1").unwrap();
        assert_eq!(
            s.params(&raw).unwrap_err().suggestion.as_deref(),
            Some("argv")
        );
    }

    #[test]
    fn metrics_must_be_numbers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.json");
        assert!(read_metrics(&p).unwrap().is_empty());
        std::fs::write(&p, r#"{"a": 1, "b": 2.5}"#).unwrap();
        assert_eq!(read_metrics(&p).unwrap()["b"], 2.5);
        std::fs::write(&p, r#"{"a": "x"}"#).unwrap();
        assert!(read_metrics(&p).unwrap_err().is_user_error());
    }
}
