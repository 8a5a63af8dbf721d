//! The stage kinds end to end through the runner's contract: train on a
//! small image set, then features, sample and reconstruct from its
//! checkpoint.

use std::path::{Path, PathBuf};

use mrbm_data::artifact::{FeatureSet, ImageSet};
use mrbm_stage::{DeviceId, Metrics, Stage, StageError};

fn stage(kind: &str) -> Box<dyn Stage> {
    mrbm_core::stages()
        .into_iter()
        .find(|s| s.kind() == kind)
        .unwrap_or_else(|| panic!("no stage {kind}"))
}

/// Stage `kind` with `params` (TOML) and `inputs` into `out`, on the CPU.
fn run(
    kind: &str,
    params: &str,
    inputs: &[(&str, PathBuf)],
    out: &Path,
) -> Result<Metrics, StageError> {
    run_on(kind, params, inputs, out, DeviceId::Cpu)
}

/// `train` with `params` on the image set `data`, into `out`, on the CPU.
fn train(data: &Path, params: &str, out: &Path) -> Result<Metrics, StageError> {
    run("train", params, &[("data", data.to_path_buf())], out)
}

/// Stage `kind` on the model of a `train` stage and an image set, on the CPU.
fn with_model(
    kind: &str,
    params: &str,
    model: &Path,
    data: &Path,
    out: &Path,
) -> Result<Metrics, StageError> {
    let inputs = [("model", model.to_path_buf()), ("data", data.to_path_buf())];
    run(kind, params, &inputs, out)
}

/// The model a `train` stage wrote into `out`.
fn load_model(out: &Path) -> mrbm_core::Dbn {
    mrbm_core::checkpoint::load(
        &out.join("model.safetensors"),
        &burn::tensor::Device::flex(),
    )
    .unwrap()
}

/// `sample` of `chains` chains, 3 steps, from the model of a `train`
/// stage into `out`; the samples it wrote.
fn sample(model: &Path, chains: usize, out: &Path) -> ImageSet {
    let params = format!("steps = 3\nchains = {chains}");
    run("sample", &params, &[("model", model.to_path_buf())], out).unwrap();
    ImageSet::read(&out.join("samples.safetensors")).unwrap()
}

/// Stage `kind` as the runner would run it on `device`.
fn run_on(
    kind: &str,
    params: &str,
    inputs: &[(&str, PathBuf)],
    out: &Path,
    device: DeviceId,
) -> Result<Metrics, StageError> {
    let s = stage(kind);
    // What the runner's one resolve gives (a user error for a device that is not there).
    let device = mrbm_device::choose(device).map_err(StageError::User)?;
    let raw: toml::Table = toml::from_str(params).unwrap();
    let canon = s
        .params(&raw)
        .map_err(|e| StageError::User(e.to_string()))?;
    let inputs: Vec<(&str, &Path)> = inputs.iter().map(|(k, v)| (*k, v.as_path())).collect();
    assert!(s.uses_device() || kind == "loglik");
    mrbm_stage::run_detached(&*s, &canon, &inputs, out, &device)
}

/// Two classes: a bright square in the top-left or bottom-right corner.
fn images(dir: &Path) -> PathBuf {
    let (n, c, h, w) = (64, 3, 8, 8);
    let mut px = Vec::new();
    for i in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let on = if i % 2 == 0 {
                        y < 4 && x < 4
                    } else {
                        y >= 4 && x >= 4
                    };
                    px.push(if on {
                        200 + (ch * 20) as u8
                    } else {
                        (i * 3 % 40) as u8
                    });
                }
            }
        }
    }
    let p = dir.join("data.safetensors");
    ImageSet::new(px, n, c, h, w, (0..n as i64).map(|i| i % 2).collect())
        .write(&p)
        .unwrap();
    p
}

