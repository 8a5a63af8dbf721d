//! The stage kinds of the model: `train`, `sample`, `reconstruct`,
//! `features`.

use std::time::Instant;

use burn::tensor::{DType, Device};
use mrbm_data::artifact::{FeatureSet, ImageSet};
use mrbm_stage::{
    in_pool, resolve_file, InputSlot, Metrics, ParamError, Stage, StageContext, StageError,
    TypedStage,
};
use serde::{Deserialize, Serialize};

use crate::ais;
use crate::checkpoint;
use crate::layer::to_f64;
use crate::plot::{image_grid, loss_plot};
use crate::quality;
use crate::resume;
use crate::sample::{gibbs_from, noise_start, Anneal, Sampler};
use crate::stack::{Coupling, Dbn, StackParams, VisibleKind};
use crate::train::{fit, FitEnv, FitSetup, Fitted, GradientMode, OptimParams};

pub fn all() -> Vec<Box<dyn Stage>> {
    vec![
        Box::new(TrainStage),
        Box::new(SampleStage),
        Box::new(ReconstructStage),
        Box::new(FeaturesStage),
        Box::new(LoglikStage),
        Box::new(PixelFeaturesStage),
    ]
}

fn read_images(ctx: &StageContext, slot: &str) -> Result<ImageSet, StageError> {
    let p = resolve_file(ctx.input(slot)?, "data.safetensors");
    ImageSet::read(&p).map_err(|e| StageError::User(e.to_string()))
}

fn read_model(ctx: &StageContext, device: &Device) -> Result<Dbn, StageError> {
    let p = resolve_file(ctx.input("model")?, "model.safetensors");
    Ok(checkpoint::load(&p, device)?)
}

