//! The tensor artifacts that stages pass to each other, as safetensors files
//! (readable from Python with the `safetensors` package):
//!
//! - an image set (`ImageSet`): `images` u8 [N, C, H, W] and `labels` i64 [N];
//! - a feature set (`FeatureSet`): `features` f32 [N, D] and `labels` i64 [N].
//!
//! Image sets are memory-mapped when read, so a 200k-image CelebA set is
//! never held twice in memory.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
}

fn format_err(path: &Path, message: impl ToString) -> ArtifactError {
    ArtifactError::Format {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn tensor_err(path: &Path, tensor: &str, message: impl ToString) -> ArtifactError {
    ArtifactError::Tensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        message: message.to_string(),
    }
}

/// Bytes of the image tensor: owned, or a window into a memory map.
enum Pixels {
    Owned(Vec<u8>),
    Mapped {
        map: memmap2::Mmap,
        start: usize,
        len: usize,
    },
}

/// A labelled set of u8 images, NCHW.
pub struct ImageSet {
    pixels: Pixels,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub labels: Vec<i64>,
}

impl std::fmt::Debug for ImageSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ImageSet {{ n: {}, c: {}, h: {}, w: {} }}",
            self.n, self.c, self.h, self.w
        )
    }
}

impl ImageSet {
    /// Build from owned pixels; panics only on a programming error (sizes).
    pub fn new(pixels: Vec<u8>, n: usize, c: usize, h: usize, w: usize, labels: Vec<i64>) -> Self {
        assert_eq!(
            pixels.len(),
            n * c * h * w,
            "pixel buffer does not match shape"
        );
        assert_eq!(labels.len(), n, "label count does not match image count");
        ImageSet {
            pixels: Pixels::Owned(pixels),
            n,
            c,
            h,
            w,
            labels,
        }
    }

    pub fn pixels(&self) -> &[u8] {
        match &self.pixels {
            Pixels::Owned(v) => v,
            Pixels::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }

    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Pixels of image `i` (C*H*W bytes).
    pub fn image(&self, i: usize) -> &[u8] {
        let l = self.image_len();
        &self.pixels()[i * l..(i + 1) * l]
    }

    pub fn shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    /// A new owned set holding the images at `idx`, in that order (indices
    /// must be < n).
    pub fn select(&self, idx: &[usize]) -> ImageSet {
        let l = self.image_len();
        let mut pixels = Vec::with_capacity(idx.len() * l);
        for &i in idx {
            pixels.extend_from_slice(self.image(i));
        }
        let labels = idx.iter().map(|&i| self.labels[i]).collect();
        ImageSet::new(pixels, idx.len(), self.c, self.h, self.w, labels)
    }

    /// Write atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<(), ArtifactError> {
        let label_bytes: Vec<u8> = self.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        let images = TensorView::new(Dtype::U8, self.shape().to_vec(), self.pixels())
            .map_err(|e| tensor_err(path, "images", e))?;
        let labels = TensorView::new(Dtype::I64, vec![self.n], &label_bytes)
            .map_err(|e| tensor_err(path, "labels", e))?;
        let mut meta = HashMap::new();
        meta.insert("mrbm_artifact".to_string(), "image_set".to_string());
        write_tensors(
            path,
            vec![("images", images), ("labels", labels)],
            Some(meta),
        )
    }

    /// Read, memory-mapping the pixels.
    pub fn read(path: &Path) -> Result<Self, ArtifactError> {
        let file = File::open(path).map_err(|e| ArtifactError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        // Safety: artifacts in the cache are never modified in place (they are
        // published by rename), so the mapping stays valid while we hold it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ArtifactError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let (start, len, shape, labels) = {
            let st = SafeTensors::deserialize(&map).map_err(|e| format_err(path, e))?;
            let images = st
                .tensor("images")
                .map_err(|e| tensor_err(path, "images", e))?;
            if images.dtype() != Dtype::U8 || images.shape().len() != 4 {
                return Err(tensor_err(
                    path,
                    "images",
                    format!(
                        "expected u8 [N, C, H, W], found {:?} {:?}",
                        images.dtype(),
                        images.shape()
                    ),
                ));
            }
            let shape = images.shape().to_vec();
            let data = images.data();
            let start = data.as_ptr() as usize - map.as_ptr() as usize;
            let labels = read_labels(path, &st, shape[0])?;
            (start, data.len(), shape, labels)
        };
        Ok(ImageSet {
            pixels: Pixels::Mapped { map, start, len },
            n: shape[0],
            c: shape[1],
            h: shape[2],
            w: shape[3],
            labels,
        })
    }
}

