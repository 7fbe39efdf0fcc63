//! mmengine's own checkpoint: safetensors with the network description (everything but the tensors) as JSON in
//! the header metadata. Tensors keep their raw values, so a network written and read back renders bit-identically.

use super::{Dense, LayerKind, Network, Noise, SourceFormat, SynthesisLayer};
use crate::error::{Error, Result};
use crate::io::safetensors::{self, Data, SafeTensors};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Metadata key that marks an mmengine file and versions its layout.
pub const FORMAT_KEY: &str = "mmengine.format";
pub const FORMAT_VERSION: &str = "stylegan2-v1";
const CONFIG_KEY: &str = "mmengine.network";

#[derive(Serialize, Deserialize)]
struct LayerConfig {
    name: String,
    kind: String,
    ws_index: usize,
    in_channels: usize,
    out_channels: usize,
    resolution: usize,
    up: usize,
    kernel: usize,
    demodulate: bool,
    weight_gain: f32,
    clamp: Option<f32>,
    noise_strength: Option<f32>,
    /// Absent in files written before the field existed: float32.
    #[serde(default)]
    fp16: bool,
}

#[derive(Serialize, Deserialize)]
struct NetworkConfig {
    converted_from: String,
    z_dim: usize,
    w_dim: usize,
    num_ws: usize,
    resolution: usize,
    img_channels: usize,
    mapping_layers: usize,
    mapping_lr_mul: f32,
    conv_clamp: Option<f32>,
    w_avg_origin: String,
    layers: Vec<LayerConfig>,
}

pub fn is_canonical(st: &SafeTensors) -> bool {
    st.metadata.get(FORMAT_KEY).map(String::as_str) == Some(FORMAT_VERSION)
}

pub fn save(net: &Network, path: &Path) -> Result<()> {
    let config = NetworkConfig {
        converted_from: net.source.original().to_string(),
        z_dim: net.z_dim,
        w_dim: net.w_dim,
        num_ws: net.num_ws,
        resolution: net.resolution,
        img_channels: net.img_channels,
        mapping_layers: net.mapping.len(),
        mapping_lr_mul: net.mapping_lr_mul,
        conv_clamp: net.conv_clamp,
        w_avg_origin: net.w_avg_origin.clone(),
        layers: net
            .layers
            .iter()
            .map(|l| LayerConfig {
                name: l.name.clone(),
                kind: match l.kind {
                    LayerKind::Conv => "conv".into(),
                    LayerKind::ToRgb => "torgb".into(),
                },
                ws_index: l.ws_index,
                in_channels: l.in_channels,
                out_channels: l.out_channels,
                resolution: l.resolution,
                up: l.up,
                kernel: l.kernel,
                demodulate: l.demodulate,
                weight_gain: l.weight_gain,
                clamp: l.clamp,
                noise_strength: l.noise.as_ref().map(|n| n.strength),
                fp16: l.fp16,
            })
            .collect(),
    };
    let mut names = Vec::new();
    let mut tensors: Vec<(&[usize], &[f32])> = Vec::new();
    let w_avg_shape = [net.w_dim];
    names.push("w_avg".to_string());
    tensors.push((&w_avg_shape, &net.w_avg));
    names.push("const".to_string());
    tensors.push((&net.const_input.shape, &net.const_input.data));
    let bias_shapes: Vec<[usize; 1]> = net
        .mapping
        .iter()
        .map(|d| [d.bias.len()])
        .chain(net.layers.iter().map(|l| [l.bias.len()]))
        .collect();
    let affine_bias_shapes: Vec<[usize; 1]> =
        net.layers.iter().map(|l| [l.affine_bias.len()]).collect();
    for (i, d) in net.mapping.iter().enumerate() {
        names.push(format!("mapping.{i}.weight"));
        tensors.push((&d.weight.shape, &d.weight.data));
        names.push(format!("mapping.{i}.bias"));
        tensors.push((&bias_shapes[i], &d.bias));
    }
    for (i, l) in net.layers.iter().enumerate() {
        let p = &l.name;
        names.push(format!("{p}.weight"));
        tensors.push((&l.weight.shape, &l.weight.data));
        names.push(format!("{p}.affine.weight"));
        tensors.push((&l.affine_weight.shape, &l.affine_weight.data));
        names.push(format!("{p}.affine.bias"));
        tensors.push((&affine_bias_shapes[i], &l.affine_bias));
        names.push(format!("{p}.bias"));
        tensors.push((&bias_shapes[net.mapping.len() + i], &l.bias));
        if let Some(n) = &l.noise {
            names.push(format!("{p}.noise"));
            tensors.push((&n.buffer.shape, &n.buffer.data));
        }
    }
    let entries: Vec<(&str, &[usize], Data)> = names
        .iter()
        .zip(&tensors)
        .map(|(n, (s, d))| (n.as_str(), *s, Data::F32(d)))
        .collect();
    let mut metadata = BTreeMap::new();
    metadata.insert(FORMAT_KEY.to_string(), FORMAT_VERSION.to_string());
    metadata.insert(
        CONFIG_KEY.to_string(),
        serde_json::to_string(&config).expect("serializable config"),
    );
    safetensors::write(path, &entries, &metadata)
}

