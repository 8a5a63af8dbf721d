//! The coupled pair of DCIMs (Flach, Shekhovtsov & Fikar, "Generative
//! learning for deep networks"): one set of weights and biases read two
//! ways.
//!
//! - Forward p(x^d | x^0): approximation (2) applied layer by layer, i.e.
//!   a sigmoid network x̄^k = S(W^k x̄^(k-1) + c^k) whose last layer is a
//!   softmax over the classes (eq. 14-15 with 0/1 units and a categorical
//!   top unit).
//! - Reverse q(x^0 | x^m): the same weights transposed (a conv's reverse is
//!   its transposed conv with the same kernel and stride) and the same
//!   biases: x̄^(k-1) = S(W^kᵀ x̄^k + c^(k-1)). Every layer of units has one
//!   bias c^k, used by whichever direction ends in that layer (the paper's
//!   b^k = a^k coupling; c^0 only by q, c^d only by p).
//!
//! Activations are `Act::Map` ([batch, C, H, W]) below the first dense
//! layer and `Act::Flat` ([batch, n]) from it on. Conv biases are one per
//! channel; a dense layer's reverse into a map adds that map's per-channel
//! bias.

use burn::optim::{Adam, AdamConfig, AdamState, Optimizer};
use burn::tensor::activation::{log_sigmoid, log_softmax, sigmoid};
use burn::tensor::module::{conv2d, conv_transpose2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{DType, Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::DcimError;

/// One layer as the paper writes it: a dense size, or a conv triplet
/// (window, stride, kernels). No padding ("valid").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerDef {
    Dense(usize),
    Conv([usize; 3]),
}

/// The shape of one layer of units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// [channels, height, width]
    Map([usize; 3]),
    Flat(usize),
}

impl Shape {
    pub fn len(&self) -> usize {
        match *self {
            Shape::Map([c, h, w]) => c * h * w,
            Shape::Flat(n) => n,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Length of this layer's bias (one per channel of a map).
    pub fn bias_len(&self) -> usize {
        match *self {
            Shape::Map([c, _, _]) => c,
            Shape::Flat(n) => n,
        }
    }
}

/// The architecture: input [C, H, W] and the layers up to the class layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub input: [usize; 3],
    pub layers: Vec<LayerDef>,
}

impl Spec {
    /// Shapes of x^0 .. x^d, or why the layers do not fit the input.
    pub fn shapes(&self) -> Result<Vec<Shape>, DcimError> {
        if self.layers.is_empty() {
            return Err(DcimError::Spec("`layers` is empty".into()));
        }
        let mut out = vec![Shape::Map(self.input)];
        for (i, l) in self.layers.iter().enumerate() {
            let prev = *out.last().expect("non-empty");
            let next = match (*l, prev) {
                (LayerDef::Dense(0), _) => {
                    return Err(DcimError::Spec(format!("layer {}: 0 units", i + 1)))
                }
                (LayerDef::Dense(n), _) => Shape::Flat(n),
                (LayerDef::Conv([win, s, k]), Shape::Map([_, h, w])) => {
                    if win == 0 || s == 0 || k == 0 {
                        return Err(DcimError::Spec(format!(
                            "layer {}: window, stride and kernels must be at least 1",
                            i + 1
                        )));
                    }
                    if win > h || win > w {
                        return Err(DcimError::Spec(format!(
                            "layer {}: window {win} is larger than its {h}x{w} input",
                            i + 1
                        )));
                    }
                    Shape::Map([k, (h - win) / s + 1, (w - win) / s + 1])
                }
                (LayerDef::Conv(_), Shape::Flat(_)) => {
                    return Err(DcimError::Spec(format!(
                        "layer {}: a conv layer cannot follow a dense one",
                        i + 1
                    )))
                }
            };
            out.push(next);
        }
        if !matches!(out.last(), Some(Shape::Flat(_))) {
            return Err(DcimError::Spec(
                "the last layer (the classes) must be dense".into(),
            ));
        }
        Ok(out)
    }

