//! `fit`: the micromotion subspace of a set of anchor latents, written as one safetensors file.

use super::device::DeviceArg;
use super::render::check_output_ext;
use crate::bail;
use crate::cuda::driver::CudaDevice;
use crate::error::{Error, Result};
use crate::io::latents;
use crate::io::safetensors::{self, Data};
use crate::micromotion::device::fit_on;
use crate::micromotion::{self, Fit, FitOptions};
use crate::tensor::Tensor;
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct FitArgs {
    /// Anchor latents [k, layers, width]: .npy, .npz, .safetensors[:name], a .pt tensor, or the paper's anchor
    /// file (a torch.saved list of k tensors [1, layers, width]).
    #[arg(long)]
    anchors: String,
    /// Rank of the subspace (the paper uses 4).
    #[arg(long, default_value_t = 4)]
    rank: usize,
    /// Iteration cap of the robust PCA.
    #[arg(long, default_value_t = 1000)]
    max_iter: usize,
    /// Anchor the direction starts from.
    #[arg(long, default_value_t = 0)]
    from: usize,
    /// Anchor the direction ends at (default: the last).
    #[arg(long)]
    to: Option<usize>,
    /// Where the robust PCA runs: cpu, cuda[:N] (kernels and cuSOLVER), or emu (the kernels in the host emulation,
    /// with the CPU SVD standing in for cuSOLVER; builds with the `emu` feature).
    #[arg(long, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Output .safetensors: L, S, lowrank [k, layers, width], direction [layers, width], iterations, final_err.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn fit(args: FitArgs) -> Result<()> {
    args.device.check_available()?;
    // The iteration counts are stored as I32.
    if args.max_iter > i32::MAX as usize {
        bail!("--max-iter {} exceeds {}", args.max_iter, i32::MAX);
    }
    // Refuse a wrong output type before the work, not after.
    check_output_ext(&args.output, &["safetensors"])?;
    let spec = &args.anchors;
    let anchors = latents::read_latents(spec)?;
    let opts = FitOptions {
        rank: args.rank,
        max_iter: args.max_iter,
        from: args.from,
        to: args.to,
    };
    let (fit, seconds) = run_fit(args.device, &anchors, &opts)
        .map_err(|e| Error::invalid(format!("{spec}: {e}")))?;

    let iterations: Vec<i32> = fit.iterations.iter().map(|&n| n as i32).collect();
    let final_err: Vec<f32> = fit.final_err.iter().map(|&e| e as f32).collect();
    let layers = [fit.direction.shape[0]];
    let metadata: BTreeMap<String, String> = [
        ("rank", args.rank.to_string()),
        ("max_iter", args.max_iter.to_string()),
        ("from", fit.from.to_string()),
        ("to", fit.to.to_string()),
        ("anchors", spec.clone()),
        ("mmengine_version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "method",
            "micromotion RPCA_gpu + exact rank-q SVD".to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    safetensors::write(
        &args.output,
        &[
            (
                "L",
                &fit.rpca_low_rank.shape,
                Data::F32(&fit.rpca_low_rank.data),
            ),
            (
                "S",
                &fit.rpca_sparse.shape,
                Data::F32(&fit.rpca_sparse.data),
            ),
            ("lowrank", &fit.lowrank.shape, Data::F32(&fit.lowrank.data)),
            (
                "direction",
                &fit.direction.shape,
                Data::F32(&fit.direction.data),
            ),
            ("iterations", &layers, Data::I32(&iterations)),
            ("final_err", &layers, Data::F32(&final_err)),
        ],
        &metadata,
    )?;
    eprintln!(
        "fit {:?} on {}: rank {}, direction {} -> {}, iterations per layer {:?}, {:.1} ms; wrote {}",
        anchors.shape,
        args.device,
        args.rank,
        fit.from,
        fit.to,
        fit.iterations,
        seconds * 1e3,
        args.output.display()
    );
    Ok(())
}

/// The fit on `device` and its time in seconds. A device is opened (context, kernels) before the clock starts: that
/// cost is paid once per process, not per fit.
fn run_fit(device: DeviceArg, anchors: &Tensor, opts: &FitOptions) -> Result<(Fit, f64)> {
    fn timed(f: impl FnOnce() -> Result<Fit>) -> Result<(Fit, f64)> {
        let start = Instant::now();
        let fit = f()?;
        Ok((fit, start.elapsed().as_secs_f64()))
    }
    match device {
        DeviceArg::Cpu => timed(|| micromotion::fit(anchors, opts)),
        DeviceArg::Cuda(ordinal) => {
            let dev = CudaDevice::new(ordinal)?;
            timed(|| fit_on(&dev, anchors, opts))
        }
        #[cfg(feature = "emu")]
        DeviceArg::Emu => {
            let dev = crate::cuda::emu::EmuDevice::new();
            timed(|| fit_on(&dev, anchors, opts))
        }
        // check_available has refused it already.
        #[cfg(not(feature = "emu"))]
        DeviceArg::Emu => bail!("--device emu needs the `emu` feature"),
    }
}
