//! The golden networks built straight from their `weights.safetensors` state dicts (independent of the checkpoint
//! readers), their cases, and the mapping from rosinality's traced module names to ours.

use super::{assert_close, golden};
use mmengine::io::safetensors::SafeTensors;
use mmengine::model::nvlabs::{self, NvlabsConfig};
use mmengine::model::state::StateDict;
use mmengine::model::{rosinality, Network, SourceFormat};
use mmengine::Tensor;
use std::collections::{BTreeMap, HashMap};

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

/// Compares every golden per-layer intermediate of `case` (sample 0) that `ours` maps to a traced tensor in `seen`,
/// at the image tolerance (1e-4) with `rel` relative on top, and returns how many were compared (callers assert the
/// count, so a tensor missing from the trace fails).
pub fn check_intermediates(
    label: &str,
    case: &str,
    seen: &HashMap<String, Tensor>,
    rel: f32,
    ours: impl Fn(&str) -> Option<String>,
) -> usize {
    let inter = SafeTensors::open(golden(case, "intermediates.safetensors")).unwrap();
    let mut compared = 0;
    for name in inter.names() {
        let Some(key) = ours(name) else { continue };
        let Some(t) = seen.get(&key) else { continue };
        let expected = inter.tensor(name).unwrap();
        let err = assert_close(name, &t.slice_rows(0, 1).data, &expected.data, 1e-4, rel);
        println!("{label} {case} {name} ({key}) max error {err:.3e}");
        compared += 1;
    }
    compared
}

/// Checks a traced constant-noise render of an NVlabs case's `ws`: the image against `img_const` (1e-4, or 1e-5
/// relative) and every golden intermediate of sample 0, all (2 * 2 + 2) + 3 * (3 * 2 + 2) of them (b4 has conv1 and
/// torgb, styles and out of each, plus x and img; b8 to b32 three layers each).
pub fn check_traced_const(label: &str, case: &str, img: &Tensor, seen: &HashMap<String, Tensor>) {
    let err = assert_close(
        "img_const",
        &img.data,
        &cases(case).tensor("img_const").unwrap().data,
        1e-4,
        1e-5,
    );
    println!("{label} {case} img_const max error {err:.3e}");
    let compared = check_intermediates(label, case, seen, 1e-5, |name| {
        name.strip_prefix("synthesis.").map(str::to_string)
    });
    assert_eq!(
        compared,
        (2 * 2 + 2) + 3 * (3 * 2 + 2),
        "intermediates compared"
    );
}

/// Elements at conv_clamp (256) per layer output in case B's reference run (all 4 samples): the clamp must bite
/// exactly as often.
pub const CASE_B_CLAMP_HITS: [(&str, usize); 3] = [
    ("b16.conv1.out", 1517),
    ("b32.conv1.out", 2795),
    ("b8.conv1.out", 0),
];
