//! Exact float32 reference ops on NCHW tensors, with the semantics of NVlabs' `torch_utils/ops` reference
//! implementations (stylegan2-ada-pytorch). These are deliberately plain loops: every fast path and GPU kernel is
//! tested against them, so they favour being obviously right over being fast.

use crate::bail;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// `[N, C, H, W]` of a 4-D tensor, or an error naming the op.
fn dims4(t: &Tensor, what: &str) -> Result<[usize; 4]> {
    match t.shape[..] {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => bail!("{what}: expected a 4-D tensor, got shape {:?}", t.shape),
    }
}

/// The StyleGAN2 resampling filter `outer([1,3,3,1], [1,3,3,1]) / 64`, `[4, 4]` (NVlabs `setup_filter([1,3,3,1])`).
pub fn filter_1331() -> Tensor {
    let k = [1.0f32, 3.0, 3.0, 1.0];
    let data = k
        .iter()
        .flat_map(|&a| k.iter().map(move |&b| a * b / 64.0))
        .collect();
    Tensor {
        shape: vec![4, 4],
        data,
    }
}

/// Parameters of [`upfirdn2d`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Upfirdn {
    /// Zeros inserted after each pixel: `up - 1`.
    pub up: usize,
    /// Keep every `down`-th output pixel, starting at 0.
    pub down: usize,
    /// `[x0, x1, y0, y1]` = left, right, top, bottom; negative values crop.
    pub pad: [i32; 4],
    /// `false`: true convolution (the filter is flipped); `true`: cross-correlation.
    pub flip_filter: bool,
    /// Overall gain; the filter is scaled by `gain^(f.ndim / 2)`.
    pub gain: f32,
}

impl Default for Upfirdn {
    fn default() -> Self {
        Upfirdn {
            up: 1,
            down: 1,
            pad: [0; 4],
            flip_filter: false,
            gain: 1.0,
        }
    }
}

/// The shape checks of [`upfirdn2d`], shared with its device twin: the output shape `[N, C, out_h, out_w]` of
/// input `x_shape` and filter `f_shape`, or an error saying what does not fit.
pub fn check_upfirdn2d(x_shape: &[usize], f_shape: &[usize], p: &Upfirdn) -> Result<[usize; 4]> {
    let [n, c, h, w] = match x_shape[..] {
        [n, c, h, w] => [n, c, h, w],
        _ => bail!("upfirdn2d: expected a 4-D tensor, got shape {x_shape:?}"),
    };
    if p.up == 0 || p.down == 0 {
        bail!(
            "upfirdn2d: up and down must be at least 1 (got {} and {})",
            p.up,
            p.down
        );
    }
    let (fh, fw) = match f_shape[..] {
        [fh, fw] => (fh, fw),
        [k] => (k, k),
        _ => bail!("upfirdn2d: the filter must be 1-D or 2-D, got shape {f_shape:?}"),
    };
    if fh == 0 || fw == 0 {
        bail!("upfirdn2d: empty filter");
    }
    let [x0, x1, y0, y1] = p.pad.map(i64::from);
    let hp = (h * p.up) as i64 + y0 + y1;
    let wp = (w * p.up) as i64 + x0 + x1;
    if hp < fh as i64 || wp < fw as i64 {
        bail!(
            "upfirdn2d: padded input {hp}x{wp} is smaller than the {fh}x{fw} filter (input {h}x{w}, up {}, pad {:?})",
            p.up,
            p.pad
        );
    }
    let (vh, vw) = (hp as usize - fh + 1, wp as usize - fw + 1);
    Ok([n, c, vh.div_ceil(p.down), vw.div_ceil(p.down)])
}

