//! One RBM layer (dense or convolutional), its free energy, the paper's loss
//! and the closed-form CD-1 gradient.
//!
//! Every activation is a `[batch, channels, height, width]` tensor; a dense
//! layer sees `[batch, units, 1, 1]` (the stack flattens conv outputs), so
//! a whole stack handles one tensor rank. A dense weight is stored as
//! `[visible, hidden, 1, 1]` for the same reason.

use burn::tensor::module::{conv2d, conv2d_weight_backward, conv_transpose2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{DType, Device, Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::host_conv::Geometry;
use crate::unit::UnitType;

/// Shape and connectivity of one RBM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerKind {
    Dense {
        visible: usize,
        hidden: usize,
    },
    Conv {
        /// Visible input [channels, height, width].
        input: [usize; 3],
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    },
}

/// A layer's full description (stored in checkpoints as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub kind: LayerKind,
    pub visible_unit: UnitType,
    pub hidden_unit: UnitType,
}

impl LayerSpec {
    /// Visible shape [C, H, W] (dense: [visible, 1, 1]).
    pub fn visible_shape(&self) -> [usize; 3] {
        match &self.kind {
            LayerKind::Dense { visible, .. } => [*visible, 1, 1],
            LayerKind::Conv { input, .. } => *input,
        }
    }

    /// Hidden shape [C, H, W] (dense: [hidden, 1, 1]).
    pub fn hidden_shape(&self) -> [usize; 3] {
        match &self.kind {
            LayerKind::Dense { hidden, .. } => [*hidden, 1, 1],
            LayerKind::Conv {
                input,
                out_channels,
                kernel,
                stride,
                padding,
            } => {
                let o = |n: usize| (n + 2 * padding - kernel) / stride + 1;
                [*out_channels, o(input[1]), o(input[2])]
            }
        }
    }

    /// The conv geometry for a batch of `batch` (None: a dense layer).
    pub fn conv_geometry(&self, batch: usize) -> Option<Geometry> {
        let LayerKind::Conv {
            input,
            out_channels,
            kernel,
            stride,
            padding,
        } = &self.kind
        else {
            return None;
        };
        let [_, oh, ow] = self.hidden_shape();
        Some(Geometry {
            batch,
            c: input[0],
            h: input[1],
            w: input[2],
            o: *out_channels,
            k: *kernel,
            stride: *stride,
            pad: *padding,
            oh,
            ow,
        })
    }

    /// Weight shape: conv [C_h, C_v, k, k], dense [V, H, 1, 1].
    pub fn weight_shape(&self) -> [usize; 4] {
        match &self.kind {
            LayerKind::Dense { visible, hidden } => [*visible, *hidden, 1, 1],
            LayerKind::Conv {
                input,
                out_channels,
                kernel,
                ..
            } => [*out_channels, input[0], *kernel, *kernel],
        }
    }

    pub fn visible_channels(&self) -> usize {
        self.visible_shape()[0]
    }

    pub fn hidden_channels(&self) -> usize {
        self.hidden_shape()[0]
    }

