//! Images per second of one mrbm training step (up, down, loss, gradient,
//! Adam) on flex. Built as an example of mrbm-core; bench/train_step.sh runs
//! it beside the PyTorch reference and prints the ratios.
//!
//!   cargo run --release -p mrbm-core --example train_step -- --stack generation --threads 2
//!   (GPU: build with `--features cuda` and pass `--device cuda`; tools/gpu-check.sh)

use std::time::Instant;

use burn::tensor::{DType, Device};
use mrbm_core::stack::{Dbn, StackParams};
use mrbm_core::train::{GradientMode, OptimParams, Trainer};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn main() {
    // The allocator as the `mrbm` binary sets it.
    mrbm_device::host_memory::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let stack = arg(&args, "--stack", "generation");
    let batch: usize = arg(&args, "--batch", "128").parse().expect("--batch");
    let steps: usize = arg(&args, "--steps", "5").parse().expect("--steps");
    let warmup: usize = arg(&args, "--warmup", "1").parse().expect("--warmup");
    let threads: usize = arg(&args, "--threads", "2").parse().expect("--threads");
    let gradient = match arg(&args, "--gradient", "auto").as_str() {
        "autodiff" => GradientMode::Autodiff,
        "closed_form" => GradientMode::ClosedForm,
        _ => GradientMode::Auto,
    };
    // generation: the paper's stack on 64x64x3; mnist: a classification
    // stack 1-32-64 conv (4x4, stride 2) then dense 3136-500.
    // --size S: square S x S images instead (bench/scaling.sh).
    let size: Option<usize> = args
        .iter()
        .position(|a| a == "--size")
        .map(|i| args[i + 1].parse().expect("--size"));
    let (input, params) = match stack.as_str() {
        "generation" => ([3, 64, 64], StackParams::default()),
        "mnist" => (
            [1, 28, 28],
            StackParams {
                conv_channels: vec![32, 64],
                dense: vec![500],
                ..StackParams::default()
            },
        ),
        s => panic!("unknown --stack {s}"),
    };
    let input = size.map_or(input, |s| [input[0], s, s]);
    // --device cpu | wgpu[:I] | cuda[:I] (the accelerators need the crate
    // feature of that name); proven with a tiny kernel before timing.
    let dev_arg = arg(&args, "--device", "cpu");
    let resolved = mrbm_device::resolve(&dev_arg).unwrap_or_else(|e| panic!("{e}"));
    let device: Device = resolved.burn().clone();
    let spec = params.build_spec(input).expect("spec");
    let dbn = Dbn::init(spec, 0.01, 0, &device, DType::F32);
    let mut tr = Trainer::new(
        dbn,
        OptimParams {
            batch_size: batch,
            gradient,
            ..OptimParams::default()
        },
    );
    let len: usize = input.iter().product();
    let px: Vec<u8> = (0..batch * len)
        .map(|i| ((i * 2654435761usize) >> 13) as u8)
        .collect();
    let result = mrbm_stage::in_pool(threads, || {
        let v = tr.dbn.pixels_to_visible(&px, batch, &device, DType::F32);
        for s in 0..warmup {
            tr.step(v.clone(), 0, s).expect("step");
        }
        let t = Instant::now();
        for s in 0..steps {
            tr.step(v.clone(), 1, s).expect("step");
        }
        t.elapsed().as_secs_f64()
    })
    .expect("thread pool");
    println!(
        "{{\"impl\": \"mrbm\", \"device\": \"{dev_arg}\", \"stack\": \"{stack}\", \"size\": {}, \"batch\": {batch}, \"threads\": {threads}, \"steps\": {steps}, \"gradient\": \"{:?}\", \"seconds_per_step\": {}, \"images_per_s\": {}}}",
        input[1],
        gradient,
        result / steps as f64,
        (batch * steps) as f64 / result
    );
}
