//! The mapping network on the device: z -> normalize_2nd_moment -> the fully connected layers -> broadcast to
//! num_ws -> truncation. Twin of [`crate::cpu::mapping`], with the same effective weights
//! (`W * lr_mul / sqrt(in)`, `b * lr_mul`, formed in the kernel as the layer reads them) and the same lerp.

use super::device::{Device, DeviceTensor, LaunchDims};
use super::kernels::Kernel;
use super::params::{BroadcastTruncateParams, FullyConnectedParams, ACT_LRELU};
use crate::backend::Truncation;
use crate::bail;
use crate::error::Result;
use crate::model::Network;
use crate::tensor::Tensor;

/// The fully connected kernel's tile: samples x outputs per block.
const FC_TILE_BATCH: usize = 32;
const FC_TILE_OUT: usize = 64;
const FC_THREADS: u32 = 256;

/// One mapping layer in device memory: the raw parameters of [`crate::model::Dense`].
struct DeviceDense<D: Device> {
    weight: DeviceTensor<D>,
    bias: DeviceTensor<D>,
}

/// A network's mapping weights and `w_avg`, uploaded once.
pub struct DeviceMapping<D: Device> {
    layers: Vec<DeviceDense<D>>,
    w_avg: DeviceTensor<D>,
    lr_mul: f32,
    z_dim: usize,
    w_dim: usize,
    num_ws: usize,
}