fn check_input_shape(dbn: &Dbn, set: &ImageSet) -> Result<(), StageError> {
    let want = dbn.spec.input;
    if [set.c, set.h, set.w] != want {
        return Err(StageError::User(format!(
            "the data's images are {}x{}x{} (CxHxW) but the model was trained on {}x{}x{}: transform the data first",
            set.c, set.h, set.w, want[0], want[1], want[2]
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------- train

/// Parameters of `train`: the library's own [`StackParams`] (architecture,
/// units) and [`OptimParams`] (optimiser, training rule), and the stage's
/// [`TrainOptions`], flattened into one table. Their doc comments are what
/// `mrbm params train` prints; each default is written once, in its struct.
#[derive(Debug, Clone, Default, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct TrainParams {
    #[serde(flatten)]
    pub stack: StackParams,
    #[serde(flatten)]
    pub optim: OptimParams,
    #[serde(flatten)]
    pub options: TrainOptions,
}

/// What only the `train` stage uses (data, Gaussian pixels, checkpoints).
#[derive(Debug, Clone, Default, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Train on the first `max_images` images only (all when unset).
    pub max_images: Option<usize>,
    // Left out of the canonical form at their defaults, so older keys stay valid.
    /// Gaussian pixel units: standardise by one mean and std for the whole
    /// set ("global") or by each pixel position's own ("pixel"; a std below
    /// one grey level counts as one, so constant pixels map to 0). Stored
    /// with the model, so samples map back to pixels.
    #[serde(skip_serializing_if = "is_default")]
    pub standardise: Standardise,
    /// Gaussian pixel units with a learned sigma per visible unit (dense) or
    /// channel (conv), parametrised as log sigma (starting at 0) so it stays
    /// positive: v | h ~ N(a + sigma W h, sigma^2), x(v) = b + (v / sigma) W.
    #[serde(skip_serializing_if = "is_default")]
    pub learn_sigma: bool,
    /// Write a resume checkpoint every this many epochs (README, "Long
    /// runs"). Not part of the stage key: it cannot change the result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// ... and/or every this many minutes (default 10 when neither is
    /// given). Not part of the stage key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_minutes: Option<f64>,
    /// Keep a model in which every hidden unit of some layer is stuck
    /// (always off or always on): by default such a stage fails, since a
    /// dead layer gives chance-level features and frozen samples.
    #[serde(skip_serializing_if = "is_default")]
    pub allow_dead_units: bool,
}

/// How Gaussian pixel units standardise the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Standardise {
    #[default]
    Global,
    Pixel,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

pub struct TrainStage;

const TRAIN_INPUTS: &[InputSlot] = &[InputSlot::required(
    "data",
    Some("data.safetensors"),
    "training images (ImageSet)",
)];

impl TypedStage for TrainStage {
    const KIND: &'static str = "train";
    const LOSS_CURVE: Option<&'static str> = Some("loss.csv");
    const ABOUT: &'static str =
        "train a multinary RBM / DBN stack on images; writes model.safetensors";
    // 2: conv layers on the CPU use host_conv (same maps, other rounding).
    // 3: its weight gradient sums data and reconstruction apart.
    // 4: the closed-form step runs on the host (host_cd): vectorised
    //    sigmoid/softplus and both phases in one product (other rounding).
    const VERSION: u32 = 4;
    // 5, discrete Gaussian pixels only: their draws come from chunked
    //    streams in parallel (discrete_gaussian::draw_batch), other numbers.
    // 6, the sampled rules (CD-k, PCD, FPCD, noise-start CD, the paper's
    //    sampled reconstruction) but Gibbs-Langevin: on the host
    //    (host_sampled) with counter-based f32 draws, other numbers.
    // 7, the autodiff gradient (gradient = "autodiff", or coupling =
    //    "backprop"): its products, unit means and log-partitions are host
    //    ops with their own backward passes (autodiff_host), other rounding.
    fn version_for(p: &TrainParams) -> u32 {
        if p.optim.uses_autodiff() {
            7
        } else if p.optim.sampled_negative_phase()
            && p.optim.algorithm != crate::train::Algorithm::GibbsLangevin
        {
            6
        } else if p.stack.visible == VisibleKind::DiscreteGaussian {
            5
        } else {
            Self::VERSION
        }
    }
    const INPUTS: &'static [InputSlot] = TRAIN_INPUTS;
    const USES_DEVICE: bool = true;
    type Params = TrainParams;

    fn metrics(_p: &Self::Params) -> Option<Vec<&'static str>> {
        Some(vec![
            "final_loss",
            "first_epoch_loss",
            "seconds",
            "images_per_second",
            "layers",
        ])
    }

    fn memory_floor(p: &TrainParams) -> Option<(f64, String)> {
        // The estimate `run` checks, with the input's size at its least
        // (one pixel, one image): dense weights and activations only.
        let d = &p.stack.dense;
        let weights: f64 = d.first().map_or(0.0, |&x| x as f64)
            + d.windows(2).map(|w| w[0] as f64 * w[1] as f64).sum::<f64>();
        let acts: f64 = d.iter().map(|&x| 2.0 * x as f64).sum();
        let bytes = 4.0 * (4.0 * weights + 8.0 * acts);
        Some((
            bytes,
            format!("training this stack (at least {weights} weights)"),
        ))
    }

    fn param_names() -> Vec<&'static str> {
        [
            mrbm_stage::field_names::<StackParams>(),
            mrbm_stage::field_names::<OptimParams>(),
            mrbm_stage::field_names::<TrainOptions>(),
        ]
        .concat()
    }

    fn validate(p: &TrainParams) -> Result<(), ParamError> {
        p.optim.validate().map_err(|m| ParamError {
            key: None,
            message: m,
            suggestion: None,
        })?;
        if p.optim.epochs == 0 {
            return Err(ParamError::new("epochs", "epochs must be at least 1"));
        }
        if p.options.checkpoint_every == Some(0) {
            return Err(ParamError::new(
                "checkpoint_every",
                "checkpoint_every must be at least 1 (epochs)",
            ));
        }
        if let Some(m) = p.options.checkpoint_minutes {
            if !(m.is_finite() && m > 0.0) {
                return Err(ParamError::new(
                    "checkpoint_minutes",
                    format!("checkpoint_minutes must be a positive number, got {m}"),
                ));
            }
        }
        if p.options.learn_sigma && p.stack.visible != VisibleKind::Gaussian {
            return Err(ParamError::new(
                "learn_sigma",
                "learn_sigma is for Gaussian pixel units: set visible = \"gaussian\"",
            ));
        }
        if p.options.learn_sigma
            && (p.optim.gradient == GradientMode::Autodiff
                || p.optim.coupling == Coupling::Backprop)
        {
            return Err(ParamError::new(
                "learn_sigma",
                "learn_sigma uses the closed-form gradient: it needs gradient = \"auto\" or \"closed_form\" and coupling = \"detached\"",
            ));
        }
        if p.options.standardise == Standardise::Pixel && p.stack.visible != VisibleKind::Gaussian {
            return Err(ParamError::new(
                "standardise",
                "standardise = \"pixel\" is for Gaussian pixel units: set visible = \"gaussian\"",
            ));
        }
        if p.stack.visible == VisibleKind::Gaussian && p.stack.visible_scale.is_some() {
            return Err(ParamError::new(
                "visible_scale",
                "visible = \"gaussian\" standardises the pixels itself: leave visible_scale out",
            ));
        }
        crate::langevin::validate_train(&p.stack, &p.optim)
            .map_err(|(k, m)| ParamError::new(k, m))?;
        Ok(())
    }

    fn run(&self, ctx: &StageContext, p: TrainParams) -> Result<Metrics, StageError> {
        let device = ctx.device.burn();
        let set = read_images(ctx, "data")?;
        let n = p.options.max_images.map_or(set.n, |m| m.min(set.n));
        if n == 0 {
            return Err(StageError::User("the training data has no images".into()));
        }
        let mut spec = p
            .stack
            .build_spec([set.c, set.h, set.w])
            .map_err(StageError::User)?;
        standardise(ctx, &mut spec, &set, n, &p);
        for (i, l) in spec.layers.iter().enumerate() {
            ctx.log(format!("layer {}: {}", i + 1, l.describe()));
        }
        check_train_memory(&spec, p.optim.batch_size.min(n))?;
        let started = Instant::now();
        let resume_file = ctx.resume_dir.map(|d| d.join(resume::FILE));
        let setup = FitSetup {
            init_std: p.stack.init_std,
            learn_sigma: p.options.learn_sigma,
            resume_file: resume_file.as_deref(),
            checkpoint_every: p.options.checkpoint_every,
            checkpoint_minutes: p.options.checkpoint_minutes,
        };
        let bs = p.optim.batch_size.min(n);
        let pixels = &set.pixels()[..n * set.image_len()];
        let env = StageFitEnv {
            ctx,
            bar: std::sync::OnceLock::new(),
        };
        let fitted = in_pool(ctx.threads, || {
            fit(spec, &p.optim, &setup, (pixels, n), device, &env)
        })?;
        if let Some(bar) = env.bar.get() {
            bar.finish_and_clear();
        }
        let Fitted { trainer, hist } = fitted?;
        let seconds = started.elapsed().as_secs_f64();
        let (epochs, totals) = write_training(ctx, &trainer.dbn, &hist)?;
        check_stuck(
            ctx,
            &trainer.dbn,
            (pixels, n),
            device,
            p.options.allow_dead_units,
        )?;
        let mut m = Metrics::new();
        m.insert("final_loss".into(), *epochs.last().unwrap_or(&f64::NAN));
        m.insert(
            "first_epoch_loss".into(),
            *epochs.first().unwrap_or(&f64::NAN),
        );
        m.insert("seconds".into(), seconds);
        m.insert(
            "images_per_second".into(),
            (totals.len() * bs) as f64 / seconds.max(1e-9),
        );
        m.insert("layers".into(), trainer.dbn.layers.len() as f64);
        Ok(m)
    }
}

/// Gaussian visible units: standardise the pixels over the `n` training
/// images, by each pixel position's own mean and std or by one mean and
/// std for all (`standardise`), into the spec's scale and offset.
fn standardise(
    ctx: &StageContext,
    spec: &mut crate::stack::StackSpec,
    set: &ImageSet,
    n: usize,
    p: &TrainParams,
) {
    if p.stack.visible == VisibleKind::Gaussian && p.options.standardise == Standardise::Pixel {
        // Each pixel position by its own mean and std over the images.
        let (len, px) = (set.image_len(), &set.pixels()[..n * set.image_len()]);
        let mut sum = vec![0.0f64; len];
        let mut sq = vec![0.0f64; len];
        for img in px.chunks_exact(len) {
            for (j, &x) in img.iter().enumerate() {
                sum[j] += x as f64;
                sq[j] += (x as f64) * (x as f64);
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
        let std: Vec<f64> = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| (q / n as f64 - m * m).max(0.0).sqrt().max(1.0))
            .collect();
        spec.pixel_scale = std.iter().map(|s| 1.0 / s).collect();
        spec.pixel_offset = mean.iter().zip(&std).map(|(m, s)| m / s).collect();
        let floored = sq
            .iter()
            .zip(&mean)
            .filter(|(q, m)| *q / n as f64 - *m * *m < 1.0)
            .count();
        ctx.log(format!(
            "gaussian visible units: each of the {len} pixels standardised by its own mean and std ({floored} with a std below one grey level use 1)"
        ));
    } else if p.stack.visible == VisibleKind::Gaussian {
        // Standardise: v = (pixel - mean) / std over the training images.
        let px = &set.pixels()[..n * set.image_len()];
        let mean = px.iter().map(|&x| x as f64).sum::<f64>() / px.len() as f64;
        let var = px.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / px.len() as f64;
        let std = var.sqrt().max(1e-6);
        spec.visible_scale = 1.0 / std;
        spec.visible_offset = mean / std;
        ctx.log(format!(
            "gaussian visible units: pixels standardised by mean {mean:.3}, std {std:.3}"
        ));
    }
}

/// Refuse a stack whose training would not fit in memory, before
/// allocating it.
fn check_train_memory(spec: &crate::stack::StackSpec, batch: usize) -> Result<(), StageError> {
    // Weights with gradient and optimiser state (about 4 copies), plus
    // a batch's activations through the stack (about 8 copies in flight).
    let weights: f64 = spec
        .layers
        .iter()
        .map(|l| l.weight_shape().iter().map(|&d| d as f64).product::<f64>())
        .sum();
    let acts: f64 = spec
        .layers
        .iter()
        .map(|l| {
            let v: f64 = l.visible_shape().iter().map(|&d| d as f64).product();
            let h: f64 = l.hidden_shape().iter().map(|&d| d as f64).product();
            v + h
        })
        .sum();
    mrbm_stage::check_memory(
        4.0 * (4.0 * weights + 8.0 * batch as f64 * acts),
        &format!("training this stack ({} weights, batch {})", weights, batch),
    )
}

/// The `train` stage's side of [`FitEnv`]: its log, a progress bar made
/// when training starts, and its cancel flag.
struct StageFitEnv<'c> {
    ctx: &'c StageContext<'c>,
    bar: std::sync::OnceLock<indicatif::ProgressBar>,
}

impl FitEnv for StageFitEnv<'_> {
    fn log(&self, line: String) {
        self.ctx.log(line);
    }
    fn warn(&self, line: String) {
        self.ctx.warn(line);
    }
    fn start(&self, total: u64, done: u64) {
        let bar = self.bar.get_or_init(|| self.ctx.bar(total, "training"));
        mrbm_stage::progress::resume_at(bar, done);
    }
    fn progress(&self, done: u64, total: u64, running: f64) {
        if let Some(bar) = self.bar.get() {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(format!("loss {running:.4}"));
        }
    }
    fn cancelled(&self) -> bool {
        self.ctx.check_cancel().is_err()
    }
}

