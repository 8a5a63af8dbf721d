//! Picks quickstart parameters: trains a stack on synthetic coloured shapes,
//! extracts the top features and scores a linear (ridge, one-vs-rest)
//! classifier on held-out images, beside the same classifier on raw pixels.
//!
//!   cargo run --release -p mrbm-core --example quickstart_probe -- \
//!       --size 16 --classes 4 --n 2000 --threads 2 --params 'conv_channels = [16, 32]
//!   dense = []
//!   n = 255
//!   epochs = 5'

use std::time::Instant;

use burn::tensor::{DType, Device};
use mrbm_core::stack::Dbn;
use mrbm_core::stages::{extract_features, TrainParams};
use mrbm_core::train::{train_images, Trainer};
use mrbm_data::artifact::ImageSet;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// Coloured shapes on coloured backgrounds (like mrbm-data's synthetic set).
fn shapes(n: usize, size: usize, classes: usize, seed: u64) -> ImageSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut px = vec![0u8; n * 3 * size * size];
    let plane = size * size;
    for i in 0..n {
        let k = i % classes;
        let bg: [u8; 3] = [rng.random(), rng.random(), rng.random()];
        let fg: [u8; 3] = loop {
            let f: [u8; 3] = [rng.random(), rng.random(), rng.random()];
            if (0..3)
                .map(|c| (f[c] as i32 - bg[c] as i32).abs())
                .sum::<i32>()
                >= 160
            {
                break f;
            }
        };
        let s = size as f32;
        let r = s * rng.random_range(0.22..0.42);
        let cx = rng.random_range(r..=(s - r).max(r));
        let cy = rng.random_range(r..=(s - r).max(r));
        for y in 0..size {
            for x in 0..size {
                let (dx, dy) = ((x as f32 + 0.5 - cx) / r, (y as f32 + 0.5 - cy) / r);
                let inside = match k {
                    0 => dx * dx + dy * dy <= 1.0,
                    1 => dx.abs() <= 0.8 && dy.abs() <= 0.8,
                    2 => dy <= 0.8 && dy >= -1.0 && dx.abs() <= (dy + 1.0) / 1.8,
                    3 => {
                        (dx.abs() <= 0.3 && dy.abs() <= 1.0) || (dy.abs() <= 0.3 && dx.abs() <= 1.0)
                    }
                    4 => dx.abs() + dy.abs() <= 1.0,
                    _ => (0.3..=1.0).contains(&(dx * dx + dy * dy)),
                };
                for c in 0..3 {
                    px[i * 3 * plane + c * plane + y * size + x] =
                        if inside { fg[c] } else { bg[c] };
                }
            }
        }
    }
    ImageSet::new(
        px,
        n,
        3,
        size,
        size,
        (0..n).map(|i| (i % classes) as i64).collect(),
    )
}

