//! The device modulated convolution (`kernels/modconv.cu`): one StyleGAN2 synthesis layer (modulate, convolve,
//! demodulate, noise, bias, activation, clamp) for a whole batch on one shared weight. Twin of
//! [`crate::cpu::conv::ModConvLayer`].
//!
//! A layer's weight is packed once for its kernel at upload; per call the styles come in as a device tensor and
//! the demodulation coefficients are computed on the device from them and the precomputed `sum_k W^2`.

use super::device::{DType, Device, DeviceTensor, LaunchDims};
use super::gemm::Precision;
use super::kernels::Kernel;
use super::params::{
    ModconvDemodParams, ModconvParams, ModconvSampleWeightsParams, SkipUpsampleParams, DTYPE_BF16,
    DTYPE_F16, DTYPE_F32,
};
use crate::bail;
use crate::cpu::ops::Act;
use crate::cpu::ConvPath;
use crate::error::Result;
use crate::tensor::Tensor;

/// The same-resolution kernels' tiles (pixels x channels): wide for the convs, narrow for 1x1 layers with at most
/// `NARROW_MAX_CHANNELS` outputs, which would waste most of a wide tile (those with at most `FEW_OUTPUTS`, ToRGB,
/// take neither). K is packed in multiples of 16.
const WIDE_TILE: [usize; 2] = [64, 64];
const NARROW_TILE: [usize; 2] = [256, 16];
const NARROW_MAX_CHANNELS: usize = 16;
/// 1x1 layers with at most `FEW_OUTPUTS` outputs (ToRGB), in every mode: `modconv_1x1_few*` (`kernels/modconv.cu`),
/// a dot product per pixel on the CUDA cores, a thread per pixel and `FEW_RUN` pixels of one sample per block.
const FEW_OUTPUTS: usize = 4;
const FEW_RUN: usize = 256;
const SAME_K_ALIGN: usize = 16;
const SAME_THREADS: u32 = 64;
/// The fused up-sampling kernel: output tile, channels per block, taps per packed channel, K slice, threads.
const UP2_OUT_TILE: [usize; 2] = [12, 28];
const UP2_CH: usize = 8;
const UP2_TAPS: usize = 12;
const UP2_BK: usize = 16;
const UP2_THREADS: u32 = 128;
/// The tensor-core same-resolution kernels' block shapes (`kernels/modconv_tc.cu`): a rectangle of one sample's
/// pixels (rows x columns) times a block of output channels. Layers with at most `TC_WIDE.channels` outputs take
/// the wide one, which wastes no mma work on channels they do not have. K words per stage, threads.
#[derive(Clone, Copy, Debug)]
struct TcShape {
    rect: [usize; 2],
    channels: usize,
    threads: u32,
    /// A kernel of `kernels/modconv_wgmma.cu`, whose shared memory is dynamic ([`wgmma_conv_shared_bytes`]).
    wgmma: bool,
}
const TC_SQUARE: TcShape = TcShape {
    rect: [8, 8],
    channels: 64,
    threads: 128,
    wgmma: false,
};
const TC_WIDE: TcShape = TcShape {
    rect: [8, 16],
    channels: 32,
    threads: 128,
    wgmma: false,
};
/// The sm_90 3x3 kernels (`kernels/modconv_wgmma.cu`, every fp16 and bf16 3x3 layer on a device with
/// [`Device::wgmma`]): two warpgroups, each an m64n128 product.
const TC_WGMMA: TcShape = TcShape {
    rect: [8, 16],
    channels: 128,
    threads: 256,
    wgmma: true,
};
/// The same for layers with 33-64 outputs (and their fused ToRGB): 64-channel blocks.
const TC_WGMMA64: TcShape = TcShape {
    channels: 64,
    ..TC_WGMMA
};
/// And for layers with at most 32 outputs (the 1024 px conv1 and its fused ToRGB).
const TC_WGMMA32: TcShape = TcShape {
    channels: 32,
    ..TC_WGMMA
};
/// Its K words per channel group (a 16-byte cell of wgmma's core matrices) and groups per stage.
const WGMMA_GROUP_WORDS: usize = 4;
const TC_STAGE_WORDS: usize = 16;

/// The dynamic shared memory of a 3x3 wgmma kernel with `channels`-channel blocks on a layer with `in_channels`,
/// in bytes (`kernels/modconv_wgmma.cu`): 16-byte cells of rectangles (the channel groups of a 32-channel K chunk
/// at the block's pixels and their 1-pixel halo) and B tiles (the groups at the block's channels): a rectangle and a
/// chunk's 9 B tiles per buffer, one buffer for a layer of a single chunk; otherwise a second buffer, whose B tiles
/// only 64-channel blocks have.
fn wgmma_conv_shared_bytes(channels: usize, in_channels: usize) -> u32 {
    const CELL_BYTES: usize = 16;
    let groups = TC_STAGE_WORDS / WGMMA_GROUP_WORDS;
    let [rows, cols] = TC_WGMMA.rect;
    // Rows of 24 cells: the gather's aligned runs of 4 pixels from 4 columns left of the block.
    let rectangle = groups * (rows + 2) * (cols + 8);
    let chunk_b = 9 * groups * channels;
    let single_chunk = in_channels <= 2 * TC_STAGE_WORDS;
    let cells = match channels {
        _ if single_chunk => rectangle + chunk_b,
        64 => 2 * (rectangle + chunk_b),
        _ => 2 * rectangle + chunk_b,
    };
    (cells * CELL_BYTES) as u32
}
/// The most output channels of a ToRGB fused into the 3x3 conv before it (`kMaxFusedRgb` of `kernels/common.cuh`).
const FUSED_RGB_MAX_CHANNELS: usize = 4;
/// The tensor-core up-sampling kernels (same file; the output tile is the f32 kernel's): channels per block, K
/// words per stage, threads, and the most input channels (`kMaxInChannels`: a sample's styles are staged in shared
/// memory).
const UP2_TC_CH: usize = 16;
const UP2_TC_STAGE_WORDS: usize = 16;
const UP2_TC_THREADS: u32 = 256;
const UP2_TC_MAX_IN_CHANNELS: usize = 1024;
/// The most input channels of an up-sampling layer that takes per-sample weights on the wgmma kernel: the 256,
/// 512 and 1024 px layers of the FFHQ config (256, 128 and 64 inputs). Their gathers then store x as loaded, with
/// no style multiply and rounding per value (a quarter of the K loop's instructions), and a sample's copy (590 KB
/// at 256 -> 128 channels) stays in L2 while its blocks, which the grid orders sample by sample, read it. The
/// 512-channel layers work at 4-64 px, where making 4.7 MB a sample would cost about what their gathers save.
const SAMPLE_WEIGHTS_MAX_UP2_IN_CHANNELS: usize = 256;

