//! The device twins of [`crate::cpu::ops`]: host tensors in, host tensors out, one kernel (or a few) in between.
//! The golden op tests run these against the same cases as the CPU reference.

use super::conv::{DeviceConvLayer, DeviceNoise, Finish};
use super::device::{Device, DeviceTensor, LaunchDims};
use super::kernels::Kernel;
use super::params::{BiasActParams, ACT_LINEAR, ACT_LRELU};
use crate::bail;
use crate::cpu::ops::{filter_1331, Act, BiasAct, ModConv};
use crate::cpu::ConvPath;
use crate::error::Result;
use crate::tensor::Tensor;

/// Twin of [`crate::cpu::ops::bias_act`].
pub fn bias_act<D: Device>(dev: &D, x: &Tensor, b: Option<&[f32]>, p: &BiasAct) -> Result<Tensor> {
    crate::cpu::ops::check_bias_act(x, b, p)?;
    let channels = x.shape[p.dim];
    let inner: usize = x.shape[p.dim + 1..].iter().product();
    let xd = DeviceTensor::upload(dev, x)?;
    let bd = b
        .map(|b| DeviceTensor::upload(dev, &Tensor::new(vec![b.len()], b.to_vec())?))
        .transpose()?;
    let y = DeviceTensor::alloc(dev, &x.shape)?;
    let (act, alpha) = match p.act {
        Act::Linear => (ACT_LINEAR, 0.0),
        Act::Lrelu { alpha } => (ACT_LRELU, alpha),
    };
    let params = BiasActParams {
        y: y.ptr(),
        x: xd.ptr(),
        bias: bd.as_ref().map_or(0, |b| b.ptr()),
        n: x.numel() as i64,
        channels: channels as i32,
        inner: inner.max(1) as i32,
        act,
        alpha,
        gain: p.gain,
        clamp: p.clamp.unwrap_or(-1.0),
    };
    dev.launch(
        Kernel::BiasAct,
        LaunchDims::linear(x.numel(), 256, 4096),
        &params,
    )?;
    y.download(dev)
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
    let [n, _, h, w] = match x.shape[..] {
        [n, i, h, w] => [n, i, h, w],
        _ => bail!(
            "modulated_conv2d: x must be [N, C, H, W], got {:?}",
            x.shape
        ),
    };
    let k = weight.shape.get(2).copied().unwrap_or(0);
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
    };
    let layer = DeviceConvLayer::new(dev, weight, p.demodulate, p.up, &finish, true)?;
    let xd = DeviceTensor::upload(dev, x)?;
    let sd = DeviceTensor::upload(dev, styles)?;
    if sd.shape != [n, layer.in_channels()] {
        bail!(
            "modulated_conv2d: styles {:?} should be [{n}, {}]",
            styles.shape,
            layer.in_channels()
        );
    }
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
            DeviceNoise::Shared {
                plane: t,
                strength: 1.0,
            }
        } else {
            DeviceNoise::PerSample(t)
        }
    });
    let dcoefs = layer.demod(dev, &sd)?;
    let y = layer.forward(dev, &xd, &sd, dcoefs.as_ref(), noise_in, path)?;
    y.download(dev)
}