/// Write the trained model, its loss curve (CSV and PNG) and the epoch
/// means to the log; the epoch means and the batches' total losses.
fn write_training(
    ctx: &StageContext,
    dbn: &Dbn,
    hist: &crate::train::History,
) -> Result<(Vec<f64>, Vec<f64>), StageError> {
    checkpoint::save(dbn, &ctx.out("model.safetensors"))?;
    let loss_csv = hist.to_csv();
    mrbm_stage::write_atomic(&ctx.out("loss.csv"), loss_csv.as_bytes())?;
    let totals: Vec<f64> = hist.batches.iter().map(|b| b.2.iter().sum()).collect();
    loss_plot(&loss_csv, ctx.stage_id, &ctx.out("loss.png"))?;
    let epochs = hist.epoch_means();
    for (e, l) in epochs.iter().enumerate() {
        ctx.log(format!("epoch {}: mean loss {l:.6}", e + 1));
    }
    Ok((epochs, totals))
}

/// Warn about layers with mostly stuck hidden units; refuse a dead layer
/// unless `allow_dead_units`.
fn check_stuck(
    ctx: &StageContext,
    dbn: &Dbn,
    (pixels, n): (&[u8], usize),
    device: &Device,
    allow_dead_units: bool,
) -> Result<(), StageError> {
    let stuck = stuck_units(dbn, pixels, n, device);
    for s in &stuck {
        ctx.warn(s.warning());
    }
    if let Some(s) = stuck.iter().find(|s| s.all()) {
        if allow_dead_units {
            ctx.warn(format!(
                "layer {} is dead; kept because allow_dead_units = true",
                s.layer
            ));
        } else {
            return Err(StageError::User(s.refusal()));
        }
    }
    Ok(())
}

/// A layer whose hidden units are mostly stuck: on (at most) the first
/// 512 training images, `stuck` of its `total` hidden channels have a mean
/// activation below 1 % or above 99 % of their range.
#[derive(Debug, Clone, PartialEq)]
struct Stuck {
    /// 1-based.
    layer: usize,
    stuck: usize,
    total: usize,
    images: usize,
}

impl Stuck {
    /// Every unit of the layer is stuck.
    fn all(&self) -> bool {
        self.stuck == self.total
    }

    fn warning(&self) -> String {
        format!(
            "layer {}: {} of {} hidden channels are always off or always on (mean activation below 1 % or above 99 % of their range on the first {} training images): its features are likely poor and its samples likely frozen; a smaller lr, or lr_mode = \"binary_equivalent\" for N > 1, usually helps",
            self.layer, self.stuck, self.total, self.images
        )
    }

    fn refusal(&self) -> String {
        format!(
            "training left layer {} dead: all {} of its hidden channels are always off or always on (mean activation below 1 % or above 99 % of their range on the first {} training images), so its features are at chance and its samples frozen. Use a smaller lr, or lr_mode = \"binary_equivalent\" for N > 1; or set allow_dead_units = true in the train stage's params to keep this model anyway",
            self.layer, self.total, self.images
        )
    }
}

/// Layers whose hidden units are mostly stuck (more than half). A stuck
/// layer gives useless features and frozen samples, and the loss does not
/// show it (it is unbounded below), so say so; a layer with every unit
/// stuck fails the stage unless `allow_dead_units`.
fn stuck_units(dbn: &Dbn, pixels: &[u8], n: usize, device: &Device) -> Vec<Stuck> {
    let images = quality::images_used(n);
    quality::stuck_counts(dbn, pixels, n, device)
        .into_iter()
        .enumerate()
        .filter(|(_, (stuck, total))| stuck * 2 > *total)
        .map(|(i, (stuck, total))| Stuck {
            layer: i + 1,
            stuck,
            total,
            images,
        })
        .collect()
}

// ---------------------------------------------------------------- sample

