//! The device twins of [`crate::cpu::ops`]. Each `op_on` works on device tensors (the form the generator chains);
//! each `op` is its host-tensor twin (upload, `op_on`, download), which the golden op tests run against the same
//! cases as the CPU reference.

use super::conv::{DeviceConvLayer, DeviceNoise, Finish};
use super::device::{DType, Device, DeviceTensor, LaunchDims};
use super::kernels::Kernel;
use super::params::{
    BiasActParams, ImagesU8Params, RandomNoiseParams, UpfirdnParams, ACT_LINEAR, ACT_LRELU,
};
use crate::bail;
use crate::cpu::ops::{filter_1331, Act, BiasAct, ModConv, Upfirdn};
use crate::cpu::ConvPath;
use crate::error::Result;
use crate::io::image::{batch_dims, Images8};
use crate::tensor::Tensor;

/// Twin of [`crate::cpu::ops::bias_act`] on device tensors: `b` (if any) is a 1-D device tensor of
/// `x.shape[p.dim]` values.
pub fn bias_act_on<D: Device>(
    dev: &D,
    x: &DeviceTensor<D>,
    b: Option<&DeviceTensor<D>>,
    p: &BiasAct,
) -> Result<DeviceTensor<D>> {
    if let Some(b) = b {
        if b.shape.len() != 1 {
            bail!("bias_act: the bias must be 1-D, got shape {:?}", b.shape);
        }
    }
    crate::cpu::ops::check_bias_act_shape(&x.shape, b.map(DeviceTensor::len), p)?;
    let channels = x.shape[p.dim];
    let inner: usize = x.shape[p.dim + 1..].iter().product();
    let y = DeviceTensor::alloc(dev, &x.shape)?;
    let (act, alpha) = act_params(p.act);
    let params = BiasActParams {
        y: y.ptr(),
        x: x.ptr(),
        bias: b.map_or(0, DeviceTensor::ptr),
        n: x.len() as i64,
        channels: channels as i32,
        inner: inner.max(1) as i32,
        act,
        alpha,
        gain: p.gain,
        clamp: p.clamp.unwrap_or(-1.0),
    };
    dev.launch(
        Kernel::BiasAct,
        LaunchDims::linear(x.len(), 256, 4096),
        &params,
    )?;
    Ok(y)
}

/// Twin of [`crate::cpu::ops::bias_act`].
pub fn bias_act<D: Device>(dev: &D, x: &Tensor, b: Option<&[f32]>, p: &BiasAct) -> Result<Tensor> {
    crate::cpu::ops::check_bias_act(x, b, p)?;
    let xd = DeviceTensor::upload(dev, x)?;
    let bd = b
        .map(|b| DeviceTensor::upload(dev, &Tensor::new(vec![b.len()], b.to_vec())?))
        .transpose()?;
    bias_act_on(dev, &xd, bd.as_ref(), p)?.download(dev)
}

/// Twin of [`Images8::from_tensor`] on device tensors: `[N, C, H, W]` f32 images to interleaved bytes `[N, H, W,
/// C]`, in a new buffer of one byte per value.
pub fn images_to_u8_on<D: Device>(dev: &D, images: &DeviceTensor<D>) -> Result<D::Buffer> {
    let (n, c, h, w) = batch_dims(&images.shape)?;
    if images.dtype() != DType::F32 {
        bail!("images_to_u8: images must be f32, got {:?}", images.dtype());
    }
    let Ok(plane) = i32::try_from(h * w) else {
        bail!("images_to_u8: {w}x{h} images are too large");
    };
    let y = dev.alloc(images.len())?;
    let params = ImagesU8Params {
        y: dev.address(&y),
        x: images.ptr(),
        pixels: (n * h * w) as i64,
        plane,
        channels: c as i32,
    };
    dev.launch(
        Kernel::ImagesToU8,
        LaunchDims::linear(n * h * w, 256, 4096),
        &params,
    )?;
    Ok(y)
}

/// Twin of [`crate::cpu::noise::fill_plane`] for a whole layer: `[n, 1, h, w]` f32 random noise times `strength`
/// for images `first_image ..` of the job with `seed`, noisy layer `layer` (its index among the network's noisy
/// layers).
pub fn random_noise_on<D: Device>(
    dev: &D,
    [n, h, w]: [usize; 3],
    seed: u32,
    first_image: usize,
    layer: usize,
    strength: f32,
) -> Result<DeviceTensor<D>> {
    let Ok(plane) = i32::try_from(h * w) else {
        bail!("random noise: {w}x{h} planes are too large");
    };
    let y = DeviceTensor::alloc(dev, &[n, 1, h, w])?;
    let params = RandomNoiseParams {
        y: y.ptr(),
        first_image: first_image as i64,
        images: n as i64,
        plane,
        layer: layer as i32,
        seed,
        strength,
    };
    dev.launch(
        Kernel::RandomNoise,
        LaunchDims::linear(n * (h * w).div_ceil(2), 256, 4096),
        &params,
    )?;
    Ok(y)
}