/// Upsample (zero insertion), pad, FIR filter, downsample, per channel.
///
/// `x` is `[N, C, H, W]`; `f` is a 2-D filter `[fh, fw]` (indexed [y, x]) or a 1-D separable filter `[k]`,
/// applied along x and then along y, each pass scaled by `gain^(1/2)`.
pub fn upfirdn2d(x: &Tensor, f: &Tensor, p: &Upfirdn) -> Result<Tensor> {
    let [n, c, oh, ow] = check_upfirdn2d(&x.shape, &f.shape, p)?;
    let (h, w) = (x.shape[2], x.shape[3]);
    let (fh, fw) = match f.shape[..] {
        [fh, fw] => (fh, fw),
        _ => (f.numel(), f.numel()),
    };
    let [x0, x1, y0, y1] = p.pad.map(i64::from);
    let hp = (h * p.up) as i64 + y0 + y1;
    let wp = (w * p.up) as i64 + x0 + x1;
    let (hp, wp) = (hp as usize, wp as usize);

    // Upsample by zero insertion and pad/crop: padded[py][px] = x[u/up] where u = p - pad0 is a multiple of up.
    let mut padded = vec![0.0f32; n * c * hp * wp];
    for (plane, out) in x.data.chunks(h * w).zip(padded.chunks_mut(hp * wp)) {
        for py in 0..hp {
            let uy = py as i64 - y0;
            if uy < 0 || uy >= (h * p.up) as i64 || uy % p.up as i64 != 0 {
                continue;
            }
            let iy = uy as usize / p.up;
            for px in 0..wp {
                let ux = px as i64 - x0;
                if ux < 0 || ux >= (w * p.up) as i64 || ux % p.up as i64 != 0 {
                    continue;
                }
                out[py * wp + px] = plane[iy * w + ux as usize / p.up];
            }
        }
    }

    // Scale the filter first (as the reference does), then flip it unless flip_filter: a true convolution.
    let scale = p.gain.powf(f.ndim() as f32 / 2.0);
    let mut taps: Vec<f32> = f.data.iter().map(|&v| v * scale).collect();
    if !p.flip_filter {
        taps.reverse(); // reversing the flat [fh, fw] data flips both axes
    }

    // Valid cross-correlation, then keep every down-th pixel.
    let vw = wp - fw + 1;
    let mut out = vec![0.0f32; n * c * oh * ow];
    let d = p.down;
    if f.ndim() == 2 {
        for (src, dst) in padded.chunks(hp * wp).zip(out.chunks_mut(oh * ow)) {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0f32;
                    for ky in 0..fh {
                        for kx in 0..fw {
                            acc += src[(oy * d + ky) * wp + ox * d + kx] * taps[ky * fw + kx];
                        }
                    }
                    dst[oy * ow + ox] = acc;
                }
            }
        }
    } else {
        let k = fw;
        let mut rows = vec![0.0f32; hp * vw];
        for (src, dst) in padded.chunks(hp * wp).zip(out.chunks_mut(oh * ow)) {
            // Pass along x on every row (all of them: the y pass needs them), then along y.
            for y in 0..hp {
                for x in 0..vw {
                    let mut acc = 0.0f32;
                    for t in 0..k {
                        acc += src[y * wp + x + t] * taps[t];
                    }
                    rows[y * vw + x] = acc;
                }
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0f32;
                    for t in 0..k {
                        acc += rows[(oy * d + t) * vw + ox * d] * taps[t];
                    }
                    dst[oy * ow + ox] = acc;
                }
            }
        }
    }
    Tensor::new(vec![n, c, oh, ow], out)
}

/// Activation of [`bias_act`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Linear,
    /// Leaky ReLU: `x` for `x >= 0`, `alpha * x` below.
    Lrelu {
        alpha: f32,
    },
}

impl Act {
    /// StyleGAN2's leaky ReLU, slope 0.2.
    pub const LRELU: Act = Act::Lrelu { alpha: 0.2 };

    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Act::Linear => v,
            Act::Lrelu { alpha } => {
                if v < 0.0 {
                    v * alpha
                } else {
                    v
                }
            }
        }
    }

    /// NVlabs' default gain: sqrt(2) for lrelu, 1 for linear.
    pub fn default_gain(self) -> f32 {
        match self {
            Act::Linear => 1.0,
            Act::Lrelu { .. } => std::f32::consts::SQRT_2,
        }
    }
}