/// Parameters of `sample`.
#[derive(Debug, Clone, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct SampleParams {
    /// Gibbs steps at the top RBM.
    pub steps: usize,
    /// Independent chains (= images produced).
    pub chains: usize,
    /// Seed of the chains' start and draws.
    pub seed: u64,
    /// "exact" (sum of N binary sub-units) or "gaussian" (N(f, f')).
    pub sampler: Sampler,
    /// Images per row of grid.png.
    pub grid_columns: usize,
    /// Where the chains start: "noise" (uniform random pixels) or "data"
    /// (the first `chains` images of the `start` input).
    #[serde(skip_serializing_if = "is_default")]
    pub init: ChainInit,
    /// Annealed start: the first `anneal_steps` of the `steps` sample the
    /// tempered model p^beta with beta rising linearly from `anneal_from`
    /// to 1 (0: plain Gibbs sampling).
    #[serde(skip_serializing_if = "is_default")]
    pub anneal_steps: usize,
    /// The first beta of the annealed start (default 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anneal_from: Option<f64>,
    /// sampler = "gibbs_langevin": { steps, step_size, adjust, gradient } (see `langevin`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub langevin: Option<crate::langevin::LangevinParams>,
    /// Sampling temperature T (default 1): the chains sample p^(1/T), every
    /// energy term divided by T (an annealed start rises to 1/T).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