/// A labelled set of f32 feature vectors, row-major [N, D].
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSet {
    pub n: usize,
    pub d: usize,
    pub features: Vec<f32>,
    pub labels: Vec<i64>,
}

impl FeatureSet {
    pub fn new(features: Vec<f32>, n: usize, d: usize, labels: Vec<i64>) -> Self {
        assert_eq!(features.len(), n * d, "feature buffer does not match shape");
        assert_eq!(labels.len(), n, "label count does not match row count");
        FeatureSet {
            n,
            d,
            features,
            labels,
        }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.d..(i + 1) * self.d]
    }

    pub fn write(&self, path: &Path) -> Result<(), ArtifactError> {
        let fbytes: Vec<u8> = self.features.iter().flat_map(|v| v.to_le_bytes()).collect();
        let lbytes: Vec<u8> = self.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        let f = TensorView::new(Dtype::F32, vec![self.n, self.d], &fbytes)
            .map_err(|e| tensor_err(path, "features", e))?;
        let l = TensorView::new(Dtype::I64, vec![self.n], &lbytes)
            .map_err(|e| tensor_err(path, "labels", e))?;
        let mut meta = HashMap::new();
        meta.insert("mrbm_artifact".to_string(), "feature_set".to_string());
        write_tensors(path, vec![("features", f), ("labels", l)], Some(meta))
    }

    pub fn read(path: &Path) -> Result<Self, ArtifactError> {
        let bytes = std::fs::read(path).map_err(|e| ArtifactError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| format_err(path, e))?;
        let f = st
            .tensor("features")
            .map_err(|e| tensor_err(path, "features", e))?;
        if f.dtype() != Dtype::F32 || f.shape().len() != 2 {
            return Err(tensor_err(
                path,
                "features",
                format!("expected f32 [N, D], found {:?} {:?}", f.dtype(), f.shape()),
            ));
        }
        let (n, d) = (f.shape()[0], f.shape()[1]);
        let features = f
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let labels = read_labels(path, &st, n)?;
        Ok(FeatureSet {
            n,
            d,
            features,
            labels,
        })
    }
}

