//! The fast CPU modulated convolution: one StyleGAN2 synthesis layer (modulate, convolve, demodulate, noise,
//! bias, activation, clamp) for a whole batch, as GEMMs on one shared weight.
//!
//! Per sample b, `conv(x_b, W * s_b) = conv(x_b * s_b, W)`, so the weight is never copied per sample: the style
//! scales the input channels while they are gathered into a cache-sized im2col tile (prologue), one GEMM per tile
//! (M = pixels, N = C_out, K = C_in k k) does the convolution, and the demodulation, noise, bias, activation and
//! clamp are applied to the tile while it is still in cache (epilogue). The demodulation coefficients come from
//! a tiny GEMM `d^2 = (s^2) @ (sum_k (gW)^2)^T`.
//!
//! Up-sampling layers run the stride-2 transposed convolution at input resolution (a GEMM with K = C_in, N =
//! k k C_out whose results are scattered to the (2H+k-2)^2 intermediate), then the separable [1,3,3,1] blur
//! (gain 4), then the epilogue. This is the same multiply-add count as a k x k conv at input resolution; folding
//! the blur into a 6x6 kernel would quadruple it.
//!
//! 3x3 layers without up-sampling use Winograd F(2x2, 3x3) instead of im2col (`winograd`): 16 instead of 36
//! multiply-adds per 2x2 output tile; the im2col GEMM remains for the other kernels (ToRGB's 1x1).
//!
//! The packed weights depend only on the weight, its gain and `up`: [`ModConvLayer::pack`] builds them once (the
//! generator does so per network) and [`ModConvLayer::forward_packed`] uses them.

use crate::bail;
use crate::cpu::microkernel::{gemm_packed, MR, NR};
use crate::cpu::ops::Act;
use crate::error::Result;
use crate::model::{LayerKind, Noise, SynthesisLayer};
use crate::tensor::Tensor;
use gemm::Parallelism;
use rayon::prelude::*;

mod winograd;

/// Floats in a work item's accumulator tile (output rows x pixels): with the packed B chunk it stays in L2.
const ACC_FLOATS: usize = 1 << 15;
/// Depth (K) of one packed chunk: the A micro-panel (MR x KC) stays in L1, a B chunk (KC x tile) in L2.
const KC: usize = 256;
/// Pixels per up=1 tile, and about as many per up=2 band of input rows.
const MIN_TILE_PIXELS: usize = 128;
const MAX_TILE_PIXELS: usize = 256;

/// One modulated convolution layer with its fused epilogue, with the semantics of NVlabs `SynthesisLayer` /
/// `ToRGBLayer`: `y = clamp(act(modconv(x, W * weight_gain, s) + noise * strength + bias) * act_gain)`.
///
/// The convolution uses padding `k / 2`; `up == 1` is a cross-correlation (`flip_weight = true`), `up == 2` is a
/// stride-2 transposed convolution with the unflipped weight followed by the [1,3,3,1] filter, as in
/// `conv2d_resample` with `flip_weight = false`.
/// The noise a layer adds.
#[derive(Clone, Copy, Debug)]
pub enum NoiseInput<'a> {
    /// One plane `[H', W']` times its strength, shared by every sample (the stored buffers).
    Shared(&'a Noise),
    /// One plane per sample `[N, 1, H', W']`, already scaled (random noise).
    PerSample(&'a Tensor),
}

#[derive(Clone, Copy, Debug)]
pub struct ModConvLayer<'a> {
    /// Raw `[O, I, k, k]` weight, k odd.
    pub weight: &'a Tensor,
    pub weight_gain: f32,
    pub demodulate: bool,
    /// 1 or 2.
    pub up: usize,
    /// Added after demodulation, at the output resolution.
    pub noise: Option<NoiseInput<'a>>,
    /// `[O]`.
    pub bias: &'a [f32],
    pub act: Act,
    /// Multiplies the activation output (sqrt 2 for lrelu layers, 1 for ToRGB).
    pub act_gain: f32,
    /// Clamp to `[-clamp, clamp]` after the gain.
    pub clamp: Option<f32>,
}

