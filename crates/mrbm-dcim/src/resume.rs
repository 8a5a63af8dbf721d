//! Resumable `dcim` training: everything the trainer carries between two
//! batches, so an interrupted run goes on bit for bit.
//!
//! One safetensors file ([`FILE`] in the stage's resume folder) holds the
//! model (`w.<k>`, `c.<k>` as in model.safetensors), Adam's moments
//! (`adam.w.<k>.m1` / `.m2`, `adam.c.<k>.m1` / `.m2`, their step counts in
//! the record), the loss history so far (`history`, f64 rows `epoch, class
//! NLL, reverse NLL per pixel`) and, under the metadata key [`META_KEY`],
//! a JSON record: the spec and the stage's parameters as text (a checkpoint
//! of another run is refused), the cursor (next epoch and batch), and the
//! training seconds so far. The batch order and the draws of (22) are
//! functions of (seed, epoch, batch), so the cursor is all they need.
//!
//! The file is written to a temporary name, synced and renamed; a manifest
//! beside it (`dcim.safetensors.manifest.json`, the blake3 hash, the format
//! `mrbm_core`'s train checkpoints use, so `mrbm verify` checks both) is put
//! in place around it so that a kill at any moment leaves a checkpoint that
//! its manifest vouches for. A checkpoint that is damaged, has no manifest
//! or belongs to another run is refused with the reason; the stage then
//! trains from the start.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use burn::optim::{AdamState, AdaptiveMomentumState};
use burn::tensor::{Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::model::{host, tensor, Dcim, ParamState, Spec, StepLoss, Trainer, Weight};
use crate::DcimError;

/// The checkpoint's file name in the stage's resume folder.
pub const FILE: &str = "dcim.safetensors";
/// The metadata key of the record.
pub const META_KEY: &str = "mrbm_dcim_resume";

/// The next batch to run: batch `batch` of epoch `epoch` (both from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: usize,
    pub batch: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    format: u32,
    spec: String,
    params: String,
    cursor: Cursor,
    /// Training seconds before the interruption, as f64 bits.
    seconds_bits: u64,
    /// `w.<k>` / `c.<k>` -> Adam's step count (absent: no step yet).
    adam_time: BTreeMap<String, usize>,
}

/// What a checkpoint restores.
pub struct Restored {
    pub trainer: Trainer,
    pub cursor: Cursor,
    /// (epoch, loss) per batch run so far.
    pub hist: Vec<(usize, StepLoss)>,
    pub seconds: f64,
}

/// Adam's step count, the moments' shape, first and second moment.
type HostMoments = (usize, Vec<usize>, Vec<f32>, Vec<f32>);
/// Adam's step count, first and second moment as read back.
type StoredMoments = (usize, Vec<f32>, Vec<f32>);

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn err(path: &Path, m: impl Into<String>) -> DcimError {
    DcimError::Checkpoint {
        path: path.to_path_buf(),
        message: m.into(),
    }
}

/// Write the trainer's state at `cursor` with the history so far to
/// `path`, atomically, with its manifest. `params` is the stage's
/// canonical parameters as JSON text.
pub fn save(
    tr: &Trainer,
    params: &str,
    cursor: Cursor,
    hist: &[(usize, StepLoss)],
    seconds: f64,
    path: &Path,
) -> Result<(), DcimError> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut put = |name: String, dims: Vec<usize>, v: Vec<f32>| {
        owned.push((name, Dtype::F32, dims, f32_bytes(&v)));
    };
    for (name, dims, v) in crate::checkpoint::named_tensors(&tr.model) {
        put(name, dims, v);
    }
    let mut adam_time = BTreeMap::new();
    fn moments<const D: usize>(s: &AdamState<D>) -> HostMoments {
        let m = &s.momentum;
        (
            m.time,
            m.moment_1.dims().to_vec(),
            host(&m.moment_1),
            host(&m.moment_2),
        )
    }
    let mut adam = |key: String, x: Option<HostMoments>| {
        if let Some((time, dims, m1, m2)) = x {
            put(format!("adam.{key}.m1"), dims.clone(), m1);
            put(format!("adam.{key}.m2"), dims, m2);
            adam_time.insert(key, time);
        }
    };
    for (i, s) in tr.w_states.iter().enumerate() {
        let x = match s {
            ParamState::W4(s) => s.as_ref().map(moments),
            ParamState::W2(s) => s.as_ref().map(moments),
        };
        adam(format!("w.{}", i + 1), x);
    }
    for (i, s) in tr.b_states.iter().enumerate() {
        adam(format!("c.{i}"), s.as_ref().map(moments));
    }
    let mut rows = Vec::with_capacity(hist.len() * 24);
    for (e, l) in hist {
        for x in [*e as f64, l.class, l.reverse_per_pixel] {
            rows.extend_from_slice(&x.to_le_bytes());
        }
    }
    owned.push(("history".into(), Dtype::F64, vec![hist.len(), 3], rows));
    let record = Record {
        format: 1,
        spec: serde_json::to_string(&tr.model.spec).map_err(|e| err(path, e.to_string()))?,
        params: params.to_string(),
        cursor,
        seconds_bits: seconds.to_bits(),
        adam_time,
    };
    let mut views = Vec::new();
    for (name, dtype, shape, bytes) in &owned {
        let v =
            TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| err(path, e.to_string()))?;
        views.push((name.as_str(), v));
    }
    let mut meta = HashMap::new();
    meta.insert(
        META_KEY.to_string(),
        serde_json::to_string(&record).map_err(|e| err(path, e.to_string()))?,
    );
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| err(path, e.to_string()))?;
    put_checkpoint(path, &bytes)
}

