//! The host allocator, set once per process for training loops.
//!
//! glibc hands every block above its mmap threshold (128 KiB at first,
//! growing to at most 32 MiB) straight back to the kernel when it is freed,
//! and trims the heap's free top past 128 KiB. A training loop that makes
//! its tensors afresh every step then pays, for every one, fresh pages:
//! page faults, the kernel zeroing them, and unmapping them again. On the
//! DCIM networks that was about a tenth of a step (`perf`: exc_page_fault,
//! clear_page, unmap_page_range). Raising both thresholds keeps freed
//! blocks in the process for the next step instead; the peak memory is the
//! same, it is just not returned before the process ends. Values are not
//! affected, only where blocks come from.

/// Blocks up to this size come from the heap rather than their own mapping.
const MMAP_THRESHOLD: i32 = 64 << 20;
/// Free memory at the heap's top is returned only beyond this much.
const TRIM_THRESHOLD: i32 = 512 << 20;

/// Keep freed memory for reuse (glibc only; elsewhere nothing changes).
/// Call it first in `main`, so that every later block follows it. Returns
/// whether the allocator took both settings.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets two allocator parameters, under
        // glibc's own arena lock; no memory is touched.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_settings() {
        assert!(super::keep_freed_memory());
    }
}
