//! The sampled training rules of one layer (CD-k, PCD, FPCD, noise-start
//! CD, the paper's sampled reconstruction) on the host, in f32 slices.
//!
//! Why: through burn every Gibbs half-step built fresh tensors, copied the
//! inputs to f64 for the draws and back, and drew from one sequential
//! ChaCha stream; the rules ran at 0.4x numpy. Here one half-step is one
//! product (a dense layer's through `mrbm_kernels::sgemm_sparse_a`, which
//! skips the zeros of the data and of the sampled states, about five
//! sixths of them on MNIST, with the packed product's bits; `host_conv`
//! for a conv layer) and one batch of counter-based f32 draws
//! (`mrbm_kernels::draw`), and the statistics are the closed-form step's:
//! one weight-gradient product of the stacked phases. Where the trainer
//! steps one dense layer by plain SGD, that product also runs the SGD step
//! of W on each of its rows as it is made ([`FusedSgd`],
//! [`dense_weight_step`]), so the update runs over the pool instead of
//! after the product on one thread.
//!
//! The draws are a function of (the step's key, the element): the states do
//! not depend on the thread count. The maths is `Trainer`'s burn path
//! (tests/host_sampled.rs checks the two against each other's statistics
//! and the gradient against its definition).

use mrbm_kernels::draw::{self, Key};
use mrbm_kernels::math::{self as host_math, Act, Level};
use mrbm_kernels::{Par, View, ViewMut};
use rayon::prelude::*;

use crate::host_conv::{self, Geometry};
use crate::sample::UnitSampler;
use crate::unit::{UnitKind, UnitType};

/// Where a layer's products run.
#[derive(Debug, Clone)]
pub enum Shape {
    /// Dense: visible and hidden sizes; weights [V, H] row-major.
    Dense { visible: usize, hidden: usize },
    /// Conv: weights [O, C, K, K]; `batch` in the geometry is ignored.
    Conv(Geometry),
}

/// One layer's parameters as host values.
pub struct HostLayer<'a> {
    pub shape: Shape,
    pub w: &'a [f32],
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub visible: UnitType,
    pub hidden: UnitType,
}

/// Whether [`sampled_grads`] can train a layer with these hidden units:
/// sub-units (their mean and log-partition are `mrbm_kernels::math`'s).
/// Any visible unit.
pub fn supports(hidden: UnitType) -> bool {
    hidden.kind == UnitKind::Subunits
}

/// Where the negative phase starts.
pub enum Start<'a> {
    /// At the data (CD-k, the paper's sampled reconstruction): the first
    /// hidden draw reuses the data's hidden input.
    Data,
    /// At persistent chains (PCD, FPCD), one row per batch row.
    Chain(&'a [f32]),
    /// Uniform noise over each visible unit's range (noise-start CD).
    Noise,
}

/// What a sampled step returns.
pub struct SampledStep {
    /// Mean over the batch of F(v) - F(v_neg).
    pub loss: f64,
    /// W's gradient (empty where a [`FusedSgd`] stepped W instead).
    pub gw: Vec<f32>,
    pub ga: Vec<f32>,
    pub gb: Vec<f32>,
    /// Hidden means of the data.
    pub hidden: Vec<f32>,
    /// The negative phase's last visible states (PCD's next chains).
    pub v_neg: Vec<f32>,
    /// The negative phase's hidden means.
    pub hidden_neg: Vec<f32>,
    /// Whether W's gradient was left to [`dense_weight_step`] (asked for,
    /// a dense layer and a finite loss); `gw` is then empty.
    pub gw_deferred: bool,
}

/// The SGD step of a dense layer's weights, fused into the product that
/// makes their gradient (`mrbm_kernels::sparse::sgemm_sparse_a_then`):
/// each row of the gradient is scaled by -1 / batch and W's row stepped in
/// place while the gradient's row is in cache, on the thread that computed
/// it, instead of passes over W on one thread afterwards. Per element the
/// same f32 operations as the gradient's scaling followed by
/// `train::sgd_fused`: the same bits (`train`'s tests).
pub struct FusedSgd<'a> {
    /// The weights, stepped in place.
    pub w: &'a mut [f32],
    /// Ends as the new velocity (its old values are not read).
    pub vel_new: &'a mut [f32],
    /// Last step's velocity (None: no momentum term).
    pub vel: Option<&'a [f32]>,
    /// Weight decay (None: none).
    pub wd: Option<f32>,
    /// Momentum.
    pub m: f32,
    /// W's learning rate.
    pub lr: f32,
}

