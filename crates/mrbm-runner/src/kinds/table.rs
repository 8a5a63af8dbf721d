//! The `table` stage kind: rows and columns from sweep values, cells from
//! the metrics of one stage's cells; written as CSV (published to
//! results/NAME.csv) and printed aligned. A cell whose stage failed or was
//! skipped is written as `missing`, so one absent data set does not lose
//! the rest of the table. Beside it goes provenance.json (published to
//! results/NAME.provenance.json): per cell, the stage, cache key, device
//! and mrbm version that computed it, from that entry's manifest
//! (`ctx.upstream`). The device is not part of any key, so this file is
//! where it is recorded. When and on which host a cell ran, and for how
//! long, change with every rerun: they stay in the entry's manifest
//! (`mrbm show KEY`), the run's record and its report, never in results/,
//! so a rerun that reproduces a table leaves `git status` clean.
//!
//! The table's logic lives here: the grid ([`build_grid`], also what the
//! run summary prints from memory), the hash its key takes of each cell
//! ([`input_hash`]) and the check of the metrics it names
//! ([`unknown_metric`]); `dag::tables` only expands `[[tables]]` into nodes.

use std::collections::BTreeMap;

use mrbm_stage::{
    InputSlot, JsonValue, Metrics, ParamError, Stage, StageContext, StageError, Upstream,
};
use serde::{Deserialize, Serialize};

use crate::store::hashing;
use crate::store::Manifest;

// 2: writes provenance.json beside table.csv.
// 3: provenance.json without host, start time, seconds and Slurm job.
// 4: provenance.json names each cell by its stage id in this experiment
//    (a cached entry keeps the id of the run that made it, elsewhere).
/// The kind's name, which the plan gives the node of each `[[tables]]`.
pub const KIND: &str = "table";
pub const VERSION: u32 = 4;
pub const MISSING: &str = "missing";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableCell {
    pub slot: String,
    /// The cell's stage id in this experiment. Part of the table's key:
    /// provenance.json names the cells by it, so a renamed stage reruns the
    /// table (cheap) while its own entry, whose key ignores names, stays.
    #[serde(default)]
    pub id: String,
    pub row: String,
    pub column: Option<String>,
    /// The cell's values of the table's row levels ([`TableParams::levels`]),
    /// in their order. Absent from the key when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<String>,
}

