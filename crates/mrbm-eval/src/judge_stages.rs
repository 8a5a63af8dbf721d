//! The stage kinds `judge_fit` (train the judge on real labelled images)
//! and `judge` (score a set of generated images with it, beside held-out
//! real images). See [`crate::judge`] for what the scores mean.

use std::time::Instant;

use mrbm_data::artifact::ImageSet;
use mrbm_stage::{InputSlot, Metrics, ParamError, StageContext, StageError, TypedStage};
use serde::{Deserialize, Serialize};

use crate::judge::{self, Judge, JudgeConfig, JudgeError};

fn to_stage(e: JudgeError) -> StageError {
    match e {
        JudgeError::Stage(e) => e,
        JudgeError::Frechet(crate::frechet::FrechetError::Stage(e)) => e,
        e => StageError::User(e.to_string()),
    }
}

fn read_images(ctx: &StageContext, slot: &str, default: &str) -> Result<ImageSet, StageError> {
    let p = mrbm_stage::resolve_file(ctx.input(slot)?, default);
    ImageSet::read(&p).map_err(|e| StageError::User(format!("input `{slot}`: {e}")))
}

// ---------------------------------------------------------------- judge_fit

/// The `judge_fit` stage: trains the judge's classifier on the labelled
/// real images of `train` ([`judge::fit`]); writes `judge.safetensors`.
pub struct JudgeFitStage;

const JUDGE_FIT_INPUTS: &[InputSlot] = &[InputSlot::required(
    "train",
    Some("data.safetensors"),
    "real labelled training images (ImageSet), e.g. split/train.safetensors",
)];

impl TypedStage for JudgeFitStage {
    const KIND: &'static str = "judge_fit";
    const VERSION: u32 = 1;
    const INPUTS: &'static [InputSlot] = JUDGE_FIT_INPUTS;
    const ABOUT: &'static str =
        "train an offline judge of generated images (a small classifier and its feature space) on real labelled images";
    type Params = JudgeConfig;

    fn validate(p: &JudgeConfig) -> Result<(), ParamError> {
        p.check().map_err(|e| {
            let msg = e.to_string();
            let key = [
                "hidden",
                "epochs",
                "batch_size",
                "lr",
                "weight_decay",
                "holdout",
            ]
            .into_iter()
            .find(|k| msg.contains(&format!("{k} must")))
            .unwrap_or("hidden");
            ParamError::new(key, msg.trim_start_matches("invalid parameter: "))
        })
    }

    fn run(&self, ctx: &StageContext, cfg: JudgeConfig) -> Result<Metrics, StageError> {
        let set = read_images(ctx, "train", "data.safetensors")?;
        let start = Instant::now();
        let cancel = || ctx.check_cancel().is_err();
        let (j, report) = mrbm_stage::in_pool(ctx.threads, || {
            judge::fit(
                set.pixels(),
                set.n,
                [set.c, set.h, set.w],
                &set.labels,
                &cfg,
                &cancel,
            )
        })?
        .map_err(to_stage)?;
        let fit_seconds = start.elapsed().as_secs_f64();
        j.save(&ctx.out("judge.safetensors")).map_err(to_stage)?;
        mrbm_stage::write_atomic(
            &ctx.out("judge_fit.json"),
            serde_json::to_string_pretty(&report)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        ctx.log(format!(
            "{} images ({} held out), {} classes: train accuracy {:.4}, held-out accuracy {:.4}, \
             temperature {:.3} (held-out NLL {:.4} -> {:.4}), {fit_seconds:.1} s",
            set.n,
            report.n_holdout,
            j.classes.len(),
            report.train_accuracy,
            report.holdout_accuracy,
            report.temperature,
            report.holdout_nll_raw,
            report.holdout_nll
        ));
        let mut m = Metrics::new();
        m.insert("train_accuracy".into(), report.train_accuracy);
        if report.n_holdout > 0 {
            m.insert("holdout_accuracy".into(), report.holdout_accuracy);
            m.insert("holdout_nll".into(), report.holdout_nll);
        }
        m.insert("temperature".into(), report.temperature);
        m.insert("classes".into(), j.classes.len() as f64);
        m.insert("n_train".into(), report.n_train as f64);
        m.insert("fit_seconds".into(), fit_seconds);
        Ok(m)
    }
}

// ---------------------------------------------------------------- judge

/// Parameters of the `judge` stage.
#[derive(Debug, Clone, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeParams {
    /// A class counts as covered when it is the classifier's argmax for at least this fraction of the images.
    pub coverage_threshold: f64,
    /// At most this many disjoint subsets of the reference, each as large as the sample set, are scored for the real baseline.
    pub max_subsets: usize,
    /// Seed of the permutation that draws the reference subsets.
    pub seed: u64,
}

impl Default for JudgeParams {
    fn default() -> Self {
        JudgeParams {
            coverage_threshold: 0.05,
            max_subsets: 10,
            seed: 0,
        }
    }
}

/// The `judge` stage: scores `samples` with the judge of `judge_fit`, and
/// the `reference` real images the same way, in subsets of the samples' size.
pub struct JudgeStage;

const JUDGE_INPUTS: &[InputSlot] = &[
    InputSlot::required(
        "judge",
        Some("judge.safetensors"),
        "a trained judge (judge_fit stage)",
    ),
    InputSlot::required(
        "samples",
        Some("samples.safetensors"),
        "images to judge (ImageSet: a sample stage's output, or any image set)",
    ),
    InputSlot::required(
        "reference",
        Some("data.safetensors"),
        "held-out real images, not seen by judge_fit (e.g. split/val.safetensors): the real baseline",
    ),
];