impl<'a> ModConvLayer<'a> {
    /// The layer as the generator runs it: convs are lrelu 0.2 with gain sqrt 2, ToRGB is linear with gain 1.
    pub fn from_synthesis(layer: &'a SynthesisLayer) -> Self {
        let act = match layer.kind {
            LayerKind::Conv => Act::LRELU,
            LayerKind::ToRgb => Act::Linear,
        };
        ModConvLayer {
            weight: &layer.weight,
            weight_gain: layer.weight_gain,
            demodulate: layer.demodulate,
            up: layer.up,
            noise: layer.noise.as_ref().map(NoiseInput::Shared),
            bias: &layer.bias,
            act,
            act_gain: act.default_gain(),
            clamp: layer.clamp,
        }
    }

    /// Run the layer on `x [N, I, H, W]` with per-sample `styles [N, I]`; returns `[N, O, up H, up W]`.
    /// Work is spread over rayon's current pool. Packs the weights first; see [`Self::forward_packed`].
    pub fn forward(&self, x: &Tensor, styles: &Tensor) -> Result<Tensor> {
        self.forward_packed(&self.pack()?, x, styles)
    }

    /// The layer's weights (with the gain) packed for [`Self::forward_packed`].
    pub fn pack(&self) -> Result<PackedWeights> {
        let [o, i, k] = self.weight_dims()?;
        if self.up != 1 && self.up != 2 {
            bail!("modulated conv: up must be 1 or 2, got {}", self.up);
        }
        let (kk, gain) = (k * k, self.weight_gain);
        let w = &self.weight.data;
        let gemm = if self.up == 2 {
            // Row o k k + t of the GEMM is tap t of output channel o, so a channel chunk is a contiguous row range.
            GemmWeights::Transposed(PackedA::new(o * kk, i, |row, ic| {
                let (oc, t) = (row / kk, row % kk);
                w[(oc * i + ic) * kk + t] * gain
            }))
        } else if k == 3 {
            GemmWeights::Winograd(winograd::transform_weight(w, o, i, gain))
        } else {
            GemmWeights::Im2col(PackedA::new(o, i * kk, |oc, d| w[oc * i * kk + d] * gain))
        };
        let tap_energy = w
            .chunks(kk)
            .map(|taps| taps.iter().map(|v| v * v).sum::<f32>() * gain * gain)
            .collect();
        Ok(PackedWeights {
            shape: self.weight.shape.clone(),
            up: self.up,
            tap_energy,
            gemm,
        })
    }

    /// [`Self::forward`] with weights from [`Self::pack`] on this layer's weight, gain and `up`.
    pub fn forward_packed(
        &self,
        packed: &PackedWeights,
        x: &Tensor,
        styles: &Tensor,
    ) -> Result<Tensor> {
        let g = self.check(x, styles)?;
        if packed.shape != self.weight.shape || packed.up != self.up {
            bail!(
                "modulated conv: weights packed for {:?} up={}, layer has {:?} up={}",
                packed.shape,
                packed.up,
                self.weight.shape,
                self.up
            );
        }
        let dcoefs = self.dcoefs(&g, &packed.tap_energy, styles);
        let mut out = vec![0.0f32; g.n * g.o * g.oh * g.ow];
        match &packed.gemm {
            GemmWeights::Winograd(u) => {
                winograd::forward(self, &g, u, &x.data, &styles.data, &dcoefs, &mut out)
            }
            GemmWeights::Im2col(a) => self.forward_same(&g, a, x, styles, &dcoefs, &mut out),
            GemmWeights::Transposed(a) => self.forward_up2(&g, a, x, styles, &dcoefs, &mut out),
        }
        Tensor::new(vec![g.n, g.o, g.oh, g.ow], out)
    }

    /// `[O, I, k]` of the weight, which must be `[O, I, k, k]` with k odd.
    fn weight_dims(&self) -> Result<[usize; 3]> {
        let [o, wi, kh, kw] = match self.weight.shape[..] {
            [o, wi, kh, kw] => [o, wi, kh, kw],
            _ => bail!(
                "modulated conv: weight must be [O, I, k, k], got {:?}",
                self.weight.shape
            ),
        };
        if kh != kw || kh % 2 == 0 {
            bail!(
                "modulated conv: weight {:?} needs an odd square kernel",
                self.weight.shape
            );
        }
        Ok([o, wi, kh])
    }