impl TableCell {
    /// The cell's row for people: `LEVEL=V/.../ROW` with row levels, else ROW.
    pub fn row_label(&self, p: &TableParams) -> String {
        let mut parts: Vec<String> = p
            .levels
            .iter()
            .zip(&self.levels)
            .map(|(a, v)| format!("{a}={v}"))
            .collect();
        parts.push(self.row.clone());
        parts.join("/")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableParams {
    pub name: String,
    pub metrics: Vec<String>,
    pub rows: Option<String>,
    pub columns: Option<String>,
    pub row_order: Vec<String>,
    pub column_order: Vec<String>,
    pub cells: Vec<TableCell>,
    /// column -> row -> value (e.g. the paper's numbers).
    pub reference: BTreeMap<String, BTreeMap<String, toml::Value>>,
    pub precision: usize,
    /// Computed extra columns (another stage's metric per row), after the
    /// sweep's columns. Absent from the key when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<ExtraCell>,
    /// How the cells that share a row and column (those of sweep axes the
    /// table names neither as rows nor as columns) are combined: mean, min
    /// or max. Absent from the key when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<String>,
    /// With `aggregate`: the spread of the combined cells beside each
    /// column, "std" (sample standard deviation, one column `<header> std`)
    /// or "range" (two columns, `<header> min` and `<header> max`). Absent
    /// from the key when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<String>,
    /// Sweep axes from `--sweep` that the table names neither as rows nor
    /// as columns: each is an extra row level, a column before the row
    /// axis's, so no table edit is needed (README "Run history, comparing
    /// runs, sweeps from the command line"). Absent from the key when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<String>,
    /// Each level's values in sweep order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub level_orders: Vec<Vec<String>>,
}

/// The values `aggregate` takes.
pub const AGGREGATES: [&str; 3] = ["mean", "min", "max"];

/// The values `spread` takes.
pub const SPREADS: [&str; 2] = ["std", "range"];

/// The header suffixes of the columns a spread adds after each column.
pub fn spread_suffixes(how: &str) -> &'static [&'static str] {
    match how {
        "range" => &["min", "max"],
        _ => &["std"],
    }
}

/// The spread columns' values of several cells (None when there are none):
/// the sample standard deviation (n - 1; 0 for one value), or min and max.
pub fn spread(how: &str, values: &[f64]) -> Option<Vec<f64>> {
    if values.is_empty() {
        return None;
    }
    if values.iter().any(|v| v.is_nan()) {
        return Some(vec![f64::NAN; spread_suffixes(how).len()]);
    }
    Some(match how {
        "range" => vec![aggregate("min", values)?, aggregate("max", values)?],
        _ => {
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
            vec![if values.len() > 1 {
                (ss / (n - 1.0)).sqrt()
            } else {
                0.0
            }]
        }
    })
}

/// Combine the values of several cells; None when there are none.
pub fn aggregate(how: &str, values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    if values.iter().any(|v| v.is_nan()) {
        return Some(f64::NAN);
    }
    Some(match how {
        "min" => values.iter().copied().fold(f64::INFINITY, f64::min),
        "max" => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        _ => values.iter().sum::<f64>() / values.len() as f64,
    })
}

/// One value of a computed extra column.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtraCell {
    pub slot: String,
    pub header: String,
    pub metric: String,
    pub row: String,
    /// Its values of the table's row levels, when its stage has them
    /// (else it fills the row at every level). Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<String>,
}

pub struct TableStage;

impl Stage for TableStage {
    fn kind(&self) -> &'static str {
        "table"
    }
    fn about(&self) -> &'static str {
        "a results table (declared with [[tables]])"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn inputs(&self) -> &'static [InputSlot] {
        &[]
    }
    fn params(&self, raw: &toml::Table) -> Result<JsonValue, ParamError> {
        mrbm_stage::canonical::<TableParams>(raw)
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics, StageError> {
        let p: TableParams = ctx.typed_params()?;
        let grid = build_grid(&p, |slot| ctx.upstream(slot).map(|u| u.metrics.clone()));
        let mut w = csv::Writer::from_writer(Vec::new());
        for row in &grid {
            w.write_record(row).map_err(StageError::failed)?;
        }
        let bytes = w.into_inner().map_err(StageError::failed)?;
        mrbm_stage::write_atomic(&ctx.out("table.csv"), &bytes)?;
        let prov = provenance(&p, |slot| ctx.upstream(slot));
        let text = serde_json::to_string_pretty(&prov).map_err(StageError::failed)?;
        mrbm_stage::write_atomic(&ctx.out("provenance.json"), text.as_bytes())?;
        Ok(Metrics::new())
    }
}

/// The hash a table's key takes of one cell's entry: the metrics the table
/// names, with their values (a missing one as absent). Timing metrics count
/// only when the table names them.
pub fn input_hash(params: &JsonValue, m: &Manifest) -> String {
    let mut wanted: Vec<&str> = params
        .get("metrics")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    // Computed extra columns name their own metric.
    if let Some(extra) = params.get("extra").and_then(|v| v.as_array()) {
        wanted.extend(extra.iter().filter_map(|x| x.get("metric")?.as_str()));
    }
    wanted.sort_unstable();
    wanted.dedup();
    let picked: BTreeMap<&str, Option<f64>> = wanted
        .iter()
        .map(|w| (*w, m.metrics.get(*w).copied()))
        .collect();
    hashing::hash_bytes(&serde_json::to_vec(&picked).expect("json"))
}