impl<D: Device> DeviceMapping<D> {
    pub fn new(dev: &D, net: &Network) -> Result<Self> {
        if net.mapping.is_empty() {
            bail!("the network has no mapping layers");
        }
        let mut features = net.z_dim;
        for (i, d) in net.mapping.iter().enumerate() {
            match d.weight.shape[..] {
                [out, inp] if inp == features && d.bias.len() == out => features = out,
                _ => bail!(
                    "mapping layer {i}: weight {:?} and {} biases do not follow {features} inputs",
                    d.weight.shape,
                    d.bias.len()
                ),
            }
        }
        if features != net.w_dim || net.w_avg.len() != net.w_dim {
            bail!(
                "the mapping ends in {features} features and w_avg has {}, but w_dim is {}",
                net.w_avg.len(),
                net.w_dim
            );
        }
        let vector =
            |v: &[f32]| DeviceTensor::upload(dev, &Tensor::new(vec![v.len()], v.to_vec())?);
        let layers = net
            .mapping
            .iter()
            .map(|d| {
                Ok(DeviceDense {
                    weight: DeviceTensor::upload(dev, &d.weight)?,
                    bias: vector(&d.bias)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DeviceMapping {
            layers,
            w_avg: vector(&net.w_avg)?,
            lr_mul: net.mapping_lr_mul,
            z_dim: net.z_dim,
            w_dim: net.w_dim,
            num_ws: net.num_ws,
        })
    }

    /// `z [N, z_dim]` -> ws `[N, num_ws, w_dim]`, all in device memory.
    pub fn map_on(
        &self,
        dev: &D,
        z: &DeviceTensor<D>,
        truncation: Truncation,
    ) -> Result<DeviceTensor<D>> {
        let w = self.forward(dev, z)?;
        self.broadcast_truncate_on(dev, &w, truncation)
    }

    /// `z [N, z_dim]` -> ws `[N, num_ws, w_dim]`.
    pub fn map(&self, dev: &D, z: &Tensor, truncation: Truncation) -> Result<Tensor> {
        self.check_z(&z.shape)?;
        let zd = DeviceTensor::upload(dev, z)?;
        self.map_on(dev, &zd, truncation)?.download(dev)
    }

    /// `z [N, z_dim]` -> w `[N, w_dim]`: normalize_2nd_moment (fused into the first layer), then every layer's
    /// `lrelu(x W^T + b) * sqrt(2)`.
    pub fn forward(&self, dev: &D, z: &DeviceTensor<D>) -> Result<DeviceTensor<D>> {
        self.check_z(&z.shape)?;
        if z.shape[0].div_ceil(FC_TILE_BATCH) > 65535 {
            bail!(
                "a batch of {} latents is too large for one mapping launch",
                z.shape[0]
            );
        }
        let Some((first, rest)) = self.layers.split_first() else {
            bail!("the network has no mapping layers");
        };
        let mut x = self.fully_connected(dev, first, z, true)?;
        for layer in rest {
            x = self.fully_connected(dev, layer, &x, false)?;
        }
        Ok(x)
    }

    /// One mapping layer on `x [N, in]`: `lrelu(x W^T + b) * sqrt(2)` with the effective weights.
    fn fully_connected(
        &self,
        dev: &D,
        layer: &DeviceDense<D>,
        x: &DeviceTensor<D>,
        normalize_input: bool,
    ) -> Result<DeviceTensor<D>> {
        let batch = x.shape[0];
        let [out_features, in_features] = [layer.weight.shape[0], layer.weight.shape[1]];
        let y = DeviceTensor::alloc(dev, &[batch, out_features])?;
        if batch == 0 {
            return Ok(y);
        }
        let params = FullyConnectedParams {
            y: y.ptr(),
            x: x.ptr(),
            w: layer.weight.ptr(),
            bias: layer.bias.ptr(),
            batch: batch as i32,
            in_features: in_features as i32,
            out_features: out_features as i32,
            normalize_input: normalize_input.into(),
            act: ACT_LRELU,
            alpha: 0.2,
            gain: std::f32::consts::SQRT_2,
            clamp: -1.0,
            weight_gain: self.lr_mul / (in_features as f32).sqrt(),
            bias_gain: self.lr_mul,
        };
        let dims = LaunchDims {
            grid: [
                out_features.div_ceil(FC_TILE_OUT) as u32,
                batch.div_ceil(FC_TILE_BATCH) as u32,
                1,
            ],
            block: [FC_THREADS, 1, 1],
            shared_bytes: 0,
        };
        dev.launch(Kernel::FullyConnected, dims, &params)?;
        Ok(y)
    }

    /// w `[N, w_dim]` -> ws `[N, num_ws, w_dim]`, truncated toward `w_avg` (torch's lerp, as
    /// [`crate::cpu::mapping::truncate`]) on the first `cutoff` ws.
    pub fn broadcast_truncate_on(
        &self,
        dev: &D,
        w: &DeviceTensor<D>,
        truncation: Truncation,
    ) -> Result<DeviceTensor<D>> {
        if w.shape.len() != 2 || w.shape[1] != self.w_dim {
            bail!(
                "w has shape {:?}, the model expects [N, {}]",
                w.shape,
                self.w_dim
            );
        }
        let ws = DeviceTensor::alloc(dev, &[w.shape[0], self.num_ws, self.w_dim])?;
        if ws.is_empty() {
            return Ok(ws);
        }
        let cutoff = if truncation.psi == 1.0 {
            0
        } else {
            truncation.cutoff.unwrap_or(self.num_ws).min(self.num_ws)
        };
        let params = BroadcastTruncateParams {
            ws: ws.ptr(),
            w: w.ptr(),
            w_avg: self.w_avg.ptr(),
            n: ws.len() as i64,
            num_ws: self.num_ws as i32,
            w_dim: self.w_dim as i32,
            cutoff: cutoff as i32,
            psi: truncation.psi,
        };
        dev.launch(
            Kernel::BroadcastTruncate,
            LaunchDims::linear(ws.len(), 256, 4096),
            &params,
        )?;
        Ok(ws)
    }

    fn check_z(&self, shape: &[usize]) -> Result<()> {
        if shape.len() != 2 || shape[1] != self.z_dim {
            bail!(
                "z has shape {shape:?}, the model expects [N, {}]",
                self.z_dim
            );
        }
        Ok(())
    }
}