    fn check(&self, x: &Tensor, styles: &Tensor) -> Result<Geometry> {
        let [n, i, h, w] = match x.shape[..] {
            [n, i, h, w] => [n, i, h, w],
            _ => bail!("modulated conv: x must be [N, C, H, W], got {:?}", x.shape),
        };
        let [o, wi, k] = self.weight_dims()?;
        if wi != i {
            bail!(
                "modulated conv: weight {:?} needs {i} input channels",
                self.weight.shape
            );
        }
        if styles.shape != [n, i] {
            bail!(
                "modulated conv: styles {:?} should be [{n}, {i}]",
                styles.shape
            );
        }
        if n == 0 || i == 0 || h == 0 || w == 0 || o == 0 {
            bail!("modulated conv: empty input {:?} or weight", x.shape);
        }
        if self.up != 1 && self.up != 2 {
            bail!("modulated conv: up must be 1 or 2, got {}", self.up);
        }
        if self.bias.len() != o {
            bail!(
                "modulated conv: {} bias values for {o} output channels",
                self.bias.len()
            );
        }
        let (oh, ow) = (h * self.up, w * self.up);
        match self.noise {
            Some(NoiseInput::Shared(noise)) if noise.buffer.shape != [oh, ow] => bail!(
                "modulated conv: noise {:?} should be [{oh}, {ow}]",
                noise.buffer.shape
            ),
            Some(NoiseInput::PerSample(t)) if t.shape != [n, 1, oh, ow] => bail!(
                "modulated conv: per-sample noise {:?} should be [{n}, 1, {oh}, {ow}]",
                t.shape
            ),
            _ => {}
        }
        Ok(Geometry {
            n,
            i,
            h,
            w,
            o,
            k,
            oh,
            ow,
        })
    }

    /// `d[b, o] = rsqrt(sum_i s[b,i]^2 * tap_energy[o, i] + 1e-8)`, or all ones without demodulation.
    fn dcoefs(&self, g: &Geometry, tap_energy: &[f32], styles: &Tensor) -> Vec<f32> {
        if !self.demodulate {
            return vec![1.0; g.n * g.o];
        }
        let s2: Vec<f32> = styles.data.iter().map(|s| s * s).collect(); // [N, I]
        let mut d = vec![0.0f32; g.n * g.o];
        matmul(
            [g.n, g.o, g.i],
            MatMut {
                data: &mut d,
                rs: g.o,
                cs: 1,
            },
            MatRef {
                data: &s2,
                rs: g.i,
                cs: 1,
            },
            MatRef {
                data: tap_energy,
                rs: 1,
                cs: g.i,
            },
            Parallelism::None,
        );
        d.iter().map(|v| 1.0 / (v + 1e-8).sqrt()).collect()
    }