/// Where each cell came from: stage, key, device and mrbm version; the
/// devices used, once each, at the top. Missing cells say so. Nothing that
/// changes from one run to the next (host, start time, seconds, Slurm job):
/// the file is published into results/ and pinned there.
pub fn provenance<'a>(
    p: &TableParams,
    entry_of: impl Fn(&str) -> Option<&'a Upstream>,
) -> JsonValue {
    let mut devices: Vec<String> = Vec::new();
    let cells: Vec<JsonValue> = p
        .cells
        .iter()
        .map(|c| {
            let mut o = serde_json::json!({ "row": c.row, "column": c.column });
            if !c.levels.is_empty() {
                o["levels"] = serde_json::json!(c.levels);
            }
            match entry_of(&c.slot) {
                Some(m) => {
                    if !devices.contains(&m.device) {
                        devices.push(m.device.clone());
                    }
                    // The cell's id here: keys ignore names, so the entry
                    // may have been made by another experiment's stage.
                    o["stage"] = c.id.as_str().into();
                    o["key"] = m.key.as_str().into();
                    o["device"] = m.device.as_str().into();
                    o["mrbm"] = m.tool_version.as_str().into();
                }
                None => o["status"] = MISSING.into(),
            }
            o
        })
        .collect();
    let mut prov = serde_json::json!({ "table": p.name, "devices": devices, "cells": cells });
    if !p.levels.is_empty() {
        prov["row_levels"] = serde_json::json!({
            "axes": p.levels,
            "note": "added by --sweep: the table names these axes neither as rows nor as columns, so each is a row level (a column before the rows)",
        });
    }
    prov
}

fn fmt_value(v: f64, precision: usize) -> String {
    if v.is_finite() {
        format!("{v:.precision$}")
    } else {
        v.to_string()
    }
}