/// The manifest beside the checkpoint at `path`.
pub fn manifest_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".manifest.json");
    path.with_file_name(name)
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    blake3: Vec<String>,
}

fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let mp = manifest_path(path);
    let text = std::fs::read(&mp).map_err(|e| {
        format!(
            "its manifest {} does not read ({e}): its content cannot be checked",
            mp.display()
        )
    })?;
    serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a checkpoint manifest: {e}", mp.display()))
}

fn write_manifest(path: &Path, m: &Manifest) -> Result<(), DcimError> {
    let bytes = serde_json::to_vec(m).map_err(|e| err(path, e.to_string()))?;
    mrbm_stage::write_atomic_io(&manifest_path(path), &bytes)
        .map_err(|(path, source)| DcimError::Io { path, source })
}

/// The manifest first vouches for the old content and the new, then the
/// data goes in place (temporary file, sync, rename), then the manifest
/// vouches for the new content alone.
fn put_checkpoint(path: &Path, bytes: &[u8]) -> Result<(), DcimError> {
    let new = blake3::hash(bytes).to_hex().to_string();
    let mut both = read_manifest(path).map(|m| m.blake3).unwrap_or_default();
    both.retain(|h| *h != new);
    both.push(new.clone());
    write_manifest(path, &Manifest { blake3: both })?;
    let tmp = path.with_extension(format!("partial{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(DcimError::Io {
            path: path.to_path_buf(),
            source: e,
        });
    }
    write_manifest(path, &Manifest { blake3: vec![new] })
}

/// The checkpoint's bytes (checked against its manifest) and its resume
/// record, checked against this run's network and parameters.
fn read_record(path: &Path, params: &str, spec: &Spec) -> Result<(Vec<u8>, Record), DcimError> {
    let raw = std::fs::read(path).map_err(|e| DcimError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let want = read_manifest(path).map_err(|m| err(path, m))?;
    let have = blake3::hash(&raw).to_hex().to_string();
    if !want.blake3.contains(&have) {
        return Err(err(
            path,
            format!(
                "its content hash {} is not the one its manifest records: the file is damaged",
                &have[..16]
            ),
        ));
    }
    let (_, header) = SafeTensors::read_metadata(&raw)
        .map_err(|e| err(path, format!("not a safetensors file: {e}")))?;
    let meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY).cloned())
        .ok_or_else(|| {
            err(
                path,
                format!("no `{META_KEY}` record: not a dcim checkpoint"),
            )
        })?;
    let rec: Record =
        serde_json::from_str(&meta).map_err(|e| err(path, format!("bad resume record: {e}")))?;
    if rec.format != 1 {
        return Err(err(path, format!("unknown format {}", rec.format)));
    }
    if rec.spec != serde_json::to_string(spec).unwrap_or_default() {
        return Err(err(path, "it holds another network (layers or input)"));
    }
    if rec.params != params {
        return Err(err(path, "it was written with other parameters"));
    }
    Ok((raw, rec))
}

