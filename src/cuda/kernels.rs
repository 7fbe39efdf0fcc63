//! What build.rs produced from `kernels/`: the kernel list, the embedded fatbins and the per-kernel table of
//! `ptxas` and SASS figures (empty when the build had no nvcc).

/// One kernel's compiled figures. Registers are for sm_90; spills, stack and shared memory are the maximum over
/// the compiled architectures. The SASS counts are from the sm_90 code (zero when cuobjdump was missing, see
/// [`SASS_CHECKED`]).
#[derive(Clone, Copy, Debug)]
pub struct KernelInfo {
    pub name: &'static str,
    pub file: &'static str,
    pub archs: &'static [&'static str],
    pub registers: u32,
    pub shared_bytes: u32,
    pub spill_bytes: u32,
    pub stack_bytes: u32,
    /// Tensor-core instruction families present (HMMA, HGMMA, ...).
    pub tensor_core_ops: &'static [&'static str],
    /// 128-bit global loads (LDG, and LDGSTS: cp.async into shared memory) and 128-bit shared loads.
    pub ldg128: u32,
    pub lds128: u32,
    /// ldmatrix instructions (LDSM): warp-collective mma fragment loads from shared memory.
    pub ldsm: u32,
    /// LDL/STL instructions: any means the kernel touches local memory.
    pub local_memory_ops: u32,
    /// The sm_90 loop with the most tensor-core instructions (a GEMM's main loop, its unrolled stages included):
    /// its instruction count and its tensor-core instructions; zero without such a loop.
    pub main_loop_instructions: u32,
    pub main_loop_mma: u32,
}

impl KernelInfo {
    pub fn uses_local_memory(&self) -> bool {
        self.local_memory_ops > 0 || self.stack_bytes > 0
    }

    /// Instructions issued per tensor-core instruction in the main loop: a static measure of the overhead around
    /// the mma work (address arithmetic, gathers, fragment loads), for kernels that are bound by issuing it.
    pub fn main_loop_instructions_per_mma(&self) -> Option<f64> {
        (self.main_loop_mma > 0)
            .then(|| self.main_loop_instructions as f64 / self.main_loop_mma as f64)
    }
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The table row of a kernel, when the kernels were compiled.
pub fn info(kernel: Kernel) -> Option<&'static KernelInfo> {
    KERNEL_TABLE.iter().find(|k| k.name == kernel.name())
}
