//! `torch.save` files, both formats, read into a pickle value tree whose tensors are materialised as f32
//! [`Tensor`]s:
//! - zip (torch >= 1.6): `<archive>/data.pkl` plus one `<archive>/data/<key>` entry per storage, persistent id
//!   `('storage', storage_type, key, location, numel)`;
//! - legacy: pickled magic number, protocol 1001, sys-info dict, the object pickle (persistent id
//!   `('storage', type, key, location, numel, view_metadata)`), a pickled list of keys, then per key an int64
//!   element count and the raw little-endian data.
//!
//! The format is detected from the bytes, not the extension. Storage locations (`cuda:0`) are ignored.

use crate::bail;
use crate::error::Result;
use crate::io::map_file;
use crate::io::pickle::{self, Storage, StorageType, Value};
use crate::io::zip::{is_zip, ZipArchive};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The legacy format's first pickle: `0x1950a86a20f9469cfc6c` as a protocol-2 LONG1.
pub const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
const LEGACY_PROTOCOL: i64 = 1001;

/// Read a `torch.save` file (zip or legacy).
pub fn load(path: &Path) -> Result<Value> {
    let map = map_file(path)?;
    load_bytes(&map).map_err(|e| e.in_file(path))
}

/// Read `torch.save` bytes (zip or legacy).
pub fn load_bytes(data: &[u8]) -> Result<Value> {
    if is_zip(data) {
        load_zip(data)
    } else if data.starts_with(LEGACY_MAGIC) {
        load_legacy_nested(data, 0)
    } else {
        bail!("not a torch.save file (neither a zip archive nor a legacy torch stream)")
    }
}

/// Read a plain pickle whose tensors carry their own data (NVlabs network pickles: `_load_from_bytes`).
pub fn load_pickle(data: &[u8]) -> Result<Value> {
    let (mut value, _) = pickle::load(data, &mut |pid| {
        bail!("unexpected persistent id {pid:?} in a plain pickle")
    })?;
    let mut budget = output_budget(data.len() as u64);
    materialize(
        &mut value,
        &mut |s| bail!("storage '{}' has no data", s.key),
        &mut budget,
    )?;
    Ok(value)
}

/// How many f32 bytes materialisation may produce: generous for real files (f16 storages double in size, views
/// may overlap), but bounded against a hostile file that points many views at one big storage.
fn output_budget(input: u64) -> u64 {
    input.saturating_mul(8).saturating_add(64 << 20)
}

/// `('storage', storage_type, key, location, numel[, view_metadata])` -> a storage without data yet.
fn storage_from_pid(pid: Value) -> Result<Storage> {
    let Some(items) = pid.as_seq() else {
        bail!("persistent id must be a tuple, got a {}", pid.kind());
    };
    let [tag, ty, key, _location, numel, rest @ ..] = items else {
        bail!("persistent id has {} items, expected 5 or 6", items.len());
    };
    if tag.as_str() != Some("storage") {
        bail!("persistent id of unknown kind {tag:?}");
    }
    let dtype = match ty {
        Value::Global { module, name } if module == "torch" => StorageType::from_class(name),
        _ => None,
    };
    let Some(dtype) = dtype else {
        bail!("persistent id names an unknown storage type {ty:?}");
    };
    let key = match key {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => bail!("storage key must be a string, got a {}", other.kind()),
    };
    let Some(numel) = numel.as_int().and_then(|n| usize::try_from(n).ok()) else {
        bail!("storage '{key}' has a bad element count {numel:?}");
    };
    if let Some(view) = rest.first().filter(|v| **v != Value::None) {
        bail!("storage '{key}' is a legacy storage view {view:?}, which is not supported");
    }
    Ok(Storage {
        dtype,
        key,
        numel,
        data: None,
    })
}

fn load_zip(data: &[u8]) -> Result<Value> {
    let zip = ZipArchive::parse(data)?;
    // The archive folder is named after the file at save time; take the folder of data.pkl.
    let Some(pkl) = zip
        .entries()
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
    else {
        bail!("zip archive has no data.pkl: not a torch.save file");
    };
    let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
    let pickled = zip.read(pkl)?;
    let (mut value, _) = pickle::load(&pickled, &mut |pid| {
        storage_from_pid(pid).map(Value::Storage)
    })?;
    let total: u64 = zip.entries().iter().map(|e| e.size).sum();
    let mut budget = output_budget(total.saturating_add(data.len() as u64));
    let mut cache: HashMap<String, Cow<'_, [u8]>> = HashMap::new();
    materialize(
        &mut value,
        &mut |s| {
            if !cache.contains_key(&s.key) {
                let bytes = zip.read(&format!("{prefix}data/{}", s.key))?;
                check_len(s, bytes.len())?;
                cache.insert(s.key.clone(), bytes);
            }
            Ok(cache[&s.key].clone())
        },
        &mut budget,
    )?;
    Ok(value)
}

