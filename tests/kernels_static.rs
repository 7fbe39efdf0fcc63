//! What the compiled kernels must look like (build.rs's `ptxas -v` and SASS figures): no register spills, no local
//! memory, tensor-core instructions in every tensor-core kernel, and 128-bit loads in the GEMM main loops. Without nvcc the table is empty and there is
//! nothing to check, unless `MMENGINE_REQUIRE_NVCC` says the kernels must have been built.

use mmengine::cuda::kernels::{KernelInfo, KERNEL_TABLE, NVCC_VERSION, SASS_CHECKED};

/// Kernels whose names say they take tensor-core input types, or use wgmma.
fn is_tensor_core_kernel(name: &str) -> bool {
    ["tf32", "f16", "bf16", "wgmma"]
        .iter()
        .any(|t| name.contains(t))
}

/// The tensor-core instruction family a kernel's name promises: HGMMA (wgmma, sm_90a) or HMMA (mma.sync).
fn tensor_core_family(name: &str) -> &'static str {
    if name.contains("wgmma") {
        "HGMMA"
    } else {
        "HMMA"
    }
}

/// The sm_90 convolutions on wgmma (`kernels/modconv_wgmma.cu`), built for sm_90a alone.
const WGMMA_CONVS: [&str; 16] = [
    "modconv_3x3_wgmma_f16",
    "modconv_3x3_wgmma_bf16",
    "modconv_3x3_n64_wgmma_f16",
    "modconv_3x3_n64_wgmma_bf16",
    "modconv_3x3_torgb_wgmma_f16",
    "modconv_3x3_torgb_wgmma_bf16",
    "modconv_3x3_torgb_n64_wgmma_f16",
    "modconv_3x3_torgb_n64_wgmma_bf16",
    "modconv_3x3_n32_wgmma_f16",
    "modconv_3x3_n32_wgmma_bf16",
    "modconv_3x3_torgb_n32_wgmma_f16",
    "modconv_3x3_torgb_n32_wgmma_bf16",
    "modconv_up2_3x3_wgmma_f16",
    "modconv_up2_3x3_wgmma_bf16",
    "modconv_up2_3x3_sample_weights_wgmma_f16",
    "modconv_up2_3x3_sample_weights_wgmma_bf16",
];

/// The tensor-core convolutions the engine selects (`cuda::conv`); each must be in the table, so a renamed kernel
/// cannot drop out of the checks below unnoticed.
const TENSOR_CORE_CONVS: [&str; 21] = [
    "modconv_3x3_tf32",
    "modconv_3x3_f16",
    "modconv_3x3_bf16",
    "modconv_3x3_n32_tf32",
    "modconv_3x3_n32_f16",
    "modconv_3x3_n32_bf16",
    "modconv_3x3_torgb_tf32",
    "modconv_3x3_torgb_f16",
    "modconv_3x3_torgb_bf16",
    "modconv_3x3_torgb_n32_tf32",
    "modconv_3x3_torgb_n32_f16",
    "modconv_3x3_torgb_n32_bf16",
    "modconv_1x1_tf32",
    "modconv_1x1_f16",
    "modconv_1x1_bf16",
    "modconv_1x1_n32_tf32",
    "modconv_1x1_n32_f16",
    "modconv_1x1_n32_bf16",
    "modconv_up2_3x3_tf32",
    "modconv_up2_3x3_f16",
    "modconv_up2_3x3_bf16",
];

fn kernel(name: &str) -> &'static KernelInfo {
    KERNEL_TABLE
        .iter()
        .find(|k| k.name == name)
        .unwrap_or_else(|| panic!("kernel {name} missing from the table"))
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
    for name in TENSOR_CORE_CONVS {
        assert!(
            is_tensor_core_kernel(kernel(name).name),
            "{name} escapes the HMMA check"
        );
    }
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
        let family = tensor_core_family(k.name);
        assert!(
            k.tensor_core_ops.contains(&family),
            "kernel {} has no {family} in its sm_90 code (tensor-core ops: {:?})",
            k.name,
            k.tensor_core_ops
        );
    }
    for name in WGMMA_CONVS {
        assert_eq!(kernel(name).archs, ["sm_90a"], "{name}");
    }
}

