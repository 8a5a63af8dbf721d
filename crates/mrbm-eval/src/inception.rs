//! The Inception-v3 network exactly as pytorch-fid 0.3.0 builds it for FID
//! (`pytorch_fid.inception.InceptionV3([3])`, i.e. `fid_inception_v3()`):
//! torchvision's Inception3 trunk with the FID variants of its mixed blocks
//! (FIDInceptionA/C/E_1 average-pool with count_include_pad=False, and
//! FIDInceptionE_2 max-pools in its pool branch), the input resized to
//! 299x299 bilinearly (align_corners=False, no antialiasing), scaled from
//! [0, 1] to [-1, 1], and the 2048-d output of the final adaptive average
//! pool ("pool3").
//!
//! Every BasicConv2d (conv without bias, BatchNorm2d with eps 0.001, ReLU) is
//! evaluated as one conv with the batch norm folded into its weight and bias:
//! the same function, one pass fewer over each activation.
//!
//! Weights come from a safetensors file whose tensor names are the PyTorch
//! state-dict names (`Mixed_5b.branch1x1.conv.weight`, `...bn.running_var`,
//! ...), written by tools/fid_weights.py; [`expected_tensors`] lists every
//! one with its shape and the loader refuses a file with any tensor missing,
//! misshapen or unexpected.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::activation::relu;
use burn::tensor::module::{adaptive_avg_pool2d, avg_pool2d, conv2d, interpolate, max_pool2d};
use burn::tensor::ops::{
    AvgPoolOptions, ConvOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions,
};
use burn::tensor::{Device, Tensor, TensorData};
use mrbm_kernels::{PackedA, Par};
use rayon::prelude::*;

use crate::inception_host::{Act, HostConv, HostNet};

/// pytorch-fid's FID weights: where they are published and their SHA-256
/// prefix (the "-6726825d" in the file name is the first 8 hex digits of it,
/// torch.hub's convention, which `load_state_dict_from_url(check_hash)` checks).
pub const FID_WEIGHTS_URL: &str = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
pub const FID_WEIGHTS_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";
pub const FID_WEIGHTS_SHA256_PREFIX: &str = "6726825d";
/// Dimension of the pool3 features.
pub const FEATURE_DIM: usize = 2048;
const BN_EPS: f64 = 0.001;

#[derive(Debug, thiserror::Error)]
pub enum InceptionError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("weights: tensor `{0}` is missing")]
    Missing(String),
    #[error("weights: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error(
        "weights: unexpected tensor `{0}` (not part of pytorch-fid's Inception pool3 network)"
    )]
    Unexpected(String),
    #[error("weights: tensor `{0}` is not f32/f64/f16")]
    Dtype(String),
    #[error("images must have 1 or 3 channels, got {0}")]
    Channels(usize),
    #[error("{0}")]
    Backend(String),
    /// Cancellation is the stages' own `StageError::Cancelled`, wrapped:
    /// there is one `Cancelled` in the workspace.
    #[error(transparent)]
    Stage(#[from] mrbm_stage::StageError),
}

fn cancelled() -> InceptionError {
    InceptionError::Stage(mrbm_stage::StageError::Cancelled)
}

/// One BasicConv2d: name, in/out channels, kernel, stride and padding.
#[derive(Debug, Clone)]
struct ConvSpec {
    name: String,
    cin: usize,
    cout: usize,
    k: [usize; 2],
    stride: usize,
    pad: [usize; 2],
}

fn spec(
    name: &str,
    cin: usize,
    cout: usize,
    k: [usize; 2],
    stride: usize,
    pad: [usize; 2],
) -> ConvSpec {
    ConvSpec {
        name: name.to_string(),
        cin,
        cout,
        k,
        stride,
        pad,
    }
}