/// Parameters of [`bias_act`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BiasAct {
    /// The dimension of `x` the bias runs along.
    pub dim: usize,
    pub act: Act,
    pub gain: f32,
    /// Clamp to `[-clamp, clamp]` after the gain.
    pub clamp: Option<f32>,
}

impl BiasAct {
    /// Bias along dim 1 with the activation's default gain and no clamp.
    pub fn new(act: Act) -> Self {
        BiasAct {
            dim: 1,
            act,
            gain: act.default_gain(),
            clamp: None,
        }
    }
}

/// The shape checks of [`bias_act`], shared with its device twin.
pub fn check_bias_act(x: &Tensor, b: Option<&[f32]>, p: &BiasAct) -> Result<()> {
    check_bias_act_shape(&x.shape, b.map(<[f32]>::len), p)
}

/// [`check_bias_act`] on shapes: the input's shape and the bias length (`None`: no bias).
pub fn check_bias_act_shape(x_shape: &[usize], bias_len: Option<usize>, p: &BiasAct) -> Result<()> {
    if p.dim >= x_shape.len() {
        bail!("bias_act: dim {} out of range for shape {x_shape:?}", p.dim);
    }
    let channels = x_shape[p.dim];
    if let Some(len) = bias_len {
        if len != channels {
            bail!(
                "bias_act: bias has {len} values, dim {} of shape {x_shape:?} has {channels}",
                p.dim
            );
        }
    }
    Ok(())
}

/// `y = clamp(act(x + b) * gain, -clamp, clamp)` with `b` broadcast along `p.dim`. `b` may be `None` (no bias).
pub fn bias_act(x: &Tensor, b: Option<&[f32]>, p: &BiasAct) -> Result<Tensor> {
    check_bias_act(x, b, p)?;
    let channels = x.shape[p.dim];
    let inner: usize = x.shape[p.dim + 1..].iter().product();
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let v = match b {
                Some(b) => v + b[(i / inner) % channels],
                None => v,
            };
            let v = p.act.apply(v) * p.gain;
            match p.clamp {
                Some(c) => v.clamp(-c, c),
                None => v,
            }
        })
        .collect();
    Tensor::new(x.shape.clone(), data)
}

/// Parameters of [`conv2d`] and [`conv_transpose2d`] (PyTorch semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv {
    pub stride: usize,
    /// `[py, px]`, applied on both sides.
    pub padding: [usize; 2],
    pub groups: usize,
}

impl Default for Conv {
    fn default() -> Self {
        Conv {
            stride: 1,
            padding: [0, 0],
            groups: 1,
        }
    }
}

/// Checks shared by conv2d and conv_transpose2d; returns (N, C, H, W, kh, kw).
fn conv_dims(x: &Tensor, w: &Tensor, p: &Conv, what: &str) -> Result<[usize; 6]> {
    let [n, c, h, wd] = dims4(x, what)?;
    let [_, _, kh, kw] = dims4(w, what)?;
    if p.stride == 0 || p.groups == 0 || c % p.groups != 0 {
        bail!(
            "{what}: stride {} and groups {} must be positive and divide the {c} input channels",
            p.stride,
            p.groups
        );
    }
    Ok([n, c, h, wd, kh, kw])
}

