//! `mrbm report`: one self-contained HTML page about one recorded run: its
//! tables (with the reference values an experiment declares beside them),
//! loss curves (each model's, and overlaid along each sweep axis), every
//! numeric metric along each sweep axis, sample and reconstruction grids, and
//! provenance (commit, device, hosts, timings).
//!
//! Everything is inline: images are PNGs in `data:` URIs, the style sheet
//! is in the page, there is no script and no external URL, so the file
//! opens from `file://` with no network and can be mailed as it is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use mrbm_plot::YScale;

use crate::error::RunnerError;
use crate::kinds::table;
use crate::report::history::{self, Run};
use crate::store::{self, Manifest, Store};

/// Stage kinds whose metrics are not plotted along the sweep axes: a
/// table's cells are plotted from their own stages.
const NOT_ALONG_AXES: &[&str] = &[table::KIND];

/// Metrics never plotted along an axis (timings, not results).
const NOT_PLOTTED: &[&str] = &["seconds"];

/// What `mrbm report` was asked for.
#[derive(Debug, Clone)]
pub struct ReportRequest {
    /// A run id (or unique prefix), or an experiment name or file: its
    /// newest run. None: the newest run of all.
    pub run: Option<String>,
    pub out: PathBuf,
    /// linear, log or symlog: the loss curves' y axis.
    pub y_scale: String,
}

/// `mrbm report`: write the page and say where it is.
pub fn command(store: &Store, req: &ReportRequest) -> Result<u8, RunnerError> {
    let scale = YScale::parse(&req.y_scale).map_err(|e| RunnerError::Usage(e.to_string()))?;
    if let Some(sel) = &req.run {
        history::refuse_unreadable(&store.root, sel)?;
    }
    let runs = history::load_all(&store.root);
    let run = pick_run(&runs, req.run.as_deref(), &store.root)?;
    let html = render(store, run, scale)?;
    if let Some(dir) = req.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| RunnerError::Usage(format!("--out {}: {e}", req.out.display())))?;
    }
    store::write_atomic(&req.out, html.as_bytes())?;
    let shown = std::fs::canonicalize(&req.out).unwrap_or_else(|_| req.out.clone());
    println!(
        "report of run {} ({}): {} (file://{})",
        run.id,
        run.experiment,
        req.out.display(),
        shown.display()
    );
    Ok(0)
}

/// The run a report is about: an id prefix, else the newest run of an
/// experiment so named, else (no selector) the newest run.
pub fn pick_run<'a>(
    runs: &'a [Run],
    sel: Option<&str>,
    root: &Path,
) -> Result<&'a Run, RunnerError> {
    let Some(sel) = sel else {
        return runs.last().ok_or_else(|| {
            RunnerError::Usage(format!(
                "no recorded runs in {} (run an experiment first: mrbm run experiments/quickstart.toml)",
                root.display()
            ))
        });
    };
    if runs.iter().any(|r| r.id.starts_with(sel)) {
        return history::find(runs, sel);
    }
    runs.iter()
        .rev()
        .find(|r| history::matches(r, sel))
        .ok_or_else(|| {
            RunnerError::Usage(format!(
                "`{sel}` is neither a run id nor an experiment with recorded runs (see `mrbm runs`)"
            ))
        })
}

/// Escape text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

fn img_tag(png: &[u8], alt: &str) -> String {
    format!(
        "<img alt=\"{}\" src=\"data:image/png;base64,{}\">",
        esc(alt),
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// A node of the run with its cache entry, when the entry is still there.
struct Entry<'a> {
    id: &'a str,
    status: &'a str,
    key: Option<&'a str>,
    manifest: Option<Manifest>,
    out: Option<PathBuf>,
}

impl Entry<'_> {
    fn kind(&self) -> &str {
        self.manifest.as_ref().map_or("", |m| m.kind.as_str())
    }
    fn file(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.out.as_ref()?.join(name)).ok()
    }
}

/// `stage[a=1,b=x]` -> ("stage", [(a, 1), (b, x)]).
pub fn split_id(id: &str) -> (&str, Vec<(&str, &str)>) {
    match id.split_once('[') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix(']').unwrap_or(rest);
            let axes = inner
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            (name, axes)
        }
        None => (id, Vec::new()),
    }
}

