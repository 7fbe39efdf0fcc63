//! What every backend offers: map latents to ws, and synthesize images from ws, in batches.

use crate::error::Result;
use crate::io::image::Images8;
use crate::model::Network;
use crate::tensor::Tensor;

/// Truncation toward the average w: `w_avg + psi * (w - w_avg)` on the first `cutoff` ws (all when `None`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Truncation {
    pub psi: f32,
    pub cutoff: Option<usize>,
}

impl Default for Truncation {
    fn default() -> Self {
        Truncation {
            psi: 1.0,
            cutoff: None,
        }
    }
}

/// Where the per-layer noise comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseMode {
    /// The buffers stored in the network (NVlabs `noise_const`, rosinality `noises.noise_i`).
    Const,
    /// No noise.
    None,
    /// Fresh normal noise, reproducible: each value is a hash of `seed`, the image's index `first_image + i`, the
    /// layer and the pixel ([`crate::cpu::noise`]), so the result does not depend on how a job is split into
    /// batches.
    Random { seed: u32, first_image: usize },
}

/// One row of a per-layer profile ([`Backend::profile`]): one synthesis layer's kernels for a batch (a conv and
/// the ToRGB its kernel computes make one row, named `conv + torgb`), their time, and the FLOPs and device-memory
/// bytes the work needs ([`crate::cuda::profile::layer_cost`]).
#[derive(Clone, Debug)]
pub struct LayerProfile {
    pub name: String,
    /// The images synthesized together.
    pub images: usize,
    pub seconds: f64,
    pub flop: f64,
    pub bytes: f64,
}

/// The first blocks of the network, up to `resolution`, run over `images` at a time ([`Backend::front_pass`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontPass {
    pub resolution: usize,
    pub images: usize,
}

pub trait Backend {
    fn name(&self) -> String;
    /// The network it executes.
    fn network(&self) -> &Network;
    /// `z [N, z_dim]` -> ws `[N, num_ws, w_dim]`.
    fn map(&self, z: &Tensor, truncation: Truncation) -> Result<Tensor>;
    /// ws `[N, num_ws, w_dim]` -> images `[N, C, H, W]` in the generator's raw range.
    fn synthesize(&self, ws: &Tensor, noise: NoiseMode) -> Result<Tensor>;
    /// [`Self::synthesize`] as 8-bit images by NVlabs' rule ([`crate::io::image::to_u8`]), what a PNG holds. A
    /// device backend converts before its download; this default converts on the host.
    fn synthesize_u8(&self, ws: &Tensor, noise: NoiseMode) -> Result<Images8> {
        Images8::from_tensor(&self.synthesize(ws, noise)?)
    }
    /// The most device memory its buffers have held at once, for backends with a device of their own.
    fn peak_device_memory(&self) -> Option<usize> {
        None
    }
    /// Images per device pass for a batch of `n` (a device backend splits a batch into passes that it computes one
    /// after another while the previous one downloads); `None` from backends that take a batch at once.
    fn images_per_pass(&self, _n: usize) -> Option<usize> {
        None
    }
    /// For a batch of `n`: the first blocks that a device backend runs over more images at once than its passes
    /// take, before the passes run the rest; `None` where it does not split the network.
    fn front_pass(&self, _n: usize) -> Option<FrontPass> {
        None
    }
    /// Takes `images` per pass in place of the planned number (free device memory and out-of-memory errors may
    /// still lower it). Backends that take a batch at once refuse.
    fn set_images_per_pass(&self, _images: usize) -> Result<()> {
        crate::bail!("this device synthesizes a batch at once: images per pass apply to the cuda and emu devices")
    }
    /// Synthesizes `ws` (or as many of its rows as one pass takes) with the device waiting after every layer,
    /// and times each layer; `None` from backends without per-layer timing.
    fn profile(&self, _ws: &Tensor) -> Result<Option<Vec<LayerProfile>>> {
        Ok(None)
    }
}