impl Default for SampleParams {
    fn default() -> Self {
        SampleParams {
            steps: 1000,
            chains: 64,
            seed: 0,
            sampler: Sampler::default(),
            grid_columns: 8,
            init: ChainInit::default(),
            anneal_steps: 0,
            anneal_from: None,
            langevin: None,
            temperature: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ChainInit {
    #[default]
    Noise,
    Data,
}

pub struct SampleStage;
const SAMPLE_INPUTS: &[InputSlot] = &[
    InputSlot::required(
        "model",
        Some("model.safetensors"),
        "a trained model (train stage)",
    ),
    InputSlot::optional(
        "reference",
        Some("data.safetensors"),
        "real images to score the samples against (diversity, contrast, nearest_reference, colour_spread, saturation, nearest_classes, stuck_channels)",
    ),
    InputSlot::optional(
        "start",
        Some("data.safetensors"),
        "images the chains start from when init = \"data\"",
    ),
];

fn read_optional_images(ctx: &StageContext, slot: &str) -> Result<Option<ImageSet>, StageError> {
    match ctx.optional_input(slot) {
        None => Ok(None),
        Some(p) => ImageSet::read(&resolve_file(p, "data.safetensors"))
            .map(Some)
            .map_err(|e| StageError::User(e.to_string())),
    }
}

/// The base-rate biases of the top RBM's visible units: each unit's mean
/// over (at most 1,000) real images mapped up to it by mean field, turned
/// into the bias a lone unit needs for that mean.
fn anneal_base(dbn: &Dbn, reference: &ImageSet, device: &Device) -> Vec<f64> {
    let n = reference.n.min(1000);
    let top = dbn.layers.len() - 1;
    let v = dbn.pixels_to_visible(
        &reference.pixels()[..n * reference.image_len()],
        n,
        device,
        DType::F32,
    );
    let v = if top == 0 {
        v
    } else {
        dbn.as_visible_of(top, dbn.up_to(v, top - 1))
    };
    let vals = crate::layer::to_f64(&v);
    let per = vals.len() / n.max(1);
    let unit = dbn.layers[top].spec.visible_unit;
    // Conv RBMs share the visible bias per channel, but the base may vary
    // per position: one bias per visible value of one image.
    (0..per)
        .map(|i| {
            let mean = (0..n).map(|r| vals[r * per + i]).sum::<f64>() / n.max(1) as f64;
            ais::bias_for_mean(unit, mean)
        })
        .collect()
}

/// Insert the quality ratios of `pixels` against `reference` into `m`.
fn insert_quality(
    m: &mut Metrics,
    pixels: &[u8],
    n: usize,
    reference: &ImageSet,
    shape: [usize; 3],
) -> Result<(), StageError> {
    if [reference.c, reference.h, reference.w] != shape {
        return Err(StageError::User(format!(
            "the reference images are {}x{}x{} (CxHxW) but the samples are {}x{}x{}",
            reference.c, reference.h, reference.w, shape[0], shape[1], shape[2]
        )));
    }
    let q = quality::quality(
        pixels,
        n,
        reference.pixels(),
        reference.n,
        reference.image_len(),
    );
    m.insert("diversity".into(), q.diversity);
    m.insert("contrast".into(), q.contrast);
    m.insert("nearest_reference".into(), q.nearest_reference);
    if shape[0] == 3 {
        let (spread, saturation) = quality::colour(
            pixels,
            n,
            reference.pixels(),
            reference.n,
            reference.image_len(),
        );
        m.insert("colour_spread".into(), spread);
        m.insert("saturation".into(), saturation);
    }
    if reference.labels.iter().any(|&l| l >= 0) {
        m.insert(
            "nearest_classes".into(),
            quality::nearest_classes(
                pixels,
                n,
                reference.pixels(),
                &reference.labels,
                reference.image_len(),
                shape[0],
            ),
        );
    }
    Ok(())
}

impl TypedStage for SampleStage {
    const KIND: &'static str = "sample";
    const ABOUT: &'static str = "draw images from a trained model by Gibbs sampling";
    // 2: conv layers on the CPU use host_conv (same maps, other rounding).
    // 3: an annealed start with a `reference` anneals from its base rate.
    // 4: host_conv's products run on mrbm-kernels' sgemm (other rounding).
    // 5: with a reference, also colour_spread, saturation (colour images),
    //    nearest_classes (labelled references) and stuck_channels.
    const VERSION: u32 = 5;
    const INPUTS: &'static [InputSlot] = SAMPLE_INPUTS;
    const USES_DEVICE: bool = true;
    type Params = SampleParams;

    fn metrics(_p: &Self::Params) -> Option<Vec<&'static str>> {
        // With a reference: the quality metrics, the colour ones for
        // colour images, nearest_classes for labelled references; acceptance
        // for the Gibbs-Langevin sampler.
        Some(vec![
            "seconds",
            "mean_pixel",
            "diversity",
            "contrast",
            "nearest_reference",
            "colour_spread",
            "saturation",
            "nearest_classes",
            "stuck_channels",
            "acceptance",
        ])
    }

    fn memory_floor(p: &SampleParams) -> Option<(f64, String)> {
        // `run`'s estimate with the smallest model (one visible, one hidden unit).
        Some((
            16.0 * p.chains as f64 * 2.0,
            format!("sampling {} chains", p.chains),
        ))
    }

    fn validate(p: &SampleParams) -> Result<(), ParamError> {
        if p.chains == 0 {
            return Err(ParamError::new("chains", "chains must be at least 1"));
        }
        if p.anneal_steps > p.steps {
            return Err(ParamError::new(
                "anneal_steps",
                format!(
                    "anneal_steps ({}) must not exceed steps ({})",
                    p.anneal_steps, p.steps
                ),
            ));
        }
        if let Some(t) = p.temperature {
            if !(t.is_finite() && t > 0.0) {
                return Err(ParamError::new(
                    "temperature",
                    format!("temperature must be a positive number, got {t}"),
                ));
            }
        }
        if let Some(b) = p.anneal_from {
            if !(b.is_finite() && b > 0.0 && b <= 1.0) {
                return Err(ParamError::new(
                    "anneal_from",
                    format!("anneal_from must be in (0, 1], got {b}"),
                ));
            }
        }
        let gl = p.sampler == Sampler::GibbsLangevin;
        crate::langevin::validate_sample(gl, p.langevin.as_ref(), p.anneal_steps)
            .map_err(|(k, m)| ParamError::new(k, m))?;
        Ok(())
    }

    fn run(&self, ctx: &StageContext, p: SampleParams) -> Result<Metrics, StageError> {
        let device = ctx.device.burn();
        let dbn = read_model(ctx, device)?;
        // Chains' visible and hidden states at every layer, as f32 and f64 copies.
        let per_chain: f64 = dbn
            .layers
            .iter()
            .map(|l| {
                let v: f64 = l.spec.visible_shape().iter().map(|&d| d as f64).product();
                let h: f64 = l.spec.hidden_shape().iter().map(|&d| d as f64).product();
                v + h
            })
            .sum();
        mrbm_stage::check_memory(
            16.0 * p.chains as f64 * per_chain,
            &format!("sampling {} chains", p.chains),
        )?;
        let reference = read_optional_images(ctx, "reference")?;
        let start = match p.init {
            ChainInit::Noise => None,
            ChainInit::Data => {
                let set = read_optional_images(ctx, "start")?.ok_or_else(|| {
                    StageError::User("init = \"data\" needs an input `start` (an image set)".into())
                })?;
                check_input_shape(&dbn, &set)?;
                if set.n < p.chains {
                    return Err(StageError::User(format!(
                        "init = \"data\" with {} chains needs at least {} start images, `start` has {}",
                        p.chains, p.chains, set.n
                    )));
                }
                Some(set.pixels()[..p.chains * set.image_len()].to_vec())
            }
        };
        let started = Instant::now();
        let bar = ctx.bar(p.steps as u64, "gibbs");
        // With real images at hand, anneal from their base rate (AIS's path).
        let base = match (&reference, p.anneal_steps) {
            (Some(r), s) if s > 0 => {
                check_input_shape(&dbn, r)?;
                Some(in_pool(ctx.threads, || anneal_base(&dbn, r, device))?)
            }
            _ => None,
        };
        let anneal = Anneal {
            steps: p.anneal_steps,
            from: p.anneal_from.unwrap_or(0.1),
            base,
            end: p.temperature.map(|t| 1.0 / t),
        };
        let gl = p.sampler == Sampler::GibbsLangevin;
        let gl = crate::langevin::StageSampler::new(&dbn, gl, p.langevin.clone())?;
        let v = in_pool(ctx.threads, || {
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(p.seed);
            if let Some(gl) = &gl {
                let on_step = |s: usize| {
                    bar.set_position(s as u64);
                    ctx.check_cancel().is_ok()
                };
                return gl.run(&dbn, start.as_deref(), p.chains, p.steps, &mut rng, on_step);
            }
            let noise: Vec<u8>;
            let px = match &start {
                Some(px) => px.as_slice(),
                None => {
                    noise = noise_start(&dbn, p.chains, &mut rng);
                    &noise
                }
            };
            // Each step polls for Ctrl-C / SIGTERM and stops the chains early.
            gibbs_from(
                &dbn,
                px,
                (p.chains, p.steps),
                p.sampler,
                anneal,
                &mut rng,
                |s| {
                    bar.set_position(s as u64);
                    ctx.check_cancel().is_ok()
                },
            )
        })?;
        bar.finish_and_clear();
        ctx.check_cancel()?;
        let pixels = dbn.visible_to_pixels(&v);
        let [c, h, w] = dbn.spec.input;
        let set = ImageSet::new(pixels, p.chains, c, h, w, vec![-1; p.chains]);
        set.write(&ctx.out("samples.safetensors"))
            .map_err(|e| StageError::Failed(e.to_string()))?;
        image_grid(
            set.pixels(),
            set.n,
            c,
            h,
            w,
            p.grid_columns,
            &ctx.out("grid.png"),
        )?;
        let mean = set.pixels().iter().map(|&x| x as f64).sum::<f64>() / set.pixels().len() as f64;
        let mut m = Metrics::new();
        m.insert("seconds".into(), started.elapsed().as_secs_f64());
        m.insert("mean_pixel".into(), mean);
        if let Some(r) = &reference {
            insert_quality(&mut m, set.pixels(), set.n, r, [c, h, w])?;
            // The largest fraction of stuck hidden channels of any layer, on the reference.
            let stuck = in_pool(ctx.threads, || {
                quality::stuck_channels(&dbn, r.pixels(), r.n, device)
            })?;
            m.insert(
                "stuck_channels".into(),
                stuck.iter().copied().fold(0.0, f64::max),
            );
        }
        if let Some(gl) = &gl {
            m.insert("acceptance".into(), gl.acceptance());
        }
        Ok(m)
    }
}

// ---------------------------------------------------------------- reconstruct

/// Parameters of `reconstruct`.
#[derive(Debug, Clone, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct ReconstructParams {
    /// Number of images (the first ones of the data set).
    pub count: usize,
    /// Layers to go up through before coming back down (default: all).
    pub depth: Option<usize>,
    /// Colourise: feed the grey version of each image as three equal
    /// channels (the paper's Fig. 2) and reconstruct in colour.
    pub colourise: bool,
    /// Input | reconstruction pairs per row of grid.png.
    pub pairs_per_row: usize,
}

impl Default for ReconstructParams {
    fn default() -> Self {
        ReconstructParams {
            count: 16,
            depth: None,
            colourise: false,
            pairs_per_row: 4,
        }
    }
}

pub struct ReconstructStage;
const RECON_INPUTS: &[InputSlot] = &[
    InputSlot::required("model", Some("model.safetensors"), "a trained model"),
    InputSlot::required("data", Some("data.safetensors"), "images to reconstruct"),
];

/// ITU-R BT.601 luma, as three equal channels.
pub fn to_grey3(img: &[u8], h: usize, w: usize) -> Vec<u8> {
    let hw = h * w;
    let mut out = vec![0u8; 3 * hw];
    for i in 0..hw {
        let g =
            (0.299 * img[i] as f64 + 0.587 * img[hw + i] as f64 + 0.114 * img[2 * hw + i] as f64)
                .round()
                .clamp(0.0, 255.0) as u8;
        out[i] = g;
        out[hw + i] = g;
        out[2 * hw + i] = g;
    }
    out
}

impl TypedStage for ReconstructStage {
    const KIND: &'static str = "reconstruct";
    const ABOUT: &'static str = "reconstruct images through a trained model";
    // 2: conv layers on the CPU use host_conv (same maps, other rounding).
    // 3: host_conv's products run on mrbm-kernels' sgemm (other rounding).
    const VERSION: u32 = 3;
    const INPUTS: &'static [InputSlot] = RECON_INPUTS;
    const USES_DEVICE: bool = true;
    type Params = ReconstructParams;

