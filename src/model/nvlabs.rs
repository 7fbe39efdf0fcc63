//! NVlabs StyleGAN2 (stylegan2-ada-pytorch, stylegan3's StyleGAN2 configs): constructor kwargs plus a state dict
//! under the PyTorch names, into a [`Network`].

use super::state::StateDict;
use super::{Dense, LayerKind, Network, Noise, SourceFormat, SynthesisLayer};
use crate::bail;
use crate::error::Result;
use serde_json::Value;

/// The hyper-parameters of an NVlabs Generator, with the defaults of its constructor.
#[derive(Clone, Debug, PartialEq)]
pub struct NvlabsConfig {
    pub z_dim: usize,
    pub c_dim: usize,
    pub w_dim: usize,
    pub img_resolution: usize,
    pub img_channels: usize,
    pub mapping_layers: usize,
    pub mapping_lr_mul: f32,
    pub channel_base: usize,
    pub channel_max: usize,
    pub conv_clamp: Option<f32>,
    /// How many of the highest resolutions run in float16 (`synthesis_kwargs.num_fp16_res`, default 0).
    pub num_fp16_res: usize,
    pub architecture: String,
}

/// Positional order of `Generator.__init__` after `self`, for pickles that recorded `_init_args`.
const GENERATOR_ARGS: [&str; 7] = [
    "z_dim",
    "c_dim",
    "w_dim",
    "img_resolution",
    "img_channels",
    "mapping_kwargs",
    "synthesis_kwargs",
];

impl NvlabsConfig {
    /// From the `_init_args` / `_init_kwargs` that NVlabs' persistence records for the Generator.
    pub fn from_init(args: &[Value], kwargs: &serde_json::Map<String, Value>) -> Result<Self> {
        let mut all = kwargs.clone();
        for (name, value) in GENERATOR_ARGS.iter().zip(args) {
            all.insert(name.to_string(), value.clone());
        }
        let empty = serde_json::Map::new();
        let sub = |key: &str| match all.get(key) {
            Some(Value::Object(m)) => Ok(m.clone()),
            None | Some(Value::Null) => Ok(empty.clone()),
            Some(other) => Err(crate::Error::invalid(format!(
                "Generator kwarg '{key}' is not a dict: {other}"
            ))),
        };
        let mapping = sub("mapping_kwargs")?;
        let synthesis = sub("synthesis_kwargs")?;
        let required = |key: &str| {
            uint(&all, key)?
                .ok_or_else(|| crate::Error::invalid(format!("Generator kwargs lack '{key}'")))
        };
        let conv_clamp =
            match synthesis.get("conv_clamp") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_f64().ok_or_else(|| {
                    crate::Error::invalid(format!("conv_clamp is not a number: {v}"))
                })? as f32),
            };
        let architecture = match synthesis.get("architecture") {
            None => "skip".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => bail!("architecture is not a string: {v}"),
        };
        Ok(NvlabsConfig {
            z_dim: required("z_dim")?,
            c_dim: uint(&all, "c_dim")?.unwrap_or(0),
            w_dim: required("w_dim")?,
            img_resolution: required("img_resolution")?,
            img_channels: uint(&all, "img_channels")?.unwrap_or(3),
            mapping_layers: uint(&mapping, "num_layers")?.unwrap_or(8),
            mapping_lr_mul: match mapping.get("lr_multiplier") {
                None | Some(Value::Null) => 0.01,
                Some(v) => v.as_f64().ok_or_else(|| {
                    crate::Error::invalid(format!("lr_multiplier is not a number: {v}"))
                })? as f32,
            },
            channel_base: uint(&synthesis, "channel_base")?.unwrap_or(32768),
            channel_max: uint(&synthesis, "channel_max")?.unwrap_or(512),
            conv_clamp,
            num_fp16_res: uint(&synthesis, "num_fp16_res")?.unwrap_or(0),
            architecture,
        })
    }

    pub fn channels(&self, res: usize) -> usize {
        (self.channel_base / res).min(self.channel_max)
    }

    pub fn num_ws(&self) -> usize {
        2 * log2(self.img_resolution) - 2
    }

    /// Whether the block at `res` is a float16 block: NVlabs' `res >= max(2 ** (log2(img_res) + 1 -
    /// num_fp16_res), 8)`, i.e. the top `num_fp16_res` resolutions, never 4x4.
    pub fn fp16_block(&self, res: usize) -> bool {
        let shift = (log2(self.img_resolution) + 1).saturating_sub(self.num_fp16_res);
        self.num_fp16_res > 0 && res >= (1usize << shift).max(8)
    }
}

fn uint(map: &serde_json::Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n as usize)),
            None => bail!("'{key}' is not a non-negative integer: {v}"),
        },
    }
}

pub(crate) fn log2(res: usize) -> usize {
    res.trailing_zeros() as usize
}

/// Check that a resolution is a power of two of at least 4 (StyleGAN2 works on 4x4 and doubles).
pub(crate) fn check_resolution(res: usize) -> Result<()> {
    if res < 4 || !res.is_power_of_two() {
        bail!("image resolution {res} is not a power of two >= 4");
    }
    Ok(())
}

