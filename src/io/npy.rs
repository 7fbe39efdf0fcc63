//! NumPy `.npy` arrays and `.npz` archives of them.
//!
//! A `.npy` file is the magic `\x93NUMPY`, a version, a little-endian header length (2 bytes in version 1.0, 4 in
//! 2.0 and 3.0), a Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, then the raw
//! data. We read little-endian float and integer arrays into float32 [`Tensor`]s (Fortran order is transposed to C
//! order) and write version 1.0 `<f4` C-order files.

use crate::bail;
use crate::error::{Error, Result};
use crate::io::zip::ZipArchive;
use crate::io::{map_file, temp_sibling, write_atomic};
use crate::tensor::Tensor;
use std::fs::File;
use std::io::BufWriter;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"\x93NUMPY";

#[derive(Clone, Copy)]
enum Dtype {
    F2,
    F4,
    F8,
    I4,
    I8,
}

impl Dtype {
    fn parse(descr: &str) -> Result<Dtype> {
        if descr.starts_with('>') {
            bail!("array is big-endian ('{descr}'); only little-endian data is supported");
        }
        Ok(match descr {
            "<f2" => Dtype::F2,
            "<f4" => Dtype::F4,
            "<f8" => Dtype::F8,
            "<i4" => Dtype::I4,
            "<i8" => Dtype::I8,
            _ => bail!("unsupported dtype '{descr}' (supported: <f2, <f4, <f8, <i4, <i8)"),
        })
    }

    fn size(self) -> usize {
        match self {
            Dtype::F2 => 2,
            Dtype::F4 | Dtype::I4 => 4,
            Dtype::F8 | Dtype::I8 => 8,
        }
    }

    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Dtype::F2 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F4 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F8 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            Dtype::I4 => bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            Dtype::I8 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
        }
    }
}

/// Read a `.npy` file into a float32 tensor.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let map = map_file(path)?;
    parse_npy(&map).map_err(|e| e.in_file(path))
}

/// Parse `.npy` bytes. Errors are `Error::Invalid`; the caller names the file.
pub fn parse_npy(bytes: &[u8]) -> Result<Tensor> {
    if bytes.len() < MAGIC.len() + 2 || &bytes[..MAGIC.len()] != MAGIC {
        bail!("not a .npy file (bad magic)");
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_size, utf8) = match major {
        1 => (2, false),
        2 => (4, false),
        3 => (4, true),
        _ => bail!("unsupported .npy version {major}.{minor}"),
    };
    let start = 8 + len_size;
    if bytes.len() < start {
        bail!(".npy file is truncated inside its header");
    }
    let mut len = [0u8; 4];
    len[..len_size].copy_from_slice(&bytes[8..start]);
    let header_len = u32::from_le_bytes(len) as usize;
    let Some(header) = bytes.get(start..start.saturating_add(header_len)) else {
        bail!(
            ".npy file is truncated: header of {header_len} bytes, file has {} bytes",
            bytes.len()
        );
    };
    // Versions 1 and 2 are latin-1; every byte of a valid header is ASCII, so one decoding covers both.
    let header = if utf8 {
        std::str::from_utf8(header).map_err(|_| Error::invalid(".npy header is not UTF-8"))?
    } else if header.is_ascii() {
        std::str::from_utf8(header).unwrap()
    } else {
        bail!(".npy header has non-ASCII bytes");
    };
    let Header {
        descr,
        fortran_order,
        shape,
    } = parse_header(header)?;
    let dtype = Dtype::parse(&descr)?;
    let want = shape
        .iter()
        .try_fold(dtype.size(), |n, &d| n.checked_mul(d));
    let Some(want) = want else {
        bail!(".npy shape {shape:?} is too large");
    };
    let data = &bytes[start + header_len..];
    if data.len() < want {
        bail!(
            ".npy file is truncated: shape {shape:?} of '{descr}' needs {want} data bytes, file has {}",
            data.len()
        );
    }
    if data.len() > want {
        bail!(
            ".npy file has {} bytes after the data of shape {shape:?} of '{descr}'",
            data.len() - want
        );
    }
    let values = dtype.decode(data);
    let values = if fortran_order {
        fortran_to_c(&shape, &values)
    } else {
        values
    };
    Tensor::new(shape, values)
}

