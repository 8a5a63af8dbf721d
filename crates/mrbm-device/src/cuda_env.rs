//! What the CUDA backend needs at run time, looked for without burn, so the
//! answer comes even where burn would panic.
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
    /// The driver, NVRTC and headers lines of `mrbm devices`: what was
    /// found, or what is missing.
    pub fn lines(&self) -> [(&'static str, &str); 3] {
        [
            ("driver", either(&self.driver)),
            ("nvrtc", either(&self.nvrtc)),
            ("headers", either(&self.headers)),
        ]
    }

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

fn either(r: &Result<String, String>) -> &str {
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
