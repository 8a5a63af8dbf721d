//! The autodiff path's host ops (`autodiff_host`) against burn's own ops:
//! values and every gradient (input, weights, bias) of a random linear
//! functional of each op's output, dense and conv, up and down; and a whole
//! backprop-coupled stack in f32 (host ops) against the same stack in f64
//! (burn's ops).

use burn::tensor::activation::sigmoid;
use burn::tensor::module::{conv2d, conv_transpose2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{DType, Device, Tensor, TensorData};
use mrbm_core::autodiff_host::{self, Linear};
use mrbm_core::layer::to_f64;
use mrbm_core::stack::{Dbn, StackParams};
use mrbm_core::train::{GradientMode, OptimParams, Trainer};
use mrbm_core::unit::softplus;
use mrbm_core::Coupling;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random<const D: usize>(shape: [usize; D], seed: u64, ad: bool) -> Tensor<D> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let device = if ad {
        Device::flex().autodiff()
    } else {
        Device::flex()
    };
    Tensor::from_data(TensorData::new(v, shape), (&device, DType::F32))
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths");
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f64::max)
}

/// The values of y = op(input, w, bias) and the gradients of sum(y * r) in
/// input, w and bias.
type Grads = [Vec<f64>; 4];

fn run<F>(op: F, shapes: ([usize; 4], [usize; 4], usize), r_shape: [usize; 4]) -> Grads
where
    F: Fn(Tensor<4>, Tensor<4>, Tensor<1>) -> Tensor<4>,
{
    let (si, sw, sb) = shapes;
    let input = random(si, 1, true).require_grad();
    let w = random(sw, 2, true).require_grad();
    let b = random([sb], 3, true).require_grad();
    let y = op(input.clone(), w.clone(), b.clone());
    assert_eq!(y.dims(), r_shape, "output shape");
    let r = random(r_shape, 4, true);
    let grads = (y.clone() * r).sum().backward();
    let g = |t: &Tensor<4>| to_f64(&t.grad(&grads).expect("a gradient"));
    [
        to_f64(&y),
        g(&input),
        g(&w),
        to_f64(&b.grad(&grads).expect("bias gradient")),
    ]
}

/// Each named host result within 2e-5 (relative to its largest value) of
/// burn's.
fn assert_close(host: &[Vec<f64>], burn: &[Vec<f64>], names: &[&str], what: &str) {
    for ((h, b), name) in host.iter().zip(burn).zip(names) {
        let e = max_rel(h, b);
        println!("{what} {name}: {e:.2e}");
        assert!(e < 2e-5, "{what} {name}: relative error {e:.2e}");
    }
}

const LINEAR: [&str; 4] = ["values", "d input", "d w", "d bias"];

#[test]
fn linear_maps_and_their_gradients_are_burns() {
    // Dense: v [B, V, 1, 1], w [V, H, 1, 1].
    let (bsz, nv, nh) = (5, 7, 6);
    let dense = |down| Linear {
        conv: None,
        visible: [nv, 1, 1],
        down,
    };
    let host = run(
        |v, w, b| autodiff_host::linear(v, w, b, dense(false)),
        ([bsz, nv, 1, 1], [nv, nh, 1, 1], nh),
        [bsz, nh, 1, 1],
    );
    let burn = run(
        |v, w, b| {
            let x = v.reshape([bsz, nv]).matmul(w.reshape([nv, nh])) + b.reshape([1, nh]);
            x.reshape([bsz, nh, 1, 1])
        },
        ([bsz, nv, 1, 1], [nv, nh, 1, 1], nh),
        [bsz, nh, 1, 1],
    );
    assert_close(&host, &burn, &LINEAR, "dense up");
    let host = run(
        |h, w, a| autodiff_host::linear(h, w, a, dense(true)),
        ([bsz, nh, 1, 1], [nv, nh, 1, 1], nv),
        [bsz, nv, 1, 1],
    );
    let burn = run(
        |h, w, a| {
            let y =
                h.reshape([bsz, nh]).matmul(w.reshape([nv, nh]).transpose()) + a.reshape([1, nv]);
            y.reshape([bsz, nv, 1, 1])
        },
        ([bsz, nh, 1, 1], [nv, nh, 1, 1], nv),
        [bsz, nv, 1, 1],
    );
    assert_close(&host, &burn, &LINEAR, "dense down");

    // Conv: 9 x 7 images (output padding on both sides), kernel 4,
    // stride 2, padding 1, and enough images for several chunks.
    let (bsz, c, h, wd, o, k, s, p) = (11, 3, 9, 7, 5, 4, 2, 1);
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (wd + 2 * p - k) / s + 1);
    let conv = |down| Linear {
        conv: Some([k, s, p]),
        visible: [c, h, wd],
        down,
    };
    let opt = ConvOptions::new([s; 2], [p; 2], [1, 1], 1);
    let pad = [
        h + 2 * p - ((oh - 1) * s + k),
        wd + 2 * p - ((ow - 1) * s + k),
    ];
    let topt = ConvTransposeOptions::new([s; 2], [p; 2], pad, [1, 1], 1);
    let host = run(
        |v, w, b| autodiff_host::linear(v, w, b, conv(false)),
        ([bsz, c, h, wd], [o, c, k, k], o),
        [bsz, o, oh, ow],
    );
    let burn = run(
        |v, w, b| conv2d(v, w, Some(b), opt.clone()),
        ([bsz, c, h, wd], [o, c, k, k], o),
        [bsz, o, oh, ow],
    );
    assert_close(&host, &burn, &LINEAR, "conv up");
    let host = run(
        |h, w, a| autodiff_host::linear(h, w, a, conv(true)),
        ([bsz, o, oh, ow], [o, c, k, k], c),
        [bsz, c, h, wd],
    );
    let burn = run(
        |hh, w, a| conv_transpose2d(hh, w, Some(a), topt.clone()),
        ([bsz, o, oh, ow], [o, c, k, k], c),
        [bsz, c, h, wd],
    );
    assert_close(&host, &burn, &LINEAR, "conv down");
}