/// A buffer's base pointer, shared by the product's tasks, which write
/// disjoint rows of it.
#[derive(Clone, Copy)]
struct RowsPtr(*mut f32);
// Safety: each row is written by one task only (`sgemm_sparse_a_then`
// calls its epilogue once per row).
unsafe impl Send for RowsPtr {}
unsafe impl Sync for RowsPtr {}
impl RowsPtr {
    /// Values `off..off + len` (a method, so closures capture the whole
    /// Sync wrapper).
    unsafe fn slice<'a>(self, off: usize, len: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

/// The draws of one step: a key from the trainer's stream, and a counter
/// of batches drawn with it.
pub struct Draws {
    key: u64,
    next: u32,
}

impl Draws {
    pub fn new(key: u64) -> Draws {
        Draws { key, next: 0 }
    }

    fn take(&mut self) -> Key {
        self.next += 1;
        Key::new(self.key, self.next - 1)
    }
}

fn act_of(u: UnitType) -> Act {
    Act {
        n: u.n as f32,
        k: u.k as f32,
        identity: u.kind == UnitKind::Gaussian,
    }
}

impl HostLayer<'_> {
    fn sizes(&self) -> (usize, usize) {
        match &self.shape {
            Shape::Dense { visible, hidden } => (*visible, *hidden),
            Shape::Conv(g) => (g.c * g.h * g.w, g.o * g.oh * g.ow),
        }
    }

    fn geometry(g: &Geometry, batch: usize) -> Geometry {
        Geometry { batch, ..*g }
    }

    /// x = b + v W (conv: conv2d) for `batch` rows.
    pub fn pre_hidden(&self, v: &[f32], batch: usize) -> Vec<f32> {
        match &self.shape {
            Shape::Dense { visible, hidden } => {
                // The bias in every row (written once, not zeroed first).
                let mut x = Vec::with_capacity(batch * hidden);
                for _ in 0..batch {
                    x.extend_from_slice(self.b);
                }
                let (vv, wv) = (
                    View::row_major(v, *visible),
                    View::row_major(self.w, *hidden),
                );
                let xm = ViewMut::row_major(&mut x, *hidden);
                mrbm_kernels::sgemm_sparse_a(
                    [batch, *hidden, *visible],
                    1.0,
                    vv,
                    wv,
                    1.0,
                    xm,
                    Par::Rayon,
                );
                x
            }
            Shape::Conv(g) => host_conv::conv2d(v, self.w, self.b, &Self::geometry(g, batch)),
        }
    }

    /// y = a + h W^T (conv: the transposed convolution).
    pub fn pre_visible(&self, h: &[f32], batch: usize) -> Vec<f32> {
        match &self.shape {
            Shape::Dense { visible, hidden } => {
                // The bias in every row (written once, not zeroed first).
                let mut y = Vec::with_capacity(batch * visible);
                for _ in 0..batch {
                    y.extend_from_slice(self.a);
                }
                let (hv, wv) = (
                    View::row_major(h, *hidden),
                    View::row_major(self.w, *hidden),
                );
                let ym = ViewMut::row_major(&mut y, *visible);
                mrbm_kernels::sgemm_sparse_a(
                    [batch, *visible, *hidden],
                    1.0,
                    hv,
                    wv.t(),
                    1.0,
                    ym,
                    Par::Rayon,
                );
                y
            }
            Shape::Conv(g) => {
                host_conv::conv_transpose2d(h, self.w, self.a, &Self::geometry(g, batch))
            }
        }
    }

    /// Both phases' per-row terms of the free energy, in one parallel
    /// region: the hidden means f(x) in place of x and xn (which hold the
    /// bias already), with each row's sum of A(x), and each row's visible
    /// part of -F (see [`Self::visible_term`]). Returns (sum A over the
    /// data's rows, over the negative rows, visible terms of v, of v_neg),
    /// one value a row.
    fn phase_terms(
        &self,
        (x, xn): (&mut [f32], &mut [f32]),
        (v, v_neg): (&[f32], &[f32]),
        batch: usize,
    ) -> [Vec<f64>; 4] {
        let level = Level::detect();
        let act = act_of(self.hidden);
        let (nv, nh) = self.sizes();
        let rows = x
            .par_chunks_mut(nh)
            .zip(v.par_chunks(nv))
            .chain(xn.par_chunks_mut(nh).zip(v_neg.par_chunks(nv)));
        let terms: Vec<(f64, f64)> = rows
            .map(|(h, v)| {
                let a = host_math::act_row(level, h, 0.0, act, true).1;
                (a, self.visible_term(v))
            })
            .collect();
        debug_assert_eq!(terms.len(), 2 * batch);
        let (a, vis): (Vec<f64>, Vec<f64>) = terms.into_iter().unzip();
        let (a_neg, vis_neg) = (a[batch..].to_vec(), vis[batch..].to_vec());
        [a[..batch].to_vec(), a_neg, vis[..batch].to_vec(), vis_neg]
    }

