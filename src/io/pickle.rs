//! A pickle reader that builds a value tree and never executes code.
//!
//! Protocols 0 to 5 are decoded (no out-of-band buffers). `GLOBAL`/`STACK_GLOBAL` resolve only an allow-list of
//! names (see [`Global`]); calling one of them (`REDUCE`, `NEWOBJ`, `BUILD`) is emulated by data-only rules, e.g.
//! `_rebuild_tensor_v2` becomes a [`TensorView`] and numpy arrays become [`Tensor`]s. Everything else is an error
//! that names the global.
//!
//! The VM keeps its objects in an arena addressed by index, so that the memo shares objects by reference exactly
//! like Python does (a dict memoised while still empty and filled later is seen filled through every reference).
//! The arena is turned into an owned tree at `STOP`, with a depth limit (hostile nesting, reference cycles) and a
//! size budget (a shared object referenced many times is copied each time).

use crate::bail;
use crate::error::Result;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::Arc;

/// Deepest value tree accepted; real checkpoints nest a few dozen levels.
pub const MAX_DEPTH: usize = 256;
/// `_load_from_bytes` streams nested inside one another; real files nest exactly one level.
const MAX_NESTED_STREAMS: u32 = 4;

/// Element type of a torch storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageType {
    pub fn size(self) -> usize {
        match self {
            StorageType::F64 | StorageType::I64 => 8,
            StorageType::F32 | StorageType::I32 => 4,
            StorageType::F16 | StorageType::BF16 | StorageType::I16 => 2,
            StorageType::I8 | StorageType::U8 | StorageType::Bool => 1,
        }
    }

    /// From the torch class name, `FloatStorage` etc.; `UntypedStorage` holds plain bytes.
    pub fn from_class(name: &str) -> Option<StorageType> {
        Some(match name {
            "DoubleStorage" => StorageType::F64,
            "FloatStorage" => StorageType::F32,
            "HalfStorage" => StorageType::F16,
            "BFloat16Storage" => StorageType::BF16,
            "LongStorage" => StorageType::I64,
            "IntStorage" => StorageType::I32,
            "ShortStorage" => StorageType::I16,
            "CharStorage" => StorageType::I8,
            "ByteStorage" | "UntypedStorage" => StorageType::U8,
            "BoolStorage" => StorageType::Bool,
            _ => return None,
        })
    }

    /// Little-endian elements as f32 (a trailing partial element is ignored; callers check lengths).
    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        fn arr<const N: usize>(c: &[u8]) -> [u8; N] {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        }
        let n = self.size();
        let chunks = bytes.chunks_exact(n);
        match self {
            StorageType::F64 => chunks.map(|c| f64::from_le_bytes(arr(c)) as f32).collect(),
            StorageType::F32 => chunks.map(|c| f32::from_le_bytes(arr(c))).collect(),
            StorageType::F16 => chunks
                .map(|c| half::f16::from_le_bytes(arr(c)).to_f32())
                .collect(),
            StorageType::BF16 => chunks
                .map(|c| half::bf16::from_le_bytes(arr(c)).to_f32())
                .collect(),
            StorageType::I64 => chunks.map(|c| i64::from_le_bytes(arr(c)) as f32).collect(),
            StorageType::I32 => chunks.map(|c| i32::from_le_bytes(arr(c)) as f32).collect(),
            StorageType::I16 => chunks.map(|c| i16::from_le_bytes(arr(c)) as f32).collect(),
            StorageType::I8 => chunks.map(|c| c[0] as i8 as f32).collect(),
            StorageType::U8 | StorageType::Bool => chunks.map(|c| c[0] as f32).collect(),
        }
    }
}

