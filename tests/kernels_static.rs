//! What the compiled kernels must look like (build.rs's `ptxas -v` and SASS figures): no register spills, no local
//! memory, and tensor-core instructions in every tensor-core kernel. Without nvcc the table is empty and there is
//! nothing to check, unless `MMENGINE_REQUIRE_NVCC` says the kernels must have been built.

use mmengine::cuda::kernels::{KERNEL_TABLE, NVCC_VERSION, SASS_CHECKED};

/// Kernels whose names say they take tensor-core input types.
fn is_tensor_core_kernel(name: &str) -> bool {
    ["tf32", "f16", "bf16"].iter().any(|t| name.contains(t))
}

#[test]
fn compiled_kernels_neither_spill_nor_use_local_memory_and_tensor_core_kernels_use_hmma() {
    if KERNEL_TABLE.is_empty() {
        assert!(
            std::env::var_os("MMENGINE_REQUIRE_NVCC").is_none(),
            "MMENGINE_REQUIRE_NVCC is set but the kernels were built without nvcc (empty KERNEL_TABLE)"
        );
        eprintln!("built without nvcc: no compiled kernels to check (run scripts/cuda-toolchain.sh and rebuild)");
        return;
    }
    eprintln!("kernels compiled by {}", NVCC_VERSION.unwrap_or("nvcc"));
    for k in KERNEL_TABLE {
        assert_eq!(
            k.spill_bytes, 0,
            "kernel {} spills {} bytes",
            k.name, k.spill_bytes
        );
        assert!(
            !k.uses_local_memory(),
            "kernel {} uses local memory ({} bytes stack, {} LDL/STL)",
            k.name,
            k.stack_bytes,
            k.local_memory_ops
        );
    }
    if !SASS_CHECKED {
        eprintln!("no cuobjdump at build time: tensor-core instructions not checked");
        return;
    }
    for k in KERNEL_TABLE
        .iter()
        .filter(|k| is_tensor_core_kernel(k.name))
    {
        assert!(
            k.tensor_core_ops.contains(&"HMMA"),
            "kernel {} has no HMMA in its sm_90 code (tensor-core ops: {:?})",
            k.name,
            k.tensor_core_ops
        );
    }
}
