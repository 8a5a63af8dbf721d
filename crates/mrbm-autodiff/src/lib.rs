//! burn custom ops on mrbm's host kernels, each with a hand-written
//! backward pass, for burn's autodiff graph on the flex CPU backend in f32:
//! mrbm-core's autodiff gradient (`gradient = "autodiff"`, `coupling =
//! "backprop"`) and mrbm-dcim's coupled sigmoid networks.
//!
//! Why: through burn's own ops one autodiff RBM training step ran 4-5x
//! slower than PyTorch (bench/train_step.sh): burn flex's conv and matmul,
//! scalar libm `expf` / `log1pf` for every sigmoid and softplus, each op a
//! fresh tensor. The ops ([`RbmHostOps`], a burn backend extension routed
//! for `Flex` and `Autodiff<Flex>`):
//!
//! - [`RbmHostOps::rbm_linear`]: up, x = b + v W (dense) or conv2d(v, W) + b,
//!   and down, a + h W^T or the transposed convolution, by im2col + packed
//!   sgemm over a chunk of images at a time (as mrbm-core's `host_cd`); its
//!   backward gives the input's gradient (the other map), dW and the
//!   bias's the same way;
//! - [`RbmHostOps::rbm_unit_mean`]: f(x) = N sigmoid(k x), vectorised; its
//!   backward multiplies by f'(x) = k f (1 - f / N);
//! - [`RbmHostOps::rbm_log_partition_rows`]: the sum over each row of
//!   A(x) = (N / k) softplus(k x), vectorised; its backward is the upstream
//!   value times A'(x) = f(x), kept from the forward pass;
//! - [`RbmHostOps::rbm_visible_dot`]: each row's a.v, a per channel.
//!
//! Everything else stays burn's differentiable ops, and the graph is
//! burn's: these ops are its nodes. mrbm-core's `tests/autodiff_host.rs`
//! checks every op's values and gradients against burn's own ops. Callers
//! use them only where [`serves`] says so; other backends, dtypes and
//! tensors outside an autodiff graph keep burn's ops and their bits.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch};
use burn::tensor::{DType, Device, Tensor, TensorData};
use mrbm_kernels::math::{act_row, Act, Level};
use mrbm_kernels::Par;
use mrbm_kernels::{View, ViewMut};
use rayon::prelude::*;

use mrbm_kernels::conv::Conv;