/// Ridge one-vs-rest on standardised features; returns the test error in %.
fn ridge_error(
    train: &[f32],
    ytr: &[i64],
    test: &[f32],
    yte: &[i64],
    d: usize,
    classes: usize,
    lambda: f64,
) -> f64 {
    let ntr = ytr.len();
    let mut mean = vec![0.0; d];
    let mut sd = vec![0.0; d];
    for i in 0..ntr {
        for j in 0..d {
            mean[j] += train[i * d + j] as f64 / ntr as f64;
        }
    }
    for i in 0..ntr {
        for j in 0..d {
            sd[j] += (train[i * d + j] as f64 - mean[j]).powi(2) / ntr as f64;
        }
    }
    let sd: Vec<f64> = sd.iter().map(|s| s.sqrt().max(1e-6)).collect();
    let z = |x: &[f32], i: usize| -> Vec<f64> {
        (0..d)
            .map(|j| (x[i * d + j] as f64 - mean[j]) / sd[j])
            .chain([1.0])
            .collect()
    };
    let dd = d + 1;
    let mut a = vec![0.0; dd * dd];
    let mut b = vec![0.0; dd * classes];
    for i in 0..ntr {
        let zi = z(train, i);
        for p in 0..dd {
            for q in 0..dd {
                a[p * dd + q] += zi[p] * zi[q];
            }
            for c in 0..classes {
                b[p * classes + c] += zi[p] * if ytr[i] as usize == c { 1.0 } else { -1.0 };
            }
        }
    }
    for p in 0..d {
        a[p * dd + p] += lambda;
    }
    // Gaussian elimination (symmetric positive definite, no pivoting needed).
    for p in 0..dd {
        let piv = a[p * dd + p];
        for r in p + 1..dd {
            let f = a[r * dd + p] / piv;
            if f == 0.0 {
                continue;
            }
            for q in p..dd {
                a[r * dd + q] -= f * a[p * dd + q];
            }
            for c in 0..classes {
                b[r * classes + c] -= f * b[p * classes + c];
            }
        }
    }
    let mut w = vec![0.0; dd * classes];
    for p in (0..dd).rev() {
        for c in 0..classes {
            let mut s = b[p * classes + c];
            for q in p + 1..dd {
                s -= a[p * dd + q] * w[q * classes + c];
            }
            w[p * classes + c] = s / a[p * dd + p];
        }
    }
    let mut wrong = 0;
    for i in 0..yte.len() {
        let zi = z(test, i);
        let best = (0..classes)
            .map(|c| (c, (0..dd).map(|p| zi[p] * w[p * classes + c]).sum::<f64>()))
            .fold((0, f64::MIN), |m, x| if x.1 > m.1 { x } else { m })
            .0;
        if best as i64 != yte[i] {
            wrong += 1;
        }
    }
    100.0 * wrong as f64 / yte.len() as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = arg(&args, "--size", "16").parse().unwrap();
    let classes: usize = arg(&args, "--classes", "4").parse().unwrap();
    let n: usize = arg(&args, "--n", "2000").parse().unwrap();
    let threads: usize = arg(&args, "--threads", "2").parse().unwrap();
    let raw: toml::Table = toml::from_str(&arg(&args, "--params", "")).expect("params TOML");
    let p: TrainParams = toml::Value::Table(raw).try_into().expect("train params");
    let all = shapes(n, size, classes, 1);
    let ntr = n * 4 / 5;
    let len = all.image_len();
    let train = ImageSet::new(
        all.pixels()[..ntr * len].to_vec(),
        ntr,
        3,
        size,
        size,
        all.labels[..ntr].to_vec(),
    );
    let test = ImageSet::new(
        all.pixels()[ntr * len..].to_vec(),
        n - ntr,
        3,
        size,
        size,
        all.labels[ntr..].to_vec(),
    );
    let device = Device::flex();
    let spec = p.stack().build_spec([3, size, size]).expect("spec");
    for l in &spec.layers {
        println!(
            "  {}  visible {:?} hidden {:?}",
            l.describe(),
            l.visible_unit,
            l.hidden_unit
        );
    }
    let t = Instant::now();
    let dbn = Dbn::init(spec, p.init_std, p.seed, &device, DType::F32);
    let mut tr = Trainer::new(dbn, p.optim());
    let hist = mrbm_core::device::with_threads(threads, || {
        train_images(&mut tr, train.pixels(), ntr, DType::F32, |_, _, _| Ok(()))
    });
    let secs = t.elapsed().as_secs_f64();
    match hist {
        Err(e) => println!("training failed: {e}"),
        Ok(h) => {
            let em = h.epoch_means();
            println!(
                "train {secs:.1}s; epoch losses {:?}",
                em.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>()
            );
            let top = tr.dbn.layers.len() - 1;
            let d: usize = tr.dbn.layers[top].spec.hidden_shape().iter().product();
            let t2 = Instant::now();
            let (ftr, fte) = mrbm_core::device::with_threads(threads, || {
                (
                    extract_features(&tr.dbn, &train, top, 256, &device, |_| {}),
                    extract_features(&tr.dbn, &test, top, 256, &device, |_| {}),
                )
            });
            let fsecs = t2.elapsed().as_secs_f64();
            let e = ridge_error(&ftr, &train.labels, &fte, &test.labels, d, classes, 10.0);
            println!("features d={d} ({fsecs:.1}s): ridge test error {e:.1}%");
        }
    }
    let raw_tr: Vec<f32> = train.pixels().iter().map(|&x| x as f32).collect();
    let raw_te: Vec<f32> = test.pixels().iter().map(|&x| x as f32).collect();
    if args.iter().any(|a| a == "--raw") {
        println!(
            "raw pixels: ridge test error {:.1}% (chance {:.1}%)",
            ridge_error(
                &raw_tr,
                &train.labels,
                &raw_te,
                &test.labels,
                len,
                classes,
                10.0
            ),
            100.0 * (1.0 - 1.0 / classes as f64)
        );
    }
}
