//! Resumable training: a checkpoint of everything a [`Trainer`] carries
//! between two batches, so an interrupted run continues bit for bit.
//!
//! One safetensors file holds the model (`layers.<i>.w`, `.a`, `.b`), the
//! optimiser state (Adam's moments `adam.<i>.<p>.m1` / `.m2` with their step
//! counts in the metadata, SGD's velocities `sgd.<i>.<p>`), PCD / FPCD's
//! persistent chains (`chain.<i>`) and fast weights (`fast.<i>.<p>`), the
//! loss history so far (`history`, f64 rows `epoch, batch, losses...`),
//! and under the metadata key `mrbm_resume` a JSON record of the stack
//! spec, the optimiser parameters, the [`Cursor`] (phase, epoch, position
//! in the epoch's batch order) and the negative phase's RNG position. The
//! batch order itself is a function of the seed and the epoch
//! ([`crate::train::batch_order`]), so the position in it is all it needs.
//!
//! The file is written to a temporary name, synced and renamed, so a kill
//! at any moment leaves the previous checkpoint or the new one, never half
//! of one. A small manifest beside it (`train.safetensors.manifest.json`:
//! the blake3 hash of the file) is written the same way after the data
//! (see [`put_checkpoint`] for the order that survives a kill between the
//! two), and checked before the checkpoint is used, so a damaged file (bad
//! disk, a stray write) is never trained on. A checkpoint that does not
//! belong to the run (other spec or parameters), does not match its
//! manifest or has none, or does not read is refused with a reason; the
//! train stage then starts from scratch.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use burn::optim::{AdamState, AdaptiveMomentumState};
use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::layer::Rbm;
use crate::stack::{Dbn, StackSpec};
use crate::train::{Cursor, History, OptimParams, Trainer};
use crate::CoreError;

/// The metadata key of a resume checkpoint.
pub const META_KEY: &str = "mrbm_resume";
/// The checkpoint's file name in the stage's resume folder.
pub const FILE: &str = "train.safetensors";

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    format: u32,
    /// The stack spec and the optimiser parameters as JSON text, compared
    /// as text on load (serde_json's float parsing does not round-trip
    /// every f64 exactly, so parsed values could differ in the last bit).
    spec: String,
    params: String,
    cursor: Cursor,
    /// The cursor's running loss as its f64 bits (JSON floats do not
    /// round-trip every last bit).
    running_bits: Option<u64>,
    /// ChaCha8's word position (a u128, as a decimal string: JSON numbers
    /// are f64 in some readers).
    rng_word_pos: String,
    /// `<layer>.<w|a|b>` -> Adam's step count.
    adam_time: BTreeMap<String, usize>,
    layers: usize,
}

