//! The device fit's SVD step on the GPU ([`LayerSvd`] for [`CudaDevice`]): cuSOLVER's Jacobi SVD, float64, one
//! call per still-iterating layer, all on the device's stream.
//!
//! Why per-layer `gesvdj` rather than `gesvdjBatched`: the batched Jacobi SVD only takes matrices up to 32 x 32,
//! and a layer's matrix is k x D (11 x 512 in the paper). Batching would need a QR of each layer first (cuBLAS
//! `geqrfBatched`), the batched SVD of the k x k factor, and a second path whenever k > 32 or D < k. `gesvdj`
//! takes any shape in one path, converges to machine precision in float64 like the CPU's one-sided Jacobi, and
//! runs only for layers still iterating (a few SVDs of a small matrix per iteration, next to four batched kernels).
//!
//! Layout: cuSOLVER is column-major. A layer's row-major k x D matrix M read column-major is `A = M^T` (D x k,
//! `lda = D`), so no transposition is needed. From `A = U_A diag(s) V_A^T` follows `M = V_A diag(s) U_A^T`: M's
//! left singular vectors are `V_A`, k x r column-major with `ldv = k`, which is exactly the component-major
//! `[components, rows]` layout the kernels read, so gesvdj writes them in place. `U_A` (D x r) is required by the
//! call but unused.

use super::device::{LayerSvd, SvdBuffers};
use crate::bail;
use crate::cuda::device::Device;
use crate::cuda::driver::{CudaBuffer, CudaDevice};
use crate::error::{Error, Result};
use cudarc::cusolver::sys::{self, cusolverEigMode_t::CUSOLVER_EIG_MODE_VECTOR};
use cudarc::cusolver::{CusolverError, DnHandle};

fn solver_error(what: &str) -> impl FnOnce(CusolverError) -> Error + '_ {
    move |e| Error::Invalid(format!("cuSOLVER {what}: {e}"))
}

/// gesvdj's settings object (default tolerance: machine precision; default sweep cap).
struct GesvdjInfo(sys::gesvdjInfo_t);

impl GesvdjInfo {
    fn new() -> Result<Self> {
        let mut info = std::ptr::null_mut();
        // SAFETY: writes a new settings object into `info`.
        unsafe { sys::cusolverDnCreateGesvdjInfo(&mut info) }
            .result()
            .map_err(solver_error("gesvdj settings"))?;
        Ok(GesvdjInfo(info))
    }
}

impl Drop for GesvdjInfo {
    fn drop(&mut self) {
        // SAFETY: created by cusolverDnCreateGesvdjInfo and destroyed once. Nothing to do if this fails.
        let _ = unsafe { sys::cusolverDnDestroyGesvdjInfo(self.0) };
    }
}

/// What the cuSOLVER SVD keeps between iterations.
pub struct CusolverSvd {
    handle: DnHandle,
    settings: GesvdjInfo,
    /// gesvdj overwrites its input: it runs on this copy of the SVD input, `[layers, rows, cols]`.
    scratch: CudaBuffer,
    /// `U_A`, D x r, shared by the layers' calls (they run one after another on the stream).
    unused_left: CudaBuffer,
    workspace: CudaBuffer,
    workspace_len: i32,
    /// gesvdj's status per layer (0: converged).
    info: CudaBuffer,
}

/// The column-major view of the problem: each layer is `A`, `m x n` with `m = cols`, `n = rows`.
struct Dims {
    m: i32,
    n: i32,
    r: usize,
    layer_bytes: u64,
}

fn dims(bufs: &SvdBuffers<CudaDevice>) -> Result<Dims> {
    let (Ok(m), Ok(n)) = (i32::try_from(bufs.cols), i32::try_from(bufs.rows)) else {
        bail!(
            "a {} x {} matrix is too large for cuSOLVER",
            bufs.rows,
            bufs.cols
        );
    };
    Ok(Dims {
        m,
        n,
        r: bufs.components,
        layer_bytes: (bufs.rows * bufs.cols * 8) as u64,
    })
}

impl LayerSvd for CudaDevice {
    type SvdState = CusolverSvd;

