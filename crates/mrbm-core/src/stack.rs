//! A stack of RBMs (the paper's convolutional DBN), built from TOML
//! parameters, with the stack loss, pixel scaling and the mean-field passes
//! up and down.

use burn::tensor::{DType, Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::layer::{LayerKind, LayerSpec, Rbm};
use crate::unit::{UnitKind, UnitType};

/// How the layers of a stack are coupled during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Coupling {
    /// Layer l+1 trains on layer l's mean activations as constants (no
    /// gradient of upper losses reaches lower layers).
    #[default]
    Detached,
    /// Upper losses backpropagate into lower layers through the means.
    Backprop,
}

/// The architecture part of the `train` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, mrbm_stage::ParamDocs)]
#[serde(deny_unknown_fields)]
pub struct StackParams {
    /// Output channels of the convolutional RBMs, bottom first. Default: the
    /// paper's generation stack 3-64-128-256-256 (the 3 comes from the data).
    #[serde(default = "default_conv_channels")]
    pub conv_channels: Vec<usize>,
    /// Square kernel size of the conv RBMs (paper: 4).
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    /// Stride of the conv RBMs (paper: 2).
    #[serde(default = "default_stride")]
    pub stride: usize,
    /// Zero padding of the conv RBMs. Assumption (paper-silent): 1, so a 4x4
    /// stride-2 kernel halves the image exactly (64 -> 32 -> 16 -> 8 -> 4,
    /// which gives the paper's 4096 = 256 x 4 x 4 dense input).
    #[serde(default = "default_padding")]
    pub padding: usize,
    /// Hidden sizes of the dense RBMs after the conv part; the first dense
    /// visible size follows from the input (paper: 4096-1000-500-200-100).
    #[serde(default = "default_dense")]
    pub dense: Vec<usize>,
    /// N of the visible (pixel) units: 1 (binary) or e.g. 255.
    #[serde(default = "default_n")]
    pub n: u32,
    /// N of the hidden units of every layer. Default: same as `n`.
    #[serde(default)]
    pub n_hidden: Option<u32>,
    /// k of the visible (pixel) units. Assumption (paper-silent): default
    /// 1 for N = 1 (the binary RBM), and 4/N for N > 1: the exact sub-unit
    /// model's mean then stays within half a level of N sigmoid(k x) at
    /// N = 255 (see `unit`), and k x stays of order 1 for raw 0..255 pixels.
    #[serde(default)]
    pub k_visible: Option<f64>,
    /// k of the hidden units. Assumption: same default rule as `k_visible`,
    /// applied to the hidden N.
    #[serde(default)]
    pub k_hidden: Option<f64>,
    /// Visible value of a pixel = pixel * visible_scale. Default (DESIGN):
    /// N/255, i.e. raw 0..255 for N = 255 and 0..1 for binary.
    #[serde(default)]
    pub visible_scale: Option<f64>,
    /// Standard deviation of the initial weights. Assumption (paper-silent):
    /// 0.01, Hinton's practical guide; biases start at zero.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Unit model of every layer: "subunits" (the paper's N sigmoid(k x))
    /// or "levels" (N + 1 equal levels in [0, 1]; k unused, visible value
    /// pixel / 255). Left out of the key at its default.
    #[serde(default, skip_serializing_if = "is_subunits")]
    pub unit: UnitKind,
    /// Pixel units: "multinary" (the `unit` model), "gaussian" (unit
    /// variance on data standardised by the training set's mean and std) or
    /// "discrete_gaussian" (N + 1 levels v = pixel R / 255 in [0, R] with
    /// p(v | h) proportional to exp(v x - v^2 / 2): a unit-variance
    /// Gaussian around x, discretised and truncated; the range R is
    /// `k_visible`, default 10, so the noise is R / 10 of the pixel range;
    /// the hidden units follow `unit`, `n_hidden` and `k_hidden`).
    #[serde(default, skip_serializing_if = "is_multinary")]
    pub visible: VisibleKind,
}

/// The pixels' unit model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VisibleKind {
    #[default]
    Multinary,
    Gaussian,
    DiscreteGaussian,
}