fn short(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

const STYLE: &str = "
body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1180px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
th.ref,td.ref{background:#fff6dd;font-style:italic}
.meta td{text-align:left}.note{color:#666;font-size:.9em}
figure{display:inline-block;margin:.4em .8em .8em 0;vertical-align:top}figcaption{font-size:.85em;color:#444}
img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}
nav a{margin-right:1em}code{background:#f4f4f4;padding:0 .2em}
";

/// The report page of `run`.
pub fn render(store: &Store, run: &Run, scale: YScale) -> Result<String, RunnerError> {
    let entries: Vec<Entry> = run
        .nodes
        .iter()
        .map(|n| {
            let manifest = n.key.as_deref().and_then(|k| store.manifest(k).ok());
            Entry {
                id: &n.id,
                status: &n.status,
                key: n.key.as_deref(),
                out: manifest
                    .as_ref()
                    .map(|m| store.out_dir(&m.key))
                    .filter(|d| d.is_dir()),
                manifest,
            }
        })
        .collect();
    let mut h = String::new();
    let title = format!("mrbm report: {} (run {})", run.experiment, run.id);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    let _ = writeln!(
        h,
        "<p class=\"note\">{} &middot; commit <code>{}</code>{} &middot; device {} &middot; mrbm {}</p>",
        esc(&run.time),
        esc(&short(&run.git_commit, 12)),
        if run.git_dirty == Some(true) { " (uncommitted changes)" } else { "" },
        esc(&run.device),
        esc(&run.mrbm_version)
    );
    h.push_str("<nav><a href=\"#tables\">Tables</a><a href=\"#axes\">Along the sweep axes</a><a href=\"#loss\">Loss curves</a><a href=\"#images\">Samples and reconstructions</a><a href=\"#provenance\">Provenance</a></nav>\n");
    tables(&mut h, &entries);
    axes(&mut h, &entries)?;
    losses(&mut h, &entries, scale)?;
    images(&mut h, &entries);
    provenance(&mut h, run, &entries);
    h.push_str("</body>\n</html>\n");
    Ok(h)
}

fn tables(h: &mut String, entries: &[Entry]) {
    h.push_str("<h2 id=\"tables\">Tables</h2>\n");
    let mut any = false;
    for e in entries.iter().filter(|e| e.kind() == table::KIND) {
        let Some(csv_bytes) = e.file("table.csv") else {
            continue;
        };
        any = true;
        let m = e.manifest.as_ref().expect("kind comes from the manifest");
        let name = m
            .params
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or(e.id);
        let refs: Vec<String> = m
            .params
            .get("reference")
            .and_then(|v| v.as_object())
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(csv_bytes.as_slice());
        let rows: Vec<Vec<String>> = rd
            .records()
            .flatten()
            .map(|r| r.iter().map(str::to_string).collect())
            .collect();
        let _ = writeln!(h, "<h3>{}</h3>", esc(name));
        let Some(header) = rows.first() else {
            continue;
        };
        let is_ref: Vec<bool> = header.iter().map(|c| refs.contains(c)).collect();
        h.push_str("<table class=\"results\">\n<tr>");
        for (c, r) in header.iter().zip(&is_ref) {
            let _ = write!(
                h,
                "<th{}>{}</th>",
                if *r { " class=\"ref\"" } else { "" },
                esc(c)
            );
        }
        h.push_str("</tr>\n");
        for row in &rows[1..] {
            h.push_str("<tr>");
            for (i, c) in row.iter().enumerate() {
                let r = is_ref.get(i).copied().unwrap_or(false);
                let _ = write!(
                    h,
                    "<td{}>{}</td>",
                    if r { " class=\"ref\"" } else { "" },
                    esc(c)
                );
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
        if !refs.is_empty() {
            let _ = writeln!(
                h,
                "<p class=\"note\">Shaded, in italics: the reference values this table declares ({}).</p>",
                esc(&refs.join(", "))
            );
        }
    }
    if !any {
        h.push_str("<p class=\"note\">This run has no tables in the cache.</p>\n");
    }
}

/// A stage instance's axis values and metrics.
type AxisCell<'a> = (Vec<(&'a str, &'a str)>, &'a BTreeMap<String, f64>);

/// Small plots of every numeric metric of every stage (but tables and
/// timings) along each sweep axis with two values or more; the other
/// axes' values give the series. Numeric axes are lines, categorical
/// ones markers only (`mrbm_plot::axis_chart`).
fn axes(h: &mut String, entries: &[Entry]) -> Result<(), RunnerError> {
    h.push_str("<h2 id=\"axes\">Along the sweep axes</h2>\n");
    // stage name -> [(axes, metrics)]
    let mut by_stage: BTreeMap<&str, Vec<AxisCell>> = BTreeMap::new();
    let mut kinds: BTreeMap<&str, &str> = BTreeMap::new();
    for e in entries {
        let Some(m) = e
            .manifest
            .as_ref()
            .filter(|m| !NOT_ALONG_AXES.contains(&m.kind.as_str()))
        else {
            continue;
        };
        let (name, ax) = split_id(e.id);
        kinds.insert(name, &m.kind);
        by_stage.entry(name).or_default().push((ax, &m.metrics));
    }
    let mut n_plots = 0;
    for (stage, cells) in &by_stage {
        let mut axis_names: Vec<&str> = Vec::new();
        for (ax, _) in cells {
            for (a, _) in ax {
                if !axis_names.contains(a) {
                    axis_names.push(a);
                }
            }
        }
        let mut metric_names: Vec<&String> = cells
            .iter()
            .flat_map(|(_, m)| m.keys())
            .filter(|k| !NOT_PLOTTED.contains(&k.as_str()) && !mrbm_stage::is_timing_metric(k))
            .collect();
        metric_names.sort();
        metric_names.dedup();
        for axis in &axis_names {
            let mut values: Vec<&str> = Vec::new();
            for (ax, _) in cells {
                if let Some((_, v)) = ax.iter().find(|(a, _)| a == axis) {
                    if !values.contains(v) {
                        values.push(v);
                    }
                }
            }
            if values.len() < 2 {
                continue;
            }
            let _ = writeln!(
                h,
                "<h3>{} ({}) along {}</h3>",
                esc(stage),
                esc(kinds[stage]),
                esc(axis)
            );
            let mut constant: Vec<&str> = Vec::new();
            for metric in &metric_names {
                let series = series_along(cells, axis, &values, metric);
                let finite: Vec<f64> = series
                    .iter()
                    .flat_map(|(_, v)| v.iter().flatten())
                    .copied()
                    .collect();
                if finite.is_empty() {
                    continue;
                }
                // A metric with one value in every cell (a count, a
                // setting echoed back) is named, not drawn as a flat line.
                if finite.len() > 1 && finite.iter().all(|v| *v == finite[0]) {
                    constant.push(metric);
                    continue;
                }
                let chart = mrbm_plot::axis_chart(
                    &format!("{stage}: {metric}"),
                    axis,
                    metric,
                    values.iter().map(|s| s.to_string()).collect(),
                    series,
                );
                let png = mrbm_plot::render_png(&chart)
                    .map_err(|e| RunnerError::Data(format!("plotting {stage} {metric}: {e}")))?;
                let _ = writeln!(
                    h,
                    "<figure>{}<figcaption>{} along {}</figcaption></figure>",
                    img_tag(&png, &format!("{stage}: {metric} along {axis}")),
                    esc(metric),
                    esc(axis)
                );
                n_plots += 1;
            }
            if !constant.is_empty() {
                let _ = writeln!(
                    h,
                    "<p class=\"note\">The same in every cell, so not drawn: {}.</p>",
                    esc(&constant.join(", "))
                );
            }
        }
    }
    if n_plots == 0 {
        h.push_str(
            "<p class=\"note\">No stage with metrics and a sweep axis of two values or more.</p>\n",
        );
    }
    Ok(())
}

/// A loss curve with its legend label.
type Labelled<'a> = (String, &'a mrbm_plot::LossHistory);

/// One chart per train stage and sweep axis (and setting of its other
/// axes) with two cells or more: their loss curves overlaid, one line per
/// value of the axis.
fn overlays(
    h: &mut String,
    curves: &[(&str, mrbm_plot::LossHistory)],
    scale: YScale,
) -> Result<(), RunnerError> {
    // (stage, axis, other axes' setting) -> [(axis value, curve)]
    let mut groups: BTreeMap<(&str, &str, String), Vec<Labelled>> = BTreeMap::new();
    for (id, curve) in curves {
        let (stage, ax) = split_id(id);
        for (axis, value) in &ax {
            let others = ax
                .iter()
                .filter(|(a, _)| a != axis)
                .map(|(a, v)| format!("{a}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            groups
                .entry((stage, axis, others))
                .or_default()
                .push((format!("{axis}={value}"), curve));
        }
    }
    for ((stage, axis, others), runs) in groups.iter().filter(|(_, r)| r.len() > 1) {
        let title = if others.is_empty() {
            format!("{stage} along {axis}")
        } else {
            format!("{stage}[{others}] along {axis}")
        };
        let png = mrbm_plot::render_png(&mrbm_plot::loss_overlay_chart(&title, runs, scale))
            .map_err(|err| RunnerError::Data(format!("plotting {title}: {err}")))?;
        let _ = writeln!(
            h,
            "<figure>{}<figcaption>{} (overlaid)</figcaption></figure>",
            img_tag(&png, &format!("loss curves of {title}")),
            esc(&title)
        );
    }
    Ok(())
}

/// One series per setting of the other axes: the metric's value at each
/// of the axis's values (None where a cell lacks it or it is not finite).
fn series_along(
    cells: &[AxisCell],
    axis: &str,
    values: &[&str],
    metric: &str,
) -> Vec<(String, Vec<Option<f64>>)> {
    let mut series: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    for (ax, m) in cells {
        let Some(pos) = ax
            .iter()
            .find(|(a, _)| *a == axis)
            .and_then(|(_, v)| values.iter().position(|x| x == v))
        else {
            continue;
        };
        let label = ax
            .iter()
            .filter(|(a, _)| *a != axis)
            .map(|(a, v)| format!("{a}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let i = match series.iter().position(|(l, _)| *l == label) {
            Some(i) => i,
            None => {
                series.push((label, vec![None; values.len()]));
                series.len() - 1
            }
        };
        series[i].1[pos] = m.get(metric).copied().filter(|v| v.is_finite());
    }
    series
}

fn losses(h: &mut String, entries: &[Entry], scale: YScale) -> Result<(), RunnerError> {
    h.push_str("<h2 id=\"loss\">Loss curves</h2>\n");
    let _ = writeln!(
        h,
        "<p class=\"note\">First the cells of each sweep axis overlaid (moving means), then each model's own chart. Grey: the loss per step; lines: moving means. The y axis ({}) spans the 1st to 99th percentile: values beyond are drawn at its edge and counted in the title. Numbers: each stage's loss file (<code>loss.csv</code> for train).</p>",
        scale.name()
    );
    let reg = crate::kinds::registry::Registry::builtin();
    let curves: Vec<(&str, mrbm_plot::LossHistory)> = entries
        .iter()
        .filter_map(|e| {
            let file = reg.get(e.kind())?.loss_curve()?;
            let b = e.file(file)?;
            Some((
                e.id,
                mrbm_plot::LossHistory::parse_csv(&String::from_utf8_lossy(&b))?,
            ))
        })
        .collect();
    overlays(h, &curves, scale)?;
    let mut any = false;
    for (id, curve) in &curves {
        let png = mrbm_plot::render_png(&mrbm_plot::loss_chart(curve, id, scale))
            .map_err(|err| RunnerError::Data(format!("plotting the loss of {id}: {err}")))?;
        let _ = writeln!(
            h,
            "<figure>{}<figcaption>{}</figcaption></figure>",
            img_tag(&png, &format!("loss curve of {id}")),
            esc(id)
        );
        any = true;
    }
    if !any {
        h.push_str("<p class=\"note\">No trained model of this run is in the cache.</p>\n");
    }
    Ok(())
}

/// Every PNG a stage wrote other than its loss curve (sample grids,
/// reconstructions, colourisations).
fn images(h: &mut String, entries: &[Entry]) {
    h.push_str("<h2 id=\"images\">Samples and reconstructions</h2>\n");
    let mut any = false;
    for e in entries {
        let Some(m) = &e.manifest else { continue };
        for f in m
            .files
            .keys()
            .filter(|f| f.ends_with(".png") && *f != "loss.png")
        {
            let Some(png) = e.file(f) else { continue };
            let _ = writeln!(
                h,
                "<figure>{}<figcaption>{} ({}) <code>{}</code></figcaption></figure>",
                img_tag(&png, &format!("{} {f}", e.id)),
                esc(e.id),
                esc(&m.kind),
                esc(f)
            );
            any = true;
        }
    }
    if !any {
        h.push_str("<p class=\"note\">No stage of this run drew images.</p>\n");
    }
}

fn provenance(h: &mut String, run: &Run, entries: &[Entry]) {
    h.push_str("<h2 id=\"provenance\">Provenance</h2>\n<table class=\"meta\">\n");
    let mut hosts: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.manifest.as_ref().map(|m| m.host.as_str()))
        .collect();
    hosts.sort();
    hosts.dedup();
    let ran: f64 = entries
        .iter()
        .filter(|e| e.status == "ran")
        .filter_map(|e| e.manifest.as_ref().map(|m| m.seconds))
        .sum();
    let all: f64 = entries
        .iter()
        .filter_map(|e| e.manifest.as_ref().map(|m| m.seconds))
        .sum();
    let dirty = match run.git_dirty {
        Some(true) => " (uncommitted changes)",
        Some(false) => " (clean)",
        None => "",
    };
    let rows: Vec<(&str, String)> = vec![
        ("run", run.id.clone()),
        ("time (UTC)", run.time.clone()),
        ("experiment", format!("{} ({})", run.experiment, run.file)),
        ("profile", run.profile.clone().unwrap_or("-".into())),
        (
            "--set",
            if run.overrides.is_empty() {
                "-".into()
            } else {
                run.overrides.join("  ")
            },
        ),
        (
            "--sweep",
            if run.sweeps.is_empty() {
                "-".into()
            } else {
                run.sweeps.join("  ")
            },
        ),
        ("git commit", format!("{}{dirty}", run.git_commit)),
        ("mrbm", run.mrbm_version.clone()),
        ("device", run.device.clone()),
        (
            "hosts",
            if hosts.is_empty() {
                "-".into()
            } else {
                hosts.join(", ")
            },
        ),
        ("stage time, computed in this run", format!("{ran:.1} s")),
        (
            "stage time, all entries when computed",
            format!("{all:.1} s"),
        ),
        (
            "pinned",
            if run.pinned {
                "yes".into()
            } else {
                "no".into()
            },
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    h.push_str("</table>\n<h3>Stages</h3>\n<table class=\"stages\">\n<tr><th>stage</th><th>kind</th><th>this run</th><th>seconds</th><th>device</th><th>host</th><th>computed at</th><th>key</th></tr>\n");
    for e in entries {
        let (kind, secs, dev, host, started) = match &e.manifest {
            Some(m) => (
                m.kind.clone(),
                format!("{:.2}", m.seconds),
                m.device.clone(),
                m.host.clone(),
                m.started.clone(),
            ),
            None => Default::default(),
        };
        let key = match (e.key, &e.manifest) {
            (Some(k), Some(_)) => short(k, 12),
            (Some(k), None) => format!("{} (no longer in the cache)", short(k, 12)),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(e.id),
            esc(&kind),
            esc(e.status),
            esc(&secs),
            esc(&dev),
            esc(&host),
            esc(&started),
            esc(&key)
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_split_into_stage_and_axes() {
        assert_eq!(split_id("svm"), ("svm", vec![]));
        assert_eq!(
            split_id("sample[N=1,lr=0.03]"),
            ("sample", vec![("N", "1"), ("lr", "0.03")])
        );
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn runs_are_picked_by_id_then_experiment_then_newest() {
        let mk = |id: &str, exp: &str| Run {
            id: id.into(),
            experiment: exp.into(),
            file: format!("experiments/{exp}.toml"),
            ..Default::default()
        };
        let runs = vec![mk("aa1", "q"), mk("bb2", "q"), mk("cc3", "other")];
        let root = Path::new("cache");
        assert_eq!(pick_run(&runs, None, root).unwrap().id, "cc3");
        assert_eq!(pick_run(&runs, Some("aa"), root).unwrap().id, "aa1");
        assert_eq!(pick_run(&runs, Some("q"), root).unwrap().id, "bb2");
        let e = pick_run(&runs, Some("zz"), root).unwrap_err().to_string();
        assert!(e.contains("mrbm runs"), "{e}");
        assert!(pick_run(&[], None, root).is_err());
    }
}