#[test]
fn unit_means_and_log_partitions_and_their_gradients_are_burns() {
    for (n, k) in [(1u32, 1.0f32), (255, 4.0 / 255.0), (3, 0.8)] {
        let shape = [6, 4, 3, 5];
        let scale = 8.0 / k; // inputs over the whole sigmoid
        let x = (random(shape, 7, true) * scale).require_grad();
        let r = random(shape, 8, true);
        let rows = random([6], 9, true);
        let eval = |host: bool| {
            let x = x.clone();
            let (mean, lp) = if host {
                let m = autodiff_host::unit_mean(x.clone(), n as f32, k);
                (m, autodiff_host::log_partition_rows(x.clone(), n as f32, k))
            } else {
                let m = sigmoid(x.clone() * k) * n as f32;
                let lp = (softplus(x.clone() * k) * (n as f32 / k))
                    .reshape([6, 60])
                    .sum_dim(1)
                    .reshape([6]);
                (m, lp)
            };
            let total = (mean.clone() * r.clone()).sum() + (lp.clone() * rows.clone()).sum();
            let grads = total.backward();
            [
                to_f64(&mean),
                to_f64(&lp),
                to_f64(&x.grad(&grads).expect("a gradient")),
            ]
        };
        let (host, burn) = (eval(true), eval(false));
        let names = ["mean", "log partition", "d x"];
        assert_close(&host, &burn, &names, &format!("N {n} k {k}"));
    }
}

#[test]
fn the_visible_term_and_its_gradients_are_burns() {
    let (bsz, c, h, w) = (5, 3, 4, 6);
    let v = random([bsz, c, h, w], 11, true).require_grad();
    let a = random([c], 12, true).require_grad();
    let r = random([bsz], 13, true);
    let eval = |host: bool| {
        let out = if host {
            autodiff_host::visible_dot(v.clone(), a.clone())
        } else {
            (v.clone() * a.clone().reshape([1, c, 1, 1]))
                .reshape([bsz, c * h * w])
                .sum_dim(1)
                .reshape([bsz])
        };
        let grads = (out.clone() * r.clone()).sum().backward();
        [
            to_f64(&out),
            to_f64(&v.grad(&grads).expect("d v")),
            to_f64(&a.grad(&grads).expect("d a")),
        ]
    };
    let (host, burn) = (eval(true), eval(false));
    assert_close(&host, &burn, &["values", "d v", "d a"], "visible term");
}

#[test]
fn ops_outside_an_autodiff_graph_are_not_taken_over() {
    // Plain tensors keep their own paths (and their bits): the host ops
    // serve only the autodiff device, in f32.
    assert!(!autodiff_host::serves(&random([2, 2, 1, 1], 1, false)));
    assert!(autodiff_host::serves(&random([2, 2, 1, 1], 1, true)));
    let f64_ad = random([2, 2, 1, 1], 1, true).cast(DType::F64);
    assert!(!autodiff_host::serves(&f64_ad));
}

/// The gradients of every layer of a backprop-coupled conv + dense stack
/// in `dtype` (f32: the host ops; f64: burn's ops).
fn coupled_gradients(dtype: DType) -> Vec<Vec<f64>> {
    let params = StackParams {
        conv_channels: vec![4, 6],
        dense: vec![9],
        ..StackParams::default()
    };
    let spec = params.build_spec([3, 12, 10]).unwrap();
    let dev = Device::flex();
    let dbn = Dbn::init(spec, 0.3, 3, &dev, DType::F64);
    let dbn = Dbn {
        spec: dbn.spec.clone(),
        layers: dbn
            .layers
            .iter()
            .map(|l| {
                l.with_params(
                    l.w.clone().cast(dtype),
                    l.a.clone().cast(dtype),
                    l.b.clone().cast(dtype),
                )
            })
            .collect(),
    };
    let px: Vec<u8> = (0..6 * 360)
        .map(|i| ((i * 37 + i / 7) % 256) as u8)
        .collect();
    let v = dbn.pixels_to_visible(&px, 6, &dev, dtype);
    let tr = Trainer::new(
        dbn,
        OptimParams {
            coupling: Coupling::Backprop,
            gradient: GradientMode::Autodiff,
            ..OptimParams::default()
        },
    );
    let (_, g) = tr.gradients(v);
    g.iter()
        .flat_map(|g| [to_f64(&g.w), to_f64(&g.a), to_f64(&g.b)])
        .collect()
}

#[test]
fn a_backprop_coupled_stack_has_burns_gradients() {
    let host = coupled_gradients(DType::F32);
    let burn = coupled_gradients(DType::F64);
    for (i, (h, b)) in host.iter().zip(&burn).enumerate() {
        let e = max_rel(h, b);
        println!("layer {} {}: {e:.2e}", i / 3, ["w", "a", "b"][i % 3]);
        assert!(
            e < 1e-4,
            "layer {} {}: relative error {e:.2e}",
            i / 3,
            ["w", "a", "b"][i % 3]
        );
    }
}

#[test]
fn the_host_ops_give_the_same_bits_run_to_run() {
    // Two runs of the same coupled step (per-thread partials are added in
    // a fixed order): every gradient bit for bit.
    let a = coupled_gradients(DType::F32);
    let b = coupled_gradients(DType::F32);
    for (x, y) in a.iter().zip(&b) {
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "a gradient changed between two identical runs");
    }
}
