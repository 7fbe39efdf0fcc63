//! The network description every checkpoint dialect loads into and every backend executes.
//!
//! A StyleGAN2 generator (skip architecture) is a mapping MLP plus a flat table of synthesis layers in execution
//! order: `b4.conv1, b4.torgb, b8.conv0, b8.conv1, b8.torgb, ...`. Each layer records everything a backend needs
//! (ws index, shapes, up factor, demodulation, weight gain, activation, clamp, noise), so nothing downstream knows
//! which file format the weights came from.

use crate::tensor::Tensor;

/// Where the weights came from (for `info` and the canonical file's metadata; never used for computation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    NvlabsPickle,
    NvlabsTfPickle,
    RosinalityPt,
    Safetensors,
}

impl SourceFormat {
    pub fn name(&self) -> &'static str {
        match self {
            SourceFormat::NvlabsPickle => "NVlabs network pickle (PyTorch)",
            SourceFormat::NvlabsTfPickle => "NVlabs network pickle (TensorFlow)",
            SourceFormat::RosinalityPt => "rosinality checkpoint (.pt)",
            SourceFormat::Safetensors => "mmengine safetensors",
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