/// Shapes of one conv layer: input [B, C, H, W], kernel [O, C, K, K],
/// stride S, zero padding P, output [B, O, OH, OW] (mrbm-core's host
/// paths use it too).
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub batch: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    /// Patch length C K K (the products' inner dimension).
    pub fn patch(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Output positions OH OW.
    pub fn positions(&self) -> usize {
        self.oh * self.ow
    }
    /// One input image's length C H W.
    pub fn image(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Images per chunk, so that a chunk's products have at least
    /// `columns` columns (fewer when the batch is short), and images per
    /// thread's group of whole chunks, on the caller's rayon pool.
    pub fn chunking(&self, columns: usize) -> (usize, usize) {
        let threads = rayon::current_num_threads().max(1);
        let chunk = columns
            .div_ceil(self.positions())
            .clamp(1, self.batch.div_ceil(threads).max(1));
        let nchunks = self.batch.div_ceil(chunk);
        (chunk, nchunks.div_ceil(threads.min(nchunks).max(1)) * chunk)
    }

    /// One image's geometry for mrbm-kernels' im2col and col2im.
    pub fn conv(&self) -> Conv {
        let conv = Conv {
            c: self.c,
            h: self.h,
            w: self.w,
            o: self.o,
            kh: self.k,
            kw: self.k,
            sh: self.stride,
            sw: self.stride,
            ph: self.pad,
            pw: self.pad,
        };
        assert_eq!(
            (conv.oh(), conv.ow()),
            (self.oh, self.ow),
            "conv geometry: output shape"
        );
        conv
    }
}

/// C = A B, or C += A B when `accumulate` (A m x k, B k x n).
fn matmul([m, n, k]: [usize; 3], a: View, b: View, c: ViewMut, accumulate: bool, par: Par) {
    let beta = if accumulate { 1.0 } else { 0.0 };
    mrbm_kernels::sgemm([m, n, k], 1.0, a, b, beta, c, par)
}

/// A chunk's product on the calling thread: c [m, n] = a b (+= when
/// `accumulate`), c row-major.
fn chunk_product(dims: [usize; 3], a: View, b: View, c: &mut [f32], accumulate: bool) {
    let n = dims[1];
    matmul(dims, a, b, ViewMut::row_major(c, n), accumulate, Par::Seq)
}

/// The patches of consecutive images side by side: cols [C K K, nb P]
/// (image i at columns i P..).
fn chunk_patches(conv: &Conv, imgs: &[f32], cols: &mut [f32]) {
    let (img, p) = (conv.c * conv.h * conv.w, conv.positions());
    let cp = imgs.len() / img.max(1) * p;
    for (i, x) in imgs.chunks(img).enumerate() {
        conv.im2col_ld(x, 0, p, &mut cols[i * p..], cp);
    }
}

/// The [O, P] planes of consecutive images in `src` side by side in `dst`
/// [O, nb P] (a chunk's columns: image i at columns i P..).
fn gather_planes(src: &[f32], o: usize, p: usize, dst: &mut [f32]) {
    let nb = src.len() / (o * p).max(1);
    let cp = nb * p;
    for (i, image) in src.chunks(o * p).enumerate() {
        for (oi, plane) in image.chunks(p).enumerate() {
            dst[oi * cp + i * p..][..p].copy_from_slice(plane);
        }
    }
}

/// Which of a layer's two linear maps an [`RbmHostOps::rbm_linear`] call
/// computes, and the layer's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linear {
    /// Convolution `[kernel, stride, padding]`; None for a dense layer.
    pub conv: Option<[usize; 3]>,
    /// The visible shape [C, H, W] (dense: [V, 1, 1]).
    pub visible: [usize; 3],
    /// The down map (a + h W^T, the transposed convolution) instead of up
    /// (b + v W, the convolution).
    pub down: bool,
}

#[backend_extension(Flex, Autodiff)]
pub trait RbmHostOps: Backend {
    /// Up: x = b + v W (dense v [B, V, 1, 1], w [V, H, 1, 1] -> [B, H, 1, 1];
    /// conv v [B, C, H, W], w [O, C, K, K] -> conv2d + b, [B, O, OH, OW]).
    /// Down: a + h W^T (the transposed convolution), back to the visible
    /// shape.
    fn rbm_linear(
        input: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        linear: Linear,
    ) -> FloatTensor<Self>;
    /// N sigmoid(k x), elementwise.
    fn rbm_unit_mean(x: FloatTensor<Self>, n: f32, k: f32) -> FloatTensor<Self>;
    /// [B, ...] -> [B]: sum over each row of (N / k) softplus(k x).
    fn rbm_log_partition_rows(x: FloatTensor<Self>, n: f32, k: f32) -> FloatTensor<Self>;
    /// [B, C, ...] and a [C] -> [B]: sum over each row of a_c v (the
    /// visible term a.v of the free energy, a per channel).
    fn rbm_visible_dot(v: FloatTensor<Self>, a: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether the host ops serve a tensor: f32 on the flex CPU device with
/// autodiff (the autodiff loss, tracked or detached inside it). Tensors
/// outside an autodiff device keep their own paths, and their bits.
pub fn serves<const D: usize>(t: &Tensor<D>) -> bool {
    let device = t.device();
    t.dtype() == DType::F32 && device.is_autodiff() && device.without_autodiff() == Device::flex()
}

/// [`RbmHostOps::rbm_linear`] on burn tensors.
/// The output is [B, C, H, W] (dense: [B, units, 1, 1]); `input` and `w`
/// may have any rank with their values in that order (a dense weight
/// [V, H] or [V, H, 1, 1]).
pub fn linear<const DI: usize, const DW: usize>(
    input: Tensor<DI>,
    w: Tensor<DW>,
    bias: Tensor<1>,
    linear: Linear,
) -> Tensor<4> {
    let out = <Dispatch as RbmHostOps>::rbm_linear(
        input.into_dispatch(),
        w.into_dispatch(),
        bias.into_dispatch(),
        linear,
    );
    Tensor::from_dispatch(out)
}

/// [`RbmHostOps::rbm_unit_mean`] on burn tensors.
pub fn unit_mean<const D: usize>(x: Tensor<D>, n: f32, k: f32) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as RbmHostOps>::rbm_unit_mean(
        x.into_dispatch(),
        n,
        k,
    ))
}