#[test]
fn train_features_sample_reconstruct() {
    let dir = tempfile::tempdir().unwrap();
    let data = images(dir.path());
    for n in [1, 255] {
        let train_out = dir.path().join(format!("train{n}"));
        let params = format!(
            "conv_channels = [4]\ndense = [6]\nn = {n}\nepochs = 2\nbatch_size = 16\nlr = 0.01"
        );
        let m = train(&data, &params, &train_out).unwrap();
        assert!(m["final_loss"].is_finite(), "{m:?}");
        for f in ["model.safetensors", "loss.csv", "loss.png"] {
            assert!(train_out.join(f).is_file(), "missing {f}");
        }
        let csv = std::fs::read_to_string(train_out.join("loss.csv")).unwrap();
        assert_eq!(
            csv.lines().count(),
            1 + 2 * 4,
            "header + 2 epochs x 4 batches"
        );
        // The model input accepts the stage directory (default file).
        let feat_out = dir.path().join(format!("features{n}"));
        let m = with_model("features", "layer = 1", &train_out, &data, &feat_out).unwrap();
        assert_eq!(m["dimensions"], 4.0 * 4.0 * 4.0);
        let fs = FeatureSet::read(&feat_out.join("features.safetensors")).unwrap();
        assert_eq!((fs.n, fs.d), (64, 64));
        assert!(fs
            .features
            .iter()
            .all(|x| x.is_finite() && *x >= 0.0 && *x <= 1.0));
        let raw = with_model(
            "features",
            "layer = 1\nunit_scale = false",
            &train_out,
            &data,
            &dir.path().join(format!("fraw{n}")),
        )
        .unwrap();
        let fr = FeatureSet::read(
            &dir.path()
                .join(format!("fraw{n}"))
                .join("features.safetensors"),
        )
        .unwrap();
        assert_eq!(raw["dimensions"], 64.0);
        for (a, b) in fr.features.iter().zip(&fs.features) {
            assert!((a / n as f32 - b).abs() <= 1e-6 * a.abs().max(1.0));
        }
        let top = with_model(
            "features",
            "",
            &train_out,
            &data,
            &dir.path().join(format!("ftop{n}")),
        )
        .unwrap();
        assert_eq!(top["dimensions"], 6.0);
        let sample_out = dir.path().join(format!("sample{n}"));
        let s = sample(&train_out, 5, &sample_out);
        assert_eq!(s.shape(), [5, 3, 8, 8]);
        assert!(s.labels.iter().all(|&l| l == -1));
        assert!(sample_out.join("grid.png").is_file());
        let rec_out = dir.path().join(format!("rec{n}"));
        let m = with_model(
            "reconstruct",
            "count = 6\ncolourise = true",
            &train_out,
            &data,
            &rec_out,
        )
        .unwrap();
        assert!(m["mse"].is_finite());
        assert!(rec_out.join("grid.png").is_file());
        assert_eq!(
            ImageSet::read(&rec_out.join("reconstructions.safetensors"))
                .unwrap()
                .n,
            6
        );
    }
}

#[test]
fn errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let data = images(dir.path());
    // Unknown parameter: rejected at canonicalisation with a suggestion.
    let raw: toml::Table = toml::from_str("lrr = 0.1").unwrap();
    let e = stage("train").params(&raw).unwrap_err();
    assert_eq!(e.suggestion.as_deref(), Some("lr"));
    // Accelerators not compiled in: a user error.
    let e = run_on(
        "train",
        "dense = [4]\nconv_channels = []\nepochs = 1",
        &[("data", data.clone())],
        &dir.path().join("t"),
        DeviceId::Cuda(0),
    )
    .unwrap_err();
    assert!(e.is_user_error() && e.to_string().contains("cuda"), "{e}");
    // A non-finite loss fails the stage naming epoch, batch and layer.
    let e = train(
        &data,
        "dense = [4]\nconv_channels = []\nepochs = 1\nvisible_scale = 1e308",
        &dir.path().join("t2"),
    )
    .unwrap_err();
    assert!(
        matches!(e, StageError::Failed(_)) && e.to_string().contains("layer 1"),
        "{e}"
    );
    // A model that does not match the data's image size: a user error.
    let out = dir.path().join("t3");
    train(&data, "dense = [4]\nconv_channels = []\nepochs = 1", &out).unwrap();
    let other = dir.path().join("other.safetensors");
    ImageSet::new(vec![0; 2 * 3 * 4 * 4], 2, 3, 4, 4, vec![0, 1])
        .write(&other)
        .unwrap();
    let e = with_model("features", "", &out, &other, &dir.path().join("f")).unwrap_err();
    assert!(e.is_user_error(), "{e}");
    // A file that is not a checkpoint: a user error naming the file.
    let e = run(
        "sample",
        "",
        &[("model", data.clone())],
        &dir.path().join("s"),
    )
    .unwrap_err();
    assert!(
        e.is_user_error() && e.to_string().contains("data.safetensors"),
        "{e}"
    );
}