/// Whether `kernel` takes per-sample weights, each sample's times its styles (`ModconvParams::weight_sample_stride`,
/// [`DeviceConvLayer::sample_weights`]): the narrow same-resolution wgmma kernels, whose layers have at most 64
/// outputs, and the up-sampling ones that say so.
fn takes_sample_weights(kernel: Kernel) -> bool {
    matches!(
        kernel,
        Kernel::Modconv3x3N64WgmmaF16
            | Kernel::Modconv3x3N64WgmmaBf16
            | Kernel::Modconv3x3N32WgmmaF16
            | Kernel::Modconv3x3N32WgmmaBf16
            | Kernel::Modconv3x3TorgbN64WgmmaF16
            | Kernel::Modconv3x3TorgbN64WgmmaBf16
            | Kernel::Modconv3x3TorgbN32WgmmaF16
            | Kernel::Modconv3x3TorgbN32WgmmaBf16
            | Kernel::ModconvUp23x3SampleWeightsWgmmaF16
            | Kernel::ModconvUp23x3SampleWeightsWgmmaBf16
    )
}
/// Element-wise kernels.
const EW_THREADS: u32 = 256;
const EW_MAX_BLOCKS: u32 = 65535;

/// The noise a layer adds after demodulation.
pub enum DeviceNoise<'a, D: Device> {
    /// One `[H', W']` plane, already times the layer's strength, shared by every sample.
    Shared(&'a DeviceTensor<D>),
    /// One plane per sample `[N, 1, H', W']`, already scaled.
    PerSample(&'a DeviceTensor<D>),
}

/// A ToRGB for [`DeviceConvLayer::forward_with_torgb`]: the layer, its styles `[N, I]`, optionally the previous
/// block's image to up-sample and add, and whether the conv's own output is wanted too (`keep_conv_output`; the
/// last block's is read by nothing but its ToRGB, so the kernel need not write it).
pub struct FusedToRgb<'a, D: Device> {
    pub layer: &'a DeviceConvLayer<D>,
    pub styles: &'a DeviceTensor<D>,
    pub skip: Option<&'a DeviceTensor<D>>,
    pub keep_conv_output: bool,
}

/// How a [`DeviceConvLayer`] finishes its output: `clamp(act(v + bias) * gain)`, stored as `output`.
#[derive(Clone, Debug)]
pub struct Finish<'a> {
    pub bias: Option<&'a [f32]>,
    pub act: Act,
    pub gain: f32,
    pub clamp: Option<f32>,
    /// f32, or the precision's 16-bit activation type ([`Precision::activation_dtype`]) for an output that is the
    /// next layer's input.
    pub output: DType,
}

/// The kernel a layer launches, with its block shape.
#[derive(Clone, Copy, Debug)]
enum ConvKernel {
    /// A same-resolution conv (also the 1x1 before the skip up-sampling). `torgb`: the same kernel with a ToRGB
    /// fused into its epilogue (tensor-core 3x3 layers). `tiling`: how blocks cover the output.
    Same {
        kernel: Kernel,
        torgb: Option<Kernel>,
        tiling: SameTiling,
        threads: u32,
        shared_bytes: u32,
    },
    /// The fused up-sampling 3x3 conv: output channels per block (the output tile is `UP2_OUT_TILE`).
    Up2 {
        kernel: Kernel,
        channels: usize,
        threads: u32,
    },
}

/// How a same-resolution kernel's blocks cover the output.
#[derive(Clone, Copy, Debug)]
enum SameTiling {
    /// A run of `[pixels, channels]` of the batch's flattened pixels (the f32 kernels).
    Flat([usize; 2]),
    /// A rectangle of one sample (grid x: rectangles, y: channel blocks, z: samples; the tensor-core kernels).
    Rect(TcShape),
    /// A run of this many pixels of one sample, all `FEW_OUTPUTS` channels (grid x: runs, z: samples).
    Run(usize),
}

/// One modulated convolution uploaded for its kernel.
pub struct DeviceConvLayer<D: Device> {
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    up: usize,
    /// The kernel's packing (see `kernels/modconv.cu`, `kernels/modconv_tc.cu`), `weight_stride` floats (32-bit
    /// words) per packed row.
    weight: DeviceTensor<D>,
    weight_stride: usize,
    conv_kernel: ConvKernel,
    /// `[O, I, 3, 3]` (with the fp16 prescale, if any), for the unfused up-sampling twin (kept only when asked for).
    reference_weight: Option<DeviceTensor<D>>,
    /// `[O, I]`, for a ToRGB that the 3x3 conv before it can compute in its epilogue (tensor-core modes, 1x1, at
    /// most `FUSED_RGB_MAX_CHANNELS` outputs, no demodulation, a bias, linear, gain 1, f32 output).
    rgb_weight: Option<DeviceTensor<D>>,
    /// `wsq_t[i, o] = sum_k W[o, i, k]^2`, when demodulating.
    wsq_t: Option<DeviceTensor<D>>,
    bias: Option<DeviceTensor<D>>,
    /// The element types of x (the precision's activation type) and y.
    input: DType,
    output: DType,
    /// The activation's slope below zero (1: linear), the gain, and the clamp (+inf: none), as the kernels take them.
    slope: f32,
    gain: f32,
    clamp: f32,
}

impl<D: Device> DeviceConvLayer<D> {
    /// `weight [O, I, k, k]` with any weight gain applied, in the convolution's own tap order: a
    /// cross-correlation for `up == 1`, the transposed conv's scatter (`T[2y + ky, 2x + kx] += x[y, x] W[ky, kx]`)
    /// for `up == 2`. `k` is 1 or 3; `up == 2` with `k == 1` (conv, then the skip up-sampling) only takes a linear,
    /// bias-free, unclamped finish, because the up-sampling follows it. `keep_reference` also uploads the weight in
    /// its natural layout for [`ConvPath::Reference`].
    pub fn new(
        dev: &D,
        weight: &Tensor,
        demodulate: bool,
        up: usize,
        finish: &Finish,
        keep_reference: bool,
    ) -> Result<Self> {
        Self::with_precision(
            dev,
            weight,
            demodulate,
            up,
            finish,
            keep_reference,
            Precision::Fp32,
        )
    }