/// The convolution and GEMM main loops stage tiles with 128-bit loads (cp.async or LDG.128 from global memory,
/// LDS.128 from shared memory); a change that silently falls back to 32-bit loads quarters their load bandwidth.
#[test]
fn gemm_main_loops_use_128_bit_loads() {
    if KERNEL_TABLE.is_empty() || !SASS_CHECKED {
        eprintln!("no compiled kernels or no SASS figures: nothing to check");
        return;
    }
    let hot = [
        "modconv_3x3",
        "modconv_1x1",
        "modconv_1x1_narrow",
        "modconv_up2_3x3",
    ];
    for name in hot {
        let k = kernel(name);
        assert!(
            k.ldg128 > 0 && k.lds128 > 0,
            "kernel {name}: {} 128-bit global loads, {} 128-bit shared loads",
            k.ldg128,
            k.lds128
        );
    }
    // The tensor-core convolutions stage their weights with 16-byte cp.async copies and load their mma fragments
    // from shared memory with ldmatrix (mma.cuh): one instruction per four 8 x 4-word quarters, where loading each
    // lane's words took eight 32-bit loads.
    // The wgmma kernels' operands stay in shared memory: cp.async weight stages, no fragments.
    for name in WGMMA_CONVS {
        let k = kernel(name);
        assert!(
            k.ldg128 > 0 && k.ldsm == 0,
            "kernel {name}: {} 128-bit global loads, {} ldmatrix",
            k.ldg128,
            k.ldsm
        );
    }
    for name in TENSOR_CORE_CONVS {
        let k = kernel(name);
        assert!(
            k.ldg128 > 0 && k.ldsm > 0,
            "kernel {name}: {} 128-bit global loads (cp.async weight stages), {} ldmatrix",
            k.ldg128,
            k.ldsm
        );
    }
}

/// The 3x3 tensor-core convolutions are bound by issuing instructions, so their main loop must stay lean. Same
/// resolution: about 5.5 (tf32) to 8 (f16/bf16, 8 x 16 rectangles) sm_90 instructions per mma with the taps of a
/// chunk unrolled over one gathered input rectangle and ldmatrix fragment loads, against 18 for the rolled tap loop
/// and over 40 for a per-tap gather. Up-sampling: about 6.5 (f16, tf32) to 8 (bf16) with 16-word stages, ldmatrix
/// and the gather split into parts between the mma, against 15 for per-lane fragment loads and 8-word stages. The
/// bound catches a change that brings index arithmetic, per-lane fragment loads or gathers back into the loop.
#[test]
fn tensor_core_3x3_main_loops_issue_few_instructions_per_mma() {
    if KERNEL_TABLE.is_empty() || !SASS_CHECKED {
        eprintln!("no compiled kernels or no SASS figures: nothing to check");
        return;
    }
    for name in TENSOR_CORE_CONVS
        .iter()
        .filter(|n| n.starts_with("modconv_3x3") || n.starts_with("modconv_up2_3x3"))
    {
        let k = kernel(name);
        let per_mma = k
            .main_loop_instructions_per_mma()
            .unwrap_or_else(|| panic!("kernel {name}: no main loop with tensor-core instructions"));
        eprintln!(
            "{name}: {} instructions, {} mma in the main loop ({per_mma:.1} per mma)",
            k.main_loop_instructions, k.main_loop_mma
        );
        assert!(
            per_mma <= 10.0,
            "kernel {name}: {per_mma:.1} instructions per mma in its main loop"
        );
    }
}

/// The wgmma kernels' main loops, per m16n8k16's worth of a warp's work (an m64nNk16 wgmma is N / 8 of those per
/// warp: N = 144 for the up-sampling kernels, 64 for _n64, 32 for _n32, 128 otherwise), so they compare with the
/// mma.sync kernels' figure above. The same-resolution loops run a K chunk at a time: its 18 products (a tap is a
/// descriptor offset), then the next chunk's gather (statically both its aligned and its pixel-by-pixel path) and B
/// copy: about 2.3 with N = 128, 3.7 with _n64 (two chunks per iteration) and 8.8 with _n32, whose few products
/// leave the gather and copy nearly all of it (a layer of one chunk, the 1024 px conv1, never runs them). Up-sampling:
/// about 4.9 and 3.6 (each A element is gathered, scaled and rounded for 144 columns, and its loads and conversions
/// dominate the loop; with per-sample weights it is stored as loaded).
#[test]
fn wgmma_main_loops_issue_few_instructions_per_unit_of_work() {
    if KERNEL_TABLE.is_empty() || !SASS_CHECKED {
        eprintln!("no compiled kernels or no SASS figures: nothing to check");
        return;
    }
    for name in WGMMA_CONVS {
        let k = kernel(name);
        let n = if name.contains("up2") {
            144.0
        } else if name.contains("n64") {
            64.0
        } else if name.contains("n32") {
            32.0
        } else {
            128.0
        };
        let per_wgmma = k
            .main_loop_instructions_per_mma()
            .unwrap_or_else(|| panic!("kernel {name}: no main loop with wgmma"));
        let per_unit = per_wgmma / (n / 8.0);
        eprintln!(
            "{name}: {per_wgmma:.1} instructions per wgmma, {per_unit:.1} per m16n8k16 of work"
        );
        let bound = if name.contains("n32") { 11.0 } else { 8.0 };
        assert!(
            per_unit <= bound,
            "kernel {name}: {per_unit:.1} instructions per m16n8k16 of work in its main loop"
        );
    }
}