    pub fn classes(&self) -> usize {
        match self.layers.last() {
            Some(LayerDef::Dense(n)) => *n,
            _ => 0,
        }
    }
}

/// A weight: conv [K_out, C_in, win, win], dense [in, out].
#[derive(Debug, Clone)]
pub enum Weight {
    Conv(Tensor<4>),
    Dense(Tensor<2>),
}

/// An activation (or its pre-activation) at one layer of units.
#[derive(Debug, Clone)]
pub enum Act {
    Map(Tensor<4>),
    Flat(Tensor<2>),
}

impl Act {
    pub fn flat(self) -> Tensor<2> {
        match self {
            Act::Flat(t) => t,
            Act::Map(t) => {
                let [b, c, h, w] = t.dims();
                t.reshape([b, c * h * w])
            }
        }
    }
    pub fn map(self, shape: Shape) -> Tensor<4> {
        match (self, shape) {
            (Act::Map(t), _) => t,
            (Act::Flat(t), Shape::Map([c, h, w])) => {
                let b = t.dims()[0];
                t.reshape([b, c, h, w])
            }
            (Act::Flat(t), Shape::Flat(n)) => {
                let b = t.dims()[0];
                t.reshape([b, n, 1, 1])
            }
        }
    }
    fn apply(self, f: impl Fn(Tensor<4>) -> Tensor<4>, g: impl Fn(Tensor<2>) -> Tensor<2>) -> Act {
        match self {
            Act::Map(t) => Act::Map(f(t)),
            Act::Flat(t) => Act::Flat(g(t)),
        }
    }
    /// Whether mrbm-autodiff's host ops serve it (f32 in an autodiff
    /// graph on the flex CPU device).
    fn on_autodiff_host(&self) -> bool {
        match self {
            Act::Map(t) => mrbm_autodiff::serves(t),
            Act::Flat(t) => mrbm_autodiff::serves(t),
        }
    }
    fn dtype(&self) -> burn::tensor::DType {
        match self {
            Act::Map(t) => t.dtype(),
            Act::Flat(t) => t.dtype(),
        }
    }
    /// The logistic sigmoid; in an autodiff graph on the flex CPU device
    /// (f32), mrbm-autodiff's vectorised op with its own backward pass.
    pub fn sigmoid(self) -> Act {
        if self.on_autodiff_host() {
            let mean4 = |t: Tensor<4>| mrbm_autodiff::unit_mean(t, 1.0, 1.0);
            let mean2 = |t: Tensor<2>| mrbm_autodiff::unit_mean(t, 1.0, 1.0);
            return self.apply(mean4, mean2);
        }
        self.apply(sigmoid, sigmoid)
    }
    pub fn detach(self) -> Act {
        self.apply(|t| t.detach(), |t| t.detach())
    }
}

/// The three objectives of the paper (all maximised there; we minimise
/// their negatives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Objective {
    /// (16) log p(x^d | x^0): discriminative.
    #[serde(rename = "16")]
    #[default]
    Discriminative,
    /// (21) log p(x^d | x^0) + log q(x^0 | x^d).
    #[serde(rename = "21")]
    Generative,
    /// (22) log p(x^d | x^0) + log q(x^0 | x^(d-1)), x^(d-1) ~ p(x^(d-1) | x^0).
    #[serde(rename = "22")]
    Sampled,
}

impl Objective {
    pub fn name(self) -> &'static str {
        match self {
            Objective::Discriminative => "16",
            Objective::Generative => "21",
            Objective::Sampled => "22",
        }
    }
}

/// The model: weights W^1..W^d and biases c^0..c^d.
#[derive(Debug, Clone)]
pub struct Dcim {
    pub spec: Spec,
    pub shapes: Vec<Shape>,
    pub weights: Vec<Weight>,
    pub biases: Vec<Tensor<1>>,
}

/// Host f32 values -> tensor on `device`.
pub fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), (device, DType::F32))
}

/// Tensor -> host f32 values (row-major).
pub fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

