//! End-to-end test of `mrbm report` (issue 18): a small real experiment
//! (synthetic shapes, dense RBMs at N = 1 and 3, AIS log-likelihood,
//! samples, a table with reference values) runs, then its report is one
//! self-contained HTML page: the tables with the reference values marked,
//! every image a PNG in a data: URI (loss curves, plots along the sweep
//! axis, sample grids), provenance, and no external URL and no script.
//! tools/browser-test.sh renders the quickstart's report in Chromium.

mod common;
use common::{ok, run_in as mrbm};

use base64::Engine as _;

fn experiment() -> String {
    let train = "conv_channels = [], dense = [6], epochs = 2, batch_size = 20, seed = 1";
    let head = common::shapes_split_train("tiny", (80, 2, 1), (60, 20), train);
    format!("{head}{EXPERIMENT_TAIL}")
}

/// What follows the train stage in [`experiment`].
const EXPERIMENT_TAIL: &str = r#"publish = { "loss.png" = "results/loss_N{N}.png" }

[stages.loglik]
kind = "loglik"
inputs = { model = "train", train = "split/train.safetensors", test = "split/test.safetensors" }
params = { betas = 50, runs = 4, seed = 1 }

[stages.sample]
kind = "sample"
inputs = { model = "train", reference = "split/test.safetensors" }
params = { chains = 4, steps = 5, seed = 1 }

[sweep]
N = { param = "train.n", values = [1, 3] }

[[tables]]
name = "tiny_loglik"
stage = "loglik"
metrics = ["test_loglik"]
rows = "N"

[tables.reference."paper <b>"]
1 = -1.5

[[tables]]
name = "tiny_samples"
stage = "sample"
metrics = ["diversity", "contrast"]
rows = "N"
"#;

/// Every `data:image/png;base64,...` payload of the page, decoded.
fn embedded_pngs(html: &str) -> Vec<Vec<u8>> {
    html.split("src=\"data:image/png;base64,")
        .skip(1)
        .map(|rest| {
            let b64 = &rest[..rest.find('"').expect("closing quote")];
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("valid base64")
        })
        .collect()
}

#[test]
fn the_report_is_one_self_contained_page_with_tables_plots_and_provenance() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("experiments")).unwrap();
    std::fs::write(dir.path().join("experiments/tiny.toml"), experiment()).unwrap();

    // No run yet: a friendly error, no panic.
    let o = mrbm(dir.path(), &["report"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no cache") || err.contains("no recorded runs"),
        "{err}"
    );

    ok(&mrbm(
        dir.path(),
        &["run", "experiments/tiny.toml", "--quiet"],
    ));
    let out = ok(&mrbm(dir.path(), &["report", "--loss-scale", "symlog"]));
    assert!(out.contains("results/report.html"), "{out}");
    let html = std::fs::read_to_string(dir.path().join("results/report.html")).unwrap();

    // One page, no script, nothing fetched: every src and href is a
    // data: URI or an anchor, and no URL is named anywhere.
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<body>").count(), 1);
    for bad in ["<script", "<link", "http://", "https://", "url(", "@import"] {
        assert!(!html.contains(bad), "the page contains {bad}");
    }
    for attr in ["src=\"", "href=\""] {
        for rest in html.split(attr).skip(1) {
            assert!(
                rest.starts_with("data:image/png;base64,") || rest.starts_with('#'),
                "{attr}{}",
                &rest[..rest.len().min(60)]
            );
        }
    }

    // The tables, with the reference column marked (and its name escaped).
    assert!(html.contains("<h3>tiny_loglik</h3>"), "{html}");
    assert!(html.contains("<h3>tiny_samples</h3>"));
    assert_eq!(html.matches("<table class=\"results\">").count(), 2);
    assert!(html.contains("<th class=\"ref\">paper &lt;b&gt;</th>"));
    assert!(html.contains("<td class=\"ref\">-1.5"), "{html}");
    assert!(html.contains("<th>test_loglik</th>"));

    // Images: 2 loss curves, 2 sample grids, and plots along N of the
    // log-likelihood and sample metrics; each a real PNG.
    let pngs = embedded_pngs(&html);
    for p in &pngs {
        assert!(p.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(p.len() > 200);
    }
    let alts = |s: &str| html.matches(&format!("alt=\"{s}")).count();
    assert_eq!(alts("loss curve of train["), 2);
    assert_eq!(alts("sample[N="), 2);
    assert!(alts("loglik: test_loglik along N") == 1, "{html}");
    assert!(alts("sample: diversity along N") == 1);
    // Every numeric metric along the axis, whatever the stage's kind (the
    // train stage's own metrics too), never a timing.
    let along: Vec<&str> = html
        .split("alt=\"")
        .skip(1)
        .filter_map(|r| r.split('"').next())
        .filter(|a| a.ends_with(" along N") && a.starts_with("train: "))
        .collect();
    assert!(!along.is_empty(), "no train metric along N");
    assert!(!along.iter().any(|a| a.contains("seconds")), "{along:?}");
    // A metric with one value in every cell (here the layer count) is
    // named, not drawn as a flat line.
    assert_eq!(alts("train: layers along N"), 0);
    assert!(
        html.contains("The same in every cell, so not drawn: "),
        "{html}"
    );
    // The loss curves of the axis's cells, overlaid on one chart.
    assert_eq!(alts("loss curves of train along N"), 1, "{html}");
    // Reference values only where the experiment declares them: the
    // paper's Table 1 and 2 are not appended to every report.
    for absent in ["Caltech-101", "The paper's numbers", "CelebA size"] {
        assert!(!html.contains(absent), "{absent}");
    }
    assert_eq!(html.matches("class=\"ref\"").count(), 1 + 2, "{html}");
    assert!(pngs.len() >= 2 + 1 + 2 + 2, "{} images", pngs.len());

    // Each cell's loss curve, published as asked: a 720 x 400 PNG.
    for n in [1, 3] {
        let png = std::fs::read(dir.path().join(format!("results/loss_N{n}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let be = |i: usize| u32::from_be_bytes(png[i..i + 4].try_into().unwrap());
        assert_eq!((be(16), be(20)), (720, 400), "IHDR width, height");
    }

    // Provenance: the run, its commit and each stage's timing and host.
    let runs = ok(&mrbm(dir.path(), &["runs", "--csv"]));
    let id = runs
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    assert!(html.contains(&format!("run {id}")));
    assert!(html.contains("<th>git commit</th>"));
    assert!(html.contains("<th>hosts</th>"));
    assert!(
        html.contains("<td>train[N=3]</td><td>train</td><td>ran</td>"),
        "{html}"
    );

    // A second report by id prefix to another file; a bad selector is a
    // usage error that points at `mrbm runs`.
    ok(&mrbm(
        dir.path(),
        &["report", &id[..6], "--out", "elsewhere/r.html"],
    ));
    assert!(dir.path().join("elsewhere/r.html").is_file());
    let o = mrbm(dir.path(), &["report", "no-such-run"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("mrbm runs"));
    let o = mrbm(dir.path(), &["report", "--loss-scale", "cubic"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("linear, log or symlog"));
}
