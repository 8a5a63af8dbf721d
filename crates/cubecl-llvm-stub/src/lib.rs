//! Offline stand-in for `cubecl-llvm` 0.11.3 (see Cargo.toml for why).
//!
//! It defines exactly the items `cubecl-cuda` 0.11.3 names, with the real
//! crate's shapes, so cubecl-cuda compiles unchanged. With cubecl-cuda's
//! `cpp` feature on (mrbm's `cuda` feature turns it on), kernels go through
//! NVRTC and nothing here runs except [`PtxVersion::for_driver`] (a table)
//! and [`shared::lowered_features::restrict_features`] (never called on the
//! NVRTC path). If the LLVM path were ever selected, [`PlironCompiler`]
//! returns a compilation error that says so, never a panic.

use cubecl_core::ir::nvidia::SmArch;
use cubecl_core::prelude::KernelDefinition;
use cubecl_core::{CompilationError, Compiler};

pub use shared::{NvptxModule, PlironArtifact, PlironCompiler, PlironOptions};
pub use target::LlvmTarget;

pub mod target {
    //! LLVM compilation targets (only the two cubecl-cuda names).

    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum LlvmTarget {
        #[default]
        Cpu,
        Nvptx,
    }
}

pub mod shared {
    //! The compiler, its options and its artifact.

    use super::*;
    use cubecl_core::ir::attributes::BufferIOAttr;

    pub use crate::target::LlvmTarget;

    /// The LLVM (pliron) kernel compiler. Here it compiles nothing.
    #[derive(Clone, Debug, Default)]
    pub struct PlironCompiler {
        pub target: LlvmTarget,
    }

    /// Options the real compiler reads; kept so cubecl-cuda's struct
    /// literal compiles. `arch` is an AMD architecture in the real crate;
    /// cubecl-cuda always passes `None`.
    #[derive(Clone, Debug, Default)]
    pub struct PlironOptions {
        pub arch: Option<u32>,
        pub sm_arch: Option<SmArch>,
        pub ptx_version: Option<crate::nvptx::ptx_version::PtxVersion>,
        pub grid_constants: bool,
    }

    /// A compiled PTX module (never produced here).
    #[derive(Clone, Debug)]
    pub struct NvptxModule {
        /// NUL-terminated PTX assembly.
        pub ptx: Vec<core::ffi::c_char>,
        pub entrypoint: String,
        pub ir: String,
        pub shared_memory_size: usize,
        pub io: Vec<BufferIOAttr>,
    }

    /// A compiled kernel artifact.
    #[derive(Clone, Debug)]
    pub enum PlironArtifact {
        NvptxCode(NvptxModule),
    }

    impl core::fmt::Display for PlironArtifact {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                PlironArtifact::NvptxCode(m) => write!(f, "{}", m.ir),
            }
        }
    }

    impl Compiler for PlironCompiler {
        type Representation = PlironArtifact;
        type CompilationOptions = PlironOptions;

        fn buffer_io(repr: &Self::Representation) -> Option<Vec<BufferIOAttr>> {
            match repr {
                PlironArtifact::NvptxCode(m) => Some(m.io.clone()),
            }
        }

        fn compile(&mut self, _kernel: KernelDefinition, _options: &PlironOptions) -> Result<PlironArtifact, CompilationError> {
            Err(CompilationError::Generic {
                reason: "this build of mrbm replaces cubecl's LLVM backend with a stub (it cannot be built offline); \
                         kernels must be compiled by NVRTC: build with cubecl-cuda's `cpp` feature (mrbm's `cuda` feature enables it)"
                    .into(),
                backtrace: cubecl_core::environment::backtrace::BackTrace::capture(),
            })
        }

        fn extension(&self) -> &'static str {
            match self.target {
                LlvmTarget::Cpu => "plir",
                LlvmTarget::Nvptx => "ll",
            }
        }

        fn lang_tag(&self) -> &'static str {
            match self.target {
                LlvmTarget::Cpu => "mlir",
                LlvmTarget::Nvptx => "llvm",
            }
        }
    }

    pub mod lowered_features {
        //! Feature narrowing for the LLVM backend; the NVRTC backend keeps
        //! every feature the device reports, so nothing is narrowed here.

        use cubecl_core::ir::DeviceProperties;

        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GpuTarget {
            Nvptx,
        }

        /// cubecl-cuda calls this only when the LLVM backend is selected,
        /// which this stub's compiler refuses anyway.
        pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
    }
}

pub mod nvptx {
    pub mod ptx_version {
        //! The PTX ISA version for the installed driver (the real crate's
        //! table; cubecl-cuda uses it in the kernel-cache namespace).

        use core::fmt;

        /// A PTX ISA version: 8.7 is `87`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct PtxVersion(pub u32);

        impl PtxVersion {
            /// The newest version a driver of CUDA `driver` loads
            /// (`cuDriverGetVersion`: 12.8 is 12080); `None` below 10.0.
            pub fn for_driver(driver: i32) -> Option<Self> {
                DRIVER_PTX.iter().find(|(first, _)| driver >= *first).map(|(_, p)| Self(*p))
            }
        }

        impl fmt::Display for PtxVersion {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "ptx{}", self.0)
            }
        }

        const DRIVER_PTX: &[(i32, u32)] = &[
            (13030, 93),
            (13020, 92),
            (13010, 91),
            (13000, 90),
            (12090, 88),
            (12080, 87),
            (12050, 85),
            (12040, 84),
            (12030, 83),
            (12020, 82),
            (12010, 81),
            (12000, 80),
            (11080, 78),
            (11070, 77),
            (11060, 76),
            (11050, 75),
            (11040, 74),
            (11030, 73),
            (11020, 72),
            (11010, 71),
            (11000, 70),
            (10020, 65),
            (10010, 64),
            (10000, 63),
        ];

        #[cfg(test)]
        mod tests {
            use super::*;

            #[test]
            fn a_driver_gets_the_newest_version_it_loads() {
                assert_eq!(PtxVersion::for_driver(12080), Some(PtxVersion(87)));
                assert_eq!(PtxVersion::for_driver(12060), Some(PtxVersion(85)));
                assert_eq!(PtxVersion::for_driver(13000).map(|p| p.to_string()), Some("ptx90".into()));
                assert_eq!(PtxVersion::for_driver(8000), None);
            }
        }
    }
}
