//! The stage kinds end to end through the mrbm-stage contract.

mod common;

use common::{run, tmpdir};
use mrbm_data::artifact::{FeatureSet, ImageSet};

fn blobs(n: usize, d: usize, seed: u64) -> FeatureSet {
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let c = (i % 3) as i64;
        for j in 0..d {
            x.push(next() + if j as i64 == c { 2.0 } else { 0.0 });
        }
        y.push(c);
    }
    FeatureSet::new(x, n, d, y)
}

#[test]
fn svm_stage_writes_metrics_and_confusion() {
    let dir = tmpdir("svm");
    let (tr, te) = (dir.join("tr.safetensors"), dir.join("te.safetensors"));
    blobs(150, 4, 1).write(&tr).unwrap();
    blobs(60, 4, 2).write(&te).unwrap();
    let out = dir.join("out");
    let m = run(
        "svm",
        "C = 1.0\nloss = \"hinge\"",
        &[("train", &tr), ("test", &te)],
        &out,
    )
    .unwrap();
    assert!(m["test_error"] < 5.0, "{m:?}");
    assert!(m["train_error"] >= 0.0 && m["fit_seconds"] >= 0.0);
    assert_eq!(m["converged"], 1.0);
    let csv = std::fs::read_to_string(out.join("confusion.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "true\\predicted,0,1,2");
    let total: u64 = lines[1..]
        .iter()
        .flat_map(|l| l.split(',').skip(1))
        .map(|v| v.parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 60);
    assert!(out.join("svm.json").exists());
}

#[test]
fn svm_stage_rejects_bad_input_as_user_errors() {
    let dir = tmpdir("svmbad");
    let good = dir.join("good.safetensors");
    blobs(30, 4, 1).write(&good).unwrap();
    // NaN features.
    let mut f = blobs(30, 4, 1);
    f.features[7] = f32::NAN;
    let nan = dir.join("nan.safetensors");
    f.write(&nan).unwrap();
    let e = run(
        "svm",
        "",
        &[("train", &nan), ("test", &good)],
        &dir.join("o1"),
    )
    .unwrap_err();
    assert!(e.is_user_error() && e.to_string().contains("NaN"), "{e}");
    // Single class.
    let one = FeatureSet::new(vec![0.5; 20], 5, 4, vec![3; 5]);
    let single = dir.join("single.safetensors");
    one.write(&single).unwrap();
    let e = run(
        "svm",
        "",
        &[("train", &single), ("test", &good)],
        &dir.join("o2"),
    )
    .unwrap_err();
    assert!(
        e.is_user_error() && e.to_string().contains("single class"),
        "{e}"
    );
    // Label count that disagrees with the feature rows (written by hand).
    let fb: Vec<u8> = [0.0f32; 8].iter().flat_map(|v| v.to_le_bytes()).collect();
    let lb: Vec<u8> = [0i64, 1, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let bad = dir.join("bad.safetensors");
    mrbm_data::artifact::write_tensors(
        &bad,
        vec![
            (
                "features",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 4], &fb)
                    .unwrap(),
            ),
            (
                "labels",
                safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![3], &lb)
                    .unwrap(),
            ),
        ],
        None,
    )
    .unwrap();
    let e = run(
        "svm",
        "",
        &[("train", &bad), ("test", &good)],
        &dir.join("o3"),
    )
    .unwrap_err();
    assert!(e.is_user_error(), "{e}");
    // Different dimensions.
    let other = dir.join("d5.safetensors");
    blobs(30, 5, 1).write(&other).unwrap();
    assert!(run(
        "svm",
        "",
        &[("train", &good), ("test", &other)],
        &dir.join("o4")
    )
    .unwrap_err()
    .is_user_error());
    // Unknown and invalid parameters.
    assert!(run(
        "svm",
        "cost = 1.0",
        &[("train", &good), ("test", &good)],
        &dir.join("o5")
    )
    .is_err());
    assert!(run(
        "svm",
        "C = 0.5",
        &[("train", &good), ("test", &good)],
        &dir.join("o7")
    )
    .is_ok());
    assert!(run(
        "svm",
        "c = -1.0",
        &[("train", &good), ("test", &good)],
        &dir.join("o6")
    )
    .is_err());
}

