//! `model.safetensors` of a DCIM: tensors `w.<k>` (k = 1..d; conv
//! [K_out, C_in, win, win], dense [in, out]) and `c.<k>` (k = 0..d, the
//! bias of layer k of units), f32, with the [`Spec`] as JSON under the
//! metadata key `mrbm_dcim`. Readable from Python (safetensors).

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::Device;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::model::{host, tensor, Dcim, Spec, Weight};
use crate::DcimError;

pub const META_KEY: &str = "mrbm_dcim";

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The model's tensors as (name, shape, f32 values).
pub fn named_tensors(m: &Dcim) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    for (i, w) in m.weights.iter().enumerate() {
        let (dims, v) = match w {
            Weight::Conv(t) => (t.dims().to_vec(), host(t)),
            Weight::Dense(t) => (t.dims().to_vec(), host(t)),
        };
        out.push((format!("w.{}", i + 1), dims, v));
    }
    for (i, b) in m.biases.iter().enumerate() {
        out.push((format!("c.{i}"), b.dims().to_vec(), host(b)));
    }
    out
}

pub fn save(m: &Dcim, path: &Path) -> Result<(), DcimError> {
    let err = |e: String| DcimError::Checkpoint {
        path: path.to_path_buf(),
        message: e,
    };
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = named_tensors(m)
        .into_iter()
        .map(|(n, s, v)| (n, s, bytes(&v)))
        .collect();
    let mut views = Vec::new();
    for (name, shape, b) in &owned {
        let view = TensorView::new(Dtype::F32, shape.clone(), b).map_err(|e| err(e.to_string()))?;
        views.push((name.as_str(), view));
    }
    let mut meta = HashMap::new();
    meta.insert("mrbm_artifact".to_string(), "dcim_model".to_string());
    meta.insert(
        META_KEY.to_string(),
        serde_json::to_string(&m.spec).expect("spec serialises"),
    );
    mrbm_data::artifact::write_tensors(path, views, Some(meta)).map_err(|e| err(e.to_string()))
}

pub fn load(path: &Path, device: &Device) -> Result<Dcim, DcimError> {
    let err = |e: String| DcimError::Checkpoint {
        path: path.to_path_buf(),
        message: e,
    };
    let raw = std::fs::read(path).map_err(|e| DcimError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let (_, header) = SafeTensors::read_metadata(&raw)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY).cloned())
        .ok_or_else(|| {
            err(format!(
                "no `{META_KEY}` metadata: not a DCIM model (a `dcim` stage's model.safetensors)"
            ))
        })?;
    let spec: Spec = serde_json::from_str(&meta).map_err(|e| err(format!("bad spec: {e}")))?;
    let st = SafeTensors::deserialize(&raw).map_err(|e| err(e.to_string()))?;
    let mut m = Dcim::init(spec, 0, device).map_err(|e| err(e.to_string()))?;
    let read = |name: &str, want: &[usize]| -> Result<Vec<f32>, DcimError> {
        let t = st
            .tensor(name)
            .map_err(|e| err(format!("tensor `{name}`: {e}")))?;
        if t.shape() != want || t.dtype() != Dtype::F32 {
            return Err(err(format!(
                "tensor `{name}` is {:?} {:?}, expected F32 {want:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    for i in 0..m.weights.len() {
        let name = format!("w.{}", i + 1);
        m.weights[i] = match &m.weights[i] {
            Weight::Conv(t) => {
                let d = t.dims();
                Weight::Conv(tensor(read(&name, &d)?, d, device))
            }
            Weight::Dense(t) => {
                let d = t.dims();
                Weight::Dense(tensor(read(&name, &d)?, d, device))
            }
        };
    }
    for i in 0..m.biases.len() {
        let d = m.biases[i].dims();
        m.biases[i] = tensor(read(&format!("c.{i}"), &d)?, d, device);
    }
    Ok(m)
}
