//! The `dataset` and `transform` stage kinds, their parameters, and the
//! plain library functions they call ([`load_dataset`], [`transform`]).
//!
//! Parameter examples (the `params` table of a stage):
//!
//! ```toml
//! # dataset: the quickstart's synthetic shapes (no input)
//! format = "synthetic"
//! n = 4000
//! size = 16
//! classes = 4
//! seed = 0
//!
//! # dataset: MNIST t10k, input dir = the folder of the *-ubyte.gz files
//! format = "idx"
//! split = "test"
//! # ... then a transform stage on it: 8000 train / 2000 test
//! split = { train = 8000, test = 2000 }
//! seed = 0
//!
//! # dataset: CelebA 64x64, input dir = the folder holding img_align_celeba/
//! format = "celeba"
//! crop = 140          # centre 140x140 of 178x218
//! resize = 64
//! filter = "bilinear" # antialiased, equal to Pillow's
//! skip_corrupt = true
//!
//! # dataset: CelebA 128x128 from the centre 178x178 square
//! format = "celeba"
//! crop = 178
//! resize = 128
//! filter = "lanczos3"
//!
//! # dataset: Caltech-101, 30 train images per class, grey 64x64
//! format = "caltech101"
//! split = "train"
//! per_class = 30
//! crop = "square"
//! resize = 64
//! grayscale = true
//! ```

use std::path::{Path, PathBuf};

use mrbm_stage::{InputSlot, JsonValue, Metrics, ParamError, Stage, StageContext, StageError};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::artifact::ImageSet;
use crate::error::{DataError, Result};
use crate::folder::{self, Decoded, Split};
use crate::ops::{Crop, Filter, Gray, ImageOps, Size};
use crate::readers::{self, Format, Source, FORMAT_KEYS};
use crate::Ctl;

/// Parameters of the `dataset` stage. Per-format keys left out get that
/// format's default in the canonical form; a key that does not apply to
/// the format is an error. Order of operations: subset (before decoding),
/// then crop, resize, grayscale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(deny_unknown_fields)]
pub struct DatasetParams {
    /// Reader: "synthetic", "idx", "cifar10", "celeba", "caltech101" or "folder".
    pub format: Format,
    /// Part to read: "train" or "test" (idx, cifar10, caltech101; default "train"); "all", "train", "valid" or "test" (celeba; default "all").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// synthetic: number of images (default 4000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// synthetic: image side in pixels (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// synthetic: number of shape classes, 1..=7, in the order circle, square, triangle, cross, diamond, ring, x (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    /// Random seed for synthetic images, the Caltech-101 split and `subset` (default 0).
    #[serde(default)]
    pub seed: u64,
    /// Keep a seeded random subset of this many images (original order kept), chosen before decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<usize>,
    /// caltech101: training images per class; the rest of each class is the test part (default 30, the usual protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<usize>,
    /// caltech101: at most this many test images per class (default: all the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_per_class: Option<usize>,
    /// idx: image file inside `dir` (default train-images-idx3-ubyte or t10k-images-idx3-ubyte, raw or .gz, by split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
    /// idx: label file inside `dir` (default train-labels-idx1-ubyte or t10k-labels-idx1-ubyte, raw or .gz, by split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Crop each image: 140 (centre square), [w, h] (centre), "square" (largest centred square) or { x, y, w, h } (box).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<Crop>,
    /// Resize each image (after the crop): 64 or [width, height].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<Size>,
    /// Resampling filter for `resize`: nearest, box, bilinear, hamming, bicubic, mitchell, lanczos3 (default bilinear, antialiased as Pillow's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Convert to grey (ITU-R 601 luma, as Pillow's convert("L")).
    #[serde(default)]
    pub grayscale: bool,
    /// With grayscale: keep three equal channels instead of one (e.g. to colourise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_channels: bool,
    /// celeba, caltech101, folder: skip images that do not decode, with a warning and a count, instead of failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_corrupt: bool,
}