fn check_len(s: &Storage, len: usize) -> Result<()> {
    if Some(len) != s.numel.checked_mul(s.dtype.size()) {
        bail!(
            "storage '{}' should hold {} elements of {} bytes, found {} bytes",
            s.key,
            s.numel,
            s.dtype.size(),
            len
        );
    }
    Ok(())
}

/// A legacy stream; `nesting` counts `_load_from_bytes` levels.
pub(crate) fn load_legacy_nested(data: &[u8], nesting: u32) -> Result<Value> {
    let mut no_pid = |pid: Value| -> Result<Value> {
        bail!("unexpected persistent id {pid:?} in a torch stream header")
    };
    let mut pos = 0usize;
    let next = |pos: &mut usize, resolver: &mut pickle::Resolver<'_>| -> Result<Value> {
        let (v, used) = pickle::load_nested(&data[*pos..], resolver, nesting).map_err(|e| {
            crate::Error::invalid(format!("{} (in the pickle at stream offset {})", e, *pos))
        })?;
        *pos += used;
        Ok(v)
    };
    let magic = next(&mut pos, &mut no_pid)?;
    if magic != Value::BigInt(LEGACY_MAGIC[4..14].to_vec()) {
        bail!("not a legacy torch stream (bad magic number)");
    }
    let protocol = next(&mut pos, &mut no_pid)?;
    if protocol.as_int() != Some(LEGACY_PROTOCOL) {
        bail!("unsupported legacy torch protocol {protocol:?}");
    }
    let info = next(&mut pos, &mut no_pid)?;
    if info.get("little_endian") == Some(&Value::Bool(false)) {
        bail!("big-endian torch files are not supported");
    }
    let mut types: HashMap<String, Storage> = HashMap::new();
    let mut value = next(&mut pos, &mut |pid| {
        let s = storage_from_pid(pid)?;
        types.insert(s.key.clone(), s.clone());
        Ok(Value::Storage(s))
    })?;
    let keys = next(&mut pos, &mut no_pid)?;
    let Some(keys) = keys.as_seq() else {
        bail!(
            "legacy torch stream: the storage key list is a {}",
            keys.kind()
        );
    };
    let mut raw: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let Some(key) = key.as_str() else {
            bail!("legacy torch stream: storage key {key:?} is not a string");
        };
        let Some(s) = types.get(key) else {
            bail!("legacy torch stream: storage '{key}' is listed but never used");
        };
        let count = data
            .get(pos..pos + 8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
        let bytes = count
            .and_then(|c| usize::try_from(c).ok())
            .and_then(|c| c.checked_mul(s.dtype.size()));
        let body = bytes.and_then(|n| data.get(pos + 8..(pos + 8).checked_add(n)?));
        let Some(body) = body else {
            bail!("truncated legacy torch stream: storage '{key}' at offset {pos}");
        };
        check_len(s, body.len())?;
        raw.insert(key.to_string(), body);
        pos += 8 + body.len();
    }
    let mut budget = output_budget(data.len() as u64);
    materialize(
        &mut value,
        &mut |s| match raw.get(&s.key) {
            Some(b) => Ok(Cow::Borrowed(*b)),
            None => bail!("legacy torch stream has no data for storage '{}'", s.key),
        },
        &mut budget,
    )?;
    Ok(value)
}

/// Replace every tensor view by a gathered f32 tensor and give every bare storage its data. `lookup` supplies the
/// data of storages that do not carry it yet. The tree is at most `pickle::MAX_DEPTH` deep.
fn materialize<'d>(
    value: &mut Value,
    lookup: &mut dyn FnMut(&Storage) -> Result<Cow<'d, [u8]>>,
    budget: &mut u64,
) -> Result<()> {
    match value {
        Value::TensorView(view) => {
            // Charge before gathering: a stride-0 view of a tiny storage could otherwise ask for gigabytes.
            let cost = view
                .size
                .iter()
                .try_fold(4u64, |a, &d| a.checked_mul(d as u64))
                .unwrap_or(u64::MAX);
            *budget = budget.checked_sub(cost).ok_or_else(|| {
                crate::Error::invalid(format!(
                    "tensor of size {:?} expands to far more data than the file holds",
                    view.size
                ))
            })?;
            let tensor = match &view.storage.data {
                Some(d) => view.gather(d)?,
                None => view.gather(&lookup(&view.storage)?)?,
            };
            *value = Value::Tensor(tensor);
        }
        Value::Storage(s) if s.data.is_none() => {
            let d = lookup(s)?;
            s.data = Some(Arc::from(d.as_ref()));
        }
        Value::Tuple(v) | Value::List(v) | Value::Set(v) => {
            for x in v {
                materialize(x, lookup, budget)?;
            }
        }
        Value::Dict(pairs) => {
            for (k, v) in pairs {
                materialize(k, lookup, budget)?;
                materialize(v, lookup, budget)?;
            }
        }
        Value::Object { args, state, .. } => {
            for x in args {
                materialize(x, lookup, budget)?;
            }
            if let Some(s) = state {
                materialize(s, lookup, budget)?;
            }
        }
        _ => {}
    }
    Ok(())
}
