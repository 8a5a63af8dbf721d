//! A naive f64 host implementation of one RBM layer (direct loops, no
//! tensor library): the CPU reference that the device checks and tests
//! compare burn's results against.

use crate::layer::{to_f64, LayerKind, LayerSpec, Rbm};

/// One layer's parameters on the host, in the same layouts as [`Rbm`].
#[derive(Debug, Clone)]
pub struct HostRbm {
    pub spec: LayerSpec,
    pub w: Vec<f64>,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
}

/// CD-1 mean-field update (the direction that increases likelihood).
#[derive(Debug, Clone)]
pub struct Cd1Update {
    pub w: Vec<f64>,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
}

impl HostRbm {
    pub fn from_rbm(r: &Rbm) -> Self {
        HostRbm {
            spec: r.spec.clone(),
            w: to_f64(&r.w),
            a: to_f64(&r.a),
            b: to_f64(&r.b),
        }
    }

    fn vis_len(&self) -> usize {
        self.spec.visible_shape().iter().product()
    }

    fn hid_len(&self) -> usize {
        self.spec.hidden_shape().iter().product()
    }

    /// Calls `f(visible_index, hidden_index, weight_index)` for every
    /// connection of the layer.
    fn for_each_edge(&self, mut f: impl FnMut(usize, usize, usize)) {
        match &self.spec.kind {
            LayerKind::Dense { visible, hidden } => {
                for i in 0..*visible {
                    for j in 0..*hidden {
                        f(i, j, i * hidden + j);
                    }
                }
            }
            LayerKind::Conv {
                input,
                kernel,
                stride,
                padding,
                ..
            } => {
                let [cv, hv, wv] = *input;
                let [ch, hh, wh] = self.spec.hidden_shape();
                let k = *kernel;
                for j in 0..ch {
                    for oy in 0..hh {
                        for ox in 0..wh {
                            for c in 0..cv {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let iy = (oy * stride + ky) as isize - *padding as isize;
                                        let ix = (ox * stride + kx) as isize - *padding as isize;
                                        if iy < 0
                                            || ix < 0
                                            || iy as usize >= hv
                                            || ix as usize >= wv
                                        {
                                            continue;
                                        }
                                        let vi = (c * hv + iy as usize) * wv + ix as usize;
                                        let hi = (j * hh + oy) * wh + ox;
                                        let wi = ((j * cv + c) * k + ky) * k + kx;
                                        f(vi, hi, wi);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn hidden_channel(&self, hi: usize) -> usize {
        let [_, h, w] = self.spec.hidden_shape();
        hi / (h * w)
    }

    fn visible_channel(&self, vi: usize) -> usize {
        let [_, h, w] = self.spec.visible_shape();
        vi / (h * w)
    }

    /// x(v) for one visible vector.
    pub fn pre_hidden(&self, v: &[f64]) -> Vec<f64> {
        let mut x: Vec<f64> = (0..self.hid_len())
            .map(|j| self.b[self.hidden_channel(j)])
            .collect();
        self.for_each_edge(|i, j, wi| x[j] += v[i] * self.w[wi]);
        x
    }

    /// a + h W^T for one hidden vector.
    pub fn pre_visible(&self, h: &[f64]) -> Vec<f64> {
        let mut y: Vec<f64> = (0..self.vis_len())
            .map(|i| self.a[self.visible_channel(i)])
            .collect();
        self.for_each_edge(|i, j, wi| y[i] += h[j] * self.w[wi]);
        y
    }

    /// Smooth free energy of one visible vector.
    pub fn free_energy(&self, v: &[f64]) -> f64 {
        let x = self.pre_hidden(v);
        let av: f64 = v
            .iter()
            .enumerate()
            .map(|(i, vi)| self.a[self.visible_channel(i)] * vi)
            .sum();
        -av - x
            .iter()
            .map(|&xj| self.spec.hidden_unit.log_partition_f64(xj))
            .sum::<f64>()
    }

    /// Mean-field reconstruction of one visible vector.
    pub fn reconstruct(&self, v: &[f64]) -> Vec<f64> {
        let h: Vec<f64> = self
            .pre_hidden(v)
            .iter()
            .map(|&x| self.spec.hidden_unit.mean_f64(x))
            .collect();
        self.pre_visible(&h)
            .iter()
            .map(|&y| self.spec.visible_unit.mean_f64(y))
            .collect()
    }

    /// The paper's loss on a batch (rows of `vs`).
    pub fn loss(&self, vs: &[Vec<f64>]) -> f64 {
        vs.iter()
            .map(|v| self.free_energy(v) - self.free_energy(&self.reconstruct(v)))
            .sum::<f64>()
            / vs.len() as f64
    }

    /// The CD-1 mean-field update averaged over the batch.
    pub fn cd1_update(&self, vs: &[Vec<f64>]) -> Cd1Update {
        let mut u = Cd1Update {
            w: vec![0.0; self.w.len()],
            a: vec![0.0; self.a.len()],
            b: vec![0.0; self.b.len()],
        };
        let inv = 1.0 / vs.len() as f64;
        for v in vs {
            let hu = self.spec.hidden_unit;
            let h: Vec<f64> = self.pre_hidden(v).iter().map(|&x| hu.mean_f64(x)).collect();
            let vr = self.reconstruct(v);
            let hr: Vec<f64> = self
                .pre_hidden(&vr)
                .iter()
                .map(|&x| hu.mean_f64(x))
                .collect();
            self.for_each_edge(|i, j, wi| u.w[wi] += inv * (v[i] * h[j] - vr[i] * hr[j]));
            for i in 0..v.len() {
                u.a[self.visible_channel(i)] += inv * (v[i] - vr[i]);
            }
            for j in 0..h.len() {
                u.b[self.hidden_channel(j)] += inv * (h[j] - hr[j]);
            }
        }
        u
    }
}

/// Largest |x - y| over the largest |y| (relative to the reference's scale;
/// an absolute floor keeps an all-zero reference meaningful).
pub fn rel_error(x: &[f64], y: &[f64]) -> f64 {
    let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let diff = x
        .iter()
        .zip(y)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    if x.len() != y.len() {
        return f64::INFINITY;
    }
    diff / scale
}