/// `images` and `labels` name files inside the `dir` input (whose whole
/// content is hashed into the key): plain relative paths, no `..`, not
/// absolute.
fn inside_dir(key: &str, name: &str) -> std::result::Result<(), ParamError> {
    let p = Path::new(name);
    let plain = !name.is_empty()
        && p.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
        && p.components()
            .any(|c| matches!(c, std::path::Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(ParamError::new(
            key,
            format!("`{key}` = \"{name}\" must name a file inside the `dir` input (a relative path without `..`); files elsewhere are not part of the stage's key"),
        ))
    }
}

/// Shared checks of the image operation keys.
fn check_ops(
    crop: &Option<Crop>,
    resize: &Option<Size>,
    filter: &mut Option<Filter>,
    grayscale: bool,
    keep_channels: bool,
) -> std::result::Result<(), ParamError> {
    if resize.is_some() {
        filter.get_or_insert(Filter::Bilinear);
    } else if filter.is_some() {
        return Err(ParamError::new("filter", "`filter` needs `resize`"));
    }
    if keep_channels && !grayscale {
        return Err(ParamError::new(
            "keep_channels",
            "`keep_channels` needs `grayscale = true`",
        ));
    }
    let ops = ImageOps {
        crop: *crop,
        resize: *resize,
        filter: Filter::Bilinear,
        gray: Gray::Off,
    };
    ops.validate().map_err(|m| {
        ParamError::new(
            if m.starts_with("crop") {
                "crop"
            } else {
                "resize"
            },
            m,
        )
    })
}

impl DatasetParams {
    /// Fill per-format defaults and reject keys that do not apply.
    pub fn normalise(mut self) -> std::result::Result<Self, ParamError> {
        let reader = self.format.reader();
        let (keys, last) = FORMAT_KEYS.split_at(FORMAT_KEYS.len() - 1);
        readers::check_keys(&self, keys)?;
        for (key, name) in [("images", &self.images), ("labels", &self.labels)] {
            if let Some(name) = name {
                inside_dir(key, name)?;
            }
        }
        readers::check_keys(&self, last)?;
        reader.normalise(&mut self)?;
        if self.subset == Some(0) {
            return Err(ParamError::new("subset", "subset must be at least 1"));
        }
        check_ops(
            &self.crop,
            &self.resize,
            &mut self.filter,
            self.grayscale,
            self.keep_channels,
        )?;
        Ok(self)
    }

    pub fn ops(&self) -> ImageOps {
        ImageOps {
            crop: self.crop,
            resize: self.resize,
            filter: self.filter.unwrap_or_default(),
            gray: Gray::from_flags(self.grayscale, self.keep_channels),
        }
    }

    /// What the `dir` input should hold, and where the data are published.
    pub fn expected_files(&self) -> (String, &'static str) {
        self.format.reader().expected_files(self)
    }
}

/// Read a data set as `p` describes (p should be normalised). `dir` is the
/// folder (or file) of the data set; synthetic needs none. Runs on rayon's
/// current pool.
pub fn load_dataset(p: &DatasetParams, dir: Option<&Path>, ctl: &Ctl) -> Result<Decoded> {
    let p = p
        .clone()
        .normalise()
        .map_err(|e| DataError::Invalid(format!("dataset parameters: {}", e.message)))?;
    let ops = p.ops();
    let reader = p.format.reader();
    let dir = match dir {
        _ if !reader.needs_dir() => PathBuf::new(),
        Some(d) => d.to_path_buf(),
        None => {
            let (expected, _) = p.expected_files();
            return Err(DataError::Invalid(format!(
                "format = \"{}\" needs the input `dir`: {expected}",
                reader.name()
            )));
        }
    };
    if reader.needs_dir() && !dir.exists() {
        let (expected, hint) = p.expected_files();
        return Err(DataError::Missing {
            path: dir,
            expected,
            hint: hint.into(),
        });
    }
    match reader.read(&p, &dir, ctl)? {
        // Images in memory: subset, then transform.
        Source::Images(set) => {
            let set = match p.subset {
                Some(k) if k < set.n => set.select(&folder::subset_indices(set.n, k, p.seed)),
                _ => set,
            };
            let set = if ops.is_identity() {
                set
            } else {
                ctl.bar.set_length(set.n as u64);
                crate::ops::transform_set(&set, &ops, ctl)?
            };
            Ok(Decoded {
                set,
                skipped: Vec::new(),
            })
        }
        // Image files: subset before decoding.
        Source::Files(items) => {
            let items: Vec<_> = match p.subset {
                Some(k) if k < items.len() => folder::subset_indices(items.len(), k, p.seed)
                    .into_iter()
                    .map(|i| items[i].clone())
                    .collect(),
                _ => items,
            };
            ctl.bar.set_length(items.len() as u64);
            folder::decode_items(&items, &ops, p.skip_corrupt, ctl)
        }
    }
}

/// How to split into train, validation and test parts: counts; a missing
/// train or test count takes the rest. `{ train = 8000, test = 2000 }`,
/// `{ test = 2000 }`, or with a validation part for calibration,
/// `{ train = 7000, val = 1000, test = 2000 }`. The test part is drawn
/// first and the validation part next, so adding `val` carves it out of
/// what was the training part and leaves the test part unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Images in the training part (default: all not in the test part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<usize>,
    /// Images in the test part (default: all not in the training part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<usize>,
    /// Images in a validation part, written as val.safetensors (default:
    /// none). Tune on it; read the test part once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<usize>,
}

