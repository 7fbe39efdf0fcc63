//! The synthesis network on the CPU: walks the layer table, one batched op per layer.

use super::conv::{ModConvLayer, NoiseInput, PackedWeights};
use super::noise;
use super::ops::{self, Act, BiasAct, ModConv, Upfirdn};
use crate::backend::NoiseMode;
use crate::bail;
use crate::error::Result;
use crate::model::{LayerKind, Network, SynthesisLayer};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Per-layer constants derived once from the network.
struct Prepared {
    /// `weight * weight_gain`, `[O, I, k, k]`.
    weight: Tensor,
    /// Effective affine weight `A / sqrt(w_dim)`, `[I, w_dim]`.
    affine: Tensor,
    /// `noise buffer * strength` for `--noise-mode const`.
    const_noise: Option<Tensor>,
    /// The fast path's packed weights; `None` on the reference path, or where packing failed (the layer then
    /// reports the error when it runs).
    packed: Option<PackedWeights>,
}

/// Receives named intermediate tensors (golden tests compare them with the reference's forward hooks).
pub type Trace<'a> = &'a mut dyn FnMut(&str, &Tensor);

/// Which implementation of the modulated convolution runs each layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    /// Shared weights, GEMM, fused epilogue (`cpu::conv`): the default.
    Fast,
    /// Per-sample grouped convolution followed by bias_act (`cpu::ops`): the reference twin.
    Reference,
}

pub struct Synthesis {
    prepared: Vec<Prepared>,
    filter: Tensor,
    path: ConvPath,
}

impl Synthesis {
    pub fn new(net: &Network, path: ConvPath) -> Self {
        let affine_gain = 1.0 / (net.w_dim as f32).sqrt();
        let prepared = net
            .layers
            .iter()
            .map(|l| {
                let weight = scaled(&l.weight, l.weight_gain);
                let packed = (path == ConvPath::Fast)
                    .then(|| fast_layer(l, &weight, None).pack().ok())
                    .flatten();
                Prepared {
                    affine: scaled(&l.affine_weight, affine_gain),
                    const_noise: l.noise.as_ref().map(|n| scaled(&n.buffer, n.strength)),
                    packed,
                    weight,
                }
            })
            .collect();
        Synthesis {
            prepared,
            filter: ops::filter_1331(),
            path,
        }
    }

    /// ws `[N, num_ws, w_dim]` -> images `[N, C, res, res]`.
    pub fn forward(
        &self,
        net: &Network,
        ws: &Tensor,
        noise: NoiseMode,
        mut trace: Option<Trace>,
    ) -> Result<Tensor> {
        if ws.ndim() != 3 || ws.shape[1] != net.num_ws || ws.shape[2] != net.w_dim {
            bail!(
                "ws has shape {:?}, the model expects [N, {}, {}]",
                ws.shape,
                net.num_ws,
                net.w_dim
            );
        }
        let n = ws.shape[0];
        let random = match noise {
            NoiseMode::Random { seed, first_image } => {
                Some(random_noise(net, n, seed, first_image))
            }
            _ => None,
        };
        let c = &net.const_input;
        let mut x = Tensor {
            shape: vec![n, c.shape[0], 4, 4],
            data: c.data.repeat(n),
        };
        let mut img: Option<Tensor> = None;
        let mut noise_layer = 0;
        for (layer, prep) in net.layers.iter().zip(&self.prepared) {
            let styles = affine(ws, net, layer, &prep.affine);
            let random_planes = match (&random, &layer.noise) {
                (Some(planes), Some(_)) => Some(&planes[noise_layer]),
                _ => None,
            };
            if layer.noise.is_some() {
                noise_layer += 1;
            }
            let out = match self.path {
                ConvPath::Fast => {
                    let noise = match noise {
                        NoiseMode::Const => layer.noise.as_ref().map(NoiseInput::Shared),
                        NoiseMode::None => None,
                        NoiseMode::Random { .. } => random_planes.map(NoiseInput::PerSample),
                    };
                    let conv = fast_layer(layer, &prep.weight, noise);
                    match &prep.packed {
                        Some(packed) => conv.forward_packed(packed, &x, &styles)?,
                        None => conv.forward(&x, &styles)?,
                    }
                }
                ConvPath::Reference => {
                    let noise = match noise {
                        NoiseMode::Const => prep.const_noise.as_ref(),
                        NoiseMode::None => None,
                        NoiseMode::Random { .. } => random_planes,
                    };
                    self.reference_layer(layer, prep, &x, &styles, noise)?
                }
            };
            if let Some(t) = trace.as_mut() {
                t(&format!("{}.styles", layer.name), &styles);
                t(&format!("{}.out", layer.name), &out);
            }
            match layer.kind {
                LayerKind::Conv => x = out,
                LayerKind::ToRgb => {
                    let sum = match img.take() {
                        None => out,
                        Some(prev) => {
                            let mut up = ops::upfirdn2d(
                                &prev,
                                &self.filter,
                                &Upfirdn {
                                    up: 2,
                                    pad: [2, 1, 2, 1],
                                    gain: 4.0,
                                    ..Upfirdn::default()
                                },
                            )?;
                            up.data.iter_mut().zip(&out.data).for_each(|(a, b)| *a += b);
                            up
                        }
                    };
                    if let Some(t) = trace.as_mut() {
                        let block = format!("b{}", layer.resolution);
                        t(&format!("{block}.x"), &x);
                        t(&format!("{block}.img"), &sum);
                    }
                    img = Some(sum);
                }
            }
        }
        Ok(img.expect("the network ends with a ToRGB layer"))
    }
}