    fn metrics(_p: &Self::Params) -> Option<Vec<&'static str>> {
        Some(vec!["mse", "psnr"])
    }

    fn run(&self, ctx: &StageContext, p: ReconstructParams) -> Result<Metrics, StageError> {
        let device = ctx.device.burn();
        let dbn = read_model(ctx, device)?;
        let set = read_images(ctx, "data")?;
        check_input_shape(&dbn, &set)?;
        if p.colourise && set.c != 3 {
            return Err(StageError::User(format!(
                "colourise needs 3-channel images, the data has {}",
                set.c
            )));
        }
        let n = p.count.min(set.n);
        if n == 0 {
            return Err(StageError::User("no images to reconstruct".into()));
        }
        let depth = p.depth.unwrap_or(dbn.layers.len());
        if depth == 0 || depth > dbn.layers.len() {
            return Err(StageError::User(format!(
                "depth must be 1..={}, got {depth}",
                dbn.layers.len()
            )));
        }
        let len = set.image_len();
        let originals = &set.pixels()[..n * len];
        let inputs: Vec<u8> = if p.colourise {
            (0..n)
                .flat_map(|i| to_grey3(set.image(i), set.h, set.w))
                .collect()
        } else {
            originals.to_vec()
        };
        let recon = in_pool(ctx.threads, || {
            let v = dbn.pixels_to_visible(&inputs, n, device, DType::F32);
            dbn.visible_to_pixels(&dbn.reconstruct(v, depth))
        })?;
        let mse = recon
            .iter()
            .zip(originals)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            / recon.len() as f64;
        let mut grid = Vec::with_capacity(2 * n * len);
        for i in 0..n {
            grid.extend_from_slice(&inputs[i * len..(i + 1) * len]);
            grid.extend_from_slice(&recon[i * len..(i + 1) * len]);
        }
        image_grid(
            &grid,
            2 * n,
            set.c,
            set.h,
            set.w,
            2 * p.pairs_per_row.max(1),
            &ctx.out("grid.png"),
        )?;
        let out = ImageSet::new(recon, n, set.c, set.h, set.w, set.labels[..n].to_vec());
        out.write(&ctx.out("reconstructions.safetensors"))
            .map_err(|e| StageError::Failed(e.to_string()))?;
        let mut m = Metrics::new();
        m.insert("mse".into(), mse);
        m.insert(
            "psnr".into(),
            10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10(),
        );
        Ok(m)
    }
}

// ---------------------------------------------------------------- features

/// Parameters of `features`.
#[derive(Debug, Clone, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesParams {
    /// Layer whose hidden means are the features, 1-based (default: top).
    pub layer: Option<usize>,
    /// Images per forward pass (memory only; results do not depend on it).
    pub batch_size: usize,
    /// Divide the means by the hidden N so features lie in [0, 1] whatever
    /// N is (one SVM cost C then fits every N). false: raw means in 0..=N.
    pub unit_scale: bool,
}

impl Default for FeaturesParams {
    fn default() -> Self {
        FeaturesParams {
            layer: None,
            batch_size: 256,
            unit_scale: true,
        }
    }
}

pub struct FeaturesStage;
const FEAT_INPUTS: &[InputSlot] = &[
    InputSlot::required("model", Some("model.safetensors"), "a trained model"),
    InputSlot::required("data", Some("data.safetensors"), "images to encode"),
];

/// Hidden means of layer `layer` (0-based) for every image, flattened.
pub fn extract_features(
    dbn: &Dbn,
    set: &ImageSet,
    layer: usize,
    batch: usize,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> Vec<f32> {
    let len = set.image_len();
    let mut out = Vec::new();
    let bs = batch.max(1);
    let mut i = 0;
    while i < set.n {
        let m = bs.min(set.n - i);
        let v = dbn.pixels_to_visible(&set.pixels()[i * len..(i + m) * len], m, device, DType::F32);
        let h = dbn.up_to(v, layer);
        out.extend(to_f64(&h).iter().map(|&x| x as f32));
        i += m;
        progress(i);
    }
    out
}

impl TypedStage for FeaturesStage {
    const KIND: &'static str = "features";
    const ABOUT: &'static str = "hidden-unit features of a trained model for a data set";
    // 2: conv layers on the CPU use host_conv (same maps, other rounding).
    // 3: host_conv's products run on mrbm-kernels' sgemm (other rounding).
    const VERSION: u32 = 3;
    const INPUTS: &'static [InputSlot] = FEAT_INPUTS;
    const USES_DEVICE: bool = true;
    type Params = FeaturesParams;

    fn metrics(_p: &Self::Params) -> Option<Vec<&'static str>> {
        Some(vec!["dimensions", "count"])
    }

    fn run(&self, ctx: &StageContext, p: FeaturesParams) -> Result<Metrics, StageError> {
        let device = ctx.device.burn();
        let dbn = read_model(ctx, device)?;
        let set = read_images(ctx, "data")?;
        check_input_shape(&dbn, &set)?;
        let nl = dbn.layers.len();
        let layer = p.layer.unwrap_or(nl);
        if layer == 0 || layer > nl {
            return Err(StageError::User(format!(
                "layer must be 1..={nl} (the model has {nl} layers), got {layer}"
            )));
        }
        let d: usize = dbn.layers[layer - 1].spec.hidden_shape().iter().product();
        let bar = ctx.bar(set.n as u64, "features");
        let mut feats = in_pool(ctx.threads, || {
            extract_features(&dbn, &set, layer - 1, p.batch_size, device, |i| {
                bar.set_position(i as u64)
            })
        })?;
        if p.unit_scale {
            let n = dbn.layers[layer - 1].spec.hidden_unit.max_value() as f32;
            feats.iter_mut().for_each(|x| *x /= n);
        }
        bar.finish_and_clear();
        let fs = FeatureSet::new(feats, set.n, d, set.labels.clone());
        fs.write(&ctx.out("features.safetensors"))
            .map_err(|e| StageError::Failed(e.to_string()))?;
        let mut m = Metrics::new();
        m.insert("dimensions".into(), d as f64);
        m.insert("count".into(), set.n as f64);
        Ok(m)
    }
}

// ---------------------------------------------------------------- loglik