/// Tensor -> its single value as f64.
pub fn scalar(t: &Tensor<1>) -> f64 {
    host(t).first().copied().unwrap_or(f32::NAN) as f64
}

impl Dcim {
    /// Glorot-uniform weights (Keras' default, as the paper used Keras),
    /// zero biases; the draws come from a host RNG so an initialisation is
    /// the same on every device.
    pub fn init(spec: Spec, seed: u64, device: &Device) -> Result<Dcim, DcimError> {
        let shapes = spec.shapes()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut weights = Vec::new();
        for (k, l) in spec.layers.iter().enumerate() {
            let (dims, fan_in, fan_out): (Vec<usize>, usize, usize) = match *l {
                LayerDef::Dense(n) => {
                    let m = shapes[k].len();
                    (vec![m, n], m, n)
                }
                LayerDef::Conv([win, _, kk]) => {
                    let c = match shapes[k] {
                        Shape::Map([c, _, _]) => c,
                        Shape::Flat(_) => unreachable!("checked by shapes()"),
                    };
                    (vec![kk, c, win, win], c * win * win, kk * win * win)
                }
            };
            let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * limit) as f32)
                .collect();
            weights.push(match *l {
                LayerDef::Dense(_) => Weight::Dense(tensor(v, [dims[0], dims[1]], device)),
                LayerDef::Conv(_) => {
                    Weight::Conv(tensor(v, [dims[0], dims[1], dims[2], dims[3]], device))
                }
            });
        }
        let biases = shapes
            .iter()
            .map(|s| Tensor::zeros([s.bias_len()], (device, DType::F32)))
            .collect();
        Ok(Dcim {
            spec,
            shapes,
            weights,
            biases,
        })
    }

    pub fn depth(&self) -> usize {
        self.weights.len()
    }

    pub fn device(&self) -> Device {
        self.biases[0].device()
    }

    /// Copy whose parameters are autodiff leaves.
    pub fn tracked(&self) -> Dcim {
        Dcim {
            spec: self.spec.clone(),
            shapes: self.shapes.clone(),
            weights: self
                .weights
                .iter()
                .map(|w| match w {
                    Weight::Conv(t) => Weight::Conv(t.clone().autodiff().require_grad()),
                    Weight::Dense(t) => Weight::Dense(t.clone().autodiff().require_grad()),
                })
                .collect(),
            biases: self
                .biases
                .iter()
                .map(|b| b.clone().autodiff().require_grad())
                .collect(),
        }
    }

    fn conv_geometry(&self, k: usize) -> (usize, usize) {
        match self.spec.layers[k - 1] {
            LayerDef::Conv([win, s, _]) => (win, s),
            LayerDef::Dense(_) => (1, 1),
        }
    }

    /// Pre-activation of x^k given x^(k-1) (k = 1..d).
    pub fn pre_up(&self, k: usize, x: Act) -> Act {
        let b = self.biases[k].clone();
        if let Some(out) = self.host_linear(k, &x, &b, false) {
            return out;
        }
        match &self.weights[k - 1] {
            Weight::Conv(w) => {
                let (_, s) = self.conv_geometry(k);
                let opts = ConvOptions::new([s, s], [0, 0], [1, 1], 1);
                Act::Map(conv2d(x.map(self.shapes[k - 1]), w.clone(), Some(b), opts))
            }
            Weight::Dense(w) => Act::Flat(x.flat().matmul(w.clone()) + b.unsqueeze_dim::<2>(0)),
        }
    }

    /// Pre-activation of x^(k-1) given x^k through the transposed weights
    /// (k = 1..d).
    pub fn pre_down(&self, k: usize, x: Act) -> Act {
        let b = self.biases[k - 1].clone();
        let below = self.shapes[k - 1];
        if let Some(out) = self.host_linear(k, &x, &b, true) {
            return out;
        }
        match &self.weights[k - 1] {
            Weight::Conv(w) => {
                let (win, s) = self.conv_geometry(k);
                let pad_out = match below {
                    Shape::Map([_, h, _]) => (h - win) % s,
                    Shape::Flat(_) => 0,
                };
                let opts = ConvTransposeOptions::new([s, s], [0, 0], [pad_out, pad_out], [1, 1], 1);
                Act::Map(conv_transpose2d(
                    x.map(self.shapes[k]),
                    w.clone(),
                    Some(b),
                    opts,
                ))
            }
            Weight::Dense(w) => {
                let f = x.flat().matmul(w.clone().transpose());
                match below {
                    Shape::Flat(_) => Act::Flat(f + b.unsqueeze_dim::<2>(0)),
                    Shape::Map([c, h, ww]) => {
                        let n = f.dims()[0];
                        Act::Map(f.reshape([n, c, h, ww]) + b.reshape([1, c, 1, 1]))
                    }
                }
            }
        }
    }

    /// [`Self::pre_up`] (or [`Self::pre_down`] when `down`) of layer k by
    /// mrbm-autodiff's linear op, when the batch or the weights are in an
    /// autodiff graph on the flex CPU device in f32 (training); None: burn's
    /// ops (evaluation, sampling, other devices keep their bits).
    fn host_linear(&self, k: usize, x: &Act, b: &Tensor<1>, down: bool) -> Option<Act> {
        use mrbm_autodiff::{linear, serves, Linear};
        let w_in = match &self.weights[k - 1] {
            Weight::Conv(w) => serves(w),
            Weight::Dense(w) => serves(w),
        };
        if !(x.on_autodiff_host() || w_in) || x.dtype() != burn::tensor::DType::F32 {
            return None;
        }
        let (below, above) = (self.shapes[k - 1], self.shapes[k]);
        let visible = match below {
            Shape::Map(s) => s,
            Shape::Flat(n) => [n, 1, 1],
        };
        let input = x.clone().map(if down { above } else { below });
        let n = input.dims()[0];
        match (&self.weights[k - 1], down, below) {
            (Weight::Conv(w), _, _) => {
                let (win, s) = self.conv_geometry(k);
                let l = Linear {
                    conv: Some([win, s, 0]),
                    visible,
                    down,
                };
                Some(Act::Map(linear(input, w.clone(), b.clone(), l)))
            }
            // The down map of a dense layer above a map: its bias is per
            // channel of the map, added after the unbiased map.
            (Weight::Dense(w), true, Shape::Map([c, h, ww])) => {
                let l = Linear {
                    conv: None,
                    visible: [c * h * ww, 1, 1],
                    down,
                };
                let zero = Tensor::<1>::zeros([c * h * ww], (&b.device(), b.dtype()));
                let out = linear(input, w.clone(), zero, l).reshape([n, c, h, ww]);
                Some(Act::Map(out + b.clone().reshape([1, c, 1, 1])))
            }
            (Weight::Dense(w), _, _) => {
                let l = Linear {
                    conv: None,
                    visible: [visible.iter().product(), 1, 1],
                    down,
                };
                let out = linear(input, w.clone(), b.clone(), l);
                let units = out.dims()[1];
                Some(Act::Flat(out.reshape([n, units])))
            }
        }
    }

    /// The forward pass (eq. 14-15): the means x̄^1 .. x̄^(d-1) and the
    /// class logits a^d.
    pub fn forward(&self, x0: Tensor<4>) -> (Vec<Act>, Tensor<2>) {
        let d = self.depth();
        let mut x = Act::Map(x0);
        let mut means = Vec::with_capacity(d - 1);
        for k in 1..d {
            x = self.pre_up(k, x).sigmoid();
            means.push(x.clone());
        }
        let logits = self.pre_up(d, x).flat();
        (means, logits)
    }

    /// Logits η of q(x^0 = 1 | x^m) through approximation (2) applied
    /// recursively down from layer m (x^m given: a one-hot class for
    /// m = d, a state or mean for m < d).
    pub fn reverse_from(&self, m: usize, xm: Act) -> Tensor<4> {
        let mut x = xm;
        for k in (2..=m).rev() {
            x = self.pre_down(k, x).sigmoid();
        }
        self.pre_down(1, x).map(self.shapes[0])
    }

    /// Reverse sampling: x^(k-1) ~ Bernoulli(S(W^kᵀ x^k + c^(k-1))) for
    /// k = m..2, each layer drawn with uniforms from `rng`, then the
    /// logits of x^0.
    pub fn reverse_sampled(&self, m: usize, xm: Act, rng: &mut ChaCha8Rng) -> Tensor<4> {
        let mut x = xm;
        for k in (2..=m).rev() {
            let p = self.pre_down(k, x).sigmoid();
            x = bernoulli(p, rng);
        }
        self.pre_down(1, x).map(self.shapes[0])
    }
}