    fn svd_state(&self, bufs: &SvdBuffers<Self>) -> Result<CusolverSvd> {
        // SAFETY: only tries to load the library; cudarc would panic on the first call without it.
        if !unsafe { sys::is_culib_present() } {
            bail!(
                "cuSOLVER (libcusolver) could not be loaded: the fit on a GPU needs it (install the CUDA toolkit's \
                 cuSOLVER, or use --device cpu)"
            );
        }
        let d = dims(bufs)?;
        let handle = DnHandle::new(self.stream().clone()).map_err(solver_error("handle"))?;
        let settings = GesvdjInfo::new()?;
        let scratch = self.alloc(bufs.layers * bufs.rows * bufs.cols * 8)?;
        let unused_left = self.alloc(bufs.cols * d.r * 8)?;
        let mut workspace_len = 0;
        // SAFETY: every pointer is a device buffer of the sizes the call describes (layer 0 of each).
        unsafe {
            sys::cusolverDnDgesvdj_bufferSize(
                handle.cu(),
                CUSOLVER_EIG_MODE_VECTOR,
                1,
                d.m,
                d.n,
                self.address(&scratch) as *const f64,
                d.m,
                self.address(&bufs.values) as *const f64,
                self.address(&unused_left) as *const f64,
                d.m,
                self.address(&bufs.vectors) as *const f64,
                d.n,
                &mut workspace_len,
                settings.0,
            )
        }
        .result()
        .map_err(solver_error("gesvdj workspace size"))?;
        let workspace = self.alloc(workspace_len.max(1) as usize * 8)?;
        let mut info = self.alloc(bufs.layers * 4)?;
        self.upload(bytemuck::cast_slice(&vec![0i32; bufs.layers]), &mut info)?;
        Ok(CusolverSvd {
            handle,
            settings,
            scratch,
            unused_left,
            workspace,
            workspace_len,
            info,
        })
    }

    fn layer_svd(
        &self,
        state: &mut CusolverSvd,
        bufs: &mut SvdBuffers<Self>,
        active: &[usize],
    ) -> Result<()> {
        let d = dims(bufs)?;
        let scratch = self.address(&state.scratch);
        // SAFETY: both buffers hold `layers` matrices; the copy is ordered before the solver calls on the stream.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                scratch,
                self.address(&bufs.input),
                bufs.layers * d.layer_bytes as usize,
                self.stream().cu_stream(),
            )
        }
        .map_err(|e| Error::Invalid(format!("CUDA copy of the SVD input: {e}")))?;
        let (values, vectors) = (self.address(&bufs.values), self.address(&bufs.vectors));
        let (workspace, info) = (self.address(&state.workspace), self.address(&state.info));
        for &l in active {
            let l64 = l as u64;
            // SAFETY: layer l's matrix, values (r), vectors (n x r, ldv = n) and status lie inside their buffers;
            // U_A (m x r, ldu = m) and the workspace were sized for this shape in svd_state.
            unsafe {
                sys::cusolverDnDgesvdj(
                    state.handle.cu(),
                    CUSOLVER_EIG_MODE_VECTOR,
                    1,
                    d.m,
                    d.n,
                    (scratch + l64 * d.layer_bytes) as *mut f64,
                    d.m,
                    (values + l64 * d.r as u64 * 8) as *mut f64,
                    self.address(&state.unused_left) as *mut f64,
                    d.m,
                    (vectors + l64 * (d.r * bufs.rows) as u64 * 8) as *mut f64,
                    d.n,
                    workspace as *mut f64,
                    state.workspace_len,
                    (info + l64 * 4) as *mut i32,
                    state.settings.0,
                )
            }
            .result()
            .map_err(solver_error("gesvdj"))?;
        }
        let mut status = vec![0i32; bufs.layers];
        self.download(&state.info, bytemuck::cast_slice_mut(&mut status))?;
        for &l in active {
            match status[l] {
                0 => {}
                s if s > 0 => bail!(
                    "layer {l}: cuSOLVER gesvdj did not converge on the {} x {} matrix (info {s})",
                    bufs.rows,
                    bufs.cols
                ),
                s => bail!("layer {l}: cuSOLVER gesvdj rejected parameter {}", -s),
            }
        }
        Ok(())
    }
}