/// Build the network from the Generator config and `G.state_dict()` names.
pub fn build(cfg: &NvlabsConfig, sd: &StateDict, source: SourceFormat) -> Result<Network> {
    check_resolution(cfg.img_resolution)?;
    if cfg.c_dim != 0 {
        bail!(
            "conditional generators (c_dim = {}) are not supported: mmengine renders unconditional StyleGAN2",
            cfg.c_dim
        );
    }
    if cfg.architecture != "skip" {
        bail!(
            "synthesis architecture '{}' is not supported (StyleGAN2 generators use 'skip')",
            cfg.architecture
        );
    }
    let w_dim = cfg.w_dim;
    let mut mapping = Vec::with_capacity(cfg.mapping_layers);
    let mut features = cfg.z_dim;
    for i in 0..cfg.mapping_layers {
        let name = format!("mapping.fc{i}");
        // Hidden widths default to w_dim but NVlabs allows `layer_features`; the last layer always outputs w_dim.
        let out = if i + 1 == cfg.mapping_layers {
            w_dim
        } else {
            match sd.shape(&format!("{name}.weight")) {
                Some(&[out, _]) => out,
                _ => w_dim,
            }
        };
        mapping.push(Dense {
            weight: sd.get(&format!("{name}.weight"), &[out, features])?.clone(),
            bias: sd.vec(&format!("{name}.bias"), out)?,
        });
        features = out;
    }
    let w_avg = sd.vec("mapping.w_avg", w_dim)?;

    let c4 = cfg.channels(4);
    let const_input = sd.get("synthesis.b4.const", &[c4, 4, 4])?.clone();
    let mut layers = Vec::new();
    let mut res = 4;
    while res <= cfg.img_resolution {
        let block = format!("synthesis.b{res}");
        let out_ch = cfg.channels(res);
        let k = log2(res) - 2; // block index: 0 for 4x4
        let conv =
            |name: &str, in_ch: usize, up: usize, ws_index: usize| -> Result<SynthesisLayer> {
                let p = format!("{block}.{name}");
                Ok(SynthesisLayer {
                    name: format!("b{res}.{name}"),
                    kind: LayerKind::Conv,
                    ws_index,
                    in_channels: in_ch,
                    out_channels: out_ch,
                    resolution: res,
                    up,
                    kernel: 3,
                    demodulate: true,
                    weight_gain: 1.0,
                    clamp: cfg.conv_clamp,
                    fp16: cfg.fp16_block(res),
                    weight: sd
                        .get(&format!("{p}.weight"), &[out_ch, in_ch, 3, 3])?
                        .clone(),
                    affine_weight: sd
                        .get(&format!("{p}.affine.weight"), &[in_ch, w_dim])?
                        .clone(),
                    affine_bias: sd.vec(&format!("{p}.affine.bias"), in_ch)?,
                    bias: sd.vec(&format!("{p}.bias"), out_ch)?,
                    noise: Some(Noise {
                        buffer: sd.get(&format!("{p}.noise_const"), &[res, res])?.clone(),
                        strength: sd.scalar(&format!("{p}.noise_strength"))?,
                    }),
                })
            };
        if res == 4 {
            layers.push(conv("conv1", out_ch, 1, 0)?);
        } else {
            let in_ch = cfg.channels(res / 2);
            layers.push(conv("conv0", in_ch, 2, 2 * k - 1)?);
            layers.push(conv("conv1", out_ch, 1, 2 * k)?);
        }
        let p = format!("{block}.torgb");
        let img = cfg.img_channels;
        layers.push(SynthesisLayer {
            name: format!("b{res}.torgb"),
            kind: LayerKind::ToRgb,
            ws_index: 2 * k + 1,
            in_channels: out_ch,
            out_channels: img,
            resolution: res,
            up: 1,
            kernel: 1,
            demodulate: false,
            // NVlabs scales the styles by 1/sqrt(in); without demodulation that equals scaling the weight.
            weight_gain: 1.0 / (out_ch as f32).sqrt(),
            clamp: cfg.conv_clamp,
            fp16: cfg.fp16_block(res),
            weight: sd
                .get(&format!("{p}.weight"), &[img, out_ch, 1, 1])?
                .clone(),
            affine_weight: sd
                .get(&format!("{p}.affine.weight"), &[out_ch, w_dim])?
                .clone(),
            affine_bias: sd.vec(&format!("{p}.affine.bias"), out_ch)?,
            bias: sd.vec(&format!("{p}.bias"), img)?,
            noise: None,
        });
        res *= 2;
    }
    let net = Network {
        source,
        z_dim: cfg.z_dim,
        w_dim,
        num_ws: cfg.num_ws(),
        resolution: cfg.img_resolution,
        img_channels: cfg.img_channels,
        mapping_lr_mul: cfg.mapping_lr_mul,
        mapping,
        w_avg,
        w_avg_origin: "stored in the checkpoint (mapping.w_avg)".into(),
        const_input,
        layers,
        conv_clamp: cfg.conv_clamp,
    };
    debug_assert_eq!(net.layers.last().map(|l| l.ws_index + 1), Some(net.num_ws));
    Ok(net)
}

#[cfg(test)]
mod tests {
    /// NVlabs' rule: the top `num_fp16_res` resolutions, never below 8 (stylegan2-ada's configs use 4).
    #[test]
    fn fp16_blocks_are_the_top_resolutions() {
        let mut cfg = crate::model::random::config("ffhq1024").unwrap();
        let blocks = |cfg: &super::NvlabsConfig| -> Vec<usize> {
            (2..=10)
                .map(|l| 1 << l)
                .filter(|&r| cfg.fp16_block(r))
                .collect()
        };
        assert!(blocks(&cfg).is_empty());
        cfg.num_fp16_res = 4;
        assert_eq!(blocks(&cfg), [128, 256, 512, 1024]);
        cfg.num_fp16_res = 20;
        assert_eq!(blocks(&cfg), [8, 16, 32, 64, 128, 256, 512, 1024]);
    }
}
