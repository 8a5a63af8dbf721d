//! The stage kinds `dcim` (train the coupled pair under one objective) and
//! `dcim_sample` (class-conditional samples through the reverse model).

use std::time::Instant;

use mrbm_data::artifact::ImageSet;
use mrbm_stage::{
    in_pool, resolve_file, InputSlot, Metrics, ParamError, Stage, StageContext, StageError,
    TypedStage,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::grid::{labelled_grid, Cell};
use crate::model::{
    host, images_tensor, one_hot, Act, Dcim, LayerDef, Objective, Spec, StepLoss, Trainer,
};
use crate::resume;

pub fn all() -> Vec<Box<dyn Stage>> {
    vec![Box::new(DcimStage), Box::new(DcimSampleStage)]
}

fn read_images(ctx: &StageContext, slot: &str) -> Result<ImageSet, StageError> {
    let p = resolve_file(ctx.input(slot)?, "data.safetensors");
    ImageSet::read(&p).map_err(|e| StageError::User(e.to_string()))
}

/// Labels as class indices, checked against the class layer.
fn class_labels(set: &ImageSet, classes: usize, slot: &str) -> Result<Vec<usize>, StageError> {
    set.labels
        .iter()
        .map(|&l| {
            if l >= 0 && (l as usize) < classes {
                Ok(l as usize)
            } else {
                Err(StageError::User(format!(
                    "input `{slot}` has label {l}, but the last layer has {classes} classes (labels 0..{}); unlabelled images (label -1) cannot train a classifier",
                    classes.saturating_sub(1)
                )))
            }
        })
        .collect()
}

// ---------------------------------------------------------------- dcim

/// Parameters of `dcim`.
#[derive(Debug, Clone, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct DcimParams {
    /// Layers from the image up to the classes: a number is a dense layer
    /// of that many units, a triplet [window, stride, kernels] a conv layer
    /// (no padding). Sigmoid units everywhere but the last layer, a softmax
    /// over the classes.
    pub layers: Vec<LayerDef>,
    /// "16" log p(y|x) (discriminative), "21" + log q(x|y) (generative,
    /// the reverse model from the class), "22" + log q(x|x^(d-1)) with
    /// x^(d-1) sampled from the forward model.
    pub objective: Objective,
    pub epochs: usize,
    pub batch_size: usize,
    /// Adam's step size (betas 0.9 / 0.999, epsilon 1e-8, as Keras / PyTorch).
    pub lr: f64,
    /// Weight of the reverse term's per-pixel mean (Keras' convention, in
    /// which the paper reports 0.23 / 0.14); the number of pixels (784)
    /// gives the paper's formula literally (the sum over pixels).
    pub reverse_weight: f64,
    /// Seed of the initial weights, the batch order and the draws of (22).
    pub seed: u64,
    /// Train on the first `max_images` images only (all when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_images: Option<usize>,
}

impl Default for DcimParams {
    fn default() -> Self {
        DcimParams {
            layers: vec![
                LayerDef::Dense(512),
                LayerDef::Dense(512),
                LayerDef::Dense(10),
            ],
            objective: Objective::Generative,
            epochs: 10,
            batch_size: 64,
            lr: 0.001,
            reverse_weight: 1.0,
            seed: 1,
            max_images: None,
        }
    }
}

pub struct DcimStage;

const DCIM_INPUTS: &[InputSlot] = &[
    InputSlot::required(
        "data",
        Some("data.safetensors"),
        "training images with labels (ImageSet)",
    ),
    InputSlot::required(
        "test",
        Some("data.safetensors"),
        "test images with labels (ImageSet)",
    ),
];

/// One epoch's batch order: a seeded shuffle.
pub fn batch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(epoch as u64 + 1)));
    idx.shuffle(&mut rng);
    idx
}