/// The table as rows of strings, header first.
pub fn build_grid(
    p: &TableParams,
    metrics_of: impl Fn(&str) -> Option<BTreeMap<String, f64>>,
) -> Vec<Vec<String>> {
    let rows = grid_rows(p);
    // Column headers: per column-axis value (x metric when several), or per metric.
    let mut cols: Vec<(Option<String>, String, String)> = Vec::new(); // (axis value, metric, header)
    if let Some(axis) = &p.columns {
        let mut values = p.column_order.clone();
        for c in &p.cells {
            if let Some(v) = &c.column {
                if !values.contains(v) {
                    values.push(v.clone());
                }
            }
        }
        for v in values {
            for m in &p.metrics {
                let header = if p.metrics.len() == 1 {
                    format!("{axis}={v}")
                } else {
                    format!("{m} {axis}={v}")
                };
                cols.push((Some(v.clone()), m.clone(), header));
            }
        }
    } else {
        for m in &p.metrics {
            cols.push((None, m.clone(), m.clone()));
        }
    }
    let mut extra_headers: Vec<(String, String)> = Vec::new(); // (header, metric)
    for x in &p.extra {
        if !extra_headers.iter().any(|(h, _)| h == &x.header) {
            extra_headers.push((x.header.clone(), x.metric.clone()));
        }
    }
    let spread_how = p.aggregate.as_ref().and(p.spread.as_deref());
    let mut header = p.levels.clone();
    header.push(p.rows.clone().unwrap_or_else(|| "stage".into()));
    for (_, _, h) in &cols {
        header.push(h.clone());
        if let Some(how) = spread_how {
            header.extend(spread_suffixes(how).iter().map(|s| format!("{h} {s}")));
        }
    }
    header.extend(extra_headers.iter().map(|(h, _)| h.clone()));
    header.extend(p.reference.keys().cloned());
    let mut out = vec![header];
    for (lv, r) in rows {
        let mut line = lv.clone();
        line.push(r.clone());
        for (v, m, _) in &cols {
            let cells: Vec<&TableCell> = p
                .cells
                .iter()
                .filter(|c| {
                    c.row == r && c.levels == lv && (v.is_none() || c.column.as_ref() == v.as_ref())
                })
                .collect();
            line.extend(column_texts(p, &cells, m, &metrics_of));
        }
        for (h, m) in &extra_headers {
            let cell = p
                .extra
                .iter()
                .find(|x| &x.header == h && x.row == r && (x.levels.is_empty() || x.levels == lv));
            let text = cell
                .and_then(|c| metrics_of(&c.slot))
                .map(|ms| {
                    ms.get(m)
                        .map(|x| fmt_value(*x, p.precision))
                        .unwrap_or_else(|| format!("no metric {m}"))
                })
                .unwrap_or_else(|| MISSING.to_string());
            line.push(text);
        }
        for refs in p.reference.values() {
            line.push(match refs.get(&r) {
                Some(toml::Value::Float(f)) => fmt_value(*f, p.precision),
                Some(toml::Value::Integer(i)) => i.to_string(),
                Some(toml::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            });
        }
        out.push(line);
    }
    out
}

/// The table's rows: (row-level values, row), in sweep order. Without row
/// levels, every value of the row axis (a row whose cells all failed
/// stays, as `missing`); with them, each combination that has a cell.
fn grid_rows(p: &TableParams) -> Vec<(Vec<String>, String)> {
    let mut rows: Vec<String> = p.row_order.clone();
    for c in &p.cells {
        if !rows.contains(&c.row) {
            rows.push(c.row.clone());
        }
    }
    if p.levels.is_empty() {
        return rows.into_iter().map(|r| (Vec::new(), r)).collect();
    }
    let rank = |order: &[String], v: &String| order.iter().position(|x| x == v);
    let mut out: Vec<(Vec<String>, String)> = Vec::new();
    for c in &p.cells {
        let t = (c.levels.clone(), c.row.clone());
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out.sort_by_key(|(lv, r)| {
        let mut k: Vec<Option<usize>> = lv
            .iter()
            .enumerate()
            .map(|(i, v)| rank(p.level_orders.get(i).map_or(&[][..], |o| o), v))
            .collect();
        k.push(rank(&rows, r));
        k
    });
    out
}

/// The texts one column contributes to a row: the value of its cell, or
/// with `aggregate` the combination of its cells and, with `spread`, the
/// spread's columns after it.
fn column_texts(
    p: &TableParams,
    cells: &[&TableCell],
    m: &str,
    metrics_of: &impl Fn(&str) -> Option<BTreeMap<String, f64>>,
) -> Vec<String> {
    let Some(how) = &p.aggregate else {
        return vec![cells
            .first()
            .and_then(|c| metrics_of(&c.slot))
            .map(|ms| {
                ms.get(m)
                    .map(|x| fmt_value(*x, p.precision))
                    .unwrap_or_else(|| format!("no metric {m}"))
            })
            .unwrap_or_else(|| MISSING.to_string())];
    };
    let spread_how = p.spread.as_deref();
    let width = 1 + spread_how.map_or(0, |s| spread_suffixes(s).len());
    // Every cell must be there: a mean over the cells that happened to
    // succeed would read as the mean over all.
    let all: Option<Vec<Option<f64>>> = cells
        .iter()
        .map(|c| metrics_of(&c.slot).map(|ms| ms.get(m).copied()))
        .collect();
    let vals: Vec<f64> = match all {
        None => return vec![MISSING.to_string(); width],
        Some(vals) if vals.iter().any(Option::is_none) => {
            return vec![format!("no metric {m}"); width]
        }
        Some(vals) => vals.into_iter().flatten().collect(),
    };
    let mut out = vec![aggregate(how, &vals)
        .map(|x| fmt_value(x, p.precision))
        .unwrap_or_else(|| MISSING.to_string())];
    if let Some(sp) = spread_how {
        match spread(sp, &vals) {
            Some(xs) => out.extend(xs.iter().map(|x| fmt_value(*x, p.precision))),
            None => out.extend(std::iter::repeat_n(MISSING.to_string(), width - 1)),
        }
    }
    out
}

/// Align a CSV's rows for the terminal.
pub fn render_aligned(rows: &[Vec<String>]) -> String {
    let ncol = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncol)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if c == 0 {
                    format!("{v:<w$}", w = widths[c])
                } else {
                    format!("{v:>w$}", w = widths[c])
                }
            })
            .collect();
        s.push_str(cells.join("  ").trim_end());
        s.push('\n');
        if i == 0 {
            s.push_str(
                &widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  "),
            );
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metrics read back from a manifest are the very f64s written, so a
    /// table's key is the same in the run that computed its cells and in
    /// the next one that finds them cached. serde_json's default parser
    /// read 1.9381369221187295 (a real quickstart metric) back as
    /// 1.9381369221187297, and the quickstart's sample table reran on
    /// every second run.
    #[test]
    fn metrics_survive_the_manifest_round_trip_bit_for_bit() {
        let values = [
            1.9381369221187295f64,
            0.5185871994297981,
            1.0 / 3.0,
            2.0f64.sqrt(),
            1e-300,
            123456.789012345,
        ];
        for v in values {
            let text = serde_json::to_string(&BTreeMap::from([("m", v)])).unwrap();
            let back: BTreeMap<String, f64> = serde_json::from_str(&text).unwrap();
            assert_eq!(
                back["m"].to_bits(),
                v.to_bits(),
                "{v} came back as {}",
                back["m"]
            );
        }
    }

    #[test]
    fn grid_has_rows_columns_reference_and_missing() {
        let cell = |slot: &str, row: &str, col: &str| TableCell {
            slot: slot.into(),
            id: slot.into(),
            row: row.into(),
            column: Some(col.into()),
            levels: vec![],
        };
        let mut reference = BTreeMap::new();
        reference.insert(
            "paper N=1".to_string(),
            BTreeMap::from([("mnist".to_string(), toml::Value::Float(2.44))]),
        );
        let p = TableParams {
            name: "t".into(),
            metrics: vec!["test_error".into()],
            rows: Some("dataset".into()),
            columns: Some("N".into()),
            row_order: vec!["mnist".into(), "cifar".into()],
            column_order: vec!["1".into(), "255".into()],
            cells: vec![
                cell("a", "mnist", "1"),
                cell("b", "mnist", "255"),
                cell("c", "cifar", "1"),
                cell("d", "cifar", "255"),
            ],
            reference,
            precision: 2,
            extra: vec![ExtraCell {
                slot: "x".into(),
                header: "baseline".into(),
                metric: "test_error".into(),
                row: "mnist".into(),
                levels: vec![],
            }],
            aggregate: None,
            spread: None,
            levels: vec![],
            level_orders: vec![],
        };
        let g = build_grid(&p, |slot| {
            (slot == "a" || slot == "b" || slot == "x").then(|| {
                BTreeMap::from([(
                    "test_error".to_string(),
                    match slot {
                        "a" => 2.5,
                        "b" => 1.25,
                        _ => 7.0,
                    },
                )])
            })
        });
        assert_eq!(
            g[0],
            vec!["dataset", "N=1", "N=255", "baseline", "paper N=1"]
        );
        assert_eq!(g[1], vec!["mnist", "2.50", "1.25", "7.00", "2.44"]);
        assert_eq!(g[2], vec!["cifar", MISSING, MISSING, MISSING, ""]);
        let text = render_aligned(&g);
        assert!(text.lines().nth(2).unwrap().starts_with("mnist "));
    }

    #[test]
    fn row_levels_split_rows_and_aggregate_within_them() {
        let cell = |slot: &str, lv: &str, row: &str| TableCell {
            slot: slot.into(),
            id: String::new(),
            row: row.into(),
            column: None,
            levels: vec![lv.into()],
        };
        let p = TableParams {
            name: "t".into(),
            metrics: vec!["err".into()],
            rows: Some("N".into()),
            columns: None,
            row_order: vec!["1".into(), "2".into()],
            column_order: vec![],
            // Two seeds per (lr, N), listed out of order.
            cells: vec![
                cell("a", "0.1", "2"),
                cell("b", "0.1", "2"),
                cell("c", "0.01", "1"),
                cell("d", "0.01", "1"),
                cell("e", "0.1", "1"),
                cell("f", "0.1", "1"),
            ],
            reference: BTreeMap::new(),
            precision: 2,
            extra: vec![],
            aggregate: Some("mean".into()),
            spread: None,
            levels: vec!["train.lr".into()],
            level_orders: vec![vec!["0.01".into(), "0.1".into()]],
        };
        let val = |slot: &str| {
            let x = match slot {
                "a" => 1.0,
                "b" => 3.0,
                "c" => 10.0,
                "d" => 20.0,
                "e" => 5.0,
                _ => 7.0,
            };
            Some(BTreeMap::from([("err".to_string(), x)]))
        };
        let g = build_grid(&p, val);
        assert_eq!(
            g,
            vec![
                vec!["train.lr", "N", "err"],
                vec!["0.01", "1", "15.00"],
                vec!["0.1", "1", "6.00"],
                vec!["0.1", "2", "2.00"],
            ]
        );
        assert_eq!(p.cells[0].row_label(&p), "train.lr=0.1/2");
        let prov = provenance(&p, |_| None);
        assert_eq!(prov["row_levels"]["axes"][0], "train.lr");
        // Without levels neither the key nor the provenance changes.
        let mut q = p.clone();
        q.levels.clear();
        q.level_orders.clear();
        q.cells.iter_mut().for_each(|c| c.levels.clear());
        let json = serde_json::to_string(&q).unwrap();
        assert!(!json.contains("level"), "{json}");
    }

    #[test]
    fn aggregate_combines_the_cells_of_unnamed_axes() {
        let cell = |slot: &str, row: &str| TableCell {
            slot: slot.into(),
            id: String::new(),
            row: row.into(),
            column: None,
            levels: vec![],
        };
        let mut p = TableParams {
            name: "t".into(),
            metrics: vec!["err".into()],
            rows: Some("N".into()),
            columns: None,
            row_order: vec!["1".into(), "2".into()],
            column_order: vec![],
            // Two seeds per row.
            cells: vec![
                cell("a", "1"),
                cell("b", "1"),
                cell("c", "2"),
                cell("d", "2"),
            ],
            reference: BTreeMap::new(),
            precision: 2,
            extra: vec![],
            aggregate: Some("mean".into()),
            spread: None,
            levels: vec![],
            level_orders: vec![],
        };
        let metrics = |slot: &str| {
            let v = match slot {
                "a" => 1.0,
                "b" => 2.0,
                "c" => 4.0,
                _ => return None,
            };
            Some(BTreeMap::from([("err".to_string(), v)]))
        };
        let g = build_grid(&p, metrics);
        assert_eq!(g[1], vec!["1", "1.50"]);
        // One seed of N=2 failed: no mean over the rest.
        assert_eq!(g[2], vec!["2", MISSING]);
        p.aggregate = Some("max".into());
        assert_eq!(build_grid(&p, metrics)[1], vec!["1", "2.00"]);
        p.aggregate = Some("min".into());
        assert_eq!(build_grid(&p, metrics)[1], vec!["1", "1.00"]);
        // Without aggregate the key of an existing table is unchanged.
        p.aggregate = None;
        assert!(serde_json::to_value(&p).unwrap().get("aggregate").is_none());
        assert!(serde_json::to_value(&p).unwrap().get("spread").is_none());
    }

    #[test]
    fn spread_adds_std_or_range_columns_after_each_aggregated_column() {
        let cell = |slot: &str, row: &str| TableCell {
            slot: slot.into(),
            id: String::new(),
            row: row.into(),
            column: None,
            levels: vec![],
        };
        let mut p = TableParams {
            name: "t".into(),
            metrics: vec!["err".into()],
            rows: Some("N".into()),
            columns: None,
            row_order: vec!["1".into(), "2".into()],
            column_order: vec![],
            cells: vec![
                cell("a", "1"),
                cell("b", "1"),
                cell("c", "1"),
                cell("d", "2"),
            ],
            reference: BTreeMap::new(),
            precision: 3,
            extra: vec![],
            aggregate: Some("mean".into()),
            spread: Some("std".into()),
            levels: vec![],
            level_orders: vec![],
        };
        let metrics = |slot: &str| {
            let v = match slot {
                "a" => 1.0,
                "b" => 2.0,
                "c" => 6.0,
                "d" => 5.0,
                _ => return None,
            };
            Some(BTreeMap::from([("err".to_string(), v)]))
        };
        let g = build_grid(&p, metrics);
        assert_eq!(g[0], vec!["N", "err", "err std"]);
        // mean 3, sample variance ((4 + 1 + 9) / 2) = 7.
        assert_eq!(g[1], vec!["1", "3.000", &format!("{:.3}", 7f64.sqrt())]);
        // One cell: no spread to speak of.
        assert_eq!(g[2], vec!["2", "5.000", "0.000"]);
        p.spread = Some("range".into());
        let g = build_grid(&p, metrics);
        assert_eq!(g[0], vec!["N", "err", "err min", "err max"]);
        assert_eq!(g[1], vec!["1", "3.000", "1.000", "6.000"]);
        // A missing cell fills every column of its group.
        p.cells.push(cell("e", "2"));
        assert_eq!(
            build_grid(&p, metrics)[2],
            vec!["2", MISSING, MISSING, MISSING]
        );
    }

    #[test]
    fn provenance_names_each_cells_device_and_marks_missing_ones() {
        let p = TableParams {
            name: "t".into(),
            metrics: vec!["test_error".into()],
            rows: Some("N".into()),
            columns: None,
            row_order: vec!["1".into(), "255".into()],
            column_order: vec![],
            cells: vec![
                TableCell {
                    slot: "a".into(),
                    id: "svm[N=1]".into(),
                    row: "1".into(),
                    column: None,
                    levels: vec![],
                },
                TableCell {
                    slot: "b".into(),
                    id: String::new(),
                    row: "255".into(),
                    column: None,
                    levels: vec![],
                },
            ],
            reference: BTreeMap::new(),
            precision: 2,
            extra: vec![],
            aggregate: None,
            spread: None,
            levels: vec![],
            level_orders: vec![],
        };
        let a = Upstream {
            key: "k".repeat(64),
            // Made by another experiment's stage (keys ignore names).
            stage_id: "svm[model=elsewhere]".into(),
            kind: "svm".into(),
            device: "wgpu:0 (llvmpipe)".into(),
            started: "2026-11-23T00:00:00Z".into(),
            seconds: 1.5,
            tool_version: "mrbm 0.1.0".into(),
            host: "h".into(),
            ..Upstream::default()
        };
        let prov = provenance(&p, |slot| (slot == "a").then_some(&a));
        assert_eq!(prov["devices"], serde_json::json!(["wgpu:0 (llvmpipe)"]));
        assert_eq!(prov["cells"][0]["device"], "wgpu:0 (llvmpipe)");
        assert_eq!(prov["cells"][0]["stage"], "svm[N=1]");
        assert_eq!(prov["cells"][1]["status"], MISSING);
        assert!(prov["cells"][1].get("device").is_none());
        // Nothing that a rerun changes: the file is pinned in results/.
        for volatile in ["host", "started", "seconds", "executor_job", "slurm_job"] {
            assert!(
                prov["cells"][0].get(volatile).is_none(),
                "{volatile}: {prov}"
            );
        }
        let b = Upstream {
            host: "other".into(),
            started: "2027-01-01T00:00:00Z".into(),
            seconds: 9.0,
            executor_job: Some("42".into()),
            ..a.clone()
        };
        assert_eq!(prov, provenance(&p, |slot| (slot == "a").then_some(&b)));
    }
}
