//! What tract's kernels can use on this CPU, as tract detects it at run time: NEON on armv7, the
//! ARMv8.2 dot product (SDOT, Cortex-A55/A76/A78: Pi 5, Jetson Orin) on aarch64, AVX-512 / VNNI
//! on x86. The int8 speed of a board depends on it, so the device logs it at start and
//! `edgecap info` prints it. Also how many threads tract's matrix products use.

use tract_linalg::isa::{self, Isa};
use tract_linalg::multithread::{self, Executor};

/// The CPU features tract will dispatch on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuFeatures {
    /// `aarch64`, `arm`, `x86_64`...
    pub arch: &'static str,
    /// Feature names in tract's vocabulary (`neon`, `dotprod`, `fp16`, `avx512vnni`...).
    pub features: Vec<&'static str>,
}

impl CpuFeatures {
    /// Probed once per process (tract caches it); `TRACT_CPU_ISA` can edit it, as in tract.
    pub fn detect() -> CpuFeatures {
        let set = isa::native();
        let arch = set.iter().find(|i| i.is_arch()).map(|i| i.name()).unwrap_or(std::env::consts::ARCH);
        let mut features: Vec<&'static str> = set.iter().filter(|i| !i.is_arch()).map(|i| i.name()).collect();
        if features.is_empty() {
            // The architecture's baseline has a name too: NEON on aarch64, SSE2 on x86_64.
            features.push(set.nickname());
        }
        CpuFeatures { arch, features }
    }

    pub fn has(&self, feature: &str) -> bool {
        self.features.contains(&feature)
    }

    /// Whether int8 matrix products get a dot-product instruction (SDOT on aarch64, VNNI on x86)
    /// rather than widening multiplies: roughly 4x the int8 throughput on ARM.
    pub fn int8_dot_product(&self) -> bool {
        [Isa::Aarch64DotProd, Isa::X86_64Avx512Vnni, Isa::X86_64AvxVnni].iter().any(|i| self.has(i.name()))
    }
}

impl std::fmt::Display for CpuFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.arch, self.features.join(" "))?;
        write!(f, "; int8 dot product: {}", if self.int8_dot_product() { "yes" } else { "no" })
    }
}

/// The cores this process may use (cgroup and affinity limits included), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The thread count for a `--threads` value (none = every core): at least 1, and capped at the
/// cores this process may use, with a warning, since more only adds switching (and thousands of
/// threads, memory). Both binaries take their thread count through here.
pub fn thread_count(asked: Option<usize>) -> Result<usize, String> {
    let cores = available_cores();
    match asked.unwrap_or(cores) {
        0 => Err("threads must be at least 1".into()),
        n if n > cores => {
            log::warn!("{n} threads asked for, {cores} cores available: using {cores}");
            Ok(cores)
        }
        n => Ok(n),
    }
}

/// Runs tract's matrix products and edgecap's int8 products ([`crate::int8::pool`]) on `threads`
/// threads from now on, process-wide (tract keeps one default executor). 1 = on the calling
/// thread only, as without this call. Call it once, before captioning: each call with more than
/// one thread builds new pools.
pub fn set_threads(threads: usize) {
    let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
    multithread::set_default_executor(executor);
    crate::int8::pool::set_threads(threads);
}

/// A memory figure of this process (`VmHWM`, `VmRSS`...) from `/proc/self/status`, in MiB;
/// `None` where the OS has no such file.
pub fn process_memory_mib(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib as f64 / 1024.0)
}

/// Hands the heap's free pages back to the OS. Loading a bundle makes and frees transient
/// copies of every weight (file bytes, decoded protobuf, tract's tensors before packing); glibc
/// may keep the freed pages resident unless asked.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the OS; no live allocation is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether this 32-bit ARM CPU has NEON, from the kernel's hardware capabilities (Rust's run-time
/// detection of ARM features is not stable, and `cfg(target_feature = "neon")` is not set for an
/// unstable feature even when the build enables it).
#[cfg(target_arch = "arm")]
pub(crate) fn arm_has_neon() -> bool {
    static NEON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NEON.get_or_init(|| {
        // HWCAP_NEON, arch/arm/include/uapi/asm/hwcap.h.
        const HWCAP_NEON: std::ffi::c_ulong = 1 << 12;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: getauxval reads the process's auxiliary vector; no memory is handed over.
        return unsafe { libc::getauxval(libc::AT_HWCAP) } & HWCAP_NEON != 0;
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_architecture_it_was_built_for() {
        let cpu = CpuFeatures::detect();
        // tract's names match Rust's target_arch names ("aarch64", "arm", "x86_64").
        let expected = std::env::consts::ARCH;
        assert_eq!(cpu.arch, expected, "{cpu}");
        // armv7 boards without NEON are not supported; tract must have found it.
        if cfg!(target_arch = "arm") {
            assert!(cpu.has("neon"), "{cpu}");
        }
        assert!(cpu.to_string().starts_with(expected));
    }
}