/// Reorder column-major (first index fastest) values into row-major order.
fn fortran_to_c(shape: &[usize], values: &[f32]) -> Vec<f32> {
    let mut f_strides = vec![1usize; shape.len()];
    for i in 1..shape.len() {
        f_strides[i] = f_strides[i - 1] * shape[i - 1];
    }
    let mut out = Vec::with_capacity(values.len());
    let mut index = vec![0usize; shape.len()];
    let mut offset = 0usize;
    for _ in 0..values.len() {
        out.push(values[offset]);
        // Advance the C-order multi-index (last axis fastest), keeping the Fortran offset in step.
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            offset += f_strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            offset -= f_strides[axis] * shape[axis];
            index[axis] = 0;
        }
    }
    out
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parse the header dict. It is a Python literal, not JSON, so we read exactly the three keys numpy writes:
/// quoted strings, `True`/`False` and tuples of integers.
fn parse_header(text: &str) -> Result<Header> {
    // Quote a bounded prefix: a hostile header can be megabytes long.
    let quoted: String = text.trim_end().chars().take(200).collect();
    let bad = |why: &str| Error::invalid(format!(".npy header is malformed ({why}): {quoted}"));
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{').map_err(|_| bad("expected '{'"))?;
    loop {
        if p.eat(b'}') {
            break;
        }
        let key = p.string().ok_or_else(|| bad("expected a quoted key"))?;
        p.expect(b':').map_err(|_| bad("expected ':'"))?;
        match key.as_str() {
            "descr" => {
                if p.peek() == Some(b'[') {
                    return Err(bad("structured dtypes are not supported"));
                }
                descr = Some(p.string().ok_or_else(|| bad("descr is not a string"))?);
            }
            "fortran_order" => {
                fortran = Some(
                    p.boolean()
                        .ok_or_else(|| bad("fortran_order is not True/False"))?,
                );
            }
            "shape" => {
                shape = Some(
                    p.tuple()
                        .ok_or_else(|| bad("shape is not a tuple of integers"))?,
                )
            }
            other => return Err(bad(&format!("unexpected key '{other}'"))),
        }
        if !p.eat(b',') {
            p.expect(b'}').map_err(|_| bad("expected ',' or '}'"))?;
            break;
        }
    }
    if p.s[p.pos..].iter().any(|c| !c.is_ascii_whitespace()) {
        return Err(bad("text after the closing '}'"));
    }
    match (descr, fortran, shape) {
        (Some(descr), Some(fortran_order), Some(shape)) => Ok(Header {
            descr,
            fortran_order,
            shape,
        }),
        _ => Err(bad("needs the keys descr, fortran_order and shape")),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self
            .s
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), ()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(())
        }
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.peek().filter(|&q| q == b'\'' || q == b'"')?;
        let start = self.pos + 1;
        let len = self.s[start..].iter().position(|&c| c == quote)?;
        self.pos = start + len + 1;
        String::from_utf8(self.s[start..start + len].to_vec()).ok()
    }

    fn boolean(&mut self) -> Option<bool> {
        self.skip_ws();
        for (word, value) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.pos..].starts_with(word) {
                self.pos += word.len();
                return Some(value);
            }
        }
        None
    }

    fn tuple(&mut self) -> Option<Vec<usize>> {
        if !self.eat(b'(') {
            return None;
        }
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Some(dims);
            }
            self.skip_ws();
            let digits = self.s[self.pos..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            let text = std::str::from_utf8(&self.s[self.pos..self.pos + digits]).ok()?;
            dims.push(text.parse().ok()?);
            self.pos += digits;
            // Python 2 era files may write long integers as `3L`.
            if self.s.get(self.pos) == Some(&b'L') {
                self.pos += 1;
            }
            if !self.eat(b',') {
                return self.eat(b')').then_some(dims);
            }
        }
    }
}

/// Write a tensor as a version 1.0 little-endian float32 C-order `.npy`, atomically.
pub fn write_npy(path: impl AsRef<Path>, tensor: &Tensor) -> Result<()> {
    let path = path.as_ref();
    let header = npy_header(&tensor.shape).map_err(|e| e.in_file(path))?;
    write_atomic(path, |w| {
        let io = |e| Error::io(path, e);
        w.write_all(&header).map_err(io)?;
        for v in &tensor.data {
            w.write_all(&v.to_le_bytes()).map_err(io)?;
        }
        Ok(())
    })
}

/// A float32 `.npy` written batch by batch (outputs too large to hold in memory): the data goes to a temporary
/// sibling, which `finish` renames into place once every value has arrived. Dropped unfinished, it removes the
/// temporary file, so a failed job leaves nothing under the final name.
pub struct NpyStream {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
    remaining: usize,
}

impl NpyStream {
    pub fn create(path: impl AsRef<Path>, shape: &[usize]) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let header = npy_header(shape).map_err(|e| e.in_file(&path))?;
        let tmp = temp_sibling(&path);
        let file = File::create(&tmp).map_err(|e| Error::io(&path, e))?;
        let mut stream = NpyStream {
            writer: Some(BufWriter::new(file)),
            remaining: shape.iter().product(),
            path,
            tmp,
        };
        stream.put(&header)?;
        Ok(stream)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self.writer.as_mut().expect("open until finish");
        w.write_all(bytes).map_err(|e| Error::io(&self.path, e))
    }

    /// Append values in C order.
    pub fn write(&mut self, values: &[f32]) -> Result<()> {
        if values.len() > self.remaining {
            bail!(
                "{}: {} more values than the declared shape holds",
                self.path.display(),
                values.len() - self.remaining
            );
        }
        self.remaining -= values.len();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.put(&bytes)
    }

    /// Check that every value was written, then move the file into place; returns the final path.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.remaining != 0 {
            bail!(
                "{}: {} values short of the declared shape",
                self.path.display(),
                self.remaining
            );
        }
        let writer = self.writer.take().expect("open until finish");
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(std::mem::take(&mut self.path))
    }
}

impl Drop for NpyStream {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Magic, version 1.0, length and dict, padded with spaces and a final newline so that the data starts on a
/// 64-byte boundary, as the format specification asks.
fn npy_header(shape: &[usize]) -> Result<Vec<u8>> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let Ok(len) = u16::try_from(dict.len()) else {
        bail!("shape {shape:?} is too long for a version 1.0 .npy header");
    };
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    Ok(out)
}

/// Read every array of a `.npz` archive (as written by `np.savez` or `np.savez_compressed`), in archive order,
/// named without the `.npy` suffix.
pub fn read_npz(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    let map = map_file(path)?;
    let zip = ZipArchive::parse(&map).map_err(|e| e.in_file(path))?;
    let mut arrays = Vec::new();
    for member in zip.names() {
        if member.ends_with('/') {
            continue;
        }
        let Some(name) = member.strip_suffix(".npy") else {
            return Err(Error::format(
                path,
                format!("member '{member}' is not a .npy array"),
            ));
        };
        let in_member = |e: Error| Error::format(path, format!("member '{member}': {e}"));
        let bytes = zip.read(member).map_err(in_member)?;
        let tensor = parse_npy(&bytes).map_err(in_member)?;
        arrays.push((name.to_string(), tensor));
    }
    Ok(arrays)
}