/// States drawn from means: 1 where a host uniform is below the mean.
pub fn bernoulli(p: Act, rng: &mut ChaCha8Rng) -> Act {
    let (dims, device): (Vec<usize>, Device) = match &p {
        Act::Map(t) => (t.dims().to_vec(), t.device()),
        Act::Flat(t) => (t.dims().to_vec(), t.device()),
    };
    let n: usize = dims.iter().product();
    let u: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    match p {
        Act::Map(t) => {
            let u = tensor(u, [dims[0], dims[1], dims[2], dims[3]], &device);
            Act::Map(u.lower(t.detach()).float())
        }
        Act::Flat(t) => {
            let u = tensor(u, [dims[0], dims[1]], &device);
            Act::Flat(u.lower(t.detach()).float())
        }
    }
}

/// One-hot rows [n, classes] for labels.
pub fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l] = 1.0;
    }
    tensor(v, [labels.len(), classes], device)
}

/// Mean over the batch of -log p(y | x^0) (softmax cross-entropy).
pub fn class_nll(logits: Tensor<2>, one_hot: Tensor<2>) -> Tensor<1> {
    let n = logits.dims()[0] as f64;
    (log_softmax(logits, 1) * one_hot).sum().neg().div_scalar(n)
}

/// -log q(x^0 | .) per image: the Bernoulli cross-entropy of the targets t
/// in [0, 1] (grey levels as soft targets) under logits η, summed over
/// pixels and averaged over the batch. (1 - t) η - log S(η) is stable.
pub fn image_nll(eta: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    let n = eta.dims()[0] as f64;
    let ls = log_sigmoid(eta.clone());
    ((target.neg().add_scalar(1.0) * eta) - ls)
        .sum()
        .div_scalar(n)
}

