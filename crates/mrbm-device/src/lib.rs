//! mrbm-device owns the compute device: which backends this build has
//! ([`compiled_backends`]), what each finds on this machine ([`found`]),
//! proving a device runs kernels ([`smoke`]), and the one choice from
//! `--device auto|cpu|wgpu[:INDEX]|cuda[:INDEX]` ([`resolve`]), and on the
//! host how the allocator keeps freed tensors ([`host_memory`]).
//!
//! A process resolves its device once and passes the live [`Device`] down:
//! the runner puts it in every stage's `StageContext`, and stages take
//! burn's device from it ([`Device::burn`]). Nothing enumerates devices
//! again after that.
//!
//! burn 0.22 dispatches on the tensor's device at run time, so the model
//! code is the same on every backend; only this crate knows which backends
//! the build has (cargo features `cuda` and `wgpu`). Two burn behaviours
//! shape it:
//! - with `cuda` compiled in, burn's `Device::default()` is Cuda(0) whatever
//!   the hardware, and the first tensor on it panics without a GPU; so no
//!   code here uses `Device::default()`, and every accelerator is proven by
//!   [`smoke`] (a tiny kernel, panics caught) before it is handed out;
//! - `Device::enumerate` lists nothing (no panic) for a backend with no
//!   driver or adapter; on machines without a GPU wgpu finds a software
//!   adapter (lavapipe/llvmpipe) that runs real kernels, very slowly.

use std::fmt;

mod cuda_env;
mod found;
pub mod host_memory;
mod probe;

pub use cuda_env::{cuda_env, CudaEnv};
pub use found::{compiled_backends, found, missing_feature};
pub use probe::{catch, panic_message, smoke};

/// burn's device type, for crates that do not name burn themselves.
pub use burn::tensor::Device as BurnDevice;

/// Which device: how the runner names it (`cpu`, `wgpu:0`, `cuda:1`) and
/// records it in manifests. Never part of a stage key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceId {
    #[default]
    Cpu,
    Wgpu(usize),
    Cuda(usize),
}

impl DeviceId {
    /// The backend's name: `cpu`, `wgpu` or `cuda`.
    pub fn backend(self) -> &'static str {
        match self {
            DeviceId::Cpu => "cpu",
            DeviceId::Wgpu(_) => "wgpu",
            DeviceId::Cuda(_) => "cuda",
        }
    }

    pub fn is_accelerator(self) -> bool {
        !matches!(self, DeviceId::Cpu)
    }

    /// Whether it computes in f64 (WGSL has no f64; flex and CUDA do).
    pub fn supports_f64(self) -> bool {
        !matches!(self, DeviceId::Wgpu(_))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Cpu => write!(f, "cpu"),
            DeviceId::Wgpu(i) => write!(f, "wgpu:{i}"),
            DeviceId::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A live compute device: its id, its own name, and burn's device ready
/// for tensors. Made by [`resolve`] (proven to run a kernel) or by
/// [`found`] (listed, not yet proven); [`Device::cpu`] always works.
#[derive(Debug, Clone)]
pub struct Device {
    id: DeviceId,
    name: String,
    software: bool,
    burn: BurnDevice,
}

impl Device {
    /// burn's flex backend on this machine's CPU (always compiled in).
    pub fn cpu() -> Device {
        Device {
            id: DeviceId::Cpu,
            name: "cpu (burn flex)".into(),
            software: false,
            burn: BurnDevice::flex(),
        }
    }

    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// The device's own name, where the backend reports one.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A software rasterizer (wgpu on the CPU): runs kernels, but is never
    /// chosen by `--device auto`.
    pub fn is_software(&self) -> bool {
        self.software
    }

    /// burn's device, for tensors.
    pub fn burn(&self) -> &BurnDevice {
        &self.burn
    }

    pub fn is_accelerator(&self) -> bool {
        self.id.is_accelerator()
    }

    pub fn supports_f64(&self) -> bool {
        self.id.supports_f64()
    }
}

impl Default for Device {
    fn default() -> Self {
        Device::cpu()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.id.fmt(f)
    }
}

/// Why a `--device` request cannot be met. Both are the user's to fix
/// (exit 2 at the CLI); they differ in what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The request itself is malformed (`--device tpu`, `cpu:1`).
    #[error("--device {spec}: {why}")]
    BadRequest { spec: String, why: String },
    /// Well formed, but this build or machine cannot give it: a backend not
    /// compiled in, a device that is not there, or one that cannot run a
    /// kernel (the message names the missing driver, NVRTC or headers).
    #[error("--device {spec}: {why}")]
    Unavailable { spec: String, why: String },
}

