//! Choosing the compute device from `--device auto|cpu|wgpu|cuda[:INDEX]`
//! (or an experiment's `device` key, which the flag overrides), in one place.
//! The device is recorded in manifests and never part of a stage key.
//!
//! - `cpu`: burn's flex backend, always compiled in.
//! - `wgpu[:I]`: the I-th wgpu adapter (Vulkan, Metal, DX12, or a software
//!   rasterizer), with the `wgpu` feature.
//! - `cuda[:I]`: the I-th NVIDIA GPU, with the `cuda` feature.
//! - `auto` (default): CUDA GPU 0 when one is found and a tiny kernel runs on
//!   it, else the CPU. It never takes a wgpu adapter by itself: the one most
//!   machines expose without a GPU is a software rasterizer, far slower than
//!   the CPU backend.
//!
//! An accelerator is proven with a tiny kernel before any stage runs, so a
//! missing driver, NVRTC or CUDA headers is a user error here (exit 2) naming
//! what is missing, never a panic inside a stage.

use mrbm_core::checks;
use mrbm_core::device::{self as core_dev, FoundDevice};
use mrbm_stage::Device;

use crate::error::RunnerError;

/// Parse and check a device request. Asking for a backend this build does
/// not have, or a device that is not there, is a user error (exit 2).
pub fn resolve(spec: &str) -> Result<Device, RunnerError> {
    let spec = spec.trim().to_ascii_lowercase();
    let (name, index) = match spec.split_once(':') {
        Some((n, i)) => (
            n.to_string(),
            Some(i.parse::<usize>().map_err(|_| {
                RunnerError::Usage(format!(
                    "--device {spec}: the index after `:` must be a number"
                ))
            })?),
        ),
        None => (spec.clone(), None),
    };
    match (name.as_str(), index) {
        ("cpu", None) => Ok(Device::Cpu),
        ("auto", None) => Ok(auto()),
        ("cpu" | "auto", Some(_)) => Err(RunnerError::Usage(format!(
            "--device {spec}: only wgpu and cuda take an index"
        ))),
        ("cuda", i) => {
            if !cfg!(feature = "cuda") {
                return Err(RunnerError::Data(format!(
                    "--device {spec}: {}",
                    core_dev::missing_feature("cuda")
                )));
            }
            let i = i.unwrap_or(0);
            let found = core_dev::cuda_devices();
            let dev = choose(found, i, "cuda").map_err(|why| {
                RunnerError::Data(format!("--device {spec}: {why}; {}", cuda_env().summary()))
            })?;
            core_dev::smoke(&dev.burn).map_err(|why| {
                RunnerError::Data(format!(
                    "--device {spec}: {} cannot run a kernel: {why}; {}",
                    dev.name,
                    cuda_env().summary()
                ))
            })?;
            Ok(Device::Cuda(i))
        }
        ("wgpu", i) => {
            if !cfg!(feature = "wgpu") {
                return Err(RunnerError::Data(format!(
                    "--device {spec}: {}",
                    core_dev::missing_feature("wgpu")
                )));
            }
            let i = i.unwrap_or(0);
            let dev = choose(core_dev::wgpu_devices(), i, "wgpu")
                .map_err(|why| RunnerError::Data(format!("--device {spec}: {why}")))?;
            core_dev::smoke(&dev.burn).map_err(|why| {
                RunnerError::Data(format!(
                    "--device {spec}: {} cannot run a kernel: {why}",
                    dev.name
                ))
            })?;
            if dev.software {
                eprintln!("note: {spec} is a software adapter ({}): correct but much slower than --device cpu", dev.name);
            }
            Ok(Device::Wgpu(i))
        }
        (other, _) => Err(RunnerError::Usage(format!(
            "--device {other}: expected auto, cpu, wgpu[:INDEX] or cuda[:INDEX]"
        ))),
    }
}

/// `auto`: the first CUDA GPU if it runs a tiny kernel, else the CPU.
fn auto() -> Device {
    if cfg!(feature = "cuda") {
        if let Some(dev) = core_dev::cuda_devices().into_iter().next() {
            match core_dev::smoke(&dev.burn) {
                Ok(()) => return dev.device,
                Err(why) => eprintln!(
                    "note: --device auto: {} found but cannot run a kernel ({why}); using the CPU",
                    dev.name
                ),
            }
        }
    }
    Device::Cpu
}

