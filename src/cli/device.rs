//! `--device cpu|emu|cuda[:N]` and the backend it opens. The only place the CLI branches on the device.

use crate::backend::Backend;
use crate::bail;
use crate::cpu::CpuBackend;
use crate::cuda::{CudaBackend, Precision};
use crate::error::Result;
use crate::model::Network;
use std::fmt;
use std::str::FromStr;

/// Where the generator runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    /// The float32 CPU backend.
    Cpu,
    /// The CUDA kernels run by the host emulation (builds with `--features emu`; slow, for checking).
    Emu,
    /// CUDA device N.
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceArg::Cpu),
            "emu" => Ok(DeviceArg::Emu),
            "cuda" => Ok(DeviceArg::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceArg::Cuda)
                .ok_or_else(|| format!("'{s}' is not a device; use cpu, emu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceArg::Cpu => write!(f, "cpu"),
            DeviceArg::Emu => write!(f, "emu"),
            DeviceArg::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceArg {
    /// Fails early, before any work, when the device cannot exist in this build or on this machine.
    pub fn check_available(self) -> Result<()> {
        match self {
            DeviceArg::Cpu => Ok(()),
            DeviceArg::Emu if !cfg!(feature = "emu") => bail!(
                "--device emu: this mmengine was built without the host emulation; rebuild with \
                 `cargo build --release --features emu`"
            ),
            DeviceArg::Emu => Ok(()),
            DeviceArg::Cuda(_) => crate::cuda::driver::device_count().map(|_| ()),
        }
    }
}

/// Opens the backend that runs `net` on `device` in `precision`.
pub fn open_backend(
    device: DeviceArg,
    net: Network,
    precision: Precision,
) -> Result<Box<dyn Backend>> {
    device.check_available()?;
    match device {
        DeviceArg::Cpu if precision != Precision::Fp32 => {
            bail!("--precision {precision}: the cpu device computes in fp32 only")
        }
        DeviceArg::Cpu => Ok(Box::new(CpuBackend::new(net))),
        #[cfg(feature = "emu")]
        DeviceArg::Emu => Ok(Box::new(CudaBackend::new(
            crate::cuda::emu::EmuDevice::new(),
            net,
            precision,
        )?)),
        #[cfg(not(feature = "emu"))]
        DeviceArg::Emu => unreachable!("check_available refuses emu in a build without it"),
        DeviceArg::Cuda(n) => Ok(Box::new(CudaBackend::new(
            crate::cuda::driver::CudaDevice::new(n)?,
            net,
            precision,
        )?)),
    }
}