impl TypedStage for JudgeStage {
    const KIND: &'static str = "judge";
    // 2: precision and recall in the judge's features (metrics and judge.json).
    const VERSION: u32 = 2;
    const INPUTS: &'static [InputSlot] = JUDGE_INPUTS;
    const ABOUT: &'static str =
        "score generated images: classifier score exp(E KL(p(y|x)||p(y))), class coverage, Frechet distance and precision / recall (k = 3) in the judge's features, each beside held-out real images";
    type Params = JudgeParams;

    fn validate(p: &JudgeParams) -> Result<(), ParamError> {
        if !(p.coverage_threshold > 0.0 && p.coverage_threshold <= 1.0) {
            return Err(ParamError::new(
                "coverage_threshold",
                format!(
                    "coverage_threshold must be in (0, 1], got {}",
                    p.coverage_threshold
                ),
            ));
        }
        if p.max_subsets == 0 {
            return Err(ParamError::new(
                "max_subsets",
                "max_subsets must be at least 1",
            ));
        }
        Ok(())
    }

    fn run(&self, ctx: &StageContext, p: JudgeParams) -> Result<Metrics, StageError> {
        let jpath = mrbm_stage::resolve_file(ctx.input("judge")?, "judge.safetensors");
        let j = Judge::load(&jpath).map_err(to_stage)?;
        let samples = read_images(ctx, "samples", "samples.safetensors")?;
        let reference = read_images(ctx, "reference", "data.safetensors")?;
        for (what, s) in [("samples", &samples), ("reference images", &reference)] {
            if [s.c, s.h, s.w] != j.shape {
                return Err(to_stage(JudgeError::ImageShape {
                    what: what.into(),
                    got: [s.c, s.h, s.w],
                    want: j.shape,
                }));
            }
        }
        if samples.n < 2 || reference.n < 2 {
            return Err(StageError::User(format!(
                "the judge needs at least 2 samples and 2 reference images, got {} and {}",
                samples.n, reference.n
            )));
        }
        let start = Instant::now();
        let cancel = || ctx.check_cancel().is_err();
        let jd = mrbm_stage::in_pool(ctx.threads, || {
            judge::judge_against(
                &j,
                (samples.pixels(), samples.n),
                (reference.pixels(), reference.n),
                p.coverage_threshold,
                p.max_subsets,
                p.seed,
                &cancel,
            )
        })?
        .map_err(to_stage)?;
        // The judge's accuracy on the reference, when it is labelled: a
        // judge that cannot classify real images cannot judge samples.
        let labelled = reference.labels.iter().all(|&l| l >= 0);
        let ref_accuracy = if labelled {
            let pred = j
                .predict(reference.pixels(), reference.n)
                .map_err(to_stage)?;
            pred.iter()
                .zip(&reference.labels)
                .filter(|(a, b)| a == b)
                .count() as f64
                / reference.n as f64
        } else {
            f64::NAN
        };
        if jd.real_subset_size < samples.n {
            ctx.warn(format!(
                "the reference has {} images, fewer than the {} samples: the real baseline is one \
                 set of {} (scores of sets of different sizes are not quite comparable)",
                reference.n, samples.n, reference.n
            ));
        }
        let report = serde_json::json!({
            "classes": j.classes,
            "samples": jd.samples,
            "real": jd.real,
            "real_subsets": jd.real_subsets,
            "real_subset_size": jd.real_subset_size,
            "samples_precision_recall": jd.samples_pr,
            "real_precision_recall": jd.real_pr,
            "reference_accuracy": ref_accuracy,
        });
        mrbm_stage::write_atomic(
            &ctx.out("judge.json"),
            serde_json::to_string_pretty(&report)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        let fr: Vec<String> = jd
            .samples
            .class_fractions
            .iter()
            .zip(&j.classes)
            .map(|(f, c)| format!("{c}: {:.0}%", 100.0 * f))
            .collect();
        ctx.log(format!(
            "{} samples: score {:.3} (real {:.3}), coverage {} (real {:.1}), frechet {:.3} (real {:.3}); classes {}",
            samples.n,
            jd.samples.score,
            jd.real.score,
            jd.samples.coverage,
            jd.real.coverage,
            jd.samples.frechet,
            jd.real.frechet,
            fr.join(", ")
        ));
        let mut m = Metrics::new();
        m.insert("score".into(), jd.samples.score);
        m.insert("score_real".into(), jd.real.score);
        m.insert("score_rel".into(), jd.score_rel());
        m.insert("coverage".into(), jd.samples.coverage);
        m.insert("coverage_real".into(), jd.real.coverage);
        m.insert("coverage_rel".into(), jd.coverage_rel());
        m.insert("frechet".into(), jd.samples.frechet);
        m.insert("frechet_real".into(), jd.real.frechet);
        m.insert("frechet_rel".into(), jd.frechet_rel());
        m.insert("confidence".into(), jd.samples.confidence);
        m.insert("confidence_real".into(), jd.real.confidence);
        m.insert("precision".into(), jd.samples_pr.precision);
        m.insert("precision_real".into(), jd.real_pr.precision);
        m.insert("recall".into(), jd.samples_pr.recall);
        m.insert("recall_real".into(), jd.real_pr.recall);
        if labelled {
            m.insert("reference_accuracy".into(), ref_accuracy);
        }
        m.insert("n_samples".into(), samples.n as f64);
        m.insert("real_subsets".into(), jd.real_subsets as f64);
        m.insert("seconds".into(), start.elapsed().as_secs_f64());
        Ok(m)
    }
}
