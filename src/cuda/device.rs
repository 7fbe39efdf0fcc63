//! What the kernels need from a device: memory, copies and launches. Two implementations run the same kernels:
//! the GPU through the CUDA driver ([`super::driver::CudaDevice`]) and the host emulation
//! ([`super::emu::EmuDevice`]). Everything above this trait (ops, the generator) is shared by both.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::kernels::Kernel;
use super::params::KernelParams;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Grid and block sizes and dynamic shared memory of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchDims {
    /// A 1-D launch of `threads`-thread blocks covering `n` elements, capped at `max_blocks` (kernels that take
    /// this use grid-stride loops).
    pub fn linear(n: usize, threads: u32, max_blocks: u32) -> Self {
        let blocks = n.div_ceil(threads as usize).clamp(1, max_blocks as usize) as u32;
        LaunchDims {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            shared_bytes: 0,
        }
    }
}

/// Device memory held by a device's buffers now, and the most held at once (what `bench` reports as peak
/// memory; it counts our buffers, not the driver's own reservations).
#[derive(Debug, Default)]
pub struct MemoryMeter {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl MemoryMeter {
    pub fn allocated(&self, bytes: usize) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    pub fn freed(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

pub trait Device: Send + Sync {
    type Buffer: Send + Sync;
    /// Host memory that asynchronous downloads land in: page-locked on a GPU, so the copy engine writes it at
    /// full bus speed while kernels run; plain memory in the emulation.
    type Staging: Send;

    /// One line for logs and `doctor`: the device's name and what runs the kernels.
    fn describe(&self) -> String;
    /// Uninitialised device memory.
    fn alloc(&self, bytes: usize) -> Result<Self::Buffer>;
    /// The buffer's device address, as kernels receive it.
    fn address(&self, buf: &Self::Buffer) -> u64;
    fn upload(&self, data: &[u8], buf: &mut Self::Buffer) -> Result<()>;
    fn download(&self, buf: &Self::Buffer, out: &mut [u8]) -> Result<()>;
    fn alloc_staging(&self, bytes: usize) -> Result<Self::Staging>;
    fn staging_len(&self, staging: &Self::Staging) -> usize;
    /// Queues a copy of `buf`'s first `bytes` into `staging`. It starts once the launches queued so far have
    /// finished and runs beside the launches queued after it. `buf` must live until [`Self::staged`] returns.
    fn download_async(
        &self,
        buf: &Self::Buffer,
        staging: &mut Self::Staging,
        bytes: usize,
    ) -> Result<()>;
    /// Waits for the last copy into `staging` and returns its contents.
    fn staged<'a>(&self, staging: &'a Self::Staging) -> Result<&'a [u8]>;
    /// Queues a copy of `src`'s bytes `offset..offset + bytes` into the start of `dst`, after the launches queued
    /// so far.
    fn copy(
        &self,
        src: &Self::Buffer,
        offset: usize,
        dst: &mut Self::Buffer,
        bytes: usize,
    ) -> Result<()>;
    fn launch<P: KernelParams>(&self, kernel: Kernel, dims: LaunchDims, params: &P) -> Result<()>;
    /// Whether the sm_90a kernels (`kernels/modconv_wgmma.cu`, warpgroup tensor-core instructions) run here.
    fn wgmma(&self) -> bool {
        false
    }
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;
    fn memory_meter(&self) -> &MemoryMeter;
    /// Free device memory in bytes, where the device can tell (plans chunk sizes).
    fn free_memory(&self) -> Option<usize>;
}

/// How a device tensor stores its elements. Activations between layers are 16-bit in the fp16 and bf16 modes
/// (halving the memory traffic of the memory-bound high-resolution layers); everything else is f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    Bf16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }
}

/// A tensor in device memory, converted from and to host f32 tensors on upload and download.
pub struct DeviceTensor<D: Device> {
    pub buf: D::Buffer,
    pub shape: Vec<usize>,
    dtype: DType,
    address: u64,
}

impl<D: Device> DeviceTensor<D> {
    /// Uninitialised f32 elements.
    pub fn alloc(dev: &D, shape: &[usize]) -> Result<Self> {
        Self::alloc_as(dev, shape, DType::F32)
    }