    /// The visible part of -F of one row: a.v (Gaussian: -(v - a)^2 / 2;
    /// discrete Gaussian: a.v - v^2 / 2).
    fn visible_term(&self, row: &[f32]) -> f64 {
        let plane = match &self.shape {
            Shape::Dense { .. } => 1,
            Shape::Conv(g) => g.h * g.w,
        };
        let kind = self.visible.kind;
        if plane == 1 && !matches!(kind, UnitKind::Gaussian | UnitKind::DiscreteGaussian) {
            // A dense layer's a.v: the nonzero terms only, in element order:
            // the same sum, as a is finite (every update checks it); most
            // of the data's values are zeros.
            return mrbm_kernels::sparse::dot_nonzeros_f64(row, self.a);
        }
        // Plane by plane (no division per element), in element order.
        let mut t = 0.0f64;
        for (plane_values, &ai) in row.chunks(plane).zip(self.a) {
            let ai = ai as f64;
            for &vi in plane_values {
                let vi = vi as f64;
                t += match kind {
                    UnitKind::Gaussian => -0.5 * (vi - ai) * (vi - ai),
                    UnitKind::DiscreteGaussian => ai * vi - 0.5 * vi * vi,
                    _ => ai * vi,
                };
            }
        }
        t
    }

    /// <v h> - <v' h'> summed over the batch (and positions), in W's layout.
    fn weight_stats(&self, v: &[f32], h: &[f32], vn: &[f32], hn: &[f32], batch: usize) -> Vec<f32> {
        match &self.shape {
            Shape::Dense { visible, hidden } => {
                let mut gw = vec![0.0f32; visible * hidden];
                dense_weight_stats((v, h, vn, hn), batch, (*visible, *hidden), &mut gw, None);
                gw
            }
            Shape::Conv(g) => {
                let g = Self::geometry(g, batch);
                let mut gw = host_conv::weight_grad(v, h, &g);
                let rec = host_conv::weight_grad(vn, hn, &g);
                for (a, r) in gw.iter_mut().zip(rec) {
                    *a -= r;
                }
                gw
            }
        }
    }

    /// Hidden states drawn from their inputs.
    fn draw_hidden(&self, x: &[f32], key: Key) -> Vec<f32> {
        draw_units(self.hidden, x, key)
    }

    /// Visible states drawn from their inputs.
    fn draw_visible(&self, y: &[f32], key: Key) -> Vec<f32> {
        draw_units(self.visible, y, key)
    }
}