    /// [`Self::new`] in the given precision: in the tf32, fp16 and bf16 modes every convolution (3x3 and 1x1, the
    /// fused up-sampling 3x3 and the 1x1 before the skip up-sampling) runs on the tensor cores. The unfused
    /// up-sampling twin ([`ConvPath::Reference`]) stays f32.
    pub fn with_precision(
        dev: &D,
        weight: &Tensor,
        demodulate: bool,
        up: usize,
        finish: &Finish,
        keep_reference: bool,
        precision: Precision,
    ) -> Result<Self> {
        let [o, i, kh, kw] = match weight.shape[..] {
            [o, i, kh, kw] => [o, i, kh, kw],
            _ => bail!(
                "modulated conv: weight must be [O, I, k, k], got {:?}",
                weight.shape
            ),
        };
        if kh != kw || (kh != 1 && kh != 3) || o == 0 || i == 0 {
            bail!(
                "modulated conv: the device kernels take 1x1 and 3x3 weights, got {:?}",
                weight.shape
            );
        }
        if up != 1 && up != 2 {
            bail!("modulated conv: up must be 1 or 2, got {up}");
        }
        if let Some(b) = finish.bias {
            if b.len() != o {
                bail!(
                    "modulated conv: {} bias values for {o} output channels",
                    b.len()
                );
            }
        }
        if up == 2
            && kh == 1
            && (finish.bias.is_some()
                || finish.act != Act::Linear
                || finish.gain != 1.0
                || finish.clamp.is_some())
        {
            bail!(
                "modulated conv: a 1x1 up-sampling conv takes no bias, activation, gain or clamp"
            );
        }
        let kk = kh * kw;
        // Every kernel of a mode reads x in the mode's activation type (16-bit for fp16 and bf16). The f32
        // kernels store f32, and the skip up-sampling after a 1x1 up-sampling conv reads f32.
        let input = precision.activation_dtype();
        if finish.output != DType::F32 && (precision == Precision::Fp32 || up == 2 && kh == 1) {
            bail!(
                "modulated conv: this layer stores f32 outputs only, not {:?}",
                finish.output
            );
        }
        let up2_3x3 = up == 2 && kh == 3;
        if up2_3x3 && precision.uses_tensor_cores() && i > UP2_TC_MAX_IN_CHANNELS {
            bail!(
                "modulated conv: the {precision} up-sampling kernel takes at most {UP2_TC_MAX_IN_CHANNELS} input \
                 channels, this layer has {i} (use --precision fp32)"
            );
        }
        let conv_kernel = if up2_3x3 {
            // On an sm_90 device, fp16 and bf16 take the wgmma twins (same block, tile and threads).
            let sample_weights = i <= SAMPLE_WEIGHTS_MAX_UP2_IN_CHANNELS;
            let kernel = match (precision, dev.wgmma(), sample_weights) {
                (Precision::Fp32, ..) => Kernel::ModconvUp23x3,
                (Precision::Tf32, ..) => Kernel::ModconvUp23x3Tf32,
                (Precision::Fp16, false, _) => Kernel::ModconvUp23x3F16,
                (Precision::Bf16, false, _) => Kernel::ModconvUp23x3Bf16,
                (Precision::Fp16, true, false) => Kernel::ModconvUp23x3WgmmaF16,
                (Precision::Bf16, true, false) => Kernel::ModconvUp23x3WgmmaBf16,
                (Precision::Fp16, true, true) => Kernel::ModconvUp23x3SampleWeightsWgmmaF16,
                (Precision::Bf16, true, true) => Kernel::ModconvUp23x3SampleWeightsWgmmaBf16,
            };
            let (channels, threads) = if precision.uses_tensor_cores() {
                (UP2_TC_CH, UP2_TC_THREADS)
            } else {
                (UP2_CH, UP2_THREADS)
            };
            ConvKernel::Up2 {
                kernel,
                channels,
                threads,
            }
        } else {
            let wide = o <= TC_WIDE.channels;
            let (kernel, tiling) = match (kh, precision, wide) {
                (1, _, _) if o <= FEW_OUTPUTS => {
                    let kernel = match input {
                        DType::F16 => Kernel::Modconv1x1FewHalf,
                        DType::Bf16 => Kernel::Modconv1x1FewBfloat,
                        DType::F32 => Kernel::Modconv1x1Few,
                    };
                    (kernel, SameTiling::Run(FEW_RUN))
                }
                (3, Precision::Fp32, _) => (Kernel::Modconv3x3, SameTiling::Flat(WIDE_TILE)),
                (_, Precision::Fp32, _) if o <= NARROW_MAX_CHANNELS => {
                    (Kernel::Modconv1x1Narrow, SameTiling::Flat(NARROW_TILE))
                }
                (_, Precision::Fp32, _) => (Kernel::Modconv1x1, SameTiling::Flat(WIDE_TILE)),
                (3, Precision::Fp16 | Precision::Bf16, _) if dev.wgmma() => {
                    // The narrowest block that holds the layer's outputs (all of them when o <= 64).
                    let shape = [TC_WGMMA32, TC_WGMMA64, TC_WGMMA]
                        .into_iter()
                        .find(|shape| o <= shape.channels)
                        .unwrap_or(TC_WGMMA);
                    let kernel = match (shape.channels, precision) {
                        (32, Precision::Fp16) => Kernel::Modconv3x3N32WgmmaF16,
                        (32, _) => Kernel::Modconv3x3N32WgmmaBf16,
                        (64, Precision::Fp16) => Kernel::Modconv3x3N64WgmmaF16,
                        (64, _) => Kernel::Modconv3x3N64WgmmaBf16,
                        (_, Precision::Fp16) => Kernel::Modconv3x3WgmmaF16,
                        (_, _) => Kernel::Modconv3x3WgmmaBf16,
                    };
                    (kernel, SameTiling::Rect(shape))
                }
                _ => {
                    let kernel = match (kh, precision, wide) {
                        (3, Precision::Tf32, false) => Kernel::Modconv3x3Tf32,
                        (3, Precision::Tf32, true) => Kernel::Modconv3x3N32Tf32,
                        (3, Precision::Fp16, false) => Kernel::Modconv3x3F16,
                        (3, Precision::Fp16, true) => Kernel::Modconv3x3N32F16,
                        (3, _, false) => Kernel::Modconv3x3Bf16,
                        (3, _, true) => Kernel::Modconv3x3N32Bf16,
                        (_, Precision::Tf32, false) => Kernel::Modconv1x1Tf32,
                        (_, Precision::Tf32, true) => Kernel::Modconv1x1N32Tf32,
                        (_, Precision::Fp16, false) => Kernel::Modconv1x1F16,
                        (_, Precision::Fp16, true) => Kernel::Modconv1x1N32F16,
                        (_, _, false) => Kernel::Modconv1x1Bf16,
                        (_, _, true) => Kernel::Modconv1x1N32Bf16,
                    };
                    // The wide shape for a layer with at most TC_WIDE.channels outputs.
                    let shape = if wide { TC_WIDE } else { TC_SQUARE };
                    (kernel, SameTiling::Rect(shape))
                }
            };
            // The shape's channel block holds all of a pixel's channels (o <= 64; 128 on the wgmma kernels), as the
            // fused ToRGB's sums need.
            let torgb = match (kernel, kh, precision, wide) {
                (Kernel::Modconv3x3WgmmaF16, ..) => Some(Kernel::Modconv3x3TorgbWgmmaF16),
                (Kernel::Modconv3x3WgmmaBf16, ..) => Some(Kernel::Modconv3x3TorgbWgmmaBf16),
                (Kernel::Modconv3x3N64WgmmaF16, ..) => Some(Kernel::Modconv3x3TorgbN64WgmmaF16),
                (Kernel::Modconv3x3N64WgmmaBf16, ..) => Some(Kernel::Modconv3x3TorgbN64WgmmaBf16),
                (Kernel::Modconv3x3N32WgmmaF16, ..) => Some(Kernel::Modconv3x3TorgbN32WgmmaF16),
                (Kernel::Modconv3x3N32WgmmaBf16, ..) => Some(Kernel::Modconv3x3TorgbN32WgmmaBf16),
                (_, 3, Precision::Tf32, false) => Some(Kernel::Modconv3x3TorgbTf32),
                (_, 3, Precision::Tf32, true) => Some(Kernel::Modconv3x3TorgbN32Tf32),
                (_, 3, Precision::Fp16, false) => Some(Kernel::Modconv3x3TorgbF16),
                (_, 3, Precision::Fp16, true) => Some(Kernel::Modconv3x3TorgbN32F16),
                (_, 3, Precision::Bf16, false) => Some(Kernel::Modconv3x3TorgbBf16),
                (_, 3, Precision::Bf16, true) => Some(Kernel::Modconv3x3TorgbN32Bf16),
                _ => None,
            }
            .filter(|_| match tiling {
                SameTiling::Rect(shape) if shape.wgmma => o <= shape.channels,
                _ => o <= TC_SQUARE.channels,
            });
            ConvKernel::Same {
                kernel,
                torgb,
                tiling,
                threads: match tiling {
                    SameTiling::Flat(_) => SAME_THREADS,
                    SameTiling::Rect(shape) => shape.threads,
                    SameTiling::Run(run) => run as u32,
                },
                shared_bytes: match tiling {
                    SameTiling::Rect(shape) if shape.wgmma => {
                        wgmma_conv_shared_bytes(shape.channels, i)
                    }
                    _ => 0,
                },
            }
        };
        let fusable_torgb = precision.uses_tensor_cores()
            && kh == 1
            && up == 1
            && o <= FUSED_RGB_MAX_CHANNELS
            && !demodulate
            && finish.bias.is_some()
            && finish.act == Act::Linear
            && finish.gain == 1.0
            && finish.output == DType::F32;
        let scaled = fp16_weight_scale(precision, demodulate, &weight.data)
            .map(|scale| weight.data.iter().map(|v| v * scale).collect::<Vec<_>>());
        let weight_data = scaled.as_deref().unwrap_or(&weight.data);
        let per_word = per_word(precision);
        let shared_word = |lo: Half, hi: Half| word(precision, lo.weight, hi.weight);
        let (packed, weight_stride) = match conv_kernel {
            ConvKernel::Up2 { kernel, .. } if takes_sample_weights(kernel) => {
                let (words, cols) = pack_up2_words(weight_data, o, i, per_word, sample_weight_word);
                (wgmma_groups(&words, cols).concat(), cols)
            }
            ConvKernel::Up2 {
                kernel: Kernel::ModconvUp23x3WgmmaF16 | Kernel::ModconvUp23x3WgmmaBf16,
                ..
            } => {
                let (words, cols) = pack_up2_words(weight_data, o, i, per_word, shared_word);
                (wgmma_groups(&words, cols), cols)
            }
            ConvKernel::Up2 { .. } if precision.uses_tensor_cores() => {
                pack_up2_words(weight_data, o, i, per_word, shared_word)
            }
            ConvKernel::Up2 { .. } => pack_up2(weight_data, o, i),
            ConvKernel::Same {
                kernel,
                tiling: SameTiling::Rect(shape),
                ..
            } if shape.wgmma => {
                let block = shape.channels;
                if takes_sample_weights(kernel) {
                    let (words, cols) =
                        pack_same_words(weight_data, o, i, 9, block, per_word, sample_weight_word);
                    (wgmma_groups(&words, cols).concat(), cols)
                } else {
                    let (words, cols) =
                        pack_same_words(weight_data, o, i, 9, block, per_word, shared_word);
                    (wgmma_groups(&words, cols), cols)
                }
            }
            ConvKernel::Same {
                tiling: SameTiling::Rect(shape),
                ..
            } => pack_same_words(weight_data, o, i, kk, shape.channels, per_word, shared_word),
            ConvKernel::Same {
                tiling: SameTiling::Flat(tile),
                ..
            } => pack_same(weight_data, o, i * kk, tile[1]),
            ConvKernel::Same {
                tiling: SameTiling::Run(_),
                ..
            } => pack_same(weight_data, o, i, FEW_OUTPUTS),
        };
        // sum_k W^2 once per layer on the host at upload: O(weights), summed in the CPU backend's order, and no
        // kernel to keep for a value that never changes.
        let wsq_t = demodulate
            .then(|| {
                let mut t = vec![0.0f32; i * o];
                for (row, taps) in weight_data.chunks(kk).enumerate() {
                    let (oc, ic) = (row / i, row % i);
                    t[ic * o + oc] = taps.iter().map(|v| v * v).sum();
                }
                upload(dev, vec![i, o], t)
            })
            .transpose()?;
        let slope = match finish.act {
            Act::Linear => 1.0,
            Act::Lrelu { alpha } => alpha,
        };
        Ok(DeviceConvLayer {
            in_channels: i,
            out_channels: o,
            kernel: kh,
            up,
            weight_stride,
            conv_kernel,
            weight: upload(dev, vec![packed.len()], packed)?,
            // The prescaled weight: the demodulation coefficients come from it.
            reference_weight: (keep_reference && up2_3x3)
                .then(|| upload(dev, weight.shape.clone(), weight_data.to_vec()))
                .transpose()?,
            rgb_weight: fusable_torgb
                .then(|| upload(dev, vec![o, i], weight.data.clone()))
                .transpose()?,
            wsq_t,
            bias: finish
                .bias
                .map(|b| upload(dev, vec![o], b.to_vec()))
                .transpose()?,
            input,
            output: finish.output,
            slope,
            gain: finish.gain,
            clamp: finish.clamp.unwrap_or(f32::INFINITY),
        })
    }

    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The element type this layer reads its input `x` in.
    pub fn input_dtype(&self) -> DType {
        self.input
    }

