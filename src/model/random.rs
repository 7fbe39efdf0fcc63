//! Random-weight networks of the standard StyleGAN2 configurations, for benchmarks (the timings depend on the
//! shapes, not the values). Built through the NVlabs loader from a generated state dict, so they are laid out
//! exactly like a real checkpoint.

use super::nvlabs::{self, log2, NvlabsConfig};
use super::state::StateDict;
use super::{Network, SourceFormat};
use crate::bail;
use crate::error::Result;
use crate::seeds::RandomState;
use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// The named configurations of DESIGN.md: (name, resolution, channel_base).
pub const CONFIGS: [(&str, usize, usize); 3] = [
    ("ffhq1024", 1024, 32768),
    ("ffhq512", 512, 32768),
    ("ffhq256", 256, 16384),
];

pub fn config(name: &str) -> Result<NvlabsConfig> {
    let Some(&(_, res, base)) = CONFIGS.iter().find(|(n, _, _)| *n == name) else {
        let names: Vec<&str> = CONFIGS.iter().map(|c| c.0).collect();
        bail!(
            "unknown config '{name}'; choose one of {}",
            names.join(", ")
        );
    };
    Ok(NvlabsConfig {
        z_dim: 512,
        c_dim: 0,
        w_dim: 512,
        img_resolution: res,
        img_channels: 3,
        mapping_layers: 8,
        mapping_lr_mul: 0.01,
        channel_base: base,
        channel_max: 512,
        conv_clamp: None,
        num_fp16_res: 0,
        architecture: "skip".into(),
    })
}

/// Multiply-adds of the 3x3 convolutions per image (up-sampling ones counted at input resolution), the measure
/// DESIGN.md's GFLOP figures use (GFLOP = 2 x MAC).
pub fn conv_macs(net: &Network) -> f64 {
    net.layers
        .iter()
        .filter(|l| l.kernel == 3)
        .map(|l| {
            let res = l.resolution / l.up;
            (res * res * l.in_channels * l.out_channels * 9) as f64
        })
        .sum()
}

/// A network of configuration `cfg` with weights drawn from `RandomState(seed)`, scaled like a trained model's
/// (unit-variance activations), so that benchmarks run on realistic magnitudes.
pub fn network(cfg: &NvlabsConfig, seed: u32) -> Result<Network> {
    let mut rng = RandomState::new(seed);
    let mut randn = |shape: Vec<usize>, scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| rng.randn() as f32 * scale + offset)
            .collect();
        Tensor { shape, data }
    };
    let mut sd = BTreeMap::new();
    let lr = cfg.mapping_lr_mul;
    let mut features = cfg.z_dim;
    for i in 0..cfg.mapping_layers {
        sd.insert(
            format!("mapping.fc{i}.weight"),
            randn(vec![cfg.w_dim, features], 1.0 / lr, 0.0),
        );
        sd.insert(
            format!("mapping.fc{i}.bias"),
            randn(vec![cfg.w_dim], 0.0, 0.0),
        );
        features = cfg.w_dim;
    }
    sd.insert("mapping.w_avg".into(), randn(vec![cfg.w_dim], 0.0, 0.0));
    let c4 = cfg.channels(4);
    sd.insert("synthesis.b4.const".into(), randn(vec![c4, 4, 4], 1.0, 0.0));
    let mut res = 4;
    while res <= cfg.img_resolution {
        let out = cfg.channels(res);
        let mut layers = vec![];
        if res > 4 {
            layers.push(("conv0", cfg.channels(res / 2)));
        }
        layers.push(("conv1", out));
        for (name, inp) in layers {
            let p = format!("synthesis.b{res}.{name}");
            sd.insert(format!("{p}.weight"), randn(vec![out, inp, 3, 3], 1.0, 0.0));
            sd.insert(
                format!("{p}.affine.weight"),
                randn(vec![inp, cfg.w_dim], 1.0, 0.0),
            );
            sd.insert(format!("{p}.affine.bias"), randn(vec![inp], 0.0, 1.0));
            sd.insert(format!("{p}.bias"), randn(vec![out], 0.0, 0.0));
            sd.insert(format!("{p}.noise_const"), randn(vec![res, res], 1.0, 0.0));
            sd.insert(format!("{p}.noise_strength"), randn(vec![], 0.0, 0.1));
        }
        let p = format!("synthesis.b{res}.torgb");
        sd.insert(format!("{p}.weight"), randn(vec![3, out, 1, 1], 1.0, 0.0));
        sd.insert(
            format!("{p}.affine.weight"),
            randn(vec![out, cfg.w_dim], 1.0, 0.0),
        );
        sd.insert(format!("{p}.affine.bias"), randn(vec![out], 0.0, 1.0));
        sd.insert(format!("{p}.bias"), randn(vec![3], 0.0, 0.0));
        res *= 2;
    }
    debug_assert_eq!(log2(cfg.img_resolution) * 2 - 2, cfg.num_ws());
    nvlabs::build(cfg, &StateDict::new(sd), SourceFormat::Random)
}
