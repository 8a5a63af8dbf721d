//! Readable PNG plots for mrbm, drawn with [plotters]: loss curves (axes,
//! ticks, title, legend; linear, log or symlog y; y limits from percentiles
//! so the first steps' spike does not flatten the rest) and small plots of
//! a metric along a sweep axis.
//!
//! Text is drawn with DejaVu Sans compiled into the binary (plotters'
//! `ab_glyph` backend): no system font is looked up and nothing is read at
//! run time, so a plot looks the same on every machine.

use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// The font every plot's text is drawn with (Bitstream Vera licence, see
/// fonts/LICENSE-DejaVu.txt).
static FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the compiled-in font could not be read")]
    Font,
    #[error("drawing {what}: {message}")]
    Draw { what: String, message: String },
    #[error("{0}")]
    User(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn font() -> Result<(), PlotError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok()
            && plotters::style::register_font(FAMILY, FontStyle::Bold, FONT).is_ok()
    });
    ok.then_some(()).ok_or(PlotError::Font)
}

/// How values map to the y axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum YScale {
    #[default]
    Linear,
    /// log10; values at or below zero are left out.
    Log,
    /// sign(y) * log10(1 + |y| / c), c = [`SYMLOG_C`]: logarithmic far from
    /// zero, linear near it, defined for negative values (the RBM losses
    /// can be negative).
    Symlog,
}

/// The linear threshold of [`YScale::Symlog`].
pub const SYMLOG_C: f64 = 1.0;

impl YScale {
    pub fn parse(s: &str) -> Result<YScale, PlotError> {
        match s {
            "linear" => Ok(YScale::Linear),
            "log" => Ok(YScale::Log),
            "symlog" => Ok(YScale::Symlog),
            _ => Err(PlotError::User(format!(
                "y scale `{s}`: expected linear, log or symlog"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            YScale::Linear => "linear",
            YScale::Log => "log",
            YScale::Symlog => "symlog",
        }
    }
    /// The plotted coordinate of `v`; None where the scale cannot show it.
    pub fn forward(self, v: f64) -> Option<f64> {
        if !v.is_finite() {
            return None;
        }
        match self {
            YScale::Linear => Some(v),
            YScale::Log => (v > 0.0).then(|| v.log10()),
            YScale::Symlog => Some(v.signum() * (v.abs() / SYMLOG_C).ln_1p() / 10f64.ln()),
        }
    }
    /// The value at plotted coordinate `t` (the inverse of `forward`).
    pub fn inverse(self, t: f64) -> f64 {
        match self {
            YScale::Linear => t,
            YScale::Log => 10f64.powf(t),
            YScale::Symlog => t.signum() * SYMLOG_C * (10f64.powf(t.abs()) - 1.0),
        }
    }
}

/// The `p`-th percentile (0..=100) of `values` by linear interpolation
/// between order statistics; None when no value is finite.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let r = (p.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64;
    let (i, f) = (r.floor() as usize, r - r.floor());
    Some(if i + 1 < v.len() {
        v[i] + f * (v[i + 1] - v[i])
    } else {
        v[i]
    })
}

/// The y range to show: from the `lo`-th to the `hi`-th percentile of the
/// (plotted) values, widened by `pad` of that span on each side, and never
/// empty. With lo = 0 and hi = 100 it holds every value.
pub fn y_limits(values: &[f64], lo: f64, hi: f64, pad: f64) -> Option<(f64, f64)> {
    let a = percentile(values, lo)?;
    let b = percentile(values, hi)?;
    let span = b - a;
    if span <= f64::EPSILON * a.abs().max(b.abs()).max(1.0) {
        let d = (a.abs() * 0.1).max(1e-3);
        return Some((a - d, b + d));
    }
    Some((a - pad * span, b + pad * span))
}

/// The y range of a chart: [`y_limits`] from the percentiles, narrowed to
/// Tukey's fences (`k` IQRs beyond the quartiles) when asked.
pub fn limits(values: &[f64], pct: (f64, f64), fence: Option<f64>) -> (f64, f64) {
    let Some((mut lo, mut hi)) = y_limits(values, pct.0, pct.1, 0.0) else {
        return (0.0, 1.0);
    };
    if let (Some(k), Some(q1), Some(q3)) =
        (fence, percentile(values, 25.0), percentile(values, 75.0))
    {
        let iqr = q3 - q1;
        if iqr > 0.0 {
            lo = lo.max(q1 - k * iqr);
            hi = hi.min(q3 + k * iqr);
        }
    }
    let span = hi - lo;
    if span <= f64::EPSILON * lo.abs().max(hi.abs()).max(1.0) {
        let d = (lo.abs() * 0.1).max(1e-3);
        return (lo - d, hi + d);
    }
    (lo - 0.08 * span, hi + 0.08 * span)
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A thin light line (raw per-step values behind their running mean).
    Faint,
    /// A line in the palette colour with this index.
    Line(usize),
    /// A line with a marker at each point, in the palette colour.
    Points(usize),
    /// Markers only, no line (values of a categorical axis, which have no
    /// order to connect).
    Markers(usize),
}

/// One named line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
}

/// What a chart shows. The x axis is numeric, or categorical when
/// `x_categories` names its ticks (points then sit at x = 0, 1, ...).
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub y_scale: YScale,
    /// Percentiles (lo, hi) of all plotted values that bound the y axis;
    /// values beyond are drawn at its edge and counted in the title.
    pub y_percentiles: (f64, f64),
    /// Also keep the y axis within `k` interquartile ranges of the
    /// quartiles (Tukey's fences), so that one spike in a short series
    /// (where the 99th percentile is the spike itself) does not set it.
    pub y_fence: Option<f64>,
    pub x_categories: Option<Vec<String>>,
    pub width: u32,
    pub height: u32,
}

