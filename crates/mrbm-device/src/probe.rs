//! Proving a device works: panics of burn and cubecl caught into messages,
//! and a tiny kernel checked against the host.

use burn::tensor::{DType, Device, Tensor, TensorData};

/// The message of a panic payload (`panic!("...")` gives a `&str`,
/// `panic!("{x}")` a `String`); None for other payloads. Lives here because
/// catching backend panics is the first use; mrbm-stage re-exports it for
/// the runner and the stages.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
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
        let msg = panic_message(p.as_ref()).unwrap_or_else(|| "unknown panic".into());
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
        let ta = Tensor::<2>::from_data(TensorData::new(a.clone(), [3, 4]), (device, DType::F32));
        let tb = Tensor::<2>::from_data(TensorData::new(b.clone(), [4, 2]), (device, DType::F32));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_turns_a_panic_into_its_first_lines() {
        let e = catch(|| -> u8 { panic!("no driver\n\nstack line 1\nline 2\nline 3\nline 4") })
            .unwrap_err();
        assert_eq!(e, "no driver / stack line 1 / line 2 / line 3");
        assert_eq!(catch(|| 7), Ok(7));
    }
}
