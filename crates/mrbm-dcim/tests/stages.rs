//! The `dcim` and `dcim_sample` stage kinds end to end on a small
//! synthetic labelled set (three classes: a bright bar in one of three
//! places, plus noise).

use std::path::Path;

use mrbm_data::artifact::ImageSet;
use mrbm_stage::{Metrics, Stage, StageError};
use rand::{Rng, SeedableRng};

fn stage(kind: &str) -> Box<dyn Stage> {
    mrbm_dcim::stages()
        .into_iter()
        .find(|s| s.kind() == kind)
        .unwrap()
}

fn run(
    kind: &str,
    params: &str,
    inputs: &[(&str, &Path)],
    out: &Path,
) -> Result<Metrics, StageError> {
    let s = stage(kind);
    let raw: toml::Table = toml::from_str(params).unwrap();
    let canon = s
        .params(&raw)
        .map_err(|e| StageError::User(e.to_string()))?;
    mrbm_stage::run_detached(&*s, &canon, inputs, out, &mrbm_device::Device::cpu())
}

fn bars(n: usize, seed: u64, path: &Path) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut px = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = i % 3;
        for y in 0..8 {
            for x in 0..8 {
                let on = x > 2 * c && x < 3 + 2 * c && (1..7).contains(&y);
                px.push(if on { 230 } else { rng.random_range(0..40u8) });
            }
        }
        labels.push(c as i64);
    }
    ImageSet::new(px, n, 1, 8, 8, labels).write(path).unwrap();
}

#[test]
fn train_then_sample_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (
        dir.path().join("train.safetensors"),
        dir.path().join("test.safetensors"),
    );
    bars(96, 1, &train);
    bars(30, 2, &test);
    let model_dir = dir.path().join("dcim");
    for obj in ["16", "21", "22"] {
        let out = dir.path().join(format!("dcim{obj}"));
        let m = run(
            "dcim",
            &format!("layers = [[3, 1, 4], 12, 3]\nobjective = \"{obj}\"\nepochs = 3\nbatch_size = 16\nlr = 0.01"),
            &[("data", &train), ("test", &test)],
            &out,
        )
        .unwrap();
        assert!(m["test_accuracy"] > 0.9, "objective {obj}: {m:?}");
        assert!(m["reverse_loss_test"].is_finite() && m["reverse_loss_test"] > 0.0);
        for f in ["model.safetensors", "loss.csv", "loss.png"] {
            assert!(out.join(f).exists(), "{f}");
        }
        if obj == "21" {
            std::fs::rename(&out, &model_dir).unwrap();
        }
    }
    for way in ["recursive", "one_layer"] {
        let out = dir.path().join(way);
        let m = run(
            "dcim_sample",
            &format!("way = \"{way}\"\nper_class = 12\ngrid_columns = 5"),
            &[("model", &model_dir), ("reference", &test)],
            &out,
        )
        .unwrap();
        assert!((0.0..=1.0).contains(&m["consistency"]));
        assert!(m["diversity"] >= 0.0 && m["reference_diversity"] > 0.0);
        let s = ImageSet::read(&out.join("samples.safetensors")).unwrap();
        assert_eq!((s.n, s.c, s.h, s.w), (36, 1, 8, 8));
        assert_eq!(s.labels[35], 2);
        assert!(out.join("grid.png").exists());
    }
}

#[test]
fn user_mistakes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.safetensors");
    bars(12, 1, &data);
    // Three classes in the data, two in the last layer.
    let e = run(
        "dcim",
        "layers = [4, 2]\nepochs = 1",
        &[("data", &data), ("test", &data)],
        &dir.path().join("a"),
    )
    .unwrap_err();
    assert!(
        e.is_user_error() && e.to_string().contains("label 2"),
        "{e}"
    );
    let e = run(
        "dcim",
        "layers = [[9, 1, 2], 3]",
        &[("data", &data), ("test", &data)],
        &dir.path().join("b"),
    )
    .unwrap_err();
    assert!(e.is_user_error() && e.to_string().contains("larger"), "{e}");
    let e = stage("dcim")
        .params(&toml::from_str("objective = \"23\"").unwrap())
        .unwrap_err();
    assert!(
        e.to_string().contains("23") || e.to_string().contains("variant"),
        "{e}"
    );
    let e = stage("dcim")
        .params(&toml::from_str("layers = [[3, 1, 4]]").unwrap())
        .unwrap_err();
    assert!(e.message.contains("last layer"), "{e}");
}
