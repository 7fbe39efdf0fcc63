//! The micromotion fit on a device: the paper's robust PCA of every layer at once (`kernels/rpca.cu`, float64, all
//! layers in each launch), giving the same [`Fit`] as the CPU [`super::fit()`], with the same input checks.
//!
//! Each iteration's SVD is the one step that is not one of our kernels; [`LayerSvd`] abstracts it. On the GPU it is
//! cuSOLVER ([`super::cusolver`]). The host emulation has no cuSOLVER, so there it downloads the matrices, runs the
//! CPU [`svd`] and uploads the result; every other step of the loop runs the real kernels.
//!
//! The loop's constants (mu, thresholds, tolerance) are computed on the host by the CPU loop's own code, and the
//! rank-q reconstruction and the direction are computed on the host from the downloaded L by the CPU fit's code:
//! one SVD per layer, once, against a few per iteration.

use super::fit::{in_layer, FitShape, LayerFit};
use super::rpca::{Rpca, RpcaConstants};
use super::{Fit, FitOptions};
use crate::bail;
use crate::cuda::device::{Device, LaunchDims};
use crate::cuda::kernels::Kernel;
use crate::cuda::params::{
    RpcaFinishParams, RpcaProjectorParams, RpcaSvdInputParams, RpcaUpdateParams,
};
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

#[cfg(feature = "emu")]
use super::svd::svd;

/// Threads per block of the element-wise kernels (`RPCA_THREADS` in rpca.cu).
const THREADS: u32 = 256;
/// Elements each thread of rpca_update handles at least, before the layer is split over more blocks.
const ELEMENTS_PER_THREAD: usize = 4;
/// Most blocks per layer: enough to fill a GPU with a few layers, few enough that the per-layer sum stays short.
const MAX_BLOCKS_PER_LAYER: usize = 64;

/// CUDA's limit on a grid's y dimension, which indexes the layers.
const MAX_GRID_Y: usize = 65535;

/// The SVD step's buffers: its input and its outputs, for `layers` matrices of `rows x cols`.
pub struct SvdBuffers<D: Device> {
    /// `[layers, rows, cols]` row-major float64: `M - S + Y/mu`. The SVD must leave it unchanged.
    pub input: D::Buffer,
    /// `[layers, components]` singular values (any order).
    pub values: D::Buffer,
    /// `[layers, components, rows]` left singular vectors, vector i of layer l contiguous.
    pub vectors: D::Buffer,
    pub layers: usize,
    pub rows: usize,
    pub cols: usize,
    /// `min(rows, cols)`.
    pub components: usize,
}

/// The SVD of each still-iterating layer's matrix: the step of the robust PCA that a device delegates.
pub trait LayerSvd: Device + Sized {
    /// What the SVD keeps between iterations (handles, workspace).
    type SvdState;
    fn svd_state(&self, bufs: &SvdBuffers<Self>) -> Result<Self::SvdState>;
    /// Writes `values` and `vectors` of every layer in `active`; other layers' outputs may keep any content.
    fn layer_svd(
        &self,
        state: &mut Self::SvdState,
        bufs: &mut SvdBuffers<Self>,
        active: &[usize],
    ) -> Result<()>;
}

