//! Training a stack: Adam on the sum of the layer losses.

use burn::optim::{Adam, AdamConfig, AdamState, Optimizer};
use burn::tensor::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::layer::{tensor_from, to_f64, LayerGrads, Rbm};
use crate::sample::draw_states;
use crate::stack::{Coupling, Dbn};
use crate::unit::UnitKind;
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

/// Where the negative phase (v' of F(v) - F(v')) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// The paper's loss: v' is one Gibbs step from the data (mean field or
    /// sampled, see [`Reconstruction`]).
    #[default]
    Paper,
    /// CD-k (Hinton 2002): h sampled from the data, k steps with sampled
    /// states; the statistics use the last sampled visible state and its
    /// hidden probabilities.
    Cd,
    /// Persistent CD (Tieleman 2008): one chain per batch row carried
    /// across updates, advanced `cd_k` sampled steps per update.
    Pcd,
    /// PCD with fast weights (Tieleman & Hinton 2009): the chains run on
    /// W + W_fast, where W_fast learns fast and decays.
    Fpcd,
    /// CD whose negative chains start from uniform noise at every update
    /// (not from the data) and run `cd_k` sampled Gibbs steps: short-run
    /// MCMC learning (Nijkamp et al. 2019), the discrete-unit form of
    /// Liao et al.'s noise start. It fits what `cd_k` steps from noise
    /// draw, so sample with the same number of steps from noise.
    NoiseCd,
    /// Liao et al. 2022's Gaussian-Bernoulli RBM rule: negative chains
    /// start from N(0, I) noise at every update and run `cd_k`
    /// Gibbs-Langevin steps (`langevin` table; see `langevin`).
    GibbsLangevin,
}

/// The paper's reconstruction v'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Reconstruction {
    /// v' = f_v(a + f_h(x(v)) W^T): mean field, no randomness.
    #[default]
    Mean,
    /// h ~ P(h | v), v' ~ P(v | h): one sampled Gibbs step (the paper's
    /// derivation).
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam (betas, epsilon), PyTorch's update.
    #[default]
    Adam,
    /// SGD with momentum (PyTorch's form: vel = m vel + g; w -= lr vel).
    Sgd,
}

/// Layers trained together or one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Every step updates every layer (the summed loss).
    #[default]
    Joint,
    /// Classic DBN (Hinton, Osindero & Teh 2006): layer l trains for
    /// `epochs` epochs on the frozen means of the layers below, then is frozen.
    Greedy,
}

/// How `lr` maps to each parameter's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrMode {
    /// One learning rate for every parameter.
    #[default]
    Plain,
    /// Each parameter's step is scaled so the update equals that of the
    /// binary RBM the sub-unit model reparametrises (W_bin = N k W,
    /// a_bin = k a, b_bin = k b): N = 1 and N = 255 then share one
    /// meaningful learning rate. Levels units are no reparametrisation of
    /// a binary RBM, so for them it is the same as `plain`.
    BinaryEquivalent,
}

/// SGD momentum: a constant, or Hinton's switch (e.g. 0.5 for the first 5
/// epochs, then 0.9).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Momentum {
    Constant(f64),
    Switch {
        initial: f64,
        #[serde(rename = "final")]
        final_: f64,
        /// Epochs at `initial` before switching to `final`.
        switch_after: usize,
    },
}

impl Default for Momentum {
    fn default() -> Self {
        Momentum::Constant(0.0)
    }
}

impl Momentum {
    /// The momentum at a 1-based epoch.
    pub fn at(&self, epoch: usize) -> f64 {
        match *self {
            Momentum::Constant(m) => m,
            Momentum::Switch {
                initial,
                final_,
                switch_after,
            } => {
                if epoch <= switch_after {
                    initial
                } else {
                    final_
                }
            }
        }
    }
    fn values(&self) -> [f64; 2] {
        match *self {
            Momentum::Constant(m) => [m, m],
            Momentum::Switch {
                initial, final_, ..
            } => [initial, final_],
        }
    }
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}
fn is_one(k: &usize) -> bool {
    *k == 1
}
fn default_one() -> usize {
    1
}
fn default_fast_decay() -> f64 {
    0.95
}
fn is_fast_decay(d: &f64) -> bool {
    *d == default_fast_decay()
}

/// Optimiser and schedule settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, mrbm_stage::ParamDocs)]
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
    // The toolbox below: each is left out of the canonical form (and so of
    // the stage key) at its default, so keys from before it stay valid.
    /// Training rule: paper, cd, pcd, fpcd.
    #[serde(default, skip_serializing_if = "is_default")]
    pub algorithm: Algorithm,
    /// Gibbs steps per update for cd / pcd / fpcd.
    #[serde(default = "default_one", skip_serializing_if = "is_one")]
    pub cd_k: usize,
    /// The paper's v': mean (mean field) or sample (one sampled Gibbs step).
    #[serde(default, skip_serializing_if = "is_default")]
    pub reconstruction: Reconstruction,
    /// adam or sgd.
    #[serde(default, skip_serializing_if = "is_default")]
    pub optimizer: OptimizerKind,
    /// SGD momentum: a number, or { initial = 0.5, final = 0.9,
    /// switch_after = 5 }; unused by Adam (see beta1).
    #[serde(default, skip_serializing_if = "is_default")]
    pub momentum: Momentum,
    /// L2 penalty on the weights (not the biases), added to the gradient.
    #[serde(default, skip_serializing_if = "is_default")]
    pub weight_decay: f64,
    /// joint (summed loss) or greedy (layer by layer, classic DBN).
    #[serde(default, skip_serializing_if = "is_default")]
    pub schedule: Schedule,
    /// plain or binary_equivalent per-parameter steps.
    #[serde(default, skip_serializing_if = "is_default")]
    pub lr_mode: LrMode,
    /// FPCD: learning rate of the fast weights (default: `lr`), plain SGD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_lr: Option<f64>,
    /// FPCD: the fast weights are multiplied by this after every update
    /// (default 0.95: Tieleman & Hinton 2009's 19/20).
    #[serde(default = "default_fast_decay", skip_serializing_if = "is_fast_decay")]
    pub fast_decay: f64,
    /// gibbs_langevin: the sampler's settings and gradient clipping, a
    /// table { steps, step_size, adjust, gradient, clip_norm } (see `langevin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub langevin: Option<crate::langevin::LangevinParams>,
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
            algorithm: Algorithm::Paper,
            cd_k: 1,
            reconstruction: Reconstruction::Mean,
            optimizer: OptimizerKind::Adam,
            momentum: Momentum::default(),
            weight_decay: 0.0,
            schedule: Schedule::Joint,
            lr_mode: LrMode::Plain,
            fast_lr: None,
            fast_decay: default_fast_decay(),
            langevin: None,
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
        if self.cd_k == 0 {
            return Err("cd_k must be at least 1".into());
        }
        if self.cd_k > 10_000 {
            return Err(format!("cd_k = {} is absurd (at most 10000)", self.cd_k));
        }
        if self.sampled_negative_phase()
            && (self.coupling == Coupling::Backprop || self.gradient == GradientMode::Autodiff)
        {
            return Err(format!(
                "algorithm = \"{}\" with sampled states needs coupling = \"detached\" and the closed-form gradient (gradient = \"auto\")",
                serde_json::to_value(self.algorithm).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            ));
        }
        if self.schedule == Schedule::Greedy && self.coupling == Coupling::Backprop {
            return Err(
                "schedule = \"greedy\" freezes lower layers: it needs coupling = \"detached\""
                    .into(),
            );
        }
        for m in self.momentum.values() {
            if !(m.is_finite() && (0.0..1.0).contains(&m)) {
                return Err(format!("momentum must be in [0, 1), got {m}"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "weight_decay must be a finite number >= 0, got {}",
                self.weight_decay
            ));
        }
        if let Some(f) = self.fast_lr {
            if !(f.is_finite() && f >= 0.0) {
                return Err(format!("fast_lr must be a finite number >= 0, got {f}"));
            }
        }
        if !(self.fast_decay.is_finite() && (0.0..=1.0).contains(&self.fast_decay)) {
            return Err(format!(
                "fast_decay must be in [0, 1], got {}",
                self.fast_decay
            ));
        }
        Ok(())
    }

    /// Whether the negative phase needs random draws (anything but the
    /// paper's mean-field reconstruction).
    pub fn sampled_negative_phase(&self) -> bool {
        self.algorithm != Algorithm::Paper || self.reconstruction == Reconstruction::Sample
    }

    /// Whether the gradient comes from burn's autodiff graph (anything
    /// but the closed form).
    pub fn uses_autodiff(&self) -> bool {
        !self.use_closed_form()
    }

    fn use_closed_form(&self) -> bool {
        match self.gradient {
            GradientMode::Auto => self.coupling == Coupling::Detached,
            GradientMode::Autodiff => false,
            GradientMode::ClosedForm => true,
        }
    }
}