/// Parameters of the `transform` stage. Order: subset, crop, resize,
/// grayscale, split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(deny_unknown_fields)]
pub struct TransformParams {
    /// Crop each image: 140 (centre square), [w, h] (centre), "square" (largest centred square) or { x, y, w, h } (box).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<Crop>,
    /// Resize each image (after the crop): 64 or [width, height].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<Size>,
    /// Resampling filter for `resize`: nearest, box, bilinear, hamming, bicubic, mitchell, lanczos3 (default bilinear, antialiased as Pillow's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Convert to grey (ITU-R 601 luma, as Pillow's convert("L")).
    #[serde(default)]
    pub grayscale: bool,
    /// With grayscale: keep three equal channels instead of one (e.g. to colourise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_channels: bool,
    /// Keep a seeded random subset of this many images (original order kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<usize>,
    /// Also write train.safetensors and test.safetensors (and val.safetensors with `val`): a seeded random split by counts, e.g. { train = 7000, val = 1000, test = 2000 }.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitSpec>,
    /// Random seed for `subset` and `split` (default 0).
    #[serde(default)]
    pub seed: u64,
}

impl TransformParams {
    pub fn normalise(mut self) -> std::result::Result<Self, ParamError> {
        check_ops(
            &self.crop,
            &self.resize,
            &mut self.filter,
            self.grayscale,
            self.keep_channels,
        )?;
        if self.subset == Some(0) {
            return Err(ParamError::new("subset", "subset must be at least 1"));
        }
        if let Some(s) = self.split {
            match (s.train, s.test) {
                (None, None) => {
                    return Err(ParamError::new(
                        "split",
                        "split needs `train`, `test` or both (image counts)",
                    ))
                }
                _ if s.val == Some(0) => {
                    return Err(ParamError::new(
                        "split",
                        "split parts must hold at least 1 image",
                    ))
                }
                (_, Some(0)) | (Some(0), _) => {
                    return Err(ParamError::new(
                        "split",
                        "split parts must hold at least 1 image",
                    ))
                }
                _ => {}
            }
        }
        Ok(self)
    }

    pub fn ops(&self) -> ImageOps {
        ImageOps {
            crop: self.crop,
            resize: self.resize,
            filter: self.filter.unwrap_or_default(),
            gray: Gray::from_flags(self.grayscale, self.keep_channels),
        }
    }
}

/// The result of [`transform`].
#[derive(Debug)]
pub struct Transformed {
    pub data: ImageSet,
    /// The parts, when a split was asked for.
    pub split: Option<SplitSets>,
}

/// The parts of a split.
#[derive(Debug)]
pub struct SplitSets {
    pub train: ImageSet,
    pub test: ImageSet,
    /// Present when the split names `val`.
    pub val: Option<ImageSet>,
}

/// The indices of each part of a split, each sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitIndices {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
    pub val: Vec<usize>,
}

/// The train and test indices of a split of `n` images, each sorted.
pub fn split_indices(n: usize, spec: SplitSpec, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    let parts = split_parts(n, spec, seed)?;
    Ok((parts.train, parts.test))
}