    /// Demodulation coefficients `[N, O]` for `styles [N, I]`, or `None` for a layer that does not demodulate.
    pub fn demod(&self, dev: &D, styles: &DeviceTensor<D>) -> Result<Option<DeviceTensor<D>>> {
        let Some(wsq_t) = &self.wsq_t else {
            return Ok(None);
        };
        let n = styles.shape[0];
        let dcoefs = DeviceTensor::alloc(dev, &[n, self.out_channels])?;
        let total = n * self.out_channels;
        let params = ModconvDemodParams {
            dcoefs: dcoefs.ptr(),
            styles: styles.ptr(),
            wsq_t: wsq_t.ptr(),
            n: total as i64,
            in_channels: self.in_channels as i32,
            out_channels: self.out_channels as i32,
        };
        dev.launch(
            Kernel::ModconvDemod,
            LaunchDims::linear(total, EW_THREADS, EW_MAX_BLOCKS),
            &params,
        )?;
        Ok(Some(dcoefs))
    }

    /// The layer on `x [N, I, H, W]` with `styles [N, I]` and the coefficients from [`Self::demod`]; returns
    /// `[N, O, up H, up W]`. `path` picks the fused up-sampling kernel or its unfused twin (the same kernels
    /// otherwise).
    pub fn forward(
        &self,
        dev: &D,
        x: &DeviceTensor<D>,
        styles: &DeviceTensor<D>,
        dcoefs: Option<&DeviceTensor<D>>,
        noise: Option<DeviceNoise<D>>,
        path: ConvPath,
    ) -> Result<DeviceTensor<D>> {
        let mut params = self.params(x, styles, dcoefs, noise.as_ref())?;
        let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3]);
        let (oh, ow) = (h * self.up, w * self.up);
        let (noise_ptr, noise_sample_stride) = (params.noise, params.noise_sample_stride);
        let o = self.out_channels;
        if self.up == 2 && self.kernel == 1 {
            // Conv (with demodulation) at input resolution, then the skip up-sampling adds the noise.
            let z = DeviceTensor::alloc(dev, &[n, o, h, w])?;
            params.y = z.ptr();
            params.noise = 0;
            self.launch_same(dev, &params, n * h * w, false)?;
            let y = DeviceTensor::alloc(dev, &[n, o, oh, ow])?;
            skip_upsample(
                dev,
                &z,
                &y,
                (noise_ptr != 0).then_some((noise_ptr, i64::from(noise_sample_stride), 0)),
            )?;
            return Ok(y);
        }
        let y = DeviceTensor::alloc_as(dev, &[n, o, oh, ow], self.output)?;
        params.y = y.ptr();
        if self.up == 1 {
            self.launch_same(dev, &params, n * h * w, false)?;
        } else if path == ConvPath::Fast {
            let ConvKernel::Up2 {
                kernel,
                channels,
                threads,
            } = self.conv_kernel
            else {
                bail!("modulated conv: an up-sampling 3x3 layer without its kernel");
            };
            let [tile_h, tile_w] = UP2_OUT_TILE;
            let (tiles_y, tiles_x) = (oh.div_ceil(tile_h), ow.div_ceil(tile_w));
            params.tiles_x = tiles_x as i32;
            let dims = LaunchDims {
                grid: [
                    grid_size(tiles_y * tiles_x, GRID_X_MAX)?,
                    grid_size(o.div_ceil(channels), GRID_YZ_MAX)?,
                    grid_size(n, GRID_YZ_MAX)?,
                ],
                block: [threads, 1, 1],
                shared_bytes: 0,
            };
            let _sample_weights = self.sample_weights(dev, &mut params)?;
            dev.launch(kernel, dims, &params)?;
        } else {
            let Some(natural) = &self.reference_weight else {
                bail!("modulated conv: the layer was uploaded without its reference weight");
            };
            if self.input != DType::F32 || self.output != DType::F32 {
                bail!("modulated conv: the unfused up-sampling twin reads and writes f32 activations only");
            }
            let t = DeviceTensor::alloc(dev, &[n, o, 2 * h + 1, 2 * w + 1])?;
            let tparams = ModconvParams {
                y: t.ptr(),
                weight: natural.ptr(),
                ..params
            };
            dev.launch(
                Kernel::ModconvTransposeRef,
                LaunchDims::linear(t.len(), EW_THREADS, EW_MAX_BLOCKS),
                &tparams,
            )?;
            let bparams = ModconvParams {
                x: t.ptr(),
                ..params
            };
            dev.launch(
                Kernel::ModconvBlurRef,
                LaunchDims::linear(y.len(), EW_THREADS, EW_MAX_BLOCKS),
                &bparams,
            )?;
        }
        Ok(y)
    }

    /// The kernel parameters of the layer on `x` (see [`Self::forward`]), checked, with no output yet.
    fn params(
        &self,
        x: &DeviceTensor<D>,
        styles: &DeviceTensor<D>,
        dcoefs: Option<&DeviceTensor<D>>,
        noise: Option<&DeviceNoise<D>>,
    ) -> Result<ModconvParams> {
        let [n, i, h, w] = match x.shape[..] {
            [n, i, h, w] => [n, i, h, w],
            _ => bail!("modulated conv: x must be [N, C, H, W], got {:?}", x.shape),
        };
        if x.dtype() != self.input {
            bail!(
                "modulated conv: x holds {:?} elements, this layer reads {:?}",
                x.dtype(),
                self.input
            );
        }
        if i != self.in_channels || n == 0 || h == 0 || w == 0 {
            bail!(
                "modulated conv: x {:?} does not fit a layer with {} input channels",
                x.shape,
                self.in_channels
            );
        }
        // The kernels address a sample's channels and pixels with 32-bit offsets.
        let (oh, ow) = (h * self.up, w * self.up);
        if i * h * w > i32::MAX as usize || self.out_channels * oh * ow > i32::MAX as usize {
            bail!(
                "modulated conv: one sample of x {:?} or of its output is over 2^31 elements",
                x.shape
            );
        }
        if styles.shape != [n, i] {
            bail!(
                "modulated conv: styles {:?} should be [{n}, {i}]",
                styles.shape
            );
        }
        let dcoefs_ok = match (dcoefs, &self.wsq_t) {
            (Some(d), Some(_)) => d.shape == [n, self.out_channels],
            (None, None) => true,
            _ => false,
        };
        if !dcoefs_ok {
            bail!("modulated conv: demodulation coefficients missing, unexpected or of the wrong shape");
        }
        let (noise_ptr, noise_sample_stride) = match noise {
            None => (0, 0),
            Some(DeviceNoise::Shared(plane)) => {
                if plane.shape != [oh, ow] {
                    bail!(
                        "modulated conv: noise {:?} should be [{oh}, {ow}]",
                        plane.shape
                    );
                }
                (plane.ptr(), 0)
            }
            Some(DeviceNoise::PerSample(planes)) => {
                if planes.shape != [n, 1, oh, ow] {
                    bail!(
                        "modulated conv: per-sample noise {:?} should be [{n}, 1, {oh}, {ow}]",
                        planes.shape
                    );
                }
                (planes.ptr(), (oh * ow) as i32)
            }
        };
        let o = self.out_channels;
        Ok(ModconvParams {
            y: 0,
            x: x.ptr(),
            weight: self.weight.ptr(),
            styles: styles.ptr(),
            dcoefs: dcoefs.map_or(0, |d| d.ptr()),
            noise: noise_ptr,
            bias: self.bias.as_ref().map_or(0, |b| b.ptr()),
            noise_sample_stride,
            batch: n as i32,
            in_channels: i as i32,
            out_channels: o as i32,
            height: h as i32,
            width: w as i32,
            weight_stride: self.weight_stride as i32,
            tiles_x: 0,
            slope: self.slope,
            gain: self.gain,
            clamp: self.clamp,
            y_dtype: dtype_code(self.output),
            rgb: 0,
            rgb_weight: 0,
            rgb_styles: 0,
            rgb_bias: 0,
            rgb_channels: 0,
            rgb_clamp: f32::INFINITY,
            skip: 0,
            weight_sample_stride: 0,
        })
    }

    /// The 32-bit words of one sample's per-sample weights where the layer's kernel takes them: one per packed
    /// word, of which the layer's weight holds 4 floats each (sample_weight_word).
    fn sample_weight_words(&self) -> Option<usize> {
        let kernel = match self.conv_kernel {
            ConvKernel::Same { kernel, .. } | ConvKernel::Up2 { kernel, .. } => kernel,
        };
        takes_sample_weights(kernel).then(|| self.weight.len() / 4)
    }

    /// Device memory the per-sample weights of one image take during this layer's launch (0 where its kernel
    /// reads one weight for the batch).
    pub fn sample_weight_bytes(&self) -> usize {
        self.sample_weight_words().map_or(0, |words| words * 4)
    }

    /// Points `params` at the per-sample weights of its batch where the layer's kernel takes them: each sample's
    /// packed words times its styles (`params.styles`), computed here and returned, to live until the launch.
    fn sample_weights(
        &self,
        dev: &D,
        params: &mut ModconvParams,
    ) -> Result<Option<DeviceTensor<D>>> {
        let Some(words) = self.sample_weight_words() else {
            return Ok(None);
        };
        let n = params.batch as usize;
        let y = DeviceTensor::alloc(dev, &[n, words])?;
        let launch = ModconvSampleWeightsParams {
            y: y.ptr(),
            weight: self.weight.ptr(),
            styles: params.styles,
            words: words as i32,
            batch: n as i32,
            in_channels: self.in_channels as i32,
            bf16: i32::from(self.input == DType::Bf16),
        };
        dev.launch(
            Kernel::ModconvSampleWeights,
            LaunchDims::linear(n * words, EW_THREADS, EW_MAX_BLOCKS),
            &launch,
        )?;
        params.weight = y.ptr();
        params.weight_sample_stride = words as i64;
        Ok(Some(y))
    }

    /// Whether `torgb`, applied to this layer's output, can run in this layer's epilogue
    /// ([`Self::forward_with_torgb`]): a tensor-core same-resolution 3x3 layer with at most 64 outputs (128 on
    /// the sm_90 wgmma kernels), followed by a 1x1 ToRGB (see `rgb_weight`) that reads them.
    pub fn can_fuse_torgb(&self, torgb: &DeviceConvLayer<D>) -> bool {
        matches!(self.conv_kernel, ConvKernel::Same { torgb: Some(_), .. })
            && self.up == 1
            && torgb.rgb_weight.is_some()
            && torgb.in_channels == self.out_channels
            && torgb.input == self.output
    }

    /// [`Self::forward`] (same resolution) that also computes `torgb.layer` on its output, with `torgb.styles
    /// [N, O]`, in the same kernel, from the output as stored: returns `(y, rgb)`, `rgb [N, torgb's outputs, H,
    /// W]` f32, plus the up-sampled `torgb.skip` if given (see [`Self::forward_torgb`]). `y` (`None` unless
    /// `torgb.keep_conv_output`) is bit for bit [`Self::forward`]'s; rgb, the same either way, differs from
    /// `torgb.forward(y)` by that one's rounding of its inputs to the mode's type and by summation order. Needs
    /// [`Self::can_fuse_torgb`].
    pub fn forward_with_torgb(
        &self,
        dev: &D,
        x: &DeviceTensor<D>,
        styles: &DeviceTensor<D>,
        dcoefs: Option<&DeviceTensor<D>>,
        noise: Option<DeviceNoise<D>>,
        torgb: FusedToRgb<D>,
    ) -> Result<(Option<DeviceTensor<D>>, DeviceTensor<D>)> {
        let (Some(rgb_weight), true) = (&torgb.layer.rgb_weight, self.can_fuse_torgb(torgb.layer))
        else {
            bail!("modulated conv: this ToRGB cannot be fused into this layer");
        };
        let mut params = self.params(x, styles, dcoefs, noise.as_ref())?;
        let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3]);
        if torgb.styles.shape != [n, self.out_channels] {
            bail!(
                "modulated conv: ToRGB styles {:?} should be [{n}, {}]",
                torgb.styles.shape,
                self.out_channels
            );
        }
        let c = torgb.layer.out_channels;
        let y = if torgb.keep_conv_output {
            Some(DeviceTensor::alloc_as(
                dev,
                &[n, self.out_channels, h, w],
                self.output,
            )?)
        } else {
            None
        };
        let rgb = DeviceTensor::alloc(dev, &[n, c, h, w])?;
        params.y = y.as_ref().map_or(0, |y| y.ptr());
        params.rgb = rgb.ptr();
        params.rgb_weight = rgb_weight.ptr();
        params.rgb_styles = torgb.styles.ptr();
        params.rgb_bias = torgb.layer.bias.as_ref().map_or(0, |b| b.ptr());
        params.rgb_channels = c as i32;
        params.rgb_clamp = torgb.layer.clamp;
        params.skip = skip_ptr(torgb.skip, [n, c, h, w])?;
        self.launch_same(dev, &params, n * h * w, true)?;
        Ok((y, rgb))
    }

    /// Whether [`Self::forward_torgb`] can add a skip image: a same-resolution 1x1 layer with f32 output.
    pub fn takes_skip(&self) -> bool {
        self.kernel == 1 && self.up == 1 && self.output == DType::F32
    }

    /// A ToRGB layer (no demodulation, no noise) on `x`, plus the previous block's image `skip [N, O, H/2, W/2]`
    /// up-sampled (`upfirdn2d(up=2)` with the [1,3,3,1] filter, as [`skip_upsample`]) if given: StyleGAN2's
    /// `img = upsample(img) + torgb(x)` in one kernel, bit for bit the [`skip_upsample`] of `skip` with this
    /// layer's [`Self::forward`] as its addend. A skip image needs [`Self::takes_skip`].
    pub fn forward_torgb(
        &self,
        dev: &D,
        x: &DeviceTensor<D>,
        styles: &DeviceTensor<D>,
        skip: Option<&DeviceTensor<D>>,
    ) -> Result<DeviceTensor<D>> {
        let Some(skip) = skip else {
            return self.forward(dev, x, styles, None, None, ConvPath::Fast);
        };
        if !self.takes_skip() {
            bail!("modulated conv: only a same-resolution 1x1 layer with f32 output adds a skip image");
        }
        let mut params = self.params(x, styles, None, None)?;
        let [n, o, h, w] = [x.shape[0], self.out_channels, x.shape[2], x.shape[3]];
        params.skip = skip_ptr(Some(skip), [n, o, h, w])?;
        let y = DeviceTensor::alloc(dev, &[n, o, h, w])?;
        params.y = y.ptr();
        self.launch_same(dev, &params, n * h * w, false)?;
        Ok(y)
    }

    /// Launches the same-resolution kernel, or with `fused_torgb` its fused-ToRGB variant, on the layer's
    /// per-sample weights where it takes them.
    fn launch_same(
        &self,
        dev: &D,
        params: &ModconvParams,
        pixels: usize,
        fused_torgb: bool,
    ) -> Result<()> {
        let ConvKernel::Same {
            kernel,
            torgb,
            tiling,
            threads,
            shared_bytes,
        } = self.conv_kernel
        else {
            bail!("modulated conv: a same-resolution launch on an up-sampling 3x3 layer");
        };
        let kernel = match (fused_torgb, torgb) {
            (false, _) => kernel,
            (true, Some(torgb)) => torgb,
            (true, None) => bail!("modulated conv: this layer has no fused-ToRGB kernel"),
        };
        let (blocks, bn, samples) = match tiling {
            SameTiling::Flat([bm, bn]) => (pixels.div_ceil(bm), bn, 1),
            SameTiling::Rect(shape) => {
                let (h, w) = (params.height as usize, params.width as usize);
                let per_sample = h.div_ceil(shape.rect[0]) * w.div_ceil(shape.rect[1]);
                (per_sample, shape.channels, params.batch as usize)
            }
            SameTiling::Run(run) => {
                let per_sample = (params.height * params.width) as usize;
                (per_sample.div_ceil(run), FEW_OUTPUTS, params.batch as usize)
            }
        };
        let dims = LaunchDims {
            grid: [
                grid_size(blocks, GRID_X_MAX)?,
                grid_size(self.out_channels.div_ceil(bn), GRID_YZ_MAX)?,
                grid_size(samples, GRID_YZ_MAX)?,
            ],
            block: [threads, 1, 1],
            shared_bytes,
        };
        let mut params = *params;
        let _sample_weights = self.sample_weights(dev, &mut params)?;
        dev.launch(kernel, dims, &params)
    }
}

