//! Choosing the compute device from `--device auto|cpu|wgpu|cuda[:INDEX]`.
//! The device is recorded in manifests and never part of a stage key.

use mrbm_stage::Device;

use crate::error::RunnerError;

/// Parse and check a device request. Asking for a backend this build does
/// not have, or a device that is not there, is a user error (exit 2).
pub fn resolve(spec: &str) -> Result<Device, RunnerError> {
    let spec = spec.trim().to_ascii_lowercase();
    let (name, index) = match spec.split_once(':') {
        Some((n, i)) => (n.to_string(), Some(i.parse::<usize>().map_err(|_| RunnerError::Usage(format!("--device {spec}: the index after `:` must be a number")))?)),
        None => (spec.clone(), None),
    };
    match name.as_str() {
        "auto" | "cpu" => Ok(Device::Cpu),
        "cuda" => Err(RunnerError::Data(format!(
            "--device cuda{}: this build has no cuda feature: rebuild with `cargo build --release --features cuda`",
            index.map(|i| format!(":{i}")).unwrap_or_default()
        ))),
        "wgpu" => Err(RunnerError::Data("--device wgpu: this build has no wgpu feature: rebuild with `cargo build --release --features wgpu`".into())),
        other => Err(RunnerError::Usage(format!("--device {other}: expected auto, cpu, wgpu or cuda[:INDEX]"))),
    }
}

pub fn print_devices(_check: bool) -> Result<u8, RunnerError> {
    println!("backends compiled in: cpu (burn flex)");
    println!("cpu: {} threads", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    Ok(0)
}