/// The loss history chart: class NLL per image and reverse NLL per pixel.
fn loss_png(
    hist: &[(usize, StepLoss)],
    title: &str,
    path: &std::path::Path,
) -> Result<(), StageError> {
    use mrbm_plot::{moving_mean, Chart, Series, Style};
    let mut c = Chart::new(title, "training step", "negative log-likelihood");
    c.y_percentiles = (1.0, 99.0);
    c.y_fence = Some(3.0);
    let w = (hist.len() / 50).clamp(1, 501) | 1;
    let steps: Vec<f64> = (1..=hist.len()).map(|s| s as f64).collect();
    let class: Vec<f64> = hist.iter().map(|h| h.1.class).collect();
    let rev: Vec<f64> = hist.iter().map(|h| h.1.reverse_per_pixel).collect();
    let pts = |v: Vec<f64>| -> Vec<(f64, f64)> {
        steps
            .iter()
            .copied()
            .zip(v)
            .filter(|p| p.1.is_finite())
            .collect()
    };
    c.series.push(Series {
        label: format!("-log p(y|x) per image, mean of {w} steps"),
        points: pts(moving_mean(&class, w)),
        style: Style::Line(0),
    });
    if rev.iter().any(|x| x.is_finite()) {
        c.series.push(Series {
            label: format!("-log q(x|.) per pixel, mean of {w} steps"),
            points: pts(moving_mean(&rev, w)),
            style: Style::Line(1),
        });
    }
    mrbm_plot::save_png(&c, path).map_err(|e| StageError::Failed(e.to_string()))
}

impl TypedStage for DcimStage {
    const KIND: &'static str = "dcim";
    // 2: training's products and sigmoids on mrbm-autodiff's host ops
    //    (other rounding).
    const VERSION: u32 = 2;
    const INPUTS: &'static [InputSlot] = DCIM_INPUTS;
    const ABOUT: &'static str =
        "train a coupled forward/backward sigmoid network (DCIM) under objective 16, 21 or 22";
    const USES_DEVICE: bool = true;
    type Params = DcimParams;

    fn validate(p: &DcimParams) -> Result<(), ParamError> {
        if p.layers.is_empty() {
            return Err(ParamError::new(
                "layers",
                "layers must name at least the class layer",
            ));
        }
        if !matches!(p.layers.last(), Some(LayerDef::Dense(n)) if *n >= 2) {
            return Err(ParamError::new(
                "layers",
                "the last layer is the classes: a dense size of at least 2",
            ));
        }
        if p.epochs == 0 {
            return Err(ParamError::new("epochs", "epochs must be at least 1"));
        }
        if p.batch_size == 0 {
            return Err(ParamError::new(
                "batch_size",
                "batch_size must be at least 1",
            ));
        }
        if !(p.lr.is_finite() && p.lr > 0.0) {
            return Err(ParamError::new(
                "lr",
                format!("lr must be positive, got {}", p.lr),
            ));
        }
        if !(p.reverse_weight.is_finite() && p.reverse_weight >= 0.0) {
            return Err(ParamError::new(
                "reverse_weight",
                format!("reverse_weight must be 0 or more, got {}", p.reverse_weight),
            ));
        }
        Ok(())
    }

