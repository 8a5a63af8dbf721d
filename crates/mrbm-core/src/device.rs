//! From the runner's device choice to a burn device, and what each compiled-in
//! backend finds on this machine.
//!
//! burn 0.22 dispatches on the tensor's `Device` at run time, so the model
//! code is the same on every backend; only this module knows which backends
//! the build has (cargo features `cuda` and `wgpu`). Two burn behaviours
//! shape it:
//! - with `cuda` compiled in, burn's `Device::default()` is Cuda(0) whatever
//!   the hardware, and the first tensor on it panics without a GPU; so no
//!   code here ever uses `Device::default()`, and every accelerator is
//!   proven by [`smoke`] (a tiny kernel, panics caught) before it is used;
//! - `Device::enumerate` lists nothing (no panic) for a backend with no
//!   driver or adapter, and on these machines wgpu finds a software adapter
//!   (lavapipe/llvmpipe) that runs real kernels, very slowly.

#[allow(unused_imports)]
use burn::tensor::DeviceType;
use burn::tensor::{DType, Device, Tensor};
use mrbm_stage::{Device as StageDevice, StageError};

/// burn's device type, for callers (the runner) that do not name burn.
pub use burn::tensor::Device as BurnDevice;

/// The backends compiled into this build, CPU first.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// The user-facing message for a backend this build lacks.
pub fn missing_feature(backend: &str) -> String {
    format!("this build has no {backend} feature: rebuild with --features {backend} (`cargo build --release --features {backend}`), or use --device cpu")
}

/// One device a backend found.
#[derive(Debug, Clone)]
pub struct FoundDevice {
    /// How the runner names it: `wgpu:0`, `cuda:1`.
    pub device: StageDevice,
    /// The device's own name, where the backend reports one.
    pub name: String,
    /// A software rasterizer (wgpu on the CPU): runs kernels, but never
    /// picked by `--device auto` and never timed.
    pub software: bool,
    /// burn's device, ready for tensors (not yet proven: see [`smoke`]).
    pub burn: Device,
}

/// Run `f`, turning a panic into its message. burn and cubecl report a
/// missing driver, NVRTC failure or lost device by panicking; the default
/// hook's noise is silenced meanwhile so the caller's message is the one a
/// user sees. (The hook is process-wide; this is used by probes only.)
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(prev);
    r.map_err(|p| {
        let msg = mrbm_stage::panic_message(p.as_ref()).unwrap_or_else(|| "unknown panic".into());
        // cubecl's messages carry long backtraces; the first lines say what happened.
        msg.lines()
            .filter(|l| !l.trim().is_empty())
            .take(4)
            .collect::<Vec<_>>()
            .join(" / ")
    })
}

/// A tiny kernel on `device` compared with the host: a 3x4 by 4x2 matrix
/// product plus an exp, read back. Proves the backend compiles and runs
/// kernels there (for cuda: driver, NVRTC and headers all work).
pub fn smoke(device: &Device) -> Result<(), String> {
    let a: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    let b: Vec<f32> = (0..8).map(|i| 0.5 - i as f32 * 0.125).collect();
    let mut want = vec![0f32; 6];
    for i in 0..3 {
        for j in 0..2 {
            let s: f32 = (0..4).map(|k| a[i * 4 + k] * b[k * 2 + j]).sum();
            want[i * 2 + j] = s.exp();
        }
    }
    let got = catch(|| {
        let ta = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(a.clone(), [3, 4]),
            (device, DType::F32),
        );
        let tb = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(b.clone(), [4, 2]),
            (device, DType::F32),
        );
        ta.matmul(tb)
            .exp()
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| format!("{e:?}"))
    })??;
    let err = got
        .iter()
        .zip(&want)
        .map(|(g, w)| ((g - w) / w.abs().max(1.0)).abs())
        .fold(0f32, f32::max);
    // Written so that a NaN error fails too.
    if got.len() != want.len() || err.partial_cmp(&1e-4) != Some(std::cmp::Ordering::Less) {
        return Err(format!(
            "a tiny matmul+exp kernel gave wrong results (max error {err:e})"
        ));
    }
    Ok(())
}