/// One layer's optimiser and sampler state (what `resume` saves).
#[derive(Default, Clone)]
pub(crate) struct LayerState {
    pub(crate) w: Option<AdamState<4>>,
    pub(crate) a: Option<AdamState<1>>,
    pub(crate) b: Option<AdamState<1>>,
    // Adam state and SGD velocity of a learned log sigma.
    pub(crate) z: Option<AdamState<1>>,
    pub(crate) vz: Option<Tensor<1>>,
    // SGD velocities.
    pub(crate) vw: Option<Tensor<4>>,
    pub(crate) va: Option<Tensor<1>>,
    pub(crate) vb: Option<Tensor<1>>,
    // SGD velocities of the fused host step ([`Trainer::apply_host_sgd`]),
    // kept on the host between steps (w, a, b); the tensors above are then None.
    pub(crate) host_vel: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
    // Adam's moments of the fused host step (w, a, b); `w`, `a`, `b` above
    // are then None.
    pub(crate) host_adam: Option<[HostMoments; 3]>,
    // The layer's w, a, b as the last fused host update wrote them (taken by
    // the next host step instead of reading the tensors back; cleared by
    // any other update).
    pub(crate) host_wab: Option<crate::layer::HostWab>,
    // The fused sampled step's spare buffer for W's velocity (the one
    // before last), written whole by the next step instead of allocating
    // and zeroing a new one.
    pub(crate) spare_vel: Option<Vec<f32>>,
    // PCD / FPCD: the persistent chains' visible states, one row per batch row.
    pub(crate) chain: Option<Tensor<4>>,
    // FPCD: the fast weights.
    pub(crate) fast: Option<(Tensor<4>, Tensor<1>, Tensor<1>)>,
}

/// Per-parameter learning-rate factors of one layer (W, a, b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrScale {
    pub w: f64,
    pub a: f64,
    pub b: f64,
}

/// The `binary_equivalent` factors for one layer. With visible values of
/// range R_v (pixels: 255 x visible_scale; upper layers: the N below) and
/// hidden (N_h, k_h), the sub-unit model is the binary RBM W_bin = R_v k_h W,
/// b_bin = k_h b, a_bin = k_v a, and its loss is (N_h / k_h) times the
/// binary one (exactly when R_v / k_v = N_h / k_h, as for the defaults).
/// Adam is invariant to the loss factor, so its steps scale by 1 / J; SGD's
/// by 1 / (c J^2).
pub fn binary_equivalent_scale(dbn: &Dbn, layer: usize, optimizer: OptimizerKind) -> LrScale {
    let spec = &dbn.layers[layer].spec;
    let (vu, hu) = (spec.visible_unit, spec.hidden_unit);
    if matches!(vu.kind, UnitKind::Levels | UnitKind::DiscreteGaussian)
        || hu.kind == UnitKind::Levels
    {
        return LrScale {
            w: 1.0,
            a: 1.0,
            b: 1.0,
        };
    }
    let range_v = if layer == 0 {
        255.0 * dbn.spec.visible_scale
    } else {
        vu.n as f64
    };
    let jw = range_v * hu.k;
    let (ja, jb) = (vu.k, hu.k);
    match optimizer {
        OptimizerKind::Adam => LrScale {
            w: 1.0 / jw,
            a: 1.0 / ja,
            b: 1.0 / jb,
        },
        OptimizerKind::Sgd => {
            let c = hu.n as f64 / hu.k;
            LrScale {
                w: 1.0 / (c * jw * jw),
                a: 1.0 / (c * ja * ja),
                b: 1.0 / (c * jb * jb),
            }
        }
    }
}