    fn run(&self, ctx: &StageContext, p: DcimParams) -> Result<Metrics, StageError> {
        let device = ctx.device.burn();
        let train = read_images(ctx, "data")?;
        let test = read_images(ctx, "test")?;
        if [test.c, test.h, test.w] != [train.c, train.h, train.w] {
            return Err(StageError::User(format!(
                "train images are {}x{}x{} but test images {}x{}x{}",
                train.c, train.h, train.w, test.c, test.h, test.w
            )));
        }
        let spec = Spec {
            input: [train.c, train.h, train.w],
            layers: p.layers.clone(),
        };
        let classes = spec.classes();
        let n = p.max_images.map_or(train.n, |m| m.min(train.n));
        if n == 0 {
            return Err(StageError::User("no training images".into()));
        }
        let labels = class_labels(&train, classes, "data")?;
        let test_labels = class_labels(&test, classes, "test")?;
        let len = train.image_len();
        let model = Dcim::init(spec, p.seed, device)?;
        let fresh = Trainer::new(model, p.objective, p.lr, p.reverse_weight);
        let per_epoch = n.div_ceil(p.batch_size);
        // A checkpoint left by an interrupted run of this stage key: go on
        // from it (bit for bit the run it interrupted).
        let params_text = ctx.params.to_string();
        let resume_file = ctx.resume_dir.map(|d| d.join(resume::FILE));
        let (mut trainer, start, mut hist, seconds_before) =
            start_trainer(ctx, fresh, &p, resume_file.as_deref(), &params_text);
        let bar = ctx.bar((per_epoch * p.epochs) as u64, "dcim");
        mrbm_stage::progress::resume_at(&bar, hist.len() as u64);
        let started = Instant::now();
        let mut save_failed = false;
        // Checkpoint at the end of every epoch and when interrupted; a
        // failed write warns once and training goes on (it just cannot
        // resume).
        let mut checkpoint = |tr: &Trainer, cursor: resume::Cursor, hist: &[(usize, StepLoss)]| {
            let Some(file) = resume_file.as_ref() else {
                return;
            };
            if save_failed {
                return;
            }
            let secs = seconds_before + started.elapsed().as_secs_f64();
            match resume::save(tr, &params_text, cursor, hist, secs, file) {
                Ok(()) => ctx.log(format!(
                    "checkpoint at epoch {}, batch {} ({} batches done)",
                    cursor.epoch + 1,
                    cursor.batch + 1,
                    hist.len()
                )),
                Err(e) => {
                    ctx.warn(format!("could not write a checkpoint: {e}"));
                    save_failed = true;
                }
            }
        };
        in_pool(ctx.threads, || -> Result<(), StageError> {
            for epoch in start.epoch..p.epochs {
                let order = batch_order(n, p.seed, epoch);
                let skip = if epoch == start.epoch { start.batch } else { 0 };
                for (b, idx) in order.chunks(p.batch_size).enumerate().skip(skip) {
                    if let Err(e) = ctx.check_cancel() {
                        checkpoint(&trainer, resume::Cursor { epoch, batch: b }, &hist);
                        return Err(e);
                    }
                    let mut px = Vec::with_capacity(idx.len() * len);
                    let mut ys = Vec::with_capacity(idx.len());
                    for &i in idx {
                        px.extend_from_slice(train.image(i));
                        ys.push(labels[i]);
                    }
                    let x0 = images_tensor(&px, idx.len(), trainer.model.spec.input, device);
                    let y = one_hot(&ys, classes, device);
                    // The draws of (22) from (seed, epoch, batch) alone.
                    let mut rng = ChaCha8Rng::seed_from_u64(
                        p.seed ^ 0xdc1a_0000_0000 ^ ((epoch as u64) << 20) ^ b as u64,
                    );
                    let l = trainer.step(x0, y, &mut rng).map_err(|e| {
                        StageError::Failed(format!("epoch {}, batch {}: {e}", epoch + 1, b + 1))
                    })?;
                    hist.push((epoch, l));
                    bar.inc(1);
                }
                log_epoch(ctx, &hist, epoch, p.epochs);
                if epoch + 1 < p.epochs {
                    checkpoint(
                        &trainer,
                        resume::Cursor {
                            epoch: epoch + 1,
                            batch: 0,
                        },
                        &hist,
                    );
                }
            }
            Ok(())
        })??;
        bar.finish_and_clear();
        let train_seconds = seconds_before + started.elapsed().as_secs_f64();
        let model = &trainer.model;
        checkpoint::save(model, &ctx.out("model.safetensors"))?;
        let csv = loss_csv(&hist, &p);
        mrbm_stage::write_atomic(&ctx.out("loss.csv"), csv.as_bytes())?;
        loss_png(&hist, ctx.stage_id, &ctx.out("loss.png"))?;
        let mut m = evaluate(ctx, model, &p, (&train, &labels, n), (&test, &test_labels))?;
        m.insert(
            "seconds".into(),
            seconds_before + started.elapsed().as_secs_f64(),
        );
        m.insert("train_seconds".into(), train_seconds);
        m.insert("epoch_seconds".into(), train_seconds / p.epochs as f64);
        m.insert(
            "images_per_second".into(),
            (n * p.epochs) as f64 / train_seconds.max(1e-9),
        );
        Ok(m)
    }
}

