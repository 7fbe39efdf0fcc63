//! The GPU device: the kernels embedded by build.rs, loaded and launched through the CUDA driver API (cudarc,
//! loaded dynamically, so a machine without a driver still runs everything else).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute, CUmemPool_attribute};
use cudarc::driver::{
    result, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::device::{check_params, Device, LaunchDims, MemoryMeter};
use super::kernels::{Kernel, FATBINS, HEADERS, SM90A_FILES, SOURCES};
use super::params::KernelParams;
use crate::error::{Error, Result};

/// The dynamic shared memory any launch may ask for; more takes the kernel's opt-in
/// (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES), up to the device's per-block limit.
const DEFAULT_DYNAMIC_SHARED_BYTES: u32 = 48 * 1024;

pub struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    /// Launches and synchronous copies.
    stream: Arc<CudaStream>,
    /// Asynchronous downloads, so they overlap the launches queued after them.
    copy_stream: Arc<CudaStream>,
    functions: HashMap<Kernel, CudaFunction>,
    /// The dynamic shared memory each kernel has been opted in to, where over the default.
    shared_opt_ins: Mutex<HashMap<Kernel, u32>>,
    /// How the kernels were obtained: "embedded fatbin" or "NVRTC".
    kernel_origin: &'static str,
    /// Compute capability 9.0: the sm_90a kernels (wgmma) are loaded.
    wgmma: bool,
    meter: Arc<MemoryMeter>,
}

/// Page-locked host memory that downloads land in, with the event that marks the end of the last copy into it.
pub struct PinnedStaging {
    host: PinnedHostSlice<u8>,
    copied: Option<CudaEvent>,
}

/// Device memory, counted in the device's [`MemoryMeter`] while it lives.
pub struct CudaBuffer {
    slice: CudaSlice<u8>,
    meter: Arc<MemoryMeter>,
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        self.meter.freed(self.slice.len());
    }
}

fn driver_error(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Invalid(format!("CUDA {what}: {e}"))
}

/// Whether the CUDA driver library can be loaded on this machine. Checked before any driver call, because
/// cudarc panics when the library is missing.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The number of CUDA devices, or an error saying why there are none usable.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(no_driver());
    }
    let n = CudaContext::device_count().map_err(driver_error("device count"))?;
    Ok(n.max(0) as usize)
}

/// What `doctor` reports of one GPU.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceSummary {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: String,
    pub memory_total_bytes: usize,
    pub memory_free_bytes: usize,
}

/// Every CUDA device with its name, compute capability and memory (no kernels are loaded).
pub fn list_devices() -> Result<Vec<DeviceSummary>> {
    (0..device_count()?)
        .map(|ordinal| {
            let ctx = CudaContext::new(ordinal).map_err(driver_error("context"))?;
            let (major, minor) = ctx
                .compute_capability()
                .map_err(driver_error("compute capability"))?;
            let (free, total) = ctx.mem_get_info().map_err(driver_error("memory info"))?;
            Ok(DeviceSummary {
                ordinal,
                name: ctx.name().map_err(driver_error("device name"))?,
                compute_capability: format!("{major}.{minor}"),
                memory_total_bytes: total,
                memory_free_bytes: free,
            })
        })
        .collect()
}

/// Sets a u64 attribute of the device's current memory pool.
fn set_pool_attribute(ctx: &CudaContext, attr: CUmemPool_attribute, mut value: u64) -> Result<()> {
    // SAFETY: the pool is the context's device's own, and the release threshold is a u64 (cuMemPoolSetAttribute).
    unsafe {
        result::device::get_mem_pool(ctx.cu_device()).and_then(|pool| {
            result::mem_pool::set_attribute(pool, attr, (&mut value as *mut u64).cast())
        })
    }
    .map_err(driver_error("memory pool"))
}

/// Reads a u64 attribute (a byte count) of the device's current memory pool.
fn pool_attribute(ctx: &CudaContext, attr: CUmemPool_attribute) -> Result<u64> {
    let mut value = 0u64;
    // SAFETY: as in set_pool_attribute; the reserved and used byte counts are u64s.
    unsafe {
        result::device::get_mem_pool(ctx.cu_device()).and_then(|pool| {
            result::mem_pool::get_attribute(pool, attr, (&mut value as *mut u64).cast())
        })
    }
    .map_err(driver_error("memory pool"))?;
    Ok(value)
}

