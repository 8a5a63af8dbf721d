//! Training a stack: Adam on the sum of the layer losses.

use burn::optim::{Adam, AdamConfig, AdamState, Optimizer};
use burn::tensor::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::layer::{to_f64, LayerGrads, Rbm};
use crate::stack::{Coupling, Dbn};
use crate::CoreError;

/// How the gradient is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GradientMode {
    /// Closed-form CD-1 gradient when coupling is detached (it equals the
    /// autodiff gradient, a test proves it, and needs no graph), autodiff
    /// otherwise.
    #[default]
    Auto,
    /// Always burn's autodiff through the loss.
    Autodiff,
    /// Always the closed form (only valid with detached coupling).
    ClosedForm,
}

/// Optimiser and schedule settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimParams {
    /// Adam learning rate (paper: 0.03).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Adam beta1 (paper follows PyTorch: 0.9).
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Adam beta2 (0.999).
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Adam epsilon (PyTorch's 1e-8; burn's own default would be 1e-5).
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// Mini-batch size (paper: 128).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Passes over the data.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Seed of the weight initialisation and of the batch order.
    #[serde(default)]
    pub seed: u64,
    /// Whether upper-layer losses backpropagate into lower layers.
    #[serde(default)]
    pub coupling: Coupling,
    /// Gradient computation: auto (closed form when detached), autodiff,
    /// closed_form. Changes speed, not results beyond rounding.
    #[serde(default)]
    pub gradient: GradientMode,
}

fn default_lr() -> f64 {
    0.03
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_epsilon() -> f64 {
    1e-8
}
fn default_batch() -> usize {
    128
}
fn default_epochs() -> usize {
    10
}

impl Default for OptimParams {
    fn default() -> Self {
        OptimParams {
            lr: default_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            epsilon: default_epsilon(),
            batch_size: default_batch(),
            epochs: default_epochs(),
            seed: 0,
            coupling: Coupling::Detached,
            gradient: GradientMode::Auto,
        }
    }
}

impl OptimParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("lr must be positive, got {}", self.lr));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(format!("{name} must be in [0, 1), got {b}"));
            }
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(format!("epsilon must be positive, got {}", self.epsilon));
        }
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        if self.gradient == GradientMode::ClosedForm && self.coupling == Coupling::Backprop {
            return Err(
                "gradient = \"closed_form\" needs coupling = \"detached\" (use auto or autodiff)"
                    .into(),
            );
        }
        Ok(())
    }

    fn use_closed_form(&self) -> bool {
        match self.gradient {
            GradientMode::Auto => self.coupling == Coupling::Detached,
            GradientMode::Autodiff => false,
            GradientMode::ClosedForm => true,
        }
    }
}

#[derive(Default, Clone)]
struct LayerState {
    w: Option<AdamState<4>>,
    a: Option<AdamState<1>>,
    b: Option<AdamState<1>>,
}

/// A stack with its optimiser state.
pub struct Trainer {
    pub dbn: Dbn,
    pub params: OptimParams,
    optim: Adam,
    states: Vec<LayerState>,
    autodiff_device: Device,
}

impl Trainer {
    pub fn new(dbn: Dbn, params: OptimParams) -> Trainer {
        let optim = AdamConfig::new()
            .with_beta_1(params.beta1 as f32)
            .with_beta_2(params.beta2 as f32)
            .with_epsilon(params.epsilon as f32)
            .build();
        let states = vec![LayerState::default(); dbn.layers.len()];
        let autodiff_device = dbn.device().autodiff();
        Trainer {
            dbn,
            params,
            optim,
            states,
            autodiff_device,
        }
    }

    /// The gradients of the total loss for a batch of visible values, and
    /// the per-layer loss values.
    pub fn gradients(&self, v: Tensor<4>) -> (Vec<f64>, Vec<LayerGrads>) {
        if self.params.use_closed_form() {
            let mut t = v;
            let mut losses = Vec::new();
            let mut grads = Vec::new();
            for (i, layer) in self.dbn.layers.iter().enumerate() {
                let (loss, g, h) = layer.cd_grads(self.dbn.as_visible_of(i, t));
                losses.push(loss);
                grads.push(g);
                t = h;
            }
            (losses.iter().map(|l| to_f64(l)[0]).collect(), grads)
        } else {
            let tracked: Vec<Rbm> = self.dbn.layers.iter().map(|l| l.tracked()).collect();
            let model = Dbn {
                spec: self.dbn.spec.clone(),
                layers: tracked,
            };
            let v = v.to_device(&self.autodiff_device);
            let (total, losses) = model.loss(v, self.params.coupling);
            let values: Vec<f64> = losses
                .iter()
                .map(|l| to_f64(&l.clone().detach())[0])
                .collect();
            let grads = total.backward();
            let g = model
                .layers
                .iter()
                .map(|l| LayerGrads {
                    w: l.w
                        .grad(&grads)
                        .unwrap_or_else(|| l.w.clone().without_autodiff().zeros_like()),
                    a: l.a
                        .grad(&grads)
                        .unwrap_or_else(|| l.a.clone().without_autodiff().zeros_like()),
                    b: l.b
                        .grad(&grads)
                        .unwrap_or_else(|| l.b.clone().without_autodiff().zeros_like()),
                })
                .collect();
            (values, g)
        }
    }