/// The discrete Gaussian pixels' default range R: noise sd 1 = 1/10 of it.
pub const DEFAULT_DISCRETE_GAUSSIAN_RANGE: f64 = 10.0;

fn is_multinary(k: &VisibleKind) -> bool {
    *k == VisibleKind::Multinary
}

fn is_subunits(k: &UnitKind) -> bool {
    *k == UnitKind::Subunits
}

fn default_conv_channels() -> Vec<usize> {
    vec![64, 128, 256, 256]
}
fn default_kernel() -> usize {
    4
}
fn default_stride() -> usize {
    2
}
fn default_padding() -> usize {
    1
}
fn default_dense() -> Vec<usize> {
    vec![1000, 500, 200, 100]
}
fn default_n() -> u32 {
    1
}
fn default_init_std() -> f64 {
    0.01
}

/// The default k for a unit with N levels (see `StackParams::k_visible`).
pub fn default_k(n: u32) -> f64 {
    if n <= 1 {
        1.0
    } else {
        4.0 / n as f64
    }
}

impl Default for StackParams {
    fn default() -> Self {
        StackParams {
            conv_channels: default_conv_channels(),
            kernel: default_kernel(),
            stride: default_stride(),
            padding: default_padding(),
            dense: default_dense(),
            n: default_n(),
            n_hidden: None,
            k_visible: None,
            k_hidden: None,
            visible_scale: None,
            init_std: default_init_std(),
            unit: UnitKind::Subunits,
            visible: VisibleKind::Multinary,
        }
    }
}

/// What a checkpoint stores besides the tensors: enough to rebuild the stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackSpec {
    /// Input images [C, H, W].
    pub input: [usize; 3],
    /// Visible value = pixel * visible_scale - visible_offset.
    pub visible_scale: f64,
    /// Subtracted after scaling (Gaussian visible units: the data's
    /// standardisation); left out of checkpoints when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub visible_offset: f64,
    pub layers: Vec<LayerSpec>,
    /// Per-pixel standardisation (Gaussian visible units with `standardise
    /// = "pixel"`): the visible value at position p of the C x H x W image
    /// is pixel * pixel_scale[p] - pixel_offset[p], in place of the global
    /// visible_scale / visible_offset. Empty, and left out of checkpoints,
    /// otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pixel_scale: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pixel_offset: Vec<f64>,
}