/// Fit the micromotion subspace to `anchors` `[k, L, D]` on `dev`: the same result and errors as
/// [`super::fit()`] (to float64 rounding: the SVD and the sums are other implementations).
pub fn fit_on<D: LayerSvd>(dev: &D, anchors: &Tensor, opts: &FitOptions) -> Result<Fit> {
    let shape = FitShape::check(anchors, opts)?;
    let FitShape {
        k, layers, width, ..
    } = shape;
    // The kernels index a layer's elements and count iterations in int, and launch one grid row per layer.
    if k * width > i32::MAX as usize || opts.max_iter > i32::MAX as usize {
        bail!(
            "a {k} x {width} layer with max_iter {} exceeds the device fit's int range ({})",
            opts.max_iter,
            i32::MAX
        );
    }
    if layers > MAX_GRID_Y {
        bail!("{layers} layers exceed the device fit's {MAX_GRID_Y} (one launch grid row each)");
    }
    let matrices: Vec<Vec<f64>> = (0..layers)
        .map(|l| shape.layer_matrix(anchors, l))
        .collect();
    let constants: Vec<RpcaConstants> = matrices
        .iter()
        .enumerate()
        .map(|(l, m)| RpcaConstants::new(m, k, width, opts.max_iter).map_err(|e| in_layer(l, e)))
        .collect::<Result<_>>()?;
    let per_layer =
        |pick: fn(&RpcaConstants) -> f64| -> Vec<f64> { constants.iter().map(pick).collect() };

    let size = k * width;
    let n = layers * size;
    let components = k.min(width);
    let m = upload(dev, &matrices.concat())?;
    let low_rank = dev.alloc(n * 8)?;
    let sparse = upload(dev, &vec![0f64; n])?;
    let y = upload(dev, &vec![0f64; n])?;
    let projector = dev.alloc(layers * k * k * 8)?;
    let mu = upload(dev, &per_layer(|c| c.mu))?;
    let mu_inv = upload(dev, &per_layer(|c| c.mu_inv))?;
    let sparse_threshold = upload(dev, &per_layer(|c| c.sparse_threshold))?;
    let norm2 = upload(dev, &per_layer(|c| c.norm2))?;
    let tol = upload(dev, &per_layer(|c| c.tol))?;
    let err = dev.alloc(layers * 8)?;
    let iterations = upload(dev, &vec![0i32; layers])?;
    let active = upload(dev, &vec![1i32; layers])?;
    let mut svd_bufs = SvdBuffers::<D> {
        input: dev.alloc(n * 8)?,
        values: dev.alloc(layers * components * 8)?,
        vectors: dev.alloc(layers * components * k * 8)?,
        layers,
        rows: k,
        cols: width,
        components,
    };
    let mut svd_state = dev.svd_state(&svd_bufs)?;

    let blocks_per_layer = size
        .div_ceil(THREADS as usize * ELEMENTS_PER_THREAD)
        .clamp(1, MAX_BLOCKS_PER_LAYER);
    let partial = dev.alloc(layers * blocks_per_layer * 8)?;
    let per_layer_dims = |blocks: usize| LaunchDims {
        grid: [blocks as u32, layers as u32, 1],
        block: [THREADS, 1, 1],
        shared_bytes: 0,
    };
    let a = |buf: &D::Buffer| dev.address(buf);
    let svd_input = RpcaSvdInputParams {
        w: a(&svd_bufs.input),
        m: a(&m),
        sparse: a(&sparse),
        y: a(&y),
        mu_inv: a(&mu_inv),
        active: a(&active),
        layer_size: size as i64,
    };
    let project = RpcaProjectorParams {
        projector: a(&projector),
        singular_values: a(&svd_bufs.values),
        left_vectors: a(&svd_bufs.vectors),
        mu_inv: a(&mu_inv),
        active: a(&active),
        rows: k as i32,
        components: components as i32,
    };
    let update = RpcaUpdateParams {
        low_rank: a(&low_rank),
        sparse: a(&sparse),
        y: a(&y),
        partial: a(&partial),
        m: a(&m),
        w: a(&svd_bufs.input),
        projector: a(&projector),
        mu: a(&mu),
        mu_inv: a(&mu_inv),
        sparse_threshold: a(&sparse_threshold),
        active: a(&active),
        rows: k as i32,
        cols: width as i32,
    };
    let finish = RpcaFinishParams {
        err: a(&err),
        iterations: a(&iterations),
        active: a(&active),
        partial: a(&partial),
        norm2: a(&norm2),
        tol: a(&tol),
        blocks_per_layer: blocks_per_layer as i32,
        max_iter: opts.max_iter as i32,
    };

    // Every layer starts with err = inf > tol and max_iter >= 1, so every layer runs at least once.
    let mut still_iterating: Vec<usize> = (0..layers).collect();
    while !still_iterating.is_empty() {
        dev.launch(
            Kernel::RpcaSvdInput,
            per_layer_dims(blocks_per_layer),
            &svd_input,
        )?;
        dev.layer_svd(&mut svd_state, &mut svd_bufs, &still_iterating)?;
        dev.launch(
            Kernel::RpcaProjector,
            per_layer_dims((k * k).div_ceil(THREADS as usize)),
            &project,
        )?;
        dev.launch(
            Kernel::RpcaUpdate,
            per_layer_dims(blocks_per_layer),
            &update,
        )?;
        dev.launch(
            Kernel::RpcaFinish,
            LaunchDims {
                grid: [layers as u32, 1, 1],
                block: [32, 1, 1],
                shared_bytes: 0,
            },
            &finish,
        )?;
        let flags: Vec<i32> = download(dev, &active, layers)?;
        still_iterating = (0..layers).filter(|&l| flags[l] != 0).collect();
    }

    let low_rank: Vec<f64> = download(dev, &low_rank, n)?;
    let sparse: Vec<f64> = download(dev, &sparse, n)?;
    let iterations: Vec<i32> = download(dev, &iterations, layers)?;
    let err: Vec<f64> = download(dev, &err, layers)?;
    let results: Vec<LayerFit> = (0..layers)
        .into_par_iter()
        .map(|l| {
            let dec = Rpca {
                low_rank: low_rank[l * size..(l + 1) * size].to_vec(),
                sparse: sparse[l * size..(l + 1) * size].to_vec(),
                iterations: iterations[l] as usize,
                final_err: err[l],
                low_rank_basis: None,
            };
            LayerFit::from_rpca(dec, l, k, width, opts.rank)
        })
        .collect::<Result<_>>()?;
    shape.assemble(&results)
}