    /// Output padding of the transposed convolution that makes the down pass
    /// land exactly on the visible shape (a strided conv drops up to
    /// stride - 1 trailing rows; the transpose has to put them back).
    pub fn output_padding(&self) -> [usize; 2] {
        match &self.kind {
            LayerKind::Dense { .. } => [0, 0],
            LayerKind::Conv {
                input,
                kernel,
                stride,
                padding,
                ..
            } => {
                let h = self.hidden_shape();
                let back = |hn: usize, vn: usize| vn + 2 * padding - ((hn - 1) * stride + kernel);
                [back(h[1], input[1]), back(h[2], input[2])]
            }
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.visible_unit.validate("visible unit")?;
        self.hidden_unit.validate("hidden unit")?;
        match &self.kind {
            LayerKind::Dense { visible, hidden } => {
                if *visible == 0 || *hidden == 0 {
                    return Err(format!(
                        "dense layer {visible}-{hidden}: sizes must be positive"
                    ));
                }
            }
            LayerKind::Conv {
                input,
                out_channels,
                kernel,
                stride,
                padding,
            } => {
                if input.contains(&0) || *out_channels == 0 || *kernel == 0 || *stride == 0 {
                    return Err(format!("conv layer {input:?} -> {out_channels}: sizes, kernel and stride must be positive"));
                }
                if input[1] + 2 * padding < *kernel || input[2] + 2 * padding < *kernel {
                    return Err(format!(
                        "conv layer: kernel {kernel} is larger than the padded input {}x{} (padding {padding})",
                        input[1], input[2]
                    ));
                }
                if *padding >= *kernel {
                    return Err(format!(
                        "conv layer: padding {padding} must be smaller than the kernel {kernel}"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        let v = self.visible_shape();
        let h = self.hidden_shape();
        match &self.kind {
            LayerKind::Dense { .. } => format!("dense {}-{}", v[0], h[0]),
            LayerKind::Conv {
                kernel,
                stride,
                padding,
                ..
            } => format!(
                "conv {}x{}x{} -> {}x{}x{} (k{kernel} s{stride} p{padding})",
                v[0], v[1], v[2], h[0], h[1], h[2]
            ),
        }
    }
}

/// Gradients of one layer's parameters.
#[derive(Clone, Debug)]
pub struct LayerGrads {
    pub w: Tensor<4>,
    pub a: Tensor<1>,
    pub b: Tensor<1>,
    /// Gaussian visible units with a learned sigma: d loss / d log sigma.
    pub log_sigma: Option<Tensor<1>>,
}

/// One RBM: weights W, visible bias a (per visible channel), hidden bias b
/// (per hidden channel).
#[derive(Clone, Debug)]
pub struct Rbm {
    pub spec: LayerSpec,
    pub w: Tensor<4>,
    pub a: Tensor<1>,
    pub b: Tensor<1>,
    /// Gaussian visible units with a learned standard deviation: log sigma
    /// per visible channel (None: unit variance). The energy is
    /// sum_i (v_i - a_i)^2 / (2 sigma_i^2) - sum_ij (v_i / sigma_i) W_ij h_j
    /// - b.h, so x(v) = b + (v / sigma) W and v | h ~ N(a + sigma (W h), sigma^2).
    pub log_sigma: Option<Tensor<1>>,
}

/// Results of one forward pass of the loss through a layer.
pub struct LayerLoss {
    /// Scalar (shape [1]): mean over the batch of F(v) - F(v').
    pub loss: Tensor<1>,
    /// Hidden means f(x(v)) (the next layer's visible input).
    pub hidden: Tensor<4>,
}

/// Host values -> tensor of the given dtype on `device`.
pub fn tensor_from<const D: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(values, shape).convert_dtype(dtype),
        (device, dtype),
    )
}

/// Tensor -> host f64 values.
pub fn to_f64<const D: usize>(t: &Tensor<D>) -> Vec<f64> {
    t.to_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap_or_default()
}

/// Tensor -> host f32 values (row-major), for `host_conv`.
pub(crate) fn host_f32<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().try_into_vec::<f32>().unwrap_or_default()
}

/// Host f32 values -> tensor on `device` (the result of a `host_conv` op).
fn host_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), (device, DType::F32))
}

/// A `host_conv` map: (input, weights, bias, geometry) -> output values.
type HostConvOp = fn(&[f32], &[f32], &[f32], &Geometry) -> Vec<f32>;

/// A layer's shape and parameters as host values (`Rbm::host_params`).
pub struct HostParams {
    pub shape: crate::host_sampled::Shape,
    pub w: Vec<f32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// A layer's w, a and b as host values, held by the trainer between steps:
/// exactly the values its last fused host update wrote into the tensors
/// (reading them back out of burn costs three copies of W a step).
pub(crate) type HostWab = (Vec<f32>, Vec<f32>, Vec<f32>);

impl HostParams {
    pub fn layer(&self, spec: &LayerSpec) -> crate::host_sampled::HostLayer<'_> {
        crate::host_sampled::HostLayer {
            shape: self.shape.clone(),
            w: &self.w,
            a: &self.a,
            b: &self.b,
            visible: spec.visible_unit,
            hidden: spec.hidden_unit,
        }
    }
}

/// Host f32 values -> f32 tensor on `device`.
pub fn tensor_f32<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    host_tensor(values, shape, device)
}

/// A tensor's values as host f32.
pub fn values_f32<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    host_f32(t)
}