    /// up = 1 (kernels other than 3x3): the implicit GEMM `out[o, q] = sum_{i,t} gW[o, i, t] (s x)[i, q + shift(t)]` with M = N H W pixels
    /// of the whole batch flattened, so a pixel tile spans samples when the images are small (4x4 .. 16x16).
    /// Work items are (pixel tile, output-channel chunk); each packs its im2col tile (style folded in) in
    /// K chunks that fit L2, accumulates in a private `[O_chunk, tile]` buffer, and runs the epilogue per
    /// (sample, pixel run).
    fn forward_same(
        &self,
        g: &Geometry,
        a: &PackedA,
        x: &Tensor,
        styles: &Tensor,
        dcoefs: &[f32],
        out: &mut [f32],
    ) {
        let (kk, hw) = (g.k * g.k, g.h * g.w);
        let m = g.n * hw;
        // The accumulator tile (O_chunk x pixels) and the packed im2col chunk (kc x pixels) both stay in L2.
        let tile = (ACC_FLOATS / (a.blocks * MR).min(256))
            .clamp(MIN_TILE_PIXELS, MAX_TILE_PIXELS)
            .min(m.next_multiple_of(NR));
        let tiles = m.div_ceil(tile);
        let chunk_blocks = chunk_blocks(a.blocks, (ACC_FLOATS / tile / MR).max(1), tiles);
        let chunks = a.blocks.div_ceil(chunk_blocks);
        let cb = (KC / kk).max(1); // input channels per K chunk
        let out_ptr = SyncPtr(out.as_mut_ptr());
        (0..tiles * chunks).into_par_iter().for_each_init(
            || (Vec::new(), Vec::new()),
            |(bpack, acc): &mut (Vec<f32>, Vec<f32>), item| {
                let (t, c) = (item / chunks, item % chunks);
                let (q0, q1) = (t * tile, ((t + 1) * tile).min(m));
                let panels = (q1 - q0).div_ceil(NR);
                let ldc = panels * NR;
                let (rb0, rb1) = (c * chunk_blocks, ((c + 1) * chunk_blocks).min(a.blocks));
                acc.clear();
                acc.resize((rb1 - rb0) * MR * ldc, 0.0);
                for c0 in (0..g.i).step_by(cb) {
                    let c1 = (c0 + cb).min(g.i);
                    let kc = (c1 - c0) * kk;
                    bpack.resize(panels * kc * NR, 0.0);
                    pack_im2col(g, x, styles, q0, q1, c0, c1, bpack);
                    gemm_packed(
                        kc,
                        a.at(rb0, c0 * kk),
                        a.block_stride(),
                        rb1 - rb0,
                        bpack,
                        panels,
                        acc,
                        ldc,
                    );
                }
                let (o0, o1) = (rb0 * MR, (rb1 * MR).min(g.o));
                for_each_run(q0, q1, hw, |b, pix0, j0, len| {
                    for oc in o0..o1 {
                        let run = &mut acc[(oc - o0) * ldc + j0..][..len];
                        self.epilogue(run, b, oc, dcoefs[b * g.o + oc], pix0);
                        // SAFETY: item (t, c) alone writes pixels [q0, q1) of channels [o0, o1), so these runs
                        // are disjoint across items; `out` outlives the parallel loop.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                out_ptr.get().add((b * g.o + oc) * hw + pix0),
                                len,
                            )
                        };
                        dst.copy_from_slice(run);
                    }
                });
            },
        );
    }

    /// up = 2: the transposed conv at input resolution, `z[o k k + t, p] = sum_i gW[o, i, t] (s x)[i, p]`, as a
    /// packed GEMM per band of input rows, scattered into a rolling window of the (2H+k-2)^2 intermediate
    /// (tap (ky, kx) of input pixel (y, x) lands on (2y + ky, 2x + kx)); output rows whose blur footprint is
    /// complete are blurred and finished by the epilogue straight away, so the intermediate stays in cache.
    /// Work items are (sample, output-channel chunk).
    fn forward_up2(
        &self,
        g: &Geometry,
        a: &PackedA,
        x: &Tensor,
        styles: &Tensor,
        dcoefs: &[f32],
        out: &mut [f32],
    ) {
        let (k, kk, hw) = (g.k, g.k * g.k, g.h * g.w);
        let (th, tw) = (2 * g.h + k - 2, 2 * g.w + k - 2);
        // Blur padding on the transposed-conv output (conv2d_resample's px0 with padding k/2); may be negative.
        let pad = (k / 2) as isize + 3 - k as isize;
        let band = (MIN_TILE_PIXELS.div_ceil(g.w)).clamp(1, g.h); // input rows per band
        let ldc = (band * g.w).next_multiple_of(NR);
        // Chunks start on row-block boundaries: `step` channels are a whole number of MR-row blocks.
        let step = MR / gcd(kk, MR);
        let max_ch = (ACC_FLOATS / (kk * ldc)).max(1).next_multiple_of(step);
        let chunks = g.o.div_ceil(max_ch);
        let chunk_ch = g.o.div_ceil(chunks).next_multiple_of(step);
        let chunks = g.o.div_ceil(chunk_ch);
        // More chunks when the batch alone cannot keep the pool busy (batch 1).
        let (chunk_ch, chunks) = {
            let want = (2 * rayon::current_num_threads()).div_ceil(g.n);
            if chunks < want {
                let ch = g.o.div_ceil(want).next_multiple_of(step);
                (ch, g.o.div_ceil(ch))
            } else {
                (chunk_ch, chunks)
            }
        };
        // Window rows: a band touches 2 band + k - 2 rows, plus the rows kept for the blur's look-back.
        let cap = 2 * band + k + 2;
        let ohw = g.oh * g.ow;
        let out_ptr = SyncPtr(out.as_mut_ptr());
        (0..g.n * chunks).into_par_iter().for_each_init(
            || {
                let cols = ColumnScratch::default();
                (
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    cols,
                    BlurScratch::default(),
                )
            },
            |(bpack, acc, win, cols, scratch), item| {
                let (b, c) = (item / chunks, item % chunks);
                let (o0, o1) = (c * chunk_ch, ((c + 1) * chunk_ch).min(g.o));
                let nch = o1 - o0;
                let (rb0, rb1) = (o0 * kk / MR, (o1 * kk).div_ceil(MR));
                let xb = &x.data[b * g.i * hw..][..g.i * hw];
                let sb = &styles.data[b * g.i..][..g.i];
                win.clear();
                win.resize(nch * cap * tw, 0.0);
                let mut base = 0usize; // intermediate row held in window row 0
                let mut next_out = 0usize; // first output row not yet written
                for y0 in (0..g.h).step_by(band) {
                    let y1 = (y0 + band).min(g.h);
                    let p = (y1 - y0) * g.w;
                    let panels = p.div_ceil(NR);
                    acc.clear();
                    acc.resize((rb1 - rb0) * MR * ldc, 0.0);
                    for c0 in (0..g.i).step_by(KC) {
                        let c1 = (c0 + KC).min(g.i);
                        bpack.resize(panels * (c1 - c0) * NR, 0.0);
                        pack_scaled(&xb[y0 * g.w..], hw, p, &sb[c0..c1], c0, bpack);
                        gemm_packed(
                            c1 - c0,
                            a.at(rb0, c0),
                            a.block_stride(),
                            rb1 - rb0,
                            bpack,
                            panels,
                            acc,
                            ldc,
                        );
                    }
                    let row_off = o0 * kk - rb0 * MR;
                    for ch in 0..nch {
                        let taps = &acc[(row_off + ch * kk) * ldc..][..kk * ldc];
                        let plane = &mut win[ch * cap * tw..][..cap * tw];
                        scatter_taps(taps, ldc, k, g.w, y1 - y0, 2 * y0 - base, plane, tw, cols);
                    }
                    // Intermediate rows below `done` receive nothing more; output row Y reads rows
                    // Y - pad .. Y - pad + 3.
                    let done = if y1 == g.h { th } else { 2 * y1 };
                    let out_end = if y1 == g.h {
                        g.oh
                    } else {
                        (done as isize + pad - 3).clamp(0, g.oh as isize) as usize
                    };
                    if out_end > next_out {
                        for ch in 0..nch {
                            let oc = o0 + ch;
                            let plane = &win[ch * cap * tw..][..cap * tw];
                            // SAFETY: item (b, c) alone writes channels [o0, o1) of sample b, and each row
                            // once; `out` outlives the parallel loop.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(
                                    out_ptr.get().add((b * g.o + oc) * ohw + next_out * g.ow),
                                    (out_end - next_out) * g.ow,
                                )
                            };
                            blur_rows(
                                plane, base, th, tw, pad, next_out, out_end, g.ow, scratch, dst,
                            );
                            self.epilogue(dst, b, oc, dcoefs[b * g.o + oc], next_out * g.ow);
                        }
                        next_out = out_end;
                    }
                    // Slide the window: keep rows from the next output row's first tap on.
                    let new_base = (next_out as isize - pad).max(base as isize) as usize;
                    let shift = (new_base - base).min(cap);
                    if shift > 0 {
                        for plane in win.chunks_mut(cap * tw) {
                            plane.copy_within(shift * tw.., 0);
                            plane[(cap - shift) * tw..].fill(0.0);
                        }
                        base = new_base;
                    }
                }
            },
        );
    }

    /// `v = clamp(act(v * d + noise + bias) * gain)` on `dst`, a run of output pixels of channel `oc` of sample
    /// `b`, starting at flat pixel index `p0`.
    fn epilogue(&self, dst: &mut [f32], b: usize, oc: usize, d: f32, p0: usize) {
        let bias = self.bias[oc];
        let (gain, clamp) = (self.act_gain, self.clamp.unwrap_or(f32::INFINITY));
        let finish = |v: f32| (self.act.apply(v + bias) * gain).clamp(-clamp, clamp);
        match self.noise {
            Some(NoiseInput::Shared(noise)) => {
                let nz = &noise.buffer.data[p0..][..dst.len()];
                for (v, &nv) in dst.iter_mut().zip(nz) {
                    *v = finish(*v * d + nv * noise.strength);
                }
            }
            Some(NoiseInput::PerSample(planes)) => {
                let plane = planes.numel() / planes.shape[0];
                let nz = &planes.data[b * plane + p0..][..dst.len()];
                for (v, &nv) in dst.iter_mut().zip(nz) {
                    *v = finish(*v * d + nv);
                }
            }
            None => dst.iter_mut().for_each(|v| *v = finish(*v * d)),
        }
    }
}

