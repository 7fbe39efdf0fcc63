//! rosinality/stylegan2-pytorch `Generator` (the micromotion paper's checkpoint format) into a [`Network`].
//!
//! Its `.pt` files carry only tensors (`g_ema`, optionally `latent_avg`), so the architecture is read off the
//! tensor shapes: the number of `to_rgbs` gives the resolution, `style.*` the mapping depth and width, and each
//! conv weight its channels.

use super::nvlabs::check_resolution;
use super::state::StateDict;
use super::{Dense, LayerKind, Network, Noise, SourceFormat, SynthesisLayer};
use crate::bail;
use crate::error::Result;

/// rosinality's default `lr_mlp`; the checkpoints do not record it.
pub const MAPPING_LR_MUL: f32 = 0.01;

pub struct RosinalityInfo {
    pub size: usize,
    pub style_dim: usize,
    pub n_mlp: usize,
}

/// Read the architecture off the tensor names and shapes.
pub fn infer(sd: &StateDict) -> Result<RosinalityInfo> {
    let Some(&[style_dim, _]) = sd.shape("style.1.weight") else {
        bail!("missing tensor 'style.1.weight': not a rosinality generator state dict");
    };
    let n_mlp = (1..)
        .take_while(|i| sd.contains(&format!("style.{i}.weight")))
        .count();
    let n_up = (0..)
        .take_while(|k| sd.contains(&format!("to_rgbs.{k}.conv.weight")))
        .count();
    let size = 4usize
        .checked_shl(n_up as u32)
        .filter(|&s| s <= 1 << 16)
        .ok_or_else(|| crate::Error::invalid(format!("implausible number of blocks ({n_up})")))?;
    Ok(RosinalityInfo {
        size,
        style_dim,
        n_mlp,
    })
}

