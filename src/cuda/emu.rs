//! The host emulation device: runs the kernels of `kernels/*.cu`, compiled as C++ (build.rs, feature `emu`), on
//! the CPU, with "device memory" in host memory. Slow and exact: it is how CI, which has no GPU, executes every
//! kernel against the golden data.

use std::alloc::{self, Layout};
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use super::device::{check_params, Device, LaunchDims, MemoryMeter};
use super::kernels::Kernel;
use super::params::KernelParams;
use crate::error::{Error, Result};

type EmuEntry = unsafe extern "C" fn(*const c_void);

include!(concat!(env!("OUT_DIR"), "/emu_entries.rs"));

extern "C" {
    fn mmengine_emu_launch(
        entry: EmuEntry,
        params: *const c_void,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        shared_bytes: usize,
    ) -> i32;
}

#[derive(Debug, Default)]
pub struct EmuDevice {
    meter: Arc<MemoryMeter>,
    memory: Option<MemoryLimit>,
    /// Launches per kernel, so tests can tell which kernels a path ran.
    launches: Mutex<HashMap<Kernel, usize>>,
    /// Models an sm_90 GPU: the layers that have a wgmma kernel take it (see [`EmuDevice::sm90`]).
    wgmma: bool,
}

/// A device memory size for the emulation, to exercise what a GPU's memory limit causes: allocations past it
/// fail with [`Error::DeviceMemory`], as `cuMemAlloc` does.
#[derive(Clone, Copy, Debug)]
struct MemoryLimit {
    bytes: usize,
    /// Whether `free_memory` reports what is left (a GPU does; the planner then sizes passes from it) or nothing
    /// (the backend must then learn the limit from failed allocations).
    reported: bool,
}

impl EmuDevice {
    pub fn new() -> Self {
        EmuDevice::default()
    }

    /// An emulated device with `bytes` of memory, whose free memory is reported when `reported` is set.
    pub fn with_memory_limit(bytes: usize, reported: bool) -> Self {
        EmuDevice {
            memory: Some(MemoryLimit { bytes, reported }),
            ..EmuDevice::default()
        }
    }

    /// An emulated sm_90 GPU: the kernels for compute capability 9.0 (`kernels/modconv_wgmma.cu`) serve the
    /// layers they cover, as on an H100. [`EmuDevice::new`] runs the kernels every architecture uses.
    pub fn sm90() -> Self {
        EmuDevice {
            wgmma: true,
            ..EmuDevice::default()
        }
    }

    /// How many times `kernel` was launched on this device.
    pub fn launches(&self, kernel: Kernel) -> usize {
        let launches = self.launches.lock().unwrap_or_else(|e| e.into_inner());
        launches.get(&kernel).copied().unwrap_or(0)
    }
}

/// Host memory standing in for device memory, 256-byte aligned like cudaMalloc's.
pub struct EmuBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
    meter: Arc<MemoryMeter>,
}

// SAFETY: a plain heap allocation; kernels and copies are the only users, and launches are synchronous.
unsafe impl Send for EmuBuffer {}
unsafe impl Sync for EmuBuffer {}

impl Drop for EmuBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `alloc` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
        self.meter.freed(self.layout.size());
    }
}

impl Device for EmuDevice {
    type Buffer = EmuBuffer;
    type Staging = Vec<u8>;

    fn describe(&self) -> String {
        "host emulation of the CUDA kernels (a fiber per CUDA thread)".to_string()
    }

