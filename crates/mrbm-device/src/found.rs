//! What each compiled-in backend finds on this machine.

#[allow(unused_imports)]
use burn::tensor::DeviceType;

use crate::Device;
#[allow(unused_imports)]
use crate::{catch, DeviceId};

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

/// The devices `backend` (`cpu`, `wgpu`, `cuda`) finds, in index order,
/// listed but not yet proven (see [`crate::smoke`]). Empty for a backend not
/// compiled in, or without a driver, adapter or GPU.
pub fn found(backend: &str) -> Vec<Device> {
    match backend {
        "cpu" => vec![Device::cpu()],
        #[cfg(feature = "wgpu")]
        "wgpu" => enumerate(DeviceType::Wgpu, DeviceId::Wgpu),
        #[cfg(feature = "cuda")]
        "cuda" => enumerate(DeviceType::Cuda, DeviceId::Cuda),
        _ => Vec::new(),
    }
}

/// burn's devices of one type as [`Device`]s. `software` is judged by the
/// device's identity: cubecl reports no physical card for a CPU rasterizer
/// (and CUDA devices are always hardware).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn enumerate(kind: DeviceType, id: fn(usize) -> DeviceId) -> Vec<Device> {
    let list = catch(|| {
        crate::BurnDevice::enumerate(kind)
            .into_iter()
            .collect::<Vec<_>>()
    })
    .unwrap_or_default();
    list.into_iter()
        .enumerate()
        .map(|(i, d)| {
            let dbg = format!("{d:?}");
            let ident = catch(|| d.identity()).ok().flatten();
            let software = match (&ident, id(i)) {
                (_, DeviceId::Cuda(_)) => false,
                (Some(ident), _) => ident.physical.is_none(),
                (None, _) => dbg.contains("Cpu"),
            };
            Device {
                id: id(i),
                name: ident.map(|ident| ident.name).unwrap_or(dbg),
                software,
                burn: d,
            }
        })
        .collect()
}