/// A stack with its optimiser state.
pub struct Trainer {
    pub dbn: Dbn,
    pub params: OptimParams,
    optim: Adam,
    pub(crate) states: Vec<LayerState>,
    autodiff_device: Device,
    pub(crate) rng: ChaCha8Rng,
    /// Greedy schedule: the one layer being trained (the ones below are
    /// frozen and only map the data up; the ones above are untouched).
    pub active: Option<usize>,
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
        // The negative phase's draws have their own stream, apart from the
        // initialisation's and the batch order's.
        let rng = ChaCha8Rng::seed_from_u64(params.seed ^ 0x5ee_d0f9_1665u64);
        Trainer {
            dbn,
            params,
            optim,
            states,
            autodiff_device,
            rng,
            active: None,
        }
    }

    /// The gradients of the total loss for a batch of visible values, and
    /// the per-layer loss values (the paper's mean-field rule).
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
                    // (A learned sigma needs the closed form: the stage refuses autodiff.)
                    log_sigma: None,
                })
                .collect();
            (values, g)
        }
    }

    /// The negative-phase visible values for layer `i` given its data `v`,
    /// by the configured rule. Advances the persistent chains (PCD, FPCD).
    pub fn negative_phase(&mut self, i: usize, v: &Tensor<4>) -> Tensor<4> {
        self.negative_phase_with(i, v, None)
    }

    /// [`Self::negative_phase`] given, when the caller has it, the data's
    /// hidden input `x = pre_hidden(v)` of layer `i`: the rules whose first
    /// draw starts at the data (CD-k, the paper's sampled reconstruction)
    /// take it instead of computing the same product again (the same op on
    /// the same values: the same bits, which bench/identity.sh checks).
    fn negative_phase_with(&mut self, i: usize, v: &Tensor<4>, x: Option<&Tensor<4>>) -> Tensor<4> {
        let p = &self.params;
        let layer = &self.dbn.layers[i];
        let hu = layer.spec.hidden_unit;
        let rng = &mut self.rng;
        match p.algorithm {
            Algorithm::Paper => match p.reconstruction {
                Reconstruction::Mean => layer.down(layer.up(v.clone())),
                Reconstruction::Sample => {
                    let x = x.cloned().unwrap_or_else(|| layer.pre_hidden(v.clone()));
                    let h = draw_states(hu, x, rng);
                    layer.draw_visible(layer.pre_visible(h), rng)
                }
            },
            Algorithm::Cd => {
                // k alternations with sampled states; the statistics use the
                // last visible state and its hidden probabilities, so the
                // update tends to the likelihood gradient as k grows.
                let x = x.cloned().unwrap_or_else(|| layer.pre_hidden(v.clone()));
                let mut h = draw_states(hu, x, rng);
                let mut v_neg = layer.draw_visible(layer.pre_visible(h.clone()), rng);
                for _ in 1..p.cd_k {
                    h = draw_states(hu, layer.pre_hidden(v_neg), rng);
                    v_neg = layer.draw_visible(layer.pre_visible(h.clone()), rng);
                }
                v_neg
            }
            Algorithm::Pcd | Algorithm::Fpcd => {
                let st = &mut self.states[i];
                // Chains start at the first batch's data (Tieleman 2008 notes
                // any start works; data starts mix fastest).
                let mut chain = match st.chain.take() {
                    Some(c) if c.dims() == v.dims() => c,
                    _ => v.clone(),
                };
                let run_on = match (&p.algorithm, &st.fast) {
                    (Algorithm::Fpcd, Some((fw, fa, fb))) => layer.with_params(
                        layer.w.clone() + fw.clone(),
                        layer.a.clone() + fa.clone(),
                        layer.b.clone() + fb.clone(),
                    ),
                    _ => layer.clone(),
                };
                for _ in 0..p.cd_k {
                    let h = draw_states(hu, run_on.pre_hidden(chain), rng);
                    chain = run_on.draw_visible(run_on.pre_visible(h), rng);
                }
                st.chain = Some(chain.clone());
                chain
            }
            Algorithm::NoiseCd => {
                // Uniform values over each visible unit's range.
                let max = layer.spec.visible_unit.max_value();
                let noise: Vec<f64> = (0..v.dims().iter().product::<usize>())
                    .map(|_| rng.random::<f64>() * max)
                    .collect();
                let mut v_neg = tensor_from(noise, v.dims(), &v.device(), v.dtype());
                for _ in 0..p.cd_k {
                    let h = draw_states(hu, layer.pre_hidden(v_neg), rng);
                    v_neg = layer.draw_visible(layer.pre_visible(h), rng);
                }
                v_neg
            }
            Algorithm::GibbsLangevin => {
                let lp = p.langevin.clone().unwrap_or_default();
                crate::langevin::noise_start_negative(layer, v, p.cd_k, &lp, rng)
                    .unwrap_or_else(|e| panic!("gibbs_langevin: {e}"))
            }
        }
    }

    /// Loss, gradients and hidden means of layer `i` on its data `v`, by the
    /// configured rule; FPCD's fast weights learn here too.
    pub fn layer_step_grads(&mut self, i: usize, v: Tensor<4>) -> (f64, LayerGrads, Tensor<4>) {
        let (loss, g, h) = self.layer_step(i, v, None);
        let g = match g {
            StepGrads::Tensors(g) => g,
            StepGrads::Host(g) => g.tensors(&self.dbn.layers[i]),
            StepGrads::Applied(_) => unreachable!("no update without an epoch"),
        };
        (loss, g, h)
    }

    /// [`Self::layer_step_grads`], with the gradients left on the host where
    /// the host sampled step made them. With `apply` (the epoch), a step
    /// that can update the layer itself does (`StepGrads::Applied`).
    fn layer_step(
        &mut self,
        i: usize,
        v: Tensor<4>,
        apply: Option<usize>,
    ) -> (f64, StepGrads, Tensor<4>) {
        if !self.params.sampled_negative_phase() {
            let cached = self.states[i].host_wab.take();
            let layer = &self.dbn.layers[i];
            if let Some((out, params)) = layer.host_cd_raw(&v, cached) {
                // host_cd's step, its gradients kept on the host for the
                // fused update; the loss rounded through f32 as the tensor
                // path's loss tensor is.
                let [hc, hh, hw] = layer.spec.hidden_shape();
                let (bsz, device) = (v.dims()[0], v.device());
                let h = crate::layer::tensor_f32(out.hidden, [bsz, hc, hh, hw], &device);
                let g = HostGrads {
                    params,
                    gw: out.gw,
                    ga: out.ga,
                    gb: out.gb,
                };
                return (out.loss as f32 as f64, StepGrads::Host(g), h);
            }
            let (loss, g, h) = self.dbn.layers[i].cd_grads(v);
            return (to_f64(&loss)[0], StepGrads::Tensors(g), h);
        }
        if let Some(out) = self.host_sampled_step(i, &v, apply) {
            return out;
        }
        let x = self.dbn.layers[i].pre_hidden(v.clone());
        let v_neg = self.negative_phase_with(i, &v, Some(&x));
        let layer = &self.dbn.layers[i];
        let h = layer.spec.hidden_unit.mean(x.clone());
        let x_neg = layer.pre_hidden(v_neg.clone());
        let h_neg = layer.spec.hidden_unit.mean(x_neg.clone());
        let loss = (layer.free_energy_with_x(v.clone(), x)
            - layer.free_energy_with_x(v_neg.clone(), x_neg))
        .mean();
        let g = layer.stats_grads(v, h.clone(), v_neg, h_neg);
        let clip = self.params.langevin.as_ref().and_then(|l| l.clip_norm);
        let g = crate::langevin::clip_grads(g, clip);
        self.learn_fast_weights(i, &g);
        (to_f64(&loss)[0], StepGrads::Tensors(g), h)
    }

    /// FPCD: the fast weights decay and follow the gradient (other rules:
    /// nothing).
    fn learn_fast_weights(&mut self, i: usize, g: &LayerGrads) {
        if self.params.algorithm != Algorithm::Fpcd {
            return;
        }
        let layer = &self.dbn.layers[i];
        let lr = self.params.fast_lr.unwrap_or(self.params.lr);
        let d = self.params.fast_decay;
        let st = &mut self.states[i];
        let (fw, fa, fb) = st.fast.take().unwrap_or_else(|| {
            (
                layer.w.zeros_like(),
                layer.a.zeros_like(),
                layer.b.zeros_like(),
            )
        });
        st.fast = Some((
            fw.mul_scalar(d) - g.w.clone().mul_scalar(lr),
            fa.mul_scalar(d) - g.a.clone().mul_scalar(lr),
            fb.mul_scalar(d) - g.b.clone().mul_scalar(lr),
        ));
    }

    /// [`Self::layer_step_grads`] for a sampled rule on the host
    /// (`host_sampled`: packed products, counter-based f32 draws) where the
    /// layer can take it; None: the burn path (the Gibbs-Langevin rule, a
    /// learned sigma, level or discrete Gaussian hidden units, autodiff).
    fn host_sampled_step(
        &mut self,
        i: usize,
        v: &Tensor<4>,
        apply: Option<usize>,
    ) -> Option<(f64, StepGrads, Tensor<4>)> {
        use crate::host_sampled::{sampled_step, Draws, Start};
        use crate::layer::{tensor_f32, values_f32};
        let algorithm = self.params.algorithm;
        if algorithm == Algorithm::GibbsLangevin {
            return None;
        }
        let cached = self.states[i].host_wab.take();
        let layer = &self.dbn.layers[i];
        let params = layer.host_params_cached(v, cached)?;
        let spec = layer.spec.clone();
        let (dims, device) = (v.dims(), v.device());
        let batch = dims[0];
        let vh = values_f32(v);
        // One key per step from the trainer's stream: every draw of the step
        // is a function of (key, batch number, element).
        let mut draws = Draws::new(rand::RngCore::next_u64(&mut self.rng));
        let st = &mut self.states[i];
        let chain: Option<Vec<f32>> = match algorithm {
            Algorithm::Pcd | Algorithm::Fpcd => Some(match st.chain.take() {
                Some(c) if c.dims() == dims => values_f32(&c),
                // Chains start at the first batch's data.
                _ => vh.clone(),
            }),
            _ => None,
        };
        let fast = match (&algorithm, &st.fast) {
            (Algorithm::Fpcd, Some((fw, fa, fb))) => {
                let with = layer.with_params(
                    layer.w.clone() + fw.clone(),
                    layer.a.clone() + fa.clone(),
                    layer.b.clone() + fb.clone(),
                );
                with.host_params(v)
            }
            _ => None,
        };
        let (start, k) = match algorithm {
            Algorithm::Paper => (Start::Data, 1),
            Algorithm::Cd => (Start::Data, self.params.cd_k),
            Algorithm::Pcd | Algorithm::Fpcd => (
                Start::Chain(chain.as_deref().expect("chains of a persistent rule")),
                self.params.cd_k,
            ),
            Algorithm::NoiseCd => (Start::Noise, self.params.cd_k),
            Algorithm::GibbsLangevin => unreachable!("handled above"),
        };
        let host = params.layer(&spec);
        let chain_layer = fast
            .as_ref()
            .map_or_else(|| params.layer(&spec), |f| f.layer(&spec));
        let clip = self.params.langevin.as_ref().and_then(|l| l.clip_norm);
        // SGD on W fused into its gradient's product (`FusedSgd`), where the
        // step may update the layer and the update is plain SGD.
        let fuse = apply.filter(|_| {
            clip.is_none()
                && algorithm != Algorithm::Fpcd
                && self.params.optimizer == OptimizerKind::Sgd
        });
        let mut out = sampled_step(
            &host,
            &chain_layer,
            &vh,
            batch,
            (start, k),
            &mut draws,
            fuse.is_some(),
        );
        let [hc, hh, hw] = spec.hidden_shape();
        if let (true, Some(epoch), crate::host_sampled::Shape::Dense { visible, hidden }) =
            (out.gw_deferred, fuse, params.shape.clone())
        {
            let dims_w = (visible, hidden);
            let finite = self.fused_sgd_update(i, epoch, dims_w, params, (&vh, &mut out), batch);
            if chain.is_some() {
                self.states[i].chain = Some(tensor_f32(out.v_neg, dims, &device));
            }
            let h = tensor_f32(out.hidden, [batch, hc, hh, hw], &device);
            return Some((out.loss, StepGrads::Applied(finite), h));
        }
        if chain.is_some() {
            self.states[i].chain = Some(tensor_f32(out.v_neg, dims, &device));
        }
        let h = tensor_f32(out.hidden, [batch, hc, hh, hw], &device);
        if clip.is_none() && algorithm != Algorithm::Fpcd {
            // The update stays on the host too (`apply_host_sgd`).
            let g = HostGrads {
                params,
                gw: out.gw,
                ga: out.ga,
                gb: out.gb,
            };
            return Some((out.loss, StepGrads::Host(g), h));
        }
        let g = LayerGrads {
            w: tensor_f32(out.gw, spec.weight_shape(), &device),
            a: tensor_f32(out.ga, [spec.visible_channels()], &device),
            b: tensor_f32(out.gb, [hc], &device),
            log_sigma: None,
        };
        let g = crate::langevin::clip_grads(g, clip);
        self.learn_fast_weights(i, &g);
        Some((out.loss, StepGrads::Tensors(g), h))
    }

    /// One optimiser step on a batch; returns the per-layer losses (before
    /// the step; in a greedy phase, only the active layer's, the others 0).
    /// Fails on a non-finite loss or weight, naming the layer.
    pub fn step(
        &mut self,
        v: Tensor<4>,
        epoch: usize,
        batch: usize,
    ) -> Result<Vec<f64>, CoreError> {
        let nl = self.dbn.layers.len();
        let (losses, grads): (Vec<f64>, Vec<Option<StepGrads>>) = if let Some(act) = self.active {
            // Greedy: map the data up through the frozen layers below.
            let below = if act == 0 {
                v
            } else {
                self.dbn.up_to(v, act - 1)
            };
            let t = self.dbn.as_visible_of(act, below);
            let (loss, g, _) = self.layer_step(act, t, Some(epoch));
            let mut losses = vec![0.0; nl];
            losses[act] = loss;
            let mut grads: Vec<Option<StepGrads>> = (0..nl).map(|_| None).collect();
            grads[act] = Some(g);
            (losses, grads)
        } else if self.params.sampled_negative_phase() || self.params.use_closed_form() {
            // Layer by layer, each on the layer below's hidden means (the
            // closed-form gradients of [`Self::gradients`], kept on the
            // host where host_cd made them).
            let mut t = v;
            let mut losses = Vec::new();
            let mut grads = Vec::new();
            // One layer: its step may update it at once (no other layer's
            // loss can then stop the update).
            let apply = (nl == 1).then_some(epoch);
            for i in 0..nl {
                let vi = self.dbn.as_visible_of(i, t);
                let (loss, g, h) = self.layer_step(i, vi, apply);
                losses.push(loss);
                grads.push(Some(g));
                t = h;
            }
            (losses, grads)
        } else {
            let (l, g) = self.gradients(v);
            // Adam's update on the host where the parameters are host
            // values (the same bits as burn's Adam, tested), as the
            // closed-form path does.
            let host = self.params.optimizer == OptimizerKind::Adam;
            let g = g
                .into_iter()
                .zip(&self.dbn.layers)
                .map(|(g, layer)| {
                    let params = host.then(|| layer.host_param_values()).flatten();
                    Some(match params {
                        Some(params) if g.w.dtype() == DType::F32 => StepGrads::Host(HostGrads {
                            params,
                            gw: crate::layer::values_f32(&g.w),
                            ga: crate::layer::values_f32(&g.a),
                            gb: crate::layer::values_f32(&g.b),
                        }),
                        _ => StepGrads::Tensors(g),
                    })
                })
                .collect();
            (l, g)
        };
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
        for (i, g) in grads.into_iter().enumerate() {
            if let Some(g) = g {
                let finite = match g {
                    StepGrads::Applied(finite) => finite,
                    StepGrads::Host(g) => self.apply_host(i, g, epoch),
                    StepGrads::Tensors(g) => {
                        self.apply(i, g, epoch);
                        let layer = &self.dbn.layers[i];
                        // One read-back per layer: a NaN or Inf anywhere makes the sum non-finite.
                        let check =
                            layer.w.clone().sum() + layer.a.clone().sum() + layer.b.clone().sum();
                        to_f64(&check)[0].is_finite()
                    }
                };
                if !finite {
                    return Err(CoreError::NonFinite {
                        epoch,
                        batch,
                        layer: i + 1,
                        what: "a weight or bias became NaN or infinite".into(),
                    });
                }
            }
        }
        Ok(losses)
    }

    /// Update layer `i`'s parameters from its loss gradient.
    fn apply(&mut self, i: usize, mut g: LayerGrads, epoch: usize) {
        self.states[i].host_wab = None;
        self.velocity_to_tensors(i);
        let p = &self.params;
        let scale = self.lr_scale(i);
        let lr = p.lr;
        let layer = &mut self.dbn.layers[i];
        if p.weight_decay > 0.0 {
            g.w = g.w + layer.w.clone().mul_scalar(p.weight_decay);
        }
        let st = &mut self.states[i];
        match p.optimizer {
            OptimizerKind::Adam => {
                let (w, s) = self
                    .optim
                    .step(lr * scale.w, layer.w.clone(), g.w, st.w.take());
                layer.w = w;
                st.w = s;
                let (a, s) = self
                    .optim
                    .step(lr * scale.a, layer.a.clone(), g.a, st.a.take());
                layer.a = a;
                st.a = s;
                let (b, s) = self
                    .optim
                    .step(lr * scale.b, layer.b.clone(), g.b, st.b.take());
                layer.b = b;
                st.b = s;
                if let (Some(z), Some(gz)) = (layer.log_sigma.clone(), g.log_sigma) {
                    let (z, s) = self.optim.step(lr * scale.a, z, gz, st.z.take());
                    layer.log_sigma = Some(z);
                    st.z = s;
                }
            }
            OptimizerKind::Sgd => {
                let m = p.momentum.at(epoch);
                fn vel<const D: usize>(old: Option<Tensor<D>>, g: Tensor<D>, m: f64) -> Tensor<D> {
                    match old {
                        Some(v) if m > 0.0 => v.mul_scalar(m) + g,
                        _ => g,
                    }
                }
                let vw = vel(st.vw.take(), g.w, m);
                let va = vel(st.va.take(), g.a, m);
                let vb = vel(st.vb.take(), g.b, m);
                layer.w = layer.w.clone() - vw.clone().mul_scalar(lr * scale.w);
                layer.a = layer.a.clone() - va.clone().mul_scalar(lr * scale.a);
                layer.b = layer.b.clone() - vb.clone().mul_scalar(lr * scale.b);
                st.vw = Some(vw);
                st.va = Some(va);
                st.vb = Some(vb);
                if let (Some(z), Some(gz)) = (layer.log_sigma.clone(), g.log_sigma) {
                    let vz = vel(st.vz.take(), gz, m);
                    layer.log_sigma = Some(z - vz.clone().mul_scalar(lr * scale.a));
                    st.vz = Some(vz);
                }
            }
        }
    }
}