/// `y = upsample2x(x) + addend` for `x [N, C, H, W]`, `y [N, C, 2H, 2W]`; the addend is
/// `(pointer, sample stride, channel stride)` (0 strides broadcast), read at `b * ss + c * cs + pixel`.
pub fn skip_upsample<D: Device>(
    dev: &D,
    x: &DeviceTensor<D>,
    y: &DeviceTensor<D>,
    addend: Option<(u64, i64, i64)>,
) -> Result<()> {
    let [n, c, h, w] = match x.shape[..] {
        [n, c, h, w] => [n, c, h, w],
        _ => bail!(
            "skip up-sampling: x must be [N, C, H, W], got {:?}",
            x.shape
        ),
    };
    if y.shape != [n, c, 2 * h, 2 * w] {
        bail!(
            "skip up-sampling: output {:?} should be [{n}, {c}, {}, {}]",
            y.shape,
            2 * h,
            2 * w
        );
    }
    let (addend, sample_stride, channel_stride) = addend.unwrap_or((0, 0, 0));
    let params = SkipUpsampleParams {
        y: y.ptr(),
        x: x.ptr(),
        addend,
        addend_sample_stride: sample_stride,
        addend_channel_stride: channel_stride,
        batch: n as i32,
        channels: c as i32,
        height: h as i32,
        width: w as i32,
    };
    dev.launch(
        Kernel::SkipUpsample,
        LaunchDims::linear(y.len(), EW_THREADS, EW_MAX_BLOCKS),
        &params,
    )
}