/// Every BasicConv2d of the pool3 network, in torchvision's names.
fn conv_specs() -> Vec<ConvSpec> {
    let mut v = vec![
        spec("Conv2d_1a_3x3", 3, 32, [3, 3], 2, [0, 0]),
        spec("Conv2d_2a_3x3", 32, 32, [3, 3], 1, [0, 0]),
        spec("Conv2d_2b_3x3", 32, 64, [3, 3], 1, [1, 1]),
        spec("Conv2d_3b_1x1", 64, 80, [1, 1], 1, [0, 0]),
        spec("Conv2d_4a_3x3", 80, 192, [3, 3], 1, [0, 0]),
    ];
    inception_a(&mut v, "Mixed_5b", 192, 32);
    inception_a(&mut v, "Mixed_5c", 256, 64);
    inception_a(&mut v, "Mixed_5d", 288, 64);
    // InceptionB
    v.push(spec("Mixed_6a.branch3x3", 288, 384, [3, 3], 2, [0, 0]));
    v.push(spec("Mixed_6a.branch3x3dbl_1", 288, 64, [1, 1], 1, [0, 0]));
    v.push(spec("Mixed_6a.branch3x3dbl_2", 64, 96, [3, 3], 1, [1, 1]));
    v.push(spec("Mixed_6a.branch3x3dbl_3", 96, 96, [3, 3], 2, [0, 0]));
    inception_c(&mut v, "Mixed_6b", 128);
    inception_c(&mut v, "Mixed_6c", 160);
    inception_c(&mut v, "Mixed_6d", 160);
    inception_c(&mut v, "Mixed_6e", 192);
    // InceptionD
    v.push(spec("Mixed_7a.branch3x3_1", 768, 192, [1, 1], 1, [0, 0]));
    v.push(spec("Mixed_7a.branch3x3_2", 192, 320, [3, 3], 2, [0, 0]));
    v.push(spec("Mixed_7a.branch7x7x3_1", 768, 192, [1, 1], 1, [0, 0]));
    v.push(spec("Mixed_7a.branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]));
    v.push(spec("Mixed_7a.branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]));
    v.push(spec("Mixed_7a.branch7x7x3_4", 192, 192, [3, 3], 2, [0, 0]));
    inception_e(&mut v, "Mixed_7b", 1280);
    inception_e(&mut v, "Mixed_7c", 2048);
    v
}

/// InceptionA: 1x1, 5x5, double 3x3 and pool branches.
fn inception_a(v: &mut Vec<ConvSpec>, m: &str, cin: usize, pool: usize) {
    v.push(spec(&format!("{m}.branch1x1"), cin, 64, [1, 1], 1, [0, 0]));
    v.push(spec(
        &format!("{m}.branch5x5_1"),
        cin,
        48,
        [1, 1],
        1,
        [0, 0],
    ));
    v.push(spec(&format!("{m}.branch5x5_2"), 48, 64, [5, 5], 1, [2, 2]));
    v.push(spec(
        &format!("{m}.branch3x3dbl_1"),
        cin,
        64,
        [1, 1],
        1,
        [0, 0],
    ));
    v.push(spec(
        &format!("{m}.branch3x3dbl_2"),
        64,
        96,
        [3, 3],
        1,
        [1, 1],
    ));
    v.push(spec(
        &format!("{m}.branch3x3dbl_3"),
        96,
        96,
        [3, 3],
        1,
        [1, 1],
    ));
    v.push(spec(
        &format!("{m}.branch_pool"),
        cin,
        pool,
        [1, 1],
        1,
        [0, 0],
    ));
}

/// InceptionC: 1x1, 7x7, double 7x7 and pool branches.
fn inception_c(v: &mut Vec<ConvSpec>, m: &str, c7: usize) {
    v.push(spec(&format!("{m}.branch1x1"), 768, 192, [1, 1], 1, [0, 0]));
    v.push(spec(
        &format!("{m}.branch7x7_1"),
        768,
        c7,
        [1, 1],
        1,
        [0, 0],
    ));
    v.push(spec(&format!("{m}.branch7x7_2"), c7, c7, [1, 7], 1, [0, 3]));
    v.push(spec(
        &format!("{m}.branch7x7_3"),
        c7,
        192,
        [7, 1],
        1,
        [3, 0],
    ));
    v.push(spec(
        &format!("{m}.branch7x7dbl_1"),
        768,
        c7,
        [1, 1],
        1,
        [0, 0],
    ));
    v.push(spec(
        &format!("{m}.branch7x7dbl_2"),
        c7,
        c7,
        [7, 1],
        1,
        [3, 0],
    ));
    v.push(spec(
        &format!("{m}.branch7x7dbl_3"),
        c7,
        c7,
        [1, 7],
        1,
        [0, 3],
    ));
    v.push(spec(
        &format!("{m}.branch7x7dbl_4"),
        c7,
        c7,
        [7, 1],
        1,
        [3, 0],
    ));
    v.push(spec(
        &format!("{m}.branch7x7dbl_5"),
        c7,
        192,
        [1, 7],
        1,
        [0, 3],
    ));
    v.push(spec(
        &format!("{m}.branch_pool"),
        768,
        192,
        [1, 1],
        1,
        [0, 0],
    ));
}

/// InceptionE: 1x1, split 3x3, split double 3x3 and pool branches.
fn inception_e(v: &mut Vec<ConvSpec>, m: &str, cin: usize) {
    v.push(spec(&format!("{m}.branch1x1"), cin, 320, [1, 1], 1, [0, 0]));
    v.push(spec(
        &format!("{m}.branch3x3_1"),
        cin,
        384,
        [1, 1],
        1,
        [0, 0],
    ));
    v.push(spec(
        &format!("{m}.branch3x3_2a"),
        384,
        384,
        [1, 3],
        1,
        [0, 1],
    ));
    v.push(spec(
        &format!("{m}.branch3x3_2b"),
        384,
        384,
        [3, 1],
        1,
        [1, 0],
    ));
    v.push(spec(
        &format!("{m}.branch3x3dbl_1"),
        cin,
        448,
        [1, 1],
        1,
        [0, 0],
    ));
    v.push(spec(
        &format!("{m}.branch3x3dbl_2"),
        448,
        384,
        [3, 3],
        1,
        [1, 1],
    ));
    v.push(spec(
        &format!("{m}.branch3x3dbl_3a"),
        384,
        384,
        [1, 3],
        1,
        [0, 1],
    ));
    v.push(spec(
        &format!("{m}.branch3x3dbl_3b"),
        384,
        384,
        [3, 1],
        1,
        [1, 0],
    ));
    v.push(spec(
        &format!("{m}.branch_pool"),
        cin,
        192,
        [1, 1],
        1,
        [0, 0],
    ));
}

/// Every tensor the weights file must hold, with its shape, sorted by name.
pub fn expected_tensors() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for s in conv_specs() {
        out.push((
            format!("{}.conv.weight", s.name),
            vec![s.cout, s.cin, s.k[0], s.k[1]],
        ));
        for p in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{}.bn.{p}", s.name), vec![s.cout]));
        }
    }
    out.sort();
    out
}

/// Raw tensors by name: (shape, values).
pub type WeightMap = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Read a weights safetensors file (f32, f64 or f16 tensors).
pub fn read_weights(path: &Path) -> Result<WeightMap, InceptionError> {
    let ferr = |m: String| InceptionError::File {
        path: path.display().to_string(),
        message: m,
    };
    let bytes = std::fs::read(path).map_err(|e| ferr(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| ferr(format!("not a safetensors file: {e}")))?;
    let mut map = WeightMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            _ => return Err(InceptionError::Dtype(name)),
        };
        map.insert(name, (view.shape().to_vec(), values));
    }
    Ok(map)
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // Subnormal: renormalise.
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// splitmix64's output function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seeded random weights, reproduced bit for bit by tools/fid_weights.py
/// (`--random SEED`), so parity tests need no 90 MB file. Definition: walk
/// [`expected_tensors`] in name order with one global counter k = 0, 1, ...;
/// r_k = 2 u_k - 1 with u_k = (splitmix64 output number k+1 from state
/// `seed`) >> 11, times 2^-53; each value is computed in f64 and rounded to
/// f32: conv weights r sqrt(6 / fan_in) (He-uniform), bn.weight 1 + 0.25 r,
/// bn.bias 0.1 r, running_mean 0.1 r, running_var 1 + 0.5 r.
pub fn random_weights(seed: u64) -> WeightMap {
    let mut map = WeightMap::new();
    let mut k: u64 = 0;
    for (name, shape) in expected_tensors() {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape[1..].iter().product();
        let mut vals = Vec::with_capacity(n);
        for _ in 0..n {
            k += 1;
            let z = mix64(seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            let r = 2.0 * ((z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)) - 1.0;
            let v = if name.ends_with("conv.weight") {
                r * (6.0 / fan_in as f64).sqrt()
            } else if name.ends_with("bn.weight") {
                1.0 + 0.25 * r
            } else if name.ends_with("bn.bias") || name.ends_with("running_mean") {
                0.1 * r
            } else {
                1.0 + 0.5 * r
            };
            vals.push(v as f32);
        }
        map.insert(name, (shape, vals));
    }
    map
}

/// A BasicConv2d with its batch norm folded in.
struct ConvBn {
    weight: Tensor<4>,
    bias: Tensor<1>,
    options: ConvOptions<2>,
}

impl ConvBn {
    /// The output's shape for input `x`, without computing it.
    fn output_dims(&self, x: &Tensor<4>) -> [usize; 4] {
        let [n, _, h, w] = x.dims();
        let [cout, _, kh, kw] = self.weight.dims();
        let o = &self.options;
        let out = |len: usize, k: usize, i: usize| {
            (len + o.padding[i].0 + o.padding[i].1 - o.dilation[i] * (k - 1) - 1) / o.stride[i] + 1
        };
        [n, cout, out(h, kh, 0), out(w, kw, 1)]
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(conv2d(
            x,
            self.weight.clone(),
            Some(self.bias.clone()),
            self.options.clone(),
        ))
    }
}

/// Cancellation during a forward pass: once `cancel` says stop, every
/// later convolution (nearly all the work) is skipped.
struct Gate<'a> {
    cancel: &'a (dyn Fn() -> bool + Sync),
    stop: std::cell::Cell<bool>,
}

impl Gate<'_> {
    fn stopped(&self) -> bool {
        if !self.stop.get() && (self.cancel)() {
            self.stop.set(true);
        }
        self.stop.get()
    }
}

/// pytorch-fid's FID Inception-v3 up to pool3.
pub struct FidInception {
    convs: BTreeMap<String, ConvBn>,
    device: Device,
    /// The folded weights on the host, kept on the CPU (flex) device: the
    /// convolutions then run through mrbm-kernels (`inception_host`).
    host: Option<HostNet>,
    use_host: bool,
}

impl FidInception {
    /// Check every tensor name and shape, fold the batch norms, and move
    /// the weights to `device`.
    pub fn from_weights(mut map: WeightMap, device: &Device) -> Result<Self, InceptionError> {
        let expected = expected_tensors();
        for (name, shape) in &expected {
            match map.get(name) {
                None => return Err(InceptionError::Missing(name.clone())),
                Some((got, vals))
                    if got != shape || vals.len() != shape.iter().product::<usize>() =>
                {
                    return Err(InceptionError::Shape {
                        name: name.clone(),
                        expected: shape.clone(),
                        got: got.clone(),
                    })
                }
                _ => {}
            }
        }
        let known: std::collections::HashSet<&String> = expected.iter().map(|(n, _)| n).collect();
        let mut extra: Vec<&String> = map.keys().filter(|k| !known.contains(k)).collect();
        extra.sort();
        if let Some(x) = extra.first() {
            return Err(InceptionError::Unexpected((*x).clone()));
        }
        let mut convs = BTreeMap::new();
        let on_host = device.clone().without_autodiff() == Device::flex();
        let mut host = HashMap::new();
        for s in conv_specs() {
            let mut take = |suffix: &str| {
                map.remove(&format!("{}.{suffix}", s.name))
                    .expect("checked above")
                    .1
            };
            let w = take("conv.weight");
            let (gamma, beta, mean, var) = (
                take("bn.weight"),
                take("bn.bias"),
                take("bn.running_mean"),
                take("bn.running_var"),
            );
            let per = s.cin * s.k[0] * s.k[1];
            let mut wf = Vec::with_capacity(w.len());
            let mut bf = Vec::with_capacity(s.cout);
            for o in 0..s.cout {
                let scale = gamma[o] as f64 / (var[o] as f64 + BN_EPS).sqrt();
                wf.extend(
                    w[o * per..(o + 1) * per]
                        .iter()
                        .map(|v| (*v as f64 * scale) as f32),
                );
                bf.push((beta[o] as f64 - mean[o] as f64 * scale) as f32);
            }
            if on_host {
                host.insert(
                    s.name.clone(),
                    HostConv {
                        cin: s.cin,
                        cout: s.cout,
                        k: s.k,
                        stride: s.stride,
                        pad: s.pad,
                        w: PackedA::new(
                            mrbm_kernels::Isa::best(),
                            s.cout,
                            per,
                            mrbm_kernels::View::row_major(&wf, per),
                        ),
                        b: bf.clone(),
                    },
                );
            }
            let weight = Tensor::<4>::from_data(
                TensorData::new(wf, [s.cout, s.cin, s.k[0], s.k[1]]),
                device,
            );
            let bias = Tensor::<1>::from_data(TensorData::new(bf, [s.cout]), device);
            let options = ConvOptions::new([s.stride, s.stride], s.pad, [1, 1], 1);
            convs.insert(
                s.name.clone(),
                ConvBn {
                    weight,
                    bias,
                    options,
                },
            );
        }
        Ok(FidInception {
            convs,
            device: device.clone(),
            host: on_host.then_some(HostNet { convs: host }),
            use_host: on_host,
        })
    }

    /// Whether the convolutions run on host slices through mrbm-kernels
    /// (the default on the CPU device) rather than burn's conv2d.
    pub fn host_path(&self) -> bool {
        self.use_host && self.host.is_some()
    }

    /// Turn the host path off (burn's ops everywhere, e.g. to compare the
    /// two) or back on; it stays off on accelerators.
    pub fn with_host_path(mut self, on: bool) -> Self {
        self.use_host = on;
        self
    }

    pub fn from_file(path: &Path, device: &Device) -> Result<Self, InceptionError> {
        Self::from_weights(read_weights(path)?, device)
    }

    /// One convolution, polling the gate first: once stopped, a zero tensor
    /// of the output's shape stands in for it.
    fn c(&self, g: &Gate, name: &str, x: Tensor<4>) -> Tensor<4> {
        let conv = self
            .convs
            .get(name)
            .unwrap_or_else(|| panic!("internal: no conv {name}"));
        if g.stopped() {
            return Tensor::zeros(conv.output_dims(&x), &self.device);
        }
        conv.forward(x)
    }

    /// Features of a batch already in [0, 1], [N, 3, H, W]: the network's forward.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let never = || false;
        self.forward_gated(
            &Gate {
                cancel: &never,
                stop: std::cell::Cell::new(false),
            },
            x,
        )
    }

    fn forward_gated(&self, g: &Gate, x: Tensor<4>) -> Tensor<2> {
        let x = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(false)
                .with_output_size([299, 299]),
        );
        let x = x.mul_scalar(2.0).sub_scalar(1.0);
        let x = self.c(g, "Conv2d_1a_3x3", x);
        let x = self.c(g, "Conv2d_2a_3x3", x);
        let x = self.c(g, "Conv2d_2b_3x3", x);
        let x = max_pool2d(x, MaxPoolOptions::new([3, 3]).with_stride([2, 2]));
        let x = self.c(g, "Conv2d_3b_1x1", x);
        let x = self.c(g, "Conv2d_4a_3x3", x);
        let x = max_pool2d(x, MaxPoolOptions::new([3, 3]).with_stride([2, 2]));
        let x = self.block_a(g, "Mixed_5b", x);
        let x = self.block_a(g, "Mixed_5c", x);
        let x = self.block_a(g, "Mixed_5d", x);
        let x = self.block_b(g, "Mixed_6a", x);
        let x = self.block_c(g, "Mixed_6b", x);
        let x = self.block_c(g, "Mixed_6c", x);
        let x = self.block_c(g, "Mixed_6d", x);
        let x = self.block_c(g, "Mixed_6e", x);
        let x = self.block_d(g, "Mixed_7a", x);
        let x = self.block_e(g, "Mixed_7b", x, false);
        let x = self.block_e(g, "Mixed_7c", x, true);
        let [n, c, _, _] = x.dims();
        adaptive_avg_pool2d(x, [1, 1]).reshape([n, c])
    }

    /// 3x3 stride-1 average pool that, like TensorFlow, ignores the padding.
    fn avg3(x: Tensor<4>) -> Tensor<4> {
        avg_pool2d(
            x,
            AvgPoolOptions::new([3, 3])
                .with_stride([1, 1])
                .with_padding([1, 1])
                .with_count_include_pad(false),
        )
    }

    fn block_a(&self, g: &Gate, m: &str, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.c(g, &format!("{m}.branch1x1"), x.clone());
        let b5 = self.c(
            g,
            &format!("{m}.branch5x5_2"),
            self.c(g, &format!("{m}.branch5x5_1"), x.clone()),
        );
        let d = self.c(g, &format!("{m}.branch3x3dbl_1"), x.clone());
        let d = self.c(
            g,
            &format!("{m}.branch3x3dbl_3"),
            self.c(g, &format!("{m}.branch3x3dbl_2"), d),
        );
        let p = self.c(g, &format!("{m}.branch_pool"), Self::avg3(x));
        Tensor::cat(vec![b1, b5, d, p], 1)
    }

    fn block_b(&self, g: &Gate, m: &str, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.c(g, &format!("{m}.branch3x3"), x.clone());
        let d = self.c(g, &format!("{m}.branch3x3dbl_1"), x.clone());
        let d = self.c(
            g,
            &format!("{m}.branch3x3dbl_3"),
            self.c(g, &format!("{m}.branch3x3dbl_2"), d),
        );
        let p = max_pool2d(x, MaxPoolOptions::new([3, 3]).with_stride([2, 2]));
        Tensor::cat(vec![b3, d, p], 1)
    }

    fn block_c(&self, g: &Gate, m: &str, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.c(g, &format!("{m}.branch1x1"), x.clone());
        let mut b7 = x.clone();
        for k in 1..=3 {
            b7 = self.c(g, &format!("{m}.branch7x7_{k}"), b7);
        }
        let mut d = x.clone();
        for k in 1..=5 {
            d = self.c(g, &format!("{m}.branch7x7dbl_{k}"), d);
        }
        let p = self.c(g, &format!("{m}.branch_pool"), Self::avg3(x));
        Tensor::cat(vec![b1, b7, d, p], 1)
    }

    fn block_d(&self, g: &Gate, m: &str, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.c(
            g,
            &format!("{m}.branch3x3_2"),
            self.c(g, &format!("{m}.branch3x3_1"), x.clone()),
        );
        let mut b7 = x.clone();
        for k in 1..=4 {
            b7 = self.c(g, &format!("{m}.branch7x7x3_{k}"), b7);
        }
        let p = max_pool2d(x, MaxPoolOptions::new([3, 3]).with_stride([2, 2]));
        Tensor::cat(vec![b3, b7, p], 1)
    }

    /// InceptionE; `max_pool` selects FIDInceptionE_2's max-pool branch.
    fn block_e(&self, g: &Gate, m: &str, x: Tensor<4>, max_pool: bool) -> Tensor<4> {
        let b1 = self.c(g, &format!("{m}.branch1x1"), x.clone());
        let t = self.c(g, &format!("{m}.branch3x3_1"), x.clone());
        let b3 = Tensor::cat(
            vec![
                self.c(g, &format!("{m}.branch3x3_2a"), t.clone()),
                self.c(g, &format!("{m}.branch3x3_2b"), t),
            ],
            1,
        );
        let d = self.c(g, &format!("{m}.branch3x3dbl_1"), x.clone());
        let d = self.c(g, &format!("{m}.branch3x3dbl_2"), d);
        let bd = Tensor::cat(
            vec![
                self.c(g, &format!("{m}.branch3x3dbl_3a"), d.clone()),
                self.c(g, &format!("{m}.branch3x3dbl_3b"), d),
            ],
            1,
        );
        let pooled = if max_pool {
            max_pool2d(
                x,
                MaxPoolOptions::new([3, 3])
                    .with_stride([1, 1])
                    .with_padding([1, 1]),
            )
        } else {
            Self::avg3(x)
        };
        let p = self.c(g, &format!("{m}.branch_pool"), pooled);
        Tensor::cat(vec![b1, b3, bd, p], 1)
    }

    /// Pool3 features (row-major [n, 2048]) of u8 NCHW images, 1 channel
    /// (replicated to RGB, as PIL's convert('RGB') does) or 3.
    pub fn features_u8(
        &self,
        pixels: &[u8],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, InceptionError> {
        self.features_u8_polling(pixels, n, c, h, w, &|| false)
    }

    /// [`Self::features_u8`], polling `cancel` as it goes; `Err(Stage(Cancelled))`
    /// when it said stop. On the host path (the CPU device) it is asked
    /// before every chunk of every convolution of every image (at most
    /// `mrbm_kernels::conv::CHUNK_FLOPS` of work apart, ~1 ms); on burn's
    /// path before each of the network's 94 convolutions.
    pub fn features_u8_polling(
        &self,
        pixels: &[u8],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        cancel: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<f32>, InceptionError> {
        if c != 1 && c != 3 {
            return Err(InceptionError::Channels(c));
        }
        let hw = h * w;
        let mut x = Vec::with_capacity(n * 3 * hw);
        for i in 0..n {
            let img = &pixels[i * c * hw..(i + 1) * c * hw];
            for ch in 0..3 {
                let src = if c == 1 {
                    img
                } else {
                    &img[ch * hw..(ch + 1) * hw]
                };
                // torchvision's ToTensor: float(p) / 255 in f32.
                x.extend(src.iter().map(|&p| p as f32 / 255.0));
            }
        }
        self.features_f32_polling(x, n, h, w, cancel)
    }

    /// Pool3 features of float images in [0, 1], [n, 3, h, w] row-major.
    pub fn features_f32(
        &self,
        x: Vec<f32>,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, InceptionError> {
        self.features_f32_polling(x, n, h, w, &|| false)
    }

    fn features_f32_polling(
        &self,
        x: Vec<f32>,
        n: usize,
        h: usize,
        w: usize,
        cancel: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<f32>, InceptionError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let t = Tensor::<4>::from_data(TensorData::new(x, [n, 3, h, w]), &self.device);
        if let (true, Some(host)) = (self.use_host, &self.host) {
            return self.features_host(host, t, cancel);
        }
        let g = Gate {
            cancel,
            stop: std::cell::Cell::new(false),
        };
        let out = self.forward_gated(&g, t);
        if g.stop.get() {
            return Err(cancelled());
        }
        let out = out.into_data();
        out.try_to_vec::<f32>()
            .map_err(|e| InceptionError::Backend(format!("{e:?}")))
    }
}

impl FidInception {
    /// The host path: the resize by burn (on the CPU device), then every
    /// image through `inception_host`, in parallel over images when there
    /// are at least as many as threads, else one by one with each product
    /// split over the pool.
    fn features_host(
        &self,
        host: &HostNet,
        x: Tensor<4>,
        cancel: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<f32>, InceptionError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let n = x.dims()[0];
        let x = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(false)
                .with_output_size([299, 299]),
        );
        let x = x
            .mul_scalar(2.0)
            .sub_scalar(1.0)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| InceptionError::Backend(format!("{e:?}")))?;
        let img = 3 * 299 * 299;
        let stopped = AtomicBool::new(false);
        let run = |i: usize, par: Par| {
            let act = Act {
                c: 3,
                h: 299,
                w: 299,
                d: x[i * img..(i + 1) * img].to_vec(),
            };
            let mut stop = || {
                if stopped.load(Ordering::Relaxed) {
                    return true;
                }
                let s = cancel();
                if s {
                    stopped.store(true, Ordering::Relaxed);
                }
                s
            };
            host.forward(act, par, &mut stop)
        };
        let threads = rayon::current_num_threads();
        let feats: Result<Vec<Vec<f32>>, _> = if threads > 1 && n >= threads {
            (0..n).into_par_iter().map(|i| run(i, Par::Seq)).collect()
        } else {
            (0..n).map(|i| run(i, Par::Rayon)).collect()
        };
        feats.map(|f| f.concat()).map_err(|_| cancelled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_tensor_list_is_complete() {
        let t = expected_tensors();
        // 94 BasicConv2d layers in the pool3 network, 5 tensors each.
        assert_eq!(t.len(), 94 * 5);
        let params: usize = t.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        // torchvision Inception3 without fc/AuxLogits, BN running stats included.
        assert!(params > 21_000_000 && params < 22_500_000, "{params}");
    }

    /// Every convolution polls for cancellation; a cancel stops the pass
    /// at that convolution (none after it runs, none polls again) with a
    /// typed error; without one the features are the plain forward's.
    #[test]
    fn cancel_is_polled_before_every_convolution() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let net = FidInception::from_weights(random_weights(3), &Device::flex())
            .unwrap()
            .with_host_path(false);
        assert!(!net.host_path());
        let px: Vec<u8> = (0..2 * 3 * 16 * 16).map(|i| (i * 37 % 251) as u8).collect();
        let polls = AtomicUsize::new(0);
        let count = || {
            polls.fetch_add(1, Ordering::Relaxed);
            false
        };
        let f = net.features_u8_polling(&px, 2, 3, 16, 16, &count).unwrap();
        assert_eq!(polls.load(Ordering::Relaxed), conv_specs().len());
        assert_eq!(f, net.features_u8(&px, 2, 3, 16, 16).unwrap());
        let seen = AtomicUsize::new(0);
        let stop = || seen.fetch_add(1, Ordering::Relaxed) + 1 >= 5;
        assert!(matches!(
            net.features_u8_polling(&px, 2, 3, 16, 16, &stop),
            Err(InceptionError::Stage(mrbm_stage::StageError::Cancelled))
        ));
        assert_eq!(seen.load(Ordering::Relaxed), 5);
    }

    /// On the host path (the CPU default) `cancel` is asked before every
    /// chunk of every convolution of every image: more often than once per
    /// convolution, so a cancel lands inside one; after it says stop no
    /// more work runs and none polls again (one thread: deterministic).
    #[test]
    fn host_path_polls_inside_convolutions_and_stops_mid_convolution() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let net = FidInception::from_weights(random_weights(3), &Device::flex()).unwrap();
        assert!(net.host_path());
        let px: Vec<u8> = (0..2 * 3 * 16 * 16).map(|i| (i * 37 % 251) as u8).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| {
            let polls = AtomicUsize::new(0);
            let count = || {
                polls.fetch_add(1, Ordering::Relaxed);
                false
            };
            let f = net.features_u8_polling(&px, 2, 3, 16, 16, &count).unwrap();
            let total = polls.load(Ordering::Relaxed);
            // Each image's 94 convolutions, several in more than one chunk
            // (Conv2d_2a_3x3 alone is 0.4 GFLOP, six chunks).
            assert!(total >= 2 * (conv_specs().len() + 10), "{total}");
            assert_eq!(f, net.features_u8(&px, 2, 3, 16, 16).unwrap());
            // Poll 4 is inside Conv2d_2a_3x3 (poll 1: Conv2d_1a, one chunk;
            // polls 2-7: Conv2d_2a's chunks).
            for stop_at in [4, total / 2, total] {
                let seen = AtomicUsize::new(0);
                let stop = || seen.fetch_add(1, Ordering::Relaxed) + 1 >= stop_at;
                assert!(matches!(
                    net.features_u8_polling(&px, 2, 3, 16, 16, &stop),
                    Err(InceptionError::Stage(mrbm_stage::StageError::Cancelled))
                ));
                assert_eq!(seen.load(Ordering::Relaxed), stop_at);
            }
        });
    }

    #[test]
    fn loader_rejects_missing_misshapen_and_unexpected() {
        let device = Device::flex();
        let mut m = random_weights(1);
        m.remove("Mixed_6b.branch7x7_2.bn.bias");
        assert!(
            matches!(FidInception::from_weights(m, &device), Err(InceptionError::Missing(n)) if n == "Mixed_6b.branch7x7_2.bn.bias")
        );
        let mut m = random_weights(1);
        m.get_mut("Conv2d_1a_3x3.conv.weight").unwrap().0 = vec![32, 3, 3, 2];
        assert!(matches!(
            FidInception::from_weights(m, &device),
            Err(InceptionError::Shape { .. })
        ));
        let mut m = random_weights(1);
        m.insert("fc.weight".into(), (vec![1], vec![0.0]));
        assert!(
            matches!(FidInception::from_weights(m, &device), Err(InceptionError::Unexpected(n)) if n == "fc.weight")
        );
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
    }
}