#[test]
fn fid_stats_without_weights_explains_how_to_get_them() {
    let dir = tmpdir("fidnow");
    let data = dir.join("data.safetensors");
    ImageSet::new(vec![7; 2 * 3 * 8 * 8], 2, 3, 8, 8, vec![-1, -1])
        .write(&data)
        .unwrap();
    let e = run("fid_stats", "", &[("data", &data)], &dir.join("out")).unwrap_err();
    let msg = e.to_string();
    assert!(e.is_user_error());
    assert!(
        msg.contains("pt_inception-2015-12-05-6726825d.pth")
            && msg
                .contains("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"),
        "{msg}"
    );
    assert!(msg.contains("tools/fid_weights.py"), "{msg}");
    let missing = dir.join("nope.safetensors");
    let e = run(
        "fid_stats",
        "",
        &[("data", &data), ("weights", &missing)],
        &dir.join("out2"),
    )
    .unwrap_err();
    assert!(e.is_user_error() && e.to_string().contains("tools/fid_weights.py"));
}

#[test]
fn fid_stats_then_fid() {
    let dir = tmpdir("fid");
    // Grey 1-channel images (replicated to RGB) of two kinds.
    let mk = |seed: u64, n: usize| {
        let mut s = seed;
        let px: Vec<u8> = (0..n * 20 * 16)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect();
        ImageSet::new(px, n, 1, 20, 16, vec![-1; n])
    };
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    mk(1, 3).write(&a).unwrap();
    mk(2, 3).write(&b).unwrap();
    let p = "random_weights_seed = 7\nbatch_size = 2";
    let ma = run("fid_stats", p, &[("data", &a)], &dir.join("sa")).unwrap();
    assert_eq!(ma["count"], 3.0);
    run("fid_stats", p, &[("data", &b)], &dir.join("sb")).unwrap();
    let sa = dir.join("sa/stats.safetensors");
    let sb = dir.join("sb/stats.safetensors");
    let (mu, sigma) = mrbm_eval::stages::read_stats(&sa).unwrap();
    assert_eq!((mu.len(), sigma.len()), (2048, 2048 * 2048));
    let same = run("fid", "", &[("a", &sa), ("b", &sa)], &dir.join("f0")).unwrap();
    assert!(same["fid"].abs() < 1e-6, "{same:?}");
    let diff = run("fid", "", &[("a", &sa), ("b", &sb)], &dir.join("f1")).unwrap();
    assert!(diff["fid"] > 0.0 && diff["fid"].is_finite(), "{diff:?}");
}

/// The canonical parameters (and so the cache keys) of the eval kinds are
/// the ones they had before the stages took the libraries' own structs:
/// every field, by its published name, at its default; a default written
/// out changes nothing; unknown keys and bad values are refused.
#[test]
fn eval_params_are_canonical_and_unchanged() {
    let kinds = mrbm_eval::stages();
    let kind = |k: &str| kinds.iter().find(|s| s.kind() == k).unwrap();
    let table = |t: &str| -> toml::Table { toml::from_str(t).unwrap() };
    let svm = kind("svm");
    let canon = svm.params(&table("")).unwrap();
    assert_eq!(
        canon,
        serde_json::json!({
            "loss": "squared_hinge", "C": 1.0, "eps": 0.1, "max_iter": 300,
            "bias": 1.0, "shrinking": true, "standardize": false, "seed": 0
        })
    );
    assert_eq!(svm.params(&table("C = 1.0\nseed = 0")).unwrap(), canon);
    assert_eq!(svm.params(&table("c = 2.0")).unwrap()["C"], 2.0);
    let e = svm.params(&table("Cc = 2.0")).unwrap_err();
    assert_eq!(e.suggestion.as_deref(), Some("C"), "{e:?}");
    let e = svm.params(&table("C = -1.0")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("C"), "{e:?}");
    let fid_stats = kind("fid_stats");
    assert_eq!(
        fid_stats.params(&table("")).unwrap(),
        serde_json::json!({ "batch_size": 50, "random_weights_seed": null })
    );
    assert!(fid_stats.params(&table("batch_size = 0")).is_err());
    assert!(fid_stats.uses_device());
    assert!(fid_stats
        .missing_input_hint(
            &serde_json::Value::Null,
            "weights",
            std::path::Path::new("x")
        )
        .is_some_and(|h| h.contains("fid_weights.py")));
    assert_eq!(
        kind("fid").params(&table("")).unwrap(),
        serde_json::json!({})
    );
    assert!(kind("fid").params(&table("x = 1")).is_err());
}