/// The (epoch, loss) of every batch run so far, from the `history` tensor.
fn read_history(st: &SafeTensors, path: &Path) -> Result<Vec<(usize, StepLoss)>, DcimError> {
    let h = st
        .tensor("history")
        .map_err(|e| err(path, format!("tensor `history`: {e}")))?;
    if h.dtype() != Dtype::F64 || h.shape().len() != 2 || h.shape()[1] != 3 {
        return Err(err(path, "tensor `history` is not F64 [n, 3]"));
    }
    let vals: Vec<f64> = h
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let hist = vals
        .chunks_exact(3)
        .map(|r| {
            (
                r[0] as usize,
                StepLoss {
                    class: r[1],
                    reverse_per_pixel: r[2],
                },
            )
        })
        .collect();
    Ok(hist)
}

/// The trainer restored from the checkpoint at `path`, checked against its
/// manifest and against this run (`spec`, `params` as in [`save`]; the
/// objective, step size and reverse weight come from `fresh`, the trainer
/// a new run would start with). An error with the reason otherwise.
pub fn load(
    path: &Path,
    params: &str,
    fresh: Trainer,
    device: &Device,
) -> Result<Restored, DcimError> {
    let (raw, rec) = read_record(path, params, &fresh.model.spec)?;
    let st = SafeTensors::deserialize(&raw).map_err(|e| err(path, e.to_string()))?;
    let read = |name: &str, want: &[usize]| -> Result<Vec<f32>, DcimError> {
        let t = st
            .tensor(name)
            .map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
        if t.shape() != want || t.dtype() != Dtype::F32 {
            return Err(err(
                path,
                format!(
                    "tensor `{name}` is {:?} {:?}, expected F32 {want:?}",
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    fn t4(v: Vec<f32>, d: &[usize], device: &Device) -> Tensor<4> {
        tensor(v, [d[0], d[1], d[2], d[3]], device)
    }
    fn t2(v: Vec<f32>, d: &[usize], device: &Device) -> Tensor<2> {
        tensor(v, [d[0], d[1]], device)
    }
    fn t1(v: Vec<f32>, d: &[usize], device: &Device) -> Tensor<1> {
        tensor(v, [d[0]], device)
    }
    let mut trainer = fresh;
    let model: &mut Dcim = &mut trainer.model;
    for i in 0..model.weights.len() {
        let name = format!("w.{}", i + 1);
        model.weights[i] = match &model.weights[i] {
            Weight::Conv(w) => {
                let d = w.dims().to_vec();
                Weight::Conv(t4(read(&name, &d)?, &d, device))
            }
            Weight::Dense(w) => {
                let d = w.dims().to_vec();
                Weight::Dense(t2(read(&name, &d)?, &d, device))
            }
        };
    }
    for i in 0..model.biases.len() {
        let d = model.biases[i].dims().to_vec();
        model.biases[i] = t1(read(&format!("c.{i}"), &d)?, &d, device);
    }
    let moments = |key: &str, d: &[usize]| -> Result<Option<StoredMoments>, DcimError> {
        let Some(&time) = rec.adam_time.get(key) else {
            return Ok(None);
        };
        Ok(Some((
            time,
            read(&format!("adam.{key}.m1"), d)?,
            read(&format!("adam.{key}.m2"), d)?,
        )))
    };
    let mut w_states = Vec::new();
    for (i, w) in trainer.model.weights.iter().enumerate() {
        let key = format!("w.{}", i + 1);
        w_states.push(match w {
            Weight::Conv(w) => {
                let d = w.dims().to_vec();
                ParamState::W4(moments(&key, &d)?.map(|(time, m1, m2)| {
                    AdamState::new(AdaptiveMomentumState::new(
                        time,
                        t4(m1, &d, device),
                        t4(m2, &d, device),
                    ))
                }))
            }
            Weight::Dense(w) => {
                let d = w.dims().to_vec();
                ParamState::W2(moments(&key, &d)?.map(|(time, m1, m2)| {
                    AdamState::new(AdaptiveMomentumState::new(
                        time,
                        t2(m1, &d, device),
                        t2(m2, &d, device),
                    ))
                }))
            }
        });
    }
    let mut b_states = Vec::new();
    for (i, b) in trainer.model.biases.iter().enumerate() {
        let d = b.dims().to_vec();
        b_states.push(moments(&format!("c.{i}"), &d)?.map(|(time, m1, m2)| {
            AdamState::new(AdaptiveMomentumState::new(
                time,
                t1(m1, &d, device),
                t1(m2, &d, device),
            ))
        }));
    }
    trainer.w_states = w_states;
    trainer.b_states = b_states;
    let hist = read_history(&st, path)?;
    Ok(Restored {
        trainer,
        cursor: rec.cursor,
        hist,
        seconds: f64::from_bits(rec.seconds_bits),
    })
}