impl Synthesis {
    /// One layer the way the reference code computes it: grouped modulated conv, then bias_act.
    fn reference_layer(
        &self,
        layer: &SynthesisLayer,
        prep: &Prepared,
        x: &Tensor,
        styles: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let conv = ops::modulated_conv2d(
            x,
            &prep.weight,
            styles,
            noise,
            &self.filter,
            &ModConv {
                up: layer.up,
                padding: layer.kernel / 2,
                demodulate: layer.demodulate,
                flip_weight: layer.up == 1,
                fused: true,
            },
        )?;
        let act = match layer.kind {
            LayerKind::Conv => Act::LRELU,
            LayerKind::ToRgb => Act::Linear,
        };
        ops::bias_act(
            &conv,
            Some(&layer.bias),
            &BiasAct {
                clamp: layer.clamp,
                ..BiasAct::new(act)
            },
        )
    }
}

/// The fast path's layer on the prepared weight, which already holds the weight gain (the reference path
/// shares it).
fn fast_layer<'a>(
    layer: &'a SynthesisLayer,
    weight: &'a Tensor,
    noise: Option<NoiseInput<'a>>,
) -> ModConvLayer<'a> {
    ModConvLayer {
        weight,
        weight_gain: 1.0,
        noise,
        ..ModConvLayer::from_synthesis(layer)
    }
}

pub(crate) fn scaled(t: &Tensor, gain: f32) -> Tensor {
    Tensor {
        shape: t.shape.clone(),
        data: t.data.iter().map(|v| v * gain).collect(),
    }
}

/// Styles `[N, I] = ws[:, layer.ws_index] @ affine^T + affine_bias`.
fn affine(ws: &Tensor, net: &Network, layer: &SynthesisLayer, weight: &Tensor) -> Tensor {
    let (n, d, i) = (ws.shape[0], net.w_dim, layer.in_channels);
    let mut out = Vec::with_capacity(n * i);
    for s in 0..n {
        let off = (s * net.num_ws + layer.ws_index) * d;
        let w = &ws.data[off..off + d];
        for c in 0..i {
            let a = &weight.data[c * d..(c + 1) * d];
            let dot: f32 = w.iter().zip(a).map(|(x, y)| x * y).sum();
            out.push(dot + layer.affine_bias[c]);
        }
    }
    Tensor {
        shape: vec![n, i],
        data: out,
    }
}

/// Per-layer random noise `[N, 1, res, res]` (times the layer's strength) for every noisy layer, images
/// `first_image ..` of the job with `seed` ([`super::noise`]; the CUDA backend draws the same on the device).
pub(crate) fn random_noise(net: &Network, n: usize, seed: u32, first_image: usize) -> Vec<Tensor> {
    net.layers
        .iter()
        .filter_map(|l| l.noise.as_ref().map(|noise| (l.resolution, noise.strength)))
        .enumerate()
        .map(|(layer, (res, strength))| {
            let mut t = Tensor::zeros(vec![n, 1, res, res]);
            t.data
                .par_chunks_mut(res * res)
                .enumerate()
                .for_each(|(b, plane)| {
                    noise::fill_plane(seed, first_image + b, layer, strength, plane)
                });
            t
        })
        .collect()
}
