//! `--device` at the CLI: the request (flag, or the experiment's `device`
//! key) resolved once by mrbm-device, which owns discovery, the kernel proof
//! and the choice; and `mrbm devices [--check]`. The device is recorded in
//! manifests and never part of a stage key.

use mrbm_core::checks;
use mrbm_device::{self as devices, cuda_env, Device, DeviceError};

use crate::error::{Located, RunnerError};
use crate::plan::select::DeviceKey;

/// Resolve a device request once for this process. A malformed request is
/// a usage error, a device this build or machine cannot give a data error
/// (both exit 2, naming what to change).
pub fn resolve(spec: &str) -> Result<Device, RunnerError> {
    devices::resolve(spec).map_err(|e| match e {
        DeviceError::BadRequest { .. } => RunnerError::Usage(e.to_string()),
        DeviceError::Unavailable { .. } => RunnerError::Data(e.to_string()),
    })
}

/// [`resolve`] a request from an experiment's `device` key: errors name
/// the file, line and column of the key, and the flag that overrides it.
pub fn resolve_key(key: &DeviceKey) -> Result<Device, RunnerError> {
    devices::resolve(&key.spec).map_err(|e| {
        let why = match e {
            DeviceError::BadRequest { why, .. } | DeviceError::Unavailable { why, .. } => why,
        };
        RunnerError::Config(Box::new(Located {
            file: key.file.clone(),
            line: key.line,
            col: key.col,
            message: format!("device = \"{}\": {why}", key.spec),
            help: Some(
                "change the experiment's `device`, or override it for one run with --device cpu"
                    .into(),
            ),
        }))
    })
}

/// `mrbm devices [--check]`: the backends compiled in, the devices each
/// finds, for cuda what it needs (driver, NVRTC, headers) or why it cannot
/// run; with `check`, mrbm-core's device checks on every device found.
/// Exit code 1 when a check fails.
pub fn print_devices(check: bool) -> Result<u8, RunnerError> {
    let listed = list_devices();
    if !check {
        return Ok(0);
    }
    let failed: usize = listed.iter().map(check_device).sum();
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Print what each backend finds; return every device found, CPU first.
fn list_devices() -> Vec<Device> {
    let backends = devices::compiled_backends();
    println!(
        "backends compiled in: {}",
        backends
            .iter()
            .map(|b| if *b == "cpu" { "cpu (burn flex)" } else { b })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "cpu: {threads} threads; sgemm kernels {} (MRBM_SGEMM_ISA overrides)",
        mrbm_kernels::Isa::best().name()
    );
    let mut listed = vec![Device::cpu()];
    for backend in ["wgpu", "cuda"] {
        if !backends.contains(&backend) {
            println!("{backend}: not compiled in (rebuild with --features {backend})");
            continue;
        }
        // What CUDA needs at run time, probed once (only for cuda).
        let env = (backend == "cuda").then(cuda_env);
        for (what, line) in env.iter().flat_map(|e| e.lines()) {
            println!("cuda {what}: {line}");
        }
        let found = devices::found(backend);
        if found.is_empty() {
            match &env {
                None => println!("wgpu: no adapter found (no Vulkan, Metal or DX12 driver)"),
                Some(env) => println!("cuda: no GPU found: {}", env.summary()),
            }
        }
        for d in found {
            let note = if d.is_software() {
                "  [software adapter: correct but slow; never chosen by --device auto]"
            } else {
                ""
            };
            println!("{d}: {}{note}", d.name());
            listed.push(d);
        }
    }
    listed
}

/// The smoke kernel and mrbm-core's checks on one device, printed; the
/// number of failures.
fn check_device(dev: &Device) -> usize {
    println!("\n== {dev} ==");
    if let Err(why) = devices::smoke(dev.burn()) {
        println!("FAIL smoke kernel: {why}");
        return 1;
    }
    let started = std::time::Instant::now();
    let reports = match devices::catch(|| checks::run_all(dev.burn(), dev.supports_f64())) {
        Ok(r) => r,
        Err(why) => {
            println!("FAIL the checks panicked: {why}");
            return 1;
        }
    };
    let mut worst = 0f64;
    for r in &reports {
        println!("{r}");
        if r.max_error.is_finite() {
            worst = worst.max(r.max_error);
        }
    }
    let ok = reports.iter().filter(|r| r.passed()).count();
    println!(
        "{dev}: {ok}/{} checks passed, largest error against the CPU (f64 host reference) {worst:.2e}{}, {:.1}s",
        reports.len(),
        if dev.supports_f64() { "" } else { " (f32 only: no f64 on this backend)" },
        started.elapsed().as_secs_f64()
    );
    reports.len() - ok
}

#[cfg(test)]
mod tests {
    use super::*;

    // Parsing, choosing and `auto` are mrbm-device's tests; here, only how
    // its errors reach the CLI.
    #[test]
    fn malformed_requests_are_usage_errors() {
        for bad in ["tpu", "cuda:x", "cpu:1"] {
            let e = resolve(bad).unwrap_err();
            assert!(matches!(e, RunnerError::Usage(_)), "{bad}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
        assert_eq!(resolve(" CPU ").unwrap().to_string(), "cpu");
    }

    #[test]
    fn missing_backend_is_a_user_error_naming_the_feature() {
        if !cfg!(feature = "cuda") {
            let e = resolve("cuda:1").unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(
                e.to_string()
                    .contains("this build has no cuda feature: rebuild with --features cuda"),
                "{e}"
            );
        }
        if !cfg!(feature = "wgpu") {
            let e = resolve("wgpu").unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("--features wgpu"), "{e}");
        }
    }
}