/// `F.conv2d`: cross-correlation of `x [N, C, H, W]` with `w [O, C/groups, kh, kw]`.
pub fn conv2d(x: &Tensor, w: &Tensor, p: &Conv) -> Result<Tensor> {
    let [n, c, h, wd, kh, kw] = conv_dims(x, w, p, "conv2d")?;
    let (o, g) = (w.shape[0], p.groups);
    if w.shape[1] != c / g || o % g != 0 {
        bail!(
            "conv2d: weight {:?} does not fit {c} input channels in {g} groups",
            w.shape
        );
    }
    let [py, px] = p.padding;
    if h + 2 * py < kh || wd + 2 * px < kw {
        bail!("conv2d: padded input smaller than the {kh}x{kw} kernel");
    }
    let s = p.stride;
    let (oh, ow) = ((h + 2 * py - kh) / s + 1, (wd + 2 * px - kw) / s + 1);
    let (ipg, opg) = (c / g, o / g);
    let mut out = vec![0.0f32; n * o * oh * ow];
    out.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (b, oc) = (plane / o, plane % o);
            let first_in = (oc / opg) * ipg;
            for i in 0..ipg {
                let src = &x.data[((b * c + first_in + i) * h) * wd..][..h * wd];
                let wk = &w.data[(oc * ipg + i) * kh * kw..][..kh * kw];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = wk[ky * kw + kx];
                        for oy in 0..oh {
                            let iy = (oy * s + ky) as i64 - py as i64;
                            if iy < 0 || iy >= h as i64 {
                                continue;
                            }
                            for ox in 0..ow {
                                let ix = (ox * s + kx) as i64 - px as i64;
                                if ix >= 0 && ix < wd as i64 {
                                    dst[oy * ow + ox] += src[iy as usize * wd + ix as usize] * wv;
                                }
                            }
                        }
                    }
                }
            }
        });
    Tensor::new(vec![n, o, oh, ow], out)
}

/// `F.conv_transpose2d`: `x [N, C, H, W]`, `w [C, O/groups, kh, kw]`, output `(H-1)*stride - 2*pad + kh` high.
/// Each input pixel scatters `x * w` to `out[y*stride + ky - pad, x*stride + kx - pad]`.
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, p: &Conv) -> Result<Tensor> {
    let [n, c, h, wd, kh, kw] = conv_dims(x, w, p, "conv_transpose2d")?;
    let g = p.groups;
    if w.shape[0] != c {
        bail!(
            "conv_transpose2d: weight {:?} needs {c} input channels first",
            w.shape
        );
    }
    let (ipg, opg) = (c / g, w.shape[1]);
    let o = opg * g;
    let s = p.stride;
    let [py, px] = p.padding;
    if h == 0 || wd == 0 {
        bail!("conv_transpose2d: empty input {:?}", x.shape);
    }
    let (full_h, full_w) = ((h - 1) * s + kh, (wd - 1) * s + kw);
    if full_h <= 2 * py || full_w <= 2 * px {
        bail!("conv_transpose2d: padding {:?} leaves no output", p.padding);
    }
    let (oh, ow) = (full_h - 2 * py, full_w - 2 * px);
    let mut out = vec![0.0f32; n * o * oh * ow];
    out.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (b, oc) = (plane / o, plane % o);
            let (grp, oc_in_group) = (oc / opg, oc % opg);
            for i in 0..ipg {
                let ic = grp * ipg + i;
                let src = &x.data[((b * c + ic) * h) * wd..][..h * wd];
                let wk = &w.data[(ic * opg + oc_in_group) * kh * kw..][..kh * kw];
                for iy in 0..h {
                    for ix in 0..wd {
                        let v = src[iy * wd + ix];
                        for ky in 0..kh {
                            let oy = (iy * s + ky) as i64 - py as i64;
                            if oy < 0 || oy >= oh as i64 {
                                continue;
                            }
                            for kx in 0..kw {
                                let ox = (ix * s + kx) as i64 - px as i64;
                                if ox >= 0 && ox < ow as i64 {
                                    dst[oy as usize * ow + ox as usize] += v * wk[ky * kw + kx];
                                }
                            }
                        }
                    }
                }
            }
        });
    Tensor::new(vec![n, o, oh, ow], out)
}

/// `w.flip([2, 3])` of a 4-D weight.
fn flip_kernels(w: &Tensor) -> Tensor {
    let kk = w.shape[2] * w.shape[3];
    let data = w
        .data
        .chunks(kk)
        .flat_map(|k| k.iter().rev().copied())
        .collect();
    Tensor {
        shape: w.shape.clone(),
        data,
    }
}

