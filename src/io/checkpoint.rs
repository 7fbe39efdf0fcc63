//! Checkpoint containers -> simple Rust structures for the model layer: NVlabs network pickles (PyTorch
//! persistence objects, and the TensorFlow-era `(G, D, Gs)` tuple), plain `torch.save` checkpoints (rosinality),
//! and format detection. No StyleGAN knowledge beyond the container layouts lives here.

use crate::bail;
use crate::error::{Error, Result};
use crate::io::pickle::Value;
use crate::io::{map_file, torch, zip};
use crate::tensor::Tensor;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a file is, decided from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// `torch.save` zip archive (torch >= 1.6).
    TorchZip,
    /// `torch.save` legacy stream.
    TorchLegacy,
    /// NVlabs network pickle with PyTorch persistence objects (stylegan2-ada-pytorch, stylegan3).
    NvlabsPickle,
    /// NVlabs TensorFlow-era network pickle (stylegan2, stylegan2-ada TF).
    TfPickle,
    /// Some other pickle.
    Pickle,
}

/// How far into a pickle to look for the globals that tell NVlabs flavours apart: they appear with the first
/// network, right after small entries such as `training_set_kwargs`.
const DETECT_WINDOW: usize = 1 << 20;

pub fn detect(path: &Path) -> Result<Format> {
    let map = map_file(path)?;
    let d: &[u8] = &map;
    if d.len() >= 9 && d[8] == b'{' {
        let header = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
        if header <= (d.len() - 8) as u64 {
            return Ok(Format::Safetensors);
        }
    }
    if zip::is_zip(d) {
        return Ok(Format::TorchZip);
    }
    if d.starts_with(torch::LEGACY_MAGIC) {
        return Ok(Format::TorchLegacy);
    }
    if d.first() == Some(&0x80) {
        let head = &d[..d.len().min(DETECT_WINDOW)];
        let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
        return Ok(if has(b"dnnlib.tflib") {
            Format::TfPickle
        } else if has(b"torch_utils.persistence") {
            Format::NvlabsPickle
        } else {
            Format::Pickle
        });
    }
    Err(Error::format(
        path,
        "unrecognised file: not safetensors, a torch.save file or a pickle",
    ))
}

/// A network module from an NVlabs persistence pickle.
#[derive(Clone, Debug, Default)]
pub struct Module {
    pub class_name: String,
    /// Plain attributes of the module's `__dict__` as JSON (`_init_kwargs`, `_init_args`, `w_dim`, ...).
    pub attrs: BTreeMap<String, Json>,
    pub params: BTreeMap<String, Tensor>,
    pub buffers: BTreeMap<String, Tensor>,
    pub children: BTreeMap<String, Module>,
}

impl Module {
    /// PyTorch-style `state_dict()`: parameters and persistent buffers under dotted names.
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        self.collect("", &mut out);
        out
    }

    fn collect(&self, prefix: &str, out: &mut BTreeMap<String, Tensor>) {
        let non_persistent: Vec<&str> = self
            .attrs
            .get("_non_persistent_buffers_set")
            .and_then(Json::as_array)
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        for (k, t) in &self.params {
            out.insert(format!("{prefix}{k}"), t.clone());
        }
        for (k, t) in &self.buffers {
            if !non_persistent.contains(&k.as_str()) {
                out.insert(format!("{prefix}{k}"), t.clone());
            }
        }
        for (k, child) in &self.children {
            child.collect(&format!("{prefix}{k}."), out);
        }
    }

    /// `torch_utils.persistence._reconstruct_persistent_obj(meta)`.
    fn from_persistent(v: &Value, path: &str) -> Result<Module> {
        let meta = match v {
            Value::Object { args, .. }
                if v.is_object("torch_utils.persistence", "_reconstruct_persistent_obj") =>
            {
                args.first()
            }
            _ => None,
        };
        let Some(meta) = meta else {
            bail!(
                "'{path}' is a {}, not an NVlabs persistent network object",
                v.kind()
            );
        };
        if meta.get("type").and_then(Value::as_str) != Some("class") {
            bail!(
                "'{path}': persistent object of unknown type {:?}",
                meta.get("type")
            );
        }
        let Some(class_name) = meta.get("class_name").and_then(Value::as_str) else {
            bail!("'{path}': persistent object without a class name");
        };
        let Some(state) = meta.get("state").and_then(Value::as_dict) else {
            bail!("'{path}' ({class_name}): persistent object without a state dict");
        };
        let mut m = Module {
            class_name: class_name.to_string(),
            ..Module::default()
        };
        for (k, v) in state {
            let Some(k) = k.as_str() else { continue };
            match k {
                "_parameters" => m.params = tensors_of(v, &format!("{path}._parameters"))?,
                "_buffers" => m.buffers = tensors_of(v, &format!("{path}._buffers"))?,
                "_modules" => {
                    let Some(children) = v.as_dict() else {
                        bail!("'{path}._modules' is a {}, not a dict", v.kind());
                    };
                    for (name, child) in children {
                        let Some(name) = name.as_str() else {
                            bail!("'{path}._modules' has a non-string key");
                        };
                        if *child != Value::None {
                            let sub = format!("{path}.{name}");
                            m.children
                                .insert(name.to_string(), Module::from_persistent(child, &sub)?);
                        }
                    }
                }
                _ => {
                    if let Some(j) = to_json(v) {
                        m.attrs.insert(k.to_string(), j);
                    }
                }
            }
        }
        Ok(m)
    }
}

