//! The synthesis network on the CPU: walks the layer table, one batched op per layer.

use super::conv::{ModConvLayer, NoiseInput, PackedWeights};
use super::ops::{self, Act, BiasAct, ModConv, Upfirdn};
use crate::backend::NoiseMode;
use crate::bail;
use crate::error::Result;
use crate::model::{LayerKind, Network, SynthesisLayer};
use crate::seeds::RandomState;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::ops::Range;

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
                Some(random_noise(net, 0..net.layers.len(), n, seed, first_image))
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

/// Per-layer random noise `[N, 1, res, res]` (times the layer's strength) for the noisy layers among `layers`
/// (indices into the layer table). Image `first_image + b` draws all its layers, in order, from its own stream, so
/// an image's noise does not depend on the batch it is rendered in, nor on where a device splits the network
/// (the noisy layers before `layers` are drawn and discarded). The CUDA backend draws its random noise here too,
/// so both backends render the same images.
pub(crate) fn random_noise(
    net: &Network,
    layers: Range<usize>,
    n: usize,
    seed: u32,
    first_image: usize,
) -> Vec<Tensor> {
    let noisy = |range: Range<usize>| -> Vec<&SynthesisLayer> {
        net.layers[range]
            .iter()
            .filter(|l| l.noise.is_some())
            .collect()
    };
    let skipped: usize = noisy(0..layers.start)
        .iter()
        .map(|l| l.resolution * l.resolution)
        .sum();
    let drawn = noisy(layers);
    let mut out: Vec<Tensor> = drawn
        .iter()
        .map(|l| Tensor::zeros(vec![n, 1, l.resolution, l.resolution]))
        .collect();
    // Each image's planes, one per drawn layer, so that the images' streams run in parallel (about 3 M normals
    // per 1024 px image).
    let mut planes: Vec<Vec<&mut [f32]>> = (0..n).map(|_| Vec::new()).collect();
    for (t, l) in out.iter_mut().zip(&drawn) {
        let plane = l.resolution * l.resolution;
        for (image, p) in planes.iter_mut().zip(t.data.chunks_mut(plane)) {
            image.push(p);
        }
    }
    planes.into_par_iter().enumerate().for_each(|(b, image)| {
        let mut rng = RandomState::new(image_stream_seed(seed, first_image + b));
        for _ in 0..skipped {
            rng.randn();
        }
        for (plane, l) in image.into_iter().zip(&drawn) {
            let strength = l.noise.as_ref().map_or(0.0, |n| n.strength);
            for v in plane {
                *v = rng.randn() as f32 * strength;
            }
        }
    });
    out
}

/// Mix the user's noise seed and the image index into one 32-bit seed (splitmix64 finaliser), so that nearby
/// (seed, index) pairs give unrelated streams.
fn image_stream_seed(seed: u32, image: usize) -> u32 {
    let mut z = ((seed as u64) << 32 | image as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}
