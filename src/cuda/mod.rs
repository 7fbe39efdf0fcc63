//! The CUDA backend: kernels in `kernels/*.cu` (compiled by build.rs), launched on a GPU through cudarc or, with
//! the `emu` feature, on the CPU by the host emulation. Both run through one [`device::Device`] trait, so the
//! ops and the generator above it are the same code on both.

pub mod backend;
pub mod conv;
pub mod device;
pub mod driver;
#[cfg(feature = "emu")]
pub mod emu;
pub mod gemm;
pub mod kernels;
pub mod mapping;
pub mod ops;
pub mod params;
pub mod profile;
pub mod synthesis;
pub mod wgmma;

pub use backend::CudaBackend;
pub use gemm::Precision;