/// [`RbmHostOps::rbm_log_partition_rows`] on burn tensors.
pub fn log_partition_rows(x: Tensor<4>, n: f32, k: f32) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as RbmHostOps>::rbm_log_partition_rows(
        x.into_dispatch(),
        n,
        k,
    ))
}

/// [`RbmHostOps::rbm_visible_dot`] on burn tensors.
pub fn visible_dot(v: Tensor<4>, a: Tensor<1>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as RbmHostOps>::rbm_visible_dot(
        v.into_dispatch(),
        a.into_dispatch(),
    ))
}

// ---- host values of flex tensors -----------------------------------------

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().iter().copied().collect()
}

/// The f32 values of `t` in row-major order (a copy only when `t` is a
/// strided view).
fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().unwrap().to_vec()),
    }
}

fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The conv geometry of a batch of `batch` under w [O, C, K, K].
fn geometry(batch: usize, l: &Linear, w: &[usize]) -> Geometry {
    let [k, stride, pad] = l.conv.expect("conv geometry of a dense layer");
    let [c, h, wd] = l.visible;
    let o = |n: usize| (n + 2 * pad - k) / stride + 1;
    Geometry {
        batch,
        c,
        h,
        w: wd,
        o: w[0],
        k,
        stride,
        pad,
        oh: o(h),
        ow: o(wd),
    }
}

/// C = A B for A [m, kk] and B [kk, n] (views), on the caller's pool.
fn product(m: usize, n: usize, kk: usize, a: View, b: View) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    matmul(
        [m, n, kk],
        a,
        b,
        ViewMut::row_major(&mut c, n),
        false,
        Par::Rayon,
    );
    c
}

/// Columns per chunk of the up and down products (as in mrbm-core's
/// `host_cd`).
const CHUNK_COLS: usize = 256;

/// Columns per chunk of the weight gradient's products (their depth).
const WG_COLS: usize = 512;

thread_local! {
    /// A thread's two scratch matrices, kept across calls: no allocation,
    /// page faults or zeroing per chunk.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 2]> =
        const { std::cell::RefCell::new([Vec::new(), Vec::new()]) };
}

/// `f` on two scratch slices of `n0` and `n1` elements, their contents
/// left from earlier calls (every use writes them before reading).
fn with_scratch<R>(n0: usize, n1: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let [a, b] = &mut *s;
            if a.len() < n0 {
                a.resize(n0, 0.0);
            }
            if b.len() < n1 {
                b.resize(n1, 0.0);
            }
            f(&mut a[..n0], &mut b[..n1])
        }
        Err(_) => f(&mut vec![0.0; n0], &mut vec![0.0; n1]),
    })
}

/// conv2d(v, w) + b: v [B, C, H, W] -> [B, O, OH, OW], a chunk of images
/// per product (X = W cols, cols the chunk's patches side by side).
fn conv_up(v: &[f32], w: &[f32], b: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
    let (kk, p, conv) = (g.c * g.k * g.k, g.oh * g.ow, g.conv());
    let (img_v, img_h) = (g.c * g.h * g.w, g.o * p);
    let (chunk, per_group) = g.chunking(CHUNK_COLS);
    let mut out = vec![0.0f32; g.batch * img_h];
    out.par_chunks_mut(per_group * img_h)
        .zip(v.par_chunks(per_group * img_v))
        .for_each(|(out, vin)| {
            with_scratch(kk * chunk * p, g.o * chunk * p, |cols, x| {
                let n_imgs = vin.len() / img_v;
                for start in (0..n_imgs).step_by(chunk) {
                    let nb = chunk.min(n_imgs - start);
                    let cp = nb * p;
                    chunk_patches(&conv, &vin[start * img_v..][..nb * img_v], cols);
                    let (wv, cv) = (View::row_major(w, kk), View::row_major(cols, cp));
                    chunk_product([g.o, cp, kk], wv, cv, x, false);
                    for i in 0..nb {
                        let dst = &mut out[(start + i) * img_h..][..img_h];
                        for (o, plane) in dst.chunks_mut(p).enumerate() {
                            let bias = b.map_or(0.0, |b| b[o]);
                            for (d, s) in plane.iter_mut().zip(&x[o * cp + i * p..][..p]) {
                                *d = s + bias;
                            }
                        }
                    }
                }
            })
        });
    out
}

