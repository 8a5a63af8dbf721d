//! Image files on disk: the generic class-per-folder tree, CelebA and
//! Caltech-101, all decoded in parallel (rayon) into one planar buffer.

use std::path::{Path, PathBuf};

use fast_image_resize as fr;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::artifact::ImageSet;
use crate::error::{DataError, Result};
use crate::ops::ImageOps;
use crate::Ctl;
use mrbm_stage::StageError;

/// One image file and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub path: PathBuf,
    pub label: i64,
}

/// The result of decoding files: the set and the corrupt files that were
/// skipped (only with `skip_corrupt`), with the decoder's message.
#[derive(Debug)]
pub struct Decoded {
    pub set: ImageSet,
    pub skipped: Vec<(PathBuf, String)>,
}

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

pub fn is_image_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Image files under `dir` (recursively), sorted by path.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !hidden(e.path()))
    {
        let entry = entry.map_err(|e| {
            let path = e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.to_path_buf());
            DataError::io(
                path,
                e.into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("file system loop")),
            )
        })?;
        if entry.file_type().is_file() && is_image_file(entry.path()) {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

fn require_dir(dir: &Path, expected: &str, hint: &str) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(DataError::Missing {
            path: dir.to_path_buf(),
            expected: expected.to_string(),
            hint: hint.to_string(),
        })
    }
}

/// The classes of a class-per-folder tree: sub-folders of `root`, sorted by
/// name (byte order), hidden ones and `exclude` left out, each with its image
/// files. An empty class folder is an error. A root with image files and no
/// sub-folders is one class (label 0).
pub fn class_folders(root: &Path, exclude: &[&str]) -> Result<Vec<(String, Vec<PathBuf>)>> {
    require_dir(root, "a folder with one sub-folder of images per class", "")?;
    let rd = std::fs::read_dir(root).map_err(|e| DataError::io(root, e))?;
    let mut dirs = Vec::new();
    for e in rd {
        let e = e.map_err(|e| DataError::io(root, e))?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() && !hidden(&p) && !exclude.contains(&name.as_str()) {
            dirs.push((name, p));
        }
    }
    dirs.sort();
    if dirs.is_empty() {
        let files = image_files(root)?;
        if files.is_empty() {
            return Err(DataError::NoImages {
                path: root.to_path_buf(),
                expected: "one sub-folder of .jpg/.jpeg/.png images per class".into(),
            });
        }
        return Ok(vec![(".".into(), files)]);
    }
    let mut out = Vec::with_capacity(dirs.len());
    for (name, p) in dirs {
        let files = image_files(&p)?;
        if files.is_empty() {
            return Err(DataError::EmptyClass { path: p });
        }
        out.push((name, files));
    }
    Ok(out)
}

/// Items of a generic class-per-folder tree; labels follow the sorted
/// folder names (0, 1, ...). Returns the class names too.
pub fn folder_items(root: &Path) -> Result<(Vec<Item>, Vec<String>)> {
    let classes = class_folders(root, &[])?;
    let names = classes.iter().map(|(n, _)| n.clone()).collect();
    let items = classes
        .into_iter()
        .enumerate()
        .flat_map(|(label, (_, files))| {
            files.into_iter().map(move |path| Item {
                path,
                label: label as i64,
            })
        })
        .collect();
    Ok((items, names))
}

/// Which part of a split data set to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    All,
    Train,
    Valid,
    Test,
}

/// Where CelebA's aligned images and partition file are, given the folder
/// the user named: the CelebA root (holding `img_align_celeba/`), or the
/// image folder itself. Returns (image folder, partition file candidates).
pub fn celeba_layout(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let nested = dir.join("img_align_celeba");
    if nested.is_dir() {
        // The official archive sometimes nests the folder twice.
        let images = if nested.join("img_align_celeba").is_dir() {
            nested.join("img_align_celeba")
        } else {
            nested
        };
        (
            images,
            vec![
                dir.join("list_eval_partition.txt"),
                dir.join("Eval").join("list_eval_partition.txt"),
            ],
        )
    } else {
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        (
            dir.to_path_buf(),
            vec![
                dir.join("list_eval_partition.txt"),
                parent.join("list_eval_partition.txt"),
                parent.join("Eval").join("list_eval_partition.txt"),
            ],
        )
    }
}

