//! IDX files (MNIST, Fashion-MNIST): big-endian header `00 00 <type> <ndim>`,
//! `ndim` u32 dimensions, then the data. Only unsigned-byte data (type 0x08)
//! is read. gzip is detected by its magic bytes, not the file name.

use std::io::Read;
use std::path::Path;

use crate::artifact::ImageSet;
use crate::error::{DataError, Result};

/// Decompressed size limit: far above any real IDX file (MNIST train
/// images are 47 MB), low enough that a gzip bomb cannot exhaust memory.
pub const MAX_DECOMPRESSED: u64 = 4 << 30;

/// The bytes of `raw`, gunzipped when they start with the gzip magic.
pub fn maybe_gunzip<'a>(path: &Path, raw: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>> {
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(1 << 28));
        let mut dec = flate2::read::MultiGzDecoder::new(raw).take(MAX_DECOMPRESSED + 1);
        if let Err(e) = dec.read_to_end(&mut out) {
            return Err(DataError::Gzip {
                path: path.to_path_buf(),
                offset: out.len() as u64,
                message: e.to_string(),
            });
        }
        if out.len() as u64 > MAX_DECOMPRESSED {
            return Err(DataError::Gzip {
                path: path.to_path_buf(),
                offset: MAX_DECOMPRESSED,
                message: format!("decompresses to more than {MAX_DECOMPRESSED} bytes"),
            });
        }
        Ok(std::borrow::Cow::Owned(out))
    } else {
        Ok(std::borrow::Cow::Borrowed(raw))
    }
}

/// Parse an (already decompressed) IDX buffer with `ndim` dimensions of
/// unsigned bytes. Returns the dimensions and the data bytes.
pub fn parse_idx<'a>(path: &Path, bytes: &'a [u8], ndim: u8) -> Result<(Vec<usize>, &'a [u8])> {
    let p = || path.to_path_buf();
    let len = bytes.len() as u64;
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: p(),
            offset: len,
            expected: 4,
            actual: len,
        });
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::BadHeader {
            path: p(),
            offset: 0,
            found: format!("magic number 0x{:02x}{:02x}{:02x}{:02x}", bytes[0], bytes[1], bytes[2], bytes[3]),
            expected: format!("an IDX magic number 0x000008{ndim:02x} (two zero bytes, type 0x08, {ndim} dimensions)"),
        });
    }
    if bytes[2] != 0x08 {
        return Err(DataError::BadHeader {
            path: p(),
            offset: 2,
            found: format!("data type 0x{:02x}", bytes[2]),
            expected: "0x08 (unsigned byte)".into(),
        });
    }
    if bytes[3] != ndim {
        return Err(DataError::BadHeader {
            path: p(),
            offset: 3,
            found: format!("{} dimensions", bytes[3]),
            expected: format!(
                "{ndim} ({})",
                if ndim == 1 {
                    "a label file"
                } else {
                    "an image file: count, rows, columns"
                }
            ),
        });
    }
    let header = 4 + 4 * ndim as usize;
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: p(),
            offset: len,
            expected: header as u64,
            actual: len,
        });
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let total = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .and_then(|t| t.checked_add(header as u64));
    let Some(total) = total else {
        return Err(DataError::BadHeader {
            path: p(),
            offset: 4,
            found: format!("dimensions {dims:?}"),
            expected: "dimensions whose product fits in 64 bits".into(),
        });
    };
    if len < total {
        return Err(DataError::Truncated {
            path: p(),
            offset: len,
            expected: total,
            actual: len,
        });
    }
    if len > total {
        return Err(DataError::TrailingBytes {
            path: p(),
            offset: total,
            extra: len - total,
        });
    }
    Ok((dims, &bytes[header..]))
}

/// Build an image set (N, 1, rows, cols) from the bytes of an IDX image file
/// and an IDX label file (each raw or gzip). The paths only name the files
/// in errors; nothing is read from disk.
pub fn idx_from_bytes(
    images_path: &Path,
    images: &[u8],
    labels_path: &Path,
    labels: &[u8],
) -> Result<ImageSet> {
    let images_buf = maybe_gunzip(images_path, images)?;
    let (dims, pixels) = parse_idx(images_path, &images_buf, 3)?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::BadHeader {
            path: images_path.to_path_buf(),
            offset: 8,
            found: format!("{}x{} images", dims[1], dims[2]),
            expected: "at least 1 row and 1 column".into(),
        });
    }
    let labels_buf = maybe_gunzip(labels_path, labels)?;
    let (ldims, lbytes) = parse_idx(labels_path, &labels_buf, 1)?;
    if ldims[0] != dims[0] {
        return Err(DataError::CountMismatch {
            images: images_path.to_path_buf(),
            labels: labels_path.to_path_buf(),
            n_images: dims[0] as u64,
            n_labels: ldims[0] as u64,
        });
    }
    let labels = lbytes.iter().map(|&l| l as i64).collect();
    Ok(ImageSet::new(
        pixels.to_vec(),
        dims[0],
        1,
        dims[1],
        dims[2],
        labels,
    ))
}

/// Read an IDX image file and its label file.
pub fn read_idx(images_path: &Path, labels_path: &Path) -> Result<ImageSet> {
    let images = std::fs::read(images_path).map_err(|e| DataError::io(images_path, e))?;
    let labels = std::fs::read(labels_path).map_err(|e| DataError::io(labels_path, e))?;
    idx_from_bytes(images_path, &images, labels_path, &labels)
}

/// The file pair for a split in an MNIST-style folder: `train-…` or
/// `t10k-…`, raw or `.gz` (whichever exists; `.gz` when neither does, for
/// the error message).
pub fn idx_files(dir: &Path, train: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    let prefix = if train { "train" } else { "t10k" };
    let pick = |stem: String| {
        let raw = dir.join(&stem);
        if raw.is_file() {
            raw
        } else {
            dir.join(format!("{stem}.gz"))
        }
    };
    (
        pick(format!("{prefix}-images-idx3-ubyte")),
        pick(format!("{prefix}-labels-idx1-ubyte")),
    )
}