fn no_driver() -> Error {
    Error::Invalid(
        "no CUDA driver found (libcuda could not be loaded); use --device cpu".to_string(),
    )
}

impl CudaDevice {
    /// Opens device `ordinal` and loads every kernel.
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::Invalid(format!(
                "CUDA device {ordinal} does not exist ({count} found); use --device cuda:N with N < {count}"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_error("context"))?;
        if ctx.has_async_alloc() {
            // Buffers come from the stream-ordered pool (cuMemAllocAsync). Its default release threshold, 0, hands
            // every freed byte back to the driver at each synchronisation, so each pass of a large batch would map
            // its gigabytes anew; keep them in the pool instead (free_memory counts them as free).
            set_pool_attribute(
                &ctx,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                u64::MAX,
            )?;
        }
        // Two non-blocking streams, created before any allocation so that cudarc tracks every buffer's uses
        // across them (a buffer dropped on `stream` waits for a copy on `copy_stream` that reads it).
        let stream = ctx.new_stream().map_err(driver_error("stream"))?;
        let copy_stream = ctx.new_stream().map_err(driver_error("stream"))?;
        let capability = ctx
            .compute_capability()
            .map_err(driver_error("compute capability"))?;
        let wgmma = capability == (9, 0);
        let (modules, kernel_origin) = if FATBINS.is_empty() {
            (compile_with_nvrtc(&ctx, capability)?, "NVRTC")
        } else {
            let modules = FATBINS
                .iter()
                .filter(|(file, _)| wgmma || !SM90A_FILES.contains(file))
                .map(|(file, image)| {
                    let module = ctx
                        .load_module(Ptx::from_binary(image.to_vec()))
                        .map_err(driver_error(&format!("loading kernels/{file}.cu")))?;
                    Ok((*file, module))
                })
                .collect::<Result<HashMap<_, _>>>()?;
            (modules, "embedded fatbin")
        };
        let mut functions = HashMap::new();
        for &kernel in Kernel::ALL {
            let Some(module) = modules.get(kernel.file()) else {
                continue; // an sm_90a kernel on another GPU
            };
            let f = module
                .load_function(kernel.name())
                .map_err(driver_error(&format!("kernel {}", kernel.name())))?;
            functions.insert(kernel, f);
        }
        let mut device = CudaDevice {
            ordinal,
            ctx,
            stream,
            copy_stream,
            functions,
            shared_opt_ins: Mutex::default(),
            kernel_origin,
            wgmma,
            meter: Arc::default(),
        };
        // The sm_90 kernels serve layers only once wgmma has computed what they assume on this very GPU.
        let wanted = wgmma && std::env::var_os("MMENGINE_WGMMA").is_none_or(|v| v != "0");
        device.wgmma = wanted && super::wgmma::layout_agrees(&device)?;
        if wanted && !device.wgmma {
            eprintln!(
                "warning: this GPU's wgmma instruction did not compute what the sm_90 kernels assume \
                 (src/cuda/wgmma.rs); using the mma.sync kernels instead"
            );
        }
        Ok(device)
    }

    /// This device without its sm_90 kernels: every layer on the mma.sync kernels (as `MMENGINE_WGMMA=0` does),
    /// so that the two can be compared on one GPU.
    pub fn without_wgmma(mut self) -> Self {
        self.wgmma = false;
        self
    }

    /// Lets `f` (kernel `kernel`) launch with `bytes` of dynamic shared memory, which is over the default.
    fn opt_in_shared(&self, kernel: Kernel, f: &CudaFunction, bytes: u32) -> Result<()> {
        let mut opt_ins = self
            .shared_opt_ins
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if opt_ins.get(&kernel).is_some_and(|&done| done >= bytes) {
            return Ok(());
        }
        let limit = self
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(driver_error("shared memory limit"))?;
        let fixed = f
            .shared_size_bytes()
            .map_err(driver_error("kernel shared memory"))?;
        if i64::from(bytes) + i64::from(fixed) > i64::from(limit) {
            return Err(Error::Invalid(format!(
                "{}: {bytes} bytes of dynamic shared memory (and {fixed} static), more than this GPU's {limit} \
                 per block",
                kernel.name()
            )));
        }
        // The driver may want the function's context current in this thread (launches bind it likewise).
        self.ctx.bind_to_thread().map_err(driver_error("context"))?;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(driver_error(&format!(
            "shared memory opt-in of {}",
            kernel.name()
        )))?;
        opt_ins.insert(kernel, bytes);
        Ok(())
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(driver_error("memory info"))
    }

