//! The golden networks built straight from their `weights.safetensors` state dicts (independent of the checkpoint
//! readers), their cases, and the mapping from rosinality's traced module names to ours.

use super::golden;
use mmengine::io::safetensors::SafeTensors;
use mmengine::model::nvlabs::{self, NvlabsConfig};
use mmengine::model::state::StateDict;
use mmengine::model::{rosinality, Network, SourceFormat};
use mmengine::Tensor;
use std::collections::BTreeMap;

pub fn state_dict(case: &str) -> StateDict {
    let st = SafeTensors::open(golden(case, "weights.safetensors")).unwrap();
    let tensors: BTreeMap<String, Tensor> = st
        .names()
        .map(|n| (n.to_string(), st.tensor(n).unwrap()))
        .collect();
    StateDict::new(tensors)
}

pub fn nvlabs_network(case: &str) -> Network {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden(case, "config.json")).unwrap()).unwrap();
    let kwargs = config["generator_init_kwargs"].as_object().unwrap();
    let cfg = NvlabsConfig::from_init(&[], kwargs).unwrap();
    nvlabs::build(&cfg, &state_dict(case), SourceFormat::NvlabsPickle).unwrap()
}

pub fn cases(case: &str) -> SafeTensors {
    SafeTensors::open(golden(case, "cases.safetensors")).unwrap()
}

pub fn rosinality_network() -> Network {
    let latent_avg = cases("rosinality_tiny").tensor("latent_avg").unwrap().data;
    rosinality::build(&state_dict("rosinality_tiny"), Some(latent_avg)).unwrap()
}

/// rosinality module name -> our layer name, for the 32 px golden network.
pub fn rosinality_layer(name: &str) -> Option<String> {
    let (module, what) = name.rsplit_once('.')?;
    let ours = match module {
        "conv1" => "b4.conv1".to_string(),
        "to_rgb1" => "b4.torgb".to_string(),
        m if m.starts_with("convs.") => {
            let i: usize = m[6..].parse().ok()?;
            let slot = if i.is_multiple_of(2) {
                "conv0"
            } else {
                "conv1"
            };
            format!("b{}.{slot}", 8 << (i / 2))
        }
        m if m.starts_with("to_rgbs.") => format!("b{}.torgb", 8 << m[8..].parse::<usize>().ok()?),
        _ => return None,
    };
    match (what, module.starts_with("to_rgb")) {
        ("styles", _) => Some(format!("{ours}.styles")),
        // rosinality's ToRGB output is the running skip image; its conv layers' output is ours.
        ("out", true) => Some(format!("{}.img", ours.split('.').next()?)),
        ("out", false) => Some(format!("{ours}.out")),
        _ => None,
    }
}