impl StackSpec {
    /// The per-pixel scale and offset are both absent or both one value
    /// per input position.
    pub fn validate_pixels(&self) -> Result<(), String> {
        let len: usize = self.input.iter().product();
        let (s, o) = (self.pixel_scale.len(), self.pixel_offset.len());
        if (s, o) != (0, 0) && (s, o) != (len, len) {
            return Err(format!(
                "per-pixel standardisation has {s} scales and {o} offsets for {len} pixels"
            ));
        }
        if self
            .pixel_scale
            .iter()
            .any(|x| !(x.is_finite() && *x > 0.0))
            || self.pixel_offset.iter().any(|x| !x.is_finite())
        {
            return Err("per-pixel standardisation has a non-positive or non-finite value".into());
        }
        Ok(())
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl StackParams {
    pub fn visible_unit(&self) -> UnitType {
        match self.visible {
            VisibleKind::Gaussian => return UnitType::gaussian(),
            VisibleKind::DiscreteGaussian => {
                let k = self.k_visible.unwrap_or(DEFAULT_DISCRETE_GAUSSIAN_RANGE);
                return UnitType::discrete_gaussian(self.n, k);
            }
            VisibleKind::Multinary => {}
        }
        match self.unit {
            UnitKind::Levels => UnitType::levels(self.n),
            // (unit = "gaussian" / "discrete_gaussian" are refused by build_spec.)
            UnitKind::Subunits | UnitKind::Gaussian | UnitKind::DiscreteGaussian => {
                UnitType::new(self.n, self.k_visible.unwrap_or_else(|| default_k(self.n)))
            }
        }
    }

    pub fn hidden_unit(&self) -> UnitType {
        let n = self.n_hidden.unwrap_or(self.n);
        match self.unit {
            UnitKind::Levels => UnitType::levels(n),
            UnitKind::Subunits | UnitKind::Gaussian | UnitKind::DiscreteGaussian => {
                UnitType::new(n, self.k_hidden.unwrap_or_else(|| default_k(n)))
            }
        }
    }

    /// Default N/255 (levels pixels: 1/255, their values lie in [0, 1];
    /// discrete Gaussian pixels: R/255 over [0, R]). Gaussian pixels are
    /// standardised from the data instead (`stages::standardise`).
    pub fn visible_scale(&self) -> f64 {
        let range = match (self.visible, self.unit) {
            (VisibleKind::DiscreteGaussian, _) => self.visible_unit().max_value(),
            (_, UnitKind::Levels) => 1.0,
            _ => self.n as f64,
        };
        self.visible_scale.unwrap_or(range / 255.0)
    }

    /// The layer specs for images of shape [C, H, W].
    pub fn build_spec(&self, input: [usize; 3]) -> Result<StackSpec, String> {
        if self.conv_channels.is_empty() && self.dense.is_empty() {
            return Err("the stack has no layers: give conv_channels and/or dense".into());
        }
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return Err(format!(
                "init_std must be a non-negative number, got {}",
                self.init_std
            ));
        }
        let scale = self.visible_scale();
        if !(scale.is_finite() && scale > 0.0) {
            return Err(format!("visible_scale must be positive, got {scale}"));
        }
        if self.unit == UnitKind::Gaussian {
            return Err(
                "unit = \"gaussian\" is for visible units only: set visible = \"gaussian\"".into(),
            );
        }
        if self.unit == UnitKind::DiscreteGaussian {
            return Err("unit = \"discrete_gaussian\" is for pixel units only: set visible = \"discrete_gaussian\" (and n_hidden, e.g. 1, for the hidden units)".into());
        }
        if self.visible == VisibleKind::DiscreteGaussian && self.n < 2 {
            return Err(
                "visible = \"discrete_gaussian\" needs n >= 2 levels above zero (e.g. n = 255)"
                    .into(),
            );
        }
        let vu = self.visible_unit();
        let hu = self.hidden_unit();
        vu.validate("visible unit (n, k_visible)")?;
        hu.validate("hidden unit (n_hidden, k_hidden)")?;
        let mut layers = Vec::new();
        let mut shape = input;
        for (i, &c) in self.conv_channels.iter().enumerate() {
            let spec = LayerSpec {
                kind: LayerKind::Conv {
                    input: shape,
                    out_channels: c,
                    kernel: self.kernel,
                    stride: self.stride,
                    padding: self.padding,
                },
                visible_unit: if i == 0 { vu } else { hu },
                hidden_unit: hu,
            };
            spec.validate()
                .map_err(|e| format!("conv layer {}: {e}", i + 1))?;
            shape = spec.hidden_shape();
            layers.push(spec);
        }
        for &d in &self.dense {
            let visible = shape.iter().product();
            let spec = LayerSpec {
                kind: LayerKind::Dense { visible, hidden: d },
                visible_unit: if layers.is_empty() { vu } else { hu },
                hidden_unit: hu,
            };
            spec.validate()
                .map_err(|e| format!("dense layer {}: {e}", layers.len() + 1))?;
            shape = spec.hidden_shape();
            layers.push(spec);
        }
        Ok(StackSpec {
            input,
            visible_scale: scale,
            visible_offset: 0.0,
            layers,
            pixel_scale: Vec::new(),
            pixel_offset: Vec::new(),
        })
    }
}

/// A stack of RBMs.
#[derive(Clone, Debug)]
pub struct Dbn {
    pub spec: StackSpec,
    pub layers: Vec<Rbm>,
}

impl Dbn {
    /// A one-layer stack around a dense RBM on pixels scaled by
    /// `visible_scale` (input [D, 1, 1], no standardisation): tests and
    /// tools that build a layer by hand.
    pub fn of_dense_layer(layer: Rbm, visible_scale: f64) -> Dbn {
        Dbn {
            spec: StackSpec {
                input: [layer.spec.visible_shape()[0], 1, 1],
                visible_scale,
                visible_offset: 0.0,
                layers: vec![layer.spec.clone()],
                pixel_scale: Vec::new(),
                pixel_offset: Vec::new(),
            },
            layers: vec![layer],
        }
    }

