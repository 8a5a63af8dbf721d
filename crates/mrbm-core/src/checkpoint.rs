//! Checkpoints: `model.safetensors` with tensors `layers.<i>.w`, `.a`, `.b`
//! (f32) and the stack spec as JSON under the metadata key `mrbm_model`.
//!
//! Weights are stored as f32 exactly as trained (f32), so loading gives
//! bit-identical outputs. Layouts: conv weights [C_h, C_v, k, k] (the
//! conv2d layout), dense weights [V, H, 1, 1], biases one value per channel.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::layer::Rbm;
use crate::stack::{Dbn, StackSpec};
use crate::CoreError;

pub const META_KEY: &str = "mrbm_model";

fn f32_bytes<const D: usize>(t: &Tensor<D>) -> Vec<u8> {
    let v: Vec<f32> = t
        .to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Write `dbn` to `path` (atomically: temporary file, then rename).
pub fn save(dbn: &Dbn, path: &Path) -> Result<(), CoreError> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, l) in dbn.layers.iter().enumerate() {
        owned.push((
            format!("layers.{i}.w"),
            l.w.dims().to_vec(),
            f32_bytes(&l.w),
        ));
        owned.push((
            format!("layers.{i}.a"),
            l.a.dims().to_vec(),
            f32_bytes(&l.a),
        ));
        owned.push((
            format!("layers.{i}.b"),
            l.b.dims().to_vec(),
            f32_bytes(&l.b),
        ));
        if let Some(z) = &l.log_sigma {
            owned.push((
                format!("layers.{i}.log_sigma"),
                z.dims().to_vec(),
                f32_bytes(z),
            ));
        }
    }
    let mut views = Vec::new();
    for (name, shape, bytes) in &owned {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(|e| {
            CoreError::Checkpoint {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        views.push((name.as_str(), view));
    }
    let mut meta = HashMap::new();
    meta.insert("mrbm_artifact".to_string(), "model".to_string());
    meta.insert(
        META_KEY.to_string(),
        serde_json::to_string(&dbn.spec).expect("spec serialises"),
    );
    mrbm_data::artifact::write_tensors(path, views, Some(meta)).map_err(CoreError::Artifact)
}

/// A safetensors file's bytes and the string its header's metadata holds
/// under `key` (model checkpoints and resume checkpoints both keep their
/// record there). `what` names the file kind in the error.
pub(crate) fn read_with_metadata(
    path: &Path,
    key: &str,
    what: &str,
) -> Result<(Vec<u8>, String), CoreError> {
    let err = |m: String| CoreError::Checkpoint {
        path: path.to_path_buf(),
        message: m,
    };
    let bytes = std::fs::read(path).map_err(|e| CoreError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(key).cloned())
        .ok_or_else(|| err(format!("no `{key}` metadata: not {what}")))?;
    Ok((bytes, meta))
}

/// Read a checkpoint onto `device` as f32 tensors.
pub fn load(path: &Path, device: &Device) -> Result<Dbn, CoreError> {
    let err = |m: String| CoreError::Checkpoint {
        path: path.to_path_buf(),
        message: m,
    };
    let (bytes, meta) = read_with_metadata(path, META_KEY, "an mrbm model checkpoint")?;
    let spec: StackSpec =
        serde_json::from_str(&meta).map_err(|e| err(format!("bad layer spec in metadata: {e}")))?;
    spec.validate_pixels().map_err(err)?;
    if spec.layers.is_empty() {
        return Err(err("the checkpoint has no layers".into()));
    }
    for (i, l) in spec.layers.iter().enumerate() {
        l.validate()
            .map_err(|e| err(format!("layer {}: {e}", i + 1)))?;
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let get = |name: &str, shape: &[usize]| -> Result<TensorData, CoreError> {
        let t = st
            .tensor(name)
            .map_err(|e| err(format!("tensor `{name}`: {e}")))?;
        f32_data(&t, name, shape).map_err(err)
    };
    let mut layers = Vec::new();
    for (i, ls) in spec.layers.iter().enumerate() {
        let w = get(&format!("layers.{i}.w"), &ls.weight_shape())?;
        let a = get(&format!("layers.{i}.a"), &[ls.visible_channels()])?;
        let b = get(&format!("layers.{i}.b"), &[ls.hidden_channels()])?;
        // Gaussian visible units with a learned sigma (optional tensor).
        let name = format!("layers.{i}.log_sigma");
        let log_sigma = if st.tensor(&name).is_ok() {
            let z = get(&name, &[ls.visible_channels()])?;
            Some(Tensor::from_data(z, (device, DType::F32)))
        } else {
            None
        };
        layers.push(Rbm {
            spec: ls.clone(),
            w: Tensor::from_data(w, (device, DType::F32)),
            a: Tensor::from_data(a, (device, DType::F32)),
            b: Tensor::from_data(b, (device, DType::F32)),
            log_sigma,
        });
    }
    Ok(Dbn { spec, layers })
}

/// Tensor `name` of a safetensors file as f32 data of `shape` (checkpoints
/// and resume states store every weight so); the message names the tensor
/// when its type or shape is another.
pub(crate) fn f32_data(t: &TensorView, name: &str, shape: &[usize]) -> Result<TensorData, String> {
    if t.dtype() != Dtype::F32 || t.shape() != shape {
        return Err(format!(
            "tensor `{name}`: expected f32 {shape:?}, found {:?} {:?}",
            t.dtype(),
            t.shape()
        ));
    }
    let vals: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(TensorData::new(vals, shape.to_vec()))
}
