//! The network description every checkpoint dialect loads into and every backend executes.
//!
//! A StyleGAN2 generator (skip architecture) is a mapping MLP plus a flat table of synthesis layers in execution
//! order: `b4.conv1, b4.torgb, b8.conv0, b8.conv1, b8.torgb, ...`. Each layer records everything a backend needs
//! (ws index, shapes, up factor, demodulation, weight gain, activation, clamp, noise), so nothing downstream knows
//! which file format the weights came from.

pub mod canonical;
mod load;
pub mod nvlabs;
pub mod random;
pub mod rosinality;
pub mod state;
pub mod tf;

pub use load::{bundled, load, BUNDLED_NAME};

use crate::bail;
use crate::error::Result;
use crate::tensor::Tensor;

/// Where the weights came from (for `info` and the canonical file's metadata; never used for computation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    NvlabsPickle,
    NvlabsTfPickle,
    RosinalityPt,
    /// mmengine's own file, with the format of the checkpoint it was converted from.
    Safetensors {
        converted_from: String,
    },
    /// Random weights of a named configuration (benchmarks).
    Random,
}

impl SourceFormat {
    /// The original checkpoint format: for a converted file, the format it was converted from.
    pub fn original(&self) -> &str {
        match self {
            SourceFormat::NvlabsPickle => "NVlabs network pickle (PyTorch)",
            SourceFormat::NvlabsTfPickle => "NVlabs network pickle (TensorFlow)",
            SourceFormat::RosinalityPt => "rosinality checkpoint (.pt)",
            SourceFormat::Safetensors { converted_from } => converted_from,
            SourceFormat::Random => "random weights (benchmark configuration)",
        }
    }
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceFormat::Safetensors { converted_from } => {
                write!(f, "mmengine safetensors (converted from {converted_from})")
            }
            other => f.write_str(other.original()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Modulated 3x3 convolution with noise, bias, leaky ReLU (gain sqrt 2) and optional clamp.
    Conv,
    /// Modulated 1x1 convolution without demodulation, bias, linear, added to the (up-sampled) skip image.
    ToRgb,
}

/// Per-layer noise: `buffer [res, res] * strength`, added after the convolution and before the bias.
#[derive(Clone, Debug)]
pub struct Noise {
    pub buffer: Tensor,
    pub strength: f32,
}

#[derive(Clone, Debug)]
pub struct SynthesisLayer {
    /// Canonical name, `b{res}.conv0`, `b{res}.conv1` or `b{res}.torgb`.
    pub name: String,
    pub kind: LayerKind,
    pub ws_index: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Output resolution.
    pub resolution: usize,
    /// 2 for the first conv of each block above 4x4 (transposed conv + blur), else 1.
    pub up: usize,
    pub kernel: usize,
    pub demodulate: bool,
    /// Multiplies the weight before modulation: NVlabs convs 1, ToRGB 1/sqrt(in); rosinality 1/sqrt(in*k*k).
    pub weight_gain: f32,
    /// Clamp after the activation gain (NVlabs conv_clamp), if any.
    pub clamp: Option<f32>,
    /// The layer's block runs in float16 in the source implementation (NVlabs `num_fp16_res`). Informational for
    /// the CPU backend, which computes every layer in float32; a float16 backend may follow it.
    pub fp16: bool,
    /// `[out, in, k, k]`, raw.
    pub weight: Tensor,
    /// Affine (style) layer, raw `[in, w_dim]` and `[in]`; effective weight is `affine_weight / sqrt(w_dim)`.
    pub affine_weight: Tensor,
    pub affine_bias: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
    pub noise: Option<Noise>,
}

/// One mapping layer: raw parameters, effective weight `weight * lr_mul / sqrt(in)` and bias `bias * lr_mul`.
#[derive(Clone, Debug)]
pub struct Dense {
    /// `[out, in]`.
    pub weight: Tensor,
    pub bias: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct Network {
    pub source: SourceFormat,
    pub z_dim: usize,
    pub w_dim: usize,
    pub num_ws: usize,
    pub resolution: usize,
    pub img_channels: usize,
    pub mapping_lr_mul: f32,
    pub mapping: Vec<Dense>,
    /// The average w used for truncation (NVlabs `mapping.w_avg`, rosinality `latent_avg`).
    pub w_avg: Vec<f32>,
    /// How `w_avg` was obtained, e.g. "stored in the checkpoint" or "computed: mean of 4096 mapped z, seed 0".
    pub w_avg_origin: String,
    /// The learned constant `[C, 4, 4]` the synthesis starts from.
    pub const_input: Tensor,
    pub layers: Vec<SynthesisLayer>,
    /// The network-wide clamp setting (each layer carries its own copy; this is for reporting).
    pub conv_clamp: Option<f32>,
}

impl Network {
    /// Channels of the feature map at each resolution, in increasing resolution order.
    pub fn channels_per_resolution(&self) -> Vec<(usize, usize)> {
        self.layers
            .iter()
            .filter(|l| l.kind == LayerKind::Conv)
            .map(|l| (l.resolution, l.out_channels))
            .fold(Vec::new(), |mut acc, (r, c)| {
                if acc.last().map(|&(lr, _)| lr) != Some(r) {
                    acc.push((r, c));
                }
                acc
            })
    }