/// Parameters of `loglik`.
#[derive(Debug, Clone, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct LoglikParams {
    /// Intermediate distributions of AIS, spaced as Salakhutdinov & Murray
    /// (2008): 500/14500 in [0, 0.5], 4000/14500 in [0.5, 0.9], the rest
    /// in [0.9, 1].
    pub betas: usize,
    /// Independent AIS runs (chains).
    pub runs: usize,
    /// Seed of the runs' draws.
    pub seed: u64,
    /// Score at most this many images of each data input (the first ones;
    /// all when unset).
    pub max_images: Option<usize>,
    /// A model that is not one dense RBM: "error" (default), or "nan" to
    /// write NaN metrics and say why in the log (for sweeps that mix dense
    /// and convolutional models in one table).
    #[serde(skip_serializing_if = "is_default")]
    pub unsupported: Unsupported,
    /// Two-layer dense DBNs: draws of h ~ q(h | v) per image for the
    /// variational lower bound (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_samples: Option<usize>,
    /// The other side of the bracket: reverse annealing (RAISE; Burda,
    /// Grosse & Salakhutdinov 2015) from the first `raise_images` test
    /// images, a stochastic lower bound on their log-likelihood beside
    /// AIS's upper bound on the same images (0: off). One dense RBM only.
    #[serde(skip_serializing_if = "is_default")]
    pub raise_images: usize,
    /// Reverse chains per image (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raise_chains: Option<usize>,
    /// Intermediate distributions of the reverse chains, spaced as `betas`
    /// (default: `betas`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raise_betas: Option<usize>,
}