/// Parameters of [`conv2d_resample`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resample {
    pub up: usize,
    pub down: usize,
    /// Padding relative to the up-sampled image, both sides.
    pub padding: usize,
    pub groups: usize,
    /// `true`: cross-correlation (F.conv2d semantics); `false`: true convolution.
    pub flip_weight: bool,
    pub flip_filter: bool,
}

impl Default for Resample {
    fn default() -> Self {
        Resample {
            up: 1,
            down: 1,
            padding: 0,
            groups: 1,
            flip_weight: true,
            flip_filter: false,
        }
    }
}

/// NVlabs `_conv2d_wrapper`: conv2d or conv_transpose2d with the weight flipped when `!flip_weight`.
fn conv_wrapper(
    x: &Tensor,
    w: &Tensor,
    p: &Conv,
    transpose: bool,
    flip_weight: bool,
) -> Result<Tensor> {
    let flipped;
    let w = if flip_weight {
        w
    } else {
        flipped = flip_kernels(w);
        &flipped
    };
    if transpose {
        conv_transpose2d(x, w, p)
    } else {
        conv2d(x, w, p)
    }
}

/// NVlabs `conv2d_resample`: a 2-D convolution with optional up/down-sampling by the FIR filter `f`, following
/// the reference's choice of fast paths (so that the rounding matches): `x [N, C, H, W]`, `w [O, C/groups, k, k]`.
pub fn conv2d_resample(x: &Tensor, w: &Tensor, f: &Tensor, p: &Resample) -> Result<Tensor> {
    let [_, _, kh, kw] = dims4(w, "conv2d_resample")?;
    if p.up == 0 || p.down == 0 || p.groups == 0 {
        bail!("conv2d_resample: up, down and groups must be at least 1");
    }
    let (fh, fw) = match f.shape[..] {
        [fh, fw] => (fh as i32, fw as i32),
        [k] => (k as i32, k as i32),
        _ => bail!("conv2d_resample: filter shape {:?}", f.shape),
    };
    let (up, down) = (p.up as i32, p.down as i32);
    let pad = p.padding as i32;
    let (mut px0, mut px1, mut py0, mut py1) = (pad, pad, pad, pad);
    if up > 1 {
        px0 += (fw + up - 1) / 2;
        px1 += (fw - up) / 2;
        py0 += (fh + up - 1) / 2;
        py1 += (fh - up) / 2;
    }
    if down > 1 {
        px0 += (fw - down + 1) / 2;
        px1 += (fw - down) / 2;
        py0 += (fh - down + 1) / 2;
        py1 += (fh - down) / 2;
    }
    let groups_conv = Conv {
        groups: p.groups,
        ..Conv::default()
    };
    let fir = |up: usize, down: usize, pad: [i32; 4], gain: f32| Upfirdn {
        up,
        down,
        pad,
        flip_filter: p.flip_filter,
        gain,
    };
    let up_gain = (p.up * p.up) as f32;

    // 1x1 with down-sampling only: filter first, then the (cheap) conv.
    if kh == 1 && kw == 1 && p.down > 1 && p.up == 1 {
        let x = upfirdn2d(x, f, &fir(1, p.down, [px0, px1, py0, py1], 1.0))?;
        return conv_wrapper(&x, w, &groups_conv, false, p.flip_weight);
    }
    // 1x1 with up-sampling only: conv first, then up-sample.
    if kh == 1 && kw == 1 && p.up > 1 && p.down == 1 {
        let x = conv_wrapper(x, w, &groups_conv, false, p.flip_weight)?;
        return upfirdn2d(&x, f, &fir(p.up, 1, [px0, px1, py0, py1], up_gain));
    }
    // Down-sampling only: filter, then strided conv.
    if p.down > 1 && p.up == 1 {
        let x = upfirdn2d(x, f, &fir(1, 1, [px0, px1, py0, py1], 1.0))?;
        let strided = Conv {
            stride: p.down,
            ..groups_conv
        };
        return conv_wrapper(&x, w, &strided, false, p.flip_weight);
    }
    // Up-sampling: transposed strided conv with the weight as [I, O, k, k] per group, then the filter.
    if p.up > 1 {
        let [o, ipg, _, _] = dims4(w, "conv2d_resample")?;
        let g = p.groups;
        if o % g != 0 {
            bail!("conv2d_resample: {o} output channels do not split into {g} groups");
        }
        let opg = o / g;
        let kk = kh * kw;
        let mut wt = vec![0.0f32; w.numel()];
        for grp in 0..g {
            for oc in 0..opg {
                for ic in 0..ipg {
                    let src = ((grp * opg + oc) * ipg + ic) * kk;
                    let dst = ((grp * ipg + ic) * opg + oc) * kk;
                    wt[dst..dst + kk].copy_from_slice(&w.data[src..src + kk]);
                }
            }
        }
        let wt = Tensor::new(vec![g * ipg, opg, kh, kw], wt)?;
        px0 -= kw as i32 - 1;
        px1 -= kw as i32 - up;
        py0 -= kh as i32 - 1;
        py1 -= kh as i32 - up;
        let pxt = (-px0).min(-px1).max(0);
        let pyt = (-py0).min(-py1).max(0);
        let tconv = Conv {
            stride: p.up,
            padding: [pyt as usize, pxt as usize],
            groups: g,
        };
        let x = conv_wrapper(x, &wt, &tconv, true, !p.flip_weight)?;
        let x = upfirdn2d(
            &x,
            f,
            &fir(1, 1, [px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], up_gain),
        )?;
        return if p.down > 1 {
            upfirdn2d(&x, f, &fir(1, p.down, [0; 4], 1.0))
        } else {
            Ok(x)
        };
    }
    // No resampling: a plain padded conv (padding is symmetric and non-negative here by construction).
    let conv = Conv {
        padding: [py0 as usize, px0 as usize],
        ..groups_conv
    };
    conv_wrapper(x, w, &conv, false, p.flip_weight)
}

