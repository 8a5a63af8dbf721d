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

/// Bytes decompressed past the size an IDX header declares before the file
/// is refused (a few are enough to report trailing bytes).
pub const DECLARED_MARGIN: u64 = 4096;

/// The bytes of `raw`, gunzipped when they start with the gzip magic.
/// Decompression stops soon after the size the IDX header declares (plus
/// [`DECLARED_MARGIN`], and never past [`MAX_DECOMPRESSED`]): a gzip bomb
/// is refused after a few bytes too many, not gigabytes.
pub fn maybe_gunzip<'a>(path: &Path, raw: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>> {
    if !(raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b) {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let mut dec = flate2::read::MultiGzDecoder::new(raw);
    let mut out = Vec::new();
    let gz = |out: &Vec<u8>, message: String| DataError::Gzip {
        path: path.to_path_buf(),
        offset: out.len() as u64,
        message,
    };
    // The header: 4 bytes, then 4 per dimension (a short one is reported
    // by `parse_idx`).
    read_upto(&mut dec, &mut out, 4).map_err(|e| gz(&out, e.to_string()))?;
    if out.len() == 4 {
        let header = 4 + 4 * out[3] as u64;
        read_upto(&mut dec, &mut out, header).map_err(|e| gz(&out, e.to_string()))?;
    }
    let declared = declared_size(&out);
    let cap = declared
        .map_or(MAX_DECOMPRESSED, |d| d.saturating_add(DECLARED_MARGIN))
        .min(MAX_DECOMPRESSED);
    read_upto(&mut dec, &mut out, cap).map_err(|e| gz(&out, e.to_string()))?;
    if out.len() as u64 >= cap {
        let mut one = [0u8; 1];
        let more = dec.read(&mut one).map_err(|e| gz(&out, e.to_string()))?;
        if more > 0 {
            let what = match declared {
                Some(d) if d < MAX_DECOMPRESSED => {
                    format!("decompresses to more than the {d} bytes its IDX header declares (plus a margin of {DECLARED_MARGIN}): a gzip bomb or a damaged file")
                }
                _ => format!("decompresses to more than {MAX_DECOMPRESSED} bytes"),
            };
            return Err(gz(&out, what));
        }
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// Read from `r` into `out` until it holds `upto` bytes or `r` ends.
fn read_upto(r: &mut impl Read, out: &mut Vec<u8>, upto: u64) -> std::io::Result<()> {
    let want = upto.saturating_sub(out.len() as u64);
    if want > 0 {
        r.take(want).read_to_end(out)?;
    }
    Ok(())
}

/// The whole file's size an IDX header declares (header plus the product
/// of its dimensions), if `head` holds a whole header and it fits.
fn declared_size(head: &[u8]) -> Option<u64> {
    let ndim = *head.get(3)? as usize;
    let header = 4 + 4 * ndim;
    let dims = head.get(4..header)?;
    dims.chunks_exact(4)
        .try_fold(1u64, |a, c| {
            a.checked_mul(u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64)
        })?
        .checked_add(header as u64)
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
