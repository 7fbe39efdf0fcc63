//! The device twins of [`crate::cpu::ops`]: host tensors in, host tensors out, one kernel (or a few) in between.
//! The golden op tests run these against the same cases as the CPU reference.

use super::device::{Device, DeviceTensor, LaunchDims};
use super::kernels::Kernel;
use super::params::{BiasActParams, ACT_LINEAR, ACT_LRELU};
use crate::cpu::ops::{Act, BiasAct};
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