/// The transposed convolution with the same kernel plus bias a:
/// h [B, O, OH, OW] -> [B, C, H, W] (r = W^T H, then col2im per image).
fn conv_down(h: &[f32], w: &[f32], a: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
    let (kk, p, conv) = (g.c * g.k * g.k, g.oh * g.ow, g.conv());
    let (img_v, img_h, hw) = (g.c * g.h * g.w, g.o * p, g.h * g.w);
    let (chunk, per_group) = g.chunking(CHUNK_COLS);
    let mut out = vec![0.0f32; g.batch * img_v];
    out.par_chunks_mut(per_group * img_v)
        .zip(h.par_chunks(per_group * img_h))
        .for_each(|(out, hin)| {
            with_scratch(g.o * chunk * p, kk * chunk * p, |hc, r| {
                let n_imgs = hin.len() / img_h;
                for start in (0..n_imgs).step_by(chunk) {
                    let nb = chunk.min(n_imgs - start);
                    let cp = nb * p;
                    gather_planes(&hin[start * img_h..][..nb * img_h], g.o, p, hc);
                    let (wt, hv) = (View::row_major(w, kk).t(), View::row_major(hc, cp));
                    chunk_product([kk, cp, g.o], wt, hv, r, false);
                    for i in 0..nb {
                        let img = &mut out[(start + i) * img_v..][..img_v];
                        for (ci, plane) in img.chunks_mut(hw).enumerate() {
                            plane.fill(a.map_or(0.0, |a| a[ci]));
                        }
                        conv.col2im(&r[i * p..], cp, img);
                    }
                }
            })
        });
    out
}

/// sum over the batch of x_b (x) patches(v_b): v [B, C, H, W],
/// x [B, O, OH, OW] -> [O, C, K, K], per thread group then added in order.
fn conv_weight_grad(v: &[f32], x: &[f32], g: &Geometry) -> Vec<f32> {
    let (kk, p, conv) = (g.c * g.k * g.k, g.oh * g.ow, g.conv());
    let (img_v, img_h) = (g.c * g.h * g.w, g.o * p);
    let (chunk, per_group) = g.chunking(WG_COLS);
    let partials: Vec<Vec<f32>> = v
        .par_chunks(per_group * img_v)
        .zip(x.par_chunks(per_group * img_h))
        .map(|(vin, xin)| {
            with_scratch(kk * chunk * p, g.o * chunk * p, |cols, xc| {
                let n_imgs = vin.len() / img_v;
                let mut acc = vec![0.0f32; g.o * kk];
                for start in (0..n_imgs).step_by(chunk) {
                    let nb = chunk.min(n_imgs - start);
                    let cp = nb * p;
                    chunk_patches(&conv, &vin[start * img_v..][..nb * img_v], cols);
                    gather_planes(&xin[start * img_h..][..nb * img_h], g.o, p, xc);
                    // acc [O, kk] += X [O, cp] cols^T [cp, kk].
                    let (xv, ct) = (View::row_major(xc, cp), View::row_major(cols, cp).t());
                    chunk_product([g.o, kk, cp], xv, ct, &mut acc, true);
                }
                acc
            })
        })
        .collect();
    let mut out = partials[0].clone();
    for part in &partials[1..] {
        for (a, b) in out.iter_mut().zip(part) {
            *a += b;
        }
    }
    out
}