/// Parse `list_eval_partition.txt` ("000001.jpg 0" per line; 0 train,
/// 1 valid, 2 test) into (file name, partition) pairs.
pub fn parse_partition(path: &Path, text: &str) -> Result<Vec<(String, u8)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |m: String| DataError::BadListFile {
            path: path.to_path_buf(),
            line: i as u64 + 1,
            message: m,
        };
        let mut parts = line.split_whitespace();
        let (Some(name), Some(part), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(format!(
                "expected `<file name> <0|1|2>`, found `{line}`"
            )));
        };
        let part: u8 = match part {
            "0" => 0,
            "1" => 1,
            "2" => 2,
            _ => {
                return Err(bad(format!(
                    "partition `{part}`, expected 0 (train), 1 (valid) or 2 (test)"
                )))
            }
        };
        if name.contains('/') || name.contains('\\') || name == ".." {
            return Err(bad(format!(
                "file name `{name}` must be a plain name inside img_align_celeba/"
            )));
        }
        out.push((name.to_string(), part));
    }
    Ok(out)
}

/// CelebA items for a split, sorted by file name; labels are -1 (CelebA has
/// no class). `all` needs no partition file; the others do.
pub fn celeba_items(dir: &Path, split: Split) -> Result<Vec<Item>> {
    let (images, partition_candidates) = celeba_layout(dir);
    require_dir(
        &images,
        "CelebA's aligned images (img_align_celeba/000001.jpg ...)",
        crate::hints::CELEBA,
    )?;
    if split == Split::All {
        let files = image_files(&images)?;
        if files.is_empty() {
            return Err(DataError::NoImages {
                path: images,
                expected: "CelebA's aligned JPEGs 000001.jpg ... 202599.jpg".into(),
            });
        }
        return Ok(files
            .into_iter()
            .map(|path| Item { path, label: -1 })
            .collect());
    }
    let Some(pfile) = partition_candidates.iter().find(|p| p.is_file()) else {
        return Err(DataError::Missing {
            path: partition_candidates[0].clone(),
            expected: format!("list_eval_partition.txt (needed for split = \"{}\"; use split = \"all\" without it)", split_name(split)),
            hint: crate::hints::CELEBA.into(),
        });
    };
    let text = std::fs::read_to_string(pfile).map_err(|e| DataError::io(pfile, e))?;
    let want = match split {
        Split::Train => 0,
        Split::Valid => 1,
        Split::Test => 2,
        Split::All => unreachable!("handled above"),
    };
    let mut items = Vec::new();
    for (name, part) in parse_partition(pfile, &text)? {
        if part == want {
            let path = images.join(&name);
            if !path.is_file() {
                return Err(DataError::Missing {
                    path,
                    expected: format!("the image listed in {}", pfile.display()),
                    hint: crate::hints::CELEBA.into(),
                });
            }
            items.push(Item { path, label: -1 });
        }
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    if items.is_empty() {
        return Err(DataError::NoImages {
            path: pfile.clone(),
            expected: format!("images in partition {want}"),
        });
    }
    Ok(items)
}

fn split_name(s: Split) -> &'static str {
    match s {
        Split::All => "all",
        Split::Train => "train",
        Split::Valid => "valid",
        Split::Test => "test",
    }
}