/// `standardise = "pixel"`: each pixel position by its own mean and std,
/// stored with the model, so the model maps the training images to
/// per-position mean 0 / std 1 and its samples back to pixels; the global
/// default leaves the key (canonical parameters) as it was.
#[test]
fn gaussian_per_pixel_standardisation_is_stored_with_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = images(dir.path());
    let base = "conv_channels = []\ndense = [6]\nepochs = 1\nbatch_size = 16\nlr = 0.01\nvisible = \"gaussian\"";
    let s = stage("train");
    let canon = |t: &str| s.params(&toml::from_str(t).unwrap()).unwrap();
    assert_eq!(
        canon(base),
        canon(&format!("{base}\nstandardise = \"global\""))
    );
    assert_ne!(
        canon(base),
        canon(&format!("{base}\nstandardise = \"pixel\""))
    );
    let err = train(
        &data,
        "dense = [6]\nstandardise = \"pixel\"",
        &dir.path().join("bad"),
    )
    .unwrap_err();
    assert!(
        err.is_user_error() && err.to_string().contains("gaussian"),
        "{err}"
    );

    let out = dir.path().join("train");
    train(&data, &format!("{base}\nstandardise = \"pixel\""), &out).unwrap();
    let dbn = load_model(&out);
    let set = ImageSet::read(&data).unwrap();
    let len = set.image_len();
    assert_eq!(dbn.spec.pixel_scale.len(), len);
    let v = dbn.pixels_to_visible(
        set.pixels(),
        set.n,
        &burn::tensor::Device::flex(),
        burn::tensor::DType::F32,
    );
    assert_eq!(dbn.visible_to_pixels(&v), set.pixels().to_vec());
    let vals = mrbm_core::layer::to_f64(&v);
    for j in 0..len {
        let col: Vec<f64> = (0..set.n).map(|i| vals[i * len + j]).collect();
        let m = col.iter().sum::<f64>() / set.n as f64;
        let sd = (col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / set.n as f64).sqrt();
        assert!(m.abs() < 1e-4, "pixel {j}: mean {m}");
        // Every position varies by more than a grey level in these images.
        assert!((sd - 1.0).abs() < 1e-4, "pixel {j}: std {sd}");
    }
    // Positions differ: a global standardisation could not do this.
    assert_ne!(dbn.spec.pixel_offset[0], dbn.spec.pixel_offset[len - 1]);
    let sample_out = dir.path().join("sample");
    let s = sample(&out, 4, &sample_out);
    assert_eq!(s.shape(), [4, 3, 8, 8]);
}

/// `loglik` on a two-layer dense DBN gives the variational lower bound
/// (marked `lower_bound = 1`), on deeper stacks a clear error or, with
/// `unsupported = "nan"`, NaN.
#[test]
fn loglik_two_layer_dbn_bound_and_deeper_stacks_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = images(dir.path());
    let train = |name: &str, dense: &str| {
        let out = dir.path().join(name);
        train(&data, &format!("conv_channels = []\ndense = {dense}\nepochs = 2\nbatch_size = 16\nlr = 0.01\nschedule = \"greedy\""), &out)
        .unwrap();
        out
    };
    let ll = |model: &PathBuf, extra: &str| {
        run(
            "loglik",
            &format!("betas = 300\nruns = 8\nseed = 2{extra}"),
            &[
                ("model", model.clone()),
                ("train", data.clone()),
                ("test", data.clone()),
            ],
            &dir.path().join("ll"),
        )
    };
    let one = ll(&train("one", "[8]"), "").unwrap();
    assert!(!one.contains_key("lower_bound"));
    let two = ll(&train("two", "[8, 4]"), "").unwrap();
    assert_eq!(two["lower_bound"], 1.0);
    for k in ["log_z", "test_loglik", "train_loglik"] {
        assert!(two[k].is_finite(), "{k}: {two:?}");
    }
    // 192 binary pixels: a bound below 0 and above the uniform model's.
    let uniform = -192.0 * std::f64::consts::LN_2;
    assert!(
        two["test_loglik"] < 0.0 && two["test_loglik"] > uniform,
        "{two:?}"
    );
    let three = train("three", "[8, 4, 3]");
    let e = ll(&three, "").unwrap_err();
    assert!(
        e.is_user_error() && e.to_string().contains("3 layers"),
        "{e}"
    );
    let nan = ll(&three, "\nunsupported = \"nan\"").unwrap();
    assert!(nan["test_loglik"].is_nan());
}