impl Chart {
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Chart {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            y_scale: YScale::Linear,
            y_percentiles: (0.0, 100.0),
            y_fence: None,
            x_categories: None,
            width: 720,
            height: 400,
        }
    }
}

/// Colour-blind-safe palette (Okabe and Ito).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];
const FAINT: RGBColor = RGBColor(190, 190, 190);

fn colour(style: Style) -> RGBColor {
    match style {
        Style::Faint => FAINT,
        Style::Line(i) | Style::Points(i) | Style::Markers(i) => PALETTE[i % PALETTE.len()],
    }
}

/// A tick label: short, without trailing zeros.
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || !v.is_finite() {
        return if v.is_finite() {
            "0".into()
        } else {
            v.to_string()
        };
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

fn draw_err<E: std::fmt::Debug>(what: &str) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError::Draw {
        what: what.to_string(),
        message: format!("{e:?}"),
    }
}

/// The x axis' range: the categories' slots, or the points' span (padded
/// when markers sit at the ends).
fn x_range(chart: &Chart, all_x: &[f64]) -> (f64, f64) {
    match &chart.x_categories {
        Some(c) => (-0.5, c.len().max(1) as f64 - 0.5),
        None => {
            let a = all_x.iter().copied().fold(f64::INFINITY, f64::min);
            let b = all_x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if !a.is_finite() {
                (0.0, 1.0)
            } else if b - a < 1e-12 {
                (a - 0.5, b + 0.5)
            } else if chart
                .series
                .iter()
                .any(|s| s.style != Style::Faint && !matches!(s.style, Style::Line(_)))
            {
                // Markers at the ends stay whole.
                let pad = 0.05 * (b - a);
                (a - pad, b + pad)
            } else {
                (a, b)
            }
        }
    }
}

/// The caption: the title, the y scale when not linear, and how many
/// points lie off the scale.
fn title(chart: &Chart, clipped: usize) -> String {
    let mut title = chart.title.clone();
    if chart.y_scale != YScale::Linear {
        title.push_str(&format!(" ({} y)", chart.y_scale.name()));
    }
    if clipped > 0 {
        title.push_str(&format!(" [{clipped} off-scale]"));
    }
    title
}

