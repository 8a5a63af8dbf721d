//! Helpers shared by the parity tests: the real-data location and the
//! deterministic MNIST split that tools/mnist_split.py reproduces.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use mrbm_stage::{Metrics, Stage, StageError};

/// MRBM_SHARED_DATA, or None (with a note) so the test can skip.
pub fn shared_data(test: &str) -> Option<PathBuf> {
    match std::env::var_os("MRBM_SHARED_DATA") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("note: {test} skipped: MRBM_SHARED_DATA is not set (point it at the folder holding mnist/ and celeba-sample/)");
            None
        }
    }
}

pub fn fixture(name: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap()
}

/// Fisher-Yates driven by splitmix64; see tools/mnist_split.py.
pub fn splitmix_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let j = (z % (i as u64 + 1)) as usize;
        perm.swap(i, j);
    }
    perm
}

fn read_idx_gz(path: &std::path::Path) -> (Vec<usize>, Vec<u8>) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut bytes)
        .unwrap();
    let ndim = bytes[3] as usize;
    let dims: Vec<usize> = (0..ndim)
        .map(|k| u32::from_be_bytes(bytes[4 + 4 * k..8 + 4 * k].try_into().unwrap()) as usize)
        .collect();
    (dims, bytes[4 + 4 * ndim..].to_vec())
}

/// The MNIST t10k split: (x_train, y_train, x_test, y_test, perm), pixels as
/// f32 pixel / 255, exactly as the Python side computes them.
pub struct Split {
    pub xtr: Vec<f32>,
    pub ytr: Vec<i64>,
    pub xte: Vec<f32>,
    pub yte: Vec<i64>,
    pub perm: Vec<usize>,
}

pub fn mnist_split(root: &std::path::Path, seed: u64, n_train: usize) -> Split {
    let (dims, px) = read_idx_gz(&root.join("mnist/t10k-images-idx3-ubyte.gz"));
    let (_, lb) = read_idx_gz(&root.join("mnist/t10k-labels-idx1-ubyte.gz"));
    let n = dims[0];
    let d = dims[1] * dims[2];
    let perm = splitmix_permutation(n, seed);
    let take = |rows: &[usize]| -> (Vec<f32>, Vec<i64>) {
        let mut x = Vec::with_capacity(rows.len() * d);
        let mut y = Vec::with_capacity(rows.len());
        for &r in rows {
            x.extend(px[r * d..(r + 1) * d].iter().map(|&p| p as f32 / 255.0f32));
            y.push(lb[r] as i64);
        }
        (x, y)
    };
    let (xtr, ytr) = take(&perm[..n_train]);
    let (xte, yte) = take(&perm[n_train..]);
    Split {
        xtr,
        ytr,
        xte,
        yte,
        perm,
    }
}

/// The stage kind from mrbm-data, mrbm-core or mrbm-eval.
fn stage(kind: &str) -> Box<dyn Stage> {
    mrbm_data::stages()
        .into_iter()
        .chain(mrbm_core::stages())
        .chain(mrbm_eval::stages())
        .find(|s| s.kind() == kind)
        .unwrap()
}

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mrbm-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs one stage as the runner would (CPU, 2 threads, no progress bars).
pub fn run(
    kind: &str,
    params: &str,
    inputs: &[(&str, &Path)],
    out: &Path,
) -> Result<Metrics, StageError> {
    let s = stage(kind);
    let raw: toml::Table = toml::from_str(params).unwrap();
    let p = s
        .params(&raw)
        .map_err(|e| StageError::User(e.to_string()))?;
    mrbm_stage::run_detached(&*s, &p, inputs, out, &mrbm_stage::Device::cpu())
}