    pub fn parameter_count(&self) -> usize {
        let mapping: usize = self
            .mapping
            .iter()
            .map(|d| d.weight.numel() + d.bias.len())
            .sum();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.weight.numel()
                    + l.affine_weight.numel()
                    + l.affine_bias.len()
                    + l.bias.len()
                    + usize::from(l.noise.is_some())
            })
            .sum();
        mapping + layers + self.const_input.numel()
    }
}

impl Network {
    /// Check the layer table is a network the backends can execute: channels chain, resolutions double from 4,
    /// ws indices are in range. Loaders call it so a bad file fails at load time with a clear message.
    pub fn validate(&self) -> Result<()> {
        nvlabs::check_resolution(self.resolution)?;
        if self.num_ws != 2 * self.resolution.trailing_zeros() as usize - 2 {
            bail!(
                "num_ws {} does not match resolution {}",
                self.num_ws,
                self.resolution
            );
        }
        if self.w_avg.len() != self.w_dim || self.const_input.ndim() != 3 {
            bail!("w_avg or the constant input has the wrong shape");
        }
        let mut channels = self.const_input.shape[0];
        let mut res = 4;
        let mut img_res = 0;
        for l in &self.layers {
            let ok_kind = match l.kind {
                LayerKind::Conv => l.kernel == 3 && (l.up == 1 || l.up == 2),
                LayerKind::ToRgb => l.kernel == 1 && l.up == 1 && !l.demodulate,
            };
            if l.kind == LayerKind::Conv && l.up == 2 {
                res *= 2;
            }
            if !ok_kind
                || l.in_channels != channels
                || l.resolution != res
                || l.ws_index >= self.num_ws
                || l.affine_weight.shape != [l.in_channels, self.w_dim]
                || l.out_channels == 0
            {
                bail!("layer {} is inconsistent with the network", l.name);
            }
            if let Some(n) = &l.noise {
                if n.buffer.shape != [l.resolution, l.resolution] {
                    bail!("layer {}: noise buffer has the wrong shape", l.name);
                }
            }
            match l.kind {
                LayerKind::Conv => channels = l.out_channels,
                LayerKind::ToRgb => {
                    if l.out_channels != self.img_channels || (img_res != 0 && res != img_res * 2) {
                        bail!("layer {} is inconsistent with the network", l.name);
                    }
                    img_res = res;
                }
            }
        }
        if img_res != self.resolution {
            bail!(
                "the layers end at {img_res}x{img_res}, expected {0}x{0}",
                self.resolution
            );
        }
        Ok(())
    }
}

/// Mean of w over [`W_AVG_SAMPLES`] z drawn from `RandomState(W_AVG_SEED).randn` row by row, for checkpoints that
/// store no average (rosinality training checkpoints). rosinality's own scripts use torch's RNG, which cannot be
/// reproduced without torch; this draw is documented and deterministic instead.
pub const W_AVG_SAMPLES: usize = 4096;
pub const W_AVG_SEED: u32 = 0;

pub fn compute_w_avg(net: &mut Network) {
    let mut rng = crate::seeds::RandomState::new(W_AVG_SEED);
    let z: Vec<f32> = (0..W_AVG_SAMPLES * net.z_dim)
        .map(|_| rng.randn() as f32)
        .collect();
    let z = Tensor::new(vec![W_AVG_SAMPLES, net.z_dim], z).expect("shape matches");
    let w = crate::cpu::mapping::Mapping::new(net)
        .forward(net, &z)
        .expect("z has the model's z_dim");
    let mut avg = vec![0f64; net.w_dim];
    for row in w.data.chunks(net.w_dim) {
        avg.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
    }
    net.w_avg = avg
        .iter()
        .map(|a| (a / W_AVG_SAMPLES as f64) as f32)
        .collect();
    net.w_avg_origin = format!(
        "computed: mean of mapping(z) over {W_AVG_SAMPLES} z from RandomState({W_AVG_SEED}).randn"
    );
}