/// A layer's gradients from the host sampled step, with the parameters
/// that step read (so the SGD update reads no tensor).
pub(crate) struct HostGrads {
    params: crate::layer::HostParams,
    gw: Vec<f32>,
    ga: Vec<f32>,
    gb: Vec<f32>,
}

impl HostGrads {
    fn tensors(self, layer: &Rbm) -> LayerGrads {
        use crate::layer::tensor_f32;
        let (spec, device) = (&layer.spec, layer.w.device());
        LayerGrads {
            w: tensor_f32(self.gw, spec.weight_shape(), &device),
            a: tensor_f32(self.ga, [spec.visible_channels()], &device),
            b: tensor_f32(self.gb, [spec.hidden_channels()], &device),
            log_sigma: None,
        }
    }
}

/// A layer's gradients for one step: tensors, or host values
/// ([`Trainer::apply_host_sgd`] updates from those without a tensor op).
// One per layer and step: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum StepGrads {
    Tensors(LayerGrads),
    Host(HostGrads),
    /// The step already updated the layer (the fused host SGD step):
    /// whether every new parameter is finite.
    Applied(bool),
}

impl Trainer {
    /// Moves a layer's host SGD velocities back into tensors (before a
    /// tensor-path update reads them).
    pub(crate) fn velocity_to_tensors(&mut self, i: usize) {
        use crate::layer::tensor_f32;
        let st = &mut self.states[i];
        if let Some([mw, ma, mb]) = st.host_adam.take() {
            let layer = &self.dbn.layers[i];
            let (spec, device) = (&layer.spec, layer.w.device());
            st.w = mw.tensors(spec.weight_shape(), &device);
            st.a = ma.tensors([spec.visible_channels()], &device);
            st.b = mb.tensors([spec.hidden_channels()], &device);
        }
        if let Some((w, a, b)) = st.host_vel.take() {
            let layer = &self.dbn.layers[i];
            let (spec, device) = (&layer.spec, layer.w.device());
            st.vw = Some(tensor_f32(w, spec.weight_shape(), &device));
            st.va = Some(tensor_f32(a, [spec.visible_channels()], &device));
            st.vb = Some(tensor_f32(b, [spec.hidden_channels()], &device));
        }
    }