/// Reshape helper: [B, C, H, W] -> [B, C*H*W].
fn flat(t: Tensor<4>) -> Tensor<2> {
    let [b, c, h, w] = t.dims();
    t.reshape([b, c * h * w])
}

impl Rbm {
    /// Random initial weights N(0, init_std^2) and zero biases. The draws come
    /// from the caller's host RNG, so an initialisation is identical on every
    /// device and backend.
    pub fn init<R: Rng>(
        spec: LayerSpec,
        init_std: f64,
        rng: &mut R,
        device: &Device,
        dtype: DType,
    ) -> Self {
        let ws = spec.weight_shape();
        let n: usize = ws.iter().product();
        let mut values = Vec::with_capacity(n);
        while values.len() < n {
            // Box-Muller pairs (rand 0.9 has no normal distribution without rand_distr).
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            values.push(r * (2.0 * std::f64::consts::PI * u2).cos() * init_std);
            if values.len() < n {
                values.push(r * (2.0 * std::f64::consts::PI * u2).sin() * init_std);
            }
        }
        let w = tensor_from(values, ws, device, dtype);
        let a = Tensor::zeros([spec.visible_channels()], (device, dtype));
        let b = Tensor::zeros([spec.hidden_channels()], (device, dtype));
        Rbm {
            spec,
            w,
            a,
            b,
            log_sigma: None,
        }
    }

    pub fn device(&self) -> Device {
        self.w.device()
    }

    /// Copy with parameters detached from any autodiff graph. (burn's
    /// `detach` keeps a leaf's require-grad flag, which made every use of
    /// the copy record ops and compute gradients nobody reads.)
    pub fn detached(&self) -> Rbm {
        fn off<const D: usize>(t: &Tensor<D>) -> Tensor<D> {
            t.clone().detach().set_require_grad(false)
        }
        Rbm {
            spec: self.spec.clone(),
            w: off(&self.w),
            a: off(&self.a),
            b: off(&self.b),
            log_sigma: self.log_sigma.as_ref().map(off),
        }
    }

    /// Copy with parameters marked as autodiff leaves on `device` (which
    /// should be an autodiff device).
    pub fn tracked(&self) -> Rbm {
        Rbm {
            spec: self.spec.clone(),
            w: self.w.clone().autodiff().require_grad(),
            a: self.a.clone().autodiff().require_grad(),
            b: self.b.clone().autodiff().require_grad(),
            log_sigma: self.log_sigma.clone().map(|t| t.autodiff()),
        }
    }

    /// Copy without autodiff association.
    pub fn plain(&self) -> Rbm {
        Rbm {
            spec: self.spec.clone(),
            w: self.w.clone().without_autodiff(),
            a: self.a.clone().without_autodiff(),
            b: self.b.clone().without_autodiff(),
            log_sigma: self.log_sigma.clone().map(|t| t.without_autodiff()),
        }
    }

    fn conv_options(&self) -> (ConvOptions<2>, ConvTransposeOptions<2>) {
        match &self.spec.kind {
            LayerKind::Conv {
                stride, padding, ..
            } => (
                ConvOptions::new([*stride; 2], [*padding; 2], [1, 1], 1),
                ConvTransposeOptions::new(
                    [*stride; 2],
                    [*padding; 2],
                    self.spec.output_padding(),
                    [1, 1],
                    1,
                ),
            ),
            LayerKind::Dense { .. } => unreachable!("conv options of a dense layer"),
        }
    }

    /// The conv geometry when `t` (a batch at this layer) can take the
    /// im2col + gemm path of `host_conv`: f32, on the flex CPU device, and
    /// neither it nor the weights in an autodiff graph. None: burn's ops.
    fn host_geometry(&self, t: &Tensor<4>) -> Option<Geometry> {
        if t.dtype() != DType::F32
            || self.w.dtype() != DType::F32
            || t.is_tracked()
            || self.w.is_tracked()
            || self.w.is_require_grad()
            || t.device().without_autodiff() != Device::flex()
        {
            return None;
        }
        self.spec.conv_geometry(t.dims()[0])
    }