impl Default for LoglikParams {
    fn default() -> Self {
        LoglikParams {
            betas: 14_500,
            runs: 100,
            seed: 0,
            max_images: None,
            unsupported: Unsupported::default(),
            bound_samples: None,
            raise_images: 0,
            raise_chains: None,
            raise_betas: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Unsupported {
    #[default]
    Error,
    Nan,
}

pub struct LoglikStage;
const LOGLIK_INPUTS: &[InputSlot] = &[
    InputSlot::required(
        "model",
        Some("model.safetensors"),
        "a trained model: one dense RBM, or a two-layer dense DBN (lower bound)",
    ),
    InputSlot::required(
        "train",
        Some("data.safetensors"),
        "training images (the base-rate model's marginals; scored too)",
    ),
    InputSlot::required("test", Some("data.safetensors"), "held-out images to score"),
];

impl TypedStage for LoglikStage {
    const KIND: &'static str = "loglik";
    const ABOUT: &'static str =
        "log-likelihood of a model on a data set by annealed importance sampling";
    // 2: AIS and RAISE weights of binary hidden units through a vectorised
    //    softplus (within a few ulp of libm's; other rounding).
    const VERSION: u32 = 2;
    const INPUTS: &'static [InputSlot] = LOGLIK_INPUTS;
    type Params = LoglikParams;

    fn metrics(p: &Self::Params) -> Option<Vec<&'static str>> {
        let mut m = vec![
            "log_z",
            "log_z_std",
            "test_loglik",
            "train_loglik",
            "lower_bound",
            "seconds",
        ];
        // RAISE's side of the bracket, so a table may name it directly.
        if p.raise_images > 0 {
            m.extend(RAISE_METRICS);
        }
        Some(m)
    }

    fn validate(p: &LoglikParams) -> Result<(), ParamError> {
        if p.betas < 3 || p.betas > 10_000_000 {
            return Err(ParamError::new("betas", "betas must be in 3..=10000000"));
        }
        if p.runs < 2 || p.runs > 100_000 {
            return Err(ParamError::new(
                "runs",
                "runs must be in 2..=100000 (the spread needs two)",
            ));
        }
        if let Some(b) = p.raise_betas {
            if !(3..=10_000_000).contains(&b) {
                return Err(ParamError::new(
                    "raise_betas",
                    "raise_betas must be in 3..=10000000",
                ));
            }
        }
        if p.raise_chains == Some(0) || p.raise_chains.is_some_and(|c| c > 10_000) {
            return Err(ParamError::new(
                "raise_chains",
                "raise_chains must be in 1..=10000",
            ));
        }
        if p.raise_images == 0 && (p.raise_chains.is_some() || p.raise_betas.is_some()) {
            return Err(ParamError::new(
                "raise_images",
                "raise_chains and raise_betas need raise_images (how many test images to bracket)",
            ));
        }
        Ok(())
    }

    fn run(&self, ctx: &StageContext, p: LoglikParams) -> Result<Metrics, StageError> {
        let dbn = read_model(ctx, &Device::flex())?;
        let model = loglik_model(&dbn);
        let (model, deep) = match (model, p.unsupported) {
            (Ok(m), _) => m,
            (Err(e), Unsupported::Error) => return Err(StageError::User(e)),
            (Err(e), Unsupported::Nan) => {
                ctx.log(format!("no log-likelihood (unsupported = \"nan\"): {e}"));
                let mut m = Metrics::new();
                for k in ["log_z", "log_z_std", "test_loglik", "train_loglik"] {
                    m.insert(k.into(), f64::NAN);
                }
                if p.raise_images > 0 {
                    for k in RAISE_METRICS {
                        m.insert(k.into(), f64::NAN);
                    }
                }
                return Ok(m);
            }
        };
        let train = read_images(ctx, "train")?;
        let test = read_images(ctx, "test")?;
        check_input_shape(&dbn, &train)?;
        check_input_shape(&dbn, &test)?;
        // The data's model: the RBM, or the DBN's bottom layer.
        let data_model = deep.as_ref().map_or(&model, |d| &d.bottom);
        let quantised = |set: &ImageSet| -> (Vec<f32>, usize) {
            let n = p.max_images.map_or(set.n, |m| m.min(set.n));
            let s = dbn.spec.visible_scale;
            let vals: Vec<f64> = set.pixels()[..n * set.image_len()]
                .iter()
                .map(|&x| x as f64 * s)
                .collect();
            (data_model.quantise(&vals), n)
        };
        let (train_v, n_train) = quantised(&train);
        let (test_v, n_test) = quantised(&test);
        if n_train == 0 || n_test == 0 {
            return Err(StageError::User(
                "loglik needs at least one train and one test image".into(),
            ));
        }
        let started = Instant::now();
        // The base-rate model of the AIS'd RBM: the data's marginals, or for
        // the DBN's top, the marginals of the bottom layer's hidden means.
        let a_base = match &deep {
            None => model.base_rate(&train_v, n_train),
            Some(d) => model.base_rate(&d.bottom.hidden_means(&train_v, n_train), n_train),
        };
        let betas = ais::sm_betas(p.betas);
        let bar = ctx.bar(p.betas as u64, "ais");
        let est = in_pool(ctx.threads, || {
            model.ais(
                &a_base,
                &betas,
                p.runs,
                p.seed,
                &|k| bar.set_position(k as u64),
                &|| ctx.check_cancel().is_err(),
            )
        })?;
        bar.finish_and_clear();
        let est = est.ok_or(StageError::Cancelled)?;
        let samples = p.bound_samples.unwrap_or(10).max(1);
        let mean_ll = |v: &[f32], n: usize| -> Result<f64, StageError> {
            let lp = in_pool(ctx.threads, || match &deep {
                None => model.log_unnormalised(v, n),
                Some(d) => d.bound_plus_log_z(v, n, samples, p.seed),
            })?;
            Ok(lp.iter().sum::<f64>() / n as f64 - est.log_z)
        };
        let test_ll = mean_ll(&test_v, n_test)?;
        let train_ll = mean_ll(&train_v, n_train)?;
        let what = if deep.is_some() {
            format!("two-layer DBN: variational lower bound ({samples} draws of q per image) with the top RBM's AIS")
        } else {
            "one RBM".to_string()
        };
        ctx.log(format!(
            "{what}. AIS: {} betas, {} runs: log Z = {:.4} +- {:.4} (base {:.4}); test {:.4}, train {:.4} nats/image",
            est.betas, est.runs, est.log_z, est.log_z_std, est.log_z_base, test_ll, train_ll
        ));
        let mut m = Metrics::new();
        m.insert("log_z".into(), est.log_z);
        m.insert("log_z_std".into(), est.log_z_std);
        m.insert("test_loglik".into(), test_ll);
        m.insert("train_loglik".into(), train_ll);
        if deep.is_some() {
            // The log-likelihoods above are lower bounds, not estimates.
            m.insert("lower_bound".into(), 1.0);
        }
        if p.raise_images > 0 {
            let rows = p.raise_images.min(n_test);
            let v = &test_v[..rows * model.d];
            if deep.is_some() {
                ctx.log("no RAISE bracket: it is for one dense RBM, this is a two-layer DBN");
                for k in RAISE_METRICS {
                    m.insert(k.into(), f64::NAN);
                }
            } else {
                raise_bracket(ctx, &model, &a_base, (v, rows), &p, est.log_z, &mut m)?;
            }
        }
        m.insert("seconds".into(), started.elapsed().as_secs_f64());
        Ok(m)
    }
}

/// The model `loglik` estimates: one dense RBM (AIS on it), or a
/// two-layer dense DBN (its variational lower bound with the top RBM's
/// AIS, ais::HostDbn2); the RBM that AIS runs on, and the DBN.
fn loglik_model(dbn: &Dbn) -> Result<(ais::HostDense, Option<ais::HostDbn2>), String> {
    match dbn.layers.len() {
        1 => ais::HostDense::from_rbm(&dbn.layers[0]).map(|m| (m, None)),
        2 => ais::HostDense::from_rbm(&dbn.layers[0])
            .and_then(|bottom| {
                let top = ais::HostDense::from_rbm(&dbn.layers[1])?;
                ais::HostDbn2::new(bottom.clone(), top.clone()).map(|d| (top, Some(d)))
            })
            .map_err(|e| format!("the two-layer DBN bound needs two dense layers: {e}")),
        k => Err(format!(
            "loglik covers one dense RBM (AIS) and a two-layer dense DBN (its variational lower bound); this model has {k} layers"
        )),
    }
}

/// RAISE's lower bound on the first `rows` test images `v`, beside AIS's
/// upper bound (log Z = `log_z`) on the same images, into `m`.
fn raise_bracket(
    ctx: &StageContext,
    model: &ais::HostDense,
    a_base: &[f64],
    (v, rows): (&[f32], usize),
    p: &LoglikParams,
    log_z: f64,
    m: &mut Metrics,
) -> Result<(), StageError> {
    let chains = p.raise_chains.unwrap_or(1);
    let rb = p.raise_betas.unwrap_or(p.betas);
    let rbetas = ais::sm_betas(rb);
    let raise_started = Instant::now();
    let bar = ctx.bar(rb as u64, "raise");
    let low = in_pool(ctx.threads, || {
        model.raise(
            a_base,
            &rbetas,
            (v, rows),
            chains,
            p.seed,
            (&|k| bar.set_position(k as u64), &|| {
                ctx.check_cancel().is_err()
            }),
        )
    })?;
    bar.finish_and_clear();
    let low = low.ok_or(StageError::Cancelled)?;
    let lower = low.iter().sum::<f64>() / rows as f64;
    let upper = model.log_unnormalised(v, rows).iter().sum::<f64>() / rows as f64 - log_z;
    ctx.log(format!(
        "RAISE on the first {rows} test images ({rb} betas, {chains} chain(s) each): lower {lower:.4}, AIS upper {upper:.4} nats/image, bracket {:.4}",
        upper - lower
    ));
    m.insert("raise_test_loglik".into(), lower);
    m.insert("raise_ais_test_loglik".into(), upper);
    m.insert("bracket".into(), upper - lower);
    m.insert("raise_images".into(), rows as f64);
    m.insert(
        "raise_seconds".into(),
        raise_started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// What `raise_images` adds: RAISE's lower bound and AIS's upper bound on
/// the same test images, their difference, and how many images.
const RAISE_METRICS: [&str; 4] = [
    "raise_test_loglik",
    "raise_ais_test_loglik",
    "bracket",
    "raise_images",
];

// ---------------------------------------------------------------- pixel_features

/// The baseline "features": raw pixels / 255, flattened (no model).
pub struct PixelFeaturesStage;
const PIXEL_INPUTS: &[InputSlot] = &[InputSlot::required(
    "data",
    Some("data.safetensors"),
    "images whose pixels become the features",
)];

/// No parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(deny_unknown_fields)]
pub struct PixelFeaturesParams {}

impl TypedStage for PixelFeaturesStage {
    const KIND: &'static str = "pixel_features";
    const ABOUT: &'static str = "the baseline features: raw pixels / 255, flattened (no model)";
    const VERSION: u32 = 1;
    const INPUTS: &'static [InputSlot] = PIXEL_INPUTS;
    type Params = PixelFeaturesParams;

    fn metrics(_p: &Self::Params) -> Option<Vec<&'static str>> {
        Some(vec!["dimensions", "count"])
    }

    fn run(&self, ctx: &StageContext, _: PixelFeaturesParams) -> Result<Metrics, StageError> {
        let set = read_images(ctx, "data")?;
        let d = set.image_len();
        let feats: Vec<f32> = set.pixels().iter().map(|&p| p as f32 / 255.0).collect();
        let fs = FeatureSet::new(feats, set.n, d, set.labels.clone());
        fs.write(&ctx.out("features.safetensors"))
            .map_err(|e| StageError::Failed(e.to_string()))?;
        let mut m = Metrics::new();
        m.insert("dimensions".into(), d as f64);
        m.insert("count".into(), set.n as f64);
        Ok(m)
    }
}
