//! Images/s of the DCIM training step (forward, reverse, objective 21,
//! autodiff gradient, Adam) on burn's CPU backend, for
//! bench/reference/dcim.py, which times PyTorch on the same step and prints
//! the ratio. Prints one JSON line.
//!
//!   bash bench/dcim_bench.sh   (builds this example in the dev profile, then
//!   runs bench/reference/dcim.py bench --mrbm .../debug/examples/dcim_bench)

use std::time::Instant;

use burn::tensor::Device;
use mrbm_dcim::model::{images_tensor, one_hot, Dcim, LayerDef, Objective, Spec, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() {
    // The allocator as the `mrbm` binary sets it.
    mrbm_device::host_memory::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let arch = arg(&args, "--arch", "mlp");
    let batch: usize = arg(&args, "--batch", "64").parse().expect("--batch");
    let batches: usize = arg(&args, "--batches", "20").parse().expect("--batches");
    let threads: usize = arg(&args, "--threads", "2").parse().expect("--threads");
    let layers = match arch.as_str() {
        "mlp" => vec![
            LayerDef::Dense(512),
            LayerDef::Dense(512),
            LayerDef::Dense(10),
        ],
        "cnn" => vec![
            LayerDef::Conv([3, 1, 32]),
            LayerDef::Conv([3, 1, 32]),
            LayerDef::Conv([2, 2, 32]),
            LayerDef::Conv([3, 1, 64]),
            LayerDef::Conv([3, 1, 64]),
            LayerDef::Conv([2, 2, 64]),
            LayerDef::Dense(50),
            LayerDef::Dense(10),
        ],
        other => panic!("--arch mlp|cnn, got {other}"),
    };
    let dev = Device::flex();
    let spec = Spec {
        input: [1, 28, 28],
        layers,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let px: Vec<u8> = (0..batch * 784).map(|_| rng.random::<u8>()).collect();
    let ys: Vec<usize> = (0..batch).map(|i| i % 10).collect();
    let secs = mrbm_stage::in_pool(threads, || {
        let mut t = Trainer::new(
            Dcim::init(spec, 1, &dev).unwrap(),
            Objective::Generative,
            1e-3,
            1.0,
        );
        let x = images_tensor(&px, batch, [1, 28, 28], &dev);
        let y = one_hot(&ys, 10, &dev);
        t.step(x.clone(), y.clone(), &mut rng).unwrap(); // warm-up
        let start = Instant::now();
        for _ in 0..batches {
            t.step(x.clone(), y.clone(), &mut rng).unwrap();
        }
        start.elapsed().as_secs_f64()
    })
    .expect("thread pool");
    println!(
        "{{\"impl\": \"mrbm\", \"arch\": \"{arch}\", \"batch\": {batch}, \"threads\": {threads}, \"batches\": {batches}, \"images_per_s\": {}}}",
        (batch * batches) as f64 / secs
    );
}