    /// Fresh stack with weights drawn from a seeded host RNG.
    pub fn init(spec: StackSpec, init_std: f64, seed: u64, device: &Device, dtype: DType) -> Dbn {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers = spec
            .layers
            .iter()
            .map(|l| Rbm::init(l.clone(), init_std, &mut rng, device, dtype))
            .collect();
        Dbn { spec, layers }
    }

    pub fn device(&self) -> Device {
        self.layers[0].device()
    }

    /// u8 images (NCHW, contiguous) -> visible tensor pixel * visible_scale.
    pub fn pixels_to_visible(
        &self,
        pixels: &[u8],
        n: usize,
        device: &Device,
        dtype: DType,
    ) -> Tensor<4> {
        let [c, h, w] = self.spec.input;
        let s = self.spec.visible_scale as f32;
        let o = self.spec.visible_offset as f32;
        let vals: Vec<f32> = if self.spec.pixel_scale.is_empty() {
            pixels.iter().map(|&p| p as f32 * s - o).collect()
        } else {
            let (ps, po) = (&self.spec.pixel_scale, &self.spec.pixel_offset);
            let len = ps.len();
            pixels
                .iter()
                .enumerate()
                .map(|(j, &p)| p as f32 * ps[j % len] as f32 - po[j % len] as f32)
                .collect()
        };
        Tensor::from_data(
            TensorData::new(vals, [n, c, h, w]).convert_dtype(dtype),
            (device, dtype),
        )
    }

    /// Visible tensor -> u8 pixels (rounded, clipped to 0..255).
    pub fn visible_to_pixels(&self, v: &Tensor<4>) -> Vec<u8> {
        let s = self.spec.visible_scale;
        let o = self.spec.visible_offset;
        let (ps, po) = (&self.spec.pixel_scale, &self.spec.pixel_offset);
        crate::layer::to_f64(v)
            .iter()
            .enumerate()
            .map(|(j, x)| {
                let (s, o) = if ps.is_empty() {
                    (s, o)
                } else {
                    (ps[j % ps.len()], po[j % po.len()])
                };
                ((x + o) / s).round().clamp(0.0, 255.0) as u8
            })
            .collect()
    }

    /// Reshape an activation to layer `i`'s visible shape.
    pub fn as_visible_of(&self, i: usize, t: Tensor<4>) -> Tensor<4> {
        let b = t.dims()[0];
        let [c, h, w] = self.layers[i].spec.visible_shape();
        t.reshape([b, c, h, w])
    }

    /// Mean field up to the hidden means of layer `upto` (0-based, inclusive).
    pub fn up_to(&self, v: Tensor<4>, upto: usize) -> Tensor<4> {
        let mut t = v;
        for i in 0..=upto {
            t = self.layers[i].up(self.as_visible_of(i, t));
        }
        t
    }

    /// Mean field down from the hidden units of layer `from` (0-based) to
    /// the pixels' visible values.
    pub fn down_from(&self, h: Tensor<4>, from: usize) -> Tensor<4> {
        let mut t = h;
        for i in (0..=from).rev() {
            let [c, hh, ww] = self.layers[i].spec.hidden_shape();
            let b = t.dims()[0];
            t = self.layers[i].down(t.reshape([b, c, hh, ww]));
        }
        t
    }

    /// Up through `depth` layers and back down (mean field).
    pub fn reconstruct(&self, v: Tensor<4>, depth: usize) -> Tensor<4> {
        let top = depth.clamp(1, self.layers.len()) - 1;
        let h = self.up_to(v, top);
        self.down_from(h, top)
    }

    /// The total loss (sum of layer losses) with the given coupling, for
    /// autodiff. Returns the total and the per-layer losses.
    pub fn loss(&self, v: Tensor<4>, coupling: Coupling) -> (Tensor<1>, Vec<Tensor<1>>) {
        let mut t = v;
        let mut losses = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let out = layer.loss(self.as_visible_of(i, t));
            losses.push(out.loss);
            t = match coupling {
                Coupling::Detached => out.hidden.detach(),
                Coupling::Backprop => out.hidden,
            };
        }
        let mut total = losses[0].clone();
        for l in &losses[1..] {
            total = total + l.clone();
        }
        (total, losses)
    }
}