/// `upsample2x(skip) + addend` for `skip [N, C, H, W]` and an f32 `addend [N, C, 2H, 2W]`: StyleGAN2's
/// `img = upsample(img) + torgb(x)` as its own kernel, the twin of `ModconvParams::skip` (traced renders, tests).
pub fn skip_upsample_plus<D: Device>(
    dev: &D,
    skip: &DeviceTensor<D>,
    addend: &DeviceTensor<D>,
) -> Result<DeviceTensor<D>> {
    if addend.dtype() != DType::F32 || addend.shape.len() != 4 {
        bail!(
            "skip up-sampling: the addend must be [N, C, H, W] f32, got {:?} {:?}",
            addend.shape,
            addend.dtype()
        );
    }
    // skip_upsample checks that the sum (the addend's shape) is twice the skip image.
    let sum = DeviceTensor::alloc(dev, &addend.shape)?;
    let plane = (addend.shape[2] * addend.shape[3]) as i64;
    let channels = addend.shape[1] as i64;
    skip_upsample(
        dev,
        skip,
        &sum,
        Some((addend.ptr(), channels * plane, plane)),
    )?;
    Ok(sum)
}

/// The pointer for `ModconvParams::skip`: a skip image for an f32 output `[N, C, H, W]` must be `[N, C, H/2, W/2]`
/// f32 (H and W even).
fn skip_ptr<D: Device>(skip: Option<&DeviceTensor<D>>, [n, c, h, w]: [usize; 4]) -> Result<u64> {
    let Some(skip) = skip else { return Ok(0) };
    if h % 2 != 0 || w % 2 != 0 || skip.shape != [n, c, h / 2, w / 2] || skip.dtype() != DType::F32
    {
        bail!(
            "modulated conv: a skip image {:?} ({:?}) does not fit an output [{n}, {c}, {h}, {w}]: it should be \
             [{n}, {c}, {}, {}] f32",
            skip.shape,
            skip.dtype(),
            h / 2,
            w / 2
        );
    }
    Ok(skip.ptr())
}

