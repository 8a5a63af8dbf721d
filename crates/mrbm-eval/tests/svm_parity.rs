//! Parity with liblinear-official 2.50 on the real MNIST t10k set
//! (fixture written by tools/liblinear_parity.py; the data is not stored).

mod common;

use mrbm_eval::svm::{error_percent, fit, Loss, SvmConfig};

#[test]
fn mnist_matches_liblinear() {
    let Some(root) = common::shared_data("mnist_matches_liblinear") else {
        return;
    };
    let fx = common::fixture("liblinear_mnist.json");
    let seed = fx["split_seed"].as_u64().unwrap();
    let n_train = fx["n_train"].as_u64().unwrap() as usize;
    let s = common::mnist_split(&root, seed, n_train);
    // Same rows as the Python side.
    let head: Vec<usize> = fx["perm_head"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(&s.perm[..head.len()], &head[..]);
    let weighted = s.perm.iter().enumerate().fold(0u128, |a, (i, p)| {
        (a + (i as u128) * (*p as u128)) % (1u128 << 61)
    });
    assert_eq!(weighted as u64, fx["perm_sum_weighted"].as_u64().unwrap());

    for c in fx["configs"].as_array().unwrap() {
        let loss = match c["loss"].as_str().unwrap() {
            "hinge" => Loss::Hinge,
            _ => Loss::SquaredHinge,
        };
        let cfg = SvmConfig {
            loss,
            c: c["c"].as_f64().unwrap(),
            eps: c["eps"].as_f64().unwrap(),
            bias: c["bias"].as_f64().unwrap(),
            max_iter: 300,
            ..Default::default()
        };
        let m = fit(&s.xtr, s.ytr.len(), 784, &s.ytr, &cfg).unwrap();
        let te = error_percent(&m.predict(&s.xte, s.yte.len()).unwrap(), &s.yte);
        let tr = error_percent(&m.predict(&s.xtr, s.ytr.len()).unwrap(), &s.ytr);
        let ref_te = c["test_error_percent"].as_f64().unwrap();
        let ref_tr = c["train_error_percent"].as_f64().unwrap();
        eprintln!(
            "{}: test error {te:.2}% (LIBLINEAR {ref_te:.2}%), train {tr:.2}% ({ref_tr:.2}%)",
            c["options"]
        );
        assert!(
            (te - ref_te).abs() <= 0.1 + 1e-9,
            "{}: test error {te} vs {ref_te}",
            c["options"]
        );
        for r in &m.reports {
            assert!(
                r.converged,
                "{}: class {} did not converge",
                c["options"], r.class
            );
            let want = c["dual_objectives"][r.class.to_string()].as_f64().unwrap();
            let rel = (r.dual_objective - want).abs() / want.abs();
            eprintln!(
                "  class {}: dual {:.6} vs {want:.6} (rel {rel:.2e}), {} iterations",
                r.class, r.dual_objective, r.iterations
            );
            assert!(
                rel <= 1e-3,
                "{}: class {} dual objective {} vs LIBLINEAR {want}",
                c["options"],
                r.class,
                r.dual_objective
            );
        }
    }
}
