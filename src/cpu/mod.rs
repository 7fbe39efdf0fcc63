//! The CPU backend: exact float32 reference ops and the generator built on them.

/// `fn name(args) { body }` whose body runs compiled with AVX2 and FMA where the CPU has them (and as plain
/// code elsewhere): the crate is built for baseline x86-64, where LLVM vectorises plain loops 4 wide only.
macro_rules! avx2_twin {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $crate::cpu::avx2_twin!($(#[$meta])* $vis fn $name($($arg: $ty),*) -> () $body);
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            if $crate::cpu::microkernel::has_avx2_fma() {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                // SAFETY: the CPU has both features.
                return unsafe { avx2($($arg),*) };
            }
            body($($arg),*)
        }
    };
}
pub(crate) use avx2_twin;

pub mod conv;
pub mod mapping;
pub mod microkernel;
pub mod noise;
pub mod ops;
pub mod synthesis;

use crate::backend::{Backend, NoiseMode, Truncation};
use crate::error::Result;
use crate::model::Network;
use crate::tensor::Tensor;
use mapping::Mapping;
pub use synthesis::ConvPath;
use synthesis::Synthesis;

/// Executes a [`Network`] on the CPU (multithreaded through rayon's global pool).
pub struct CpuBackend {
    net: Network,
    mapping: Mapping,
    synthesis: Synthesis,
}

impl CpuBackend {
    pub fn new(net: Network) -> Self {
        Self::with_conv_path(net, ConvPath::Fast)
    }

    /// Choose the convolution implementation (the reference twin is for tests and debugging).
    pub fn with_conv_path(net: Network, path: ConvPath) -> Self {
        CpuBackend {
            mapping: Mapping::new(&net),
            synthesis: Synthesis::new(&net, path),
            net,
        }
    }

    /// `synthesize` that also reports every layer's styles and output (for golden tests and debugging).
    pub fn synthesize_traced(
        &self,
        ws: &Tensor,
        noise: NoiseMode,
        trace: synthesis::Trace,
    ) -> Result<Tensor> {
        self.synthesis.forward(&self.net, ws, noise, Some(trace))
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn network(&self) -> &Network {
        &self.net
    }

    fn map(&self, z: &Tensor, truncation: Truncation) -> Result<Tensor> {
        let w = self.mapping.forward(&self.net, z)?;
        mapping::broadcast_truncate(&self.net, &w, truncation)
    }

    fn synthesize(&self, ws: &Tensor, noise: NoiseMode) -> Result<Tensor> {
        self.synthesis.forward(&self.net, ws, noise, None)
    }
}