fn read_labels(path: &Path, st: &SafeTensors, n: usize) -> Result<Vec<i64>, ArtifactError> {
    let l = st
        .tensor("labels")
        .map_err(|e| tensor_err(path, "labels", e))?;
    if l.dtype() != Dtype::I64 || l.shape() != [n] {
        return Err(tensor_err(
            path,
            "labels",
            format!("expected i64 [{n}], found {:?} {:?}", l.dtype(), l.shape()),
        ));
    }
    Ok(l.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Serialize tensors to `path` through a temporary file and a rename.
///
/// The safetensors format, written here rather than by
/// `safetensors::serialize_to_file` so the bytes are a function of the
/// content alone: that function writes the metadata map in HashMap order,
/// which changes from process to process, so the same model saved twice
/// hashed differently and every stage downstream of it reran. Here the
/// header's keys (metadata and tensor names) are sorted and the data follow
/// in tensor-name order. Files stream to disk: nothing is copied whole.
pub fn write_tensors(
    path: &Path,
    tensors: Vec<(&str, TensorView<'_>)>,
    meta: Option<HashMap<String, String>>,
) -> Result<(), ArtifactError> {
    use std::io::Write;
    let io_err = |e: std::io::Error| ArtifactError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut tensors = tensors;
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    if let Some(w) = tensors.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format_err(path, format!("tensor `{}` given twice", w[0].0)));
    }
    // Deterministic either way serde_json is built: sorted by key, or (with
    // its preserve_order) in this insertion order, itself sorted.
    let mut header = serde_json::Map::new();
    if let Some(meta) = meta {
        let sorted: std::collections::BTreeMap<String, String> = meta.into_iter().collect();
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(sorted).map_err(|e| format_err(path, e))?,
        );
    }
    let mut offset = 0usize;
    for (name, view) in &tensors {
        let len = view.data().len();
        header.insert(
            (*name).to_string(),
            serde_json::json!({
                "dtype": serde_json::to_value(view.dtype()).map_err(|e| format_err(path, e))?,
                "shape": view.shape(),
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| format_err(path, e))?;
    // Pad with spaces so the data start 8-byte aligned, as safetensors does.
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let tmp = path.with_extension("safetensors.partial");
    let file = File::create(&tmp).map_err(io_err)?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io_err)?;
    w.write_all(&head).map_err(io_err)?;
    for (_, view) in &tensors {
        w.write_all(view.data()).map_err(io_err)?;
    }
    // No fsync here: the runner syncs a stage's whole output folder once
    // before publishing it.
    w.into_inner().map_err(|e| io_err(e.into_error()))?;
    std::fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_set_round_trip() {
        let dir = std::env::temp_dir().join(format!("mrbm-artifact-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.safetensors");
        let set = ImageSet::new(
            (0..2 * 3 * 4 * 5).map(|i| i as u8).collect(),
            2,
            3,
            4,
            5,
            vec![7, -1],
        );
        set.write(&p).unwrap();
        let back = ImageSet::read(&p).unwrap();
        assert_eq!(back.shape(), [2, 3, 4, 5]);
        assert_eq!(back.pixels(), set.pixels());
        assert_eq!(back.labels, vec![7, -1]);
        assert_eq!(back.image(1)[0], 60);
        let f = FeatureSet::new(vec![1.0, 2.0, 3.5, -4.0], 2, 2, vec![0, 1]);
        let q = dir.join("f.safetensors");
        f.write(&q).unwrap();
        assert_eq!(FeatureSet::read(&q).unwrap(), f);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_content_same_bytes_whatever_the_map_order() {
        let dir = std::env::temp_dir().join(format!("mrbm-artifact-det-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a: Vec<u8> = (0..24u8).collect();
        let b: Vec<u8> = 1.5f64.to_le_bytes().repeat(3).to_vec();
        let mut first: Option<Vec<u8>> = None;
        // Each HashMap has its own random iteration order: eight keys written
        // six times would almost surely come out in two orders if it leaked.
        for round in 0..6 {
            let meta: HashMap<String, String> = (0..8)
                .map(|i| (format!("key{i}"), format!("value{i}")))
                .collect();
            let views = if round % 2 == 0 {
                vec![
                    ("zeta", TensorView::new(Dtype::U8, vec![2, 12], &a).unwrap()),
                    ("alpha", TensorView::new(Dtype::F64, vec![3], &b).unwrap()),
                ]
            } else {
                vec![
                    ("alpha", TensorView::new(Dtype::F64, vec![3], &b).unwrap()),
                    ("zeta", TensorView::new(Dtype::U8, vec![2, 12], &a).unwrap()),
                ]
            };
            let p = dir.join(format!("t{round}.safetensors"));
            write_tensors(&p, views, Some(meta)).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            // Readable by the safetensors crate, with the same content.
            let st = SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(st.tensor("zeta").unwrap().data(), &a[..]);
            assert_eq!(st.tensor("alpha").unwrap().shape(), &[3]);
            let (_, md) = SafeTensors::read_metadata(&bytes).unwrap();
            assert_eq!(md.metadata().as_ref().unwrap()["key7"], "value7");
            match &first {
                None => first = Some(bytes),
                Some(f) => assert_eq!(f, &bytes, "round {round} wrote different bytes"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
