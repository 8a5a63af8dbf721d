//! Integrity (issue 16): corrupt or half cache entries are never trusted,
//! user paths stay inside results/ and the data root, table keys ignore
//! timings, and bad parameters and table metrics are config errors. Small
//! stage kinds defined here, so no model is trained.

use std::collections::BTreeMap;
use std::path::Path;

use mrbm_runner::kinds::registry::Registry;
use mrbm_runner::plan as dag;
use mrbm_runner::run::job::Status;
use mrbm_runner::RunnerError;
use mrbm_stage::{InputSlot, JsonValue, Metrics, ParamError, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

mod common;
use common::Project;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NumParams {
    #[serde(default)]
    value: f64,
    #[serde(default)]
    salt: i64,
}

/// Writes `value` plus its input's number to out.txt; reports it as the
/// metric `value` and, like real stages, a timing that differs every run.
struct Num;
impl Stage for Num {
    fn kind(&self) -> &'static str {
        "num"
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> &'static [InputSlot] {
        const S: &[InputSlot] = &[InputSlot::optional("a", Some("out.txt"), "a number")];
        S
    }
    fn params(&self, raw: &toml::Table) -> Result<JsonValue, ParamError> {
        mrbm_stage::canonical::<NumParams>(raw)
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics, StageError> {
        let p: NumParams = ctx.typed_params()?;
        let mut v = p.value;
        if let Some(path) = ctx.optional_input("a") {
            let path = mrbm_stage::resolve_file(path, "out.txt");
            let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
            v += text.trim().parse::<f64>().map_err(StageError::failed)?;
        }
        std::fs::write(ctx.out("out.txt"), format!("{v}"))
            .map_err(|e| StageError::io(ctx.out("out.txt"), e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Ok(Metrics::from([
            ("value".to_string(), v),
            ("seconds".to_string(), 1e-9 * nanos as f64),
        ]))
    }
}

fn registry() -> Registry {
    Registry::from_stages(vec![
        Box::new(Num),
        Box::new(mrbm_runner::kinds::table::TableStage),
    ])
}

fn build(file: &Path, sets: &[&str]) -> Result<dag::Dag, RunnerError> {
    common::build(file, &registry(), sets)
}

fn run(p: &Project, file: &Path) -> BTreeMap<String, Status> {
    let dag = build(file, &[]).unwrap();
    common::execute(p, &dag, &registry()).into_iter().collect()
}

/// The stages of [`common::CHAIN`] and this table of the top one.
const TABLE: &str = r#"
[[tables]]
name = "t"
stage = "top"
metric = "value"
"#;

fn exp() -> String {
    format!("{}{TABLE}", common::CHAIN)
}

const CSV: &str = "stage,value\nall,111.00\n";

fn csv(p: &Project) -> String {
    std::fs::read_to_string(p.root().join("results/t.csv")).unwrap()
}

/// A byte-flipped artifact read by a stage that runs again is detected,
/// quarantined with what was computed from it, and recomputed: the
/// downstream result is the clean one, under the clean key.
#[test]
fn corrupt_artifact_is_recomputed_before_a_stage_reads_it() {
    let p = Project::new();
    let f = p.write("e.toml", &exp());
    run(&p, &f);
    let clean_top = p.key("e", "top");
    let mid = p.entry("e", "mid");
    // Same size, other bytes: only the hash can tell.
    std::fs::write(mid.join("out/out.txt"), "19").unwrap();
    std::fs::remove_dir_all(p.entry("e", "top")).unwrap();
    let r = run(&p, &f);
    assert_eq!(r["src"], Status::Cached);
    assert_eq!(r["mid"], Status::Ran, "{r:?}");
    assert_eq!(r["top"], Status::Ran, "{r:?}");
    assert_eq!(p.key("e", "top"), clean_top);
    assert_eq!(
        std::fs::read_to_string(p.entry("e", "top").join("out/out.txt")).unwrap(),
        "111"
    );
    assert_eq!(csv(&p), CSV);
    assert!(p.quarantined() >= 1);
    // The entry recomputed is whole.
    assert!(p.store().verify_entry(&p.key("e", "mid")).is_ok());
}

/// A file added to an entry, or renamed, is corruption too.
#[test]
fn added_or_renamed_files_are_corruption() {
    let p = Project::new();
    let f = p.write("e.toml", &exp());
    run(&p, &f);
    let mid = p.entry("e", "mid");
    std::fs::write(mid.join("out/extra.txt"), "x").unwrap();
    assert!(p.store().verify_entry(&p.key("e", "mid")).is_err());
    std::fs::remove_file(mid.join("out/extra.txt")).unwrap();
    std::fs::rename(mid.join("out/out.txt"), mid.join("out/other.txt")).unwrap();
    let e = p.store().verify_entry(&p.key("e", "mid")).unwrap_err();
    assert!(e.contains("other.txt"), "{e}");
    let r = run(&p, &f);
    assert_eq!(r["mid"], Status::Ran, "{r:?}");
    assert_eq!(csv(&p), CSV);
}

/// A cached entry whose manifest is garbage is a miss, never a hit that
/// its consumer then fails on.
#[test]
fn unparsable_manifest_is_a_miss() {
    let p = Project::new();
    let f = p.write("e.toml", &exp());
    run(&p, &f);
    std::fs::write(p.entry("e", "mid").join("manifest.json"), "{ garbage").unwrap();
    let r = run(&p, &f);
    assert_eq!(r["mid"], Status::Ran, "{r:?}");
    // top was computed from the entry: quarantined and recomputed too.
    assert_eq!(r["top"], Status::Ran, "{r:?}");
    assert!(r.values().all(Status::ok), "{r:?}");
    assert_eq!(csv(&p), CSV);
    assert!(p.quarantined() >= 1);
}

/// An entry whose manifest was deleted is a miss, not "Directory not empty".
#[test]
fn missing_manifest_is_a_miss() {
    let p = Project::new();
    let f = p.write("e.toml", &exp());
    run(&p, &f);
    std::fs::remove_file(p.entry("e", "mid").join("manifest.json")).unwrap();
    let r = run(&p, &f);
    assert_eq!(r["mid"], Status::Ran, "{r:?}");
    assert!(r.values().all(Status::ok), "{r:?}");
    assert_eq!(csv(&p), CSV);
    // mid, and top and the table computed from it.
    assert_eq!(p.quarantined(), 3);
    assert!(p.store().verify_entry(&p.key("e", "mid")).is_ok());
}

/// `verify` quarantines a corrupt entry and every entry computed from it
/// (followed through the upstream keys that manifests record).
#[test]
fn verify_quarantines_descendants() {
    let p = Project::new();
    let f = p.write("e.toml", &exp());
    run(&p, &f);
    let (src, mid, top) = (p.key("e", "src"), p.key("e", "mid"), p.key("e", "top"));
    let table = p.key("e", "table:t");
    std::fs::write(p.entry("e", "mid").join("out/out.txt"), "12").unwrap();
    let (n, corrupt, moved) = p.store().verify_all().unwrap();
    assert_eq!(n, 4);
    assert_eq!(corrupt.len(), 1);
    assert_eq!(corrupt[0].0, mid);
    let moved: Vec<&String> = moved.iter().map(|(k, _, _)| k).collect();
    assert_eq!(moved.len(), 3, "{moved:?}");
    for k in [&mid, &top, &table] {
        assert!(moved.contains(&k), "{k} not quarantined: {moved:?}");
    }
    assert_eq!(p.store().keys(), vec![src]);
}

/// A table's key takes the metrics it names, not the timings in
/// metrics.json: a cell recomputed with the same results leaves it cached.
#[test]
fn table_stays_cached_when_a_cell_reruns_with_the_same_results() {
    let p = Project::new();
    let f = p.write("e.toml", &exp());
    run(&p, &f);
    std::fs::remove_dir_all(p.entry("e", "top")).unwrap();
    let r = run(&p, &f);
    assert_eq!(r["top"], Status::Ran);
    assert_eq!(r["table:t"], Status::Cached, "{r:?}");
}

fn config_error(p: &Project, text: &str) -> String {
    let f = p.write("bad.toml", text);
    match build(&f, &[]) {
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{e}");
            e.to_string()
        }
        Ok(_) => panic!("accepted:\n{text}"),
    }
}

#[test]
fn publish_targets_and_table_names_stay_in_results() {
    let p = Project::new();
    for (to, line) in [
        ("../outside.txt", "bad.toml:4:"),
        ("/tmp/outside.txt", "bad.toml:4:"),
        ("results/../../outside.txt", "bad.toml:4:"),
        ("notes/x.txt", "bad.toml:4:"),
    ] {
        let e = config_error(
            &p,
            &format!("[stages.a]\nkind = \"num\"\n[stages.a.publish]\n\"out.txt\" = \"{to}\"\n"),
        );
        assert!(e.contains(line) && e.contains("publish"), "{to}: {e}");
    }
    // The entry's file must be inside the entry too.
    let e = config_error(
        &p,
        "[stages.a]\nkind = \"num\"\npublish = { \"../../x\" = \"results/x\" }\n",
    );
    assert!(e.contains("bad.toml:3:"), "{e}");
    for name in ["../escape", "/tmp/escape", "a/../../b"] {
        let e = config_error(
            &p,
            &format!("[stages.a]\nkind = \"num\"\n\n[[tables]]\nname = \"ok\"\nstage = \"a\"\nmetric = \"value\"\n\n[[tables]]\nname = \"{name}\"\nstage = \"a\"\nmetric = \"value\"\n"),
        );
        assert!(
            e.contains("bad.toml:10:1") && e.contains("table name"),
            "{name}: {e}"
        );
    }
    // A symlink out of results/ is refused as well.
    #[cfg(unix)]
    {
        let outside = p.root().join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(p.root().join("results")).unwrap();
        std::os::unix::fs::symlink(&outside, p.root().join("results/link")).unwrap();
        let e = config_error(
            &p,
            "[stages.a]\nkind = \"num\"\n[stages.a.publish]\n\"out.txt\" = \"results/link/x.txt\"\n",
        );
        assert!(e.contains("bad.toml:4:") && e.contains("outside"), "{e}");
        let e = config_error(
            &p,
            "[stages.a]\nkind = \"num\"\n[[tables]]\nname = \"link/t\"\nstage = \"a\"\nmetric = \"value\"\n",
        );
        assert!(e.contains("bad.toml:4:1") && e.contains("outside"), "{e}");
    }
    // Inside results/ (sub-folders included) is fine.
    let f = p.write(
        "ok.toml",
        "[stages.a]\nkind = \"num\"\npublish = { \"out.txt\" = \"results/sub/a.txt\" }\n[[tables]]\nname = \"sub/t\"\nstage = \"a\"\nmetric = \"value\"\n",
    );
    let r = run(&p, &f);
    assert!(r.values().all(Status::ok), "{r:?}");
    assert!(p.root().join("results/sub/a.txt").is_file());
    assert!(p.root().join("results/sub/t.csv").is_file());
}

/// A publish that cannot be written fails the stage (exit 1) and leaves no
/// temporary file behind.
#[test]
fn failed_publish_is_a_failure_and_leaves_no_temporary_file() {
    let p = Project::new();
    let f = p.write(
        "e.toml",
        "[stages.a]\nkind = \"num\"\npublish = { \"out.txt\" = \"results/a.txt\" }\n",
    );
    // The target is a folder: the rename onto it fails.
    std::fs::create_dir_all(p.root().join("results/a.txt/x")).unwrap();
    let r = run(&p, &f);
    match &r["a"] {
        Status::Failed { message, user } => {
            assert!(!user);
            assert!(message.contains("results/a.txt"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let left: Vec<String> = std::fs::read_dir(p.root().join("results"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["a.txt".to_string()], "{left:?}");
    // Cached the next time, and still a failure while the target is wrong.
    let r = run(&p, &f);
    assert!(matches!(r["a"], Status::Failed { .. }), "{r:?}");
    std::fs::remove_dir_all(p.root().join("results/a.txt")).unwrap();
    let r = run(&p, &f);
    assert_eq!(r["a"], Status::Cached);
    assert_eq!(
        std::fs::read_to_string(p.root().join("results/a.txt")).unwrap(),
        "0"
    );
}

#[test]
fn data_inputs_stay_inside_the_data_root() {
    let p = Project::new();
    let data = p.root().join("data");
    std::fs::create_dir_all(data.join("ok")).unwrap();
    std::fs::write(data.join("ok/out.txt"), "1").unwrap();
    let head = "data_root = \"../data\"\n[stages.a]\nkind = \"num\"\n";
    for bad in ["data:../secret", "data:/etc", "data:ok/../../x"] {
        let e = config_error(&p, &format!("{head}inputs = {{ a = \"{bad}\" }}\n"));
        assert!(
            e.contains("bad.toml:4:") && e.contains("data root"),
            "{bad}: {e}"
        );
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc", data.join("etc")).unwrap();
        let e = config_error(&p, &format!("{head}inputs = {{ a = \"data:etc\" }}\n"));
        assert!(e.contains("outside"), "{e}");
    }
    let f = p.write(
        "ok.toml",
        &format!("{head}inputs = {{ a = \"data:ok\" }}\n"),
    );
    assert!(run(&p, &f).values().all(Status::ok));
}

#[test]
fn nan_and_inf_parameters_must_be_finite() {
    let p = Project::new();
    let e = config_error(
        &p,
        "[stages.a]\nkind = \"num\"\n[stages.a.params]\nsalt = 1\nvalue = nan\n",
    );
    assert!(
        e.contains("bad.toml:5:1") && e.contains("must be finite"),
        "{e}"
    );
    let e = config_error(
        &p,
        "[stages.a]\nkind = \"num\"\nparams = { value = -inf }\n",
    );
    assert!(
        e.contains("bad.toml:3:") && e.contains("must be finite"),
        "{e}"
    );
    let f = p.write("ok.toml", "[stages.a]\nkind = \"num\"\n");
    let e = build(&f, &["a.value=inf"]).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("--set a.value=inf"), "{e}");
}

#[test]
fn unknown_table_metric_is_a_user_error_naming_the_nearest() {
    let p = Project::new();
    let f = p.write(
        "e.toml",
        "[stages.a]\nkind = \"num\"\n\n[[tables]]\nname = \"t\"\nstage = \"a\"\nmetrics = [\"value\", \"valeu\"]\n",
    );
    let r = run(&p, &f);
    assert_eq!(r["a"], Status::Ran);
    match &r["table:t"] {
        Status::Failed { message, user } => {
            assert!(*user, "{message}");
            assert!(
                message.contains("e.toml:7:1")
                    && message.contains("no metric `valeu`")
                    && message.contains("did you mean `value`"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!p.root().join("results/t.csv").exists());
}