fn choose(found: Vec<FoundDevice>, i: usize, backend: &str) -> Result<FoundDevice, String> {
    let n = found.len();
    match found.into_iter().nth(i) {
        Some(d) => Ok(d),
        None if n == 0 && backend == "wgpu" => Err("no wgpu adapter found (no Vulkan, Metal or DX12 driver)".into()),
        None if n == 0 => Err("no CUDA GPU found".into()),
        None => Err(format!("{backend}:{i} is not there: this machine has {n} {backend} device(s), {backend}:0 to {backend}:{}", n - 1)),
    }
}

/// `mrbm devices [--check]`: the backends compiled in, the devices each
/// finds, for cuda what it needs (driver, NVRTC, headers) or why it cannot
/// run; with `check`, mrbm-core's device checks on every device found.
/// Exit code 1 when a check fails.
pub fn print_devices(check: bool) -> Result<u8, RunnerError> {
    let backends = core_dev::compiled_backends();
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
    println!("cpu: {threads} threads");
    let mut devices: Vec<(String, burn_device::Dev)> =
        vec![("cpu".into(), burn_device::Dev::cpu())];
    if cfg!(feature = "wgpu") {
        let found = core_dev::wgpu_devices();
        if found.is_empty() {
            println!("wgpu: no adapter found (no Vulkan, Metal or DX12 driver)");
        }
        for d in found {
            let note = if d.software {
                "  [software adapter: correct but slow; never chosen by --device auto]"
            } else {
                ""
            };
            println!("{}: {}{note}", d.device, d.name);
            devices.push((d.device.to_string(), burn_device::Dev::from(d)));
        }
    } else {
        println!("wgpu: not compiled in (rebuild with --features wgpu)");
    }
    if cfg!(feature = "cuda") {
        let env = cuda_env();
        println!("cuda driver: {}", show(&env.driver));
        println!("cuda nvrtc:  {}", show(&env.nvrtc));
        println!("cuda headers: {}", show(&env.headers));
        let found = core_dev::cuda_devices();
        if found.is_empty() {
            println!("cuda: no GPU found: {}", env.summary());
        }
        for d in found {
            println!("{}: {}", d.device, d.name);
            devices.push((d.device.to_string(), burn_device::Dev::from(d)));
        }
    } else {
        println!("cuda: not compiled in (rebuild with --features cuda)");
    }
    if !check {
        return Ok(0);
    }
    let mut failed = 0usize;
    for (label, dev) in devices {
        println!("\n== {label} ==");
        if let Err(why) = core_dev::smoke(&dev.burn) {
            println!("FAIL smoke kernel: {why}");
            failed += 1;
            continue;
        }
        let started = std::time::Instant::now();
        let reports = match core_dev::catch(|| checks::run_all(&dev.burn, dev.f64)) {
            Ok(r) => r,
            Err(why) => {
                println!("FAIL the checks panicked: {why}");
                failed += 1;
                continue;
            }
        };
        let mut worst = 0f64;
        for r in &reports {
            println!("{r}");
            if !r.passed() {
                failed += 1;
            }
            if r.max_error.is_finite() {
                worst = worst.max(r.max_error);
            }
        }
        let ok = reports.iter().filter(|r| r.passed()).count();
        println!(
            "{label}: {ok}/{} checks passed, largest error against the CPU (f64 host reference) {worst:.2e}{}, {:.1}s",
            reports.len(),
            if dev.f64 { "" } else { " (f32 only: no f64 on this backend)" },
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

mod burn_device {
    //! A device to check, with whether it computes in f64.
    use mrbm_core::device::{self as core_dev, BurnDevice, FoundDevice};

    pub struct Dev {
        pub burn: BurnDevice,
        pub f64: bool,
    }

    impl Dev {
        pub fn cpu() -> Self {
            Dev {
                burn: BurnDevice::flex(),
                f64: true,
            }
        }
    }

    impl From<FoundDevice> for Dev {
        fn from(d: FoundDevice) -> Self {
            Dev {
                f64: core_dev::supports_f64(d.device),
                burn: d.burn,
            }
        }
    }
}

/// What the CUDA backend needs at run time, found or not: the driver
/// library, NVRTC (kernels are compiled at run time), and the toolkit's
/// headers (NVRTC includes them; cubecl looks in CUDA_PATH, /usr/local/cuda,
/// /opt/cuda). Each is `Ok(what was found)` or `Err(what is missing)`.
pub struct CudaEnv {
    pub driver: Result<String, String>,
    pub nvrtc: Result<String, String>,
    pub headers: Result<String, String>,
}

impl CudaEnv {
    /// One line naming what is missing (or that all three were found).
    pub fn summary(&self) -> String {
        let missing: Vec<&str> = [&self.driver, &self.nvrtc, &self.headers]
            .iter()
            .filter_map(|r| r.as_ref().err().map(|s| s.as_str()))
            .collect();
        if missing.is_empty() {
            "driver, NVRTC and headers were all found".into()
        } else {
            missing.join("; ")
        }
    }
}

/// Look for the CUDA driver, NVRTC and headers the way cudarc and cubecl do
/// (dlopen by the same names; the same header folders), without touching
/// burn, so the answer comes even where burn would panic.
pub fn cuda_env() -> CudaEnv {
    let driver = match dl_open(&["libcuda.so.1", "libcuda.so"]) {
        Some((name, h)) => {
            let mut v = 0i32;
            let ver = dl_sym(h, "cuDriverGetVersion").map(|f| {
                // SAFETY: cuDriverGetVersion(int*) -> CUresult, per the CUDA driver API.
                let f: extern "C" fn(*mut i32) -> i32 = unsafe { std::mem::transmute(f) };
                f(&mut v)
            });
            match ver {
                Some(0) => Ok(format!(
                    "{name} (CUDA driver API {}.{})",
                    v / 1000,
                    (v % 1000) / 10
                )),
                _ => Ok(name),
            }
        }
        None => {
            Err("no NVIDIA driver library (libcuda.so.1) found: install the NVIDIA driver".into())
        }
    };
    let nvrtc = match dl_open(&["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11", "libnvrtc.so.1"]) {
        Some((name, h)) => {
            let (mut a, mut b) = (0i32, 0i32);
            let ver = dl_sym(h, "nvrtcVersion").map(|f| {
                // SAFETY: nvrtcVersion(int*, int*) -> nvrtcResult, per the NVRTC API.
                let f: extern "C" fn(*mut i32, *mut i32) -> i32 = unsafe { std::mem::transmute(f) };
                f(&mut a, &mut b)
            });
            match ver {
                Some(0) => Ok(format!("{name} (NVRTC {a}.{b})")),
                _ => Ok(name),
            }
        }
        None => Err("no NVRTC library (libnvrtc.so) found: install the CUDA toolkit and add its lib64 to LD_LIBRARY_PATH".into()),
    };
    let root = std::env::var_os("CUDA_PATH")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            ["/usr/local/cuda", "/opt/cuda"]
                .iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.exists())
                .or_else(|| {
                    std::path::Path::new("/usr/bin/nvcc")
                        .exists()
                        .then(|| "/usr".into())
                })
        });
    let headers = match root {
        Some(r) if r.join("include/cuda_fp16.h").exists() => Ok(r.join("include").display().to_string()),
        Some(r) => Err(format!("no CUDA headers in {} (cuda_fp16.h): set CUDA_PATH to the CUDA toolkit", r.join("include").display())),
        None => Err("no CUDA headers found: set CUDA_PATH to the CUDA toolkit (NVRTC needs its include folder)".into()),
    };
    CudaEnv {
        driver,
        nvrtc,
        headers,
    }
}