/// Sum over the batch and positions of `t` [B, C, P...] per channel.
fn channel_sums(t: &[f32], channels: usize, plane: usize) -> Vec<f32> {
    if plane == 1 {
        // Dense: column sums, row by row (a loop that vectorises).
        let mut s = vec![0.0f64; channels];
        for row in t.chunks(channels) {
            for (acc, &x) in s.iter_mut().zip(row) {
                *acc += x as f64;
            }
        }
        return s.into_iter().map(|x| x as f32).collect();
    }
    let mut s = vec![0.0f64; channels];
    for image in t.chunks(channels * plane) {
        for (acc, p) in s.iter_mut().zip(image.chunks(plane)) {
            *acc += mrbm_kernels::math::sum(p);
        }
    }
    s.into_iter().map(|x| x as f32).collect()
}

/// The forward map of `l` on host values: `input` [B, ...] -> [B, ...].
fn linear_values(
    input: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    l: &Linear,
    wd: &[usize],
    batch: usize,
) -> (Vec<f32>, Vec<usize>) {
    match l.conv {
        None => {
            let (nv, nh) = (wd[0], wd[1]);
            let (n_in, n_out) = if l.down { (nh, nv) } else { (nv, nh) };
            let iv = View::row_major(input, n_in);
            let wv = if l.down {
                View::row_major(w, nh).t()
            } else {
                View::row_major(w, nh)
            };
            let mut y = product(batch, n_out, n_in, iv, wv);
            if let Some(bias) = bias {
                y.par_chunks_mut(n_out).for_each(|row| {
                    for (yi, bi) in row.iter_mut().zip(bias) {
                        *yi += bi;
                    }
                });
            }
            (y, vec![batch, n_out, 1, 1])
        }
        Some(_) => {
            let g = geometry(batch, l, wd);
            if l.down {
                (conv_down(input, w, bias, &g), vec![batch, g.c, g.h, g.w])
            } else {
                (conv_up(input, w, bias, &g), vec![batch, g.o, g.oh, g.ow])
            }
        }
    }
}

fn linear_host(input: &FlexTensor, w: &FlexTensor, bias: &FlexTensor, l: &Linear) -> FlexTensor {
    let (wd, batch) = (dims(w), dims(input)[0]);
    let (iv, wv, bv) = (values(input), values(w), values(bias));
    let (y, shape) = linear_values(&iv, &wv, Some(&bv), l, &wd, batch);
    tensor(y, shape)
}

/// (d input when `want_input`, dW, d bias) of `l`'s map given dy.
fn linear_grads(
    input: &FlexTensor,
    w: &FlexTensor,
    dy: &FlexTensor,
    l: &Linear,
    want_input: bool,
) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
    let (id, wd) = (dims(input), dims(w));
    let batch = id[0];
    let (iv, wv, dyv) = (values(input), values(w), values(dy));
    // The input's gradient is the other map of the same weights, unbiased.
    let adjoint = Linear {
        down: !l.down,
        ..*l
    };
    let d_input = want_input.then(|| {
        let (d, _) = linear_values(&dyv, &wv, None, &adjoint, &wd, batch);
        tensor(d, id.clone())
    });
    // Up: dW = sum v (x) dx; down: the same with the roles swapped.
    let (vis, hid) = if l.down { (&*dyv, &*iv) } else { (&*iv, &*dyv) };
    let (dw, db) = match l.conv {
        None => {
            let (nv, nh) = (wd[0], wd[1]);
            let dw = product(
                nv,
                nh,
                batch,
                View::row_major(vis, nv).t(),
                View::row_major(hid, nh),
            );
            let n_out = if l.down { nv } else { nh };
            (dw, channel_sums(&dyv, n_out, 1))
        }
        Some(_) => {
            let g = geometry(batch, l, &wd);
            let dw = conv_weight_grad(vis, hid, &g);
            let db = if l.down {
                channel_sums(&dyv, g.c, g.h * g.w)
            } else {
                channel_sums(&dyv, g.o, g.oh * g.ow)
            };
            (dw, db)
        }
    };
    let nb = db.len();
    (d_input, tensor(dw, wd), tensor(db, vec![nb]))
}