    /// Layer i's learning-rate factors for w, a and b.
    fn lr_scale(&self, i: usize) -> LrScale {
        match self.params.lr_mode {
            LrMode::Plain => LrScale {
                w: 1.0,
                a: 1.0,
                b: 1.0,
            },
            LrMode::BinaryEquivalent => {
                binary_equivalent_scale(&self.dbn, i, self.params.optimizer)
            }
        }
    }

    /// Layer i's parameters from the host values a fused step updated.
    /// The values stay with the trainer for the next host step
    /// (`LayerState::host_wab`).
    fn set_host_params(&mut self, i: usize, w: Vec<f32>, a: Vec<f32>, b: Vec<f32>) {
        use crate::layer::tensor_f32;
        let layer = &mut self.dbn.layers[i];
        let device = layer.w.device();
        // W's copy over the pool: one copy of W a step, on the critical
        // path of a step that is otherwise parallel.
        let wc = {
            use rayon::prelude::*;
            w.par_iter()
                .with_min_len(1 << 16)
                .copied()
                .collect::<Vec<f32>>()
        };
        layer.w = tensor_f32(wc, layer.spec.weight_shape(), &device);
        layer.a = tensor_f32(a.clone(), [layer.spec.visible_channels()], &device);
        layer.b = tensor_f32(b.clone(), [layer.spec.hidden_channels()], &device);
        self.states[i].host_wab = Some((w, a, b));
    }

    fn apply_host(&mut self, i: usize, g: HostGrads, epoch: usize) -> bool {
        let p = &self.params;
        let scale = self.lr_scale(i);
        match p.optimizer {
            OptimizerKind::Sgd => self.apply_host_sgd(i, g, epoch, scale),
            OptimizerKind::Adam => self.apply_host_adam(i, g, scale),
        }
    }

    /// Burn's `Adam::step` (as configured in [`Trainer::new`]: no decoupled
    /// weight decay, no AMSGrad) on the host, per element the same f32
    /// operations: m1 = m1 b1 + g (1 - b1), m2 = m2 b2 + g^2 (1 - b2) (at
    /// t = 1 only the second terms), s = sqrt(1 - b2^t), c = s / (1 - b1^t),
    /// w = w - ((m1 c) / (sqrt(m2) + eps s)) lr; after the trainer's own
    /// weight decay g + w wd. The same bits (tested end to end).
    fn apply_host_adam(&mut self, i: usize, g: HostGrads, scale: LrScale) -> bool {
        let p = &self.params;
        let (b1, b2, eps) = (p.beta1 as f32, p.beta2 as f32, p.epsilon as f32);
        let (lr, wd) = (p.lr, p.weight_decay);
        let st = &mut self.states[i];
        let [mut mw, mut ma, mut mb] = match st.host_adam.take() {
            Some(m) => m,
            None => [
                HostMoments::of(st.w.take()),
                HostMoments::of(st.a.take()),
                HostMoments::of(st.b.take()),
            ],
        };
        let HostGrads {
            params,
            mut gw,
            ga,
            gb,
        } = g;
        let crate::layer::HostParams {
            mut w,
            mut a,
            mut b,
            ..
        } = params;
        if wd > 0.0 {
            let d = wd as f32;
            for (gi, wi) in gw.iter_mut().zip(&w) {
                *gi += *wi * d;
            }
        }
        let cfg = (b1, b2, eps);
        let finite = adam_fused(&mut w, &gw, &mut mw, cfg, (lr * scale.w) as f32)
            & adam_fused(&mut a, &ga, &mut ma, cfg, (lr * scale.a) as f32)
            & adam_fused(&mut b, &gb, &mut mb, cfg, (lr * scale.b) as f32);
        self.set_host_params(i, w, a, b);
        self.states[i].host_adam = Some([mw, ma, mb]);
        finite
    }

    /// The fused SGD update of a dense layer after a sampled step that left
    /// W's gradient to it (`SampledStep::gw_deferred`): W stepped inside its
    /// gradient's product (`host_sampled::dense_weight_step`), a and b as
    /// [`Self::apply_host_sgd`] steps them, the new parameters and
    /// velocities kept. Whether every new parameter is finite.
    fn fused_sgd_update(
        &mut self,
        i: usize,
        epoch: usize,
        (visible, hidden): (usize, usize),
        params: crate::layer::HostParams,
        (vh, out): (&[f32], &mut crate::host_sampled::SampledStep),
        batch: usize,
    ) -> bool {
        use crate::host_sampled::{dense_weight_step, FusedSgd};
        let m = self.params.momentum.at(epoch);
        let vel = self.take_host_velocity(i, m);
        let mut vel_new = self.states[i].spare_vel.take().unwrap_or_default();
        vel_new.resize(visible * hidden, 0.0);
        let scale = self.lr_scale(i);
        let (lr, wd) = (self.params.lr, self.params.weight_decay);
        let crate::layer::HostParams {
            mut w,
            mut a,
            mut b,
            ..
        } = params;
        let finite_w = dense_weight_step(
            (visible, hidden),
            (vh, &out.hidden, &out.v_neg, &out.hidden_neg),
            batch,
            FusedSgd {
                w: &mut w,
                vel_new: &mut vel_new,
                vel: vel.as_ref().map(|v| &v.0[..]),
                wd: (wd > 0.0).then_some(wd as f32),
                m: m as f32,
                lr: (lr * scale.w) as f32,
            },
        );
        let m = m as f32;
        let (va, vb, old_vw) = match vel {
            Some((w, a, b)) => (Some(a), Some(b), Some(w)),
            None => (None, None, None),
        };
        let (mut ga, mut gb) = (std::mem::take(&mut out.ga), std::mem::take(&mut out.gb));
        let (lr_a, lr_b) = ((lr * scale.a) as f32, (lr * scale.b) as f32);
        let finite = finite_w
            & sgd_fused(&mut a, &mut ga, va.as_deref(), None, m, lr_a)
            & sgd_fused(&mut b, &mut gb, vb.as_deref(), None, m, lr_b);
        self.set_host_params(i, w, a, b);
        let st = &mut self.states[i];
        st.host_vel = Some((vel_new, ga, gb));
        st.spare_vel = old_vw;
        finite
    }