/// The train, validation and test indices of a split of `n` images, each
/// sorted. The test part is the first `test` of a seeded permutation, the
/// validation part the next `val`, the training part the next `train`: a
/// split without `val` is what it was before validation parts existed.
pub fn split_parts(n: usize, spec: SplitSpec, seed: u64) -> Result<SplitIndices> {
    let val = spec.val.unwrap_or(0);
    let (train, test) = match (spec.train, spec.test) {
        (Some(a), Some(b)) => (a, b),
        (Some(a), None) => (a, n.saturating_sub(a).saturating_sub(val)),
        (None, Some(b)) => (n.saturating_sub(b).saturating_sub(val), b),
        (None, None) => return Err(DataError::Invalid("split needs train or test".into())),
    };
    let need = train.checked_add(test).and_then(|t| t.checked_add(val));
    if need.is_none_or(|t| t > n) || train == 0 || test == 0 || spec.val == Some(0) {
        let val_text = match spec.val {
            Some(v) => format!(", val = {v}"),
            None => String::new(),
        };
        return Err(DataError::Invalid(format!("split: train = {train}{val_text} and test = {test} need {} images (at least 1 each), the data hold {n}", train.saturating_add(test).saturating_add(val))));
    }
    let mut perm: Vec<usize> = (0..n).collect();
    // A different stream from `subset`'s draw with the same seed.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1);
    perm.shuffle(&mut rng);
    let sorted = |s: &[usize]| {
        let mut v = s.to_vec();
        v.sort_unstable();
        v
    };
    Ok(SplitIndices {
        test: sorted(&perm[..test]),
        val: sorted(&perm[test..test + val]),
        train: sorted(&perm[test + val..test + val + train]),
    })
}

/// Apply the transform parameters to a set (rayon's current pool).
pub fn transform(set: &ImageSet, p: &TransformParams, ctl: &Ctl) -> Result<Transformed> {
    let p = p
        .clone()
        .normalise()
        .map_err(|e| DataError::Invalid(format!("transform parameters: {}", e.message)))?;
    let sub;
    let src = match p.subset {
        Some(k) if k < set.n => {
            sub = set.select(&folder::subset_indices(set.n, k, p.seed));
            &sub
        }
        _ => set,
    };
    ctl.bar.set_length(src.n as u64);
    let data = crate::ops::transform_set(src, &p.ops(), ctl)?;
    let split = match p.split {
        Some(spec) => {
            let parts = split_parts(data.n, spec, p.seed)?;
            Some(SplitSets {
                train: data.select(&parts.train),
                test: data.select(&parts.test),
                val: spec.val.map(|_| data.select(&parts.val)),
            })
        }
        None => None,
    };
    Ok(Transformed { data, split })
}

fn set_metrics(m: &mut Metrics, prefix: &str, s: &ImageSet) {
    m.insert(format!("{prefix}images"), s.n as f64);
    if prefix.is_empty() {
        m.insert("channels".into(), s.c as f64);
        m.insert("height".into(), s.h as f64);
        m.insert("width".into(), s.w as f64);
        let mut labels: Vec<i64> = s.labels.clone();
        labels.sort_unstable();
        labels.dedup();
        m.insert(
            "classes".into(),
            labels.iter().filter(|&&l| l >= 0).count() as f64,
        );
    }
}

/// Print a warning above the progress bars (or on stderr) and log it.
fn warn(ctx: &StageContext, line: &str) {
    ctx.log(format!("warning: {line}"));
    match ctx.progress {
        Some(m) => {
            let _ = m.println(format!("warning: {}: {line}", ctx.stage_id));
        }
        None => eprintln!("warning: {}: {line}", ctx.stage_id),
    }
}

/// `dataset`: read a data set into data.safetensors.
pub struct DatasetStage;

const DATASET_INPUTS: &[InputSlot] = &[InputSlot::optional(
    "dir",
    None,
    "the data set's folder (or CIFAR-10 .bin file), usually `data:<name>` under the data root; not used by format = \"synthetic\"",
)];

