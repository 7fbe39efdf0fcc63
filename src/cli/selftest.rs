//! `mmengine selftest`: the golden cases on a device, each with its error and verdict.

use super::device::{open_backend, DeviceArg};
use crate::bail;
use crate::cuda::Precision;
use crate::error::Result;
use crate::selftest::{self, Check, CpuOps, OpBackend, OpsReport};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct SelftestArgs {
    /// cpu, emu or cuda[:N].
    #[arg(long, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// fp32 (the golden tolerances), or tf32, fp16, bf16 on a CUDA device's tensor cores (images held to a
    /// tolerance derived from the mode's rounding).
    #[arg(long, default_value_t = Precision::Fp32)]
    precision: Precision,
    /// The golden data folder (default: $MMENGINE_GOLDEN, else ../shared/golden).
    #[arg(long)]
    golden: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn golden_dir(arg: Option<PathBuf>) -> Result<PathBuf> {
    let dir = arg
        .or_else(|| std::env::var_os("MMENGINE_GOLDEN").map(PathBuf::from))
        .unwrap_or_else(|| Path::new("..").join("shared").join("golden"));
    if !dir.join("ops").join("ops.json").exists() {
        bail!(
            "{}: no golden data there (expected ops/ops.json); pass --golden DIR",
            dir.display()
        );
    }
    Ok(dir)
}

fn ops_report(device: DeviceArg, golden: &Path) -> Result<OpsReport> {
    let run = |ops: &dyn OpBackend| selftest::ops_cases(golden, ops);
    match device {
        DeviceArg::Cpu => run(&CpuOps),
        #[cfg(feature = "emu")]
        DeviceArg::Emu => run(&selftest::DeviceOps(crate::cuda::emu::EmuDevice::new())),
        #[cfg(not(feature = "emu"))]
        DeviceArg::Emu => device
            .check_available()
            .map(|_| unreachable!("emu is never available here")),
        DeviceArg::Cuda(n) => run(&selftest::DeviceOps(crate::cuda::driver::CudaDevice::new(
            n,
        )?)),
    }
}

pub fn selftest(args: SelftestArgs) -> Result<()> {
    args.device.check_available()?;
    let golden = golden_dir(args.golden)?;
    let ops = ops_report(args.device, &golden)?;
    let device = args.device;
    let precision = args.precision;
    let generator = selftest::generator_cases(&golden, precision, &|net| {
        open_backend(device, net, precision)
    })?;
    let checks: Vec<&Check> = ops.checks.iter().chain(&generator).collect();
    let failed = checks.iter().filter(|c| !c.passed).count();
    if args.json {
        let report = serde_json::json!({
            "device": device.to_string(),
            "precision": precision.to_string(),
            "golden": golden.display().to_string(),
            "checks": checks,
            "skipped": ops.skipped,
            "passed": checks.len() - failed,
            "failed": failed,
        });
        println!("{report}");
    } else {
        println!(
            "selftest on {device} ({precision}), golden data {}",
            golden.display()
        );
        for c in &checks {
            let verdict = if c.passed { "pass" } else { "FAIL" };
            let tol = if c.tol_rel > 0.0 {
                format!("{:.0e} abs / {:.0e} rel", c.tol_abs, c.tol_rel)
            } else {
                format!("{:.0e}", c.tol_abs)
            };
            let problem = c
                .problem
                .as_deref()
                .map(|p| format!("  ({p})"))
                .unwrap_or_default();
            println!(
                "  {verdict}  {:2} {:40} max error {:9.2e}  tolerance {tol}{problem}",
                if c.case.len() <= 2 {
                    c.case.as_str()
                } else {
                    "D"
                },
                if c.case.len() <= 2 {
                    c.output.as_str()
                } else {
                    c.case.as_str()
                },
                c.max_abs_err
            );
        }
        if !ops.skipped.is_empty() {
            println!(
                "  skipped {} ops cases (ops this device does not implement): {}",
                ops.skipped.len(),
                ops.skipped.join(", ")
            );
        }
        println!(
            "{} passed, {failed} failed, {} skipped",
            checks.len() - failed,
            ops.skipped.len()
        );
    }
    if failed > 0 {
        bail!(
            "selftest on {device}: {failed} of {} checks failed",
            checks.len()
        );
    }
    Ok(())
}