/// The loss terms of one batch.
pub struct Terms {
    /// Mean -log p(y | x^0).
    pub class: Tensor<1>,
    /// Mean -log q(x^0 | .) per image (summed over pixels), None for (16).
    pub reverse: Option<Tensor<1>>,
}

impl Dcim {
    /// The loss terms of an objective on a batch. For (22), `draw` turns
    /// the forward means x̄^(d-1) into the state x^(d-1) the reverse model
    /// starts from (training: Bernoulli draws; tests: a given state).
    pub fn terms(
        &self,
        x0: Tensor<4>,
        y: Tensor<2>,
        objective: Objective,
        draw: &mut dyn FnMut(Act) -> Act,
    ) -> Terms {
        let d = self.depth();
        let (means, logits) = self.forward(x0.clone());
        let class = class_nll(logits, y.clone());
        let reverse = match objective {
            Objective::Discriminative => None,
            Objective::Generative => Some(image_nll(self.reverse_from(d, Act::Flat(y)), x0)),
            Objective::Sampled => Some(match means.last() {
                Some(m) => image_nll(self.reverse_from(d - 1, draw(m.clone()).detach()), x0),
                // One layer: x^(d-1) is the image itself; (22) is (21).
                None => image_nll(self.reverse_from(d, Act::Flat(y)), x0),
            }),
        };
        Terms { class, reverse }
    }
}

