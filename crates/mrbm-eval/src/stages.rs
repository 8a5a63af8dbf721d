//! The stage kinds `svm`, `fid_stats` and `fid`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use mrbm_data::artifact::{FeatureSet, ImageSet};
use mrbm_stage::{InputSlot, JsonValue, Metrics, ParamError, StageContext, StageError, TypedStage};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::frechet::{frechet_distance_polling, GaussianStats};
use crate::inception::{self, FidInception};
use crate::svm::{self, SvmConfig};

// ---------------------------------------------------------------- svm

/// The `svm` stage: a one-vs-rest linear SVM ([`svm::fit`]) on the `train`
/// features, scored on `test`; its parameters are [`SvmConfig`].
pub struct SvmStage;

const SVM_INPUTS: &[InputSlot] = &[
    InputSlot::required(
        "train",
        Some("features.safetensors"),
        "training features (FeatureSet)",
    ),
    InputSlot::required(
        "test",
        Some("features.safetensors"),
        "held-out features (FeatureSet)",
    ),
];

fn read_features(path: &Path, slot: &str) -> Result<FeatureSet, StageError> {
    FeatureSet::read(path).map_err(|e| StageError::User(format!("input `{slot}`: {e}")))
}

impl TypedStage for SvmStage {
    const KIND: &'static str = "svm";
    const ABOUT: &'static str = "train a linear SVM on features and report its test error";
    // 2: LIBLINEAR's switch to the primal Newton solver after 300 dual
    // iterations (and max_iter's default 1000 -> 300) changes unconverged fits.
    const VERSION: u32 = 2;
    const INPUTS: &'static [InputSlot] = SVM_INPUTS;
    type Params = SvmConfig;

    fn metrics(_p: &Self::Params) -> Option<Vec<&'static str>> {
        Some(vec![
            "test_error",
            "train_error",
            "fit_seconds",
            "n_train",
            "n_test",
            "converged",
            "max_newton_iterations",
            "max_iterations",
        ])
    }

    fn validate(p: &SvmConfig) -> Result<(), ParamError> {
        if !(p.c > 0.0 && p.c.is_finite()) {
            return Err(ParamError::new(
                "C",
                format!("C must be a positive number, got {}", p.c),
            ));
        }
        if !(p.eps > 0.0 && p.eps.is_finite()) {
            return Err(ParamError::new(
                "eps",
                format!("eps must be a positive number, got {}", p.eps),
            ));
        }
        if p.max_iter == 0 {
            return Err(ParamError::new("max_iter", "max_iter must be at least 1"));
        }
        Ok(())
    }

    fn run(&self, ctx: &StageContext, cfg: SvmConfig) -> Result<Metrics, StageError> {
        let train = read_features(ctx.input("train")?, "train")?;
        let test = read_features(ctx.input("test")?, "test")?;
        if train.d != test.d {
            return Err(StageError::User(format!(
                "train features have {} dimensions but test features have {}",
                train.d, test.d
            )));
        }
        ctx.check_cancel()?;
        let start = Instant::now();
        // Ctrl-C / SIGTERM is polled inside every solver loop.
        let cancel = || ctx.check_cancel().is_err();
        let model = mrbm_stage::in_pool(ctx.threads, || {
            svm::fit_cancellable(
                &train.features,
                train.n,
                train.d,
                &train.labels,
                &cfg,
                &cancel,
            )
        })?
        .map_err(|e| match e {
            svm::SvmError::Stage(e) => e,
            e => StageError::User(format!("svm: {e}")),
        })?;
        let fit_seconds = start.elapsed().as_secs_f64();
        ctx.check_cancel()?;
        let (pred_test, pred_train) = mrbm_stage::in_pool(ctx.threads, || {
            (
                predict_polling(&model, &test, ctx, "svm (test)"),
                predict_polling(&model, &train, ctx, "svm (train)"),
            )
        })?;
        let (pred_test, pred_train) = (pred_test?, pred_train?);
        let test_error = svm::error_percent(&pred_test, &test.labels);
        let train_error = svm::error_percent(&pred_train, &train.labels);

        for r in &model.reports {
            let newton = if r.switched {
                format!(
                    ", then LIBLINEAR's switch to its primal solver: {} Newton steps (primal objective {:.6})",
                    r.newton_iterations, r.primal_objective
                )
            } else {
                String::new()
            };
            ctx.log(format!(
                "class {}: dual objective {:.6}, {} iterations{newton}{}, {} support vectors",
                r.class,
                r.dual_objective,
                r.iterations,
                if r.converged {
                    ""
                } else {
                    " (max_iter reached: not converged)"
                },
                r.n_sv
            ));
        }
        let switched = model.reports.iter().filter(|r| r.switched).count();
        if switched > 0 {
            // LIBLINEAR prints the same as a warning.
            ctx.warn(format!(
                "{switched} of {} binary problems reached max_iter = {} coordinate-descent \
                 iterations and switched to the primal Newton solver, as LIBLINEAR -s 1 does",
                model.reports.len(),
                cfg.max_iter
            ));
        }
        write_confusion(
            &ctx.out("confusion.csv"),
            &model.classes,
            &test.labels,
            &pred_test,
        )?;
        let report = serde_json::json!({
            "classes": model.classes,
            "reports": model.reports,
            "test_error_percent": test_error,
            "train_error_percent": train_error,
        });
        mrbm_stage::write_atomic(
            &ctx.out("svm.json"),
            serde_json::to_string_pretty(&report)
                .unwrap_or_default()
                .as_bytes(),
        )?;

        let mut m = Metrics::new();
        m.insert("test_error".into(), test_error);
        m.insert("train_error".into(), train_error);
        m.insert("fit_seconds".into(), fit_seconds);
        m.insert("n_train".into(), train.n as f64);
        m.insert("n_test".into(), test.n as f64);
        m.insert(
            "converged".into(),
            model.reports.iter().all(|r| r.converged) as u8 as f64,
        );
        m.insert(
            "max_newton_iterations".into(),
            model
                .reports
                .iter()
                .map(|r| r.newton_iterations)
                .max()
                .unwrap_or(0) as f64,
        );
        m.insert(
            "max_iterations".into(),
            model
                .reports
                .iter()
                .map(|r| r.iterations)
                .max()
                .unwrap_or(0) as f64,
        );
        Ok(m)
    }
}

