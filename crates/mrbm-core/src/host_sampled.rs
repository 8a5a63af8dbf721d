//! The sampled training rules of one layer (CD-k, PCD, FPCD, noise-start
//! CD, the paper's sampled reconstruction) on the host, in f32 slices.
//!
//! Why: through burn every Gibbs half-step built fresh tensors, copied the
//! inputs to f64 for the draws and back, and drew from one sequential
//! ChaCha stream; the rules ran at 0.4x numpy. Here one half-step is one
//! product (a dense layer's through `mrbm_kernels::sgemm_sparse_a`, which
//! skips the zeros of the data and of the sampled states, about four
//! fifths of them on MNIST, with the packed product's bits; `host_conv`
//! for a conv layer) and one batch of counter-based f32 draws
//! (`mrbm_kernels::draw`), and the statistics are the closed-form step's:
//! one weight-gradient product of the stacked phases.
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
    pub gw: Vec<f32>,
    pub ga: Vec<f32>,
    pub gb: Vec<f32>,
    /// Hidden means of the data.
    pub hidden: Vec<f32>,
    /// The negative phase's last visible states (PCD's next chains).
    pub v_neg: Vec<f32>,
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
                let mut x = vec![0.0f32; batch * hidden];
                for row in x.chunks_mut(*hidden) {
                    row.copy_from_slice(self.b);
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
                let mut y = vec![0.0f32; batch * visible];
                for row in y.chunks_mut(*visible) {
                    row.copy_from_slice(self.a);
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

    /// Hidden means f(x) in place; returns the sum of A(x) per row.
    fn hidden_means(&self, x: &mut [f32], batch: usize) -> Vec<f64> {
        let level = Level::detect();
        let act = act_of(self.hidden);
        let (_, nh) = self.sizes();
        // x holds the bias already: one activation for every element.
        let sums: Vec<f64> = x
            .par_chunks_mut(nh)
            .map(|row| host_math::act_row(level, row, 0.0, act, true).1)
            .collect();
        debug_assert_eq!(sums.len(), batch);
        sums
    }

    /// The visible part of -F per row: a.v (Gaussian: -(v - a)^2 / 2;
    /// discrete Gaussian: a.v - v^2 / 2).
    fn visible_terms(&self, v: &[f32]) -> Vec<f64> {
        let (nv, _) = self.sizes();
        let plane = match &self.shape {
            Shape::Dense { .. } => 1,
            Shape::Conv(g) => g.h * g.w,
        };
        let kind = self.visible.kind;
        // Plane by plane (no division per element), in element order: the
        // same sum.
        v.par_chunks(nv)
            .map(|row| {
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
            })
            .collect()
    }

    /// <v h> - <v' h'> summed over the batch (and positions), in W's layout.
    fn weight_stats(&self, v: &[f32], h: &[f32], vn: &[f32], hn: &[f32], batch: usize) -> Vec<f32> {
        match &self.shape {
            Shape::Dense { visible, hidden } => {
                // One product of the stacked phases: [v; v']^T [h; -h'].
                let mut v2 = Vec::with_capacity(2 * batch * visible);
                v2.extend_from_slice(v);
                v2.extend_from_slice(vn);
                let mut h2 = Vec::with_capacity(2 * batch * hidden);
                h2.extend_from_slice(h);
                h2.extend(hn.iter().map(|x| -x));
                let mut gw = vec![0.0f32; visible * hidden];
                let (vt, hv) = (
                    View::row_major(&v2, *visible).t(),
                    View::row_major(&h2, *hidden),
                );
                let gm = ViewMut::row_major(&mut gw, *hidden);
                mrbm_kernels::sgemm_sparse_a(
                    [*visible, *hidden, 2 * batch],
                    1.0,
                    vt,
                    hv,
                    0.0,
                    gm,
                    Par::Rayon,
                );
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
    statistics(layer, v, x, v_neg, batch)
}

/// The closed-form part: hidden means of both phases, the loss and the
/// three gradients.
fn statistics(
    layer: &HostLayer,
    v: &[f32],
    mut x: Vec<f32>,
    v_neg: Vec<f32>,
    batch: usize,
) -> SampledStep {
    let mut xn = layer.pre_hidden(&v_neg, batch);
    let a_data = layer.hidden_means(&mut x, batch);
    let a_neg = layer.hidden_means(&mut xn, batch);
    let (vis_data, vis_neg) = (layer.visible_terms(v), layer.visible_terms(&v_neg));
    // F(v) = -(visible term) - sum A(x): the loss is the mean of the difference.
    let loss: f64 = (0..batch)
        .map(|r| -(vis_data[r] + a_data[r]) + (vis_neg[r] + a_neg[r]))
        .sum::<f64>()
        / batch as f64;
    let inv_b = 1.0 / batch as f32;
    let mut gw = layer.weight_stats(v, &x, &v_neg, &xn, batch);
    for g in gw.iter_mut() {
        *g *= -inv_b;
    }
    let (ga, gb) = match &layer.shape {
        Shape::Dense { visible, hidden } => (
            column_diffs(v, &v_neg, *visible, 1, batch),
            column_diffs(&x, &xn, *hidden, 1, batch),
        ),
        Shape::Conv(g) => (
            column_diffs(v, &v_neg, g.c, g.h * g.w, batch),
            column_diffs(&x, &xn, g.o, g.oh * g.ow, batch),
        ),
    };
    SampledStep {
        loss,
        gw,
        ga,
        gb,
        hidden: x,
        v_neg,
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
