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
//! environment of `mrbm` plus `env`, in a process group of its own that
//! nothing outlives (see [`crate::sys::procgroup`]): on Ctrl-C the group gets
//! SIGTERM, then SIGKILL after `grace_s` seconds (default 10). Its stdout and stderr go to the stage
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
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

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
#[derive(Debug, Clone, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// The program and its arguments, run without a shell; `{out}` and
    /// `{in1}`..`{in4}` are replaced by paths.
    pub argv: Vec<String>,
    /// Environment variables set for the program (part of the key).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds between the SIGTERM that Ctrl-C (or SIGTERM to mrbm) sends
    /// to the program's process group and the SIGKILL that follows if
    /// anything in it still runs (default 10; like every parameter, a value
    /// set here is part of the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_s: Option<f64>,
}

/// The grace period when `grace_s` is not set.
pub const DEFAULT_GRACE_S: f64 = 10.0;

impl CommandParams {
    fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.grace_s.unwrap_or(DEFAULT_GRACE_S))
    }

    fn check(&self) -> Result<(), ParamError> {
        if let Some(g) = self.grace_s {
            if !(g.is_finite() && (0.0..=86_400.0).contains(&g)) {
                return Err(ParamError::new(
                    "grace_s",
                    format!("grace_s must be between 0 and 86400 seconds, got {g}"),
                ));
            }
        }
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
    fn param_docs(&self) -> Vec<mrbm_stage::ParamDoc> {
        <CommandParams as mrbm_stage::ParamDocs>::param_docs()
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
        let group = crate::sys::procgroup::Group::spawn(&mut cmd).map_err(|e| {
            StageError::User(format!(
                "stage `{}`: cannot start `{}`: {e}",
                ctx.stage_id, argv[0]
            ))
        })?;
        let bar = ctx.bar(0, &argv[0]);
        let status = supervise(ctx, group, &argv[0], p.grace());
        bar.finish_and_clear();
        let (status, tail) = status?;
        if !status.success() {
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

/// A line the program wrote.
enum Line {
    Out(String),
    Err(String),
}

/// Run the program to its end: its output lines into the stage log (the
/// last lines of stderr kept for the error message); on cancel SIGTERM to
/// its group, SIGKILL after `grace`. Whatever it left in its group is
/// killed when it ends. Readers are not waited on for long after that: a
/// process that left the group may hold the pipes open, and the stage must
/// not hang on it.
fn supervise(
    ctx: &StageContext,
    mut group: crate::sys::procgroup::Group,
    program: &str,
    grace: Duration,
) -> Result<(std::process::ExitStatus, VecDeque<String>), StageError> {
    let (tx, rx) = std::sync::mpsc::channel::<Line>();
    let (stdout, stderr) = group.take_pipes();
    if let Some(out) = stdout {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(Line::Out(line)).is_err() {
                    break;
                }
            }
        });
    }
    if let Some(err) = stderr {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(Line::Err(line)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut tail = VecDeque::new();
    let mut take = |line: Line| match line {
        Line::Out(l) => ctx.log(format!("stdout: {l}")),
        Line::Err(l) => {
            ctx.log(format!("stderr: {l}"));
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(l);
        }
    };
    let mut term_sent: Option<Instant> = None;
    let mut killed = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(line) => take(line),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(20)),
        }
        match group.ended() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(StageError::failed(format!("waiting for {program}: {e}"))),
        }
        if term_sent.is_none() && ctx.check_cancel().is_err() {
            ctx.log(format!(
                "cancelled: SIGTERM to the program's process group {}, SIGKILL in {:.1} s",
                group.pgid(),
                grace.as_secs_f64()
            ));
            group.signal(libc::SIGTERM);
            term_sent = Some(Instant::now());
        }
        if !killed && term_sent.is_some_and(|t| t.elapsed() >= grace) {
            ctx.log("grace period over: SIGKILL to the program's process group");
            group.signal(libc::SIGKILL);
            killed = true;
        }
    }
    let status = group
        .finish()
        .map_err(|e| StageError::failed(format!("waiting for {program}: {e}")))?;
    // The rest of its output, unless something outside the group holds the pipes.
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => take(line),
            Err(_) => break,
        }
    }
    if term_sent.is_some() {
        return Err(StageError::Cancelled);
    }
    Ok((status, tail))
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