/// The kernels' code for a [`DType`] (`enum DType` of `kernels/params.h`).
fn dtype_code(dtype: DType) -> i32 {
    match dtype {
        DType::F32 => DTYPE_F32,
        DType::F16 => DTYPE_F16,
        DType::Bf16 => DTYPE_BF16,
    }
}

fn upload<D: Device>(dev: &D, shape: Vec<usize>, data: Vec<f32>) -> Result<DeviceTensor<D>> {
    DeviceTensor::upload(dev, &Tensor::new(shape, data)?)
}

/// Grid limits: x up to 2^31 - 1 blocks, y and z up to 65535.
const GRID_X_MAX: usize = (1 << 31) - 1;
const GRID_YZ_MAX: usize = 65535;

fn grid_size(blocks: usize, limit: usize) -> Result<u32> {
    if blocks > limit {
        bail!("modulated conv: {blocks} blocks along one grid axis is more than the device allows ({limit})");
    }
    Ok(blocks as u32)
}

/// `[K rounded up to 16][O rounded up to the tile's channels]`: row `k` holds `W[o, k]` (`k = i k k + tap`), zeros
/// past the ends.
fn pack_same(w: &[f32], o: usize, k: usize, tile_channels: usize) -> (Vec<f32>, usize) {
    let (rows, cols) = (
        k.next_multiple_of(SAME_K_ALIGN),
        o.next_multiple_of(tile_channels),
    );
    let mut packed = vec![0.0f32; rows * cols];
    for oc in 0..o {
        for (d, &v) in w[oc * k..(oc + 1) * k].iter().enumerate() {
            packed[d * cols + oc] = v;
        }
    }
    (packed, cols)
}

/// `[I rounded up to 16][O rounded up to 8][12]`: the 9 taps of `W[o, i]` then 3 zeros.
fn pack_up2(w: &[f32], o: usize, i: usize) -> (Vec<f32>, usize) {
    let stride = o.next_multiple_of(UP2_CH) * UP2_TAPS;
    let mut packed = vec![0.0f32; i.next_multiple_of(UP2_BK) * stride];
    for oc in 0..o {
        for ic in 0..i {
            let taps = &w[(oc * i + ic) * 9..][..9];
            packed[ic * stride + oc * UP2_TAPS..][..9].copy_from_slice(taps);
        }
    }
    (packed, stride)
}

/// Elements per 32-bit word of the tensor-core packings: 1 (tf32) or 2 (an f16/bf16 pair).
fn per_word(precision: Precision) -> usize {
    if precision == Precision::Tf32 {
        1
    } else {
        2
    }
}

/// One half of a packed word: its weight (zero in the packing's padding) and input channel (in range also there).
#[derive(Clone, Copy, Debug)]
struct Half {
    weight: f32,
    channel: usize,
}

/// The packed word of a per-sample-weight layer before the styles (`ModconvSampleWeightsParams`): both halves'
/// weights, then their input channels as u32 bits.
fn sample_weight_word(lo: Half, hi: Half) -> [f32; 4] {
    [
        lo.weight,
        hi.weight,
        f32::from_bits(lo.channel as u32),
        f32::from_bits(hi.channel as u32),
    ]
}