    /// Layer i's SGD velocities as host values (w, a, b), taken out of the
    /// state; None before the first step, and when the momentum `m` is 0
    /// (the tensor path ignores the old velocity then).
    fn take_host_velocity(&mut self, i: usize, m: f64) -> Option<crate::layer::HostWab> {
        use crate::layer::values_f32;
        let st = &mut self.states[i];
        let vel = st
            .host_vel
            .take()
            .or_else(|| match (st.vw.take(), st.va.take(), st.vb.take()) {
                (Some(w), Some(a), Some(b)) => {
                    Some((values_f32(&w), values_f32(&a), values_f32(&b)))
                }
                _ => None,
            });
        vel.filter(|_| m > 0.0)
    }

    /// The SGD step of [`Self::apply`] on the host for gradients the host
    /// sampled step made: per element the same f32 operations as the tensor
    /// path (g + w wd, v m + g, w - v lr, scalars cast to f32 the same way),
    /// fused into one pass: the same bits (tested). Returns whether every
    /// new parameter is finite.
    fn apply_host_sgd(&mut self, i: usize, g: HostGrads, epoch: usize, scale: LrScale) -> bool {
        let p = &self.params;
        let m = p.momentum.at(epoch);
        let (lr, wd) = (p.lr, p.weight_decay);
        let vel = self.take_host_velocity(i, m);
        let HostGrads {
            params,
            mut gw,
            mut ga,
            mut gb,
        } = g;
        let crate::layer::HostParams {
            mut w,
            mut a,
            mut b,
            ..
        } = params;
        let m = m as f32;
        let wd = (wd > 0.0).then_some(wd as f32);
        let (vw, va, vb) = match &vel {
            Some((w, a, b)) => (Some(&w[..]), Some(&a[..]), Some(&b[..])),
            None => (None, None, None),
        };
        let finite = sgd_fused(&mut w, &mut gw, vw, wd, m, (lr * scale.w) as f32)
            & sgd_fused(&mut a, &mut ga, va, None, m, (lr * scale.a) as f32)
            & sgd_fused(&mut b, &mut gb, vb, None, m, (lr * scale.b) as f32);
        self.set_host_params(i, w, a, b);
        // The gradient buffers now hold the new velocities.
        self.states[i].host_vel = Some((gw, ga, gb));
        finite
    }
}

/// Adam's moments of one parameter on the host; time 0: no step yet.
#[derive(Clone, Default)]
pub struct HostMoments {
    pub time: usize,
    pub m1: Vec<f32>,
    pub m2: Vec<f32>,
}

impl HostMoments {
    /// The host copy of burn's Adam state (none yet: time 0).
    fn of<const D: usize>(s: Option<AdamState<D>>) -> HostMoments {
        use crate::layer::values_f32;
        s.map(|s| HostMoments {
            time: s.momentum.time,
            m1: values_f32(&s.momentum.moment_1),
            m2: values_f32(&s.momentum.moment_2),
        })
        .unwrap_or_default()
    }

    fn tensors<const D: usize>(self, shape: [usize; D], device: &Device) -> Option<AdamState<D>> {
        use crate::layer::tensor_f32;
        use burn::optim::AdaptiveMomentumState;
        (self.time > 0).then(|| {
            AdamState::new(AdaptiveMomentumState::new(
                self.time,
                tensor_f32(self.m1, shape, device),
                tensor_f32(self.m2, shape, device),
            ))
        })
    }
}

/// One fused Adam step of one parameter (see [`Trainer::apply_host_adam`]).
/// Whether every new w is finite.
pub fn adam_fused(
    w: &mut [f32],
    g: &[f32],
    m: &mut HostMoments,
    (b1, b2, eps): (f32, f32, f32),
    lr: f32,
) -> bool {
    let (f1, f2) = (1.0 - b1, 1.0 - b2);
    if m.time == 0 {
        m.m1 = g.iter().map(|&gi| gi * f1).collect();
        m.m2 = g.iter().map(|&gi| (gi * gi) * f2).collect();
    } else {
        for ((m1, m2), &gi) in m.m1.iter_mut().zip(m.m2.iter_mut()).zip(g) {
            *m1 = *m1 * b1 + gi * f1;
            *m2 = *m2 * b2 + (gi * gi) * f2;
        }
    }
    m.time += 1;
    let t = m.time as i32;
    let bc2 = (1.0 - b2.powi(t)).sqrt();
    let c = bc2 / (1.0 - b1.powi(t));
    let e = eps * bc2;
    let mut finite = true;
    for ((wi, &m1), &m2) in w.iter_mut().zip(&m.m1).zip(&m.m2) {
        let step = (m1 * c) / (m2.sqrt() + e);
        *wi -= step * lr;
        finite &= wi.is_finite();
    }
    finite
}

/// One fused SGD pass: g <- g + w wd (when `wd`), g <- v m + g (when `v`),
/// w <- w - g lr; `g` ends as the new velocity. Whether every new w is finite.
pub fn sgd_fused(
    w: &mut [f32],
    g: &mut [f32],
    v: Option<&[f32]>,
    wd: Option<f32>,
    m: f32,
    lr: f32,
) -> bool {
    assert_eq!(w.len(), g.len(), "sgd_fused: lengths differ");
    // g * 1 is g: the same bits as without the scaling.
    sgd_row(w, g, v, (1.0, wd, m, lr))
}

/// g <- g * scale, then [`sgd_fused`]'s element step of w in place (a row
/// of the fused gradient-and-SGD step, `host_sampled::FusedSgd`, or a whole
/// parameter with scale 1). Whether every new w is finite.
/// [`mrbm_kernels::math::sgd_row`] at the CPU's widest level (this crate is
/// built for the baseline, so its own loops ran in 128-bit vectors).
pub(crate) fn sgd_row(
    w: &mut [f32],
    g: &mut [f32],
    v: Option<&[f32]>,
    hyper: (f32, Option<f32>, f32, f32),
) -> bool {
    mrbm_kernels::math::sgd_row(mrbm_kernels::math::Level::detect(), w, g, v, hyper)
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

/// Where a training run stands between two batches: the next batch to
/// run (greedy phase, epoch within the phase, batch within the epoch's
/// order), how many batches are done, and the running loss shown in the
/// progress bar. With the trainer's state and the history so far it is all
/// a resumed run needs to continue bit for bit (see `resume`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Cursor {
    pub phase: usize,
    pub epoch: usize,
    pub batch: usize,
    pub done: u64,
    pub running: Option<f64>,
}