/// `learn_sigma = true`: the trained model stores log sigma, sampling and
/// reconstruction use it; refused without Gaussian pixels or with autodiff.
#[test]
fn learned_sigma_through_the_stages() {
    let dir = tempfile::tempdir().unwrap();
    let data = images(dir.path());
    let base = "conv_channels = [4]\ndense = [6]\nepochs = 2\nbatch_size = 16\nlr = 0.01\nvisible = \"gaussian\"\nalgorithm = \"cd\"";
    for (bad, why) in [
        ("dense = [6]\nlearn_sigma = true", "gaussian"),
        (
            "dense = [6]\nvisible = \"gaussian\"\nlearn_sigma = true\ngradient = \"autodiff\"",
            "closed-form",
        ),
    ] {
        let e = train(&data, bad, &dir.path().join("bad")).unwrap_err();
        assert!(e.is_user_error() && e.to_string().contains(why), "{e}");
    }
    let out = dir.path().join("train");
    train(&data, &format!("{base}\nlearn_sigma = true"), &out).unwrap();
    let dbn = load_model(&out);
    let z = mrbm_core::layer::to_f64(dbn.layers[0].log_sigma.as_ref().expect("log sigma stored"));
    assert_eq!(
        z.len(),
        3,
        "one sigma per visible channel of the conv layer"
    );
    assert!(z.iter().all(|x| x.is_finite() && *x != 0.0), "{z:?}");
    assert!(dbn.layers[1].log_sigma.is_none());
    let sample_out = dir.path().join("sample");
    sample(&out, 4, &sample_out);
    let m = with_model(
        "reconstruct",
        "count = 4",
        &out,
        &data,
        &dir.path().join("rec"),
    )
    .unwrap();
    assert!(m["mse"].is_finite());
    // A dense layer straight on the pixels sees them flattened: its sigma
    // is one per pixel value, and the exact sampler must draw with it
    // (it once divided [chains, 3, H, W] by [1, 3*H*W, 1, 1] and failed).
    let dense = dir.path().join("dense");
    let flat = base.replace("conv_channels = [4]", "conv_channels = []");
    let toy = format!("{flat}\nlearn_sigma = true\nallow_dead_units = true");
    train(&data, &toy, &dense).unwrap();
    let z = load_model(&dense).layers[0]
        .log_sigma
        .clone()
        .expect("log sigma stored");
    assert!(z.dims()[0] > 3, "one sigma per pixel value: {:?}", z.dims());
    sample(&dense, 4, &dir.path().join("dense_sample"));
}

/// `train` takes the library's own `StackParams` and `OptimParams`
/// (flattened) plus the stage's `TrainOptions`: its defaults are theirs,
/// writing a default changes nothing, an unknown key is refused with the
/// nearest key of any of the three, and a typed value lands in its struct.
#[test]
fn train_params_are_the_library_structs() {
    use mrbm_core::stages::{TrainOptions, TrainParams};
    use mrbm_core::{OptimParams, StackParams};
    let canon = |text: &str| {
        let raw: toml::Table = toml::from_str(text).unwrap();
        stage("train").params(&raw)
    };
    let mut want = serde_json::Map::new();
    for part in [
        serde_json::to_value(StackParams::default()).unwrap(),
        serde_json::to_value(OptimParams::default()).unwrap(),
        serde_json::to_value(TrainOptions::default()).unwrap(),
    ] {
        want.extend(part.as_object().unwrap().clone());
    }
    let defaults = canon("").unwrap();
    assert_eq!(defaults, serde_json::Value::Object(want));
    assert_eq!(defaults["lr"], 0.03);
    assert_eq!(
        defaults["conv_channels"],
        serde_json::json!([64, 128, 256, 256])
    );
    // Defaults written out, toolbox ones included, give the same canonical form.
    assert_eq!(
        canon("lr = 0.03\ncd_k = 1\nfast_decay = 0.95\nunit = \"subunits\"\nlearn_sigma = false")
            .unwrap(),
        defaults
    );
    for (bad, near) in [
        ("lrr", "lr"),
        ("cd_kk", "cd_k"),
        ("kernal", "kernel"),
        ("checkpoint_evry", "checkpoint_every"),
    ] {
        let e = canon(&format!("{bad} = 1")).unwrap_err();
        assert!(e.message.starts_with("unknown field"), "{bad}: {e}");
        // serde's message for a plain struct: every key of the three.
        for key in ["`kernel`", "`lr`", "`cd_k`", "`checkpoint_every`"] {
            assert!(e.message.contains(key), "{bad}: {e}");
        }
        assert_eq!(e.key.as_deref(), Some(bad));
        assert_eq!(e.suggestion.as_deref(), Some(near), "{bad}");
    }
    let e = canon("epochs = \"ten\"").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("epochs"), "{e}");
    let e = canon("visible = \"gaussian\"\nvisible_scale = 2.0").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("visible_scale"));
    let v = canon("n = 255\nlr = 0.5\ncheckpoint_every = 3\nalgorithm = \"pcd\"").unwrap();
    let p: TrainParams = serde_json::from_value(v).unwrap();
    assert_eq!((p.stack.n, p.optim.lr), (255, 0.5));
    assert_eq!(p.optim.algorithm, mrbm_core::train::Algorithm::Pcd);
    assert_eq!(p.options.checkpoint_every, Some(3));
}

/// Only discrete Gaussian models key at the train stage's bumped version:
/// the other cached models stay valid.
#[test]
fn train_version_is_bumped_for_discrete_gaussian_pixels_only() {
    let s = stage("train");
    let params = |text: &str| s.params(&toml::from_str(text).unwrap()).unwrap();
    let plain = params("n = 255");
    let dg = params("n = 255\nvisible = \"discrete_gaussian\"\nn_hidden = 1");
    assert_eq!(s.version_for(&plain), s.version());
    assert_eq!(s.version_for(&dg), s.version() + 1);
}