/// loss.csv: a row per batch with its epoch, place, total loss and parts.
fn loss_csv(hist: &[(usize, StepLoss)], p: &DcimParams) -> String {
    let mut csv =
        String::from("epoch,batch,step,total,layer1_class_nll,layer2_reverse_nll_per_pixel\n");
    let mut batch_in_epoch = 0;
    for (s, (e, l)) in hist.iter().enumerate() {
        if s > 0 && hist[s - 1].0 != *e {
            batch_in_epoch = 0;
        }
        batch_in_epoch += 1;
        let rev = if l.reverse_per_pixel.is_finite() {
            l.reverse_per_pixel
        } else {
            0.0
        };
        let total = l.class
            + p.reverse_weight * rev * (p.objective != Objective::Discriminative) as u8 as f64;
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            e + 1,
            batch_in_epoch,
            s + 1,
            total,
            l.class,
            l.reverse_per_pixel
        ));
    }
    csv
}

/// The trainer to run, its cursor, history and seconds so far: from the
/// checkpoint an interrupted run of this stage key left (bit for bit the
/// run it interrupted), else `fresh`.
fn start_trainer(
    ctx: &StageContext,
    fresh: Trainer,
    p: &DcimParams,
    resume_file: Option<&std::path::Path>,
    params_text: &str,
) -> (Trainer, resume::Cursor, Vec<(usize, StepLoss)>, f64) {
    match resume_file.filter(|f| f.exists()) {
        Some(f) => {
            let spare = Trainer::new(fresh.model.clone(), p.objective, p.lr, p.reverse_weight);
            match resume::load(f, params_text, spare, ctx.device.burn()) {
                Ok(r) => {
                    ctx.log(format!(
                        "resumed at epoch {}, batch {} ({} batches done)",
                        r.cursor.epoch + 1,
                        r.cursor.batch + 1,
                        r.hist.len()
                    ));
                    (r.trainer, r.cursor, r.hist, r.seconds)
                }
                Err(e) => {
                    ctx.warn(format!(
                        "not resuming from the checkpoint ({e}): training from the start"
                    ));
                    (fresh, resume::Cursor::default(), Vec::new(), 0.0)
                }
            }
        }
        None => (fresh, resume::Cursor::default(), Vec::new(), 0.0),
    }
}

/// The epoch's mean losses, to the log.
fn log_epoch(ctx: &StageContext, hist: &[(usize, StepLoss)], epoch: usize, epochs: usize) {
    let done: Vec<&StepLoss> = hist.iter().filter(|h| h.0 == epoch).map(|h| &h.1).collect();
    let mean =
        |f: fn(&StepLoss) -> f64| done.iter().map(|l| f(l)).sum::<f64>() / done.len().max(1) as f64;
    ctx.log(format!(
        "epoch {} of {}: class NLL {:.4}, reverse NLL per pixel {:.4}",
        epoch + 1,
        epochs,
        mean(|l| l.class),
        mean(|l| l.reverse_per_pixel)
    ));
}

/// Accuracy, class NLL and reverse losses of the trained `model` on the
/// first `n` training images and on the test images.
fn evaluate(
    ctx: &StageContext,
    model: &Dcim,
    p: &DcimParams,
    (train, labels, n): (&ImageSet, &[usize], usize),
    (test, test_labels): (&ImageSet, &[usize]),
) -> Result<Metrics, StageError> {
    let len = train.image_len();
    let eval_batch = 500;
    let cancelled = || ctx.check_cancel().is_err();
    let (tr, te) = in_pool(ctx.threads, || {
        let tr = model.evaluate(
            &train.pixels()[..n * len],
            &labels[..n],
            eval_batch,
            p.seed ^ 0xe7a1,
            cancelled,
        );
        let te = model.evaluate(
            test.pixels(),
            test_labels,
            eval_batch,
            p.seed ^ 0x7e57,
            cancelled,
        );
        (tr, te)
    })?;
    let (tr, te) = (tr?, te?);
    let own = |e: &crate::model::Eval| match p.objective {
        Objective::Sampled => e.reverse_sampled,
        _ => e.reverse_class,
    };
    let mut m = Metrics::new();
    m.insert("test_accuracy".into(), te.accuracy);
    m.insert("train_accuracy".into(), tr.accuracy);
    m.insert("test_class_nll".into(), te.class_nll);
    m.insert("reverse_loss_train".into(), own(&tr));
    m.insert("reverse_loss_test".into(), own(&te));
    m.insert("reverse_loss_test_class".into(), te.reverse_class);
    m.insert("reverse_loss_test_sampled".into(), te.reverse_sampled);
    Ok(m)
}