/// Twin of [`Images8::from_tensor`].
pub fn images_to_u8<D: Device>(dev: &D, images: &Tensor) -> Result<Images8> {
    let (n, c, h, w) = batch_dims(&images.shape)?;
    let buf = images_to_u8_on(dev, &DeviceTensor::upload(dev, images)?)?;
    let mut data = vec![0u8; images.data.len()];
    dev.download(&buf, &mut data)?;
    Images8::new(n, h, w, c, data)
}

/// The kernels' activation code and slope.
fn act_params(act: Act) -> (i32, f32) {
    match act {
        Act::Linear => (ACT_LINEAR, 0.0),
        Act::Lrelu { alpha } => (ACT_LRELU, alpha),
    }
}

/// Shared memory an upfirdn2d block may use: the default per-block limit, so any tile fits every architecture.
const UPFIRDN_SHARED_BYTES: usize = 48 * 1024;
const UPFIRDN_THREADS: u32 = 256;
/// The largest output tile, `[h, w]`: 2 outputs per thread, rows a warp wide.
const UPFIRDN_TILE: [usize; 2] = [16, 32];

/// Twin of [`crate::cpu::ops::upfirdn2d`] on device tensors: `x [N, C, H, W]`, `f [fh, fw]` or separable `[k]`.
pub fn upfirdn2d_on<D: Device>(
    dev: &D,
    x: &DeviceTensor<D>,
    f: &DeviceTensor<D>,
    p: &Upfirdn,
) -> Result<DeviceTensor<D>> {
    let [n, c, out_h, out_w] = crate::cpu::ops::check_upfirdn2d(&x.shape, &f.shape, p)?;
    let separable = f.shape.len() == 1;
    let (filter_h, filter_w) = match f.shape[..] {
        [fh, fw] => (fh, fw),
        _ => (f.len(), f.len()),
    };
    // The kernel indexes up-sampled positions in 32-bit integers.
    let extent = |size: usize| {
        size * p.up
            + p.pad
                .iter()
                .map(|v| v.unsigned_abs() as usize)
                .sum::<usize>()
    };
    if extent(x.shape[2]).max(extent(x.shape[3])) + out_h.max(out_w) * p.down >= i32::MAX as usize {
        bail!(
            "upfirdn2d: input {:?} with up {} and down {} is too large",
            x.shape,
            p.up,
            p.down
        );
    }
    let y = DeviceTensor::alloc(dev, &[n, c, out_h, out_w])?;
    if y.is_empty() {
        return Ok(y);
    }

    // The input rows (columns) a tile of t outputs reads span ((t - 1) * down + taps - 1) / up + 2 at most (the
    // +2: the tile's first up-sampled position need not be a multiple of up). Halve the tile until it fits.
    let span = |tile: usize, taps: usize| ((tile - 1) * p.down + taps - 1) / p.up + 2;
    let mut tile = [UPFIRDN_TILE[0].min(out_h), UPFIRDN_TILE[1].min(out_w)];
    let (tile_in, bytes) = loop {
        let tile_in = [span(tile[0], filter_h), span(tile[1], filter_w)];
        let rows = if separable { tile_in[0] * tile[1] } else { 0 };
        let taps = if separable {
            filter_w
        } else {
            filter_h * filter_w
        };
        let bytes = 4 * (taps + tile_in[0] * tile_in[1] + rows);
        if bytes <= UPFIRDN_SHARED_BYTES {
            break (tile_in, bytes);
        }
        if tile == [1, 1] {
            bail!(
                "upfirdn2d: a {filter_h}x{filter_w} filter with up {} and down {} needs more than {} KiB of shared memory",
                p.up,
                p.down,
                UPFIRDN_SHARED_BYTES / 1024
            );
        }
        let larger = usize::from(tile[1] > tile[0] || tile[0] == 1);
        tile[larger] = tile[larger].div_ceil(2);
    };
    let grid_x = out_w.div_ceil(tile[1]);
    let grid_y = out_h.div_ceil(tile[0]);
    if grid_x > u32::MAX as usize || grid_y > 65535 {
        bail!("upfirdn2d: a {out_h}x{out_w} output is too large for one launch");
    }
    let planes = n * c;
    let params = UpfirdnParams {
        y: y.ptr(),
        x: x.ptr(),
        f: f.ptr(),
        planes: planes as i64,
        in_h: x.shape[2] as i32,
        in_w: x.shape[3] as i32,
        out_h: out_h as i32,
        out_w: out_w as i32,
        up: p.up as i32,
        down: p.down as i32,
        pad_x0: p.pad[0],
        pad_y0: p.pad[2],
        filter_h: filter_h as i32,
        filter_w: filter_w as i32,
        flip_filter: p.flip_filter.into(),
        // Computed as the reference does, so the taps are bit for bit the same.
        filter_gain: p.gain.powf(f.shape.len() as f32 / 2.0),
        tile_out_h: tile[0] as i32,
        tile_out_w: tile[1] as i32,
        tile_in_h: tile_in[0] as i32,
        tile_in_w: tile_in[1] as i32,
    };
    let kernel = if separable {
        Kernel::Upfirdn2dSeparable
    } else {
        Kernel::Upfirdn2d
    };
    let dims = LaunchDims {
        grid: [grid_x as u32, grid_y as u32, planes.min(65535) as u32],
        block: [UPFIRDN_THREADS, 1, 1],
        shared_bytes: bytes as u32,
    };
    dev.launch(kernel, dims, &params)?;
    Ok(y)
}