/// Caltech-101 items: the class folders of `101_ObjectCategories` (found in
/// `dir` or `dir` itself), BACKGROUND_Google left out, labels by sorted
/// name. In each class the files are shuffled (seeded by `seed` and the
/// class index), the first `per_class` are the training part and the rest
/// (at most `test_per_class`, when given) the test part.
pub fn caltech101_items(
    dir: &Path,
    split: Split,
    per_class: usize,
    test_per_class: Option<usize>,
    seed: u64,
) -> Result<(Vec<Item>, Vec<String>)> {
    let root = [
        dir.join("101_ObjectCategories"),
        dir.join("caltech101").join("101_ObjectCategories"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .unwrap_or_else(|| dir.to_path_buf());
    require_dir(
        &root,
        "Caltech-101's 101_ObjectCategories/ (one folder per class)",
        crate::hints::CALTECH101,
    )?;
    let classes = class_folders(&root, &["BACKGROUND_Google"])?;
    let mut items = Vec::new();
    let mut names = Vec::new();
    for (label, (name, mut files)) in classes.into_iter().enumerate() {
        if files.len() <= per_class && split != Split::All {
            return Err(DataError::Invalid(format!(
                "{}: class holds {} images; per_class = {per_class} leaves none for the test part (lower per_class)",
                root.join(&name).display(),
                files.len()
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(label as u64);
        files.shuffle(&mut rng);
        let chosen: Vec<PathBuf> = match split {
            Split::All => files,
            Split::Train => files.into_iter().take(per_class).collect(),
            Split::Test => files
                .into_iter()
                .skip(per_class)
                .take(test_per_class.unwrap_or(usize::MAX))
                .collect(),
            Split::Valid => {
                return Err(DataError::Invalid(
                    "Caltech-101 has no validation part: use split = \"train\" or \"test\"".into(),
                ))
            }
        };
        items.extend(chosen.into_iter().map(|path| Item {
            path,
            label: label as i64,
        }));
        names.push(name);
    }
    Ok((items, names))
}

/// A seeded subset of `n` indices out of `len`, in increasing order (so the
/// subset keeps the original order). `n >= len` keeps everything.
pub fn subset_indices(len: usize, n: usize, seed: u64) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx = rand::seq::index::sample(&mut rng, len, n).into_vec();
    idx.sort_unstable();
    idx
}

/// Decode one image file to interleaved RGB8: (pixels, width, height).
pub fn decode_rgb(path: &Path) -> std::result::Result<(Vec<u8>, u32, u32), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    decode_rgb_bytes(&bytes)
}

/// Decode image bytes (JPEG or PNG, by content) to interleaved RGB8.
pub fn decode_rgb_bytes(bytes: &[u8]) -> std::result::Result<(Vec<u8>, u32, u32), String> {
    let format = image::guess_format(bytes).map_err(|e| e.to_string())?;
    if format == image::ImageFormat::Jpeg {
        check_jpeg_end(bytes)?;
        if let Some(r) = crate::jpeg::decode_region(bytes, |_, _| Ok::<_, String>(None)) {
            return r.map(|reg| (reg.rgb, reg.image_w, reg.image_h));
        }
    }
    decode_other(bytes, format)
}

/// Decode with the `image` crate (PNG, and CMYK JPEGs libjpeg cannot
/// turn into RGB).
fn decode_other(
    bytes: &[u8],
    format: image::ImageFormat,
) -> std::result::Result<(Vec<u8>, u32, u32), String> {
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| e.to_string())?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    Ok((rgb.into_raw(), w, h))
}

fn check_jpeg_end(bytes: &[u8]) -> std::result::Result<(), String> {
    if has_jpeg_end(bytes) {
        Ok(())
    } else {
        // libjpeg pads a truncated JPEG with grey and only warns; Pillow
        // refuses it ("image file is truncated"), and so do we.
        Err("truncated JPEG: no end-of-image marker (FF D9)".into())
    }
}

/// Whether a JPEG ends with the EOI marker (allowing trailing padding).
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// The size (w, h) of an image file, from its header when possible.
fn probe_size(path: &Path) -> std::result::Result<(u32, u32), String> {
    decode_rgb(path).map(|(_, w, h)| (w, h))
}

/// Decode `items`, apply `ops` to each, and stack them into one set, in
/// parallel on rayon's current pool. Output size: the resize, else a fixed
/// crop, else the first image's size (every image must then match). A file
/// that does not decode is an error, or with `skip_corrupt` a skipped file.
pub fn decode_items(
    items: &[Item],
    ops: &ImageOps,
    skip_corrupt: bool,
    ctl: &Ctl,
) -> Result<Decoded> {
    if items.is_empty() {
        return Err(DataError::Invalid("no images to read".into()));
    }
    let (ow, oh, src_size) = match ops.fixed_out_size() {
        Some((w, h)) => (w, h, None),
        None => {
            // Find the first readable image to fix the size.
            let mut found = None;
            for it in items {
                match probe_size(&it.path) {
                    Ok((w, h)) => {
                        let (ow, oh) = ops.out_size(w, h, &|| it.path.display().to_string())?;
                        found = Some((ow, oh, Some((w, h))));
                        break;
                    }
                    Err(m) if skip_corrupt => {
                        let _ = m;
                        continue;
                    }
                    Err(m) => {
                        return Err(DataError::CorruptImage {
                            path: it.path.clone(),
                            message: m,
                        })
                    }
                }
            }
            found.ok_or_else(|| DataError::NoImages {
                path: items[0].path.clone(),
                expected: "at least one readable image".into(),
            })?
        }
    };
    let c = ops.gray.channels(3);
    let len = c * (ow as usize * oh as usize);
    let total = items.len().checked_mul(len).ok_or_else(|| {
        DataError::Invalid(format!(
            "{} images of {c}x{oh}x{ow} do not fit in memory",
            items.len()
        ))
    })?;
    let mut pixels = vec![0u8; total];
    // Ok(None): decoded; Ok(Some(message)): corrupt and skipped.
    let results: Vec<Result<Option<String>>> = pixels
        .par_chunks_mut(len)
        .zip(items.par_iter())
        .map_init(fr::Resizer::new, |resizer, (dst, it)| {
            ctl.check()?;
            let r = decode_one(resizer, it, ops, src_size, (ow, oh), dst);
            ctl.bar.inc(1);
            match r {
                Ok(()) => Ok(None),
                Err(DataError::CorruptImage { message, .. }) if skip_corrupt => Ok(Some(message)),
                Err(e) => Err(e),
            }
        })
        .collect();
    if results
        .iter()
        .any(|r| matches!(r, Err(DataError::Stage(StageError::Cancelled))))
    {
        return Err(StageError::Cancelled.into());
    }
    // Compact the kept images to the front (in place: one buffer only).
    // The first failure in file order is reported, so errors are deterministic.
    let mut skipped = Vec::new();
    let mut labels = Vec::with_capacity(items.len());
    let mut n = 0;
    for (i, (it, r)) in items.iter().zip(results).enumerate() {
        match r? {
            None => {
                if n != i {
                    pixels.copy_within(i * len..(i + 1) * len, n * len);
                }
                labels.push(it.label);
                n += 1;
            }
            Some(msg) => skipped.push((it.path.clone(), msg)),
        }
    }
    if n == 0 {
        return Err(DataError::NoImages {
            path: items[0]
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            expected: "at least one readable image (all were corrupt)".into(),
        });
    }
    pixels.truncate(n * len);
    pixels.shrink_to_fit();
    Ok(Decoded {
        set: ImageSet::new(pixels, n, c, oh as usize, ow as usize, labels),
        skipped,
    })
}

/// Why decoding one file failed: the decoder's message (a corrupt file)
/// or a typed error (size mismatch, crop out of bounds).
enum Fail {
    Msg(String),
    Data(DataError),
}

impl From<String> for Fail {
    fn from(m: String) -> Self {
        Fail::Msg(m)
    }
}

fn decode_one(
    resizer: &mut fr::Resizer,
    it: &Item,
    ops: &ImageOps,
    first: Option<(u32, u32)>,
    out_size: (u32, u32),
    dst: &mut [u8],
) -> Result<()> {
    let corrupt = |m: String| DataError::CorruptImage {
        path: it.path.clone(),
        message: m,
    };
    let what = || it.path.display().to_string();
    // The size check, given the full image size.
    let check = |w: u32, h: u32| -> Result<()> {
        if ops.out_size(w, h, &what)? != out_size {
            let (ew, eh) = first.unwrap_or(out_size);
            return Err(DataError::SizeMismatch {
                path: it.path.clone(),
                found_w: w,
                found_h: h,
                expected_w: ew,
                expected_h: eh,
            });
        }
        Ok(())
    };
    let bytes = std::fs::read(&it.path).map_err(|e| DataError::io(&it.path, e))?;
    let format = image::guess_format(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if format == image::ImageFormat::Jpeg {
        check_jpeg_end(&bytes).map_err(corrupt)?;
        // Decode only the crop (exactly the same pixels as a full decode).
        let pick = |w: u32, h: u32| -> std::result::Result<Option<crate::jpeg::Rect>, Fail> {
            check(w, h).map_err(Fail::Data)?;
            Ok(ops.crop.and_then(|c| c.rect(w, h)))
        };
        match crate::jpeg::decode_region(&bytes, pick) {
            Some(Ok(reg)) => {
                let rest = ImageOps { crop: None, ..*ops };
                return crate::ops::process_rgb(
                    resizer, &reg.rgb, reg.rect.2, reg.rect.3, &rest, dst, &what,
                );
            }
            Some(Err(Fail::Msg(m))) => return Err(corrupt(m)),
            Some(Err(Fail::Data(e))) => return Err(e),
            None => {} // CMYK: below
        }
    }
    let (rgb, w, h) = decode_other(&bytes, format).map_err(corrupt)?;
    check(w, h)?;
    crate::ops::process_rgb(resizer, &rgb, w, h, ops, dst, &what)
}