/// The wgpu adapters found, in `wgpu:INDEX` order. Empty without the
/// feature or without any adapter. `software` is judged by the device's
/// identity: cubecl reports no physical card for a CPU rasterizer.
#[cfg(feature = "wgpu")]
pub fn wgpu_devices() -> Vec<FoundDevice> {
    let list = catch(|| {
        Device::enumerate(DeviceType::Wgpu)
            .into_iter()
            .collect::<Vec<_>>()
    })
    .unwrap_or_default();
    list.into_iter()
        .enumerate()
        .map(|(i, d)| {
            let dbg = format!("{d:?}");
            let ident = catch(|| d.identity()).ok().flatten();
            let software = match &ident {
                Some(id) => id.physical.is_none(),
                None => dbg.contains("Cpu"),
            };
            let name = ident.map(|id| id.name).unwrap_or(dbg);
            FoundDevice {
                device: StageDevice::Wgpu(i),
                name,
                software,
                burn: d,
            }
        })
        .collect()
}

/// Without the `wgpu` feature: none.
#[cfg(not(feature = "wgpu"))]
pub fn wgpu_devices() -> Vec<FoundDevice> {
    Vec::new()
}

/// The CUDA devices the driver reports, in `cuda:INDEX` order. Empty
/// without the feature, the driver library or a GPU (burn lists nothing
/// then; the runner names the missing piece).
#[cfg(feature = "cuda")]
pub fn cuda_devices() -> Vec<FoundDevice> {
    let list = catch(|| {
        Device::enumerate(DeviceType::Cuda)
            .into_iter()
            .collect::<Vec<_>>()
    })
    .unwrap_or_default();
    list.into_iter()
        .enumerate()
        .map(|(i, d)| {
            let name = catch(|| d.identity())
                .ok()
                .flatten()
                .map(|id| id.name)
                .unwrap_or_else(|| format!("{d:?}"));
            FoundDevice {
                device: StageDevice::Cuda(i),
                name,
                software: false,
                burn: d,
            }
        })
        .collect()
}

/// Without the `cuda` feature: none.
#[cfg(not(feature = "cuda"))]
pub fn cuda_devices() -> Vec<FoundDevice> {
    Vec::new()
}

/// Whether `device` computes in f64 (WGSL has no f64; flex and CUDA do).
pub fn supports_f64(device: StageDevice) -> bool {
    !matches!(device, StageDevice::Wgpu(_))
}

/// The burn device for the runner's choice. The runner has already proven
/// an accelerator with [`smoke`] (`mrbm run` resolves the device first);
/// this only maps, and reports a backend or index that is not there as a
/// user error rather than letting burn panic on the first tensor.
pub fn burn_device(d: StageDevice) -> Result<Device, StageError> {
    match d {
        StageDevice::Cpu => Ok(Device::flex()),
        StageDevice::Wgpu(i) => {
            if !cfg!(feature = "wgpu") {
                return Err(StageError::User(missing_feature("wgpu")));
            }
            pick(
                wgpu_devices(),
                i,
                "wgpu",
                "no wgpu adapter found (no Vulkan/Metal/DX12 driver)",
            )
        }
        StageDevice::Cuda(i) => {
            if !cfg!(feature = "cuda") {
                return Err(StageError::User(missing_feature("cuda")));
            }
            pick(
                cuda_devices(),
                i,
                "cuda",
                "no CUDA GPU found (run `mrbm devices` for the reason)",
            )
        }
    }
}

fn pick(
    found: Vec<FoundDevice>,
    i: usize,
    backend: &str,
    none: &str,
) -> Result<Device, StageError> {
    let n = found.len();
    match found.into_iter().nth(i) {
        Some(f) => Ok(f.burn),
        None if n == 0 => Err(StageError::User(none.into())),
        None => Err(StageError::User(format!(
            "{backend}:{i}: this machine has {n} {backend} device(s) ({backend}:0..{backend}:{})",
            n - 1
        ))),
    }
}

/// Run `f` with the tensor backend limited to `threads` threads (flex uses
/// rayon; a local pool keeps the stage within its share of the machine).
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    match mrbm_stage::thread_pool(threads) {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}