/// The training objective: class NLL + weight x (reverse NLL per pixel).
/// `reverse_weight` = 1 is Keras' convention (the paper's reported
/// reverse losses, 0.23 and 0.14, are per-pixel means); the number of
/// pixels gives the paper's formula (21) literally (the sum).
pub fn total(t: &Terms, reverse_weight: f64, pixels: usize) -> Tensor<1> {
    match &t.reverse {
        None => t.class.clone(),
        Some(r) => t.class.clone() + r.clone().mul_scalar(reverse_weight / pixels as f64),
    }
}

/// Adam state of one parameter.
#[derive(Clone)]
pub enum ParamState {
    W4(Option<AdamState<4>>),
    W2(Option<AdamState<2>>),
}

/// A model with its optimiser.
pub struct Trainer {
    pub model: Dcim,
    pub lr: f64,
    pub reverse_weight: f64,
    pub objective: Objective,
    optim: Adam,
    pub w_states: Vec<ParamState>,
    pub b_states: Vec<Option<AdamState<1>>>,
}

/// Loss values of one batch (before the step).
#[derive(Debug, Clone, Copy)]
pub struct StepLoss {
    pub class: f64,
    /// Per-pixel mean reverse NLL (NaN for (16), which does not compute it).
    pub reverse_per_pixel: f64,
}

impl Trainer {
    pub fn new(model: Dcim, objective: Objective, lr: f64, reverse_weight: f64) -> Trainer {
        let optim = AdamConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-8)
            .build();
        let w_states = model
            .weights
            .iter()
            .map(|w| match w {
                Weight::Conv(_) => ParamState::W4(None),
                Weight::Dense(_) => ParamState::W2(None),
            })
            .collect();
        let b_states = vec![None; model.biases.len()];
        Trainer {
            model,
            lr,
            reverse_weight,
            objective,
            optim,
            w_states,
            b_states,
        }
    }

    /// The gradients of the objective on a batch (tests compare them with
    /// the reference), with the loss values.
    pub fn gradients(
        &self,
        x0: Tensor<4>,
        y: Tensor<2>,
        draw: &mut dyn FnMut(Act) -> Act,
    ) -> (StepLoss, Vec<Weight>, Vec<Tensor<1>>) {
        let tracked = self.model.tracked();
        let ad = self.model.device().autodiff();
        let x0 = x0.to_device(&ad);
        let y = y.to_device(&ad);
        let pixels = self.model.shapes[0].len();
        let terms = tracked.terms(x0, y, self.objective, draw);
        let loss = total(&terms, self.reverse_weight, pixels);
        let values = StepLoss {
            class: scalar(&terms.class.clone().detach()),
            reverse_per_pixel: terms
                .reverse
                .as_ref()
                .map_or(f64::NAN, |r| scalar(&r.clone().detach()) / pixels as f64),
        };
        let grads = loss.backward();
        let gw = tracked
            .weights
            .iter()
            .map(|w| match w {
                Weight::Conv(t) => Weight::Conv(
                    t.grad(&grads)
                        .unwrap_or_else(|| t.clone().without_autodiff().zeros_like()),
                ),
                Weight::Dense(t) => Weight::Dense(
                    t.grad(&grads)
                        .unwrap_or_else(|| t.clone().without_autodiff().zeros_like()),
                ),
            })
            .collect();
        let gb = tracked
            .biases
            .iter()
            .map(|b| {
                b.grad(&grads)
                    .unwrap_or_else(|| b.clone().without_autodiff().zeros_like())
            })
            .collect();
        (values, gw, gb)
    }

    /// One Adam step on a batch; the loss values before it.
    pub fn step(
        &mut self,
        x0: Tensor<4>,
        y: Tensor<2>,
        rng: &mut ChaCha8Rng,
    ) -> Result<StepLoss, DcimError> {
        let (l, gw, gb) = self.gradients(x0, y, &mut |m| bernoulli(m, rng));
        if !l.class.is_finite() || l.reverse_per_pixel.is_infinite() {
            return Err(DcimError::NonFinite(format!(
                "loss is not finite (class {}, reverse {})",
                l.class, l.reverse_per_pixel
            )));
        }
        let lr = self.lr;
        let device = self.model.device();
        for (i, g) in gw.into_iter().enumerate() {
            let w = std::mem::replace(
                &mut self.model.weights[i],
                Weight::Dense(Tensor::zeros([1, 1], &device)),
            );
            self.model.weights[i] = match (w, g, &mut self.w_states[i]) {
                (Weight::Conv(w), Weight::Conv(g), ParamState::W4(st)) => {
                    let (w, s) = self.optim.step(lr, w, g, st.take());
                    *st = s;
                    Weight::Conv(w)
                }
                (Weight::Dense(w), Weight::Dense(g), ParamState::W2(st)) => {
                    let (w, s) = self.optim.step(lr, w, g, st.take());
                    *st = s;
                    Weight::Dense(w)
                }
                _ => unreachable!("a weight and its gradient have the same kind"),
            };
        }
        for (i, g) in gb.into_iter().enumerate() {
            let b = self.model.biases[i].clone();
            let (b, s) = self.optim.step(lr, b, g, self.b_states[i].take());
            self.model.biases[i] = b;
            self.b_states[i] = s;
        }
        Ok(l)
    }
}