/// Predictions in blocks of rows, polling for cancellation between blocks;
/// an SVM error is a user error named `what`.
fn predict_polling(
    model: &svm::LinearSvm,
    set: &FeatureSet,
    ctx: &StageContext,
    what: &str,
) -> Result<Vec<i64>, StageError> {
    // 2^22 multiply-adds per block and class: milliseconds.
    let block = ((1usize << 22) / (set.d.max(1) * model.weights.len().max(1))).max(1);
    let mut out = Vec::with_capacity(set.n);
    for s in (0..set.n).step_by(block) {
        ctx.check_cancel()?;
        let e = (s + block).min(set.n);
        let x = &set.features[s * set.d..e * set.d];
        out.extend(
            model
                .predict(x, e - s)
                .map_err(|e| StageError::User(format!("{what}: {e}")))?,
        );
    }
    Ok(out)
}

/// Confusion matrix of the test split: a row per true label, a column per
/// predicted label (the union of labels seen in training and test).
fn write_confusion(
    path: &Path,
    classes: &[i64],
    truth: &[i64],
    pred: &[i64],
) -> Result<(), StageError> {
    let mut labels: Vec<i64> = classes.iter().chain(truth.iter()).copied().collect();
    labels.sort_unstable();
    labels.dedup();
    let pos: HashMap<i64, usize> = labels.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    let k = labels.len();
    let mut counts = vec![0u64; k * k];
    for (t, p) in truth.iter().zip(pred) {
        counts[pos[t] * k + pos[p]] += 1;
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["true\\predicted".to_string()];
    header.extend(labels.iter().map(|l| l.to_string()));
    w.write_record(&header).map_err(StageError::failed)?;
    for (i, l) in labels.iter().enumerate() {
        let mut row = vec![l.to_string()];
        row.extend(counts[i * k..(i + 1) * k].iter().map(|c| c.to_string()));
        w.write_record(&row).map_err(StageError::failed)?;
    }
    let bytes = w.into_inner().map_err(StageError::failed)?;
    mrbm_stage::write_atomic(path, &bytes)
}

// ---------------------------------------------------------------- fid_stats

/// Parameters of the `fid_stats` stage.
#[derive(Debug, Clone, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct FidStatsParams {
    /// Images per forward pass (pytorch-fid's default 50); does not change the result.
    pub batch_size: usize,
    /// Use seeded random Inception weights instead of the `weights` input: for tests and
    /// benchmarks only, the values are not comparable with published FIDs.
    pub random_weights_seed: Option<u64>,
}

impl Default for FidStatsParams {
    fn default() -> Self {
        FidStatsParams {
            batch_size: 50,
            random_weights_seed: None,
        }
    }
}

pub struct FidStatsStage;

const FID_STATS_INPUTS: &[InputSlot] = &[
    InputSlot::required(
        "data",
        Some("data.safetensors"),
        "images (ImageSet, 1 or 3 channels)",
    ),
    InputSlot::optional(
        "weights",
        None,
        "pytorch-fid Inception weights converted by tools/fid_weights.py (safetensors)",
    ),
];