/// f = N sigmoid(k x) of `x`'s rows (its first dimension), copied and
/// computed row by row in parallel; also each row's sum of A(x) when
/// `with_a`.
fn act_rows(x: &FlexTensor, n: f32, k: f32, with_a: bool) -> (Vec<f32>, Vec<f64>) {
    let (rows, src) = (dims(x)[0], values(x));
    let level = Level::detect();
    let act = Act {
        n,
        k,
        identity: false,
    };
    let mut f = vec![0.0f32; src.len()];
    let len = src.len() / rows.max(1);
    if len == 0 {
        return (f, vec![0.0; rows]);
    }
    let sums = f
        .par_chunks_mut(len)
        .zip(src.par_chunks(len))
        .map(|(row, s)| {
            row.copy_from_slice(s);
            act_row(level, row, 0.0, act, with_a).1
        })
        .collect();
    (f, sums)
}

/// out = a * b elementwise, with the rows of b (its first dimension, one
/// value per row) or elementwise when `per_row` is false.
fn scaled(a: &[f32], b: &[f32], per_row: bool, map: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; a.len()];
    let len = if per_row {
        a.len() / b.len().max(1)
    } else {
        4096
    };
    if len == 0 {
        return out;
    }
    out.par_chunks_mut(len)
        .zip(a.par_chunks(len))
        .enumerate()
        .for_each(|(i, (o, a))| {
            if per_row {
                let g = b[i];
                for (o, &a) in o.iter_mut().zip(a) {
                    *o = map(a) * g;
                }
            } else {
                for ((o, &a), &g) in o.iter_mut().zip(a).zip(&b[i * len..]) {
                    *o = map(a) * g;
                }
            }
        });
    out
}

/// The sums of `v` [B, C, ...] over each (row, channel) plane, [B, C], in
/// parallel over rows.
fn plane_sums(v: &FlexTensor, channels: usize) -> Vec<f64> {
    let (rows, src) = (dims(v)[0], values(v));
    let len = src.len() / rows.max(1);
    let mut out = vec![0.0f64; rows * channels];
    if len == 0 || channels == 0 {
        return out;
    }
    let plane = len / channels;
    out.par_chunks_mut(channels)
        .zip(src.par_chunks(len))
        .for_each(|(o, row)| {
            for (o, p) in o.iter_mut().zip(row.chunks(plane)) {
                *o = mrbm_kernels::math::sum(p);
            }
        });
    out
}

/// Each row's sum of a_c times its plane sums [B, C].
fn dot_rows(sums: &[f64], a: &[f32]) -> Vec<f32> {
    sums.chunks(a.len().max(1))
        .map(|row| row.iter().zip(a).map(|(s, &a)| s * a as f64).sum::<f64>() as f32)
        .collect()
}

impl RbmHostOps for Flex {
    fn rbm_linear(
        input: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        linear: Linear,
    ) -> FloatTensor<Self> {
        linear_host(&input, &w, &bias, &linear)
    }

    fn rbm_unit_mean(x: FloatTensor<Self>, n: f32, k: f32) -> FloatTensor<Self> {
        let (f, _) = act_rows(&x, n, k, false);
        tensor(f, dims(&x))
    }

    fn rbm_log_partition_rows(x: FloatTensor<Self>, n: f32, k: f32) -> FloatTensor<Self> {
        let (_, sums) = act_rows(&x, n, k, true);
        tensor(
            sums.into_iter().map(|s| s as f32).collect(),
            vec![dims(&x)[0]],
        )
    }

    fn rbm_visible_dot(v: FloatTensor<Self>, a: FloatTensor<Self>) -> FloatTensor<Self> {
        let av = values(&a);
        let sums = plane_sums(&v, av.len());
        tensor(dot_rows(&sums, &av), vec![dims(&v)[0]])
    }
}

// ---- the backward passes --------------------------------------------------

type Ad<C> = Autodiff<Flex, C>;

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    type State = (FlexTensor, FlexTensor, Linear);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_in, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (input, w, linear) = ops.state;
        let (d_in, dw, db) = linear_grads(&input, &w, &dy, &linear, node_in.is_some());
        if let (Some(node), Some(d)) = (node_in, d_in) {
            grads.register::<Flex>(node.id, d);
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, dw);
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, db);
        }
    }
}

#[derive(Debug)]
struct UnitMeanBackward;