/// W's gradient of a dense layer (`visible` x `hidden`) from a sampled
/// step's states and hidden means (`SampledStep::gw_deferred`), with the
/// [`FusedSgd`] step of W run on each of its rows as they are made; returns
/// whether every new weight is finite.
pub fn dense_weight_step(
    (visible, hidden): (usize, usize),
    (v, h, vn, hn): (&[f32], &[f32], &[f32], &[f32]),
    batch: usize,
    sgd: FusedSgd,
) -> bool {
    let n = hidden;
    assert_eq!(sgd.w.len(), visible * n, "fused step: w's size");
    assert_eq!(sgd.vel_new.len(), visible * n, "fused step: vel_new's size");
    assert!(
        sgd.vel.is_none_or(|v| v.len() == visible * n),
        "fused step: vel's size"
    );
    let neg_inv_b = -(1.0 / batch as f32);
    let (vel, wd, m, lr) = (sgd.vel, sgd.wd, sgd.m, sgd.lr);
    let w = RowsPtr(sgd.w.as_mut_ptr());
    let finite = std::sync::atomic::AtomicBool::new(true);
    let then = |i: usize, g: &mut [f32]| {
        let off = i * n;
        // Safety: the product calls this once per row (rows are disjoint),
        // and w holds visible x n values (checked).
        let w_row = unsafe { w.slice(off, n) };
        let ok = crate::train::sgd_row(
            w_row,
            g,
            vel.map(|v| &v[off..off + n]),
            (neg_inv_b, wd, m, lr),
        );
        if !ok {
            finite.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    };
    dense_weight_stats(
        (v, h, vn, hn),
        batch,
        (visible, n),
        sgd.vel_new,
        Some(&then),
    );
    finite.into_inner()
}

/// One product of the stacked phases of a dense layer into `gw` (every
/// value written): [v; v']^T [h; -h'], then `then` on each finished row.
fn dense_weight_stats(
    (v, h, vn, hn): (&[f32], &[f32], &[f32], &[f32]),
    batch: usize,
    (visible, hidden): (usize, usize),
    gw: &mut [f32],
    then: Option<mrbm_kernels::sparse::RowThen>,
) {
    // A = [v; v_neg]^T made row-major in one parallel pass (the walk would
    // otherwise copy the two together and then transpose the copy).
    // B = [h; -h_neg] beside it.
    let (vt, h2) = rayon::join(
        || mrbm_kernels::sparse::transpose_stacked(&[v, vn], visible, true),
        || {
            let mut h2 = Vec::with_capacity(2 * batch * hidden);
            h2.extend_from_slice(h);
            h2.extend(hn.iter().map(|x| -x));
            h2
        },
    );
    let (vt, hv) = (
        View::row_major(&vt, 2 * batch),
        View::row_major(&h2, hidden),
    );
    let gm = ViewMut::row_major(gw, hidden);
    let shape = [visible, hidden, 2 * batch];
    match then {
        Some(then) => {
            mrbm_kernels::sparse::sgemm_sparse_a_then(
                shape,
                1.0,
                vt,
                hv,
                0.0,
                gm,
                Par::Rayon,
                then,
            );
        }
        None => {
            mrbm_kernels::sgemm_sparse_a(shape, 1.0, vt, hv, 0.0, gm, Par::Rayon);
        }
    }
}

/// One draw per input by the unit's exact conditional.
pub fn draw_units(unit: UnitType, x: &[f32], key: Key) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    match unit.kind {
        UnitKind::Subunits => {
            let offsets: Vec<f32> = unit.offsets().iter().map(|&o| o as f32).collect();
            draw::subunits(x, &offsets, 1.0, key, &mut out);
        }
        UnitKind::Levels => draw::levels(x, unit.n, 1.0, key, &mut out),
        UnitKind::Gaussian => draw::gaussian(x, 1.0, key, &mut out),
        UnitKind::DiscreteGaussian => {
            // The batched rejection sampler of `discrete_gaussian`, on a
            // ChaCha stream keyed by this batch's key.
            use rand::SeedableRng;
            let seed = (key.key[0] as u64) | (key.key[1] as u64) << 32;
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (key.stream as u64).rotate_left(40));
            let xs: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let mut o = vec![0.0f64; x.len()];
            UnitSampler::new(unit, crate::sample::Sampler::Exact)
                .draw_tempered_batch(&xs, 1.0, &mut rng, &mut o);
            for (d, s) in out.iter_mut().zip(o) {
                *d = s as f32;
            }
        }
    }
    out
}

/// Loss, gradients (of F(v) - F(v_neg), batch means) and hidden means of a
/// sampled step on the data `v` (`batch` rows). The negative phase runs `k`
/// Gibbs alternations on `chain_layer` (FPCD: the regular plus the fast
/// weights; otherwise `layer` itself) from `start`; the statistics use the
/// last visible states and their hidden means.
pub fn sampled_grads(
    layer: &HostLayer,
    chain_layer: &HostLayer,
    v: &[f32],
    batch: usize,
    (start, k): (Start, usize),
    draws: &mut Draws,
) -> SampledStep {
    sampled_step(layer, chain_layer, v, batch, (start, k), draws, false)
}