/// How to obtain the Inception weights: the message a user sees.
pub fn weights_help() -> String {
    format!(
        "fid_stats needs pytorch-fid's Inception weights, which mrbm never downloads. \
         1) Download {url} (file {file}; its SHA-256 starts with {sha}). \
         2) Convert it: python -m venv .venv && .venv/bin/pip install -r tools/requirements-eval.txt && \
         .venv/bin/python tools/fid_weights.py --pth {file} --out pt_inception-2015-12-05.safetensors \
         3) Give the stage that file: inputs = {{ data = \"...\", weights = \"data:pt_inception-2015-12-05.safetensors\" }} \
         (or an absolute path). For a smoke test without them, set params.random_weights_seed.",
        url = inception::FID_WEIGHTS_URL,
        file = inception::FID_WEIGHTS_FILE,
        sha = inception::FID_WEIGHTS_SHA256_PREFIX
    )
}

impl TypedStage for FidStatsStage {
    const KIND: &'static str = "fid_stats";
    const ABOUT: &'static str = "Inception statistics (mean, covariance) of an image set";
    const VERSION: u32 = 1;
    const INPUTS: &'static [InputSlot] = FID_STATS_INPUTS;
    const USES_DEVICE: bool = true;
    type Params = FidStatsParams;

    fn metrics(_p: &Self::Params) -> Option<Vec<&'static str>> {
        Some(vec!["count", "feature_seconds", "images_per_second"])
    }

    fn validate(p: &FidStatsParams) -> Result<(), ParamError> {
        if p.batch_size == 0 {
            return Err(ParamError::new(
                "batch_size",
                "batch_size must be at least 1",
            ));
        }
        Ok(())
    }
    fn missing_input_hint(&self, _params: &JsonValue, slot: &str, _path: &Path) -> Option<String> {
        (slot == "weights").then(weights_help)
    }

    fn run(&self, ctx: &StageContext, p: FidStatsParams) -> Result<Metrics, StageError> {
        let device = ctx.device.burn();
        let (weights, source) = match (ctx.optional_input("weights"), p.random_weights_seed) {
            (Some(path), _) => {
                if !path.is_file() {
                    return Err(StageError::User(format!(
                        "{}: no such file. {}",
                        path.display(),
                        weights_help()
                    )));
                }
                (
                    inception::read_weights(path).map_err(StageError::user)?,
                    path.display().to_string(),
                )
            }
            (None, Some(seed)) => (
                inception::random_weights(seed),
                format!("random weights, seed {seed}"),
            ),
            (None, None) => return Err(StageError::User(weights_help())),
        };
        let net = FidInception::from_weights(weights, device)
            .map_err(|e| StageError::User(format!("{e}. {}", weights_help())))?;
        let data_path = ctx.input("data")?;
        let set = ImageSet::read(data_path)
            .map_err(|e| StageError::User(format!("input `data`: {e}")))?;
        if set.c != 1 && set.c != 3 {
            return Err(StageError::User(format!(
                "input `data`: images have {} channels; FID needs 1 (grey) or 3 (RGB)",
                set.c
            )));
        }
        if set.n < 2 {
            return Err(StageError::User(format!(
                "input `data`: FID statistics need at least 2 images, got {}",
                set.n
            )));
        }
        let bar = ctx.bar(set.n as u64, "inception features");
        let start = Instant::now();
        let mut feats = Vec::with_capacity(set.n * inception::FEATURE_DIM);
        let per = set.image_len();
        // Polled between batches and before each convolution.
        let cancel = || ctx.check_cancel().is_err();
        mrbm_stage::in_pool(ctx.threads, || -> Result<(), StageError> {
            for s in (0..set.n).step_by(p.batch_size) {
                ctx.check_cancel()?;
                let e = (s + p.batch_size).min(set.n);
                let f = net
                    .features_u8_polling(
                        &set.pixels()[s * per..e * per],
                        e - s,
                        set.c,
                        set.h,
                        set.w,
                        &cancel,
                    )
                    .map_err(|e| match e {
                        inception::InceptionError::Stage(e) => e,
                        e => StageError::failed(e),
                    })?;
                feats.extend_from_slice(&f);
                bar.inc((e - s) as u64);
            }
            Ok(())
        })??;
        bar.finish_and_clear();
        let feature_seconds = start.elapsed().as_secs_f64();
        let stats = GaussianStats::from_features(&feats, set.n, inception::FEATURE_DIM)
            .map_err(|e| StageError::Failed(format!("fid_stats: {e}")))?;
        let mut meta = HashMap::new();
        meta.insert("mrbm_artifact".to_string(), "fid_stats".to_string());
        meta.insert("count".to_string(), set.n.to_string());
        meta.insert("weights".to_string(), source.clone());
        write_stats(&ctx.out("stats.safetensors"), &stats, meta)?;
        ctx.log(format!(
            "{} images, weights {source}, {:.1} images/s",
            set.n,
            set.n as f64 / feature_seconds
        ));
        let mut m = Metrics::new();
        m.insert("count".into(), set.n as f64);
        m.insert("feature_seconds".into(), feature_seconds);
        m.insert(
            "images_per_second".into(),
            set.n as f64 / feature_seconds.max(1e-9),
        );
        Ok(m)
    }
}