fn host_f32<const D: usize>(t: &Tensor<D>) -> (Vec<usize>, Vec<u8>) {
    let v: Vec<f32> = t
        .to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    (
        t.dims().to_vec(),
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

/// A checkpoint entry: (shape, little-endian f32 bytes).
type Entry = (Vec<usize>, Vec<u8>);
/// A named entry, with (Adam time key, time) for an Adam m1 entry.
type NamedEntry = (String, Entry, Option<(String, usize)>);

/// The entries of a layer's optimiser state kept on the host by the fused
/// host step (Adam's moments, SGD's velocities), under the names and
/// shapes the tensors would have; Adam's m1 entries carry (time key, time).
fn host_optimiser_entries(
    i: usize,
    l: &crate::layer::Rbm,
    st: &crate::train::LayerState,
) -> Vec<NamedEntry> {
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let shapes = [
        l.w.dims().to_vec(),
        l.a.dims().to_vec(),
        l.b.dims().to_vec(),
    ];
    let mut out = Vec::new();
    if let Some(moments) = &st.host_adam {
        for ((p, m), shape) in ["w", "a", "b"].iter().zip(moments).zip(shapes.clone()) {
            if m.time > 0 {
                let time = Some((format!("{i}.{p}"), m.time));
                out.push((
                    format!("adam.{i}.{p}.m1"),
                    (shape.clone(), bytes(&m.m1)),
                    time,
                ));
                out.push((format!("adam.{i}.{p}.m2"), (shape, bytes(&m.m2)), None));
            }
        }
    }
    if let Some((w, a, b)) = &st.host_vel {
        for ((p, v), shape) in ["w", "a", "b"].iter().zip([w, a, b]).zip(shapes) {
            out.push((format!("sgd.{i}.{p}"), (shape, bytes(v)), None));
        }
    }
    out
}

/// Write the trainer's state at `cursor` (the next batch to run) with the
/// history so far to `path`, atomically.
pub fn save(
    trainer: &Trainer,
    cursor: &Cursor,
    hist: &History,
    path: &Path,
) -> Result<(), CoreError> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut put = |name: String, (shape, bytes): (Vec<usize>, Vec<u8>)| {
        owned.push((name, Dtype::F32, shape, bytes));
    };
    let mut adam_time = BTreeMap::new();
    for (i, (l, st)) in trainer.dbn.layers.iter().zip(&trainer.states).enumerate() {
        put(format!("layers.{i}.w"), host_f32(&l.w));
        put(format!("layers.{i}.a"), host_f32(&l.a));
        put(format!("layers.{i}.b"), host_f32(&l.b));
        if let Some(z) = &l.log_sigma {
            put(format!("layers.{i}.log_sigma"), host_f32(z));
        }
        if let Some(s) = &st.z {
            put(format!("adam.{i}.z.m1"), host_f32(&s.momentum.moment_1));
            put(format!("adam.{i}.z.m2"), host_f32(&s.momentum.moment_2));
            adam_time.insert(format!("{i}.z"), s.momentum.time);
        }
        if let Some(v) = &st.vz {
            put(format!("sgd.{i}.z"), host_f32(v));
        }
        if let Some(s) = &st.w {
            put(format!("adam.{i}.w.m1"), host_f32(&s.momentum.moment_1));
            put(format!("adam.{i}.w.m2"), host_f32(&s.momentum.moment_2));
            adam_time.insert(format!("{i}.w"), s.momentum.time);
        }
        for (p, s) in [("a", &st.a), ("b", &st.b)] {
            if let Some(s) = s {
                put(format!("adam.{i}.{p}.m1"), host_f32(&s.momentum.moment_1));
                put(format!("adam.{i}.{p}.m2"), host_f32(&s.momentum.moment_2));
                adam_time.insert(format!("{i}.{p}"), s.momentum.time);
            }
        }
        for (name, entry, time) in host_optimiser_entries(i, l, st) {
            if let Some((key, t)) = time {
                adam_time.insert(key, t);
            }
            put(name, entry);
        }
        if let Some(v) = &st.vw {
            put(format!("sgd.{i}.w"), host_f32(v));
        }
        if let Some(v) = &st.va {
            put(format!("sgd.{i}.a"), host_f32(v));
        }
        if let Some(v) = &st.vb {
            put(format!("sgd.{i}.b"), host_f32(v));
        }
        if let Some(c) = &st.chain {
            put(format!("chain.{i}"), host_f32(c));
        }
        if let Some((fw, fa, fb)) = &st.fast {
            put(format!("fast.{i}.w"), host_f32(fw));
            put(format!("fast.{i}.a"), host_f32(fa));
            put(format!("fast.{i}.b"), host_f32(fb));
        }
    }
    let nl = trainer.dbn.layers.len();
    let mut rows: Vec<u8> = Vec::with_capacity(hist.batches.len() * (2 + nl) * 8);
    for (e, b, l) in &hist.batches {
        for x in [*e as f64, *b as f64].into_iter().chain(l.iter().copied()) {
            rows.extend_from_slice(&x.to_le_bytes());
        }
    }
    owned.push((
        "history".into(),
        Dtype::F64,
        vec![hist.batches.len(), 2 + nl],
        rows,
    ));
    let err = |m: String| CoreError::Checkpoint {
        path: path.to_path_buf(),
        message: m,
    };
    let record = Record {
        format: 1,
        spec: serde_json::to_string(&trainer.dbn.spec).map_err(|e| err(e.to_string()))?,
        params: serde_json::to_string(&trainer.params).map_err(|e| err(e.to_string()))?,
        cursor: *cursor,
        running_bits: cursor.running.map(f64::to_bits),
        rng_word_pos: trainer.rng.get_word_pos().to_string(),
        adam_time,
        layers: nl,
    };
    let mut views = Vec::new();
    for (name, dtype, shape, bytes) in &owned {
        let v = TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| err(e.to_string()))?;
        views.push((name.as_str(), v));
    }
    let mut meta = HashMap::new();
    meta.insert(
        META_KEY.to_string(),
        serde_json::to_string(&record).map_err(|e| err(e.to_string()))?,
    );
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| err(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    put_checkpoint(path, &bytes)
}

/// The manifest of the checkpoint at `path`: the same name plus
/// `.manifest.json`.
pub fn manifest_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".manifest.json");
    path.with_file_name(name)
}

/// What a checkpoint's manifest records: the blake3 hashes (hex) of the
/// contents the checkpoint may have. One, the checkpoint's; while a new
/// checkpoint is put in place, the old one's too, so that a kill at any
/// moment leaves a checkpoint its manifest vouches for.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Manifest {
    blake3: Vec<String>,
}

fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let mp = manifest_path(path);
    let text = match std::fs::read(&mp) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "it has no manifest {} (its content cannot be checked)",
                mp.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", mp.display())),
    };
    serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a checkpoint manifest: {e}", mp.display()))
}

fn write_manifest(path: &Path, m: &Manifest) -> Result<(), CoreError> {
    let bytes = serde_json::to_vec(m).map_err(|e| CoreError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    mrbm_stage::write_atomic_io(&manifest_path(path), &bytes)
        .map_err(|(path, source)| CoreError::Io { path, source })
}

/// Put `bytes` at `path` as the new checkpoint, with its manifest: first
/// the manifest vouches for the old content and the new, then the data is
/// written (temporary file, sync, rename), then the manifest vouches for
/// the new content alone. Each step is atomic.
fn put_checkpoint(path: &Path, bytes: &[u8]) -> Result<(), CoreError> {
    let new = hash_hex(bytes);
    let mut both = read_manifest(path).map(|m| m.blake3).unwrap_or_default();
    both.retain(|h| *h != new);
    both.push(new.clone());
    write_manifest(path, &Manifest { blake3: both })?;
    let io = |e: std::io::Error| CoreError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let tmp = path.with_extension(format!("partial{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    write_manifest(path, &Manifest { blake3: vec![new] })
}

/// Check `bytes`, read from the checkpoint at `path`, against its manifest:
/// Err(why) when the manifest is missing or unreadable, or does not vouch
/// for this content.
pub fn check_manifest(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let want = read_manifest(path)?;
    let have = hash_hex(bytes);
    if want.blake3.contains(&have) {
        return Ok(());
    }
    Err(format!(
        "its content hash {} is not the one its manifest records ({}): the file is damaged",
        &have[..16],
        want.blake3
            .iter()
            .map(|h| &h[..16.min(h.len())])
            .collect::<Vec<_>>()
            .join(" or ")
    ))
}

/// Check every checkpoint (`*.safetensors`) in a resume folder against its
/// manifest, for `mrbm verify`: each damaged one with the reason.
pub fn verify_dir(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut bad = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return bad;
    };
    let mut files: Vec<_> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for f in files {
        let r = std::fs::read(&f)
            .map_err(|e| e.to_string())
            .and_then(|b| check_manifest(&f, &b));
        if let Err(why) = r {
            bad.push((f, why));
        }
    }
    bad
}

/// The checkpoint's bytes and resume record, checked against the stack
/// and training parameters of this run.
fn read_record(
    path: &Path,
    spec: &StackSpec,
    params: &OptimParams,
) -> Result<(Vec<u8>, Record), CoreError> {
    let err = |m: String| CoreError::Checkpoint {
        path: path.to_path_buf(),
        message: m,
    };
    let (bytes, meta) =
        crate::checkpoint::read_with_metadata(path, META_KEY, "a training checkpoint")?;
    check_manifest(path, &bytes).map_err(err)?;
    let record: Record =
        serde_json::from_str(&meta).map_err(|e| err(format!("bad resume record: {e}")))?;
    if record.format != 1 {
        return Err(err(format!("unknown format {}", record.format)));
    }
    if record.spec != serde_json::to_string(spec).unwrap_or_default() {
        return Err(err(
            "it holds another stack (layers, units or scaling)".into()
        ));
    }
    if record.params != serde_json::to_string(params).unwrap_or_default() {
        return Err(err("it was written with other training parameters".into()));
    }
    if record.layers != spec.layers.len() {
        return Err(err("layer count does not match".into()));
    }
    Ok((bytes, record))
}

/// The loss history in a checkpoint (a row per batch: epoch, batch and
/// each of the `layers` losses), which must hold `done` batches.
fn read_history(st: &SafeTensors, layers: usize, done: u64) -> Result<History, String> {
    let h = st
        .tensor("history")
        .map_err(|e| format!("tensor `history`: {e}"))?;
    let cols = 2 + layers;
    if h.dtype() != Dtype::F64 || h.shape().len() != 2 || h.shape()[1] != cols {
        return Err("tensor `history` has the wrong type or shape".into());
    }
    let vals: Vec<f64> = h
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let hist = History {
        batches: vals
            .chunks_exact(cols)
            .map(|r| (r[0] as usize, r[1] as usize, r[2..].to_vec()))
            .collect(),
    };
    if hist.batches.len() as u64 != done {
        return Err(format!(
            "history has {} batches, the cursor says {}",
            hist.batches.len(),
            done
        ));
    }
    Ok(hist)
}

/// A trainer for `spec` and `params` restored from the checkpoint at
/// `path`, with the cursor of its next batch and the history so far. An
/// error (with the reason) when the file does not read or belongs to
/// another run.
pub fn load(
    path: &Path,
    spec: &StackSpec,
    params: &OptimParams,
    device: &Device,
) -> Result<(Trainer, Cursor, History), CoreError> {
    let err = |m: String| CoreError::Checkpoint {
        path: path.to_path_buf(),
        message: m,
    };
    let (bytes, record) = read_record(path, spec, params)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let get = |name: &str, shape: &[usize]| -> Result<Option<TensorData>, CoreError> {
        let t = match st.tensor(name) {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        crate::checkpoint::f32_data(&t, name, shape)
            .map(Some)
            .map_err(err)
    };
    let need = |name: &str, shape: &[usize]| -> Result<TensorData, CoreError> {
        get(name, shape)?.ok_or_else(|| err(format!("tensor `{name}` is missing")))
    };
    fn t<const D: usize>(d: TensorData, device: &Device) -> Tensor<D> {
        Tensor::from_data(d, (device, DType::F32))
    }
    let mut layers = Vec::new();
    for (i, ls) in spec.layers.iter().enumerate() {
        layers.push(Rbm {
            spec: ls.clone(),
            w: t(need(&format!("layers.{i}.w"), &ls.weight_shape())?, device),
            a: t(
                need(&format!("layers.{i}.a"), &[ls.visible_channels()])?,
                device,
            ),
            b: t(
                need(&format!("layers.{i}.b"), &[ls.hidden_channels()])?,
                device,
            ),
            log_sigma: get(&format!("layers.{i}.log_sigma"), &[ls.visible_channels()])?
                .map(|d| t(d, device)),
        });
    }
    let dbn = Dbn {
        spec: spec.clone(),
        layers,
    };
    let mut trainer = Trainer::new(dbn, params.clone());
    let adam = |i: usize,
                p: &str,
                shape: &[usize]|
     -> Result<Option<(usize, TensorData, TensorData)>, CoreError> {
        let Some(&time) = record.adam_time.get(&format!("{i}.{p}")) else {
            return Ok(None);
        };
        Ok(Some((
            time,
            need(&format!("adam.{i}.{p}.m1"), shape)?,
            need(&format!("adam.{i}.{p}.m2"), shape)?,
        )))
    };
    fn state<const D: usize>(
        x: Option<(usize, TensorData, TensorData)>,
        device: &Device,
    ) -> Option<AdamState<D>> {
        x.map(|(time, m1, m2)| {
            AdamState::new(AdaptiveMomentumState::new(
                time,
                t(m1, device),
                t(m2, device),
            ))
        })
    }
    for (i, ls) in spec.layers.iter().enumerate() {
        let (ws, vs, hs) = (
            ls.weight_shape(),
            [ls.visible_channels()],
            [ls.hidden_channels()],
        );
        let s = &mut trainer.states[i];
        s.w = state(adam(i, "w", &ws)?, device);
        s.a = state(adam(i, "a", &vs)?, device);
        s.b = state(adam(i, "b", &hs)?, device);
        s.z = state(adam(i, "z", &vs)?, device);
        s.vz = get(&format!("sgd.{i}.z"), &vs)?.map(|d| t(d, device));
        s.vw = get(&format!("sgd.{i}.w"), &ws)?.map(|d| t(d, device));
        s.va = get(&format!("sgd.{i}.a"), &vs)?.map(|d| t(d, device));
        s.vb = get(&format!("sgd.{i}.b"), &hs)?.map(|d| t(d, device));
        if let Ok(c) = st.tensor(&format!("chain.{i}")) {
            let shape = c.shape().to_vec();
            if shape.len() != 4 {
                return Err(err(format!("chain.{i}: expected 4 dimensions")));
            }
            s.chain = get(&format!("chain.{i}"), &shape)?.map(|d| t(d, device));
        }
        let fast = (
            get(&format!("fast.{i}.w"), &ws)?,
            get(&format!("fast.{i}.a"), &vs)?,
            get(&format!("fast.{i}.b"), &hs)?,
        );
        if let (Some(w), Some(a), Some(b)) = fast {
            s.fast = Some((t(w, device), t(a, device), t(b, device)));
        }
    }
    let pos: u128 = record
        .rng_word_pos
        .parse()
        .map_err(|_| err("bad rng position".into()))?;
    trainer.rng.set_word_pos(pos);
    let hist = read_history(&st, spec.layers.len(), record.cursor.done).map_err(err)?;
    let cursor = Cursor {
        running: record.running_bits.map(f64::from_bits),
        ..record.cursor
    };
    Ok((trainer, cursor, hist))
}