impl Backward<Flex, 1> for UnitMeanBackward {
    /// (f(x), N, k).
    type State = (FlexTensor, f32, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (f, n, k) = ops.state;
        if let Some(node) = node_x {
            let shape = dims(&f);
            let inv_n = 1.0 / n;
            // f'(x) = k f (1 - f / N).
            let dx = scaled(&values(&f), &values(&dy), false, |f| {
                k * f * (1.0 - f * inv_n)
            });
            grads.register::<Flex>(node.id, tensor(dx, shape));
        }
    }
}

#[derive(Debug)]
struct LogPartitionBackward;

impl Backward<Flex, 1> for LogPartitionBackward {
    /// f(x) = A'(x), the input's shape.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let f = ops.state;
        if let Some(node) = node_x {
            let shape = dims(&f);
            let dx = scaled(&values(&f), &values(&dout), true, |f| f);
            grads.register::<Flex>(node.id, tensor(dx, shape));
        }
    }
}

#[derive(Debug)]
struct VisibleDotBackward;

impl Backward<Flex, 2> for VisibleDotBackward {
    /// (v's shape, a, v's plane sums [B, C]).
    type State = (Vec<usize>, FlexTensor, std::sync::Arc<Vec<f64>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_v, node_a] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let (shape, a, sums) = ops.state;
        let (g, av) = (values(&dout), values(&a));
        let channels = av.len();
        if let Some(node) = node_v {
            // dv[b, c, ...] = g_b a_c.
            let n: usize = shape.iter().product();
            let len = n / shape[0].max(1);
            let plane = len / channels.max(1);
            let mut dv = vec![0.0f32; n];
            if plane > 0 {
                dv.par_chunks_mut(len)
                    .zip(g.par_iter())
                    .for_each(|(row, &gb)| {
                        for (p, &ac) in row.chunks_mut(plane).zip(av.iter()) {
                            p.fill(gb * ac);
                        }
                    });
            }
            grads.register::<Flex>(node.id, tensor(dv, shape.clone()));
        }
        if let Some(node) = node_a {
            // da_c = sum_b g_b (plane sum of v[b, c]).
            let mut da = vec![0.0f64; channels];
            for (row, &gb) in sums.chunks(channels.max(1)).zip(g.iter()) {
                for (d, s) in da.iter_mut().zip(row) {
                    *d += gb as f64 * s;
                }
            }
            let da = da.into_iter().map(|x| x as f32).collect();
            grads.register::<Flex>(node.id, tensor(da, vec![channels]));
        }
    }
}

impl<C: CheckpointStrategy> RbmHostOps for Ad<C> {
    fn rbm_linear(
        input: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        linear: Linear,
    ) -> FloatTensor<Self> {
        let y = linear_host(input.primitive(), w.primitive(), bias.primitive(), &linear);
        match LinearBackward
            .prepare::<C>([input.node(), w.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((input.into_primitive(), w.into_primitive(), linear), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn rbm_unit_mean(x: FloatTensor<Self>, n: f32, k: f32) -> FloatTensor<Self> {
        let f = Flex::rbm_unit_mean(x.primitive().clone(), n, k);
        match UnitMeanBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((f.clone(), n, k), f),
            OpsKind::UnTracked(prep) => prep.finish(f),
        }
    }

    fn rbm_log_partition_rows(x: FloatTensor<Self>, n: f32, k: f32) -> FloatTensor<Self> {
        let shape = dims(x.primitive());
        let (f, sums) = act_rows(x.primitive(), n, k, true);
        let out = tensor(sums.into_iter().map(|s| s as f32).collect(), vec![shape[0]]);
        match LogPartitionBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(tensor(f, shape), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn rbm_visible_dot(v: FloatTensor<Self>, a: FloatTensor<Self>) -> FloatTensor<Self> {
        let av = values(a.primitive()).into_owned();
        let sums = plane_sums(v.primitive(), av.len());
        let out = tensor(dot_rows(&sums, &av), vec![dims(v.primitive())[0]]);
        match VisibleDotBackward
            .prepare::<C>([v.node(), a.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (
                    dims(v.primitive()),
                    a.into_primitive(),
                    std::sync::Arc::new(sums),
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
