//! Latents given on the command line (`--z FILE`, `--ws FILE`), in whatever container the user has them.
//!
//! `FILE` is `.npy`, `.npz` (the array `w`, as NVlabs' projector writes, or the only array), `.safetensors` (the
//! only tensor), or `.pt`. `FILE.npz:NAME` and `FILE.safetensors:NAME` choose an array by name.

use crate::error::{Error, Result};
use crate::io::npy::{read_npy, read_npz};
use crate::io::pickle::Value;
use crate::io::safetensors::SafeTensors;
use crate::io::torch;
use crate::tensor::Tensor;
use std::path::Path;

/// The array NVlabs' `projector.py` stores in its `.npz` output.
const NPZ_DEFAULT: &str = "w";

/// Read the latent tensor that `spec` names.
pub fn read_latents(spec: &str) -> Result<Tensor> {
    let (path, name) = split_spec(spec);
    let path = Path::new(path);
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "npy" => read_npy(path),
        "npz" => pick_npz(path, name),
        "safetensors" => pick_safetensors(path, name),
        "pt" | "pth" => read_pt(path),
        _ => Err(Error::invalid(format!(
            "{}: unknown latent file type (expected .npy, .npz, .safetensors or .pt)",
            path.display()
        ))),
    }
}

/// A `torch.save`d tensor, or a list/tuple of tensors (the paper's anchor files: k tensors of `[1, L, D]`),
/// concatenated along the first dimension.
fn read_pt(path: &Path) -> Result<Tensor> {
    let value = torch::load(path)?;
    let parts: Vec<Tensor> = match &value {
        Value::Tensor(t) => return Ok(t.clone()),
        Value::List(items) | Value::Tuple(items) => items
            .iter()
            .map(|v| match v {
                Value::Tensor(t) => Ok(t.clone()),
                other => Err(Error::format(
                    path,
                    format!(
                        "holds a list with a {} where tensors were expected",
                        other.kind()
                    ),
                )),
            })
            .collect::<Result<_>>()?,
        other => {
            return Err(Error::format(
                path,
                format!(
                    "holds a {}, expected a tensor or a list of tensors",
                    other.kind()
                ),
            ))
        }
    };
    if parts.is_empty() || parts.iter().any(|t| t.ndim() == 0) {
        return Err(Error::format(path, "holds an empty list or scalar tensors"));
    }
    Tensor::cat_rows(&parts).map_err(|e| e.in_file(path))
}

/// Split `FILE.npz:NAME` / `FILE.safetensors:NAME`. Only those suffixes before the colon count, so paths that
/// contain colons for other reasons (`C:\...`, odd file names) pass through whole.
fn split_spec(spec: &str) -> (&str, Option<&str>) {
    if let Some((path, name)) = spec.rsplit_once(':') {
        let lower = path.to_ascii_lowercase();
        if !name.is_empty() && (lower.ends_with(".npz") || lower.ends_with(".safetensors")) {
            return (path, Some(name));
        }
    }
    (spec, None)
}

fn pick_npz(path: &Path, name: Option<&str>) -> Result<Tensor> {
    let mut arrays = read_npz(path)?;
    let keys = || {
        arrays
            .iter()
            .map(|(k, _)| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = match name {
        Some(name) => arrays.iter().position(|(k, _)| k == name).ok_or_else(|| {
            Error::format(
                path,
                format!("has no array '{name}' (arrays: {})", keys()),
            )
        })?,
        None => match arrays.iter().position(|(k, _)| k == NPZ_DEFAULT) {
            Some(i) => i,
            None if arrays.len() == 1 => 0,
            None if arrays.is_empty() => {
                return Err(Error::format(path, "holds no arrays"));
            }
            None => {
                return Err(Error::format(
                    path,
                    format!(
                        "has no array '{NPZ_DEFAULT}' and several others ({}); choose one with FILE.npz:NAME",
                        keys()
                    ),
                ))
            }
        },
    };
    Ok(arrays.swap_remove(found).1)
}

fn pick_safetensors(path: &Path, name: Option<&str>) -> Result<Tensor> {
    let file = SafeTensors::open(path)?;
    let names: Vec<&str> = file.names().collect();
    let listed = || {
        names
            .iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match (name, names.as_slice()) {
        (Some(name), _) if file.contains(name) => name,
        (Some(name), _) => {
            return Err(Error::format(
                path,
                format!("has no tensor '{name}' (tensors: {})", listed()),
            ))
        }
        (None, [only]) => only,
        (None, []) => return Err(Error::format(path, "holds no tensors")),
        (None, _) => {
            return Err(Error::format(
                path,
                format!(
                    "holds several tensors ({}); choose one with FILE.safetensors:NAME",
                    listed()
                ),
            ))
        }
    };
    file.tensor(chosen)
}