    /// `op` (a `host_conv` map of `t`, the weights and `bias`) on the host,
    /// into a tensor of shape `out(geometry)`, when `t` can take that path
    /// ([`Self::host_geometry`]); None: use burn's op.
    fn on_host(
        &self,
        t: &Tensor<4>,
        bias: &Tensor<1>,
        op: HostConvOp,
        out: impl Fn(&Geometry) -> [usize; 4],
    ) -> Option<Tensor<4>> {
        let g = self.host_geometry(t)?;
        let values = op(&host_f32(t), &host_f32(&self.w), &host_f32(bias), &g);
        Some(host_tensor(values, out(&g), &t.device()))
    }

    /// Up (`down` false) or down of `t` by `autodiff_host`'s op, when `t`
    /// or the weights are on the flex autodiff device in f32 (the batch
    /// itself may be a plain tensor: the autodiff device's view of the
    /// same memory; the weights decide then). None: the other paths.
    fn on_autodiff_host(&self, t: &Tensor<4>, bias: &Tensor<1>, down: bool) -> Option<Tensor<4>> {
        use crate::autodiff_host::{linear, serves, Linear};
        let ad = serves(t) || serves(&self.w);
        if !ad || t.dtype() != DType::F32 || self.w.dtype() != DType::F32 {
            return None;
        }
        let l = Linear {
            conv: self.spec.conv_geometry(0).map(|g| [g.k, g.stride, g.pad]),
            visible: self.spec.visible_shape(),
            down,
        };
        Some(linear(t.clone(), self.w.clone(), bias.clone(), l))
    }

    fn dense_w(&self) -> Tensor<2> {
        let [v, h, _, _] = self.spec.weight_shape();
        self.w.clone().reshape([v, h])
    }

    /// sigma per visible channel as [1, C, 1, 1] (learned sigma only).
    fn sigma4(&self) -> Option<Tensor<4>> {
        let c = self.spec.visible_channels();
        self.log_sigma
            .as_ref()
            .map(|z| z.clone().exp().reshape([1, c, 1, 1]))
    }

    /// v / sigma (v itself without a learned sigma).
    pub fn scaled_visible(&self, v: Tensor<4>) -> Tensor<4> {
        match self.sigma4() {
            Some(s) => v / s,
            None => v,
        }
    }