/// Parameters of [`modulated_conv2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModConv {
    /// 1 or 2 (transposed conv + resampling filter).
    pub up: usize,
    pub padding: usize,
    pub demodulate: bool,
    /// SynthesisLayer uses `flip_weight = (up == 1)`.
    pub flip_weight: bool,
    /// `true`: grouped conv with per-sample weights (what the references run); `false`: scale the activations
    /// before and after one shared conv.
    pub fused: bool,
}

/// Add `noise`, broadcast (right-aligned, NumPy rules) over `x [N, C, H, W]`.
fn add_broadcast(x: &mut Tensor, noise: &Tensor) -> Result<()> {
    if noise.ndim() > 4 {
        bail!(
            "noise of shape {:?} has more than 4 dimensions",
            noise.shape
        );
    }
    let mut ns = vec![1usize; 4 - noise.ndim()];
    ns.extend_from_slice(&noise.shape);
    for (d, (&a, &b)) in ns.iter().zip(&x.shape).enumerate() {
        if a != 1 && a != b {
            bail!(
                "noise of shape {:?} does not broadcast to {:?} (dimension {d})",
                noise.shape,
                x.shape
            );
        }
    }
    // Strides of the noise in x's index space; 0 along broadcast dimensions.
    let mut strides = [0usize; 4];
    let mut acc = 1;
    for d in (0..4).rev() {
        strides[d] = if ns[d] == 1 { 0 } else { acc };
        acc *= ns[d];
    }
    let sh = &x.shape;
    let mut i = 0;
    for a in 0..sh[0] {
        for b in 0..sh[1] {
            for c in 0..sh[2] {
                for d in 0..sh[3] {
                    let j = a * strides[0] + b * strides[1] + c * strides[2] + d * strides[3];
                    x.data[i] += noise.data[j];
                    i += 1;
                }
            }
        }
    }
    Ok(())
}