impl Cursor {
    /// Whole epochs done (across greedy phases), for "resumed from epoch k".
    pub fn epochs_done(&self, epochs_per_phase: usize) -> usize {
        self.phase * epochs_per_phase + self.epoch
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
    on_batch: impl FnMut(u64, u64, f64) -> Result<(), CoreError>,
) -> Result<History, CoreError> {
    train_images_from(
        trainer,
        pixels,
        n,
        dtype,
        (Cursor::default(), History::default()),
        on_batch,
        |_, _, _| Ok(()),
    )
}

/// [`train_images`] from a cursor and the history up to it (a resumed
/// run), calling `after_batch(trainer, next, history)` after every batch
/// with the cursor of the batch to come: the place to write a checkpoint.
/// `on_batch` runs after it, so a cancelled run's last checkpoint can be
/// its last batch.
pub fn train_images_from(
    trainer: &mut Trainer,
    pixels: &[u8],
    n: usize,
    dtype: DType,
    start: (Cursor, History),
    mut on_batch: impl FnMut(u64, u64, f64) -> Result<(), CoreError>,
    mut after_batch: impl FnMut(&Trainer, &Cursor, &History) -> Result<(), CoreError>,
) -> Result<History, CoreError> {
    let p = trainer.params.clone();
    let device = trainer.dbn.device();
    let image_len: usize = trainer.dbn.spec.input.iter().product();
    let bs = p.batch_size.min(n.max(1));
    let batches = n / bs; // drop the ragged last batch: every step sees bs images
                          // Greedy: each layer in turn gets `epochs` epochs; joint: one phase.
    let phases: Vec<Option<usize>> = match p.schedule {
        Schedule::Joint => vec![None],
        Schedule::Greedy => (0..trainer.dbn.layers.len()).map(Some).collect(),
    };
    let total = (batches * p.epochs * phases.len()) as u64;
    let (cursor, mut hist) = start;
    let mut running: Option<f64> = cursor.running;
    let mut done = cursor.done;
    let mut buf = vec![0u8; bs * image_len];
    for (phase, active) in phases.iter().enumerate().skip(cursor.phase) {
        trainer.active = *active;
        let resumed_phase = phase == cursor.phase;
        let first_epoch = if resumed_phase { cursor.epoch } else { 0 };
        if active.is_some() && !(resumed_phase && (cursor.epoch > 0 || cursor.batch > 0)) {
            running = None;
        }
        for epoch_in_phase in first_epoch..p.epochs {
            // History epochs run on across phases; the batch order restarts.
            let epoch = phase * p.epochs + epoch_in_phase;
            let order = batch_order(n, p.seed, epoch_in_phase);
            let first_batch = if resumed_phase && epoch_in_phase == cursor.epoch {
                cursor.batch
            } else {
                0
            };
            for b in first_batch..batches {
                for (j, &i) in order[b * bs..(b + 1) * bs].iter().enumerate() {
                    buf[j * image_len..(j + 1) * image_len]
                        .copy_from_slice(&pixels[i * image_len..(i + 1) * image_len]);
                }
                let v = trainer.dbn.pixels_to_visible(&buf, bs, &device, dtype);
                let losses = trainer.step(v, epoch_in_phase + 1, b + 1)?;
                let t: f64 = losses.iter().sum();
                running = Some(match running {
                    None => t,
                    Some(r) => 0.95 * r + 0.05 * t,
                });
                hist.batches.push((epoch, b, losses));
                done += 1;
                let next = if b + 1 < batches {
                    (phase, epoch_in_phase, b + 1)
                } else if epoch_in_phase + 1 < p.epochs {
                    (phase, epoch_in_phase + 1, 0)
                } else {
                    (phase + 1, 0, 0)
                };
                let at = Cursor {
                    phase: next.0,
                    epoch: next.1,
                    batch: next.2,
                    done,
                    running,
                };
                after_batch(trainer, &at, &hist)?;
                on_batch(done, total, running.unwrap_or(t))?;
            }
        }
    }
    trainer.active = None;
    Ok(hist)
}

/// What [`fit`] reports to and asks of whoever runs it (the `train` stage
/// adapts its StageContext): messages, progress, cancellation.
pub trait FitEnv {
    fn log(&self, line: String);
    fn warn(&self, line: String);
    /// Training starts (or resumes) at step `done` of `total`.
    fn start(&self, total: u64, done: u64);
    /// `done` of `total` steps, the running loss.
    fn progress(&self, done: u64, total: u64, running: f64);
    /// Whether the run was cancelled (Ctrl-C): training checkpoints, stops.
    fn cancelled(&self) -> bool;
}

/// How a fresh stack starts and where [`fit`] checkpoints for a resume.
pub struct FitSetup<'a> {
    /// Standard deviation of the initial weights.
    pub init_std: f64,
    /// Gaussian pixels with a learned sigma (log sigma starts at 0).
    pub learn_sigma: bool,
    /// The resume checkpoint (none: no resume, no checkpoints).
    pub resume_file: Option<&'a std::path::Path>,
    /// Checkpoint every this many epochs...
    pub checkpoint_every: Option<usize>,
    /// ... and/or every this many minutes (10 when neither is given).
    pub checkpoint_minutes: Option<f64>,
}

/// A trained stack and its loss history.
pub struct Fitted {
    pub trainer: Trainer,
    pub hist: History,
}

/// Train a stack of `spec` on the first `n` images of `pixels` with
/// `optim`: resume from `setup.resume_file` when it holds a checkpoint of
/// this run, else initialise; checkpoint on the cadence `setup` gives and
/// on cancellation; report through `env`.
pub fn fit(
    spec: crate::stack::StackSpec,
    optim: &OptimParams,
    setup: &FitSetup,
    (pixels, n): (&[u8], usize),
    device: &Device,
    env: &dyn FitEnv,
) -> Result<Fitted, CoreError> {
    let (mut trainer, start) = start_trainer(spec, optim, setup, (pixels, n), device, env);
    let bs = optim.batch_size.min(n);
    let phases = match optim.schedule {
        Schedule::Joint => 1,
        Schedule::Greedy => trainer.dbn.layers.len(),
    };
    env.start(((n / bs) * optim.epochs * phases) as u64, start.0.done);
    let every = setup.checkpoint_every;
    let minutes = setup
        .checkpoint_minutes
        .or(if every.is_none() { Some(10.0) } else { None });
    let mut last_save = std::time::Instant::now();
    let mut save_failed = false;
    let hist = train_images_from(
        &mut trainer,
        pixels,
        n,
        DType::F32,
        start,
        |done, total, running| {
            env.progress(done, total, running);
            // One log line per epoch as it ends (`mrbm run -v` echoes it).
            let per_epoch = (n / bs).max(1) as u64;
            if done % per_epoch == 0 {
                env.log(format!(
                    "epoch {} of {}: running loss {running:.6}",
                    done / per_epoch,
                    total / per_epoch
                ));
            }
            if env.cancelled() {
                return Err(mrbm_stage::StageError::Cancelled.into());
            }
            Ok(())
        },
        |tr, cursor, hist| {
            let Some(file) = setup.resume_file else {
                return Ok(());
            };
            if cursor.phase >= phases || save_failed {
                return Ok(()); // finished: the model itself is next
            }
            let epoch_end = cursor.batch == 0;
            let due = env.cancelled()
                || (epoch_end && every.is_some_and(|k| cursor.epochs_done(optim.epochs) % k == 0))
                || minutes.is_some_and(|m| last_save.elapsed().as_secs_f64() >= m * 60.0);
            if due {
                match crate::resume::save(tr, cursor, hist, file) {
                    Ok(()) => env.log(format!(
                        "checkpoint at epoch {}, batch {} ({} batches done)",
                        cursor.epochs_done(optim.epochs),
                        cursor.batch,
                        cursor.done
                    )),
                    Err(e) => {
                        // Training goes on; it just cannot resume.
                        env.warn(format!("could not write a checkpoint: {e}"));
                        save_failed = true;
                    }
                }
                last_save = std::time::Instant::now();
            }
            Ok(())
        },
    )?;
    Ok(Fitted { trainer, hist })
}

/// Discrete Gaussian pixels start with the visible bias whose lone unit has
/// the data's mean value per visible channel: from a zero bias (mode at
/// black, values up to R) CD's first steps are all positive phase and the
/// hidden units saturate before the bias catches up. None for other units.
pub fn data_visible_bias(dbn: &Dbn, (pixels, n): (&[u8], usize)) -> Option<Vec<f32>> {
    let layer = &dbn.layers[0];
    let unit = layer.spec.visible_unit;
    if unit.kind != UnitKind::DiscreteGaussian || n == 0 {
        return None;
    }
    let channels = layer.spec.visible_channels();
    let len = pixels.len() / n;
    let per = len / channels.max(1);
    let rows = n.min(2000);
    let scale = dbn.spec.visible_scale;
    let bias = (0..channels)
        .map(|c| {
            let sum: f64 = (0..rows)
                .flat_map(|r| &pixels[r * len + c * per..r * len + (c + 1) * per])
                .map(|&p| p as f64)
                .sum();
            let mean = sum / (rows * per) as f64 * scale;
            crate::ais::bias_for_mean(unit, mean) as f32
        })
        .collect();
    Some(bias)
}