/// Twin of [`crate::cpu::ops::upfirdn2d`].
pub fn upfirdn2d<D: Device>(dev: &D, x: &Tensor, f: &Tensor, p: &Upfirdn) -> Result<Tensor> {
    crate::cpu::ops::check_upfirdn2d(&x.shape, &f.shape, p)?;
    let xd = DeviceTensor::upload(dev, x)?;
    let fd = DeviceTensor::upload(dev, f)?;
    upfirdn2d_on(dev, &xd, &fd, p)?.download(dev)
}

/// Twin of [`crate::cpu::ops::modulated_conv2d`] (fused and non-fused agree to rounding, so both run the shared-
/// weight kernels): `x [N, I, H, W]`, `weight [O, I, k, k]` with k 1 or 3 and padding k / 2, `styles [N, I]`,
/// noise `[H', W']` (or with leading 1s) shared by the batch or `[N, 1, H', W']`, and for `up == 2` the filter
/// must be [`crate::cpu::ops::filter_1331`], which the kernels build in.
pub fn modulated_conv2d<D: Device>(
    dev: &D,
    x: &Tensor,
    weight: &Tensor,
    styles: &Tensor,
    noise: Option<&Tensor>,
    f: &Tensor,
    p: &ModConv,
) -> Result<Tensor> {
    modulated_conv2d_on(dev, x, weight, styles, noise, f, p, ConvPath::Fast)
}

/// [`modulated_conv2d`] on a chosen path: [`ConvPath::Reference`] runs up-sampling 3x3 convs through the unfused
/// kernel pair (transposed conv to device memory, then blur), the test twin of the fused kernel.
#[allow(clippy::too_many_arguments)]
pub fn modulated_conv2d_on<D: Device>(
    dev: &D,
    x: &Tensor,
    weight: &Tensor,
    styles: &Tensor,
    noise: Option<&Tensor>,
    f: &Tensor,
    p: &ModConv,
    path: ConvPath,
) -> Result<Tensor> {
    let [n, _, h, w] = crate::cpu::ops::check_modulated_conv2d(x, weight, styles)?;
    let k = weight.shape[2];
    if p.padding != k / 2 {
        bail!(
            "modulated_conv2d: the device kernels use padding k / 2 = {}, got {}",
            k / 2,
            p.padding
        );
    }
    if p.up == 2 && (f.shape != [4, 4] || f.data != filter_1331().data) {
        bail!("modulated_conv2d: the device kernels up-sample with the [1,3,3,1] filter only");
    }
    // The kernels run a cross-correlation (up 1) and the transposed conv with the weight as stored (up 2), which
    // is flip_weight = (up == 1); the other combinations flip the taps.
    let flipped;
    let weight = if p.flip_weight == (p.up == 2) {
        let kk = k * k;
        flipped = Tensor::new(
            weight.shape.clone(),
            weight
                .data
                .chunks(kk.max(1))
                .flat_map(|taps| taps.iter().rev().copied())
                .collect(),
        )?;
        &flipped
    } else {
        weight
    };
    let finish = Finish {
        bias: None,
        act: Act::Linear,
        gain: 1.0,
        clamp: None,
        output: DType::F32,
    };
    let layer = DeviceConvLayer::new(dev, weight, p.demodulate, p.up, &finish, true)?;
    let xd = DeviceTensor::upload(dev, x)?;
    let sd = DeviceTensor::upload(dev, styles)?;
    let (oh, ow) = (h * p.up, w * p.up);
    let noise_d = noise
        .map(|t| {
            let plane = oh * ow;
            let shared = t.numel() == plane && t.shape.ends_with(&[oh, ow]);
            let per_sample = n > 1 && t.shape == [n, 1, oh, ow];
            if !shared && !per_sample {
                bail!(
                    "modulated_conv2d: noise {:?} should be [{oh}, {ow}] or [{n}, 1, {oh}, {ow}]",
                    t.shape
                );
            }
            let shape = if shared {
                vec![oh, ow]
            } else {
                t.shape.clone()
            };
            DeviceTensor::upload(dev, &Tensor::new(shape, t.data.clone())?)
        })
        .transpose()?;
    let noise_in = noise_d.as_ref().map(|t| {
        if t.shape.len() == 2 {
            DeviceNoise::Shared(t)
        } else {
            DeviceNoise::PerSample(t)
        }
    });
    let dcoefs = layer.demod(dev, &sd)?;
    let y = layer.forward(dev, &xd, &sd, dcoefs.as_ref(), noise_in, path)?;
    y.download(dev)
}
