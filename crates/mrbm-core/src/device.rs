//! From the runner's device choice to a burn device.

use burn::tensor::Device;
use mrbm_stage::{Device as StageDevice, StageError};

/// The burn device for the runner's choice. This build has the flex CPU
/// backend only; accelerators are a match arm each once their cargo
/// features exist (issue 9).
pub fn burn_device(d: StageDevice) -> Result<Device, StageError> {
    match d {
        StageDevice::Cpu => Ok(Device::flex()),
        StageDevice::Wgpu(_) => Err(StageError::User("this build has no wgpu feature: rebuild mrbm with `--features wgpu`, or use --device cpu".into())),
        StageDevice::Cuda(_) => Err(StageError::User("this build has no cuda feature: rebuild mrbm with `--features cuda`, or use --device cpu".into())),
    }
}

/// Run `f` with the tensor backend limited to `threads` threads (flex uses
/// rayon; a local pool keeps the stage within its share of the machine).
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}