/// Evaluation of a model on a labelled set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Eval {
    pub accuracy: f64,
    /// Mean -log p(y | x^0).
    pub class_nll: f64,
    /// Per-pixel mean -log q(x^0 | x^d) (from the class).
    pub reverse_class: f64,
    /// Per-pixel mean -log q(x^0 | x^(d-1)), x^(d-1) ~ p (objective 22's term).
    pub reverse_sampled: f64,
}

/// Pixels (u8, n images of `len`) -> [n, C, H, W] in [0, 1].
pub fn images_tensor(pixels: &[u8], n: usize, shape: [usize; 3], device: &Device) -> Tensor<4> {
    let v: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
    tensor(v, [n, shape[0], shape[1], shape[2]], device)
}

impl Dcim {
    /// Class probabilities [n, classes] of images.
    pub fn predict(&self, x0: Tensor<4>) -> Tensor<2> {
        let (_, logits) = self.forward(x0);
        burn::tensor::activation::softmax(logits, 1)
    }

    /// Accuracy and losses on a set, in batches of `batch`; x^(d-1) draws
    /// for the (22) term from `seed`.
    pub fn evaluate(
        &self,
        pixels: &[u8],
        labels: &[usize],
        batch: usize,
        seed: u64,
        mut cancelled: impl FnMut() -> bool,
    ) -> Result<Eval, DcimError> {
        let device = self.device();
        let shape = self.spec.input;
        let len: usize = shape.iter().product();
        let n = labels.len();
        let d = self.depth();
        let classes = self.spec.classes();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut correct, mut cnll, mut rc, mut rs) = (0usize, 0.0, 0.0, 0.0);
        let mut i = 0;
        while i < n {
            if cancelled() {
                return Err(DcimError::Cancelled);
            }
            let m = batch.min(n - i);
            let x0 = images_tensor(&pixels[i * len..(i + m) * len], m, shape, &device);
            let y = one_hot(&labels[i..i + m], classes, &device);
            let (means, logits) = self.forward(x0.clone());
            let pred = host(&logits.clone().argmax(1).float());
            correct += pred
                .iter()
                .zip(&labels[i..i + m])
                .filter(|(p, l)| **p as usize == **l)
                .count();
            cnll += scalar(&class_nll(logits, y.clone())) * m as f64;
            rc += scalar(&image_nll(
                self.reverse_from(d, Act::Flat(y.clone())),
                x0.clone(),
            )) * m as f64;
            let eta = match means.last() {
                Some(top) => self.reverse_from(d - 1, bernoulli(top.clone(), &mut rng)),
                None => self.reverse_from(d, Act::Flat(y)),
            };
            rs += scalar(&image_nll(eta, x0)) * m as f64;
            i += m;
        }
        let nf = n.max(1) as f64;
        Ok(Eval {
            accuracy: correct as f64 / nf,
            class_nll: cnll / nf,
            reverse_class: rc / nf / len as f64,
            reverse_sampled: rs / nf / len as f64,
        })
    }
}
