//! Fit time of mrbm's SVM on FeatureSet files; driven by bench/svm_bench.py.
//!
//!     svm_bench TRAIN TEST LOSS C EPS BIAS THREADS
//!
//! Prints one JSON line: fit_seconds, test_error (percent), per-class dual objectives.
use std::time::Instant;

use mrbm_data::artifact::FeatureSet;
use mrbm_eval::svm::{error_percent, fit, Loss, SvmConfig};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 8 {
        eprintln!("usage: svm_bench TRAIN TEST hinge|squared_hinge C EPS BIAS THREADS");
        std::process::exit(2);
    }
    let train = FeatureSet::read(a[1].as_ref()).expect("train");
    let test = FeatureSet::read(a[2].as_ref()).expect("test");
    let cfg = SvmConfig {
        loss: if a[3] == "hinge" {
            Loss::Hinge
        } else {
            Loss::SquaredHinge
        },
        c: a[4].parse().unwrap(),
        eps: a[5].parse().unwrap(),
        bias: a[6].parse().unwrap(),
        max_iter: 300,
        ..Default::default()
    };
    let threads: usize = a[7].parse().unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let t = Instant::now();
    let m = pool
        .install(|| fit(&train.features, train.n, train.d, &train.labels, &cfg))
        .expect("fit");
    let secs = t.elapsed().as_secs_f64();
    let pred = pool.install(|| m.predict(&test.features, test.n)).unwrap();
    let objs: Vec<f64> = m.reports.iter().map(|r| r.dual_objective).collect();
    let iters: Vec<usize> = m.reports.iter().map(|r| r.iterations).collect();
    println!(
        "{}",
        serde_json::json!({"fit_seconds": secs, "test_error": error_percent(&pred, &test.labels), "dual_objectives": objs, "iterations": iters, "threads": threads})
    );
}
