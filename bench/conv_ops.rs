//! Seconds per call of the convolution ops one conv-RBM training step uses,
//! on flex, for each layer of the paper's generation stack (batch 128):
//! where the time of bench/train_step goes.
//!
//!   cargo run --release -p mrbm-core --example conv_ops

use std::time::Instant;

use burn::tensor::module::{conv2d, conv2d_weight_backward, conv_transpose2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Distribution, Tensor};

fn time<F: FnMut() -> Tensor<4>>(name: &str, mut f: F) {
    let _ = f().into_data();
    let s = Instant::now();
    for _ in 0..3 {
        let _ = f().into_data();
    }
    println!("  {name:18} {:.3} s", s.elapsed().as_secs_f64() / 3.0);
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let d = Device::flex();
    let b = 128;
    mrbm_stage::in_pool(threads, || {
        for (ci, co, hw) in [
            (3usize, 64usize, 64usize),
            (64, 128, 32),
            (128, 256, 16),
            (256, 256, 8),
        ] {
            let v: Tensor<4> = Tensor::random([b, ci, hw, hw], Distribution::Default, &d);
            let w: Tensor<4> = Tensor::random([co, ci, 4, 4], Distribution::Default, &d);
            let h: Tensor<4> = Tensor::random([b, co, hw / 2, hw / 2], Distribution::Default, &d);
            let o = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
            let ot = ConvTransposeOptions::new([2, 2], [1, 1], [0, 0], [1, 1], 1);
            println!("layer {ci}->{co} at {hw}x{hw}");
            time("conv2d", || conv2d(v.clone(), w.clone(), None, o.clone()));
            time("conv_transpose2d", || {
                conv_transpose2d(h.clone(), w.clone(), None, ot.clone())
            });
            time("weight_backward", || {
                conv2d_weight_backward(v.clone(), w.clone(), h.clone(), o.clone())
            });
            time("sigmoid", || burn::tensor::activation::sigmoid(h.clone()));
        }
    })
    .expect("thread pool");
}
