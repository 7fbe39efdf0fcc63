//! Open any supported checkpoint by its content (not its extension) and build the [`Network`].

use super::canonical;
use super::nvlabs::{self, NvlabsConfig};
use super::state::StateDict;
use super::{rosinality, tf, Network, SourceFormat};
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Format, TorchCheckpoint};
use crate::io::safetensors::SafeTensors;
use std::path::Path;

/// The demo network compiled into the binary (see weights/README.md): random weights, not a face model.
const BUNDLED: &[u8] = include_bytes!("../../weights/demo-32px.safetensors");
pub const BUNDLED_NAME: &str = "bundled demo model (weights/demo-32px.safetensors)";

pub fn load(path: &Path) -> Result<Network> {
    let net = match checkpoint::detect(path)? {
        Format::Safetensors => load_safetensors(&SafeTensors::open(path)?),
        Format::TorchZip | Format::TorchLegacy => load_rosinality(path),
        Format::NvlabsPickle | Format::Pickle => load_nvlabs(path),
        Format::TfPickle => {
            let gs = checkpoint::read_tf_pickle(path)?;
            tf::build(&gs.static_kwargs, &gs.variables)
        }
    }
    .map_err(|e| e.in_file(path))?;
    net.validate().map_err(|e| e.in_file(path))?;
    Ok(net)
}

pub fn bundled() -> Result<Network> {
    load_safetensors(&SafeTensors::from_static(BUNDLED_NAME, BUNDLED)?)
}

fn load_safetensors(st: &SafeTensors) -> Result<Network> {
    if !canonical::is_canonical(st) {
        return Err(Error::format(
            st.path(),
            "this safetensors file has no mmengine network metadata; convert the original checkpoint with \
             `mmengine convert MODEL -o OUT.safetensors`",
        ));
    }
    canonical::load(st)
}

fn load_nvlabs(path: &Path) -> Result<Network> {
    let pkl = checkpoint::read_nvlabs_pickle(path)?;
    let g = &pkl.g_ema;
    let empty = serde_json::Map::new();
    let kwargs = match g.attrs.get("_init_kwargs") {
        Some(serde_json::Value::Object(m)) => m,
        _ => &empty,
    };
    let args = match g.attrs.get("_init_args") {
        Some(serde_json::Value::Array(a)) => a.as_slice(),
        _ => &[],
    };
    if kwargs.is_empty() && args.is_empty() {
        return Err(Error::format(
            path,
            "G_ema records no constructor arguments (_init_kwargs); cannot tell its hyper-parameters",
        ));
    }
    let cfg = NvlabsConfig::from_init(args, kwargs)?;
    nvlabs::build(
        &cfg,
        &StateDict::new(g.state_dict()),
        SourceFormat::NvlabsPickle,
    )
}

fn load_rosinality(path: &Path) -> Result<Network> {
    let ckpt = TorchCheckpoint::open(path)?;
    let keys = ckpt.keys();
    if !keys.iter().any(|k| k == "g_ema") {
        return Err(Error::format(
            path,
            format!(
                "no 'g_ema' generator in this torch checkpoint (keys: {})",
                keys.join(", ")
            ),
        ));
    }
    let sd = StateDict::new(ckpt.state_dict("g_ema")?);
    let latent_avg = ckpt.tensor("latent_avg")?.map(|t| t.data);
    let net = rosinality::build(&sd, latent_avg)?;
    // Training checkpoints record the architecture in `args`; it must agree with the tensors.
    if let Some(size) = ckpt
        .args()
        .and_then(|a| a.get("size").and_then(|s| s.as_u64()))
    {
        if size as usize != net.resolution {
            return Err(Error::format(
                path,
                format!(
                    "args.size is {size} but the g_ema tensors describe a {0}x{0} generator",
                    net.resolution
                ),
            ));
        }
    }
    Ok(net)
}