    /// A draw of the visible units given their input `pre` (from
    /// [`Rbm::pre_visible`]): with a learned sigma, sigma times a draw at
    /// pre / sigma (N(pre, sigma^2), with the same random numbers as a
    /// unit-variance draw); otherwise the unit's own draw.
    pub fn draw_visible<R: Rng + 'static>(&self, pre: Tensor<4>, rng: &mut R) -> Tensor<4> {
        let vu = self.spec.visible_unit;
        match self.sigma4() {
            Some(s) => crate::sample::draw_states(vu, pre / s.clone(), rng) * s,
            None => crate::sample::draw_states(vu, pre, rng),
        }
    }

    /// Hidden input x(v) = b + v W (conv: conv2d); with a learned sigma,
    /// b + (v / sigma) W.
    pub fn pre_hidden(&self, v: Tensor<4>) -> Tensor<4> {
        let v = self.scaled_visible(v);
        if let Some(x) = self.on_autodiff_host(&v, &self.b, false) {
            return x;
        }
        match &self.spec.kind {
            LayerKind::Dense { hidden, .. } => {
                let bsz = v.dims()[0];
                let x = flat(v).matmul(self.dense_w()) + self.b.clone().reshape([1, *hidden]);
                x.reshape([bsz, *hidden, 1, 1])
            }
            LayerKind::Conv { .. } => {
                let out = |g: &Geometry| [g.batch, g.o, g.oh, g.ow];
                if let Some(x) = self.on_host(&v, &self.b, crate::host_conv::conv2d, out) {
                    return x;
                }
                let (opt, _) = self.conv_options();
                conv2d(v, self.w.clone(), Some(self.b.clone()), opt)
            }
        }
    }

    /// Visible input a + h W^T (conv: the transposed convolution with the
    /// same kernel); with a learned sigma, a + sigma (h W^T), the mean of
    /// v | h.
    pub fn pre_visible(&self, h: Tensor<4>) -> Tensor<4> {
        if let Some(s) = self.sigma4() {
            let a = self
                .a
                .clone()
                .reshape([1, self.spec.visible_channels(), 1, 1]);
            let plain = Rbm {
                log_sigma: None,
                ..self.clone()
            };
            return plain.apply_wt(h) * s + a;
        }
        if let Some(y) = self.on_autodiff_host(&h, &self.a, true) {
            return y;
        }
        match &self.spec.kind {
            LayerKind::Dense { visible, .. } => {
                let bsz = h.dims()[0];
                let y = flat(h).matmul(self.dense_w().transpose())
                    + self.a.clone().reshape([1, *visible]);
                y.reshape([bsz, *visible, 1, 1])
            }
            LayerKind::Conv { .. } => {
                let out = |g: &Geometry| [g.batch, g.c, g.h, g.w];
                let op = crate::host_conv::conv_transpose2d;
                if let Some(v) = self.on_host(&h, &self.a, op, out) {
                    return v;
                }
                let (_, opt) = self.conv_options();
                conv_transpose2d(h, self.w.clone(), Some(self.a.clone()), opt)
            }
        }
    }

    /// The bare linear maps without biases (for the adjoint test).
    pub fn apply_w(&self, v: Tensor<4>) -> Tensor<4> {
        let x = self.pre_hidden(v);
        x - self
            .b
            .clone()
            .reshape([1, self.spec.hidden_channels(), 1, 1])
    }

    pub fn apply_wt(&self, h: Tensor<4>) -> Tensor<4> {
        let y = self.pre_visible(h);
        y - self
            .a
            .clone()
            .reshape([1, self.spec.visible_channels(), 1, 1])
    }

    /// Up: hidden means f_h(x(v)).
    pub fn up(&self, v: Tensor<4>) -> Tensor<4> {
        self.spec.hidden_unit.mean(self.pre_hidden(v))
    }

    /// Down: visible means f_v(a + h W^T).
    pub fn down(&self, h: Tensor<4>) -> Tensor<4> {
        self.spec.visible_unit.mean(self.pre_visible(h))
    }

    /// F(v) given v and its hidden input x(v): -a.v - sum_j A_h(x_j)
    /// (plus |v|^2 / 2 for discrete Gaussian visible units).
    pub fn free_energy_with_x(&self, v: Tensor<4>, x: Tensor<4>) -> Tensor<1> {
        let bsz = v.dims()[0];
        let a = self
            .a
            .clone()
            .reshape([1, self.spec.visible_channels(), 1, 1]);
        // Gaussian visible units: -sum ((v - a) / sigma)^2 / 2 in place of a.v.
        let vis = if self.spec.visible_unit.kind == crate::unit::UnitKind::Gaussian {
            flat(self.scaled_visible(v - a).powi_scalar(2))
                .sum_dim(1)
                .mul_scalar(-0.5)
        } else if self.spec.visible_unit.kind == crate::unit::UnitKind::DiscreteGaussian {
            // Discrete Gaussian visible units: a.v - |v|^2 / 2.
            flat(v.clone() * a).sum_dim(1) - flat(v.powi_scalar(2)).sum_dim(1).mul_scalar(0.5)
        } else if crate::autodiff_host::serves(&v) || crate::autodiff_host::serves(&self.a) {
            crate::autodiff_host::visible_dot(v, self.a.clone()).reshape([bsz, 1])
        } else {
            flat(v * a).sum_dim(1)
        };
        let hu = self.spec.hidden_unit;
        let hid = if hu.kind == crate::unit::UnitKind::Subunits && crate::autodiff_host::serves(&x)
        {
            crate::autodiff_host::log_partition_rows(x, hu.n as f32, hu.k as f32).reshape([bsz, 1])
        } else {
            flat(hu.log_partition(x)).sum_dim(1)
        };
        (vis + hid).neg().reshape([bsz])
    }

    /// F(v) = -a.v - (N_h/k_h) sum_j softplus(k_h x_j(v)), one value per row.
    pub fn free_energy(&self, v: Tensor<4>) -> Tensor<1> {
        let x = self.pre_hidden(v.clone());
        self.free_energy_with_x(v, x)
    }

    /// The exact free energy of the sub-unit model (see `unit`):
    /// -a.v - sum_j sum_n softplus(x_j(v) - o_n). Equal to [`Rbm::free_energy`]
    /// for binary hidden units (N = 1, k = 1).
    pub fn exact_free_energy(&self, v: Tensor<4>) -> Tensor<1> {
        let bsz = v.dims()[0];
        let x = self.pre_hidden(v.clone());
        let a = self
            .a
            .clone()
            .reshape([1, self.spec.visible_channels(), 1, 1]);
        let vis = flat(v * a).sum_dim(1);
        let mut hid = vis.zeros_like();
        for o in self.spec.hidden_unit.offsets() {
            hid = hid + flat(crate::unit::softplus(x.clone().sub_scalar(o))).sum_dim(1);
        }
        (vis + hid).neg().reshape([bsz])
    }

    /// Mean-field CD-1 reconstruction v' = f_v(a + f_h(x(v)) W^T), computed
    /// without recording any graph.
    pub fn reconstruct(&self, v: Tensor<4>) -> Tensor<4> {
        let d = self.detached();
        d.down(d.up(v.detach()))
    }

    /// The paper's loss: mean over the batch of F(v) - F(v'), with v' held
    /// constant. Differentiable in the layer's parameters (and in `v` when
    /// `v` is tracked).
    pub fn loss(&self, v: Tensor<4>) -> LayerLoss {
        let x = self.pre_hidden(v.clone());
        let hidden = self.spec.hidden_unit.mean(x.clone());
        let d = self.detached();
        let v_rec = d.down(hidden.clone().detach());
        let f_data = self.free_energy_with_x(v, x);
        let f_rec = self.free_energy(v_rec);
        LayerLoss {
            loss: (f_data - f_rec).mean(),
            hidden,
        }
    }

    /// The loss value and the closed-form gradient of the loss in the
    /// layer's parameters: minus the CD-1 mean-field update,
    ///   dL/dW = -(<v h(v)> - <v' h(v')>),  dL/da = -<v - v'>,
    ///   dL/db = -<h(v) - h(v')>,
    /// averages over the batch (and sums over positions for conv). Needs no
    /// autodiff graph: `v` and the parameters should be plain tensors.
    pub fn cd_grads(&self, v: Tensor<4>) -> (Tensor<1>, LayerGrads, Tensor<4>) {
        if let Some(out) = self.host_cd_grads(&v) {
            return out;
        }
        let x = self.pre_hidden(v.clone());
        let h = self.spec.hidden_unit.mean(x.clone());
        let v_rec = self.down(h.clone());
        let x_rec = self.pre_hidden(v_rec.clone());
        let h_rec = self.spec.hidden_unit.mean(x_rec.clone());
        let loss = (self.free_energy_with_x(v.clone(), x)
            - self.free_energy_with_x(v_rec.clone(), x_rec))
        .mean();
        let g = self.stats_grads(v, h.clone(), v_rec, h_rec);
        (loss, g, h)
    }

    /// [`Rbm::cd_grads`] by `host_cd` where it applies: f32 on the flex
    /// CPU device, no autodiff graph, no learned sigma, sub-unit hidden
    /// units and sub-unit or Gaussian visible units. None: burn's ops.
    fn host_cd_grads(&self, v: &Tensor<4>) -> Option<(Tensor<1>, LayerGrads, Tensor<4>)> {
        let (out, _) = self.host_cd_raw(v, None)?;
        let device = v.device();
        let bsz = v.dims()[0];
        let [hc, hh, hw] = self.spec.hidden_shape();
        let loss = Tensor::from_data(
            TensorData::new(vec![out.loss], [1]).convert_dtype(DType::F32),
            (&device, DType::F32),
        );
        let grads = LayerGrads {
            w: host_tensor(out.gw, self.spec.weight_shape(), &device),
            a: host_tensor(out.ga, [self.spec.visible_channels()], &device),
            b: host_tensor(out.gb, [hc], &device),
            log_sigma: None,
        };
        Some((
            loss,
            grads,
            host_tensor(out.hidden, [bsz, hc, hh, hw], &device),
        ))
    }

    /// Whether a step of this layer on batch `v` can run on the host in f32:
    /// both on the flex CPU device, f32, outside any autodiff graph, and no
    /// learned sigma (what host_cd and host_sampled both need).
    pub(crate) fn on_plain_host(&self, v: &Tensor<4>) -> bool {
        self.log_sigma.is_none()
            && v.dtype() == DType::F32
            && self.w.dtype() == DType::F32
            && !v.is_tracked()
            && !self.w.is_tracked()
            && !self.w.is_require_grad()
            && v.device().without_autodiff() == Device::flex()
    }

    /// [`Rbm::host_cd_grads`]'s host values, with the parameters it read
    /// (the trainer updates from those without a tensor op).
    pub(crate) fn host_cd_raw(
        &self,
        v: &Tensor<4>,
        cached: Option<HostWab>,
    ) -> Option<(crate::host_cd::HostCd, HostParams)> {
        use crate::unit::UnitKind;
        let vu = self.spec.visible_unit;
        let hu = self.spec.hidden_unit;
        if !self.on_plain_host(v)
            || hu.kind != UnitKind::Subunits
            || matches!(vu.kind, UnitKind::Levels | UnitKind::DiscreteGaussian)
        {
            return None;
        }
        let act = |u: crate::unit::UnitType| mrbm_kernels::math::Act {
            n: u.n as f32,
            k: u.k as f32,
            identity: u.kind == UnitKind::Gaussian,
        };
        let units = crate::host_cd::Units {
            visible: act(vu),
            hidden: act(hu),
        };
        let bsz = v.dims()[0];
        let vh = host_f32(v);
        let (w, a, b) = self.host_wab(cached);
        let (out, shape) = match &self.spec.kind {
            LayerKind::Dense { visible, hidden } => (
                crate::host_cd::dense_cd(&vh, &w, &a, &b, [bsz, *visible, *hidden], units),
                crate::host_sampled::Shape::Dense {
                    visible: *visible,
                    hidden: *hidden,
                },
            ),
            LayerKind::Conv { .. } => {
                let g = self.host_geometry(v)?;
                (
                    crate::host_cd::conv_cd(&vh, &w, &a, &b, &g, units),
                    crate::host_sampled::Shape::Conv(g),
                )
            }
        };
        Some((out, HostParams { shape, w, a, b }))
    }

    /// This layer's parameters on the host for `host_sampled` when a batch
    /// `v` can take that path: f32 on the flex CPU device, no autodiff
    /// graph, no learned sigma, sub-unit hidden units. None: burn's ops.
    pub fn host_params(&self, v: &Tensor<4>) -> Option<HostParams> {
        self.host_params_cached(v, None)
    }

    /// [`Rbm::host_params`], taking w, a and b from `cached` when given.
    pub(crate) fn host_params_cached(
        &self,
        v: &Tensor<4>,
        cached: Option<HostWab>,
    ) -> Option<HostParams> {
        if !self.on_plain_host(v) || !crate::host_sampled::supports(self.spec.hidden_unit) {
            return None;
        }
        self.host_param_values_cached(cached)
    }

    /// w, a and b from `cached`, or read from the tensors.
    fn host_wab(&self, cached: Option<HostWab>) -> HostWab {
        cached.unwrap_or_else(|| (host_f32(&self.w), host_f32(&self.a), host_f32(&self.b)))
    }

    /// The parameters as host values when they are plain f32 tensors on the
    /// flex device without a learned sigma (the geometry's batch unset).
    pub fn host_param_values(&self) -> Option<HostParams> {
        self.host_param_values_cached(None)
    }

    fn host_param_values_cached(&self, cached: Option<HostWab>) -> Option<HostParams> {
        let plain = self.log_sigma.is_none()
            && self.w.dtype() == DType::F32
            && !self.w.is_tracked()
            && !self.w.is_require_grad()
            && self.w.device() == Device::flex();
        if !plain {
            return None;
        }
        let shape = match (&self.spec.kind, self.spec.conv_geometry(0)) {
            (LayerKind::Dense { visible, hidden }, _) => crate::host_sampled::Shape::Dense {
                visible: *visible,
                hidden: *hidden,
            },
            (LayerKind::Conv { .. }, Some(g)) => crate::host_sampled::Shape::Conv(g),
            (LayerKind::Conv { .. }, None) => return None,
        };
        let (w, a, b) = self.host_wab(cached);
        Some(HostParams { shape, w, a, b })
    }

    /// The gradient of the loss F(v) - F(v_neg) (v_neg held constant) from
    /// the two phases' statistics: dL/dW = -(<v h> - <v_neg h_neg>),
    /// dL/da = -<v - v_neg>, dL/db = -<h - h_neg> (batch means, summed over
    /// positions for conv). `h`, `h_neg` are the hidden means of `v`,
    /// `v_neg`. Every training rule (paper, CD-k, PCD, FPCD) differs only in
    /// where v_neg comes from.
    pub fn stats_grads(
        &self,
        v: Tensor<4>,
        h: Tensor<4>,
        v_rec: Tensor<4>,
        h_rec: Tensor<4>,
    ) -> LayerGrads {
        let bsz = v.dims()[0];
        let inv_b = 1.0 / bsz as f64;
        let c = self.spec.visible_channels();
        // Learned sigma: dF/dz (z = log sigma) = -((v - a)/sigma)^2
        // + (v/sigma) (W h), per visible unit, summed over positions; and
        // the a and W gradients see (v - a)/sigma^2 and v/sigma.
        let g_sigma = self.log_sigma.as_ref().map(|_| {
            let a = self.a.clone().reshape([1, c, 1, 1]);
            let plain = Rbm {
                log_sigma: None,
                ..self.clone()
            };
            let dfdz = |v: Tensor<4>, h: Tensor<4>| {
                let u = self.scaled_visible(v.clone());
                let r = self.scaled_visible(v - a.clone());
                u * plain.apply_wt(h) - r.powi_scalar(2)
            };
            (dfdz(v.clone(), h.clone()) - dfdz(v_rec.clone(), h_rec.clone()))
                .sum_dims(&[0, 2, 3])
                .reshape([c])
                .mul_scalar(inv_b)
        });
        let dv = v.clone() - v_rec.clone();
        let dh = h.clone() - h_rec.clone();
        let dv = match self.sigma4() {
            Some(s) => dv / s.clone() / s,
            None => dv,
        };
        let (v, v_rec) = (self.scaled_visible(v), self.scaled_visible(v_rec));
        let ga = dv
            .sum_dims(&[0, 2, 3])
            .reshape([self.spec.visible_channels()])
            .mul_scalar(-inv_b);
        let gb = dh
            .sum_dims(&[0, 2, 3])
            .reshape([self.spec.hidden_channels()])
            .mul_scalar(-inv_b);
        let gw = match &self.spec.kind {
            LayerKind::Dense { .. } => {
                // <v h> - <v' h'> as one matmul of the stacked batches.
                let vv = Tensor::cat(vec![flat(v), flat(v_rec)], 0);
                let hh = Tensor::cat(vec![flat(h), flat(h_rec).neg()], 0);
                vv.transpose()
                    .matmul(hh)
                    .mul_scalar(-inv_b)
                    .reshape(self.spec.weight_shape())
            }
            LayerKind::Conv { .. } => {
                if let Some(g) = self.host_geometry(&v) {
                    // <v h> - <v' h'> as two accumulations: no concatenated copies.
                    let mut gw = crate::host_conv::weight_grad(&host_f32(&v), &host_f32(&h), &g);
                    let rec =
                        crate::host_conv::weight_grad(&host_f32(&v_rec), &host_f32(&h_rec), &g);
                    for (a, r) in gw.iter_mut().zip(rec) {
                        *a -= r;
                    }
                    host_tensor(gw, self.spec.weight_shape(), &v.device()).mul_scalar(-inv_b)
                } else {
                    let (opt, _) = self.conv_options();
                    let vv = Tensor::cat(vec![v, v_rec], 0);
                    let hh = Tensor::cat(vec![h, h_rec.neg()], 0);
                    conv2d_weight_backward(vv, self.w.clone(), hh, opt).mul_scalar(-inv_b)
                }
            }
        };
        LayerGrads {
            w: gw,
            a: ga,
            b: gb,
            log_sigma: g_sigma,
        }
    }

    /// The same layer with other parameters (FPCD's regular + fast weights).
    pub fn with_params(&self, w: Tensor<4>, a: Tensor<1>, b: Tensor<1>) -> Rbm {
        Rbm {
            spec: self.spec.clone(),
            w,
            a,
            b,
            log_sigma: self.log_sigma.clone(),
        }
    }
}