/// One tensor-core word, stored as the f32 with its bits: `lo` as tf32 (round to nearest, ties away, as
/// `cvt.rna`), or `lo` (low half) and `hi` as f16/bf16 (round to nearest even, as `cvt`).
fn word(precision: Precision, lo: f32, hi: f32) -> f32 {
    let bits = match precision {
        Precision::Fp32 => lo.to_bits(),
        Precision::Tf32 => tf32_rna_bits(lo),
        Precision::Fp16 => {
            u32::from(half::f16::from_f32(lo).to_bits())
                | (u32::from(half::f16::from_f32(hi).to_bits()) << 16)
        }
        Precision::Bf16 => {
            u32::from(half::bf16::from_f32(lo).to_bits())
                | (u32::from(half::bf16::from_f32(hi).to_bits()) << 16)
        }
    };
    f32::from_bits(bits)
}

/// The tensor-core packing of `kernels/modconv_tc.cu`'s same-resolution kernels, one K stage (a tap of a chunk of
/// 16 channel words) after another, each n-major for ldmatrix: 32-bit words `[chunks * taps][cols][16]` with
/// `cols` (returned as the stride) `O` rounded up to `block_channels`; word `w` of channel `o` in stage
/// `chunk * taps + tap` holds `W[o, c, tap]` for `c = 16 chunk + w` (tf32) or the pair `c = 2 (16 chunk + w)`,
/// `c + 1` (f16/bf16), zeros past the ends.
fn pack_same_words<T: Copy + Default>(
    w: &[f32],
    o: usize,
    i: usize,
    taps: usize,
    block_channels: usize,
    per_word: usize,
    word: impl Fn(Half, Half) -> T,
) -> (Vec<T>, usize) {
    let chunks = i.div_ceil(per_word * TC_STAGE_WORDS);
    let cols = o.next_multiple_of(block_channels);
    let mut packed = vec![T::default(); chunks * taps * cols * TC_STAGE_WORDS];
    let at = |oc: usize, ic: usize, tap: usize| Half {
        weight: if ic < i {
            w[(oc * i + ic) * taps + tap]
        } else {
            0.0
        },
        channel: ic.min(i - 1),
    };
    for oc in 0..o {
        for chunk in 0..chunks {
            for tap in 0..taps {
                let stage = chunk * taps + tap;
                for word_index in 0..TC_STAGE_WORDS {
                    let ic = (chunk * TC_STAGE_WORDS + word_index) * per_word;
                    packed[(stage * cols + oc) * TC_STAGE_WORDS + word_index] =
                        word(at(oc, ic, tap), at(oc, ic + 1, tap));
                }
            }
        }
    }
    (packed, cols)
}

/// The packings of `kernels/modconv_wgmma.cu`: [`pack_same_words`] (3x3, 128-channel blocks) or
/// [`pack_up2_words`], `words [stages][cols][16]`, with each stage's 16 words per column regrouped
/// channel-group-major, `[stages][4][cols][4]`, so that a block's weight tile is wgmma's core matrices (8 columns x
/// 4 words each) as they lie in memory.
fn wgmma_groups<T: Copy + Default>(words: &[T], cols: usize) -> Vec<T> {
    const _: () = assert!(UP2_TC_STAGE_WORDS == TC_STAGE_WORDS);
    let groups = TC_STAGE_WORDS / WGMMA_GROUP_WORDS;
    let mut packed = vec![T::default(); words.len()];
    for (row, stage_words) in words.chunks(TC_STAGE_WORDS).enumerate() {
        let (stage, col) = (row / cols, row % cols);
        for (g, group) in stage_words.chunks(WGMMA_GROUP_WORDS).enumerate() {
            let at = ((stage * groups + g) * cols + col) * WGMMA_GROUP_WORDS;
            packed[at..at + WGMMA_GROUP_WORDS].copy_from_slice(group);
        }
    }
    packed
}

/// The packing of `kernels/modconv_tc.cu`'s up-sampling kernels, one K stage of 16 words after another, n-major
/// for ldmatrix: 32-bit words `[stages][cols][16]` with `cols` (returned as the stride) `O` rounded up to 16, times
/// 9. Each block of 16 output channels owns 144 consecutive columns ordered (half, tap, c) for `o = 16 block + 8
/// half + c`, so a warp's 8 channels are tap-major. K is aligned to its end (the kernel's stage 0 is the partial
/// one): word `w` of stage `s` holds `W[o, c, tap]` for `c = 16 s + w - pad` (tf32) or the pair `c = 2 (16 s + w) -
/// pad`, `c + 1` (f16/bf16), where `pad` rounds `I` up to whole stages; zeros outside `0..I`.
fn pack_up2_words<T: Copy + Default>(
    w: &[f32],
    o: usize,
    i: usize,
    per_word: usize,
    word: impl Fn(Half, Half) -> T,
) -> (Vec<T>, usize) {
    let stage_channels = per_word * UP2_TC_STAGE_WORDS;
    let stages = i.div_ceil(stage_channels);
    let pad = stages * stage_channels - i;
    let cols = o.next_multiple_of(UP2_TC_CH) * 9;
    let mut packed = vec![T::default(); stages * cols * UP2_TC_STAGE_WORDS];
    for oc in 0..o {
        let (block, half, c) = (oc / UP2_TC_CH, oc % UP2_TC_CH / 8, oc % 8);
        for tap in 0..9 {
            let col = ((block * 2 + half) * 9 + tap) * 8 + c;
            // Channel `k` of the end-aligned K (a zero weight in the padding).
            let at = |k: usize| Half {
                weight: match k.checked_sub(pad) {
                    Some(ic) if ic < i => w[(oc * i + ic) * 9 + tap],
                    _ => 0.0,
                },
                channel: k.saturating_sub(pad).min(i - 1),
            };
            for stage in 0..stages {
                for word_index in 0..UP2_TC_STAGE_WORDS {
                    let k = (stage * UP2_TC_STAGE_WORDS + word_index) * per_word;
                    packed[(stage * cols + col) * UP2_TC_STAGE_WORDS + word_index] =
                        word(at(k), at(k + 1));
                }
            }
        }
    }
    (packed, cols)
}

/// `cvt.rna.tf32.f32`: round to nearest, ties away from zero, low 13 bits zero; NaN becomes the canonical NaN.
fn tf32_rna_bits(v: f32) -> u32 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return 0x7fff_ffff;
    }
    u.wrapping_add(0x1000) & 0xffff_e000
}

/// The power of two that brings the largest weight magnitude into [0.5, 1) for an fp16 layer that demodulates
/// (NVlabs normalises the weights of its fp16 layers likewise). The demodulated product is invariant under it
/// (the coefficients come from the scaled weight, so only the 1e-8 in their rsqrt sees the scale), and an exact
/// power of two changes no mantissa: it keeps the staged weights O(1), clear of f16's subnormals (below 2^-14)
/// where small real-network weights (~1e-2, gain 1/sqrt(fan_in) applied) would lose bits. Layers that do not
/// demodulate keep their scale: nothing would undo it.
fn fp16_weight_scale(precision: Precision, demodulate: bool, w: &[f32]) -> Option<f32> {
    let max = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if precision != Precision::Fp16 || !demodulate || max == 0.0 || !max.is_finite() {
        return None;
    }
    // max = f * 2^e with f in [0.5, 1) (e from the exponent bits; a subnormal max just gets the largest scale).
    let e = ((max.to_bits() >> 23) & 0xff) as i32 - 126;
    Some(2f32.powi(-e.clamp(-126, 126)))
}