/// Parse a device request, find the device, and prove it runs a kernel.
/// Called once per process; the result is passed down.
///
/// - `cpu`: burn's flex backend.
/// - `wgpu[:I]`: the I-th wgpu adapter (Vulkan, Metal, DX12, or a software
///   rasterizer), with the `wgpu` feature.
/// - `cuda[:I]`: the I-th NVIDIA GPU, with the `cuda` feature.
/// - `auto`: CUDA GPU 0 when one is found and runs a tiny kernel, else the
///   CPU. Never a wgpu adapter: the one most machines expose without a GPU
///   is a software rasterizer, far slower than the CPU backend.
pub fn resolve(spec: &str) -> Result<Device, DeviceError> {
    let spec = spec.trim().to_ascii_lowercase();
    let bad = |why: &str| DeviceError::BadRequest {
        spec: spec.clone(),
        why: why.into(),
    };
    let (name, index) = match spec.split_once(':') {
        Some((n, i)) => (
            n,
            Some(
                i.parse::<usize>()
                    .map_err(|_| bad("the index after `:` must be a number"))?,
            ),
        ),
        None => (spec.as_str(), None),
    };
    let id = match (name, index) {
        ("cpu", None) => return Ok(Device::cpu()),
        ("auto", None) => return Ok(auto()),
        ("cpu" | "auto", Some(_)) => return Err(bad("only wgpu and cuda take an index")),
        ("cuda", i) => DeviceId::Cuda(i.unwrap_or(0)),
        ("wgpu", i) => DeviceId::Wgpu(i.unwrap_or(0)),
        _ => return Err(bad("expected auto, cpu, wgpu[:INDEX] or cuda[:INDEX]")),
    };
    let unavailable = |why: String| DeviceError::Unavailable {
        spec: spec.clone(),
        why,
    };
    let dev = choose(id).map_err(unavailable)?;
    smoke(dev.burn()).map_err(|why| {
        let mut msg = format!("{} cannot run a kernel: {why}", dev.name);
        if id.backend() == "cuda" {
            msg = format!("{msg}; {}", cuda_env().summary());
        }
        unavailable(msg)
    })?;
    if dev.software {
        eprintln!(
            "note: {spec} is a software adapter ({}): correct but much slower than --device cpu",
            dev.name
        );
    }
    Ok(dev)
}

/// `auto`: the first CUDA GPU if it runs a tiny kernel, else the CPU.
fn auto() -> Device {
    if let Some(dev) = found("cuda").into_iter().next() {
        match smoke(dev.burn()) {
            Ok(()) => return dev,
            Err(why) => eprintln!(
                "note: --device auto: {} found but cannot run a kernel ({why}); using the CPU",
                dev.name
            ),
        }
    }
    Device::cpu()
}

/// The device `id` names among those its backend finds, or why there is
/// none: the backend is not compiled in, finds nothing, or has fewer
/// devices than the index asks for.
pub fn choose(id: DeviceId) -> Result<Device, String> {
    let backend = id.backend();
    let i = match id {
        DeviceId::Cpu => return Ok(Device::cpu()),
        DeviceId::Wgpu(i) | DeviceId::Cuda(i) => i,
    };
    if !compiled_backends().contains(&backend) {
        return Err(missing_feature(backend));
    }
    let all = found(backend);
    let n = all.len();
    match all.into_iter().nth(i) {
        Some(d) => Ok(d),
        None if n == 0 && backend == "wgpu" => {
            Err("no wgpu adapter found (no Vulkan, Metal or DX12 driver)".into())
        }
        None if n == 0 => Err(format!("no CUDA GPU found; {}", cuda_env().summary())),
        None => Err(format!(
            "{backend}:{i} is not there: this machine has {n} {backend} device(s), {backend}:0 to {backend}:{}",
            n - 1
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(resolve("cpu").unwrap().id(), DeviceId::Cpu);
        assert_eq!(resolve(" CPU ").unwrap().id(), DeviceId::Cpu);
        for bad in ["tpu", "cuda:x", "cpu:1", "auto:0", "wgpu:-1"] {
            assert!(
                matches!(resolve(bad), Err(DeviceError::BadRequest { .. })),
                "{bad}"
            );
        }
        let e = resolve("tpu").unwrap_err().to_string();
        assert!(
            e.contains("--device tpu") && e.contains("cuda[:INDEX]"),
            "{e}"
        );
    }

    #[test]
    fn ids_print_as_the_runner_names_them() {
        assert_eq!(DeviceId::Cpu.to_string(), "cpu");
        assert_eq!(DeviceId::Wgpu(2).to_string(), "wgpu:2");
        assert_eq!(DeviceId::Cuda(1).to_string(), "cuda:1");
        assert_eq!(Device::cpu().to_string(), "cpu");
        assert!(!Device::cpu().is_accelerator() && Device::cpu().supports_f64());
        assert!(DeviceId::Cuda(0).is_accelerator() && DeviceId::Cuda(0).supports_f64());
        assert!(!DeviceId::Wgpu(0).supports_f64());
    }

    #[test]
    fn a_backend_not_compiled_in_is_unavailable_naming_the_feature() {
        for backend in ["cuda", "wgpu"] {
            if compiled_backends().contains(&backend) {
                continue;
            }
            let e = resolve(&format!("{backend}:1")).unwrap_err();
            assert!(matches!(e, DeviceError::Unavailable { .. }), "{e}");
            assert!(
                e.to_string().contains(&format!(
                    "this build has no {backend} feature: rebuild with --features {backend}"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn an_index_past_the_devices_found_names_how_many_there_are() {
        for (backend, make) in [
            ("wgpu", DeviceId::Wgpu as fn(usize) -> DeviceId),
            ("cuda", DeviceId::Cuda),
        ] {
            if !compiled_backends().contains(&backend) {
                continue;
            }
            let n = found(backend).len();
            let e = choose(make(n)).unwrap_err();
            if n == 0 {
                assert!(e.starts_with("no "), "{e}");
            } else {
                assert!(
                    e.contains(&format!("this machine has {n} {backend} device(s)")),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn auto_never_takes_a_software_adapter() {
        // Without a CUDA GPU (as on the machines that run CI), auto is the
        // CPU even when a wgpu software adapter is compiled in and present.
        if found("cuda").is_empty() {
            assert_eq!(resolve("auto").unwrap().id(), DeviceId::Cpu);
        }
    }

    #[test]
    fn the_cpu_runs_the_smoke_kernel() {
        smoke(Device::cpu().burn()).unwrap();
    }
}