    pub fn alloc_as(dev: &D, shape: &[usize], dtype: DType) -> Result<Self> {
        let buf = dev.alloc(shape.iter().product::<usize>() * dtype.size())?;
        let address = dev.address(&buf);
        Ok(DeviceTensor {
            buf,
            shape: shape.to_vec(),
            dtype,
            address,
        })
    }

    pub fn upload(dev: &D, t: &Tensor) -> Result<Self> {
        Self::upload_as(dev, t, DType::F32)
    }

    /// `t` rounded to `dtype` (to nearest even, as the kernels' conversions).
    pub fn upload_as(dev: &D, t: &Tensor, dtype: DType) -> Result<Self> {
        let mut d = Self::alloc_as(dev, &t.shape, dtype)?;
        match dtype {
            DType::F32 => dev.upload(bytemuck::cast_slice(&t.data), &mut d.buf)?,
            DType::F16 => {
                let v: Vec<half::f16> = t.data.iter().map(|&x| half::f16::from_f32(x)).collect();
                dev.upload(bytemuck::cast_slice(&v), &mut d.buf)?
            }
            DType::Bf16 => {
                let v: Vec<half::bf16> = t.data.iter().map(|&x| half::bf16::from_f32(x)).collect();
                dev.upload(bytemuck::cast_slice(&v), &mut d.buf)?
            }
        }
        Ok(d)
    }

    /// The elements as a host f32 tensor (16-bit ones widened exactly).
    pub fn download(&self, dev: &D) -> Result<Tensor> {
        let data = match self.dtype {
            DType::F32 => {
                let mut data = vec![0f32; self.len()];
                dev.download(&self.buf, bytemuck::cast_slice_mut(&mut data))?;
                data
            }
            DType::F16 => {
                let mut v = vec![half::f16::ZERO; self.len()];
                dev.download(&self.buf, bytemuck::cast_slice_mut(&mut v))?;
                v.iter().map(|x| x.to_f32()).collect()
            }
            DType::Bf16 => {
                let mut v = vec![half::bf16::ZERO; self.len()];
                dev.download(&self.buf, bytemuck::cast_slice_mut(&mut v))?;
                v.iter().map(|x| x.to_f32()).collect()
            }
        };
        Tensor::new(self.shape.clone(), data)
    }

    /// A copy of rows `start..end` of the first dimension.
    pub fn rows(&self, dev: &D, start: usize, end: usize) -> Result<Self> {
        let Some(&rows) = self
            .shape
            .first()
            .filter(|&&rows| start <= end && end <= rows)
        else {
            return Err(Error::Invalid(format!(
                "rows {start}..{end} of a device tensor {:?}",
                self.shape
            )));
        };
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        let mut part = Self::alloc_as(dev, &shape, self.dtype)?;
        let row_bytes = self.bytes().checked_div(rows).unwrap_or(0);
        let bytes = part.bytes();
        dev.copy(&self.buf, start * row_bytes, &mut part.buf, bytes)?;
        Ok(part)
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn bytes(&self) -> usize {
        self.len() * self.dtype.size()
    }

    /// The device address of element 0.
    pub fn ptr(&self) -> u64 {
        self.address
    }
}

/// A launch whose parameter struct is not the one the kernel declares would read garbage: refuse it.
pub(super) fn check_params<P: KernelParams>(kernel: Kernel) -> Result<()> {
    if kernel.params_type() != P::C_NAME {
        return Err(Error::Invalid(format!(
            "kernel {} takes {}, not {}",
            kernel.name(),
            kernel.params_type(),
            P::C_NAME
        )));
    }
    Ok(())
}
