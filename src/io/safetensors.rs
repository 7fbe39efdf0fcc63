//! safetensors: an 8-byte little-endian header length, a JSON header, then raw little-endian tensor data.
//! Read through a memory map; written atomically.

use crate::error::{Error, Result};
use crate::io::{map_file, write_atomic};
use crate::tensor::Tensor;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    U8,
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F64" => Dtype::F64,
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "U8" => Dtype::U8,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::U8 => "U8",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 => 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The file's bytes: memory-mapped from disk, or embedded in the binary (the bundled demo model).
enum Bytes {
    Mapped(memmap2::Mmap),
    Static(&'static [u8]),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Static(s) => s,
        }
    }
}

/// An open safetensors file. Tensors are converted to float32 on access.
pub struct SafeTensors {
    path: PathBuf,
    map: Bytes,
    data_start: usize,
    entries: BTreeMap<String, Entry>,
    pub metadata: BTreeMap<String, String>,
}

impl SafeTensors {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::parse(path, Bytes::Mapped(map_file(path)?))
    }

    /// Bytes compiled into the binary; `name` stands in for the path in messages.
    pub fn from_static(name: &str, bytes: &'static [u8]) -> Result<Self> {
        Self::parse(Path::new(name), Bytes::Static(bytes))
    }

    fn parse(path: &Path, map: Bytes) -> Result<Self> {
        let bad = |msg: String| Error::format(path, format!("not a valid safetensors file: {msg}"));
        if map.len() < 8 {
            return Err(bad(format!("only {} bytes", map.len())));
        }
        let header_len = u64::from_le_bytes(map[..8].try_into().unwrap());
        if header_len > (map.len() - 8) as u64 {
            return Err(bad(format!(
                "header length {header_len} exceeds the file size {}",
                map.len()
            )));
        }
        let data_start = 8 + header_len as usize;
        let header: serde_json::Value = serde_json::from_slice(&map[8..data_start])
            .map_err(|e| bad(format!("header is not JSON ({e})")))?;
        let serde_json::Value::Object(header) = header else {
            return Err(bad("header is not a JSON object".into()));
        };
        let data_len = map.len() - data_start;
        let mut entries = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, value) in header {
            if name == "__metadata__" {
                if let serde_json::Value::Object(m) = value {
                    for (k, v) in m {
                        if let serde_json::Value::String(s) = v {
                            metadata.insert(k, s);
                        }
                    }
                }
                continue;
            }
            let entry = parse_entry(&value)
                .ok_or_else(|| bad(format!("malformed header entry for tensor '{name}'")))?;
            let numel: usize = entry.shape.iter().product();
            if entry.end < entry.start
                || entry.end > data_len
                || entry.end - entry.start != numel * entry.dtype.size()
            {
                return Err(bad(format!(
                    "tensor '{name}' has data offsets [{}, {}) that do not fit its shape {:?} or the file ({} data bytes)",
                    entry.start, entry.end, entry.shape, data_len
                )));
            }
            entries.insert(name, entry);
        }
        Ok(SafeTensors {
            path: path.to_path_buf(),
            map,
            data_start,
            entries,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Result<(&Entry, &[u8])> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| Error::format(&self.path, format!("has no tensor named '{name}'")))?;
        let bytes = &self.map[self.data_start + entry.start..self.data_start + entry.end];
        Ok((entry, bytes))
    }

    /// A tensor converted to float32 (from F32, F16, BF16, F64, I64, I32 or U8).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let (entry, bytes) = self.bytes(name)?;
        let data = decode_f32(entry.dtype, bytes);
        Tensor::new(entry.shape.clone(), data).map_err(|e| e.in_file(&self.path))
    }

    /// An integer tensor (I64 or I32) as i64 values.
    pub fn tensor_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (entry, bytes) = self.bytes(name)?;
        let data = match entry.dtype {
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            other => {
                return Err(Error::format(
                    &self.path,
                    format!(
                        "tensor '{name}' is {}, expected an integer type",
                        other.name()
                    ),
                ))
            }
        };
        Ok((entry.shape.clone(), data))
    }

    /// A float tensor as float64 values (exact for F64 data).
    pub fn tensor_f64(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        let (entry, bytes) = self.bytes(name)?;
        let data = match entry.dtype {
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            d => decode_f32(d, bytes).into_iter().map(f64::from).collect(),
        };
        Ok((entry.shape.clone(), data))
    }
}

fn parse_entry(v: &serde_json::Value) -> Option<Entry> {
    let dtype = Dtype::parse(v.get("dtype")?.as_str()?)?;
    let shape = v
        .get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<Vec<_>>>()?;
    let offsets = v.get("data_offsets")?.as_array()?;
    if offsets.len() != 2 {
        return None;
    }
    Some(Entry {
        dtype,
        shape,
        start: offsets[0].as_u64()? as usize,
        end: offsets[1].as_u64()? as usize,
    })
}

/// Convert little-endian raw data of any supported dtype to float32.
pub fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::U8 => bytes.iter().map(|&b| b as f32).collect(),
    }
}

/// Tensor data to write.
pub enum Data<'a> {
    F32(&'a [f32]),
    I32(&'a [i32]),
}

impl Data<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Data::F32(_) => Dtype::F32,
            Data::I32(_) => Dtype::I32,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Data::F32(d) => bytemuck::cast_slice(d),
            Data::I32(d) => bytemuck::cast_slice(d),
        }
    }
}

/// Write tensors `(name, shape, data)` and string metadata atomically.
pub fn write(
    path: &Path,
    tensors: &[(&str, &[usize], Data<'_>)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let numel: usize = shape.iter().product();
        let len = data.bytes().len();
        if numel * data.dtype().size() != len {
            crate::bail!("tensor '{name}': shape {shape:?} does not match its data");
        }
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": data.dtype().name(),
                "shape": shape,
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header)).expect("JSON of strings");
    // Pad so that the data section starts 8-byte aligned, which keeps memory-mapped f32/i64 reads aligned.
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    write_atomic(path, |w| {
        let io = |e| Error::io(path, e);
        w.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&json).map_err(io)?;
        for (_, _, data) in tensors {
            w.write_all(data.bytes()).map_err(io)?;
        }
        Ok(())
    })
}