    /// One Adam step on a batch; returns the per-layer losses (before the
    /// step). Fails on a non-finite loss or weight, naming the layer.
    pub fn step(
        &mut self,
        v: Tensor<4>,
        epoch: usize,
        batch: usize,
    ) -> Result<Vec<f64>, CoreError> {
        let (losses, grads) = self.gradients(v);
        for (i, l) in losses.iter().enumerate() {
            if !l.is_finite() {
                return Err(CoreError::NonFinite {
                    epoch,
                    batch,
                    layer: i + 1,
                    what: format!("loss is {l}"),
                });
            }
        }
        let lr = self.params.lr;
        for (i, (layer, g)) in self.dbn.layers.iter_mut().zip(grads).enumerate() {
            let st = &mut self.states[i];
            let (w, s) = self.optim.step(lr, layer.w.clone(), g.w, st.w.take());
            layer.w = w;
            st.w = s;
            let (a, s) = self.optim.step(lr, layer.a.clone(), g.a, st.a.take());
            layer.a = a;
            st.a = s;
            let (b, s) = self.optim.step(lr, layer.b.clone(), g.b, st.b.take());
            layer.b = b;
            st.b = s;
            // One read-back per layer: a NaN or Inf anywhere makes the sum non-finite.
            let check = layer.w.clone().sum() + layer.a.clone().sum() + layer.b.clone().sum();
            let c = to_f64(&check)[0];
            if !c.is_finite() {
                return Err(CoreError::NonFinite {
                    epoch,
                    batch,
                    layer: i + 1,
                    what: "a weight or bias became NaN or infinite".into(),
                });
            }
        }
        Ok(losses)
    }
}

/// One epoch's batch order: a seeded shuffle (same on every machine).
pub fn batch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(epoch as u64 + 1)));
    idx.shuffle(&mut rng);
    idx
}

/// Loss history of a run.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// (epoch, batch, per-layer losses) for every batch.
    pub batches: Vec<(usize, usize, Vec<f64>)>,
}

impl History {
    pub fn epoch_means(&self) -> Vec<f64> {
        let mut out: Vec<(f64, usize)> = Vec::new();
        for (e, _, l) in &self.batches {
            if out.len() <= *e {
                out.resize(*e + 1, (0.0, 0));
            }
            out[*e].0 += l.iter().sum::<f64>();
            out[*e].1 += 1;
        }
        out.into_iter().map(|(s, c)| s / c.max(1) as f64).collect()
    }

    pub fn to_csv(&self) -> String {
        let layers = self.batches.first().map_or(0, |b| b.2.len());
        let mut s = String::from("epoch,batch,step,total");
        for i in 1..=layers {
            s.push_str(&format!(",layer{i}"));
        }
        s.push('\n');
        for (step, (e, b, l)) in self.batches.iter().enumerate() {
            s.push_str(&format!(
                "{},{},{},{}",
                e + 1,
                b + 1,
                step + 1,
                l.iter().sum::<f64>()
            ));
            for v in l {
                s.push_str(&format!(",{v}"));
            }
            s.push('\n');
        }
        s
    }
}

/// Train `trainer` on u8 images (NCHW, `n` images of `image_len` bytes).
/// `on_batch(done, total, running_loss)` reports progress and may cancel
/// by returning an error.
pub fn train_images(
    trainer: &mut Trainer,
    pixels: &[u8],
    n: usize,
    dtype: DType,
    mut on_batch: impl FnMut(u64, u64, f64) -> Result<(), CoreError>,
) -> Result<History, CoreError> {
    let p = trainer.params.clone();
    let device = trainer.dbn.device();
    let image_len: usize = trainer.dbn.spec.input.iter().product();
    let bs = p.batch_size.min(n.max(1));
    let batches = n / bs; // drop the ragged last batch: every step sees bs images
    let total = (batches * p.epochs) as u64;
    let mut hist = History::default();
    let mut running: Option<f64> = None;
    let mut done = 0u64;
    let mut buf = vec![0u8; bs * image_len];
    for epoch in 0..p.epochs {
        let order = batch_order(n, p.seed, epoch);
        for b in 0..batches {
            for (j, &i) in order[b * bs..(b + 1) * bs].iter().enumerate() {
                buf[j * image_len..(j + 1) * image_len]
                    .copy_from_slice(&pixels[i * image_len..(i + 1) * image_len]);
            }
            let v = trainer.dbn.pixels_to_visible(&buf, bs, &device, dtype);
            let losses = trainer.step(v, epoch + 1, b + 1)?;
            let t: f64 = losses.iter().sum();
            running = Some(match running {
                None => t,
                Some(r) => 0.95 * r + 0.05 * t,
            });
            hist.batches.push((epoch, b, losses));
            done += 1;
            on_batch(done, total, running.unwrap_or(t))?;
        }
    }
    Ok(hist)
}