/// An RGB buffer of w x h as PNG bytes.
fn encode_png(w: u32, h: u32, buf: Vec<u8>) -> Result<Vec<u8>, PlotError> {
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| PlotError::Draw {
        what: "the picture".into(),
        message: "buffer size".into(),
    })?;
    // Best compression: these pictures are embedded in report pages.
    let mut out = Cursor::new(Vec::new());
    let enc = image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    );
    img.write_with_encoder(enc).map_err(draw_err("the PNG"))?;
    Ok(out.into_inner())
}

/// Draw `chart` and return it as PNG bytes.
pub fn render_png(chart: &Chart) -> Result<Vec<u8>, PlotError> {
    font()?;
    let (w, h) = (chart.width.max(200), chart.height.max(150));
    // The plotted (scaled) points; what the scale cannot show is left out.
    let scaled: Vec<Vec<(f64, f64)>> = chart
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|(x, _)| x.is_finite())
                .filter_map(|&(x, y)| chart.y_scale.forward(y).map(|t| (x, t)))
                .collect()
        })
        .collect();
    let all_y: Vec<f64> = scaled.iter().flatten().map(|p| p.1).collect();
    let all_x: Vec<f64> = scaled.iter().flatten().map(|p| p.0).collect();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err("the background"))?;
        let (lo, hi) = limits(&all_y, chart.y_percentiles, chart.y_fence);
        let clipped = all_y.iter().filter(|&&t| t < lo || t > hi).count();
        let title = title(chart, clipped);
        let (x0, x1) = x_range(chart, &all_x);
        let mut cc = ChartBuilder::on(&root)
            .caption(&title, (FAMILY, 18).into_font())
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(62)
            .build_cartesian_2d(x0..x1, lo..hi)
            .map_err(draw_err("the axes"))?;
        let scale = chart.y_scale;
        let y_fmt = move |t: &f64| tick_label(scale.inverse(*t));
        let cats = chart.x_categories.clone();
        let x_fmt = move |x: &f64| match &cats {
            Some(c) => {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < c.len() {
                    c[i as usize].clone()
                } else {
                    String::new()
                }
            }
            None => tick_label(*x),
        };
        let mut mesh = cc.configure_mesh();
        mesh.x_desc(&chart.x_label)
            .y_desc(&chart.y_label)
            .axis_desc_style((FAMILY, 14))
            .label_style((FAMILY, 12))
            .y_label_formatter(&y_fmt)
            .x_label_formatter(&x_fmt)
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(215, 215, 215));
        if let Some(c) = &chart.x_categories {
            // Ticks every half unit, so every category's tick is among them.
            mesh.x_labels(2 * c.len() + 1).disable_x_mesh();
        }
        mesh.draw().map_err(draw_err("the mesh"))?;
        let clamp = |(x, t): (f64, f64)| (x, t.clamp(lo, hi));
        for (s, pts) in chart.series.iter().zip(&scaled) {
            if pts.is_empty() {
                continue;
            }
            let c = colour(s.style);
            let stroke = match s.style {
                Style::Faint => 1,
                _ => 2,
            };
            if let Style::Markers(_) = s.style {
                let dots = pts
                    .iter()
                    .copied()
                    .map(clamp)
                    .map(|p| Circle::new(p, 5, c.filled()));
                let anno = cc.draw_series(dots).map_err(draw_err("markers"))?;
                if !s.label.is_empty() {
                    anno.label(s.label.clone())
                        .legend(move |(x, y)| Circle::new((x + 9, y), 5, c.filled()));
                }
                continue;
            }
            let line = LineSeries::new(pts.iter().copied().map(clamp), c.stroke_width(stroke));
            let anno = cc.draw_series(line).map_err(draw_err("a series"))?;
            if !s.label.is_empty() {
                anno.label(s.label.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(stroke))
                });
            }
            if let Style::Points(_) = s.style {
                cc.draw_series(
                    pts.iter()
                        .copied()
                        .map(clamp)
                        .map(|p| Circle::new(p, 4, c.filled())),
                )
                .map_err(draw_err("markers"))?;
            }
        }
        if chart.series.iter().any(|s| !s.label.is_empty()) {
            cc.configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .label_font((FAMILY, 12))
                .draw()
                .map_err(draw_err("the legend"))?;
        }
        root.present().map_err(draw_err("the picture"))?;
    }
    encode_png(w, h, buf)
}

