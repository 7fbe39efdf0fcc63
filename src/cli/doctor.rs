//! `mmengine doctor`: what this build and this machine can run, and the compiled kernel table.

use crate::cuda::driver;
use crate::cuda::kernels::{KernelInfo, KERNEL_TABLE, NVCC_VERSION, SASS_CHECKED};
use crate::error::Result;
use clap::Args;
use serde_json::{json, Value};

#[derive(Args)]
pub struct DoctorArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn kernel_json(k: &KernelInfo) -> Value {
    json!({
        "name": k.name,
        "file": format!("kernels/{}.cu", k.file),
        "archs": k.archs,
        "registers": k.registers,
        "shared_bytes": k.shared_bytes,
        "spill_bytes": k.spill_bytes,
        "stack_bytes": k.stack_bytes,
        "tensor_core_ops": k.tensor_core_ops,
        "local_memory": k.uses_local_memory(),
        "ldg128": k.ldg128,
        "lds128": k.lds128,
        "ldsm": k.ldsm,
        "main_loop_instructions_per_mma": k.main_loop_instructions_per_mma(),
    })
}

/// The CUDA libraries loaded at run time, whether each loads here, and what needs it.
fn libraries() -> [(&'static str, bool, &'static str); 3] {
    // SAFETY: each call only tries to load its library (cudarc panics on the first use of a missing one).
    unsafe {
        [
            (
                "libcuda",
                cudarc::driver::sys::is_culib_present(),
                "the driver: --device cuda",
            ),
            (
                "libcusolver",
                cudarc::cusolver::sys::is_culib_present(),
                "the SVD of fit --device cuda",
            ),
            (
                "libnvrtc",
                cudarc::nvrtc::sys::is_culib_present(),
                "only for builds without nvcc (run-time kernel compilation)",
            ),
        ]
    }
}

pub fn doctor(args: DoctorArgs) -> Result<()> {
    let devices = driver::list_devices();
    let libraries = libraries();
    let cuda_detail = match &devices {
        Ok(d) if d.is_empty() => "driver found, no devices".to_string(),
        Ok(d) => format!("{} device(s)", d.len()),
        Err(e) => e.to_string(),
    };
    let kernels_detail = match NVCC_VERSION {
        Some(v) => format!("{} kernels compiled by nvcc ({v})", KERNEL_TABLE.len()),
        None => "built without nvcc: kernels would be compiled at run time by NVRTC, if installed"
            .to_string(),
    };
    let backends = [
        (
            "cpu",
            true,
            format!("float32, {} threads", rayon::current_num_threads()),
        ),
        (
            "emu",
            cfg!(feature = "emu"),
            if cfg!(feature = "emu") {
                "host emulation of the CUDA kernels".to_string()
            } else {
                "not in this build (cargo feature `emu`)".to_string()
            },
        ),
        (
            "cuda",
            devices.as_ref().is_ok_and(|d| !d.is_empty()),
            cuda_detail,
        ),
    ];
    if args.json {
        let report = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "backends": backends
                .iter()
                .map(|(name, ok, detail)| json!({"name": name, "available": ok, "detail": detail}))
                .collect::<Vec<_>>(),
            "devices": devices.as_ref().map(|d| json!(d)).unwrap_or_else(|_| json!([])),
            "libraries": libraries
                .iter()
                .map(|(name, found, needed_for)| json!({"name": name, "found": found, "needed_for": needed_for}))
                .collect::<Vec<_>>(),
            "nvcc": NVCC_VERSION,
            "sass_checked": SASS_CHECKED,
            "kernels": KERNEL_TABLE.iter().map(kernel_json).collect::<Vec<_>>(),
        });
        println!("{report}");
        return Ok(());
    }
    println!("mmengine {}", env!("CARGO_PKG_VERSION"));
    println!("backends:");
    for (name, ok, detail) in &backends {
        let state = if *ok { "available" } else { "unavailable" };
        println!("  {name:5} {state:12} {detail}");
    }
    if let Ok(devices) = &devices {
        for d in devices {
            println!(
                "  cuda:{} {} (compute {}), {:.1} GiB, {:.1} GiB free",
                d.ordinal,
                d.name,
                d.compute_capability,
                d.memory_total_bytes as f64 / (1u64 << 30) as f64,
                d.memory_free_bytes as f64 / (1u64 << 30) as f64
            );
        }
    }
    println!("libraries:");
    for (name, found, needed_for) in &libraries {
        let state = if *found { "found" } else { "not found" };
        println!("  {name:12} {state:10} {needed_for}");
    }
    println!("kernels: {kernels_detail}");
    if KERNEL_TABLE.is_empty() {
        return Ok(());
    }
    let sass = if SASS_CHECKED {
        "from the sm_90 SASS"
    } else {
        "unknown: cuobjdump was missing"
    };
    println!(
        "  (registers for sm_90 or sm_90a; tensor-core ops, local memory and main-loop instructions per mma \
         or wgmma {sass})"
    );
    let name_width = KERNEL_TABLE.iter().map(|k| k.name.len()).max().unwrap_or(0);
    let file_width = KERNEL_TABLE.iter().map(|k| k.file.len()).max().unwrap_or(0);
    println!(
        "  {:name_width$} {:file_width$} {:>5} {:>7} {:>6} {:>6} {:12} {:>8} archs",
        "name", "file", "regs", "shared", "spill", "local", "tensor-core", "per mma"
    );
    for k in KERNEL_TABLE {
        println!(
            "  {:name_width$} {:file_width$} {:>5} {:>7} {:>6} {:>6} {:12} {:>8} {}",
            k.name,
            k.file,
            k.registers,
            k.shared_bytes,
            k.spill_bytes,
            if k.uses_local_memory() { "yes" } else { "no" },
            if k.tensor_core_ops.is_empty() {
                "-".to_string()
            } else {
                k.tensor_core_ops.join(",")
            },
            k.main_loop_instructions_per_mma()
                .map_or("-".to_string(), |r| format!("{r:.1}")),
            k.archs.join(",")
        );
    }
    Ok(())
}