impl Stage for DatasetStage {
    fn kind(&self) -> &'static str {
        "dataset"
    }
    fn about(&self) -> &'static str {
        "read a data set (image folder, IDX, CIFAR-10, synthetic) into data.safetensors"
    }
    fn param_docs(&self) -> Vec<mrbm_stage::ParamDoc> {
        <DatasetParams as mrbm_stage::ParamDocs>::param_docs()
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> &'static [InputSlot] {
        DATASET_INPUTS
    }
    fn params(&self, raw: &toml::Table) -> std::result::Result<JsonValue, ParamError> {
        let (p, _) = mrbm_stage::parse_params::<DatasetParams>(raw)?;
        mrbm_stage::canonical_json(&p.normalise()?)
    }
    fn missing_input_hint(&self, params: &JsonValue, slot: &str, path: &Path) -> Option<String> {
        if slot != "dir" {
            return None;
        }
        let p: DatasetParams = serde_json::from_value(params.clone()).ok()?;
        let (expected, hint) = p.expected_files();
        Some(format!("{}: data set folder not found; expected {expected}.{hint}. Nothing is downloaded at run time.", path.display()))
    }
    fn metrics(&self, _params: &JsonValue) -> Option<Vec<String>> {
        let m = [
            "images", "channels", "height", "width", "classes", "skipped", "seconds",
        ];
        Some(m.iter().map(|s| s.to_string()).collect())
    }
    fn memory_floor(&self, params: &JsonValue) -> Option<(f64, String)> {
        let p: DatasetParams = serde_json::from_value(params.clone()).ok()?;
        let (n, size) = (p.n?, p.size?);
        Some((
            2.0 * 3.0 * n as f64 * (size as f64 * size as f64),
            format!("{n} synthetic images of {size}x{size}"),
        ))
    }
    fn run(&self, ctx: &StageContext) -> std::result::Result<Metrics, StageError> {
        let p: DatasetParams = ctx.typed_params()?;
        if let (Some(n), Some(size)) = (p.n, p.size) {
            // Synthetic images (3 channels) and a copy: refuse absurd sizes
            // before allocating instead of aborting.
            mrbm_stage::check_memory(
                2.0 * 3.0 * n as f64 * (size * size) as f64,
                &format!("{n} synthetic images of {size}x{size}"),
            )?;
        }
        let started = std::time::Instant::now();
        let ctl = Ctl {
            bar: ctx.bar(0, "reading"),
            cancel: Some(ctx.cancel),
        };
        let decoded = mrbm_stage::thread_pool(ctx.threads)?
            .install(|| load_dataset(&p, ctx.optional_input("dir"), &ctl))?;
        ctl.bar.finish_and_clear();
        for (path, msg) in &decoded.skipped {
            ctx.log(format!(
                "warning: skipped corrupt image {}: {msg}",
                path.display()
            ));
        }
        if !decoded.skipped.is_empty() {
            warn(ctx, &format!("skipped {} corrupt image(s) (skip_corrupt = true; listed in the stage log), first: {}", decoded.skipped.len(), decoded.skipped[0].0.display()));
        }
        ctx.check_cancel()?;
        decoded
            .set
            .write(&ctx.out("data.safetensors"))
            .map_err(DataError::from)?;
        let mut m = Metrics::new();
        set_metrics(&mut m, "", &decoded.set);
        m.insert("skipped".into(), decoded.skipped.len() as f64);
        m.insert("seconds".into(), started.elapsed().as_secs_f64());
        Ok(m)
    }
}

/// `transform`: crop, resize, grayscale, subset and split an image set.
pub struct TransformStage;

const TRANSFORM_INPUTS: &[InputSlot] = &[InputSlot::required(
    "data",
    Some("data.safetensors"),
    "the image set to transform",
)];