fn show(r: &Result<String, String>) -> &str {
    match r {
        Ok(s) | Err(s) => s,
    }
}

fn dl_open(names: &[&str]) -> Option<(String, *mut libc::c_void)> {
    names.iter().find_map(|n| {
        let c = std::ffi::CString::new(*n).ok()?;
        // SAFETY: a NUL-terminated name; the handle is kept open for the
        // process's life (cudarc opens the same library anyway).
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        (!h.is_null()).then(|| (n.to_string(), h))
    })
}

fn dl_sym(h: *mut libc::c_void, name: &str) -> Option<*mut libc::c_void> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: h is a live handle from dlopen and c is NUL-terminated.
    let p = unsafe { libc::dlsym(h, c.as_ptr()) };
    (!p.is_null()).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(resolve("cpu").unwrap(), Device::Cpu);
        assert_eq!(resolve(" CPU ").unwrap(), Device::Cpu);
        assert!(matches!(resolve("tpu"), Err(RunnerError::Usage(_))));
        assert!(matches!(resolve("cuda:x"), Err(RunnerError::Usage(_))));
        assert!(matches!(resolve("cpu:1"), Err(RunnerError::Usage(_))));
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

    #[test]
    fn auto_never_takes_a_software_adapter() {
        // Without a CUDA GPU (as on the machines that run CI), auto is the CPU
        // even when a wgpu software adapter is compiled in and present.
        if core_dev::cuda_devices().is_empty() {
            assert_eq!(resolve("auto").unwrap(), Device::Cpu);
        }
    }
}
