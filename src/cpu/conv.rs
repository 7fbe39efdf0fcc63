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

use crate::bail;
use crate::cpu::ops::Act;
use crate::error::Result;
use crate::model::{LayerKind, Noise, SynthesisLayer};
use crate::tensor::Tensor;
use gemm::Parallelism;
use rayon::prelude::*;

/// Target size of one im2col (or transposed-conv result) tile, in floats: large enough that the GEMM's
/// per-call weight packing is amortised, small enough to stay in L2/L3.
const TILE_FLOATS: usize = 1 << 20;
/// Aim for at least this many pixels per GEMM so the microkernel runs on full panels.
const MIN_TILE_PIXELS: usize = 512;

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
    /// Work is spread over rayon's current pool.
    pub fn forward(&self, x: &Tensor, styles: &Tensor) -> Result<Tensor> {
        let g = self.check(x, styles)?;
        let gw: Vec<f32> = self
            .weight
            .data
            .iter()
            .map(|&v| v * self.weight_gain)
            .collect();
        let dcoefs = self.dcoefs(&g, &gw, styles);
        let mut out = vec![0.0f32; g.n * g.o * g.oh * g.ow];
        if self.up == 1 {
            self.forward_same(&g, x, styles, &gw, &dcoefs, &mut out);
        } else {
            self.forward_up2(&g, x, styles, &gw, &dcoefs, &mut out);
        }
        Tensor::new(vec![g.n, g.o, g.oh, g.ow], out)
    }

    fn check(&self, x: &Tensor, styles: &Tensor) -> Result<Geometry> {
        let [n, i, h, w] = match x.shape[..] {
            [n, i, h, w] => [n, i, h, w],
            _ => bail!("modulated conv: x must be [N, C, H, W], got {:?}", x.shape),
        };
        let [o, wi, kh, kw] = match self.weight.shape[..] {
            [o, wi, kh, kw] => [o, wi, kh, kw],
            _ => bail!(
                "modulated conv: weight must be [O, I, k, k], got {:?}",
                self.weight.shape
            ),
        };
        if wi != i || kh != kw || kh % 2 == 0 {
            bail!(
                "modulated conv: weight {:?} needs {i} input channels and an odd square kernel",
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
            k: kh,
            oh,
            ow,
        })
    }

    /// `d[b, o] = rsqrt(sum_i s[b,i]^2 * sum_k gW[o,i,k]^2 + 1e-8)`, or all ones without demodulation.
    fn dcoefs(&self, g: &Geometry, gw: &[f32], styles: &Tensor) -> Vec<f32> {
        if !self.demodulate {
            return vec![1.0; g.n * g.o];
        }
        let kk = g.k * g.k;
        let wsq: Vec<f32> = gw
            .chunks(kk)
            .map(|taps| taps.iter().map(|v| v * v).sum())
            .collect(); // [O, I]
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
                data: &wsq,
                rs: 1,
                cs: g.i,
            },
            Parallelism::None,
        );
        d.iter().map(|v| 1.0 / (v + 1e-8).sqrt()).collect()
    }

    /// up = 1: per (sample, row tile) work item, im2col with the style folded in, GEMM, fused epilogue.
    fn forward_same(
        &self,
        g: &Geometry,
        x: &Tensor,
        styles: &Tensor,
        gw: &[f32],
        dcoefs: &[f32],
        out: &mut [f32],
    ) {
        let (kk, hw) = (g.k * g.k, g.h * g.w);
        let kdim = g.i * kk;
        let rows = tile_rows(g.h, g.w, kdim);
        let tiles = g.h.div_ceil(rows);
        let par = gemm_parallelism(g.n * tiles);
        let out_ptr = SyncPtr(out.as_mut_ptr());
        (0..g.n * tiles).into_par_iter().for_each_init(
            || (Vec::new(), Vec::new()),
            |(col, acc): &mut (Vec<f32>, Vec<f32>), item| {
                let (b, t) = (item / tiles, item % tiles);
                let (y0, y1) = (t * rows, ((t + 1) * rows).min(g.h));
                let p = (y1 - y0) * g.w;
                col.resize(kdim * p, 0.0);
                im2col_scaled(
                    g,
                    &x.data[b * g.i * hw..][..g.i * hw],
                    &styles.data[b * g.i..][..g.i],
                    y0,
                    y1,
                    col,
                );
                // The GEMM writes a private [O, P] tile; the epilogue moves it to the output.
                acc.resize(g.o * p, 0.0);
                matmul(
                    [p, g.o, kdim],
                    MatMut {
                        data: acc,
                        rs: 1,
                        cs: p,
                    },
                    MatRef {
                        data: col,
                        rs: 1,
                        cs: p,
                    },
                    MatRef {
                        data: gw,
                        rs: 1,
                        cs: kdim,
                    },
                    par,
                );
                for (oc, tile) in acc.chunks_mut(p).enumerate() {
                    self.epilogue(tile, b, oc, dcoefs[b * g.o + oc], y0 * g.w);
                    // SAFETY: work item (b, t) alone writes pixels [y0*W, y1*W) of each channel of sample b, so
                    // these runs are disjoint across items; `out` outlives the parallel loop.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out_ptr.get().add((b * g.o + oc) * hw + y0 * g.w),
                            p,
                        )
                    };
                    dst.copy_from_slice(tile);
                }
            },
        );
    }

    /// up = 2: per sample, the transposed conv as GEMM tiles scattered into the (2H+k-2)x(2W+k-2) intermediate,
    /// then the separable blur and the epilogue, channel by channel.
    fn forward_up2(
        &self,
        g: &Geometry,
        x: &Tensor,
        styles: &Tensor,
        gw: &[f32],
        dcoefs: &[f32],
        out: &mut [f32],
    ) {
        let (k, kk, hw) = (g.k, g.k * g.k, g.h * g.w);
        // rhs[i, t*O + o] = gW[o, i, t], stored column by column (each column contiguous over i).
        let mut w2 = vec![0.0f32; kk * g.o * g.i];
        for oc in 0..g.o {
            for ic in 0..g.i {
                for t in 0..kk {
                    w2[(t * g.o + oc) * g.i + ic] = gw[(oc * g.i + ic) * kk + t];
                }
            }
        }
        let (th, tw) = (2 * g.h + k - 2, 2 * g.w + k - 2);
        // Blur padding on the transposed-conv output (conv2d_resample's px0 with padding k/2); may be negative.
        let pad = (k / 2) as isize + 3 - k as isize;
        let rows = tile_rows(g.h, g.w, kk * g.o);
        let par = gemm_parallelism(g.n);
        let ohw = g.oh * g.ow;
        out.par_chunks_mut(g.o * ohw)
            .enumerate()
            .for_each(|(b, out_b)| {
                let xb = &x.data[b * g.i * hw..][..g.i * hw];
                let sb = &styles.data[b * g.i..][..g.i];
                let mut inter = vec![0.0f32; g.o * th * tw];
                let mut xs = Vec::new();
                let mut z = Vec::new();
                for y0 in (0..g.h).step_by(rows) {
                    let y1 = (y0 + rows).min(g.h);
                    let p = (y1 - y0) * g.w;
                    // Prologue: this tile of x_b with its channels scaled by s_b.
                    xs.clear();
                    for (ic, &s) in sb.iter().enumerate() {
                        xs.extend(xb[ic * hw + y0 * g.w..][..p].iter().map(|&v| v * s));
                    }
                    z.resize(kk * g.o * p, 0.0);
                    matmul(
                        [p, kk * g.o, g.i],
                        MatMut {
                            data: &mut z,
                            rs: 1,
                            cs: p,
                        },
                        MatRef {
                            data: &xs,
                            rs: 1,
                            cs: p,
                        },
                        MatRef {
                            data: &w2,
                            rs: 1,
                            cs: g.i,
                        },
                        par,
                    );
                    // Scatter: input pixel (y, x) with tap (ky, kx) lands on (2y + ky, 2x + kx).
                    for t in 0..kk {
                        let (ky, kx) = (t / k, t % k);
                        for oc in 0..g.o {
                            let zc = &z[(t * g.o + oc) * p..][..p];
                            let plane = &mut inter[oc * th * tw..][..th * tw];
                            for (r, zrow) in zc.chunks(g.w).enumerate() {
                                let dst = &mut plane[(2 * (y0 + r) + ky) * tw + kx..];
                                for (xi, &v) in zrow.iter().enumerate() {
                                    dst[2 * xi] += v;
                                }
                            }
                        }
                    }
                }
                let mut hpass = vec![0.0f32; th * g.ow];
                for (oc, dst) in out_b.chunks_mut(ohw).enumerate() {
                    let src = &inter[oc * th * tw..][..th * tw];
                    blur_up2(src, th, tw, pad, &mut hpass, dst, g.oh, g.ow);
                    self.epilogue(dst, b, oc, dcoefs[b * g.o + oc], 0);
                }
            });
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

/// Rows of the input per tile so that a tile has at least `MIN_TILE_PIXELS` pixels when the image allows, but a
/// `depth x pixels` tile stays within `TILE_FLOATS`.
fn tile_rows(h: usize, w: usize, depth: usize) -> usize {
    let wanted = MIN_TILE_PIXELS.div_ceil(w);
    let fits = TILE_FLOATS / (depth * w).max(1);
    wanted.min(fits).clamp(1, h)
}

/// Let the GEMM itself use the pool when there are too few work items to keep every thread busy.
fn gemm_parallelism(items: usize) -> Parallelism {
    if items < 2 * rayon::current_num_threads() {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// im2col for input rows `[y0, y1)` of one sample with zero padding k/2, each channel scaled by its style:
/// `col[(i k k + ky k + kx) P + p] = x[i, y + ky - k/2, x + kx - k/2] * s[i]`, `P = (y1 - y0) W`.
fn im2col_scaled(g: &Geometry, xb: &[f32], s: &[f32], y0: usize, y1: usize, col: &mut [f32]) {
    let (k, w, h) = (g.k, g.w, g.h);
    let pad = k / 2;
    let p = (y1 - y0) * w;
    for (ic, &sc) in s.iter().enumerate() {
        let plane = &xb[ic * h * w..][..h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((ic * k + ky) * k + kx) * p..][..p];
                // Output x reads input x + kx - pad; the valid output range avoids the zero border.
                let xlo = pad.saturating_sub(kx);
                let xhi = (w + pad).saturating_sub(kx).min(w);
                for (r, dst) in row.chunks_mut(w).enumerate() {
                    let iy = (y0 + r + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize || xlo >= xhi {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..][..w];
                    dst[..xlo].fill(0.0);
                    dst[xhi..].fill(0.0);
                    let shift = xlo + kx - pad;
                    for (d, &v) in dst[xlo..xhi].iter_mut().zip(&src[shift..]) {
                        *d = v * sc;
                    }
                }
            }
        }
    }
}

/// The up-sampling filter: separable [1,3,3,1]/8 per axis, times 2 per axis (gain 4 overall).
const BLUR_TAPS: [f32; 4] = [0.25, 0.75, 0.75, 0.25];

/// Blur one `[th, tw]` plane with `BLUR_TAPS` along x then y, padding `pad` on every side (negative crops),
/// into `dst [oh, ow]`. `hpass` is scratch of `th * ow` floats.
#[allow(clippy::too_many_arguments)]
fn blur_up2(
    src: &[f32],
    th: usize,
    tw: usize,
    pad: isize,
    hpass: &mut [f32],
    dst: &mut [f32],
    oh: usize,
    ow: usize,
) {
    // The filter is symmetric, so convolution and correlation coincide.
    let tap = |idx: isize, len: usize| (idx >= 0 && (idx as usize) < len).then_some(idx as usize);
    for y in 0..th {
        let row = &src[y * tw..][..tw];
        for x in 0..ow {
            let mut acc = 0.0f32;
            for (t, &f) in BLUR_TAPS.iter().enumerate() {
                if let Some(j) = tap(x as isize + t as isize - pad, tw) {
                    acc += row[j] * f;
                }
            }
            hpass[y * ow + x] = acc;
        }
    }
    for y in 0..oh {
        let out = &mut dst[y * ow..][..ow];
        out.fill(0.0);
        for (t, &f) in BLUR_TAPS.iter().enumerate() {
            if let Some(j) = tap(y as isize + t as isize - pad, th) {
                for (o, &v) in out.iter_mut().zip(&hpass[j * ow..][..ow]) {
                    *o += v * f;
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