// ---------------------------------------------------------------- dcim_sample

/// How samples are drawn through the reverse model (the paper's Fig. 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Way {
    /// (a) every hidden layer sampled, from the class layer down; the
    /// image shown as its probabilities q(x^0 = 1 | x^1).
    #[default]
    Recursive,
    /// (b) x^(d-1) sampled from the class, then probabilities
    /// (approximation (2)) down to the image.
    OneLayer,
}

/// Parameters of `dcim_sample`.
#[derive(Debug, Clone, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(default, deny_unknown_fields)]
pub struct DcimSampleParams {
    pub way: Way,
    /// Samples per class (the metrics use them all; the grid shows
    /// `grid_columns` per class).
    pub per_class: usize,
    pub seed: u64,
    pub grid_columns: usize,
}

impl Default for DcimSampleParams {
    fn default() -> Self {
        DcimSampleParams {
            way: Way::Recursive,
            per_class: 100,
            seed: 1,
            grid_columns: 10,
        }
    }
}

pub struct DcimSampleStage;

const SAMPLE_INPUTS: &[InputSlot] = &[
    InputSlot::required("model", Some("model.safetensors"), "a `dcim` stage's model"),
    InputSlot::optional(
        "reference",
        Some("data.safetensors"),
        "labelled real images: their per-class diversity is reported beside the samples'",
    ),
];

/// Mean over classes of the mean pairwise RMS distance (pixels in [0, 1])
/// between images of the same class.
pub fn per_class_diversity(
    pixels: &[u8],
    labels: &[usize],
    len: usize,
    classes: usize,
    cap: usize,
) -> f64 {
    let mut total = 0.0;
    let mut counted = 0;
    for c in 0..classes {
        let idx: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] == c)
            .take(cap)
            .collect();
        if idx.len() < 2 {
            continue;
        }
        let (mut s, mut k) = (0.0, 0usize);
        for a in 0..idx.len() {
            for b in a + 1..idx.len() {
                let (x, y) = (
                    &pixels[idx[a] * len..][..len],
                    &pixels[idx[b] * len..][..len],
                );
                let d: f64 = x
                    .iter()
                    .zip(y)
                    .map(|(&p, &q)| {
                        let e = (p as f64 - q as f64) / 255.0;
                        e * e
                    })
                    .sum();
                s += (d / len as f64).sqrt();
                k += 1;
            }
        }
        total += s / k as f64;
        counted += 1;
    }
    if counted == 0 {
        f64::NAN
    } else {
        total / counted as f64
    }
}

impl TypedStage for DcimSampleStage {
    const KIND: &'static str = "dcim_sample";
    const VERSION: u32 = 1;
    const INPUTS: &'static [InputSlot] = SAMPLE_INPUTS;
    const ABOUT: &'static str =
        "class-conditional samples through a DCIM's reverse model, classified by its forward model";
    const USES_DEVICE: bool = true;
    type Params = DcimSampleParams;

    fn validate(p: &DcimSampleParams) -> Result<(), ParamError> {
        if p.per_class == 0 {
            return Err(ParamError::new("per_class", "per_class must be at least 1"));
        }
        if p.grid_columns == 0 {
            return Err(ParamError::new(
                "grid_columns",
                "grid_columns must be at least 1",
            ));
        }
        Ok(())
    }

