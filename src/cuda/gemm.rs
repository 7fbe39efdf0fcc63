//! Matrix products on the device in each precision mode: f32 on the FMA units, or tf32, fp16 and bf16 inputs on
//! the tensor cores with f32 accumulation (`kernels/gemm_tc.cu`, built on the mma.sync wrappers of
//! `kernels/mma.cuh`). The tiles and the precision modes are those of the tensor-core convolution.

use std::fmt;
use std::str::FromStr;

use super::device::{DType, Device, DeviceTensor, LaunchDims};
use super::kernels::Kernel;
use super::params::GemmParams;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The arithmetic of the device's matrix products: what `--precision` selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 inputs and products: the exact mode, checked against the golden data.
    #[default]
    Fp32,
    /// Inputs rounded to tf32 (10-bit mantissa, round to nearest, ties away), f32 accumulation.
    Tf32,
    /// Inputs rounded to f16 (round to nearest even), f32 accumulation.
    Fp16,
    /// Inputs rounded to bf16 (8-bit mantissa, round to nearest even), f32 accumulation.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 4] = [
        Precision::Fp32,
        Precision::Tf32,
        Precision::Fp16,
        Precision::Bf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether this mode runs on the tensor cores.
    pub fn uses_tensor_cores(self) -> bool {
        self != Precision::Fp32
    }

    /// The relative rounding error of one conversion of an input to this mode's type (f32's for fp32).
    pub fn unit_roundoff(self) -> f64 {
        match self {
            Precision::Fp32 => 2f64.powi(-24),
            Precision::Tf32 | Precision::Fp16 => 2f64.powi(-11),
            Precision::Bf16 => 2f64.powi(-8),
        }
    }

    /// How the synthesis stores activations between layers in this mode: in the 16-bit input type of fp16 and
    /// bf16 (the next layer rounds its input to it anyway), f32 otherwise.
    pub fn activation_dtype(self) -> DType {
        match self {
            Precision::Fp32 | Precision::Tf32 => DType::F32,
            Precision::Fp16 => DType::F16,
            Precision::Bf16 => DType::Bf16,
        }
    }

    fn gemm_kernel(self) -> Kernel {
        match self {
            Precision::Fp32 => Kernel::GemmFp32,
            Precision::Tf32 => Kernel::GemmTcTf32,
            Precision::Fp16 => Kernel::GemmTcF16,
            Precision::Bf16 => Kernel::GemmTcBf16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown precision '{s}': expected fp32, tf32, fp16 or bf16"
                ))
            })
    }
}

/// The block tile of `kernels/gemm_tc.cu` and its thread count.
const BLOCK_M: usize = 64;
const BLOCK_N: usize = 64;
const THREADS: u32 = 128;
/// The grid's limit on row tiles (y).
const MAX_GRID_Y: usize = 65535;
/// Dimensions stay well inside the kernel's `int` indices, K steps included.
const MAX_DIM: usize = 1 << 30;

/// `a [m, k] @ b [k, n]` in the given precision: tensor-core modes round the inputs to their type and accumulate
/// in f32.
pub fn matmul<D: Device>(dev: &D, a: &Tensor, b: &Tensor, precision: Precision) -> Result<Tensor> {
    let (&[m, k], &[kb, n]) = (a.shape.as_slice(), b.shape.as_slice()) else {
        return Err(Error::Invalid(format!(
            "matmul needs two matrices, got shapes {:?} and {:?}",
            a.shape, b.shape
        )));
    };
    if k != kb {
        return Err(Error::Invalid(format!(
            "matmul of [{m}, {k}] by [{kb}, {n}]: inner dimensions differ"
        )));
    }
    if m.max(n).max(k) > MAX_DIM || m.div_ceil(BLOCK_M) > MAX_GRID_Y {
        return Err(Error::Invalid(format!(
            "matmul of [{m}, {k}] by [{k}, {n}] is too large for one launch"
        )));
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(Tensor::zeros(vec![m, n]));
    }
    let ad = DeviceTensor::upload(dev, a)?;
    let bd = DeviceTensor::upload(dev, b)?;
    let c = DeviceTensor::alloc(dev, &[m, n])?;
    let params = GemmParams {
        c: c.ptr(),
        a: ad.ptr(),
        b: bd.ptr(),
        m: m as i32,
        n: n as i32,
        k: k as i32,
        lda: k as i32,
        ldb: n as i32,
        ldc: n as i32,
    };
    let dims = LaunchDims {
        grid: [n.div_ceil(BLOCK_N) as u32, m.div_ceil(BLOCK_M) as u32, 1],
        block: [THREADS, 1, 1],
        shared_bytes: 0,
    };
    dev.launch(precision.gemm_kernel(), dims, &params)?;
    c.download(dev)
}
