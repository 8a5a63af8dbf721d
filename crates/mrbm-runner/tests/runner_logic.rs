//! The runner's logic (schema errors, keys, plan reasons, early cutoff,
//! inputs changing mid-run) with small stage kinds defined here, so these
//! tests need no model training.

use std::collections::BTreeMap;
use std::path::Path;

use mrbm_runner::key::preview::{self, PlanStatus};
use mrbm_runner::kinds::registry::Registry;
use mrbm_runner::run::job::Status;
use mrbm_runner::store::hashing::Memo;
use mrbm_stage::{InputSlot, JsonValue, Metrics, ParamError, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

mod common;
use common::{assert_names, build, Project};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NumParams {
    #[serde(default)]
    value: f64,
    /// Output does not depend on it: for early-cutoff tests.
    #[serde(default)]
    salt: i64,
    #[serde(default)]
    sleep_ms: u64,
}

/// Writes `value` (plus the sum of its optional inputs) to out.txt.
struct Num(u32);
impl Stage for Num {
    fn kind(&self) -> &'static str {
        "num"
    }
    fn version(&self) -> u32 {
        self.0
    }
    fn inputs(&self) -> &'static [InputSlot] {
        const S: &[InputSlot] = &[
            InputSlot::optional("a", Some("out.txt"), "a number"),
            InputSlot::optional("b", Some("out.txt"), "a number"),
        ];
        S
    }
    fn params(&self, raw: &toml::Table) -> Result<JsonValue, ParamError> {
        mrbm_stage::canonical::<NumParams>(raw)
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics, StageError> {
        let p: NumParams = ctx.typed_params()?;
        std::thread::sleep(std::time::Duration::from_millis(p.sleep_ms));
        let mut v = p.value;
        for slot in ["a", "b"] {
            if let Some(path) = ctx.optional_input(slot) {
                let path = mrbm_stage::resolve_file(path, "out.txt");
                let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
                v += text.trim().parse::<f64>().map_err(StageError::failed)?;
            }
        }
        std::fs::write(ctx.out("out.txt"), format!("{v}"))
            .map_err(|e| StageError::io(ctx.out("out.txt"), e))?;
        Ok(Metrics::from([("value".to_string(), v)]))
    }
}

fn registry(version: u32) -> Registry {
    Registry::from_stages(vec![
        Box::new(Num(version)),
        Box::new(mrbm_runner::kinds::table::TableStage),
    ])
}

fn run(p: &Project, file: &Path, reg: &Registry, sets: &[&str]) -> Vec<(String, Status)> {
    let dag = build(file, reg, sets).unwrap();
    common::execute(p, &dag, reg)
}

fn plan_of(
    p: &Project,
    file: &Path,
    reg: &Registry,
    sets: &[&str],
) -> BTreeMap<String, PlanStatus> {
    let dag = build(file, reg, sets).unwrap();
    let store = p.store();
    preview::plan(&dag, &store, &Memo::load(&store.root))
        .unwrap()
        .into_iter()
        .map(|l| (l.id, l.status))
        .collect()
}

/// The stages of [`common::CHAIN`], mid swept, and a table of the top one.
const SWEPT_TABLE: &str = r#"
[sweep]
"mid.value" = [10.0, 20.0]

[[tables]]
name = "t"
stage = "top"
metric = "value"
rows = "value"
"#;

fn exp() -> String {
    format!("{}{SWEPT_TABLE}", common::CHAIN)
}

#[test]
fn second_run_is_all_cached_and_table_is_written() {
    let p = Project::new();
    let f = p.write("e.toml", &exp());
    let reg = registry(1);
    let first = run(&p, &f, &reg, &[]);
    assert!(first.iter().all(|(_, s)| *s == Status::Ran), "{first:?}");
    let ids: Vec<&str> = first.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "src",
            "mid[value=10.0]",
            "mid[value=20.0]",
            "top[value=10.0]",
            "top[value=20.0]",
            "table:t"
        ]
    );
    let second = run(&p, &f, &reg, &[]);
    assert!(
        second.iter().all(|(_, s)| *s == Status::Cached),
        "{second:?}"
    );
    let csv = std::fs::read_to_string(p.dir.path().join("results/t.csv")).unwrap();
    assert_eq!(csv, "value,value\n10.0,111.00\n20.0,121.00\n");
}