/// The shape checks of [`modulated_conv2d`], shared with its device twin: `x [N, I, H, W]`, `weight [O, I, kh, kw]`
/// and `styles [N, I]` must agree. Returns x's dimensions.
pub fn check_modulated_conv2d(x: &Tensor, weight: &Tensor, styles: &Tensor) -> Result<[usize; 4]> {
    let [n, i, h, w] = dims4(x, "modulated_conv2d")?;
    let [_, wi, _, _] = dims4(weight, "modulated_conv2d")?;
    if wi != i || styles.shape != [n, i] {
        bail!(
            "modulated_conv2d: x {:?}, weight {:?} and styles {:?} disagree",
            x.shape,
            weight.shape,
            styles.shape
        );
    }
    Ok([n, i, h, w])
}

/// NVlabs `modulated_conv2d`: `x [N, I, H, W]`, `weight [O, I, k, k]`, `styles [N, I]`, optional noise
/// broadcast to the output (added after demodulation), resampling filter `f` (used when `up > 1`).
/// Demodulation: `d[n, o] = rsqrt(sum_{i,k} (weight[o,i,k] * styles[n,i])^2 + 1e-8)`.
pub fn modulated_conv2d(
    x: &Tensor,
    weight: &Tensor,
    styles: &Tensor,
    noise: Option<&Tensor>,
    f: &Tensor,
    p: &ModConv,
) -> Result<Tensor> {
    let [n, i, h, wd] = check_modulated_conv2d(x, weight, styles)?;
    let [o, _, kh, kw] = dims4(weight, "modulated_conv2d")?;
    let kk = kh * kw;
    // Per-sample weights w[n, o, i, k] = weight[o, i, k] * styles[n, i].
    let needs_w = p.demodulate || p.fused;
    let mut wn = Vec::new();
    if needs_w {
        wn.reserve(n * weight.numel());
        for b in 0..n {
            for oc in 0..o {
                for ic in 0..i {
                    let s = styles.data[b * i + ic];
                    let base = (oc * i + ic) * kk;
                    wn.extend(weight.data[base..base + kk].iter().map(|&v| v * s));
                }
            }
        }
    }
    let dcoefs: Vec<f32> = if p.demodulate {
        wn.chunks(i * kk)
            .map(|row| 1.0 / (row.iter().map(|v| v * v).sum::<f32>() + 1e-8).sqrt())
            .collect()
    } else {
        Vec::new()
    };
    let resample = Resample {
        up: p.up,
        padding: p.padding,
        flip_weight: p.flip_weight,
        ..Resample::default()
    };

    if !p.fused {
        let mut xs = x.clone();
        for (plane, v) in xs.data.chunks_mut(h * wd).enumerate() {
            let s = styles.data[plane];
            v.iter_mut().for_each(|e| *e *= s);
        }
        let mut y = conv2d_resample(&xs, weight, f, &resample)?;
        if p.demodulate {
            let plane = y.shape[2] * y.shape[3];
            for (k, v) in y.data.chunks_mut(plane).enumerate() {
                let d = dcoefs[k];
                v.iter_mut().for_each(|e| *e *= d);
            }
        }
        if let Some(noise) = noise {
            add_broadcast(&mut y, noise)?;
        }
        return Ok(y);
    }

    if p.demodulate {
        for (row, &d) in wn.chunks_mut(i * kk).zip(&dcoefs) {
            row.iter_mut().for_each(|v| *v *= d);
        }
    }
    // One grouped conv over the batch folded into channels: x [1, N*I, H, W], w [N*O, I, k, k], groups N.
    let xg = Tensor::new(vec![1, n * i, h, wd], x.data.clone())?;
    let wg = Tensor::new(vec![n * o, i, kh, kw], wn)?;
    let y = conv2d_resample(
        &xg,
        &wg,
        f,
        &Resample {
            groups: n,
            ..resample
        },
    )?;
    let (oh, ow) = (y.shape[2], y.shape[3]);
    let mut y = y.reshape(vec![n, o, oh, ow])?;
    if let Some(noise) = noise {
        add_broadcast(&mut y, noise)?;
    }
    Ok(y)
}