    pub fn name(&self) -> Result<String> {
        self.ctx.name().map_err(driver_error("device name"))
    }

    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        self.ctx
            .compute_capability()
            .map_err(driver_error("compute capability"))
    }

    /// The stream every launch and copy of this device goes to (libraries such as cuSOLVER join it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

/// The fallback when the build had no nvcc: compile the embedded sources at run time with NVRTC, for this GPU.
fn compile_with_nvrtc(
    ctx: &Arc<CudaContext>,
    (major, minor): (i32, i32),
) -> Result<HashMap<&'static str, Arc<cudarc::driver::CudaModule>>> {
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::Invalid(
            "this mmengine was built without nvcc, so it has no compiled CUDA kernels, and NVRTC (libnvrtc) is not \
             installed to compile them now: run scripts/cuda-toolchain.sh and rebuild, or install the CUDA toolkit"
                .to_string(),
        ));
    }
    let include_dir = tempfile_dir()?;
    for (name, text) in HEADERS {
        let path = include_dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    let arch = format!("compute_{major}{minor}");
    let mut modules = HashMap::new();
    for (file, source) in SOURCES {
        let sm90a = SM90A_FILES.contains(file);
        if sm90a && (major, minor) != (9, 0) {
            continue;
        }
        let arch = if sm90a {
            "compute_90a".to_string()
        } else {
            arch.clone()
        };
        let opts = cudarc::nvrtc::CompileOptions {
            include_paths: vec![include_dir.to_string_lossy().into_owned()],
            options: vec![
                format!("--gpu-architecture={arch}"),
                "-std=c++17".to_string(),
            ],
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, opts)
            .map_err(|e| Error::Invalid(format!("NVRTC compiling kernels/{file}.cu: {e}")))?;
        let module = ctx
            .load_module(ptx)
            .map_err(driver_error(&format!("loading kernels/{file}.cu")))?;
        modules.insert(*file, module);
    }
    let _ = std::fs::remove_dir_all(&include_dir);
    Ok(modules)
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("mmengine-nvrtc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

impl Device for CudaDevice {
    type Buffer = CudaBuffer;
    type Staging = PinnedStaging;

    fn describe(&self) -> String {
        let name = self.name().unwrap_or_else(|_| "unknown GPU".to_string());
        let wgmma = if self.wgmma { ", sm_90 wgmma" } else { "" };
        format!(
            "cuda:{} {name} (kernels: {}{wgmma})",
            self.ordinal, self.kernel_origin
        )
    }

    fn alloc(&self, bytes: usize) -> Result<CudaBuffer> {
        // SAFETY: u8 has no invalid bit patterns; callers write before they read.
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.map_err(|e| {
            let msg = format!("CUDA allocation of {bytes} bytes failed: {e}");
            if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                Error::DeviceMemory(msg)
            } else {
                Error::Invalid(msg)
            }
        })?;
        self.meter.allocated(slice.len());
        Ok(CudaBuffer {
            slice,
            meter: self.meter.clone(),
        })
    }

    fn address(&self, buf: &CudaBuffer) -> u64 {
        let (ptr, _sync) = buf.slice.device_ptr(&self.stream);
        ptr
    }

    fn upload(&self, data: &[u8], buf: &mut CudaBuffer) -> Result<()> {
        let mut view = buf.slice.slice_mut(0..data.len());
        self.stream
            .memcpy_htod(data, &mut view)
            .map_err(driver_error("upload"))
    }

    fn download(&self, buf: &CudaBuffer, out: &mut [u8]) -> Result<()> {
        let view = buf.slice.slice(0..out.len());
        self.stream
            .memcpy_dtoh(&view, out)
            .map_err(driver_error("download"))?;
        self.synchronize()
    }

    fn alloc_staging(&self, bytes: usize) -> Result<PinnedStaging> {
        // Not write-combined (cudarc's default): the host reads this memory, and reads of write-combined memory
        // bypass the cache.
        // SAFETY: u8 has no invalid bit patterns, and the memory is only read after a copy has filled it.
        let host =
            unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes.max(1), 0) }.map_err(|e| {
                Error::Invalid(format!(
                    "CUDA page-locked allocation of {bytes} bytes failed: {e}"
                ))
            })?;
        Ok(PinnedStaging { host, copied: None })
    }

    fn staging_len(&self, staging: &PinnedStaging) -> usize {
        staging.host.len()
    }

    fn download_async(
        &self,
        buf: &CudaBuffer,
        staging: &mut PinnedStaging,
        bytes: usize,
    ) -> Result<()> {
        if bytes > buf.slice.len() || bytes > staging.host.len() {
            return Err(Error::Invalid(format!(
                "download of {bytes} bytes from a {}-byte buffer into {} staged bytes",
                buf.slice.len(),
                staging.host.len()
            )));
        }
        // Kernels write through raw addresses, which cudarc does not track: order the copy after them.
        let launched = self
            .stream
            .record_event(None)
            .map_err(driver_error("event"))?;
        self.copy_stream
            .wait(&launched)
            .map_err(driver_error("stream wait"))?;
        // cudarc's memcpy_dtoh copies the whole destination, and a staging buffer kept from a larger pass is
        // longer than this pass's images: copy exactly `bytes` with the driver call itself.
        let host = staging
            .host
            .as_mut_ptr()
            .map_err(driver_error("download"))?;
        let (src, _read) = buf.slice.device_ptr(&self.copy_stream);
        // SAFETY: `bytes` fits both buffers (checked above); the host memory is page-locked and stays allocated
        // until `staged` has waited for the copy (the backend keeps the staging buffer across calls).
        unsafe {
            cudarc::driver::sys::cuMemcpyDtoHAsync_v2(
                host.cast(),
                src,
                bytes,
                self.copy_stream.cu_stream(),
            )
        }
        .result()
        .map_err(driver_error("download"))?;
        staging.copied = Some(
            self.copy_stream
                .record_event(None)
                .map_err(driver_error("event"))?,
        );
        Ok(())
    }

    fn staged<'a>(&self, staging: &'a PinnedStaging) -> Result<&'a [u8]> {
        if let Some(copied) = &staging.copied {
            copied.synchronize().map_err(driver_error("download"))?;
        }
        staging.host.as_slice().map_err(driver_error("download"))
    }

    fn copy(
        &self,
        src: &CudaBuffer,
        offset: usize,
        dst: &mut CudaBuffer,
        bytes: usize,
    ) -> Result<()> {
        let end = offset.saturating_add(bytes);
        if end > src.slice.len() || bytes > dst.slice.len() {
            return Err(Error::Invalid(format!(
                "device copy of bytes {offset}..{end} of a {}-byte buffer into {} bytes",
                src.slice.len(),
                dst.slice.len()
            )));
        }
        // On the launch stream, so it follows the kernels that wrote `src` and precedes those that read `dst`.
        let from = src.slice.slice(offset..end);
        let mut to = dst.slice.slice_mut(0..bytes);
        self.stream
            .memcpy_dtod(&from, &mut to)
            .map_err(driver_error("device copy"))
    }

    fn launch<P: KernelParams>(&self, kernel: Kernel, dims: LaunchDims, params: &P) -> Result<()> {
        check_params::<P>(kernel)?;
        let cfg = LaunchConfig {
            grid_dim: dims.grid.into(),
            block_dim: dims.block.into(),
            shared_mem_bytes: dims.shared_bytes,
        };
        let f = self.functions.get(&kernel).ok_or_else(|| {
            Error::Invalid(format!(
                "{} needs an sm_90 GPU (compute capability 9.0)",
                kernel.name()
            ))
        })?;
        if dims.shared_bytes > DEFAULT_DYNAMIC_SHARED_BYTES {
            self.opt_in_shared(kernel, f, dims.shared_bytes)?;
        }
        // SAFETY: `P` is the kernel's parameter struct (checked above) and its addresses come from this device.
        unsafe { self.stream.launch_builder(f).arg(params).launch(cfg) }
            .map_err(driver_error(&format!("launching {}", kernel.name())))?;
        Ok(())
    }

    fn wgmma(&self) -> bool {
        self.wgmma
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver_error("synchronize"))
    }

    fn memory_meter(&self) -> &MemoryMeter {
        &self.meter
    }

    fn free_memory(&self) -> Option<usize> {
        let (free, _) = self.memory().ok()?;
        // Memory the pool keeps (see `new`) is free for this process's allocations.
        let pooled = if self.ctx.has_async_alloc() {
            let reserved = pool_attribute(
                &self.ctx,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
            );
            let used = pool_attribute(
                &self.ctx,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
            );
            reserved.ok()?.saturating_sub(used.ok()?)
        } else {
            0
        };
        Some(free + pooled as usize)
    }
}