/// A `_parameters`/`_buffers` dict: name -> tensor (None entries, e.g. an absent bias, are skipped).
fn tensors_of(v: &Value, path: &str) -> Result<BTreeMap<String, Tensor>> {
    let Some(d) = v.as_dict() else {
        bail!("'{path}' is a {}, not a dict", v.kind());
    };
    let mut out = BTreeMap::new();
    for (k, t) in d {
        let Some(k) = k.as_str() else {
            bail!("'{path}' has a non-string key");
        };
        match t {
            Value::Tensor(t) => {
                out.insert(k.to_string(), t.clone());
            }
            Value::None => {}
            other => bail!("'{path}.{k}' is a {}, not a tensor", other.kind()),
        }
    }
    Ok(out)
}

/// Plain data as JSON: numbers, strings, bools, None, sequences and sets (arrays), dicts with string or int keys
/// (objects), `argparse.Namespace` (object). Anything else (tensors, bytes, other objects) has no JSON form.
pub fn to_json(v: &Value) -> Option<Json> {
    Some(match v {
        Value::None => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.clone()),
        Value::Tuple(items) | Value::List(items) | Value::Set(items) => {
            Json::Array(items.iter().map(to_json).collect::<Option<_>>()?)
        }
        Value::Dict(pairs) => {
            let mut map = serde_json::Map::new();
            for (k, v) in pairs {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => return None,
                };
                map.insert(key, to_json(v)?);
            }
            Json::Object(map)
        }
        Value::Object { state: Some(s), .. } if v.is_object("argparse", "Namespace") => to_json(s)?,
        _ => return None,
    })
}

/// An NVlabs (PyTorch) network pickle: the `G_ema` generator, plus the top-level keys found.
#[derive(Clone, Debug)]
pub struct NvlabsPickle {
    pub g_ema: Module,
    pub keys: Vec<String>,
}

pub fn read_nvlabs_pickle(path: &Path) -> Result<NvlabsPickle> {
    let map = map_file(path)?;
    let top = torch::load_pickle(&map).map_err(|e| e.in_file(path))?;
    if let Value::Tuple(items) = &top {
        if items
            .iter()
            .any(|v| v.is_object("dnnlib.tflib.network", "Network"))
        {
            return Err(Error::format(
                path,
                "this is a TensorFlow-era NVlabs pickle (G, D, Gs), not a PyTorch one",
            ));
        }
    }
    if top.as_dict().is_none() {
        return Err(Error::format(
            path,
            format!(
                "network pickle holds a {}, expected a dict with 'G_ema'",
                top.kind()
            ),
        ));
    }
    let keys = top.keys();
    let Some(g) = top.get("G_ema") else {
        return Err(Error::format(
            path,
            format!("network pickle has no 'G_ema' (keys: {})", keys.join(", ")),
        ));
    };
    let g_ema = Module::from_persistent(g, "G_ema").map_err(|e| e.in_file(path))?;
    Ok(NvlabsPickle { g_ema, keys })
}

/// `Gs` of a TensorFlow-era NVlabs pickle: variables by full path (`mapping/Dense0/weight`,
/// `synthesis/4x4/Const/const`, `dlatent_avg`), in the TF layout.
#[derive(Clone, Debug)]
pub struct TfNetwork {
    pub name: String,
    pub static_kwargs: BTreeMap<String, Json>,
    pub variables: BTreeMap<String, Tensor>,
}