/// Write mu f64 [D] and sigma f64 [D, D].
pub fn write_stats(
    path: &Path,
    s: &GaussianStats,
    meta: HashMap<String, String>,
) -> Result<(), StageError> {
    let mb: Vec<u8> = s.mu.iter().flat_map(|v| v.to_le_bytes()).collect();
    let sb: Vec<u8> = s.sigma.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mu = TensorView::new(Dtype::F64, vec![s.dim], &mb).map_err(StageError::failed)?;
    let sigma = TensorView::new(Dtype::F64, vec![s.dim, s.dim], &sb).map_err(StageError::failed)?;
    mrbm_data::artifact::write_tensors(path, vec![("mu", mu), ("sigma", sigma)], Some(meta))
        .map_err(StageError::failed)
}

/// Read mu and sigma (f64; f32 accepted, e.g. from other tools).
pub fn read_stats(path: &Path) -> Result<(Vec<f64>, Vec<f64>), StageError> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    let bad = |m: String| StageError::User(format!("{}: {m}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let get = |name: &str, rank: usize| -> Result<(Vec<usize>, Vec<f64>), StageError> {
        let t = st
            .tensor(name)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        if t.shape().len() != rank {
            return Err(bad(format!("tensor `{name}` has shape {:?}", t.shape())));
        }
        let v = match t.dtype() {
            Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
            Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")) as f64)
                .collect(),
            other => return Err(bad(format!("tensor `{name}` is {other:?}, expected f64"))),
        };
        Ok((t.shape().to_vec(), v))
    };
    let (ms, mu) = get("mu", 1)?;
    let (ss, sigma) = get("sigma", 2)?;
    if ss != [ms[0], ms[0]] {
        return Err(bad(format!(
            "sigma has shape {ss:?} but mu has {} entries",
            ms[0]
        )));
    }
    Ok((mu, sigma))
}

// ---------------------------------------------------------------- fid

/// The `fid` stage has no parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct FidParams {}

pub struct FidStage;

const FID_INPUTS: &[InputSlot] = &[
    InputSlot::required(
        "a",
        Some("stats.safetensors"),
        "statistics of one image set (fid_stats output)",
    ),
    InputSlot::required(
        "b",
        Some("stats.safetensors"),
        "statistics of the other image set",
    ),
];

impl TypedStage for FidStage {
    const KIND: &'static str = "fid";
    const ABOUT: &'static str = "Frechet Inception distance between two sets of statistics";
    const VERSION: u32 = 1;
    const INPUTS: &'static [InputSlot] = FID_INPUTS;
    type Params = FidParams;

    fn metrics(_p: &Self::Params) -> Option<Vec<&'static str>> {
        Some(vec!["fid", "mean_term", "trace_sqrt", "seconds"])
    }

    fn run(&self, ctx: &StageContext, _params: FidParams) -> Result<Metrics, StageError> {
        let (mu1, s1) = read_stats(ctx.input("a")?)?;
        let (mu2, s2) = read_stats(ctx.input("b")?)?;
        if mu1.len() != mu2.len() {
            return Err(StageError::User(format!(
                "statistics `a` have {} dimensions, `b` {}",
                mu1.len(),
                mu2.len()
            )));
        }
        let start = Instant::now();
        let cancel = || ctx.check_cancel().is_err();
        let f = mrbm_stage::in_pool(ctx.threads, || {
            frechet_distance_polling(&mu1, &s1, &mu2, &s2, &cancel)
        })?
        .map_err(|e| match e {
            crate::frechet::FrechetError::Stage(e) => e,
            e => StageError::User(format!("fid: {e}")),
        })?;
        let mut m = BTreeMap::new();
        m.insert("fid".into(), f.distance);
        m.insert("mean_term".into(), f.mean_term);
        m.insert("trace_sqrt".into(), f.trace_sqrt);
        m.insert("seconds".into(), start.elapsed().as_secs_f64());
        Ok(m)
    }
}