/// Build the network from a `g_ema` state dict and the optional `latent_avg` (1-D `[style_dim]`).
/// Without `latent_avg`, `w_avg` must be computed by the caller (see [`crate::model::compute_w_avg`]).
pub fn build(sd: &StateDict, latent_avg: Option<Vec<f32>>) -> Result<Network> {
    let info = infer(sd)?;
    check_resolution(info.size)?;
    let w_dim = info.style_dim;
    let mapping = (1..=info.n_mlp)
        .map(|i| {
            Ok(Dense {
                weight: sd
                    .get(&format!("style.{i}.weight"), &[w_dim, w_dim])?
                    .clone(),
                bias: sd.vec(&format!("style.{i}.bias"), w_dim)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let Some(&[1, c4, 4, 4]) = sd.shape("input.input") else {
        bail!("missing or malformed tensor 'input.input' (expected [1, C, 4, 4])");
    };
    let const_input = sd.get_as("input.input", &[1, c4, 4, 4], &[c4, 4, 4])?;

    let conv_out = |prefix: &str| match sd.shape(&format!("{prefix}.conv.weight")) {
        Some(&[1, o, _, 3, 3]) => Ok(o),
        _ => Err(crate::Error::invalid(format!(
            "missing or malformed tensor '{prefix}.conv.weight' (expected [1, O, I, 3, 3])"
        ))),
    };
    let conv =
        |prefix: &str, in_ch: usize, res: usize, up: usize, ws_index: usize, noise: usize| {
            let out_ch = conv_out(prefix)?;
            Ok::<_, crate::Error>(SynthesisLayer {
                name: String::new(),
                kind: LayerKind::Conv,
                ws_index,
                in_channels: in_ch,
                out_channels: out_ch,
                resolution: res,
                up,
                kernel: 3,
                demodulate: true,
                weight_gain: 1.0 / ((in_ch * 9) as f32).sqrt(),
                clamp: None,
                fp16: false,
                weight: sd.get_as(
                    &format!("{prefix}.conv.weight"),
                    &[1, out_ch, in_ch, 3, 3],
                    &[out_ch, in_ch, 3, 3],
                )?,
                affine_weight: sd
                    .get(&format!("{prefix}.conv.modulation.weight"), &[in_ch, w_dim])?
                    .clone(),
                affine_bias: sd.vec(&format!("{prefix}.conv.modulation.bias"), in_ch)?,
                bias: sd.vec(&format!("{prefix}.activate.bias"), out_ch)?,
                noise: Some(Noise {
                    buffer: sd.get_as(
                        &format!("noises.noise_{noise}"),
                        &[1, 1, res, res],
                        &[res, res],
                    )?,
                    strength: sd.scalar(&format!("{prefix}.noise.weight"))?,
                }),
            })
        };
    let to_rgb = |prefix: &str, in_ch: usize, res: usize, ws_index: usize| {
        let Some(&[1, img, _, 1, 1]) = sd.shape(&format!("{prefix}.conv.weight")) else {
            bail!("missing or malformed tensor '{prefix}.conv.weight' (expected [1, C, I, 1, 1])");
        };
        Ok(SynthesisLayer {
            name: String::new(),
            kind: LayerKind::ToRgb,
            ws_index,
            in_channels: in_ch,
            out_channels: img,
            resolution: res,
            up: 1,
            kernel: 1,
            demodulate: false,
            weight_gain: 1.0 / (in_ch as f32).sqrt(),
            clamp: None,
            fp16: false,
            weight: sd.get_as(
                &format!("{prefix}.conv.weight"),
                &[1, img, in_ch, 1, 1],
                &[img, in_ch, 1, 1],
            )?,
            affine_weight: sd
                .get(&format!("{prefix}.conv.modulation.weight"), &[in_ch, w_dim])?
                .clone(),
            affine_bias: sd.vec(&format!("{prefix}.conv.modulation.bias"), in_ch)?,
            bias: sd
                .get_as(&format!("{prefix}.bias"), &[1, img, 1, 1], &[img])?
                .data,
            noise: None,
        })
    };

    let mut layers = vec![conv("conv1", c4, 4, 1, 0, 0)?, to_rgb("to_rgb1", c4, 4, 1)?];
    let mut channels = c4;
    let mut res = 4;
    for k in 0..(info.size.trailing_zeros() as usize - 2) {
        res *= 2;
        let up = conv(
            &format!("convs.{}", 2 * k),
            channels,
            res,
            2,
            2 * k + 1,
            2 * k + 1,
        )?;
        channels = up.out_channels;
        layers.push(up);
        layers.push(conv(
            &format!("convs.{}", 2 * k + 1),
            channels,
            res,
            1,
            2 * k + 2,
            2 * k + 2,
        )?);
        layers.push(to_rgb(&format!("to_rgbs.{k}"), channels, res, 2 * k + 3)?);
    }
    // Canonical names, the same as NVlabs' block/layer names, so tools print one vocabulary.
    for l in &mut layers {
        let slot = match (l.kind, l.up, l.resolution) {
            (LayerKind::ToRgb, _, _) => "torgb",
            (LayerKind::Conv, 2, _) => "conv0",
            (LayerKind::Conv, _, _) => "conv1",
        };
        l.name = format!("b{}.{slot}", l.resolution);
    }
    let img_channels = layers.last().map(|l| l.out_channels).unwrap_or(3);
    let (w_avg, w_avg_origin) = match latent_avg {
        Some(v) => {
            if v.len() != w_dim {
                bail!(
                    "latent_avg has {} values, expected style_dim = {w_dim}",
                    v.len()
                );
            }
            (v, "stored in the checkpoint (latent_avg)".to_string())
        }
        None => (vec![0.0; w_dim], String::new()),
    };
    let mut net = Network {
        source: SourceFormat::RosinalityPt,
        z_dim: w_dim,
        w_dim,
        num_ws: 2 * info.size.trailing_zeros() as usize - 2,
        resolution: info.size,
        img_channels,
        mapping_lr_mul: MAPPING_LR_MUL,
        mapping,
        w_avg,
        w_avg_origin,
        const_input,
        layers,
        conv_clamp: None,
    };
    if net.w_avg_origin.is_empty() {
        super::compute_w_avg(&mut net);
    }
    Ok(net)
}