/// A new device buffer holding `data`.
fn upload<D: Device, T: bytemuck::Pod>(dev: &D, data: &[T]) -> Result<D::Buffer> {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let mut buf = dev.alloc(bytes.len())?;
    dev.upload(bytes, &mut buf)?;
    Ok(buf)
}

/// The first `len` values of `buf`.
fn download<D: Device, T: bytemuck::Pod>(dev: &D, buf: &D::Buffer, len: usize) -> Result<Vec<T>> {
    let mut out = vec![T::zeroed(); len];
    dev.download(buf, bytemuck::cast_slice_mut(&mut out))?;
    Ok(out)
}

/// The emulation's SVD step: the CPU [`svd`] of each active layer, between a download and an upload. It stands in
/// for cuSOLVER, which the emulation does not have.
#[cfg(feature = "emu")]
impl LayerSvd for crate::cuda::emu::EmuDevice {
    /// Host copies of `values` and `vectors`, uploaded whole after each step.
    type SvdState = (Vec<f64>, Vec<f64>);

    fn svd_state(&self, bufs: &SvdBuffers<Self>) -> Result<Self::SvdState> {
        let values = bufs.layers * bufs.components;
        Ok((vec![0.0; values], vec![0.0; values * bufs.rows]))
    }

    fn layer_svd(
        &self,
        (values, vectors): &mut Self::SvdState,
        bufs: &mut SvdBuffers<Self>,
        active: &[usize],
    ) -> Result<()> {
        let (rows, cols, r) = (bufs.rows, bufs.cols, bufs.components);
        let size = rows * cols;
        let input: Vec<f64> = download(self, &bufs.input, bufs.layers * size)?;
        let decompositions = active
            .par_iter()
            .map(|&l| svd(&input[l * size..(l + 1) * size], rows, cols).map_err(|e| in_layer(l, e)))
            .collect::<Result<Vec<_>>>()?;
        for (&l, d) in active.iter().zip(&decompositions) {
            values[l * r..(l + 1) * r].copy_from_slice(&d.s);
            // CPU U is rows x r row-major; the kernels read it component-major.
            for i in 0..r {
                for b in 0..rows {
                    vectors[(l * r + i) * rows + b] = d.u[b * r + i];
                }
            }
        }
        self.upload(bytemuck::cast_slice(values), &mut bufs.values)?;
        self.upload(bytemuck::cast_slice(vectors), &mut bufs.vectors)
    }
}