/// A layer's weights prepared for [`ModConvLayer::forward_packed`].
pub struct PackedWeights {
    shape: Vec<usize>,
    up: usize,
    /// `sum_k (gW[o, i, k])^2`, `[O, I]`, for the demodulation coefficients.
    tap_energy: Vec<f32>,
    gemm: GemmWeights,
}

/// The GEMM `A` operand(s) of each convolution algorithm.
enum GemmWeights {
    /// 3x3, up = 1: the Winograd-transformed weight, one `[O, I]` matrix per tile position.
    Winograd(Vec<PackedA>),
    /// Other up = 1 kernels: `[O, I k k]` for the im2col GEMM.
    Im2col(PackedA),
    /// up = 2: `[O k k, I]` for the transposed convolution.
    Transposed(PackedA),
}

/// Shapes of one forward call.
struct Geometry {
    n: usize,
    i: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    oh: usize,
    ow: usize,
}

/// The GEMM's `A` operand (the weights), packed once per call in `MR`-row blocks, each block depth-major
/// (`microkernel` layout); rows past the end are zero.
struct PackedA {
    data: Vec<f32>,
    depth: usize,
    blocks: usize,
}

impl PackedA {
    /// `value(row, d)` for `rows x depth` entries.
    fn new(rows: usize, depth: usize, value: impl Fn(usize, usize) -> f32 + Sync) -> Self {
        let blocks = rows.div_ceil(MR);
        let mut data = vec![0.0f32; blocks * depth * MR];
        data.par_chunks_mut(depth * MR)
            .enumerate()
            .for_each(|(rb, block)| {
                for r in 0..MR.min(rows - rb * MR) {
                    for (d, dst) in block.iter_mut().skip(r).step_by(MR).enumerate() {
                        *dst = value(rb * MR + r, d);
                    }
                }
            });
        PackedA {
            data,
            depth,
            blocks,
        }
    }