/// [`sampled_grads`], with W's gradient left to [`dense_weight_step`] where
/// `defer_w`, the layer is dense and the loss finite
/// ([`SampledStep::gw_deferred`]).
pub fn sampled_step(
    layer: &HostLayer,
    chain_layer: &HostLayer,
    v: &[f32],
    batch: usize,
    (start, k): (Start, usize),
    draws: &mut Draws,
    defer_w: bool,
) -> SampledStep {
    let (nv, _) = layer.sizes();
    let x = layer.pre_hidden(v, batch);
    // The first hidden draw: from the data's hidden input when the chain
    // starts there and runs on the same weights.
    let (mut h_state, first) = match start {
        Start::Data => (chain_layer.draw_hidden(&x, draws.take()), true),
        Start::Chain(c) => {
            let xc = chain_layer.pre_hidden(c, batch);
            (chain_layer.draw_hidden(&xc, draws.take()), true)
        }
        Start::Noise => {
            let max = layer.visible.max_value() as f32;
            let noise = draw::uniform(batch * nv, max, draws.take());
            (noise, false)
        }
    };
    let mut v_neg = if first {
        let y = chain_layer.pre_visible(&h_state, batch);
        chain_layer.draw_visible(&y, draws.take())
    } else {
        std::mem::take(&mut h_state)
    };
    let steps = if first { k.saturating_sub(1) } else { k };
    for _ in 0..steps {
        let xn = chain_layer.pre_hidden(&v_neg, batch);
        h_state = chain_layer.draw_hidden(&xn, draws.take());
        let y = chain_layer.pre_visible(&h_state, batch);
        v_neg = chain_layer.draw_visible(&y, draws.take());
    }
    statistics(layer, v, x, v_neg, batch, defer_w)
}

/// The closed-form part: hidden means of both phases, the loss and the
/// three gradients.
fn statistics(
    layer: &HostLayer,
    v: &[f32],
    mut x: Vec<f32>,
    v_neg: Vec<f32>,
    batch: usize,
    defer_w: bool,
) -> SampledStep {
    let mut xn = layer.pre_hidden(&v_neg, batch);
    let [a_data, a_neg, vis_data, vis_neg] =
        layer.phase_terms((&mut x, &mut xn), (v, &v_neg), batch);
    // F(v) = -(visible term) - sum A(x): the loss is the mean of the difference.
    let loss: f64 = (0..batch)
        .map(|r| -(vis_data[r] + a_data[r]) + (vis_neg[r] + a_neg[r]))
        .sum::<f64>()
        / batch as f64;
    let inv_b = 1.0 / batch as f32;
    let gw_deferred = defer_w && matches!(layer.shape, Shape::Dense { .. }) && loss.is_finite();
    let gw = if gw_deferred {
        Vec::new()
    } else {
        let mut gw = layer.weight_stats(v, &x, &v_neg, &xn, batch);
        for g in gw.iter_mut() {
            *g *= -inv_b;
        }
        gw
    };
    // The two bias gradients side by side (each is a serial sum per unit).
    let ((vc, vp), (hc, hp)) = match &layer.shape {
        Shape::Dense { visible, hidden } => ((*visible, 1), (*hidden, 1)),
        Shape::Conv(g) => ((g.c, g.h * g.w), (g.o, g.oh * g.ow)),
    };
    let (ga, gb) = rayon::join(
        || column_diffs(v, &v_neg, vc, vp, batch),
        || column_diffs(&x, &xn, hc, hp, batch),
    );
    SampledStep {
        loss,
        gw,
        ga,
        gb,
        hidden: x,
        v_neg,
        hidden_neg: xn,
        gw_deferred,
    }
}

/// -(sum over rows and positions of (p - q)) / batch per channel, where a
/// row holds `channels` planes of `plane` values. Gaussian visible units
/// see the same difference (their mean shift cancels).
fn column_diffs(p: &[f32], q: &[f32], channels: usize, plane: usize, batch: usize) -> Vec<f32> {
    let mut acc = vec![0.0f64; channels];
    if plane == 1 {
        // Dense: one value per channel a row, a loop that vectorises (each
        // channel still sums its rows in order: the same bits).
        for (rp, rq) in p.chunks(channels).zip(q.chunks(channels)) {
            for ((a, &x), &y) in acc.iter_mut().zip(rp).zip(rq) {
                *a += (x - y) as f64;
            }
        }
        return acc.iter().map(|a| (-a / batch as f64) as f32).collect();
    }
    for (rp, rq) in p.chunks(channels * plane).zip(q.chunks(channels * plane)) {
        for (c, a) in acc.iter_mut().enumerate() {
            let s = c * plane;
            for i in s..s + plane {
                *a += (rp[i] - rq[i]) as f64;
            }
        }
    }
    acc.iter().map(|a| (-a / batch as f64) as f32).collect()
}