impl Stage for TransformStage {
    fn kind(&self) -> &'static str {
        "transform"
    }
    fn about(&self) -> &'static str {
        "crop, resize, grayscale, subset and split an image set"
    }
    fn param_docs(&self) -> Vec<mrbm_stage::ParamDoc> {
        <TransformParams as mrbm_stage::ParamDocs>::param_docs()
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> &'static [InputSlot] {
        TRANSFORM_INPUTS
    }
    fn params(&self, raw: &toml::Table) -> std::result::Result<JsonValue, ParamError> {
        let (p, _) = mrbm_stage::parse_params::<TransformParams>(raw)?;
        mrbm_stage::canonical_json(&p.normalise()?)
    }
    fn metrics(&self, _params: &JsonValue) -> Option<Vec<String>> {
        let mut m: Vec<String> = [
            "images", "channels", "height", "width", "classes", "seconds",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        m.extend(["train_images", "test_images", "val_images"].map(String::from));
        Some(m)
    }
    fn run(&self, ctx: &StageContext) -> std::result::Result<Metrics, StageError> {
        let p: TransformParams = ctx.typed_params()?;
        let started = std::time::Instant::now();
        let input = mrbm_stage::resolve_file(ctx.input("data")?, "data.safetensors");
        let set = ImageSet::read(&input).map_err(|e| StageError::user(DataError::from(e)))?;
        let ctl = Ctl {
            bar: ctx.bar(set.n as u64, "transforming"),
            cancel: Some(ctx.cancel),
        };
        let out = mrbm_stage::thread_pool(ctx.threads)?.install(|| transform(&set, &p, &ctl))?;
        ctl.bar.finish_and_clear();
        ctx.check_cancel()?;
        let mut m = Metrics::new();
        set_metrics(&mut m, "", &out.data);
        out.data
            .write(&ctx.out("data.safetensors"))
            .map_err(DataError::from)?;
        if let Some(parts) = &out.split {
            parts
                .train
                .write(&ctx.out("train.safetensors"))
                .map_err(DataError::from)?;
            parts
                .test
                .write(&ctx.out("test.safetensors"))
                .map_err(DataError::from)?;
            set_metrics(&mut m, "train_", &parts.train);
            set_metrics(&mut m, "test_", &parts.test);
            if let Some(val) = &parts.val {
                val.write(&ctx.out("val.safetensors"))
                    .map_err(DataError::from)?;
                set_metrics(&mut m, "val_", val);
            }
        }
        m.insert("seconds".into(), started.elapsed().as_secs_f64());
        Ok(m)
    }
}

#[cfg(test)]
mod confinement_tests {
    use super::*;

    #[test]
    fn images_and_labels_stay_inside_dir() {
        let params = |extra: &str| -> std::result::Result<JsonValue, ParamError> {
            let raw: toml::Table = toml::from_str(&format!("format = \"idx\"\n{extra}")).unwrap();
            DatasetStage.params(&raw)
        };
        assert!(params("images = \"sub/train-images-idx3-ubyte\"").is_ok());
        for bad in ["../../../../etc/shadow", "/etc/shadow", "a/../../b", ""] {
            let e = params(&format!("images = \"{bad}\"")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("images"), "{bad}");
            assert!(
                e.message.contains("inside the `dir` input"),
                "{}",
                e.message
            );
            let e = params(&format!("labels = \"{bad}\"")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("labels"), "{bad}");
        }
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    fn spec(train: Option<usize>, val: Option<usize>, test: Option<usize>) -> SplitSpec {
        SplitSpec { train, test, val }
    }

    /// A validation part is carved out of what was the training part: the
    /// test part of a split is the same with and without `val`, and the
    /// three parts are disjoint.
    #[test]
    fn val_leaves_the_test_part_unchanged_and_parts_are_disjoint() {
        let (tr, te) = split_indices(100, spec(Some(80), None, Some(20)), 7).unwrap();
        let p = split_parts(100, spec(Some(70), Some(10), Some(20)), 7).unwrap();
        assert_eq!(p.test, te);
        assert_eq!((p.train.len(), p.val.len(), p.test.len()), (70, 10, 20));
        let mut all: Vec<usize> = p
            .train
            .iter()
            .chain(&p.val)
            .chain(&p.test)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        // val and train together are the old training part.
        let mut old: Vec<usize> = p.train.iter().chain(&p.val).copied().collect();
        old.sort_unstable();
        assert_eq!(old, tr);
        // A missing count takes the rest, after the validation part.
        let p = split_parts(100, spec(None, Some(10), Some(20)), 7).unwrap();
        assert_eq!(p.train.len(), 70);
    }

    #[test]
    fn split_parts_that_do_not_fit_are_refused() {
        assert!(split_parts(100, spec(Some(80), Some(10), Some(20)), 1).is_err());
        let raw: toml::Table = toml::from_str("split = { train = 5, val = 0, test = 5 }").unwrap();
        assert!(TransformStage.params(&raw).is_err());
        let raw: toml::Table = toml::from_str("split = { train = 5, val = 2, test = 5 }").unwrap();
        let v = TransformStage.params(&raw).unwrap();
        assert_eq!(v["split"]["val"], 2);
        // Without val the canonical parameters (and so the keys) are as before.
        let raw: toml::Table = toml::from_str("split = { train = 5, test = 5 }").unwrap();
        assert!(TransformStage.params(&raw).unwrap()["split"]
            .get("val")
            .is_none());
    }
}
