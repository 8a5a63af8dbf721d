//! mrbm-core's device-generic checks (src/checks.rs) on every accelerator
//! compiled into this build: wgpu adapters (with `--features wgpu`) and CUDA
//! GPUs (with `--features cuda`). The same checks run on the CPU in
//! tests/model.rs and on any machine through `mrbm devices --check`.
//!
//! They catch what only shows off the CPU backend: a tensor left on the wrong
//! device, an op CubeCL lacks, a kernel that is numerically off.
//!
//! Without an adapter the wgpu tests print a note and pass, unless
//! MRBM_REQUIRE_WGPU=1 (CI sets it: the machines that run CI have a software
//! wgpu adapter, so "no adapter" there means the tests did not really run).
//! MRBM_REQUIRE_CUDA=1 does the same for CUDA on a GPU machine.
//!
//!     MRBM_REQUIRE_WGPU=1 cargo test -p mrbm-core --features wgpu device_

use mrbm_core::checks::{self, CheckReport};
use mrbm_device::{self as device, BurnDevice, Device};

fn required(var: &str) -> bool {
    std::env::var(var).map(|v| v == "1").unwrap_or(false)
}

/// The accelerators to test: every wgpu adapter and CUDA GPU found. Fails
/// when a backend is required (env) but not compiled in or finds nothing.
fn accelerators() -> Vec<Device> {
    let mut out = Vec::new();
    for (backend, var, found) in [
        ("wgpu", "MRBM_REQUIRE_WGPU", device::found("wgpu")),
        ("cuda", "MRBM_REQUIRE_CUDA", device::found("cuda")),
    ] {
        let compiled = device::compiled_backends().contains(&backend);
        if found.is_empty() {
            let why = if compiled {
                format!("no {backend} device found")
            } else {
                format!("this build has no {backend} feature")
            };
            assert!(!required(var), "{var}=1 but {why}");
            if compiled {
                eprintln!("note: {why}; its device checks did not run");
            }
        }
        out.extend(found);
    }
    out
}

/// Run `check` on every accelerator, first proving each with the smoke
/// kernel; all failures are collected so one run names every bad device.
fn on_every_accelerator(check: impl Fn(&BurnDevice, bool) -> Vec<CheckReport>) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for d in accelerators() {
        if let Err(why) = device::smoke(d.burn()) {
            failures.push(format!("{d} ({}): smoke kernel: {why}", d.name()));
            continue;
        }
        let f64 = d.supports_f64();
        match device::catch(|| check(d.burn(), f64)) {
            Ok(reports) => {
                for r in reports {
                    eprintln!("{d} ({}): {r}", d.name());
                    ran += 1;
                    if !r.passed() {
                        failures.push(format!("{d}: {r}"));
                    }
                }
            }
            Err(why) => failures.push(format!("{d} ({}): panicked: {why}", d.name())),
        }
    }
    eprintln!("{ran} check(s) ran");
    assert!(
        failures.is_empty(),
        "device checks failed:\n{}",
        failures.join("\n")
    );
}

fn dtypes(f64: bool) -> Vec<burn::tensor::DType> {
    let mut v = vec![burn::tensor::DType::F32];
    if f64 {
        v.push(burn::tensor::DType::F64);
    }
    v
}

#[test]
fn device_smoke_kernel() {
    // The CPU too: the smoke kernel itself must be right.
    device::smoke(&BurnDevice::flex()).expect("smoke kernel on flex");
    on_every_accelerator(|_, _| Vec::new());
}

#[test]
fn device_free_energy_matches_host() {
    on_every_accelerator(|d, f64| {
        dtypes(f64)
            .into_iter()
            .flat_map(|dt| {
                [
                    checks::free_energy_matches_host(d, dt, false),
                    checks::free_energy_matches_host(d, dt, true),
                ]
            })
            .collect()
    });
}

#[test]
fn device_gradient_equals_cd1() {
    on_every_accelerator(|d, f64| {
        dtypes(f64)
            .into_iter()
            .flat_map(|dt| {
                [
                    checks::grad_equals_cd1(d, dt, false),
                    checks::grad_equals_cd1(d, dt, true),
                ]
            })
            .collect()
    });
}

#[test]
fn device_conv_adjoint() {
    on_every_accelerator(|d, f64| {
        dtypes(f64)
            .into_iter()
            .map(|dt| checks::conv_adjoint(d, dt))
            .collect()
    });
}

#[test]
fn device_training_lowers_loss() {
    on_every_accelerator(|d, _| vec![checks::training_lowers_loss(d, burn::tensor::DType::F32)]);
}

#[test]
fn device_toolbox_rules_run() {
    on_every_accelerator(|d, _| vec![checks::toolbox_rules_run(d, burn::tensor::DType::F32)]);
}

#[test]
fn device_learned_sigma_run() {
    on_every_accelerator(|d, _| vec![checks::learned_sigma_run(d, burn::tensor::DType::F32)]);
}

#[test]
fn device_sampling_shapes_and_ranges() {
    on_every_accelerator(|d, _| {
        vec![checks::sampling_shapes_and_ranges(
            d,
            burn::tensor::DType::F32,
        )]
    });
}

#[test]
fn device_checkpoint_round_trip() {
    on_every_accelerator(|d, _| vec![checks::checkpoint_round_trip(d)]);
}

#[test]
fn device_cpu_is_always_compiled_in_and_cuda_default_is_never_used() {
    assert_eq!(device::compiled_backends()[0], "cpu");
    // The CPU is flex whatever the features; an accelerator that is not
    // there is an error naming it, not a panic on the first tensor.
    assert_eq!(device::resolve("cpu").unwrap().id(), device::DeviceId::Cpu);
    if device::found("cuda").is_empty() {
        assert!(matches!(
            device::resolve("cuda:0"),
            Err(device::DeviceError::Unavailable { .. })
        ));
    }
    let n = device::found("wgpu").len();
    assert!(matches!(
        device::resolve(&format!("wgpu:{n}")),
        Err(device::DeviceError::Unavailable { .. })
    ));
}
