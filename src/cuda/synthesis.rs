//! The synthesis network on a device: walks the layer table like [`crate::cpu::synthesis`], one modulated-conv
//! kernel per layer (plus the styles and demodulation kernels), the skip image up-sampled and added by the kernel
//! that writes each ToRGB.
//! Weights, noise buffers and the constant input are uploaded once.

use super::conv::{skip_upsample_plus, DeviceConvLayer, DeviceNoise, Finish, FusedToRgb};
use super::device::{DType, Device, DeviceTensor, LaunchDims};
use super::gemm::Precision;
use super::kernels::Kernel;
use super::ops::random_noise_on;
use super::params::ModconvAffineParams;
use super::profile::{conv_output_bytes, layer_cost};
use crate::backend::{LayerProfile, NoiseMode};
use crate::bail;
use crate::cpu::ops::Act;
use crate::cpu::synthesis::{scaled, Trace};
use crate::cpu::ConvPath;
use crate::error::Result;
use crate::model::{LayerKind, Network};
use crate::tensor::Tensor;
use std::ops::Range;
use std::time::Instant;

const AFFINE_THREADS: u32 = 256;
const AFFINE_MAX_BLOCKS: u32 = 65535;

/// What [`DeviceSynthesis::forward`] reports as it goes.
enum Observe<'a> {
    Nothing,
    /// Every layer's styles and output, each block's x and img (downloaded).
    Trace(Trace<'a>),
    /// After each layer's kernels are queued: the layer's index, and whether the layer before computed it
    /// (a ToRGB fused into its conv).
    LayerQueued(&'a mut dyn FnMut(usize, bool) -> Result<()>),
}

/// What a run of the first layers leaves for the rest ([`DeviceSynthesis::synthesize_layers`]): the activation
/// the next layer reads and the image so far, both `[N, ...]`.
pub struct Carry<D: Device> {
    pub x: DeviceTensor<D>,
    pub img: Option<DeviceTensor<D>>,
}

impl<D: Device> Carry<D> {
    /// A copy of images `start..end`.
    pub fn rows(&self, dev: &D, start: usize, end: usize) -> Result<Self> {
        Ok(Carry {
            x: self.x.rows(dev, start, end)?,
            img: self
                .img
                .as_ref()
                .map(|img| img.rows(dev, start, end))
                .transpose()?,
        })
    }

    /// The image, once the last layer has run.
    pub fn image(self) -> Result<DeviceTensor<D>> {
        match self.img {
            Some(img) => Ok(img),
            None => bail!("the network has no ToRGB layer"),
        }
    }
}

/// One synthesis layer on the device.
struct DeviceLayer<D: Device> {
    name: String,
    kind: LayerKind,
    ws_index: usize,
    resolution: usize,
    /// Effective affine weight `A / sqrt(w_dim)`, `[I, w_dim]`, and its bias `[I]`.
    affine: DeviceTensor<D>,
    affine_bias: DeviceTensor<D>,
    conv: DeviceConvLayer<D>,
    /// The stored noise buffer `[res, res]` times its strength (`--noise-mode const`).
    noise: Option<DeviceTensor<D>>,
}

pub struct DeviceSynthesis<D: Device> {
    layers: Vec<DeviceLayer<D>>,
    /// `[C, 4, 4]`, kept on the host: it is repeated over the batch per call.
    const_input: Tensor,
    /// How activations are stored between layers.
    activations: DType,
    path: ConvPath,
}

impl<D: Device> DeviceSynthesis<D> {
    /// Uploads `net`'s synthesis layers. `path` picks the fused up-sampling kernel ([`ConvPath::Fast`]) or the
    /// unfused pair ([`ConvPath::Reference`], a test twin).
    pub fn new(dev: &D, net: &Network, path: ConvPath) -> Result<Self> {
        Self::with_precision(dev, net, path, Precision::Fp32)
    }

    /// [`Self::new`] with the convolutions in the given precision (see [`DeviceConvLayer::with_precision`]).
    pub fn with_precision(
        dev: &D,
        net: &Network,
        path: ConvPath,
        precision: Precision,
    ) -> Result<Self> {
        let affine_gain = 1.0 / (net.w_dim as f32).sqrt();
        let layers = net
            .layers
            .iter()
            .map(|l| {
                let act = match l.kind {
                    LayerKind::Conv => Act::LRELU,
                    LayerKind::ToRgb => Act::Linear,
                };
                let weight = scaled(&l.weight, l.weight_gain);
                let conv = DeviceConvLayer::with_precision(
                    dev,
                    &weight,
                    l.demodulate,
                    l.up,
                    &Finish {
                        bias: Some(&l.bias),
                        act,
                        gain: act.default_gain(),
                        clamp: l.clamp,
                        // Conv outputs are the next layers' inputs; ToRGB's join the f32 skip image.
                        output: match l.kind {
                            LayerKind::Conv => precision.activation_dtype(),
                            LayerKind::ToRgb => DType::F32,
                        },
                    },
                    path == ConvPath::Reference,
                    precision,
                )?;
                let affine = scaled(&l.affine_weight, affine_gain);
                Ok(DeviceLayer {
                    name: l.name.clone(),
                    kind: l.kind,
                    ws_index: l.ws_index,
                    resolution: l.resolution,
                    affine: DeviceTensor::upload(dev, &affine)?,
                    affine_bias: DeviceTensor::upload(
                        dev,
                        &Tensor::new(vec![l.affine_bias.len()], l.affine_bias.clone())?,
                    )?,
                    conv,
                    noise: l
                        .noise
                        .as_ref()
                        .map(|n| DeviceTensor::upload(dev, &scaled(&n.buffer, n.strength)))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceSynthesis {
            layers,
            const_input: net.const_input.clone(),
            activations: precision.activation_dtype(),
            path,
        })
    }

    /// ws `[N, num_ws, w_dim]` -> images `[N, C, res, res]`. `net` is the network this was built from (its
    /// layer table drives the random-noise generator shared with the CPU backend).
    pub fn synthesize(
        &self,
        dev: &D,
        net: &Network,
        ws: &Tensor,
        noise: NoiseMode,
    ) -> Result<Tensor> {
        self.synthesize_on_device(dev, net, ws, noise)?
            .download(dev)
    }

    /// [`Self::synthesize`] leaving the images in device memory, their kernels possibly still running.
    pub fn synthesize_on_device(
        &self,
        dev: &D,
        net: &Network,
        ws: &Tensor,
        noise: NoiseMode,
    ) -> Result<DeviceTensor<D>> {
        let carry = self.forward(dev, net, ws, noise, self.all(), None, Observe::Nothing)?;
        carry.image()
    }

    /// Runs `layers` (indices into the layer table) of the images `ws` on what the layers before them left
    /// (`carry`; `None` when `layers` starts at the first), and returns what they leave. Split at a ToRGB, a
    /// network runs its first blocks over many images at once and the rest in smaller passes; `noise` counts
    /// images as the whole network would, so the split does not change the images.
    pub fn synthesize_layers(
        &self,
        dev: &D,
        net: &Network,
        ws: &Tensor,
        noise: NoiseMode,
        layers: Range<usize>,
        carry: Option<Carry<D>>,
    ) -> Result<Carry<D>> {
        self.forward(dev, net, ws, noise, layers, carry, Observe::Nothing)
    }

    /// The whole layer table, as [`Self::synthesize_layers`] takes it.
    fn all(&self) -> Range<usize> {
        0..self.layers.len()
    }

    /// [`Self::synthesize`] that also reports every layer's styles and output, and each block's `x` and `img`,
    /// under the names of [`crate::cpu::CpuBackend::synthesize_traced`] (downloads them: for tests and debugging).
    pub fn synthesize_traced(
        &self,
        dev: &D,
        net: &Network,
        ws: &Tensor,
        noise: NoiseMode,
        trace: Trace,
    ) -> Result<Tensor> {
        let carry = self.forward(dev, net, ws, noise, self.all(), None, Observe::Trace(trace))?;
        carry.image()?.download(dev)
    }

    /// [`Self::synthesize_layers`] with the device waiting after every layer: each layer's time (the first also
    /// holds the uploads of ws and, at the first layer, the constant input) and cost, a ToRGB computed by its
    /// conv's kernel merged into the conv's row.
    pub fn profile(
        &self,
        dev: &D,
        net: &Network,
        ws: &Tensor,
        noise: NoiseMode,
        layers: Range<usize>,
        carry: Option<Carry<D>>,
    ) -> Result<(Vec<LayerProfile>, Carry<D>)> {
        let n = ws.shape[0];
        let activation_bytes = self.activations.size();
        let mut rows: Vec<LayerProfile> = Vec::new();
        let mut skip = carry.as_ref().is_some_and(|c| c.img.is_some());
        dev.synchronize()?;
        let mut mark = Instant::now();
        let mut layer_done = |index: usize, fused: bool| -> Result<()> {
            dev.synchronize()?;
            let seconds = mark.elapsed().as_secs_f64();
            mark = Instant::now();
            let layer = &net.layers[index];
            let (flop, bytes) = layer_cost(layer, n, activation_bytes, fused, skip);
            skip |= layer.kind == LayerKind::ToRgb;
            match rows.last_mut() {
                Some(conv) if fused => {
                    conv.name = format!("{} + {}", conv.name, layer.name);
                    conv.seconds += seconds;
                    conv.flop += flop;
                    conv.bytes += bytes;
                    if !self.conv_follows(index) {
                        conv.bytes -=
                            conv_output_bytes(&net.layers[index - 1], n, activation_bytes);
                    }
                }
                _ => rows.push(LayerProfile {
                    name: layer.name.clone(),
                    images: n,
                    seconds,
                    flop,
                    bytes,
                }),
            }
            Ok(())
        };
        let carry = self.forward(
            dev,
            net,
            ws,
            noise,
            layers,
            carry,
            Observe::LayerQueued(&mut layer_done),
        )?;
        Ok((rows, carry))
    }

    /// The most device memory one image's per-sample weights take in any layer (they live during its launch).
    pub fn sample_weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.conv.sample_weight_bytes())
            .max()
            .unwrap_or(0)
    }

    /// Whether a conv layer comes after layer `index`, so something reads the activation it leaves.
    fn conv_follows(&self, index: usize) -> bool {
        self.layers[index + 1..]
            .iter()
            .any(|layer| layer.kind == LayerKind::Conv)
    }

    /// Runs `layers` on `carry` (the constant input when `layers` starts at the first layer).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        dev: &D,
        net: &Network,
        ws: &Tensor,
        noise: NoiseMode,
        layers: Range<usize>,
        carry: Option<Carry<D>>,
        mut observe: Observe,
    ) -> Result<Carry<D>> {
        if net.layers.len() != self.layers.len() {
            bail!("the device synthesis was built from another network");
        }
        check_ws(net, ws)?;
        let n = ws.shape[0];
        if layers.start > layers.end || layers.end > self.layers.len() {
            bail!(
                "layers {layers:?} of a synthesis network of {}",
                self.layers.len()
            );
        }
        for split in [layers.start, layers.end] {
            if split > 0
                && split < self.layers.len()
                && self.layers[split - 1].kind != LayerKind::ToRgb
            {
                bail!(
                    "the synthesis can only be split after a ToRGB, not after {}",
                    self.layers[split - 1].name
                );
            }
        }
        let (mut x, mut img) = match (layers.start, carry) {
            (0, None) => {
                let c = &self.const_input;
                let x = DeviceTensor::upload_as(
                    dev,
                    &Tensor::new(vec![n, c.shape[0], 4, 4], c.data.repeat(n))?,
                    self.activations,
                )?;
                (x, None)
            }
            (0, Some(_)) => {
                bail!("the first synthesis layer takes the constant input, not a carry")
            }
            (start, None) => {
                bail!("layer {start} of the synthesis needs what the layers before it left")
            }
            (start, Some(carry)) => {
                if carry.x.shape[0] != n {
                    bail!(
                        "{} images carried into layer {start} of the synthesis, but ws holds {n}",
                        carry.x.shape[0]
                    );
                }
                (carry.x, carry.img)
            }
        };
        let ws_d = DeviceTensor::upload(dev, ws)?;
        // The noisy layers before `layers`: random noise is keyed by a noisy layer's index in the whole table.
        let mut noise_layer = self.layers[..layers.start]
            .iter()
            .filter(|l| l.noise.is_some())
            .count();
        let tracing = matches!(observe, Observe::Trace(_));
        // The kernel that writes a ToRGB's output also adds the up-sampled skip image (ModconvParams::skip),
        // except when tracing: the trace reports the ToRGB's output alone.
        let join_skip = !tracing;
        // A ToRGB computed by the conv before it (forward_with_torgb): its styles, its output, and whether the
        // skip image is in it.
        let mut fused_rgb: Option<(DeviceTensor<D>, DeviceTensor<D>, bool)> = None;
        for index in layers {
            let layer = &self.layers[index];
            // Random noise is drawn on the device, a layer at a time, as the CPU backend draws it on the host.
            let random = match (noise, &net.layers[index].noise) {
                (NoiseMode::Random { seed, first_image }, Some(buffer)) => Some(random_noise_on(
                    dev,
                    [n, layer.resolution, layer.resolution],
                    seed,
                    first_image,
                    noise_layer,
                    buffer.strength,
                )?),
                _ => None,
            };
            let layer_noise = match (noise, &layer.noise, &random) {
                (_, _, Some(plane)) => Some(DeviceNoise::PerSample(plane)),
                (NoiseMode::Const, Some(plane), _) => Some(DeviceNoise::Shared(plane)),
                _ => None,
            };
            if layer.noise.is_some() {
                noise_layer += 1;
            }
            // In the tensor-core modes a block's conv1 computes the block's ToRGB in its epilogue, which saves
            // the ToRGB's read of the whole activation.
            let torgb = self.layers.get(index + 1).filter(|next| {
                next.kind == LayerKind::ToRgb && layer.conv.can_fuse_torgb(&next.conv)
            });
            let skip = img.as_ref().filter(|_| join_skip);
            let computed_before = fused_rgb.is_some();
            let (styles, out, joined) = match fused_rgb.take() {
                Some((styles, rgb, joined)) => (styles, Some(rgb), joined),
                None => {
                    let styles = affine(dev, net, &ws_d, layer, n)?;
                    let dcoefs = layer.conv.demod(dev, &styles)?;
                    let (out, joined) = match torgb {
                        Some(next) => {
                            let rgb_styles = affine(dev, net, &ws_d, next, n)?;
                            let (out, rgb) = layer.conv.forward_with_torgb(
                                dev,
                                &x,
                                &styles,
                                dcoefs.as_ref(),
                                layer_noise,
                                FusedToRgb {
                                    layer: &next.conv,
                                    styles: &rgb_styles,
                                    skip,
                                    keep_conv_output: tracing || self.conv_follows(index + 1),
                                },
                            )?;
                            fused_rgb = Some((rgb_styles, rgb, skip.is_some()));
                            (out, false)
                        }
                        None if layer.kind == LayerKind::ToRgb
                            && layer.conv.takes_skip()
                            && dcoefs.is_none()
                            && layer_noise.is_none() =>
                        {
                            let out = layer.conv.forward_torgb(dev, &x, &styles, skip)?;
                            (Some(out), skip.is_some())
                        }
                        None => {
                            let out = layer.conv.forward(
                                dev,
                                &x,
                                &styles,
                                dcoefs.as_ref(),
                                layer_noise,
                                self.path,
                            )?;
                            (Some(out), false)
                        }
                    };
                    (styles, out, joined)
                }
            };
            if let Observe::Trace(t) = &mut observe {
                t(&format!("{}.styles", layer.name), &styles.download(dev)?);
                if let Some(out) = &out {
                    t(&format!("{}.out", layer.name), &out.download(dev)?);
                }
            }
            match (layer.kind, out) {
                (LayerKind::Conv, Some(out)) => x = out,
                // A conv whose output only its fused ToRGB reads (the last block's): not written.
                (LayerKind::Conv, None) => {}
                (LayerKind::ToRgb, None) => bail!("{}: the fused ToRGB left no image", layer.name),
                (LayerKind::ToRgb, Some(out)) => {
                    let sum = match img.take() {
                        Some(prev) if !joined => skip_upsample_plus(dev, &prev, &out)?,
                        _ => out,
                    };
                    if let Observe::Trace(t) = &mut observe {
                        let block = format!("b{}", layer.resolution);
                        t(&format!("{block}.x"), &x.download(dev)?);
                        t(&format!("{block}.img"), &sum.download(dev)?);
                    }
                    img = Some(sum);
                }
            }
            if let Observe::LayerQueued(done) = &mut observe {
                done(index, computed_before)?;
            }
        }
        Ok(Carry { x, img })
    }
}

/// ws must be `[N, num_ws, w_dim]` with N > 0.
pub fn check_ws(net: &Network, ws: &Tensor) -> Result<()> {
    if ws.ndim() != 3 || ws.shape[1] != net.num_ws || ws.shape[2] != net.w_dim || ws.shape[0] == 0 {
        bail!(
            "ws has shape {:?}, the model expects [N, {}, {}] with N > 0",
            ws.shape,
            net.num_ws,
            net.w_dim
        );
    }
    Ok(())
}

/// Styles `[N, I]` of one layer on the device.
fn affine<D: Device>(
    dev: &D,
    net: &Network,
    ws: &DeviceTensor<D>,
    layer: &DeviceLayer<D>,
    n: usize,
) -> Result<DeviceTensor<D>> {
    let i = layer.conv.in_channels();
    let styles = DeviceTensor::alloc(dev, &[n, i])?;
    let params = ModconvAffineParams {
        styles: styles.ptr(),
        ws: ws.ptr(),
        affine: layer.affine.ptr(),
        affine_bias: layer.affine_bias.ptr(),
        ws_sample_stride: (net.num_ws * net.w_dim) as i64,
        batch: n as i32,
        in_channels: i as i32,
        w_dim: net.w_dim as i32,
        ws_index: layer.ws_index as i32,
    };
    dev.launch(
        Kernel::ModconvAffine,
        LaunchDims::linear(n * i, AFFINE_THREADS, AFFINE_MAX_BLOCKS),
        &params,
    )?;
    Ok(styles)
}