    fn run(&self, ctx: &StageContext, p: DcimSampleParams) -> Result<Metrics, StageError> {
        let device = ctx.device.burn();
        let model = checkpoint::load(
            &resolve_file(ctx.input("model")?, "model.safetensors"),
            device,
        )?;
        let reference = match ctx.optional_input("reference") {
            Some(path) => Some(
                ImageSet::read(&resolve_file(path, "data.safetensors"))
                    .map_err(|e| StageError::User(e.to_string()))?,
            ),
            None => None,
        };
        let started = Instant::now();
        let classes = model.spec.classes();
        let [c, h, w] = model.spec.input;
        let len = c * h * w;
        let d = model.depth();
        let n = classes * p.per_class;
        let labels: Vec<usize> = (0..n).map(|i| i / p.per_class).collect();
        let (pixels, probs) = in_pool(
            ctx.threads,
            || -> Result<(Vec<u8>, Vec<f32>), StageError> {
                let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
                let mut pixels = Vec::with_capacity(n * len);
                let mut probs = Vec::with_capacity(n * classes);
                // One class at a time keeps the batch small.
                for cls in 0..classes {
                    ctx.check_cancel()?;
                    let y = one_hot(&vec![cls; p.per_class], classes, device);
                    let eta = match p.way {
                        Way::Recursive => model.reverse_sampled(d, Act::Flat(y), &mut rng),
                        Way::OneLayer => {
                            if d == 1 {
                                model.reverse_from(1, Act::Flat(y))
                            } else {
                                let pre = model.pre_down(d, Act::Flat(y)).sigmoid();
                                let top = crate::model::bernoulli(pre, &mut rng);
                                model.reverse_from(d - 1, top)
                            }
                        }
                    };
                    let q = host(&burn::tensor::activation::sigmoid(eta));
                    let px: Vec<u8> = q
                        .iter()
                        .map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
                        .collect();
                    // Classify the images as stored (u8), as any later reader sees them.
                    let x = images_tensor(&px, p.per_class, model.spec.input, device);
                    probs.extend(host(&model.predict(x)));
                    pixels.extend(px);
                }
                Ok((pixels, probs))
            },
        )??;
        let mut agree = 0usize;
        let mut p_cond = 0.0;
        let mut cells: Vec<Vec<Cell>> = (0..classes).map(|_| Vec::new()).collect();
        for i in 0..n {
            let row = &probs[i * classes..(i + 1) * classes];
            let (best, pb) =
                row.iter()
                    .enumerate()
                    .fold((0, f32::MIN), |a, (j, &v)| if v > a.1 { (j, v) } else { a });
            agree += (best == labels[i]) as usize;
            p_cond += row[labels[i]] as f64;
            if i % p.per_class < p.grid_columns {
                cells[labels[i]].push(Cell {
                    pixels: &pixels[i * len..i * len + h * w],
                    predicted: best,
                    probability: pb as f64,
                    agrees: best == labels[i],
                });
            }
        }
        if c == 1 {
            labelled_grid(&cells, h, w, &ctx.out("grid.png"))?;
        }
        let set = ImageSet::new(
            pixels.clone(),
            n,
            c,
            h,
            w,
            labels.iter().map(|&l| l as i64).collect(),
        );
        set.write(&ctx.out("samples.safetensors"))
            .map_err(|e| StageError::Failed(e.to_string()))?;
        let mut m = Metrics::new();
        m.insert("consistency".into(), agree as f64 / n as f64);
        m.insert("consistency_probability".into(), p_cond / n as f64);
        m.insert(
            "diversity".into(),
            per_class_diversity(&pixels, &labels, len, classes, usize::MAX),
        );
        if let Some(r) = &reference {
            if r.image_len() == len {
                let rl: Vec<usize> = r.labels.iter().map(|&l| l.max(0) as usize).collect();
                m.insert(
                    "reference_diversity".into(),
                    per_class_diversity(r.pixels(), &rl, len, classes, p.per_class),
                );
            }
        }
        m.insert(
            "mean_pixel".into(),
            pixels.iter().map(|&x| x as f64).sum::<f64>() / pixels.len().max(1) as f64,
        );
        m.insert("seconds".into(), started.elapsed().as_secs_f64());
        Ok(m)
    }
}