/// A torch storage: typed raw little-endian data, or (before the container supplies it) only its key.
#[derive(Clone, Debug, PartialEq)]
pub struct Storage {
    pub dtype: StorageType,
    pub key: String,
    pub numel: usize,
    pub data: Option<Arc<[u8]>>,
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)` before the storage data is attached.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorView {
    pub storage: Storage,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

impl TensorView {
    /// Gather the view into a contiguous row-major f32 tensor, honouring offset and strides.
    pub fn gather(&self, bytes: &[u8]) -> Result<Tensor> {
        let dtype = self.storage.dtype;
        let elems = bytes.len() / dtype.size();
        let numel = self
            .size
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= isize::MAX as usize / 4);
        let Some(numel) = numel else {
            bail!("tensor of size {:?} is too large", self.size);
        };
        if numel == 0 {
            return Tensor::new(self.size.clone(), Vec::new());
        }
        // The largest element index the view touches must lie inside the storage.
        let mut last = self.offset;
        for (&d, &s) in self.size.iter().zip(&self.stride) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .unwrap_or(usize::MAX);
        }
        if last >= elems {
            bail!(
                "tensor view (offset {}, size {:?}, stride {:?}) reaches past its storage of {} elements",
                self.offset,
                self.size,
                self.stride,
                elems
            );
        }
        let contiguous = {
            let mut expect = 1usize;
            let mut ok = true;
            for (&d, &s) in self.size.iter().zip(&self.stride).rev() {
                ok &= d == 1 || s == expect;
                expect *= d;
            }
            ok
        };
        let n = dtype.size();
        let data = if contiguous {
            dtype.decode(&bytes[self.offset * n..(self.offset + numel) * n])
        } else {
            let mut out = Vec::with_capacity(numel);
            let mut index = vec![0usize; self.size.len()];
            for _ in 0..numel {
                let at = self.offset
                    + index
                        .iter()
                        .zip(&self.stride)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                out.extend(dtype.decode(&bytes[at * n..(at + 1) * n]));
                for k in (0..index.len()).rev() {
                    index[k] += 1;
                    if index[k] < self.size[k] {
                        break;
                    }
                    index[k] = 0;
                }
            }
            out
        };
        Tensor::new(self.size.clone(), data)
    }
}

/// A pickled value. Dicts keep their insertion order as a list of pairs.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64, as minimal little-endian two's complement bytes (the LONG1 encoding).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    /// An allow-listed class or function used as data (e.g. `torch.FloatStorage` inside a persistent id).
    Global {
        module: String,
        name: String,
    },
    /// A reconstruction by an allow-listed callable that has no plainer form: `class` is the callable
    /// (`torch_utils.persistence._reconstruct_persistent_obj`, `argparse.Namespace`, `dnnlib.tflib.network.Network`),
    /// `args` its arguments and `state` what `BUILD` set.
    Object {
        module: String,
        name: String,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
    Storage(Storage),
    TensorView(Box<TensorView>),
    Tensor(Tensor),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::Global { .. } => "class",
            Value::Object { .. } => "object",
            Value::Storage(_) => "storage",
            Value::TensorView(_) => "tensor view",
            Value::Tensor(_) => "tensor",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// Dict entries, for a dict (plain, OrderedDict, EasyDict).
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Items of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// The value under a string key of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The string keys of a dict, in order.
    pub fn keys(&self) -> Vec<String> {
        self.as_dict()
            .map(|d| {
                d.iter()
                    .filter_map(|(k, _)| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True for an `Object` made by the callable `module.name`.
    pub fn is_object(&self, module: &str, name: &str) -> bool {
        matches!(self, Value::Object { module: m, name: n, .. } if m == module && n == name)
    }
}

/// The only globals a pickle may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    Set,
    FrozenSet,
    RebuildTensor,
    RebuildParameter,
    StorageClass(StorageType),
    TorchDtype,
    LoadFromBytes,
    PersistentObj,
    EasyDict,
    Namespace,
    NpDtype,
    NpNdarray,
    NpReconstruct,
    NpScalar,
    TfNetwork,
}

impl Global {
    fn lookup(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("builtins" | "__builtin__", "set") => Global::Set,
            ("builtins" | "__builtin__", "frozenset") => Global::FrozenSet,
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                Global::RebuildParameter
            }
            ("torch", n) if StorageType::from_class(n).is_some() => {
                Global::StorageClass(StorageType::from_class(n)?)
            }
            (
                "torch",
                "float32" | "float16" | "float64" | "bfloat16" | "int64" | "int32" | "int16"
                | "int8" | "uint8" | "bool",
            ) => Global::TorchDtype,
            ("torch.storage", "_load_from_bytes") => Global::LoadFromBytes,
            ("torch_utils.persistence", "_reconstruct_persistent_obj") => Global::PersistentObj,
            ("dnnlib.util" | "dnnlib" | "dnnlib.easydict", "EasyDict") => Global::EasyDict,
            ("argparse", "Namespace") => Global::Namespace,
            ("numpy", "dtype") => Global::NpDtype,
            ("numpy", "ndarray") => Global::NpNdarray,
            ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
                Global::NpReconstruct
            }
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Global::NpScalar,
            ("dnnlib.tflib.network", "Network") => Global::TfNetwork,
            _ => return None,
        })
    }
}

type Id = usize;

/// A name as the pickle spelled it, plus what it resolved to.
#[derive(Clone, Debug)]
struct Named {
    module: String,
    name: String,
    global: Global,
}

#[derive(Debug)]
enum Node {
    Leaf(Value),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    Global(Named),
    Object {
        class: Named,
        args: Vec<Id>,
        state: Option<Id>,
    },
}

/// Hands a persistent id (the `BINPERSID`/`PERSID` argument) to the container format, which returns its object.
pub type Resolver<'r> = dyn FnMut(Value) -> Result<Value> + 'r;

/// Unpickle one pickle from the start of `data`. Returns the value and the offset just past its `STOP`.
pub fn load(data: &[u8], resolver: &mut Resolver<'_>) -> Result<(Value, usize)> {
    load_nested(data, resolver, 0)
}

pub(crate) fn load_nested(
    data: &[u8],
    resolver: &mut Resolver<'_>,
    nesting: u32,
) -> Result<(Value, usize)> {
    if nesting > MAX_NESTED_STREAMS {
        bail!("torch streams nested more than {MAX_NESTED_STREAMS} levels deep");
    }
    let mut vm = Vm {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        nesting,
        budget: data.len().saturating_mul(16).saturating_add(1 << 20),
    };
    let root = vm.run(resolver)?;
    let value = vm.export(root, 0)?;
    Ok((value, vm.pos))
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    /// Stack heights at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    nesting: u32,
    /// What the exported tree may still cost (bytes, roughly), against memo-sharing blow-ups.
    budget: usize,
}

impl<'a> Vm<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            bail!(
                "truncated pickle at offset {} (needs {} more bytes, {} left)",
                self.pos,
                n,
                self.data.len() - self.pos
            );
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A length prefix, checked against what is left so a hostile length cannot make us allocate.
    fn len_of(&mut self, n: u64) -> Result<usize> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            bail!(
                "truncated pickle at offset {}: declared length {} exceeds the {} bytes left",
                self.pos,
                n,
                left
            );
        }
        Ok(n as usize)
    }

    fn len32(&mut self) -> Result<usize> {
        let n = u32::from_le_bytes(self.le()?);
        self.len_of(n as u64)
    }

    fn len64(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.le()?);
        self.len_of(n)
    }

    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            bail!("truncated pickle at offset {}: unterminated line", self.pos);
        };
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn text_line(&mut self) -> Result<String> {
        let l = self.line()?;
        Ok(String::from_utf8_lossy(l).into_owned())
    }

    fn push(&mut self, node: Node) {
        self.nodes.push(node);
        self.stack.push(self.nodes.len() - 1);
    }

    fn leaf(&mut self, v: Value) {
        self.push(Node::Leaf(v));
    }

    fn pop(&mut self, at: usize, op: u8) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("pickle stack underflow at offset {at} (opcode 0x{op:02x})");
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn top(&self, at: usize, op: u8) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("pickle stack underflow at offset {at} (opcode 0x{op:02x})");
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    /// Everything pushed since the last MARK.
    fn pop_mark(&mut self, at: usize) -> Result<Vec<Id>> {
        let Some(m) = self.marks.pop() else {
            bail!("pickle opcode at offset {at} needs a MARK and there is none");
        };
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&self, key: u64, at: usize) -> Result<Id> {
        match self.memo.get(&key) {
            Some(&id) => Ok(id),
            None => bail!("pickle memo key {key} read before it was written (offset {at})"),
        }
    }

    fn memo_put(&mut self, key: u64, at: usize, op: u8) -> Result<()> {
        let id = self.top(at, op)?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn global(&mut self, module: String, name: String) -> Result<()> {
        let Some(global) = Global::lookup(&module, &name) else {
            bail!("forbidden pickle global '{module}.{name}'");
        };
        self.push(Node::Global(Named {
            module,
            name,
            global,
        }));
        Ok(())
    }

    fn run(&mut self, resolver: &mut Resolver<'_>) -> Result<Id> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        bail!("unsupported pickle protocol {p} at offset {at}");
                    }
                }
                // FRAME: a length hint; the frame's contents are ordinary opcodes.
                0x95 => {
                    let n = u64::from_le_bytes(self.le()?);
                    self.len_of(n)?;
                }
                b'.' => return self.pop(at, op),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop(at, op)?;
                }
                b'1' => {
                    self.pop_mark(at)?;
                }
                b'2' => {
                    let t = self.top(at, op)?;
                    self.stack.push(t);
                }
                b'N' => self.leaf(Value::None),
                0x88 => self.leaf(Value::Bool(true)),
                0x89 => self.leaf(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.leaf(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.leaf(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.leaf(Value::Int(v as i64));
                }
                b'I' => {
                    let l = self.text_line()?;
                    let v = match l.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(parse_int(s, at)?),
                    };
                    self.leaf(v);
                }
                b'L' => {
                    let l = self.text_line()?;
                    let v = parse_int(l.trim_end_matches('L'), at)?;
                    self.leaf(Value::Int(v));
                }
                0x8a => {
                    let n = self.u8()? as u64;
                    let n = self.len_of(n)?;
                    let b = self.take(n)?;
                    self.leaf(long_value(b));
                }
                0x8b => {
                    let n = self.len32()?;
                    let b = self.take(n)?;
                    self.leaf(long_value(b));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.leaf(Value::Float(v));
                }
                b'F' => {
                    let l = self.text_line()?;
                    let Ok(v) = l.trim().parse::<f64>() else {
                        bail!("bad FLOAT literal {l:?} at offset {at}");
                    };
                    self.leaf(Value::Float(v));
                }
                b'X' => {
                    let n = self.len32()?;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.leaf(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    let n = self.len_of(n)?;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.leaf(Value::Str(s));
                }
                0x8d => {
                    let n = self.len64()?;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.leaf(Value::Str(s));
                }
                b'V' => {
                    let l = self.line()?;
                    self.leaf(Value::Str(raw_unicode_escape(l)));
                }
                // Python 2 byte strings: kept as bytes (numpy array data in old pickles is one).
                b'T' => {
                    let n = self.len32()?;
                    let b = self.take(n)?.to_vec();
                    self.leaf(Value::Bytes(b));
                }
                b'U' => {
                    let n = self.u8()? as u64;
                    let n = self.len_of(n)?;
                    let b = self.take(n)?.to_vec();
                    self.leaf(Value::Bytes(b));
                }
                b'S' => {
                    let l = self.line()?;
                    let b = python_string_literal(l, at)?;
                    self.leaf(Value::Bytes(b));
                }
                b'B' => {
                    let n = self.len32()?;
                    let b = self.take(n)?.to_vec();
                    self.leaf(Value::Bytes(b));
                }
                b'C' => {
                    let n = self.u8()? as u64;
                    let n = self.len_of(n)?;
                    let b = self.take(n)?.to_vec();
                    self.leaf(Value::Bytes(b));
                }
                0x8e | 0x96 => {
                    let n = self.len64()?;
                    let b = self.take(n)?.to_vec();
                    self.leaf(Value::Bytes(b));
                }
                // READONLY_BUFFER: only changes mutability, which a value tree does not have.
                0x98 => {
                    self.top(at, op)?;
                }
                b')' => self.push(Node::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at, op)?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items));
                }
                b']' => self.push(Node::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark(at)?;
                    self.push(Node::List(items));
                }
                b'a' => {
                    let item = self.pop(at, op)?;
                    let list = self.top(at, op)?;
                    self.extend_list(list, vec![item], at)?;
                }
                b'e' => {
                    let items = self.pop_mark(at)?;
                    let list = self.top(at, op)?;
                    self.extend_list(list, items, at)?;
                }
                b'}' => self.push(Node::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark(at)?;
                    let pairs = pairs(items, at)?;
                    self.push(Node::Dict(pairs));
                }
                b's' => {
                    let v = self.pop(at, op)?;
                    let k = self.pop(at, op)?;
                    let d = self.top(at, op)?;
                    self.set_items(d, vec![(k, v)], at)?;
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    let d = self.top(at, op)?;
                    let pairs = pairs(items, at)?;
                    self.set_items(d, pairs, at)?;
                }
                0x8f => self.push(Node::Set(Vec::new())),
                0x90 => {
                    let items = self.pop_mark(at)?;
                    let s = self.top(at, op)?;
                    match &mut self.nodes[s] {
                        Node::Set(v) => v.extend(items),
                        other => bail!("ADDITEMS on a {} at offset {at}", node_kind(other)),
                    }
                }
                0x91 => {
                    let items = self.pop_mark(at)?;
                    self.push(Node::Set(items));
                }
                b'p' => {
                    let l = self.text_line()?;
                    let key = parse_int(&l, at)?;
                    self.memo_put(key as u64, at, op)?;
                }
                b'q' => {
                    let key = self.u8()? as u64;
                    self.memo_put(key, at, op)?;
                }
                b'r' => {
                    let key = u32::from_le_bytes(self.le()?) as u64;
                    self.memo_put(key, at, op)?;
                }
                0x94 => {
                    let key = self.memo.len() as u64;
                    self.memo_put(key, at, op)?;
                }
                b'g' => {
                    let l = self.text_line()?;
                    let key = parse_int(&l, at)?;
                    let id = self.memo_get(key as u64, at)?;
                    self.stack.push(id);
                }
                b'h' => {
                    let key = self.u8()? as u64;
                    let id = self.memo_get(key, at)?;
                    self.stack.push(id);
                }
                b'j' => {
                    let key = u32::from_le_bytes(self.le()?) as u64;
                    let id = self.memo_get(key, at)?;
                    self.stack.push(id);
                }
                b'c' => {
                    let module = self.text_line()?;
                    let name = self.text_line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop(at, op)?;
                    let module = self.pop(at, op)?;
                    match (&self.nodes[module], &self.nodes[name]) {
                        (Node::Leaf(Value::Str(m)), Node::Leaf(Value::Str(n))) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(m, n)?;
                        }
                        _ => bail!("STACK_GLOBAL at offset {at} needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop(at, op)?;
                    let func = self.pop(at, op)?;
                    let args = self.tuple_items(args, at)?;
                    let id = self.call(func, args, at)?;
                    self.stack.push(id);
                }
                0x81 => {
                    let args = self.pop(at, op)?;
                    let cls = self.pop(at, op)?;
                    let args = self.tuple_items(args, at)?;
                    let id = self.call(cls, args, at)?;
                    self.stack.push(id);
                }
                0x92 => {
                    let kwargs = self.pop(at, op)?;
                    let args = self.pop(at, op)?;
                    let cls = self.pop(at, op)?;
                    if !matches!(&self.nodes[kwargs], Node::Dict(d) if d.is_empty()) {
                        bail!("NEWOBJ_EX with keyword arguments is not supported (offset {at})");
                    }
                    let args = self.tuple_items(args, at)?;
                    let id = self.call(cls, args, at)?;
                    self.stack.push(id);
                }
                b'b' => {
                    let state = self.pop(at, op)?;
                    let target = self.top(at, op)?;
                    self.build(target, state, at)?;
                }
                b'Q' => {
                    let pid = self.pop(at, op)?;
                    let pid = self.export(pid, 0)?;
                    let v = resolver(pid)?;
                    self.leaf(v);
                }
                b'P' => {
                    let pid = self.text_line()?;
                    let v = resolver(Value::Str(pid))?;
                    self.leaf(v);
                }
                _ => bail!("unknown pickle opcode 0x{op:02x} at offset {at}"),
            }
        }
    }

    fn extend_list(&mut self, list: Id, items: Vec<Id>, at: usize) -> Result<()> {
        match &mut self.nodes[list] {
            Node::List(v) => v.extend(items),
            other => bail!("APPEND on a {} at offset {at}", node_kind(other)),
        }
        Ok(())
    }

    fn set_items(&mut self, d: Id, pairs: Vec<(Id, Id)>, at: usize) -> Result<()> {
        match &mut self.nodes[d] {
            Node::Dict(v) => v.extend(pairs),
            other => bail!("SETITEM on a {} at offset {at}", node_kind(other)),
        }
        Ok(())
    }

    fn tuple_items(&self, id: Id, at: usize) -> Result<Vec<Id>> {
        match &self.nodes[id] {
            Node::Tuple(v) => Ok(v.clone()),
            other => bail!(
                "call arguments must be a tuple, got a {} (offset {at})",
                node_kind(other)
            ),
        }
    }

    fn items_of(&self, id: Id, at: usize) -> Result<Vec<Id>> {
        match &self.nodes[id] {
            Node::Tuple(v) | Node::List(v) | Node::Set(v) => Ok(v.clone()),
            other => bail!(
                "expected a sequence, got a {} (offset {at})",
                node_kind(other)
            ),
        }
    }

    /// `REDUCE`/`NEWOBJ`: emulate an allow-listed callable on its arguments, returning the result's node.
    fn call(&mut self, func: Id, args: Vec<Id>, at: usize) -> Result<Id> {
        let Node::Global(named) = &self.nodes[func] else {
            bail!(
                "cannot call a {} (offset {at})",
                node_kind(&self.nodes[func])
            );
        };
        let named = named.clone();
        let node = match named.global {
            Global::OrderedDict | Global::EasyDict => match args.as_slice() {
                [] => Node::Dict(Vec::new()),
                [src] => match &self.nodes[*src] {
                    Node::Dict(d) => Node::Dict(d.clone()),
                    _ => {
                        let mut out = Vec::new();
                        for pair in self.items_of(*src, at)? {
                            match self.items_of(pair, at)?.as_slice() {
                                [k, v] => out.push((*k, *v)),
                                _ => bail!("{}: items must be pairs (offset {at})", named.name),
                            }
                        }
                        Node::Dict(out)
                    }
                },
                _ => bail!(
                    "{} called with {} arguments (offset {at})",
                    named.name,
                    args.len()
                ),
            },
            Global::Set | Global::FrozenSet => match args.as_slice() {
                [] => Node::Set(Vec::new()),
                [src] => Node::Set(self.items_of(*src, at)?),
                _ => bail!("set called with {} arguments (offset {at})", args.len()),
            },
            // A Parameter is its tensor for our purposes.
            Global::RebuildParameter => match args.first() {
                Some(&t) => return Ok(t),
                None => bail!("_rebuild_parameter without arguments (offset {at})"),
            },
            Global::RebuildTensor => {
                let mut vals = Vec::with_capacity(4);
                for &a in args.iter().take(4) {
                    vals.push(self.export(a, 0)?);
                }
                Node::Leaf(Value::TensorView(Box::new(tensor_view(vals, at)?)))
            }
            Global::LoadFromBytes => {
                let [b] = args.as_slice() else {
                    bail!("_load_from_bytes needs one argument (offset {at})");
                };
                let Node::Leaf(Value::Bytes(bytes)) = &self.nodes[*b] else {
                    bail!("_load_from_bytes needs bytes (offset {at})");
                };
                let bytes = bytes.clone();
                let v = crate::io::torch::load_legacy_nested(&bytes, self.nesting + 1)?;
                Node::Leaf(v)
            }
            Global::NpScalar => {
                let [dtype, b] = args.as_slice() else {
                    bail!("numpy scalar needs (dtype, bytes) (offset {at})");
                };
                let dtype = self.np_dtype(*dtype, at)?;
                let Node::Leaf(Value::Bytes(bytes)) = &self.nodes[*b] else {
                    bail!("numpy scalar needs bytes (offset {at})");
                };
                Node::Leaf(dtype.scalar(bytes)?)
            }
            Global::PersistentObj
            | Global::Namespace
            | Global::TfNetwork
            | Global::NpDtype
            | Global::NpReconstruct => Node::Object {
                class: named,
                args,
                state: None,
            },
            Global::StorageClass(_) | Global::TorchDtype | Global::NpNdarray => {
                bail!(
                    "pickle global '{}.{}' cannot be called (offset {at})",
                    named.module,
                    named.name
                )
            }
        };
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn build(&mut self, target: Id, state: Id, at: usize) -> Result<()> {
        let replace = match &mut self.nodes[target] {
            Node::Object {
                class, state: s, ..
            } if class.global != Global::NpReconstruct => {
                *s = Some(state);
                None
            }
            Node::Object { args, .. } => Some(args.clone()),
            // Attributes of a dict subclass (a state dict's `_metadata`) carry nothing we use.
            Node::Dict(_) => None,
            other => bail!("BUILD on a {} at offset {at}", node_kind(other)),
        };
        if let Some(args) = replace {
            if args.len() != 3 {
                bail!("numpy _reconstruct needs 3 arguments (offset {at})");
            }
            let tensor = self.np_array(state, at)?;
            self.nodes[target] = Node::Leaf(Value::Tensor(tensor));
        }
        Ok(())
    }

    /// A numpy `dtype` object: its descriptor argument (`'f4'`) and the byte order from its BUILD state.
    fn np_dtype(&self, id: Id, at: usize) -> Result<NpType> {
        let Node::Object { class, args, state } = &self.nodes[id] else {
            bail!("expected a numpy dtype (offset {at})");
        };
        if class.global != Global::NpDtype {
            bail!(
                "expected a numpy dtype, got {}.{} (offset {at})",
                class.module,
                class.name
            );
        }
        let descr = match args.first().map(|&a| &self.nodes[a]) {
            Some(Node::Leaf(Value::Str(s))) => s.clone(),
            Some(Node::Leaf(Value::Bytes(b))) => String::from_utf8_lossy(b).into_owned(),
            _ => bail!("numpy dtype without a descriptor (offset {at})"),
        };
        let order = state
            .and_then(|s| match &self.nodes[s] {
                Node::Tuple(t) => t.get(1).copied(),
                _ => None,
            })
            .and_then(|o| match &self.nodes[o] {
                Node::Leaf(Value::Str(s)) => s.bytes().next(),
                Node::Leaf(Value::Bytes(b)) => b.first().copied(),
                _ => None,
            })
            .unwrap_or(b'<');
        NpType::parse(&descr, order)
    }

    /// numpy `ndarray.__setstate__((version, shape, dtype, is_fortran, raw))`, as a row-major f32 tensor.
    fn np_array(&self, state: Id, at: usize) -> Result<Tensor> {
        let Node::Tuple(items) = &self.nodes[state] else {
            bail!("numpy array state must be a tuple (offset {at})");
        };
        let [_, shape, dtype, fortran, raw] = items.as_slice() else {
            bail!("numpy array state must have 5 items (offset {at})");
        };
        let mut dims = Vec::new();
        for d in self.items_of(*shape, at)? {
            match &self.nodes[d] {
                Node::Leaf(Value::Int(i)) if *i >= 0 => dims.push(*i as usize),
                _ => bail!("numpy array shape must hold non-negative ints (offset {at})"),
            }
        }
        let dtype = self.np_dtype(*dtype, at)?;
        let fortran = matches!(self.nodes[*fortran], Node::Leaf(Value::Bool(true)));
        let Node::Leaf(Value::Bytes(raw)) = &self.nodes[*raw] else {
            bail!("numpy array data must be bytes (offset {at})");
        };
        let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel.and_then(|n| n.checked_mul(dtype.size)) != Some(raw.len()) {
            bail!(
                "numpy array of shape {dims:?} and dtype {} does not match its {} data bytes (offset {at})",
                dtype.descr,
                raw.len()
            );
        }
        let mut data = dtype.decode_all(raw);
        if fortran && dims.len() > 1 {
            // Column-major: element (i0, i1, ...) sits at i0 + d0*i1 + d0*d1*i2 + ...; gather it row-major.
            let mut strides = vec![1usize; dims.len()];
            for k in 1..dims.len() {
                strides[k] = strides[k - 1] * dims[k - 1];
            }
            let mut out = Vec::with_capacity(data.len());
            let mut index = vec![0usize; dims.len()];
            for _ in 0..data.len() {
                let at: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
                out.push(data[at]);
                for k in (0..index.len()).rev() {
                    index[k] += 1;
                    if index[k] < dims[k] {
                        break;
                    }
                    index[k] = 0;
                }
            }
            data = out;
        }
        Tensor::new(dims, data)
    }

    fn charge(&mut self, cost: usize) -> Result<()> {
        match self.budget.checked_sub(cost) {
            Some(b) => {
                self.budget = b;
                Ok(())
            }
            None => {
                bail!("pickle expands to far more data than the file holds (shared references)")
            }
        }
    }

    /// Turn a node into an owned value tree.
    fn export(&mut self, id: Id, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            bail!("pickle nests deeper than {MAX_DEPTH} levels (or has a reference cycle)");
        }
        self.charge(8)?;
        let d = depth + 1;
        let items = |vm: &mut Self, ids: Vec<Id>| -> Result<Vec<Value>> {
            ids.into_iter().map(|i| vm.export(i, d)).collect()
        };
        Ok(match &self.nodes[id] {
            Node::Leaf(v) => {
                let v = v.clone();
                self.charge(leaf_cost(&v))?;
                v
            }
            Node::Tuple(v) => Value::Tuple(items(self, v.clone())?),
            Node::List(v) => Value::List(items(self, v.clone())?),
            Node::Set(v) => Value::Set(items(self, v.clone())?),
            Node::Dict(pairs) => {
                let pairs = pairs.clone();
                let mut out = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    out.push((self.export(k, d)?, self.export(v, d)?));
                }
                Value::Dict(out)
            }
            Node::Global(n) => Value::Global {
                module: n.module.clone(),
                name: n.name.clone(),
            },
            Node::Object { class, args, state } => {
                let (module, name) = (class.module.clone(), class.name.clone());
                let (args, state) = (args.clone(), *state);
                let args = items(self, args)?;
                let state = match state {
                    Some(s) => Some(Box::new(self.export(s, d)?)),
                    None => None,
                };
                Value::Object {
                    module,
                    name,
                    args,
                    state,
                }
            }
        })
    }
}

fn leaf_cost(v: &Value) -> usize {
    match v {
        Value::Str(s) => s.len(),
        Value::Bytes(b) | Value::BigInt(b) => b.len(),
        Value::Tensor(t) => t.data.len() * 4,
        _ => 0,
    }
}

fn node_kind(n: &Node) -> &'static str {
    match n {
        Node::Leaf(v) => v.kind(),
        Node::Tuple(_) => "tuple",
        Node::List(_) => "list",
        Node::Dict(_) => "dict",
        Node::Set(_) => "set",
        Node::Global(_) => "class",
        Node::Object { .. } => "object",
    }
}

fn pairs(items: Vec<Id>, at: usize) -> Result<Vec<(Id, Id)>> {
    if !items.len().is_multiple_of(2) {
        bail!("odd number of items for a dict at offset {at}");
    }
    Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}

fn parse_int(s: &str, at: usize) -> Result<i64> {
    match s.trim().parse::<i64>() {
        Ok(v) => Ok(v),
        Err(_) => bail!("bad integer literal {s:?} at offset {at}"),
    }
}

/// LONG1/LONG4 payload: little-endian two's complement of any length.
fn long_value(b: &[u8]) -> Value {
    if b.len() <= 8 {
        let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut a = [fill; 8];
        a[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(b.to_vec())
    }
}

/// Protocol 0 `UNICODE`: raw-unicode-escape (`\uXXXX`, `\UXXXXXXXX`, other bytes are Latin-1).
fn raw_unicode_escape(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && (b[i + 1] == b'u' || b[i + 1] == b'U') {
            let n = if b[i + 1] == b'u' { 4 } else { 8 };
            let hex = b
                .get(i + 2..i + 2 + n)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .and_then(char::from_u32);
            if let Some(c) = hex {
                out.push(c);
                i += 2 + n;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Protocol 0 `STRING`: a quoted Python literal with backslash escapes.
fn python_string_literal(l: &[u8], at: usize) -> Result<Vec<u8>> {
    let q = l.first().copied();
    if l.len() < 2 || !matches!(q, Some(b'\'') | Some(b'"')) || l.last().copied() != q {
        bail!("bad STRING literal at offset {at}");
    }
    let body = &l[1..l.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        i += 1;
        if c != b'\\' || i >= body.len() {
            out.push(c);
            continue;
        }
        let e = body[i];
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0' => out.push(0),
            b'x' => {
                let v = body
                    .get(i..i + 2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(v) = v else {
                    bail!("bad \\x escape in STRING literal at offset {at}");
                };
                out.push(v);
                i += 2;
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// The numpy element types we convert: floats, signed/unsigned ints and bool, either byte order.
struct NpType {
    descr: String,
    kind: u8,
    size: usize,
    big_endian: bool,
}

impl NpType {
    fn parse(descr: &str, order: u8) -> Result<NpType> {
        let b = descr.as_bytes();
        let (kind, size) = match b {
            [k @ (b'f' | b'i' | b'u' | b'b'), rest @ ..] => {
                let size = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok());
                (*k, size)
            }
            _ => (0, None),
        };
        let ok = matches!(
            (kind, size),
            (b'f', Some(2 | 4 | 8)) | (b'i' | b'u', Some(1 | 2 | 4 | 8)) | (b'b', Some(1))
        );
        if !ok {
            bail!("unsupported numpy dtype '{descr}'");
        }
        Ok(NpType {
            descr: descr.to_string(),
            kind,
            size: size.unwrap_or(1),
            big_endian: order == b'>',
        })
    }

    fn element(&self, c: &[u8]) -> f64 {
        let mut a = [0u8; 8];
        a[..self.size].copy_from_slice(c);
        if self.big_endian {
            a[..self.size].reverse();
        }
        let signed = |bits: u32| {
            let v = u64::from_le_bytes(a);
            ((v << (64 - bits)) as i64 >> (64 - bits)) as f64
        };
        match (self.kind, self.size) {
            (b'f', 2) => half::f16::from_le_bytes([a[0], a[1]]).to_f64(),
            (b'f', 4) => f32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64,
            (b'f', _) => f64::from_le_bytes(a),
            (b'i', n) => signed(n as u32 * 8),
            _ => u64::from_le_bytes(a) as f64,
        }
    }

    fn decode_all(&self, raw: &[u8]) -> Vec<f32> {
        raw.chunks_exact(self.size)
            .map(|c| self.element(c) as f32)
            .collect()
    }

    fn scalar(&self, raw: &[u8]) -> Result<Value> {
        if raw.len() != self.size {
            bail!(
                "numpy scalar of dtype {} has {} bytes",
                self.descr,
                raw.len()
            );
        }
        let mut a = [0u8; 8];
        a[..self.size].copy_from_slice(raw);
        if self.big_endian {
            a[..self.size].reverse();
        }
        Ok(match (self.kind, self.size) {
            (b'f', _) => Value::Float(self.element(raw)),
            (b'b', _) => Value::Bool(a[0] != 0),
            (b'i', n) => {
                let v = u64::from_le_bytes(a);
                let bits = n as u32 * 8;
                Value::Int((v << (64 - bits)) as i64 >> (64 - bits))
            }
            _ => match i64::try_from(u64::from_le_bytes(a)) {
                Ok(v) => Value::Int(v),
                Err(_) => Value::Float(u64::from_le_bytes(a) as f64),
            },
        })
    }
}

/// Arguments of `_rebuild_tensor_v2`/`_rebuild_tensor`: storage, offset, size, stride.
fn tensor_view(vals: Vec<Value>, at: usize) -> Result<TensorView> {
    let mut it = vals.into_iter();
    let (Some(Value::Storage(storage)), Some(offset), Some(size), Some(stride)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        bail!("_rebuild_tensor needs (storage, offset, size, stride) (offset {at})");
    };
    let dims = |v: &Value| -> Option<Vec<usize>> {
        v.as_seq()?
            .iter()
            .map(|d| d.as_int().and_then(|i| usize::try_from(i).ok()))
            .collect()
    };
    let (Some(offset), Some(size), Some(stride)) = (
        offset.as_int().and_then(|o| usize::try_from(o).ok()),
        dims(&size),
        dims(&stride),
    ) else {
        bail!("_rebuild_tensor: offset, size and stride must be non-negative ints (offset {at})");
    };
    if size.len() != stride.len() {
        bail!("_rebuild_tensor: size {size:?} and stride {stride:?} differ in rank (offset {at})");
    }
    Ok(TensorView {
        storage,
        offset,
        size,
        stride,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_pid(_: Value) -> Result<Value> {
        bail!("no persistent ids here")
    }

    #[test]
    fn fortran_array_is_transposed() {
        // numpy array [[1,2,3],[4,5,6]] stored column-major: 1 4 2 5 3 6.
        let mut p = vec![0x80, 3];
        p.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R");
        p.extend(b"(K\x01K\x02K\x03\x86cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R");
        p.extend(b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
        p.extend(b"\x88B\x30\x00\x00\x00");
        for v in [1f64, 4., 2., 5., 3., 6.] {
            p.extend(v.to_le_bytes());
        }
        p.extend(b"tb.");
        let (v, end) = load(&p, &mut no_pid).unwrap();
        assert_eq!(end, p.len());
        let Value::Tensor(t) = v else { panic!("{v:?}") };
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, vec![1., 2., 3., 4., 5., 6.]);
    }

    #[test]
    fn memo_shares_mutations() {
        // d = {}; memoise; l = [d, d]; then fill d: both list items see the filled dict.
        let p = b"\x80\x04}\x94]\x94(h\x00h\x00e\x30h\x00X\x01\x00\x00\x00aK\x05s\x30h\x01.";
        let (v, _) = load(p, &mut no_pid).unwrap();
        let items = v.as_seq().unwrap();
        assert_eq!(items.len(), 2);
        for d in items {
            assert_eq!(d.get("a"), Some(&Value::Int(5)));
        }
    }

    #[test]
    fn text_protocol_values() {
        let p = b"(I42\nI01\nL-7L\nF1.5\nS'a\\x41\\n'\nVx\\u00e9\ntp0\n.";
        let (v, _) = load(p, &mut no_pid).unwrap();
        assert_eq!(
            v,
            Value::Tuple(vec![
                Value::Int(42),
                Value::Bool(true),
                Value::Int(-7),
                Value::Float(1.5),
                Value::Bytes(b"aA\n".to_vec()),
                Value::Str("xé".into()),
            ])
        );
    }

    #[test]
    fn long_ints() {
        assert_eq!(long_value(&[0xff]), Value::Int(-1));
        assert_eq!(long_value(&[0x00, 0x80, 0x00]), Value::Int(0x8000));
        assert!(matches!(long_value(&[1; 10]), Value::BigInt(_)));
    }

    #[test]
    fn strided_view_gathers() {
        // A 2x3 view with strides (1, 2) over [0..6): the transpose of a 3x2 row-major matrix.
        let bytes: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let view = TensorView {
            storage: Storage {
                dtype: StorageType::F32,
                key: "0".into(),
                numel: 6,
                data: None,
            },
            offset: 0,
            size: vec![2, 3],
            stride: vec![1, 2],
        };
        assert_eq!(
            view.gather(&bytes).unwrap().data,
            vec![0., 2., 4., 1., 3., 5.]
        );
        let past = TensorView {
            offset: 1,
            size: vec![6],
            stride: vec![1],
            ..view
        };
        assert!(past.gather(&bytes).is_err());
    }
}