#[test]
fn the_summary_prints_each_table_from_memory_as_published() {
    let p = Project::new();
    let f = p.write("e.toml", &exp());
    let reg = registry(1);
    let dag = build(&f, &reg, &[]).unwrap();
    let results = common::results(&dag, &reg, &p.store());
    let published = p.dir.path().join("results/t.csv");
    let csv = std::fs::read_to_string(&published).unwrap();
    let rows: Vec<Vec<String>> = csv
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    // Not read back: the summary has the cells' metrics in `results`.
    std::fs::remove_file(&published).unwrap();
    let printed = mrbm_runner::report::summary::tables(&dag, &results);
    assert_eq!(
        printed,
        format!(
            "\nt (results/t.csv)\n{}",
            mrbm_runner::kinds::table::render_aligned(&rows)
        )
    );
    assert!(printed.contains("20.0   121.00"), "{printed}");
}

#[test]
fn set_reruns_only_dependants_and_names_the_parameter() {
    let p = Project::new();
    let f = p.write("e.toml", &exp());
    let reg = registry(1);
    run(&p, &f, &reg, &[]);
    let plan = plan_of(&p, &f, &reg, &["top.value=5"]);
    assert_eq!(plan["src"], PlanStatus::Cached);
    assert_eq!(plan["mid[value=10.0]"], PlanStatus::Cached);
    match &plan["top[value=10.0]"] {
        PlanStatus::Run(why) => assert!(why.contains("value: 100.0 -> 5.0"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&plan["table:t"], PlanStatus::Run(why) if why.contains("top[")),
        "{:?}",
        plan["table:t"]
    );
}

#[test]
fn renaming_reordering_and_reformatting_change_no_key() {
    let p = Project::new();
    let f = p.write("e.toml", &exp());
    let reg = registry(1);
    run(&p, &f, &reg, &[]);
    let renamed = r#"
# same experiment, other names, order and spelling
[[tables]]
rows = "value"
metric = "value"
stage = "last"
name = "t"

[sweep]
"middle.value" = [1e1, 2.0e1]

[stages.last]
params = { value = 1e2 }
inputs = { a = "middle" }
kind = "num"

[stages.first]
kind = "num"
params.value = 1.0
params.salt = 0   # the default, written out

[stages.middle]
inputs.a = "first"
kind = "num"
params = { value = 10.0 }
"#;
    let g = p.write("renamed.toml", renamed);
    let plan = plan_of(&p, &g, &reg, &[]);
    for (id, s) in &plan {
        if !id.starts_with("table:") {
            assert_eq!(*s, PlanStatus::Cached, "{id}");
        }
    }
}

#[test]
fn identical_upstream_output_leaves_downstream_cached() {
    let p = Project::new();
    let f = p.write("e.toml", &exp());
    run(&p, &f, &registry(1), &[]);
    // `salt` changes src's key but not its output bytes: src reruns and
    // everything downstream stays cached (early cutoff).
    let r = run(&p, &f, &registry(1), &["src.salt=3"]);
    let st: BTreeMap<_, _> = r.into_iter().collect();
    assert_eq!(st["src"], Status::Ran);
    assert_eq!(st["mid[value=10.0]"], Status::Cached);
    assert_eq!(st["top[value=20.0]"], Status::Cached);
}

#[test]
fn config_errors_name_file_line_col_and_fix() {
    let p = Project::new();
    let reg = registry(1);
    let err = |text: &str| -> String {
        let f = p.write("bad.toml", text);
        match build(&f, &reg, &[]) {
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.to_string()
            }
            Ok(_) => panic!("accepted: {text}"),
        }
    };
    let e = err("[stages.a]\nkind = \"numm\"\n");
    assert!(
        e.contains("bad.toml:2:8") && e.contains("did you mean `num`"),
        "{e}"
    );
    let e = err("[stages.a]\nkind = \"num\"\nparams = { valeu = 1 }\n");
    assert!(
        e.contains("bad.toml:3:12") && e.contains("did you mean `value`"),
        "{e}"
    );
    let e = err("[stages.a]\nkind = \"num\"\nparms = { value = 1 }\n");
    assert!(
        e.contains("bad.toml:3:1") && e.contains("did you mean `params`"),
        "{e}"
    );
    let e = err("[stages.a]\nkind = \"num\"\ninputs = { a = \"b\" }\n[stages.b]\nkind = \"num\"\ninputs = { a = \"c\" }\n[stages.c]\nkind = \"num\"\ninputs = { a = \"a\" }\n");
    // Data flows b -> a -> c -> b; the report may start anywhere on the loop.
    assert!(
        ["a -> c -> b -> a", "b -> a -> c -> b", "c -> b -> a -> c"]
            .iter()
            .any(|c| e.contains(&format!("cycle: {c}"))),
        "{e}"
    );
    assert!(e.contains("bad.toml:"), "{e}");
    let e = err(
        "[stages.a]\nkind = \"num\"\ninputs = { a = \"srcc\" }\n[stages.src]\nkind = \"num\"\n",
    );
    assert_names(
        &e,
        &[
            "bad.toml:3:12",
            "names no stage",
            "did you mean stage `src`",
        ],
    );
    let e = err("[stages.a\nkind = \"num\"\n");
    assert!(e.contains("bad.toml:1:"), "{e}");
    let e = err("[stages.a]\nkind = \"num\"\n[sweep]\n\"b.value\" = [1]\n");
    assert!(
        e.contains("bad.toml:4:1") && e.contains("no stage `b`"),
        "{e}"
    );
    // Two axes setting one parameter: a cell would take either silently.
    let e = err("[stages.a]\nkind = \"num\"\n[sweep.x.p]\n\"a.value\" = 1\n[sweep.x.q]\n[sweep.y.r]\n\"a.value\" = 2\n");
    assert!(
        e.contains("bad.toml:6:")
            && e.contains("sweep axes `x` and `y` both set `a.value`")
            && e.contains("in one axis only"),
        "{e}"
    );
}