    fn alloc(&self, bytes: usize) -> Result<EmuBuffer> {
        let layout = Layout::from_size_align(bytes.max(1), 256)
            .map_err(|_| Error::Invalid(format!("cannot allocate {bytes} bytes")))?;
        if let Some(limit) = self.memory {
            if self.meter.live() + layout.size() > limit.bytes {
                return Err(Error::DeviceMemory(format!(
                    "emulated device out of memory: {bytes} bytes requested, {} of {} in use",
                    self.meter.live(),
                    limit.bytes
                )));
            }
        }
        // SAFETY: nonzero size. Filled with 0xff (NaN as f32) so a kernel that reads memory nobody wrote fails.
        let ptr = unsafe {
            let p = alloc::alloc(layout);
            if !p.is_null() {
                std::ptr::write_bytes(p, 0xff, layout.size());
            }
            p
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            Error::Invalid(format!("out of host memory allocating {bytes} bytes"))
        })?;
        self.meter.allocated(layout.size());
        Ok(EmuBuffer {
            ptr,
            layout,
            meter: self.meter.clone(),
        })
    }

    fn address(&self, buf: &EmuBuffer) -> u64 {
        buf.ptr.as_ptr() as u64
    }

    fn upload(&self, data: &[u8], buf: &mut EmuBuffer) -> Result<()> {
        check_copy(data.len(), buf)?;
        // SAFETY: bounds checked above; the buffer is not aliased mutably during a synchronous copy.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.ptr.as_ptr(), data.len()) }
        Ok(())
    }

    fn download(&self, buf: &EmuBuffer, out: &mut [u8]) -> Result<()> {
        check_copy(out.len(), buf)?;
        // SAFETY: bounds checked above.
        unsafe { std::ptr::copy_nonoverlapping(buf.ptr.as_ptr(), out.as_mut_ptr(), out.len()) }
        Ok(())
    }

    fn alloc_staging(&self, bytes: usize) -> Result<Vec<u8>> {
        Ok(vec![0; bytes])
    }

    fn staging_len(&self, staging: &Vec<u8>) -> usize {
        staging.len()
    }

    /// Launches are synchronous here, so the copy is too.
    fn download_async(&self, buf: &EmuBuffer, staging: &mut Vec<u8>, bytes: usize) -> Result<()> {
        let Some(dst) = staging.get_mut(..bytes) else {
            return Err(Error::Invalid(format!(
                "download of {bytes} bytes into {} staged bytes",
                staging.len()
            )));
        };
        self.download(buf, dst)
    }

    fn staged<'a>(&self, staging: &'a Vec<u8>) -> Result<&'a [u8]> {
        Ok(staging)
    }

    fn copy(
        &self,
        src: &EmuBuffer,
        offset: usize,
        dst: &mut EmuBuffer,
        bytes: usize,
    ) -> Result<()> {
        check_copy(offset.saturating_add(bytes), src)?;
        check_copy(bytes, dst)?;
        // SAFETY: both ranges are inside their buffers (checked above), and two buffers never overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src.ptr.as_ptr().add(offset), dst.ptr.as_ptr(), bytes)
        }
        Ok(())
    }

    fn launch<P: KernelParams>(&self, kernel: Kernel, dims: LaunchDims, params: &P) -> Result<()> {
        check_params::<P>(kernel)?;
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        // SAFETY: the entry point reads a `P` (checked to be the kernel's parameter type) from `params`, and
        // every address in it was produced by this device.
        let status = unsafe {
            mmengine_emu_launch(
                entry(kernel),
                params as *const P as *const c_void,
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                dims.shared_bytes as usize,
            )
        };
        match status {
            0 => {
                let mut launches = self.launches.lock().unwrap_or_else(|e| e.into_inner());
                *launches.entry(kernel).or_default() += 1;
                Ok(())
            }
            _ => Err(Error::Invalid(format!(
                "emulated launch of {} rejected: grid {:?}, block {:?}, {} bytes shared",
                kernel.name(),
                dims.grid,
                dims.block,
                dims.shared_bytes
            ))),
        }
    }

    fn wgmma(&self) -> bool {
        self.wgmma
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn memory_meter(&self) -> &MemoryMeter {
        &self.meter
    }

    fn free_memory(&self) -> Option<usize> {
        let limit = self.memory.filter(|l| l.reported)?;
        Some(limit.bytes.saturating_sub(self.meter.live()))
    }
}

fn check_copy(len: usize, buf: &EmuBuffer) -> Result<()> {
    if len > buf.layout.size() {
        return Err(Error::Invalid(format!(
            "copy of {len} bytes into a {}-byte buffer",
            buf.layout.size()
        )));
    }
    Ok(())
}
