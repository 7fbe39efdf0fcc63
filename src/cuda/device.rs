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
    fn launch<P: KernelParams>(&self, kernel: Kernel, dims: LaunchDims, params: &P) -> Result<()>;
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;
    fn memory_meter(&self) -> &MemoryMeter;
    /// Free device memory in bytes, where the device can tell (plans chunk sizes).
    fn free_memory(&self) -> Option<usize>;
}

/// A float32 tensor in device memory.
pub struct DeviceTensor<D: Device> {
    pub buf: D::Buffer,
    pub shape: Vec<usize>,
    address: u64,
}

impl<D: Device> DeviceTensor<D> {
    pub fn alloc(dev: &D, shape: &[usize]) -> Result<Self> {
        let buf = dev.alloc(shape.iter().product::<usize>() * 4)?;
        let address = dev.address(&buf);
        Ok(DeviceTensor {
            buf,
            shape: shape.to_vec(),
            address,
        })
    }

    pub fn upload(dev: &D, t: &Tensor) -> Result<Self> {
        let mut d = Self::alloc(dev, &t.shape)?;
        dev.upload(bytemuck::cast_slice(&t.data), &mut d.buf)?;
        Ok(d)
    }

    pub fn download(&self, dev: &D) -> Result<Tensor> {
        let mut data = vec![0f32; self.len()];
        dev.download(&self.buf, bytemuck::cast_slice_mut(&mut data))?;
        Tensor::new(self.shape.clone(), data)
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