#[test]
fn missing_external_input_fails_that_stage_only() {
    let p = Project::new();
    let f = p.write("e.toml", "[stages.a]\nkind = \"num\"\ninputs = { a = \"../nowhere/x.txt\" }\n[stages.b]\nkind = \"num\"\n");
    let r: BTreeMap<_, _> = run(&p, &f, &registry(1), &[]).into_iter().collect();
    match &r["a"] {
        Status::Failed { message, user } => {
            assert!(*user);
            assert!(
                message.contains("e.toml:3:16") && message.contains("does not exist"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r["b"], Status::Ran);
}

#[test]
fn input_changed_while_running_is_not_cached() {
    let p = Project::new();
    let input = p.dir.path().join("in.txt");
    std::fs::write(&input, "1").unwrap();
    let f = p.write("e.toml", &format!("[stages.a]\nkind = \"num\"\ninputs = {{ a = \"{}\" }}\nparams = {{ sleep_ms = 600 }}\n", input.display()));
    let writer = {
        let input = input.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(250));
            std::fs::write(&input, "22").unwrap();
        })
    };
    let r = run(&p, &f, &registry(1), &[]);
    writer.join().unwrap();
    match &r[0].1 {
        Status::Failed { message, .. } => assert!(message.contains("changed while"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(p.store().keys().is_empty());
}

/// A named variant can set a stage's input (`"STAGE.inputs.SLOT"`): another
/// stage, a file of it, or an external path; cells without it keep the
/// declared input, and a missing external file fails only its own cells.
#[test]
fn variants_set_inputs_per_cell() {
    let p = Project::new();
    std::fs::write(p.dir.path().join("experiments").join("five.txt"), "5").unwrap();
    let f = p.write(
        "v.toml",
        r#"
[stages.one]
kind = "num"
params = { value = 1.0 }

[stages.two]
kind = "num"
params = { value = 2.0 }

[stages.top]
kind = "num"
inputs = { a = "one" }

[sweep.src.first]
"top.value" = 0.0
[sweep.src.second]
"top.inputs.a" = "two/out.txt"
[sweep.src.file]
"top.inputs.a" = "five.txt"
[sweep.src.absent]
"top.inputs.a" = "../nowhere/x.txt"

[[tables]]
name = "v"
stage = "top"
metric = "value"
rows = "src"
"#,
    );
    let r: BTreeMap<_, _> = run(&p, &f, &registry(1), &[]).into_iter().collect();
    assert_eq!(r["top[src=first]"], Status::Ran);
    assert!(
        matches!(&r["top[src=absent]"], Status::Failed { user: true, .. }),
        "{:?}",
        r["top[src=absent]"]
    );
    let csv = std::fs::read_to_string(p.dir.path().join("results/v.csv")).unwrap();
    // Variant rows come in the order the file declares them.
    assert_eq!(
        csv,
        "src,value\nfirst,1.00\nsecond,2.00\nfile,5.00\nabsent,missing\n"
    );
    // An unknown slot is a located error.
    let bad = p.write(
        "bad_slot.toml",
        "[stages.a]\nkind = \"num\"\n[sweep.x.y]\n\"a.inputs.zz\" = \"five.txt\"\n",
    );
    let e = build(&bad, &registry(1), &[]).unwrap_err().to_string();
    assert!(e.contains("has no input `zz`"), "{e}");
}

#[test]
fn type_errors_point_at_the_key_not_the_table() {
    let p = Project::new();
    let reg = registry(1);
    let f = p.write(
        "typed.toml",
        "[stages.a]\nkind = \"num\"\n[stages.a.params]\n\nvalue = \"ten\"\n",
    );
    let e = build(&f, &reg, &[])
        .expect_err("a string for a number")
        .to_string();
    // Line 5 holds `value`; line 3 is the [stages.a.params] header.
    assert!(
        e.contains("typed.toml:5:1") && e.contains("invalid type"),
        "{e}"
    );
}

/// Two stages, two cells of one stage, or a stage and a table publishing to
/// the same results path would overwrite each other: a config error (exit
/// 2) that names both and points at the second declaration's line.
#[test]
fn publish_collisions_are_config_errors_naming_both() {
    let p = Project::new();
    let reg = registry(1);
    let err = |text: &str| -> String {
        let f = p.write("pub.toml", text);
        match build(&f, &reg, &[]) {
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.to_string()
            }
            Ok(_) => panic!("accepted: {text}"),
        }
    };
    let two_stages = "[stages.a]\nkind = \"num\"\npublish = { \"out.txt\" = \"results/x.txt\" }\n\n[stages.b]\nkind = \"num\"\npublish = { \"out.txt\" = \"results/x.txt\" }\n";
    let e = err(two_stages);
    assert_names(
        &e,
        &[
            "pub.toml:7:13",
            "pub.toml:3:13",
            "stage `a`",
            "stage `b`",
            "results/x.txt",
        ],
    );
    // One stage swept over an axis its template does not name.
    let cells = "[stages.a]\nkind = \"num\"\npublish = { \"out.txt\" = \"results/x.txt\" }\n[sweep]\n\"a.value\" = [1.0, 2.0]\n";
    let e = err(cells);
    assert_names(
        &e,
        &[
            "stage `a[value=1.0]`",
            "stage `a[value=2.0]`",
            "pub.toml:3:13",
            "{value}",
        ],
    );
    // A stage publishing onto a table's CSV.
    let table = "[stages.a]\nkind = \"num\"\npublish = { \"out.txt\" = \"results/t.csv\" }\n\n[[tables]]\nname = \"t\"\nstage = \"a\"\nmetric = \"value\"\n";
    let e = err(table);
    assert_names(
        &e,
        &["pub.toml:6:1", "table `t` and stage `a`", "pub.toml:3:13"],
    );
    // With the axis in the template, every cell has its own path.
    let ok = p.write(
        "ok.toml",
        "[stages.a]\nkind = \"num\"\npublish = { \"out.txt\" = \"results/x_{value}.txt\" }\n[sweep]\n\"a.value\" = [1.0, 2.0]\n",
    );
    let dag = build(&ok, &reg, &[]).unwrap();
    assert_eq!(dag.nodes.len(), 2);
}

#[test]
fn collect_takes_any_input_name_and_prefixes_its_metrics_by_it() {
    let p = Project::new();
    let f = p.write(
        "e.toml",
        r#"
[stages.x]
kind = "num"
params = { value = 2.0 }

[stages.y]
kind = "num"
params = { value = 5.0 }

[stages.both]
kind = "collect"
inputs = { judge_annealed = "x", svm = "y" }

[[tables]]
name = "t"
stage = "both"
metrics = ["judge_annealed_value", "svm_value"]
"#,
    );
    let reg = Registry::from_stages(vec![
        Box::new(Num(1)),
        Box::new(mrbm_runner::kinds::collect::CollectStage),
        Box::new(mrbm_runner::kinds::table::TableStage),
    ]);
    let r = run(&p, &f, &reg, &[]);
    assert!(r.iter().all(|(_, s)| *s == Status::Ran), "{r:?}");
    let csv = std::fs::read_to_string(p.dir.path().join("results/t.csv")).unwrap();
    assert!(csv.ends_with("2.00,5.00\n"), "{csv}");
    // A kind with closed slots still refuses an unknown name.
    let g = p.write(
        "g.toml",
        "[stages.x]\nkind = \"num\"\n[stages.z]\nkind = \"num\"\ninputs = { c = \"x\" }\n",
    );
    let e = build(&g, &reg, &[]).unwrap_err().to_string();
    assert!(e.contains("unknown input `c`"), "{e}");
}