    /// From row block `rb`, depth `d` on.
    fn at(&self, rb: usize, d: usize) -> &[f32] {
        &self.data[(rb * self.depth + d) * MR..]
    }

    fn block_stride(&self) -> usize {
        self.depth * MR
    }
}

/// Row blocks per output-channel chunk: as many as the accumulator budget allows, but enough chunks that
/// `tiles x chunks` work items keep every thread busy (small layers at small batch).
fn chunk_blocks(blocks: usize, max_blocks: usize, tiles: usize) -> usize {
    let mut chunks = blocks.div_ceil(max_blocks);
    let want = (2 * rayon::current_num_threads()).div_ceil(tiles);
    chunks = chunks.max(want).min(blocks);
    blocks.div_ceil(chunks)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Calls `f(sample, first pixel in the sample, offset in the tile, length)` for each per-sample run of the
/// flattened pixel range `[q0, q1)` (`hw` pixels per sample).
fn for_each_run(q0: usize, q1: usize, hw: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let mut q = q0;
    while q < q1 {
        let b = q / hw;
        let len = q1.min((b + 1) * hw) - q;
        f(b, q - b * hw, q - q0, len);
        q += len;
    }
}

/// im2col of the flattened pixels `[q0, q1)` (any samples) for input channels `[c0, c1)`, zero padding k/2,
/// each channel scaled by its sample's style, packed as `microkernel` B panels:
/// `bpack[(j / NR) kc NR + d NR + j % NR] = x[b, i, y + ky - k/2, x + kx - k/2] * s[b, i]` for tile pixel j,
/// `d = ((i - c0) k + ky) k + kx`, `kc = (c1 - c0) k k`. Lanes past the last pixel are zeroed.
#[allow(clippy::too_many_arguments)]
fn pack_im2col(
    g: &Geometry,
    x: &Tensor,
    styles: &Tensor,
    q0: usize,
    q1: usize,
    c0: usize,
    c1: usize,
    bpack: &mut [f32],
) {
    let (k, w, h, hw) = (g.k, g.w, g.h, g.h * g.w);
    let pad = (k / 2) as isize;
    let kc = (c1 - c0) * k * k;
    for_each_run(q0, q1, hw, |b, pix0, j0, len| {
        // Pieces that stay within one image row and one panel.
        let (mut pix, mut j) = (pix0, j0);
        while pix < pix0 + len {
            let (y, x0) = (pix / w, pix % w);
            let lane = j % NR;
            let n = (w - x0).min(NR - lane).min(pix0 + len - pix);
            let panel = &mut bpack[(j / NR) * kc * NR + lane..];
            for ic in c0..c1 {
                let s = styles.data[b * g.i + ic];
                let plane = &x.data[(b * g.i + ic) * hw..][..hw];
                for ky in 0..k {
                    let iy = y as isize + ky as isize - pad;
                    let row = (0..h as isize)
                        .contains(&iy)
                        .then(|| &plane[iy as usize * w..][..w]);
                    for kx in 0..k {
                        let d = ((ic - c0) * k + ky) * k + kx;
                        let dst = &mut panel[d * NR..][..n];
                        match row {
                            None => dst.fill(0.0),
                            Some(row) => put_scaled(dst, row, x0 as isize + kx as isize - pad, s),
                        }
                    }
                }
            }
            pix += n;
            j += n;
        }
    });
    let used = q1 - q0;
    if !used.is_multiple_of(NR) {
        let panel = &mut bpack[(used / NR) * kc * NR..][..kc * NR];
        for d in 0..kc {
            panel[d * NR + used % NR..(d + 1) * NR].fill(0.0);
        }
    }
}

/// `dst[j] = row[start + j] * s`, zero where `start + j` falls outside the row.
#[inline]
fn put_scaled(dst: &mut [f32], row: &[f32], start: isize, s: f32) {
    let n = dst.len();
    if start >= 0 && start as usize + n <= row.len() {
        let src = &row[start as usize..][..n];
        if let (Ok(d), Ok(v)) = (
            <&mut [f32; NR]>::try_from(&mut *dst),
            <&[f32; NR]>::try_from(src),
        ) {
            // The common full-panel case, as fixed-size vector code.
            for (d, v) in d.iter_mut().zip(v) {
                *d = v * s;
            }
        } else {
            for (d, v) in dst.iter_mut().zip(src) {
                *d = v * s;
            }
        }
    } else {
        for (j, d) in dst.iter_mut().enumerate() {
            let ix = start + j as isize;
            *d = if (0..row.len() as isize).contains(&ix) {
                row[ix as usize] * s
            } else {
                0.0
            };
        }
    }
}

avx2_twin! {
/// `p` consecutive pixels of channels `c0..c0 + s.len()` (channel planes `hw` apart, `xrows` starting at the
/// first pixel of channel 0), scaled by `s`, packed as `microkernel` B panels of depth `s.len()`; lanes past the
/// last pixel are zeroed.
fn pack_scaled(xrows: &[f32], hw: usize, p: usize, s: &[f32], c0: usize, bpack: &mut [f32]) {
    let kc = s.len();
    for (d, &sc) in s.iter().enumerate() {
        let src = &xrows[(c0 + d) * hw..][..p];
        for (pn, chunk) in src.chunks(NR).enumerate() {
            let dst = &mut bpack[(pn * kc + d) * NR..][..NR];
            for (o, v) in dst.iter_mut().zip(chunk) {
                *o = v * sc;
            }
            dst[chunk.len()..].fill(0.0);
        }
    }
}
}

/// Scratch rows for `scatter_taps`: one kernel row's contributions to the even and the odd columns.
#[derive(Default)]
struct ColumnScratch {
    even: Vec<f32>,
    odd: Vec<f32>,
}

avx2_twin! {
/// Adds the transposed-conv taps of `rows` input rows to the intermediate plane: `taps[t ldc + r w + x]` (tap
/// t = ky k + kx, row r, column x) lands on plane row `row0 + 2 r + ky` (rows `tw` apart), column `2 x + kx`.
/// Per kernel row the taps are first summed into the even and odd columns, then added interleaved, so every
/// pass is contiguous.
#[allow(clippy::too_many_arguments)]
fn scatter_taps(
    taps: &[f32],
    ldc: usize,
    k: usize,
    w: usize,
    rows: usize,
    row0: usize,
    plane: &mut [f32],
    tw: usize,
    cols: &mut ColumnScratch,
) {
    let ColumnScratch { even, odd } = cols;
    for r in 0..rows {
        for ky in 0..k {
            let dst = &mut plane[(row0 + 2 * r + ky) * tw..][..tw];
            even.clear();
            even.resize(tw.div_ceil(2), 0.0);
            odd.clear();
            odd.resize(tw / 2, 0.0);
            for kx in 0..k {
                // Column 2 x + kx is even column x + kx / 2 or odd column x + kx / 2.
                let lane = if kx % 2 == 0 { &mut *even } else { &mut *odd };
                let src = &taps[(ky * k + kx) * ldc + r * w..][..w];
                for (d, &v) in lane[kx / 2..][..w].iter_mut().zip(src) {
                    *d += v;
                }
            }
            for (pair, (&e, &o)) in dst.chunks_exact_mut(2).zip(even.iter().zip(odd.iter())) {
                pair[0] += e;
                pair[1] += o;
            }
            if tw % 2 == 1 {
                dst[tw - 1] += even[tw / 2];
            }
        }
    }
}
}

/// The up-sampling filter: separable [1,3,3,1]/8 per axis, times 2 per axis (gain 4 overall).
const BLUR_TAPS: [f32; 4] = [0.25, 0.75, 0.75, 0.25];

/// Scratch rows for `blur_rows`.
#[derive(Default)]
struct BlurScratch {
    padded: Vec<f32>,
    hpass: Vec<f32>,
}

avx2_twin! {
/// Output rows `[y0, y1)` (width `ow`) of the blur of a `[th, tw]` plane with `BLUR_TAPS` along x then y,
/// padding `pad` on every side (negative crops), into `dst`. `window` holds the plane's rows from `base` on;
/// the rows the output needs must be there. The filter is symmetric, so convolution and correlation coincide.
#[allow(clippy::too_many_arguments)]
fn blur_rows(
    window: &[f32],
    base: usize,
    th: usize,
    tw: usize,
    pad: isize,
    y0: usize,
    y1: usize,
    ow: usize,
    scratch: &mut BlurScratch,
    dst: &mut [f32],
) {
    let j_lo = (y0 as isize - pad).max(0) as usize;
    let j_hi = ((y1 as isize - pad + 3).max(0) as usize).min(th);
    // Horizontal pass over the needed plane rows, on a zero-padded copy so the 4-tap loop vectorises.
    let BlurScratch { padded, hpass } = scratch;
    padded.clear();
    padded.resize(ow + 3, 0.0);
    hpass.clear();
    hpass.resize(j_hi.saturating_sub(j_lo) * ow, 0.0);
    let (i_lo, i_hi) = (
        pad.max(0) as usize,
        ((tw as isize + pad) as usize).min(ow + 3),
    );
    for j in j_lo..j_hi {
        let src = &window[(j - base) * tw..][..tw];
        padded[i_lo..i_hi].copy_from_slice(&src[(i_lo as isize - pad) as usize..][..i_hi - i_lo]);
        let h = &mut hpass[(j - j_lo) * ow..][..ow];
        let [f0, f1, f2, f3] = BLUR_TAPS;
        for ((((o, &a), &b), &c), &d) in h
            .iter_mut()
            .zip(&padded[0..])
            .zip(&padded[1..])
            .zip(&padded[2..])
            .zip(&padded[3..])
        {
            *o = f0 * a + f1 * b + f2 * c + f3 * d;
        }
    }
    for (y, out) in (y0..y1).zip(dst.chunks_mut(ow)) {
        out.fill(0.0);
        for (t, &f) in BLUR_TAPS.iter().enumerate() {
            let j = y as isize + t as isize - pad;
            if j >= j_lo as isize && j < j_hi as isize {
                let h = &hpass[(j as usize - j_lo) * ow..][..ow];
                for (o, &v) in out.iter_mut().zip(h) {
                    *o += v * f;
                }
            }
        }
    }
}
}

/// A raw output pointer shared by work items that write disjoint regions.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: only used for disjoint writes from the work items of one parallel loop.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    // A method (not field access) so closures capture the whole Send + Sync wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

struct MatRef<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

struct MatMut<'a> {
    data: &'a mut [f32],
    rs: usize,
    cs: usize,
}

/// Largest flat index a `rows x cols` strided view touches, plus one.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1) * rs + (cols - 1) * cs + 1
}

/// `dst[m, n] = lhs[m, k] @ rhs[k, n]` (overwrite) through the `gemm` crate, with the views bounds-checked.
fn matmul([m, n, k]: [usize; 3], dst: MatMut, lhs: MatRef, rhs: MatRef, par: Parallelism) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.data.len() >= extent(m, n, dst.rs, dst.cs));
    if k > 0 {
        assert!(lhs.data.len() >= extent(m, k, lhs.rs, lhs.cs));
        assert!(rhs.data.len() >= extent(k, n, rhs.rs, rhs.cs));
    }
    // SAFETY: the asserts above keep every access of the three strided views inside their slices; `dst` is
    // borrowed mutably and does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            false,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