/// Draw `chart` into a PNG file (written beside it, then renamed).
pub fn save_png(chart: &Chart, path: &Path) -> Result<(), PlotError> {
    let bytes = render_png(chart)?;
    let tmp = path.with_extension("png.partial");
    let io = |e| PlotError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A loss history as the train stage writes it (loss.csv: epoch, batch,
/// step, total, layer1, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossHistory {
    pub steps: Vec<f64>,
    pub epochs: Vec<f64>,
    pub total: Vec<f64>,
    /// (name, per-step values), one per layer.
    pub layers: Vec<(String, Vec<f64>)>,
}

impl LossHistory {
    /// Parse loss.csv; None when it is not one.
    pub fn parse_csv(text: &str) -> Option<LossHistory> {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.split(',').map(str::trim).collect();
        let col = |n: &str| header.iter().position(|h| *h == n);
        let (ie, is, it) = (col("epoch")?, col("step")?, col("total")?);
        let layer_cols: Vec<(usize, String)> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| h.starts_with("layer"))
            .map(|(i, h)| (i, h.to_string()))
            .collect();
        let mut h = LossHistory {
            layers: layer_cols
                .iter()
                .map(|(_, n)| (n.clone(), Vec::new()))
                .collect(),
            ..Default::default()
        };
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let f: Vec<f64> = line
                .split(',')
                .map(|x| x.trim().parse::<f64>().unwrap_or(f64::NAN))
                .collect();
            if f.len() < header.len() {
                return None;
            }
            h.epochs.push(f[ie]);
            h.steps.push(f[is]);
            h.total.push(f[it]);
            for (k, (i, _)) in layer_cols.iter().enumerate() {
                h.layers[k].1.push(f[*i]);
            }
        }
        Some(h)
    }
}

/// Moving mean over a centred window of `w` values (fewer at the ends);
/// NaN and infinite values are skipped. A spike moves at most `w` points.
pub fn moving_mean(v: &[f64], w: usize) -> Vec<f64> {
    let half = w.max(1) / 2;
    let mut sum = vec![0.0; v.len() + 1];
    let mut cnt = vec![0usize; v.len() + 1];
    for (i, &x) in v.iter().enumerate() {
        let ok = x.is_finite();
        sum[i + 1] = sum[i] + if ok { x } else { 0.0 };
        cnt[i + 1] = cnt[i] + ok as usize;
    }
    (0..v.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(v.len()));
            let n = cnt[b] - cnt[a];
            if n == 0 {
                f64::NAN
            } else {
                (sum[b] - sum[a]) / n as f64
            }
        })
        .collect()
}

/// The loss chart of one trained model: the total loss per step (faint),
/// its moving mean, and, for stacks of several layers, each layer's
/// moving mean; y limits from the 1st to the 99th percentile so the first
/// steps do not flatten the curve.
pub fn loss_chart(h: &LossHistory, title: &str, scale: YScale) -> Chart {
    let mut c = Chart::new(title, "training step", "loss (free-energy difference)");
    c.y_scale = scale;
    c.y_percentiles = (1.0, 99.0);
    c.y_fence = Some(3.0);
    let pts =
        |v: &[f64]| -> Vec<(f64, f64)> { h.steps.iter().copied().zip(v.iter().copied()).collect() };
    // A window of about 2 % of the steps: smooth, and a spike moves only
    // its own neighbourhood.
    let w = (h.total.len() / 50).clamp(1, 501) | 1;
    c.series.push(Series {
        label: "total, per step".into(),
        points: pts(&h.total),
        style: Style::Faint,
    });
    c.series.push(Series {
        label: format!("total, mean of {w} steps"),
        points: pts(&moving_mean(&h.total, w)),
        style: Style::Line(0),
    });
    if h.layers.len() > 1 {
        for (i, (name, v)) in h.layers.iter().enumerate() {
            c.series.push(Series {
                label: format!("{name}, mean of {w} steps"),
                points: pts(&moving_mean(v, w)),
                style: Style::Line(i + 1),
            });
        }
    }
    c
}

