//! CIFAR-10 binary batches: records of 1 label byte (0..=9) and 3072 pixel
//! bytes (1024 red, 1024 green, 1024 blue, each 32x32 row-major), which is
//! already the planar NCHW layout of the artifact.

use std::path::{Path, PathBuf};

use crate::artifact::ImageSet;
use crate::error::{DataError, Result};

pub const PIXELS: usize = 3 * 32 * 32;
pub const RECORD: usize = 1 + PIXELS;

/// Append the records of one batch file (its bytes) to `pixels`/`labels`.
pub fn parse_cifar10(
    path: &Path,
    bytes: &[u8],
    pixels: &mut Vec<u8>,
    labels: &mut Vec<i64>,
) -> Result<()> {
    if bytes.is_empty() {
        return Err(DataError::NoImages {
            path: path.to_path_buf(),
            expected: format!("at least one {RECORD}-byte record"),
        });
    }
    let rest = bytes.len() % RECORD;
    if rest != 0 {
        return Err(DataError::BadRecordSize {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            record: RECORD as u64,
            pixels: PIXELS as u64,
            rest: rest as u64,
        });
    }
    pixels.reserve(bytes.len() / RECORD * PIXELS);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] > 9 {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                offset: (i * RECORD) as u64,
                index: i as u64,
                value: rec[0] as u64,
                max: 9,
            });
        }
        labels.push(rec[0] as i64);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

/// Image set from in-memory batches (for tests and fuzzing).
pub fn cifar10_from_bytes(batches: &[(&Path, &[u8])]) -> Result<ImageSet> {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for (path, bytes) in batches {
        parse_cifar10(path, bytes, &mut pixels, &mut labels)?;
    }
    let n = labels.len();
    Ok(ImageSet::new(pixels, n, 3, 32, 32, labels))
}

/// The batch files of a split: `data_batch_1..5.bin` (train) or
/// `test_batch.bin`, in `dir` or in `dir/cifar-10-batches-bin`.
pub fn cifar10_files(dir: &Path, train: bool) -> Vec<PathBuf> {
    let base = if dir.join("cifar-10-batches-bin").is_dir() {
        dir.join("cifar-10-batches-bin")
    } else {
        dir.to_path_buf()
    };
    if train {
        (1..=5)
            .map(|i| base.join(format!("data_batch_{i}.bin")))
            .collect()
    } else {
        vec![base.join("test_batch.bin")]
    }
}

/// Read CIFAR-10 batch files in order. `path` may also be one `.bin` file.
pub fn read_cifar10(path: &Path, train: bool) -> Result<ImageSet> {
    let files = if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        cifar10_files(path, train)
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in &files {
        if !f.is_file() {
            return Err(DataError::Missing {
                path: f.clone(),
                expected: "a CIFAR-10 binary batch file".into(),
                hint: crate::hints::CIFAR10.into(),
            });
        }
        let bytes = std::fs::read(f).map_err(|e| DataError::io(f, e))?;
        parse_cifar10(f, &bytes, &mut pixels, &mut labels)?;
    }
    let n = labels.len();
    Ok(ImageSet::new(pixels, n, 3, 32, 32, labels))
}