pub fn read_tf_pickle(path: &Path) -> Result<TfNetwork> {
    let map = map_file(path)?;
    let top = torch::load_pickle(&map).map_err(|e| e.in_file(path))?;
    let gs = match top.as_seq() {
        Some([_, _, gs]) => gs,
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "expected a TensorFlow-era pickle (a tuple G, D, Gs), found a {}",
                    top.kind()
                ),
            ))
        }
    };
    tf_network(gs).map_err(|e| e.in_file(path))
}

fn tf_state(v: &Value) -> Result<&Value> {
    match v {
        Value::Object { state: Some(s), .. } if v.is_object("dnnlib.tflib.network", "Network") => {
            Ok(s)
        }
        _ => bail!(
            "expected a dnnlib.tflib.network.Network, found a {}",
            v.kind()
        ),
    }
}

fn tf_network(v: &Value) -> Result<TfNetwork> {
    let state = tf_state(v)?;
    let name = state
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let static_kwargs = match state.get("static_kwargs").map(to_json) {
        Some(Some(Json::Object(m))) => m.into_iter().collect(),
        None => BTreeMap::new(),
        _ => bail!("network '{name}': static_kwargs is not a plain dict"),
    };
    let mut variables = BTreeMap::new();
    collect_tf_vars(state, "", &mut variables, 0)?;
    Ok(TfNetwork {
        name,
        static_kwargs,
        variables,
    })
}

/// A network's own variables plus those of its components, prefixed with the component names.
fn collect_tf_vars(
    state: &Value,
    prefix: &str,
    out: &mut BTreeMap<String, Tensor>,
    depth: usize,
) -> Result<()> {
    if depth > 16 {
        bail!("TF network components nest too deeply");
    }
    if let Some(vars) = state.get("variables") {
        let Some(vars) = vars.as_seq() else {
            bail!("'{prefix}variables' is a {}, not a list", vars.kind());
        };
        for item in vars {
            match item.as_seq() {
                Some([Value::Str(n), Value::Tensor(t)]) => {
                    out.insert(format!("{prefix}{n}"), t.clone());
                }
                _ => bail!("'{prefix}variables' holds an entry that is not (name, array)"),
            }
        }
    }
    if let Some(components) = state.get("components") {
        let Some(components) = components.as_dict() else {
            bail!(
                "'{prefix}components' is a {}, not a dict",
                components.kind()
            );
        };
        for (k, net) in components {
            let Some(k) = k.as_str() else {
                bail!("'{prefix}components' has a non-string key");
            };
            collect_tf_vars(tf_state(net)?, &format!("{prefix}{k}/"), out, depth + 1)?;
        }
    }
    Ok(())
}

/// A `torch.save` file's value tree (zip or legacy), tensors materialised.
pub fn read_torch_checkpoint(path: &Path) -> Result<Value> {
    torch::load(path)
}

/// A `torch.save` checkpoint holding a dict (rosinality: `g_ema`, `latent_avg`, `args`, ...).
#[derive(Clone, Debug)]
pub struct TorchCheckpoint {
    pub path: PathBuf,
    pub value: Value,
}

impl TorchCheckpoint {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(TorchCheckpoint {
            path: path.to_path_buf(),
            value: read_torch_checkpoint(path)?,
        })
    }

    /// Top-level string keys (empty if the file holds something other than a dict).
    pub fn keys(&self) -> Vec<String> {
        self.value.keys()
    }

    /// The dict entry `key` as a state dict, e.g. rosinality's `g_ema`.
    pub fn state_dict(&self, key: &str) -> Result<BTreeMap<String, Tensor>> {
        let Some(v) = self.value.get(key) else {
            return Err(Error::format(
                &self.path,
                format!(
                    "checkpoint has no '{key}' (keys: {})",
                    self.keys().join(", ")
                ),
            ));
        };
        tensors_of(v, key).map_err(|e| e.in_file(&self.path))
    }

    /// The dict entry `key` as a tensor (`latent_avg`), or None if absent.
    pub fn tensor(&self, key: &str) -> Result<Option<Tensor>> {
        match self.value.get(key) {
            None => Ok(None),
            Some(Value::Tensor(t)) => Ok(Some(t.clone())),
            Some(other) => Err(Error::format(
                &self.path,
                format!(
                    "checkpoint entry '{key}' is a {}, not a tensor",
                    other.kind()
                ),
            )),
        }
    }

    /// The training arguments (`args`: an `argparse.Namespace` or a dict) as a JSON object, if present.
    pub fn args(&self) -> Option<serde_json::Map<String, Json>> {
        match to_json(self.value.get("args")?)? {
            Json::Object(m) => Some(m),
            _ => None,
        }
    }
}