/// A metric along a sweep axis, one series per setting of the other axes.
/// When every axis value is a number the x axis is numeric and each series
/// a line through its points; otherwise the values are categories (in the
/// order given, labels cut to 14 characters) and each series is markers
/// only, side by side, since categories have no order to connect.
pub fn axis_chart(
    title: &str,
    axis: &str,
    metric: &str,
    categories: Vec<String>,
    series: Vec<(String, Vec<Option<f64>>)>,
) -> Chart {
    let mut c = Chart::new(title, axis, metric);
    c.width = 360;
    c.height = 260;
    let numeric: Option<Vec<f64>> = categories
        .iter()
        .map(|v| v.trim().parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect();
    let n = series.len();
    c.series = series
        .into_iter()
        .enumerate()
        .map(|(i, (label, vals))| {
            // Markers of several series at one category sit side by side.
            let shift = if n > 1 {
                (i as f64 - (n - 1) as f64 / 2.0) * (0.3 / n as f64)
            } else {
                0.0
            };
            let x_of = |k: usize| match &numeric {
                Some(xs) => xs[k],
                None => k as f64 + shift,
            };
            let mut points: Vec<(f64, f64)> = vals
                .iter()
                .enumerate()
                .filter_map(|(k, v)| v.map(|v| (x_of(k), v)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                label,
                points,
                style: if numeric.is_some() {
                    Style::Points(i)
                } else {
                    Style::Markers(i)
                },
            }
        })
        .collect();
    if numeric.is_none() {
        c.x_categories = Some(categories.iter().map(|v| cut(v, 14)).collect());
    }
    c
}

/// `s` cut to `n` characters, with an ellipsis when cut.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// Several models' loss curves on one chart (the cells of a sweep axis):
/// each one's moving mean of the total loss, labelled, y limits as in
/// [`loss_chart`] over all of them.
pub fn loss_overlay_chart(title: &str, runs: &[(String, &LossHistory)], scale: YScale) -> Chart {
    let mut c = Chart::new(title, "training step", "loss, moving mean");
    c.y_scale = scale;
    c.y_percentiles = (1.0, 99.0);
    c.y_fence = Some(3.0);
    for (i, (label, h)) in runs.iter().enumerate() {
        let w = (h.total.len() / 50).clamp(1, 501) | 1;
        c.series.push(Series {
            label: label.clone(),
            points: h
                .steps
                .iter()
                .copied()
                .zip(moving_mean(&h.total, w))
                .collect(),
            style: Style::Line(i),
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_axes_get_lines_and_categorical_ones_markers_only() {
        let s = || vec![("a".to_string(), vec![Some(1.0), Some(2.0)])];
        let c = axis_chart("t", "lr", "err", vec!["0.1".into(), "0.01".into()], s());
        assert_eq!(c.x_categories, None);
        assert_eq!(
            c.series[0].points,
            vec![(0.01, 2.0), (0.1, 1.0)],
            "in x order"
        );
        assert_eq!(c.series[0].style, Style::Points(0));
        let long = "a_very_long_dataset_name".to_string();
        let c = axis_chart("t", "data", "err", vec!["mnist".into(), long], s());
        assert_eq!(c.series[0].style, Style::Markers(0));
        assert_eq!(
            c.x_categories,
            Some(vec!["mnist".to_string(), "a_very_long_d…".to_string()])
        );
        assert_eq!(c.series[0].points, vec![(0.0, 1.0), (1.0, 2.0)]);
        // Two series at one category do not hide each other.
        let two = vec![
            ("a".to_string(), vec![Some(1.0), None]),
            ("b".to_string(), vec![Some(1.0), None]),
        ];
        let c = axis_chart("t", "data", "err", vec!["x".into(), "y".into()], two);
        assert!(c.series[0].points[0].0 < c.series[1].points[0].0);
        assert!(render_png(&c).unwrap().starts_with(b"\x89PNG"));
    }

    #[test]
    fn an_overlay_has_one_labelled_line_per_model() {
        let h = |k: f64| LossHistory {
            steps: (0..20).map(f64::from).collect(),
            epochs: vec![0.0; 20],
            total: (0..20).map(|i| k * f64::from(i)).collect(),
            layers: vec![],
        };
        let (a, b) = (h(1.0), h(2.0));
        let c = loss_overlay_chart(
            "t",
            &[("N=1".into(), &a), ("N=3".into(), &b)],
            YScale::Linear,
        );
        let labels: Vec<&str> = c.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["N=1", "N=3"]);
        assert_ne!(c.series[0].style, c.series[1].style);
        assert!(render_png(&c).unwrap().starts_with(b"\x89PNG"));
    }

    #[test]
    fn percentiles_interpolate_between_order_statistics() {
        let v = [4.0, 1.0, 3.0, 2.0, f64::NAN, 5.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(5.0));
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 12.5), Some(1.5));
        assert_eq!(percentile(&[f64::NAN], 50.0), None);
    }

    #[test]
    fn a_first_step_spike_does_not_set_the_y_range() {
        // 200 steps near 1 after one step at 1000.
        let mut v = vec![1000.0];
        v.extend((0..200).map(|i| 1.0 + (i % 10) as f64 * 0.01));
        let (lo, hi) = y_limits(&v, 1.0, 99.0, 0.08).unwrap();
        assert!(lo > 0.9 && hi < 1.2, "{lo}..{hi}");
        // Every value, when asked for.
        let (_, hi) = y_limits(&v, 0.0, 100.0, 0.0).unwrap();
        assert_eq!(hi, 1000.0);
        // A constant series still gets a range.
        let (lo, hi) = y_limits(&[2.0; 5], 0.0, 100.0, 0.1).unwrap();
        assert!(lo < 2.0 && hi > 2.0);
    }

    #[test]
    fn fences_drop_a_single_spike_of_a_short_series() {
        // 31 steps (the quickstart's one epoch): the 99th percentile is
        // the spike itself; the fences are not.
        let mut v = vec![1e7];
        v.extend((0..30).map(|i| 100.0 + i as f64));
        let (_, hi) = limits(&v, (1.0, 99.0), None);
        assert!(hi > 1e6);
        let (lo, hi) = limits(&v, (1.0, 99.0), Some(3.0));
        assert!(lo < 100.0 && hi > 129.0 && hi < 300.0, "{lo}..{hi}");
    }

    #[test]
    fn scales_invert_and_symlog_takes_negative_values() {
        for s in [YScale::Linear, YScale::Log, YScale::Symlog] {
            for v in [0.5, 3.0, 1234.5] {
                let t = s.forward(v).unwrap();
                assert!((s.inverse(t) - v).abs() < 1e-9 * v.max(1.0), "{s:?} {v}");
            }
        }
        assert_eq!(YScale::Log.forward(-1.0), None);
        assert_eq!(YScale::Log.forward(100.0), Some(2.0));
        // symlog: 9 -> log10(10) = 1, odd in y, 0 at 0.
        assert!((YScale::Symlog.forward(9.0).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(
            YScale::Symlog.forward(-9.0),
            Some(-YScale::Symlog.forward(9.0).unwrap())
        );
        assert_eq!(YScale::Symlog.forward(0.0), Some(0.0));
        assert!((YScale::Symlog.inverse(-1.0) + 9.0).abs() < 1e-12);
        assert!(YScale::parse("logit").is_err());
    }

    #[test]
    fn moving_means_skip_nan_and_shrink_at_the_ends() {
        let m = moving_mean(&[1.0, 2.0, f64::NAN, 4.0, 5.0], 3);
        assert_eq!(m[0], 1.5);
        assert_eq!(m[1], 1.5);
        assert_eq!(m[2], 3.0);
        assert_eq!(m[4], 4.5);
        assert!(moving_mean(&[f64::NAN], 3)[0].is_nan());
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(1200.0), "1200");
        assert_eq!(tick_label(-0.0), "0");
        assert_eq!(tick_label(0.12345), "0.1235");
        assert_eq!(tick_label(2.5e7), "2.5e7");
    }

    #[test]
    fn loss_csv_parses_with_its_layers() {
        let h = LossHistory::parse_csv(
            "epoch,batch,step,total,layer1,layer2\n1,1,1,3,1,2\n1,2,2,1.5,0.5,1\n",
        )
        .unwrap();
        assert_eq!(h.steps, vec![1.0, 2.0]);
        assert_eq!(h.total, vec![3.0, 1.5]);
        assert_eq!(h.layers[1], ("layer2".to_string(), vec![2.0, 1.0]));
        assert!(LossHistory::parse_csv("a,b\n1,2\n").is_none());
    }

    /// Count pixels of the palette colour `c` (exactly) in a PNG.
    fn count_colour(png: &[u8], c: RGBColor) -> usize {
        let img = image::load_from_memory(png).unwrap().to_rgb8();
        img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count()
    }

    #[test]
    fn a_loss_chart_draws_text_lines_and_legend() {
        let mut csv = String::from("epoch,batch,step,total,layer1,layer2\n");
        for s in 1..=300 {
            let v = if s == 1 { 500.0 } else { 2.0 + 1.0 / s as f64 };
            csv.push_str(&format!(
                "{},{},{s},{v},{},{}\n",
                1 + s / 100,
                s % 100,
                v / 3.0,
                2.0 * v / 3.0
            ));
        }
        let h = LossHistory::parse_csv(&csv).unwrap();
        for scale in [YScale::Linear, YScale::Log, YScale::Symlog] {
            let png = render_png(&loss_chart(&h, "train[N=1]", scale)).unwrap();
            let img = image::load_from_memory(&png).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), (720, 400));
            // The total's and both layers' lines are drawn in their colours.
            for (i, c) in PALETTE.iter().take(3).enumerate() {
                assert!(count_colour(&png, *c) > 100, "{scale:?} colour {i}");
            }
            // Text: glyphs are anti-aliased, so grey levels that are neither
            // the background, the grid nor a line colour exist only if the
            // font was drawn.
            let dark_grey = img
                .pixels()
                .filter(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2] && (40..=160).contains(&p.0[0]))
                .count();
            assert!(
                dark_grey > 200,
                "{scale:?}: {dark_grey} anti-aliased text pixels"
            );
        }
    }

    #[test]
    fn the_spike_is_off_scale_so_the_tail_fills_the_plot() {
        // Without percentile limits the tail is a flat line at the bottom;
        // with them it spans most of the plot's height.
        let mut h = LossHistory::default();
        for s in 1..=400 {
            h.steps.push(s as f64);
            h.total.push(if s <= 2 {
                1e4
            } else {
                1.0 + ((s as f64) * 0.3).sin()
            });
        }
        let rows_spanned = |chart: &Chart| {
            let png = render_png(chart).unwrap();
            let img = image::load_from_memory(&png).unwrap().to_rgb8();
            let c = FAINT;
            let ys: Vec<u32> = img
                .enumerate_pixels()
                .filter(|(x, _, p)| (200..500).contains(x) && p.0 == [c.0, c.1, c.2])
                .map(|(_, y, _)| y)
                .collect();
            ys.iter().max().unwrap() - ys.iter().min().unwrap()
        };
        let mut chart = loss_chart(&h, "spike", YScale::Linear);
        let with = rows_spanned(&chart);
        chart.y_percentiles = (0.0, 100.0);
        chart.y_fence = None;
        let without = rows_spanned(&chart);
        assert!(with > 150 && without < 40, "with {with}, without {without}");
    }

    #[test]
    fn axis_charts_draw_one_marked_line_per_series() {
        let c = axis_chart(
            "loglik",
            "N",
            "AIS log-likelihood",
            vec!["1".into(), "3".into(), "255".into()],
            vec![("test".into(), vec![Some(-90.0), None, Some(-80.0)])],
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        save_png(&c, &p).unwrap();
        let png = std::fs::read(&p).unwrap();
        assert!(count_colour(&png, PALETTE[0]) > 50);
        assert!(!dir.path().join("a.png.partial").exists());
    }
}