/// The trainer and the cursor to start from: the checkpoint's when
/// `setup.resume_file` holds one that fits, else a fresh stack.
fn start_trainer(
    spec: crate::stack::StackSpec,
    optim: &OptimParams,
    setup: &FitSetup,
    data: (&[u8], usize),
    device: &Device,
    env: &dyn FitEnv,
) -> (Trainer, (Cursor, History)) {
    let restored = match setup.resume_file.filter(|f| f.exists()) {
        Some(f) => match crate::resume::load(f, &spec, optim, device) {
            Ok(r) => Some(r),
            Err(e) => {
                env.warn(format!(
                    "not resuming from the checkpoint ({e}): training from the start"
                ));
                None
            }
        },
        None => None,
    };
    match restored {
        Some((t, cursor, hist)) => {
            env.log(format!(
                "resumed from epoch {} ({} batches done)",
                cursor.epochs_done(optim.epochs),
                cursor.done
            ));
            (t, (cursor, hist))
        }
        None => {
            let mut dbn = Dbn::init(spec, setup.init_std, optim.seed, device, DType::F32);
            if let Some(a) = data_visible_bias(&dbn, data) {
                dbn.layers[0].a = Tensor::from_data(
                    burn::tensor::TensorData::new(a, [dbn.layers[0].a.dims()[0]]),
                    (device, DType::F32),
                );
            }
            if setup.learn_sigma {
                // log sigma = 0: sigma starts at the data's (standardised) 1.
                let c = dbn.layers[0].spec.visible_channels();
                dbn.layers[0].log_sigma = Some(Tensor::zeros([c], (device, DType::F32)));
            }
            (Trainer::new(dbn, optim.clone()), Default::default())
        }
    }
}

#[cfg(test)]
mod host_values_between_steps {
    use super::*;
    use crate::layer::values_f32;
    use crate::stack::StackParams;

    fn trainer(algorithm: Algorithm, optimizer: OptimizerKind) -> (Trainer, Tensor<4>) {
        let params = StackParams {
            conv_channels: vec![],
            dense: vec![24, 12],
            ..StackParams::default()
        };
        let spec = params.build_spec([1, 6, 6]).expect("spec");
        let device = Device::flex();
        let dbn = Dbn::init(spec, 0.1, 3, &device, DType::F32);
        let tr = Trainer::new(
            dbn,
            OptimParams {
                batch_size: 8,
                algorithm,
                optimizer,
                momentum: Momentum::Constant(0.9),
                weight_decay: 0.001,
                lr: 0.05,
                ..OptimParams::default()
            },
        );
        // Mostly zeros, as digits are (the sparse products' case).
        let px: Vec<u8> = (0..8 * 36)
            .map(|i| {
                if (i * 7919) % 5 == 0 {
                    ((i * 31) % 256) as u8
                } else {
                    0
                }
            })
            .collect();
        let v = tr.dbn.pixels_to_visible(&px, 8, &device, DType::F32);
        (tr, v)
    }

    fn bits(tr: &Trainer) -> Vec<Vec<u32>> {
        tr.dbn
            .layers
            .iter()
            .flat_map(|l| {
                [values_f32(&l.w), values_f32(&l.a), values_f32(&l.b)]
                    .map(|x| x.into_iter().map(f32::to_bits).collect::<Vec<u32>>())
            })
            .collect()
    }

    /// The w, a, b a fused host update leaves with the trainer are the
    /// values it wrote into the tensors, and training from them gives the
    /// bits of training that reads the tensors back every step.
    #[test]
    fn kept_values_match_the_tensors_and_give_the_same_training() {
        for (algorithm, optimizer) in [
            (Algorithm::Cd, OptimizerKind::Sgd),
            (Algorithm::Pcd, OptimizerKind::Sgd),
            (Algorithm::Paper, OptimizerKind::Adam),
        ] {
            let (mut kept, v) = trainer(algorithm, optimizer);
            let (mut read, _) = trainer(algorithm, optimizer);
            for step in 0..4 {
                kept.step(v.clone(), 1, step).expect("step");
                for st in &mut read.states {
                    st.host_wab = None;
                }
                read.step(v.clone(), 1, step).expect("step");
                for (i, layer) in kept.dbn.layers.iter().enumerate() {
                    let (w, a, b) = kept.states[i]
                        .host_wab
                        .as_ref()
                        .unwrap_or_else(|| panic!("{algorithm:?}: layer {i} kept no host values"));
                    assert_eq!(
                        (w, a, b),
                        (
                            &values_f32(&layer.w),
                            &values_f32(&layer.a),
                            &values_f32(&layer.b)
                        ),
                        "{algorithm:?}: layer {i}'s kept values differ from its tensors"
                    );
                }
            }
            assert_eq!(bits(&kept), bits(&read), "{algorithm:?}: training moved");
        }
    }

    /// A one-layer dense RBM trained by SGD steps W inside its gradient's
    /// product (`host_sampled::FusedSgd`): the same loss and the same bits
    /// as the gradient followed by the separate SGD passes, for every
    /// sampled rule (the paper's with its sampled reconstruction), with and without momentum and weight decay, the
    /// momentum switching on the way.
    #[test]
    fn the_fused_sgd_step_gives_the_bits_of_the_separate_passes() {
        let momenta = [
            Momentum::Switch {
                initial: 0.5,
                final_: 0.9,
                switch_after: 1,
            },
            Momentum::Constant(0.0),
        ];
        for algorithm in [
            Algorithm::Cd,
            Algorithm::Pcd,
            Algorithm::NoiseCd,
            Algorithm::Paper,
        ] {
            for (momentum, weight_decay) in [(&momenta[0], 0.001), (&momenta[1], 0.0)] {
                let one_layer = |tr: Trainer| {
                    let params = StackParams {
                        conv_channels: vec![],
                        dense: vec![24],
                        ..StackParams::default()
                    };
                    let spec = params.build_spec([1, 6, 6]).expect("spec");
                    let dbn = Dbn::init(spec, 0.1, 3, &Device::flex(), DType::F32);
                    Trainer::new(
                        dbn,
                        OptimParams {
                            momentum: *momentum,
                            weight_decay,
                            // The paper's sampled reconstruction.
                            reconstruction: Reconstruction::Sample,
                            ..tr.params
                        },
                    )
                };
                let (fused, v) = trainer(algorithm, OptimizerKind::Sgd);
                let (separate, _) = trainer(algorithm, OptimizerKind::Sgd);
                let (mut fused, mut separate) = (one_layer(fused), one_layer(separate));
                for (step, epoch) in [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2)] {
                    let vi = fused.dbn.as_visible_of(0, v.clone());
                    let (l1, g, _) = fused.layer_step(0, vi, Some(epoch));
                    assert!(
                        matches!(g, StepGrads::Applied(true)),
                        "{algorithm:?}: the fused step did not run"
                    );
                    let vi = separate.dbn.as_visible_of(0, v.clone());
                    let (l2, g, _) = separate.layer_step(0, vi, None);
                    let StepGrads::Host(g) = g else {
                        panic!("{algorithm:?}: the separate step left no host gradients")
                    };
                    assert!(separate.apply_host(0, g, epoch));
                    assert_eq!(
                        l1.to_bits(),
                        l2.to_bits(),
                        "{algorithm:?}: loss, step {step}"
                    );
                    assert_eq!(
                        bits(&fused),
                        bits(&separate),
                        "{algorithm:?}, {momentum:?}: parameters after step {step}"
                    );
                }
                assert_eq!(
                    fused.states[0].host_vel.as_ref().map(|v| v
                        .0
                        .iter()
                        .map(|x| x.to_bits())
                        .collect::<Vec<_>>()),
                    separate.states[0].host_vel.as_ref().map(|v| v
                        .0
                        .iter()
                        .map(|x| x.to_bits())
                        .collect::<Vec<_>>()),
                    "{algorithm:?}: velocities"
                );
            }
        }
    }
}
