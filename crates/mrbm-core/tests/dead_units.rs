//! A training run that leaves every hidden unit of a layer stuck fails its
//! `train` stage with a user error that names the layer and the fix,
//! unless the experiment says `allow_dead_units = true`; the parameter is
//! absent from the stage key at its default. And `loglik`'s RAISE bracket
//! through the stage.

use std::path::{Path, PathBuf};

use mrbm_data::artifact::ImageSet;
use mrbm_stage::{DeviceId, Metrics, Stage, StageError};

fn stage(kind: &str) -> Box<dyn Stage> {
    mrbm_core::stages()
        .into_iter()
        .find(|s| s.kind() == kind)
        .unwrap_or_else(|| panic!("no stage {kind}"))
}

fn run(
    kind: &str,
    params: &str,
    inputs: &[(&str, PathBuf)],
    out: &Path,
) -> Result<Metrics, StageError> {
    let s = stage(kind);
    let device = mrbm_device::choose(DeviceId::Cpu).map_err(StageError::User)?;
    let raw: toml::Table = toml::from_str(params).unwrap();
    let canon = s
        .params(&raw)
        .map_err(|e| StageError::User(e.to_string()))?;
    let inputs: Vec<(&str, &Path)> = inputs.iter().map(|(k, v)| (*k, v.as_path())).collect();
    mrbm_stage::run_detached(&*s, &canon, &inputs, out, &device)
}

/// Two classes of 8x8 grey images: a bright square top-left or bottom-right.
fn images(dir: &Path) -> PathBuf {
    let (n, h, w) = (64, 8, 8);
    let mut px = Vec::new();
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                let on = if i % 2 == 0 {
                    y < 4 && x < 4
                } else {
                    y >= 4 && x >= 4
                };
                px.push(if on { 220 } else { (i * 3 % 40) as u8 });
            }
        }
    }
    let p = dir.join("data.safetensors");
    ImageSet::new(px, n, 1, h, w, (0..n as i64).map(|i| i % 2).collect())
        .write(&p)
        .unwrap();
    p
}

// N = 255 sub-units with plain steps far too large: every hidden unit ends
// always off or always on.
const DEAD: &str =
    "conv_channels = []\ndense = [6]\nn = 255\nepochs = 3\nbatch_size = 16\nlr = 5.0\nseed = 1";
const HEALTHY: &str =
    "conv_channels = []\ndense = [6]\nepochs = 3\nbatch_size = 16\nlr = 0.01\nseed = 1";

#[test]
fn a_dead_layer_fails_the_stage_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let data = images(dir.path());
    let train = |params: &str, out: &str| {
        run(
            "train",
            params,
            &[("data", data.clone())],
            &dir.path().join(out),
        )
    };
    let e = train(DEAD, "dead").unwrap_err();
    let msg = e.to_string();
    assert!(e.is_user_error(), "{e}");
    assert!(
        msg.contains("layer 1") && msg.contains("allow_dead_units = true"),
        "{msg}"
    );
    assert!(msg.contains("binary_equivalent"), "{msg}");
    let kept = train(&format!("{DEAD}\nallow_dead_units = true"), "kept").unwrap();
    assert_eq!(kept["layers"], 1.0);
    train(HEALTHY, "healthy").unwrap();
}

#[test]
fn allow_dead_units_is_absent_from_the_key_at_its_default() {
    let s = stage("train");
    let canon = |extra: &str| {
        let raw: toml::Table = toml::from_str(&format!("{HEALTHY}{extra}")).unwrap();
        s.params(&raw).unwrap()
    };
    assert_eq!(canon(""), canon("\nallow_dead_units = false"));
    assert!(!canon("").to_string().contains("allow_dead_units"));
    assert!(canon("\nallow_dead_units = true")
        .to_string()
        .contains("allow_dead_units"));
    let l = stage("loglik");
    let raw: toml::Table = toml::from_str("betas = 300\nruns = 8").unwrap();
    assert!(!l.params(&raw).unwrap().to_string().contains("raise"));
    let raw: toml::Table = toml::from_str("raise_chains = 2").unwrap();
    assert!(l.params(&raw).is_err(), "raise_chains without raise_images");
}

#[test]
fn loglik_brackets_the_test_loglik() {
    let dir = tempfile::tempdir().unwrap();
    let data = images(dir.path());
    let model = dir.path().join("model");
    run("train", HEALTHY, &[("data", data.clone())], &model).unwrap();
    let ll = |extra: &str, out: &str| {
        run(
            "loglik",
            &format!("betas = 400\nruns = 16\nseed = 2{extra}"),
            &[
                ("model", model.clone()),
                ("train", data.clone()),
                ("test", data.clone()),
            ],
            &dir.path().join(out),
        )
        .unwrap()
    };
    let plain = ll("", "plain");
    assert!(!plain.contains_key("raise_test_loglik"));
    let m = ll("\nraise_images = 10\nraise_chains = 2", "raise");
    // The forward estimate is unchanged by asking for the bracket.
    assert_eq!(m["test_loglik"], plain["test_loglik"]);
    assert_eq!(m["raise_images"], 10.0);
    let (low, up) = (m["raise_test_loglik"], m["raise_ais_test_loglik"]);
    assert!(low.is_finite() && up.is_finite(), "{m:?}");
    assert_eq!(m["bracket"], up - low);
    // 64 binary pixels: both sides below 0, above the uniform model.
    let uniform = -64.0 * std::f64::consts::LN_2;
    assert!(low < 0.0 && low > uniform && up < 0.0, "{m:?}");
    // A 6-unit RBM on 64 pixels anneals easily: the bracket is tight.
    assert!((up - low).abs() < 1.0, "{m:?}");
}