pub fn load(st: &SafeTensors) -> Result<Network> {
    let path = st.path();
    let raw = st
        .metadata
        .get(CONFIG_KEY)
        .ok_or_else(|| Error::format(path, format!("has no '{CONFIG_KEY}' metadata")))?;
    let c: NetworkConfig = serde_json::from_str(raw)
        .map_err(|e| Error::format(path, format!("invalid network metadata: {e}")))?;
    let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let t = st.tensor(name)?;
        if t.shape != shape {
            return Err(Error::format(
                path,
                format!(
                    "tensor '{name}' has shape {:?}, expected {shape:?}",
                    t.shape
                ),
            ));
        }
        Ok(t)
    };
    let mut mapping = Vec::with_capacity(c.mapping_layers);
    let mut features = c.z_dim;
    for i in 0..c.mapping_layers {
        let w = st.tensor(&format!("mapping.{i}.weight"))?;
        if w.ndim() != 2 || w.shape[1] != features {
            return Err(Error::format(
                path,
                format!(
                    "mapping.{i}.weight has shape {:?}, expected [*, {features}]",
                    w.shape
                ),
            ));
        }
        features = w.shape[0];
        let bias = get(&format!("mapping.{i}.bias"), &[features])?.data;
        mapping.push(Dense { weight: w, bias });
    }
    let mut layers = Vec::with_capacity(c.layers.len());
    for l in c.layers {
        let kind = match l.kind.as_str() {
            "conv" => LayerKind::Conv,
            "torgb" => LayerKind::ToRgb,
            other => return Err(Error::format(path, format!("unknown layer kind '{other}'"))),
        };
        let p = &l.name;
        let noise = match l.noise_strength {
            Some(strength) => Some(Noise {
                buffer: get(&format!("{p}.noise"), &[l.resolution, l.resolution])?,
                strength,
            }),
            None => None,
        };
        layers.push(SynthesisLayer {
            kind,
            ws_index: l.ws_index,
            in_channels: l.in_channels,
            out_channels: l.out_channels,
            resolution: l.resolution,
            up: l.up,
            kernel: l.kernel,
            demodulate: l.demodulate,
            weight_gain: l.weight_gain,
            clamp: l.clamp,
            fp16: l.fp16,
            weight: get(
                &format!("{p}.weight"),
                &[l.out_channels, l.in_channels, l.kernel, l.kernel],
            )?,
            affine_weight: get(&format!("{p}.affine.weight"), &[l.in_channels, c.w_dim])?,
            affine_bias: get(&format!("{p}.affine.bias"), &[l.in_channels])?.data,
            bias: get(&format!("{p}.bias"), &[l.out_channels])?.data,
            noise,
            name: l.name,
        });
    }
    let const_ch = layers.first().map(|l| l.in_channels).unwrap_or(0);
    let net = Network {
        source: SourceFormat::Safetensors {
            converted_from: c.converted_from,
        },
        z_dim: c.z_dim,
        w_dim: c.w_dim,
        num_ws: c.num_ws,
        resolution: c.resolution,
        img_channels: c.img_channels,
        mapping_lr_mul: c.mapping_lr_mul,
        mapping,
        w_avg: get("w_avg", &[c.w_dim])?.data,
        w_avg_origin: c.w_avg_origin,
        const_input: get("const", &[const_ch, 4, 4])?,
        layers,
        conv_clamp: c.conv_clamp,
    };
    net.validate().map_err(|e| e.in_file(path))?;
    Ok(net)
}
