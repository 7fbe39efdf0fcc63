//! TensorFlow-era NVlabs pickles (the original StyleGAN2 release): `Gs` variables in TF layout, renamed and
//! re-laid-out into the PyTorch state dict that [`super::nvlabs::build`] reads (the rules of NVlabs' own
//! `legacy.convert_tf_generator`, listed in golden/nvlabs_tf/README.md).

use super::nvlabs::{self, log2, NvlabsConfig};
use super::state::StateDict;
use super::{Network, SourceFormat};
use crate::bail;
use crate::error::Result;
use crate::tensor::Tensor;
use serde_json::Value;
use std::collections::BTreeMap;

/// The Generator config from the TF network's `static_kwargs`, with the TF code's defaults.
pub fn config(kwargs: &BTreeMap<String, Value>) -> Result<NvlabsConfig> {
    let uint = |key: &str, default: usize| match kwargs.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
            crate::Error::invalid(format!("static kwarg '{key}' is not an integer: {v}"))
        }),
    };
    let float = |key: &str| match kwargs.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(|f| Some(f as f32)).ok_or_else(|| {
            crate::Error::invalid(format!("static kwarg '{key}' is not a number: {v}"))
        }),
    };
    if let Some(Value::String(nl)) = kwargs.get("nonlinearity") {
        if nl != "lrelu" {
            bail!("nonlinearity '{nl}' is not supported (StyleGAN2 uses lrelu)");
        }
    }
    if let Some(v) = kwargs.get("resample_kernel") {
        if v != &serde_json::json!([1, 3, 3, 1]) && !v.is_null() {
            bail!("resample_kernel {v} is not supported (StyleGAN2 uses [1, 3, 3, 1])");
        }
    }
    let architecture = match kwargs.get("architecture") {
        None => "skip".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => bail!("architecture is not a string: {v}"),
    };
    Ok(NvlabsConfig {
        z_dim: uint("latent_size", 512)?,
        c_dim: uint("label_size", 0)?,
        w_dim: uint("dlatent_size", 512)?,
        img_resolution: uint("resolution", 1024)?,
        img_channels: uint("num_channels", 3)?,
        mapping_layers: uint("mapping_layers", 8)?,
        mapping_lr_mul: float("mapping_lrmul")?.unwrap_or(0.01),
        channel_base: 2 * uint("fmap_base", 16384)?,
        channel_max: uint("fmap_max", 512)?,
        conv_clamp: float("conv_clamp")?,
        // stylegan2-ada's TF generator has the same option; older TF networks lack it (no fp16 blocks).
        num_fp16_res: uint("num_fp16_res", 0)?,
        architecture,
    })
}

/// Convert `Gs`'s variables (full path names) and build the network.
pub fn build(kwargs: &BTreeMap<String, Value>, vars: &BTreeMap<String, Tensor>) -> Result<Network> {
    let cfg = config(kwargs)?;
    nvlabs::check_resolution(cfg.img_resolution)?;
    let get = |name: &str| {
        vars.get(name)
            .ok_or_else(|| crate::Error::invalid(format!("missing TF variable '{name}'")))
    };
    let mut sd = BTreeMap::new();
    sd.insert("mapping.w_avg".to_string(), get("dlatent_avg")?.clone());
    for i in 0..cfg.mapping_layers {
        sd.insert(
            format!("mapping.fc{i}.weight"),
            transpose2(get(&format!("mapping/Dense{i}/weight"))?)?,
        );
        sd.insert(
            format!("mapping.fc{i}.bias"),
            get(&format!("mapping/Dense{i}/bias"))?.clone(),
        );
    }
    let konst = get("synthesis/4x4/Const/const")?;
    let c4 = konst.shape[1..].to_vec();
    sd.insert(
        "synthesis.b4.const".into(),
        konst.clone().reshape(c4).map_err(|_| {
            crate::Error::invalid("TF variable 'synthesis/4x4/Const/const' is not [1, C, 4, 4]")
        })?,
    );
    let mut res = 4;
    while res <= cfg.img_resolution {
        let tf = format!("synthesis/{res}x{res}");
        let pt = format!("synthesis.b{res}");
        let mut layers = vec![];
        if res == 4 {
            layers.push(("Conv", "conv1", Some(0)));
        } else {
            layers.push(("Conv0_up", "conv0", Some(2 * log2(res) - 5)));
            layers.push(("Conv1", "conv1", Some(2 * log2(res) - 4)));
        }
        layers.push(("ToRGB", "torgb", None));
        for (tf_layer, pt_layer, noise) in layers {
            let src = |v: &str| get(&format!("{tf}/{tf_layer}/{v}"));
            let dst = |v: &str| format!("{pt}.{pt_layer}.{v}");
            sd.insert(
                dst("weight"),
                conv_weight(src("weight")?, tf_layer == "Conv0_up")?,
            );
            sd.insert(dst("affine.weight"), transpose2(src("mod_weight")?)?);
            let mut mod_bias = src("mod_bias")?.clone();
            // TF adds the 1 at run time; PyTorch stores it in the bias.
            mod_bias.data.iter_mut().for_each(|b| *b += 1.0);
            sd.insert(dst("affine.bias"), mod_bias);
            sd.insert(dst("bias"), src("bias")?.clone());
            if let Some(n) = noise {
                sd.insert(dst("noise_strength"), src("noise_strength")?.clone());
                let buf = get(&format!("synthesis/noise{n}"))?;
                sd.insert(dst("noise_const"), buf.clone().reshape(vec![res, res])?);
            }
        }
        res *= 2;
    }
    nvlabs::build(&cfg, &StateDict::new(sd), SourceFormat::NvlabsTfPickle)
}

fn transpose2(t: &Tensor) -> Result<Tensor> {
    let &[rows, cols] = t.shape.as_slice() else {
        bail!("expected a 2-D TF weight, got shape {:?}", t.shape);
    };
    let mut data = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            data[c * rows + r] = t.data[r * cols + c];
        }
    }
    Tensor::new(vec![cols, rows], data)
}

/// TF conv weights are `[kh, kw, in, out]`; PyTorch wants `[out, in, kh, kw]`. The TF up-sampling conv stores the
/// kernel of a true (flipped) transposed convolution, PyTorch the unflipped one.
fn conv_weight(t: &Tensor, flip: bool) -> Result<Tensor> {
    let &[kh, kw, cin, cout] = t.shape.as_slice() else {
        bail!("expected a 4-D TF conv weight, got shape {:?}", t.shape);
    };
    let mut data = vec![0.0; t.numel()];
    for y in 0..kh {
        for x in 0..kw {
            let (sy, sx) = if flip {
                (kh - 1 - y, kw - 1 - x)
            } else {
                (y, x)
            };
            for i in 0..cin {
                for o in 0..cout {
                    data[((o * cin + i) * kh + y) * kw + x] =
                        t.data[((sy * kw + sx) * cin + i) * cout + o];
                }
            }
        }
    }
    Tensor::new(vec![cout, cin, kh, kw], data)
}
