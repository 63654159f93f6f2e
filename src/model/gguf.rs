//! GGUF (v2/v3) reader: header, metadata, tensor infos and memory-mapped tensor data, plus
//! `GgufModel`, which maps a `llama`-architecture file onto the crate's `Config` and HF tensor names.
//!
//! Format (little-endian): magic "GGUF", version u32, tensor count u64, metadata count u64; then the
//! metadata key/values, then the tensor infos (name, n_dims u32, dims u64 innermost first, ggml type
//! u32, offset u64 relative to the data section); the data section starts at the next multiple of
//! `general.alignment` (default 32).
//!
//! Every read is bounds-checked against the file, and every count is checked against the bytes that
//! remain before anything is allocated, so a hostile file gives `Error::Format`, never a panic or a
//! huge allocation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::model::config::{Arch, Config, RopeScaling};
use crate::model::host::{HostTensor, RowOrder, TensorFormat, WeightSource};
use crate::tokenizer::GgufTokenizerSpec;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Nested arrays are legal in GGUF but nothing real nests deeper than this; the cap keeps a hostile
/// file from recursing the stack away.
const MAX_ARRAY_DEPTH: u32 = 4;

/// One metadata value. Arrays keep their element type so an empty array still says what it holds.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct GgufArray {
    /// GGUF value type code of the elements (0..=12).
    pub elem_type: u32,
    pub values: Vec<GgufValue>,
}

impl GgufValue {
    /// Any integer type that fits in a u64 (negative values give None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v as i64),
            GgufValue::U16(v) => Some(v as i64),
            GgufValue::U32(v) => Some(v as i64),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }
    /// Any numeric type, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
    /// A short description for error messages ("u32", "array of string", ...).
    pub fn type_name(&self) -> String {
        match self {
            GgufValue::Array(a) => format!("array of {}", value_type_name(a.elem_type)),
            GgufValue::U8(_) => "u8".into(),
            GgufValue::I8(_) => "i8".into(),
            GgufValue::U16(_) => "u16".into(),
            GgufValue::I16(_) => "i16".into(),
            GgufValue::U32(_) => "u32".into(),
            GgufValue::I32(_) => "i32".into(),
            GgufValue::F32(_) => "f32".into(),
            GgufValue::Bool(_) => "bool".into(),
            GgufValue::String(_) => "string".into(),
            GgufValue::U64(_) => "u64".into(),
            GgufValue::I64(_) => "i64".into(),
            GgufValue::F64(_) => "f64".into(),
        }
    }
}

fn value_type_name(t: u32) -> &'static str {
    match t {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

/// Smallest encoded size of a value of GGUF type `t`, used to bound array counts before allocating.
fn min_value_size(t: u32) -> u64 {
    match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4 | 5 | 6 => 4,
        8 => 8,      // u64 length, possibly empty
        9 => 4 + 8,  // element type + count
        _ => 8,      // u64, i64, f64
    }
}

/// A ggml tensor type: its GGUF code, name and block geometry. Every type the format defines is
/// listed so that sizes and offsets can be checked even for tensors we cannot compute with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    pub code: u32,
    pub name: &'static str,
    pub block_elems: u64,
    pub block_bytes: u64,
}

impl GgmlType {
    /// The storage format the rest of the crate computes with, if supported.
    pub fn format(&self) -> Option<TensorFormat> {
        Some(match self.code {
            0 => TensorFormat::F32,
            1 => TensorFormat::F16,
            30 => TensorFormat::BF16,
            8 => TensorFormat::Q8_0,
            2 => TensorFormat::Q4_0,
            3 => TensorFormat::Q4_1,
            12 => TensorFormat::Q4_K,
            13 => TensorFormat::Q5_K,
            14 => TensorFormat::Q6_K,
            _ => return None,
        })
    }
}

/// The ggml type code GGUF stores for one of the crate's formats (inverse of `GgmlType::format`).
pub fn ggml_code(format: TensorFormat) -> u32 {
    match format {
        TensorFormat::F32 => 0,
        TensorFormat::F16 => 1,
        TensorFormat::BF16 => 30,
        TensorFormat::Q8_0 => 8,
        TensorFormat::Q4_0 => 2,
        TensorFormat::Q4_1 => 3,
        TensorFormat::Q4_K => 12,
        TensorFormat::Q5_K => 13,
        TensorFormat::Q6_K => 14,
    }
}

/// ggml type codes and block sizes (ggml.h `enum ggml_type`, ggml.c `type_traits`).
const GGML_TYPES: &[GgmlType] = &[
    GgmlType { code: 0, name: "F32", block_elems: 1, block_bytes: 4 },
    GgmlType { code: 1, name: "F16", block_elems: 1, block_bytes: 2 },
    GgmlType { code: 2, name: "Q4_0", block_elems: 32, block_bytes: 18 },
    GgmlType { code: 3, name: "Q4_1", block_elems: 32, block_bytes: 20 },
    GgmlType { code: 6, name: "Q5_0", block_elems: 32, block_bytes: 22 },
    GgmlType { code: 7, name: "Q5_1", block_elems: 32, block_bytes: 24 },
    GgmlType { code: 8, name: "Q8_0", block_elems: 32, block_bytes: 34 },
    GgmlType { code: 9, name: "Q8_1", block_elems: 32, block_bytes: 40 },
    GgmlType { code: 10, name: "Q2_K", block_elems: 256, block_bytes: 84 },
    GgmlType { code: 11, name: "Q3_K", block_elems: 256, block_bytes: 110 },
    GgmlType { code: 12, name: "Q4_K", block_elems: 256, block_bytes: 144 },
    GgmlType { code: 13, name: "Q5_K", block_elems: 256, block_bytes: 176 },
    GgmlType { code: 14, name: "Q6_K", block_elems: 256, block_bytes: 210 },
    GgmlType { code: 15, name: "Q8_K", block_elems: 256, block_bytes: 292 },
    GgmlType { code: 16, name: "IQ2_XXS", block_elems: 256, block_bytes: 66 },
    GgmlType { code: 17, name: "IQ2_XS", block_elems: 256, block_bytes: 74 },
    GgmlType { code: 18, name: "IQ3_XXS", block_elems: 256, block_bytes: 98 },
    GgmlType { code: 19, name: "IQ1_S", block_elems: 256, block_bytes: 50 },
    GgmlType { code: 20, name: "IQ4_NL", block_elems: 32, block_bytes: 18 },
    GgmlType { code: 21, name: "IQ3_S", block_elems: 256, block_bytes: 110 },
    GgmlType { code: 22, name: "IQ2_S", block_elems: 256, block_bytes: 82 },
    GgmlType { code: 23, name: "IQ4_XS", block_elems: 256, block_bytes: 136 },
    GgmlType { code: 24, name: "I8", block_elems: 1, block_bytes: 1 },
    GgmlType { code: 25, name: "I16", block_elems: 1, block_bytes: 2 },
    GgmlType { code: 26, name: "I32", block_elems: 1, block_bytes: 4 },
    GgmlType { code: 27, name: "I64", block_elems: 1, block_bytes: 8 },
    GgmlType { code: 28, name: "F64", block_elems: 1, block_bytes: 8 },
    GgmlType { code: 29, name: "IQ1_M", block_elems: 256, block_bytes: 56 },
    GgmlType { code: 30, name: "BF16", block_elems: 1, block_bytes: 2 },
    GgmlType { code: 34, name: "TQ1_0", block_elems: 256, block_bytes: 54 },
    GgmlType { code: 35, name: "TQ2_0", block_elems: 256, block_bytes: 66 },
    GgmlType { code: 39, name: "MXFP4", block_elems: 32, block_bytes: 17 },
    GgmlType { code: 40, name: "NVFP4", block_elems: 64, block_bytes: 36 },
    GgmlType { code: 41, name: "Q1_0", block_elems: 128, block_bytes: 18 },
];

pub fn ggml_type(code: u32) -> Option<GgmlType> {
    GGML_TYPES.iter().copied().find(|t| t.code == code)
}

/// One tensor as described in the header. `dims` are in GGUF order (innermost first: dims[0] is the
/// number of columns); `offset` is absolute in the file and already checked to lie inside it.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    pub offset: u64,
    pub size: u64,
}

impl GgufTensorInfo {
    /// Row-major shape, outermost first (the reverse of `dims`).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// Everything before the tensor data: parsed from a byte slice so it can be fuzzed without files.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    /// Absolute file offset where the data section starts.
    pub data_offset: u64,
}

impl GgufHeader {
    /// Parse and validate a whole GGUF file held in `bytes`; `path` only names it in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<GgufHeader> {
        let mut r = Reader { buf: bytes, pos: 0, path };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(r.err(format!("not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")")));
        }
        let version = r.u32("version")?;
        if version == 1 {
            return Err(r.err("GGUF version 1 is not supported (re-convert the model with a current llama.cpp)"));
        }
        if !(2..=3).contains(&version) {
            return Err(r.err(format!("unsupported GGUF version {version} (this reader knows 2 and 3)")));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at
        // least 8 + 4 + 8 + 4 + 8. Checking first keeps a forged count from reserving gigabytes.
        r.check_count(n_kv, 13, "metadata count")?;
        let mut metadata = Vec::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let t = r.u32(&format!("type of metadata `{key}`"))?;
            let v = r.value(t, &key, 0)?;
            metadata.push((key, v));
        }
        r.check_count(n_tensors, 32, "tensor count")?;
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(r.err(format!("general.alignment {v:?} is not a power of two up to 1 MiB"))),
            },
        };
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("name of tensor #{i}"))?;
            let n_dims = r.u32(&format!("tensor `{name}` dimension count"))?;
            if n_dims > MAX_DIMS {
                return Err(r.err(format!("tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&format!("tensor `{name}` dimensions"))?);
            }
            let code = r.u32(&format!("tensor `{name}` type"))?;
            let offset = r.u64(&format!("tensor `{name}` offset"))?;
            raw.push((name, dims, code, offset));
        }
        let data_offset = align_up(r.pos as u64, alignment)
            .ok_or_else(|| r.err("data section offset overflows"))?;
        let file_len = bytes.len() as u64;
        if data_offset > file_len && !raw.is_empty() {
            return Err(r.err(format!("file ends at byte {file_len}, before its data section at {data_offset} (truncated?)")));
        }
        let mut tensors = Vec::with_capacity(raw.len());
        let mut seen = std::collections::HashSet::with_capacity(raw.len());
        for (name, dims, code, rel) in raw {
            let ty = ggml_type(code)
                .ok_or_else(|| r.err(format!("tensor `{name}` has unknown ggml type code {code}")))?;
            if !seen.insert(name.clone()) {
                return Err(r.err(format!("tensor `{name}` appears twice")));
            }
            let mut numel: u64 = 1;
            for &d in &dims {
                numel = numel
                    .checked_mul(d)
                    .filter(|&n| n < 1 << 60)
                    .ok_or_else(|| r.err(format!("tensor `{name}` dimensions {dims:?} overflow")))?;
            }
            let cols = dims.first().copied().unwrap_or(1);
            if cols % ty.block_elems != 0 {
                return Err(r.err(format!(
                    "tensor `{name}`: row length {cols} is not a multiple of the {} block size {}",
                    ty.name, ty.block_elems
                )));
            }
            let size = numel / ty.block_elems * ty.block_bytes;
            if rel % alignment != 0 {
                return Err(r.err(format!("tensor `{name}` offset {rel} is not a multiple of the alignment {alignment}")));
            }
            let offset = data_offset.checked_add(rel);
            let end = offset.and_then(|o| o.checked_add(size));
            match (offset, end) {
                (Some(offset), Some(end)) if end <= file_len => {
                    tensors.push(GgufTensorInfo { name, dims, ggml_type: ty, offset, size })
                }
                _ => {
                    return Err(r.err(format!(
                        "tensor `{name}` ({} bytes at data offset {rel}) extends past the end of the file ({file_len} bytes; truncated?)",
                        size
                    )))
                }
            }
        }
        Ok(GgufHeader { version, metadata, tensors, alignment, data_offset })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.path, format!("GGUF: {}", msg.into()))
    }
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "file ends at byte {} while reading {what} ({n} bytes needed at offset {}; truncated?)",
                self.buf.len(),
                self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    /// Refuse a count of items that could not possibly fit in the rest of the file.
    fn check_count(&self, n: u64, min_item: u64, what: &str) -> Result<()> {
        if n.checked_mul(min_item).is_none_or(|b| b > self.remaining()) {
            return Err(self.err(format!(
                "{what} {n} is impossible: only {} bytes remain in the file",
                self.remaining()
            )));
        }
        Ok(())
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        Ok(s.try_into().expect("take returned N bytes"))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(self.err(format!(
                "{what}: string length {len} exceeds the {} bytes left in the file",
                self.remaining()
            )));
        }
        let bytes = self.take(len, what)?;
        // Some converters wrote token pieces that are not valid UTF-8; keep the file usable.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn value(&mut self, t: u32, key: &str, depth: u32) -> Result<GgufValue> {
        let what = format!("metadata `{key}`");
        Ok(match t {
            0 => GgufValue::U8(self.array::<1>(&what)?[0]),
            1 => GgufValue::I8(self.array::<1>(&what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("{what}: bool byte {b} is neither 0 nor 1"))),
            },
            8 => GgufValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem_type = self.u32(&what)?;
                if elem_type > 12 {
                    return Err(self.err(format!("{what}: unknown array element type {elem_type}")));
                }
                let n = self.u64(&what)?;
                self.check_count(n, min_value_size(elem_type), &format!("{what}: array length"))?;
                let mut values = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    values.push(self.value(elem_type, key, depth + 1)?);
                }
                GgufValue::Array(GgufArray { elem_type, values })
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            _ => return Err(self.err(format!("{what}: unknown value type {t}"))),
        })
    }
}

/// A GGUF file: parsed header plus the memory-mapped bytes.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    header: GgufHeader,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; as with every mmap-based loader, a file truncated or rewritten
        // by another process while mapped is outside what we can defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let header = GgufHeader::parse(&path, &map)?;
        Ok(GgufFile { path, map, header })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.header.metadata
    }
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.header.get(key)
    }
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.header.tensors
    }
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }
    /// The raw bytes of a tensor (bounds were checked when the header was parsed).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        &self.map[info.offset as usize..(info.offset + info.size) as usize]
    }
}

/// A `llama`-architecture GGUF model (Llama, Mistral, SmolLM, ...), presented with HF tensor names
/// and HF conventions.
pub struct GgufModel {
    file: GgufFile,
    config: Config,
    /// HF name -> index into `file.tensors()`.
    names: HashMap<String, usize>,
}

impl GgufModel {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufModel> {
        let file = GgufFile::open(path)?;
        let path = file.path().to_path_buf();
        let arch = match file.get("general.architecture") {
            Some(GgufValue::String(s)) => s.clone(),
            Some(v) => return Err(field_err(&path, "general.architecture", format!("is a {}, expected a string", v.type_name()))),
            None => return Err(field_err(&path, "general.architecture", "missing")),
        };
        if arch != "llama" {
            return Err(Error::Unsupported(format!(
                "{}: model architecture `{arch}` (this crate runs the `llama` architecture: Llama, Mistral and their fine-tunes)",
                path.display()
            )));
        }
        let mut names = HashMap::with_capacity(file.tensors().len());
        for (i, t) in file.tensors().iter().enumerate() {
            let Some(hf) = hf_name(&t.name) else { continue };
            if t.ggml_type.format().is_none() {
                return Err(Error::Unsupported(format!(
                    "{}: tensor `{}` is stored as {} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)",
                    path.display(),
                    t.name,
                    t.ggml_type.name
                )));
            }
            names.insert(hf, i);
        }
        let config = config_from_metadata(&file, &names)?;
        Ok(GgufModel { file, config, names })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        self.file.metadata()
    }
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.file.get(key)
    }

    /// The tokenizer description stored in `tokenizer.ggml.*` and `tokenizer.chat_template`.
    pub fn tokenizer_spec(&self) -> Result<GgufTokenizerSpec> {
        let path = self.file.path();
        let md = Meta { file: &self.file };
        let model = md.str("tokenizer.ggml.model")?.ok_or_else(|| field_err(path, "tokenizer.ggml.model", "missing"))?;
        let tokens = md.str_array("tokenizer.ggml.tokens")?.ok_or_else(|| field_err(path, "tokenizer.ggml.tokens", "missing"))?;
        let n = tokens.len();
        let scores = md.f32_array("tokenizer.ggml.scores")?.unwrap_or_default();
        let token_types = md.i32_array("tokenizer.ggml.token_type")?.unwrap_or_default();
        for (key, len) in [("tokenizer.ggml.scores", scores.len()), ("tokenizer.ggml.token_type", token_types.len())] {
            if len != 0 && len != n {
                return Err(field_err(path, key, format!("has {len} entries but there are {n} tokens")));
            }
        }
        let id = |key: &str| -> Result<Option<u32>> {
            match md.u64(key)? {
                None => Ok(None),
                Some(v) if (v as usize) < n => Ok(Some(v as u32)),
                Some(v) => Err(field_err(path, key, format!("token id {v} is outside the vocabulary of {n}"))),
            }
        };
        Ok(GgufTokenizerSpec {
            model: model.to_string(),
            pre: md.str("tokenizer.ggml.pre")?.map(str::to_string),
            merges: md.str_array("tokenizer.ggml.merges")?.unwrap_or_default(),
            scores,
            token_types,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: md.bool("tokenizer.ggml.add_bos_token")?,
            add_eos: md.bool("tokenizer.ggml.add_eos_token")?,
            chat_template: md.str("tokenizer.chat_template")?.map(str::to_string),
            tokens,
            eot_id: id("tokenizer.ggml.eot_token_id")?,
            add_space_prefix: md.bool("tokenizer.ggml.add_space_prefix")?,
        })
    }
}

impl WeightSource for GgufModel {
    fn config(&self) -> &Config {
        &self.config
    }
    fn origin(&self) -> &Path {
        self.file.path()
    }
    fn has_tensor(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let (t, order) = self.stored_tensor(name)?;
        match order {
            RowOrder::AsStored => Ok(t),
            order => {
                let data = reorder_rows(&t.data, t.shape.first().copied().unwrap_or(1), order);
                Ok(HostTensor { data: Cow::Owned(data), ..t })
            }
        }
    }
    fn stored_tensor(&self, name: &str) -> Result<(HostTensor<'_>, RowOrder)> {
        let &i = self.names.get(name).ok_or_else(|| {
            Error::tensor(name, format!("not in {} (GGUF name `{}`)", self.file.path().display(), gguf_name(name)))
        })?;
        let info = &self.file.tensors()[i];
        let format = info.ggml_type.format().expect("checked at open");
        let bytes = self.file.tensor_bytes(info);
        let shape = info.shape();
        // llama.cpp's converter reorders the rows of each Q/K head from HF's rotate-half layout
        // (first half, second half) to interleaved pairs; the order says how to move them back.
        let heads = if name.contains(".self_attn.q_proj.") {
            Some(self.config.num_heads)
        } else if name.contains(".self_attn.k_proj.") {
            Some(self.config.num_kv_heads)
        } else {
            None
        };
        let order = match heads {
            None => RowOrder::AsStored,
            Some(heads) => RowOrder::paired_heads(name, shape.first().copied().unwrap_or(1), heads)?,
        };
        Ok((HostTensor { name: name.to_string(), shape, format, data: Cow::Borrowed(bytes) }, order))
    }
}

/// The rows of `bytes` (`rows` rows as stored) in HF order.
fn reorder_rows(bytes: &[u8], rows: usize, order: RowOrder) -> Vec<u8> {
    let row_bytes = bytes.len() / rows.max(1);
    let mut out = vec![0u8; row_bytes * rows];
    for r in 0..rows {
        let src = order.stored_row(r);
        out[r * row_bytes..(r + 1) * row_bytes].copy_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
    }
    out
}

/// llama.cpp's Q/K row permutation (what its converter applies; `RowOrder::PairedHeads` undoes it):
/// HF row `s * hd/2 + i` of each head of `hd` rows is stored as row `2i + s`.
pub(crate) fn permute_rows(name: &str, bytes: &[u8], rows: usize, heads: usize) -> Result<Vec<u8>> {
    let order = RowOrder::paired_heads(name, rows, heads)?;
    if bytes.len() % rows != 0 {
        return Err(Error::tensor(name, format!("{} bytes are not {rows} whole rows", bytes.len())));
    }
    let row_bytes = bytes.len() / rows;
    let mut out = vec![0u8; bytes.len()];
    for r in 0..rows {
        let stored = order.stored_row(r);
        out[stored * row_bytes..(stored + 1) * row_bytes].copy_from_slice(&bytes[r * row_bytes..(r + 1) * row_bytes]);
    }
    Ok(out)
}

/// GGUF tensor name -> HF name, for the tensors a llama model uses (None for anything else).
pub fn hf_name(gguf: &str) -> Option<String> {
    let (stem, suffix) = gguf.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let base = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf_part = match part {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf_part}")
        }
    };
    Some(format!("{base}.{suffix}"))
}

/// HF tensor name -> GGUF name (for error messages).
pub fn gguf_name(hf: &str) -> String {
    let map = [
        ("model.embed_tokens", "token_embd"),
        ("model.norm", "output_norm"),
        ("lm_head", "output"),
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    let mut s = hf.replacen("model.layers.", "blk.", 1);
    for (h, g) in map {
        if s.contains(h) {
            s = s.replacen(h, g, 1);
            break;
        }
    }
    s
}

fn field_err(path: &Path, field: &str, msg: impl Into<String>) -> Error {
    Error::Config { path: path.to_path_buf(), field: field.to_string(), msg: msg.into() }
}

/// Typed metadata look-ups: missing keys give None, present keys of the wrong type give an error.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl<'a> Meta<'a> {
    fn wrong(&self, key: &str, v: &GgufValue, want: &str) -> Error {
        field_err(self.file.path(), key, format!("is a {}, expected {want}", v.type_name()))
    }
    fn u64(&self, key: &str) -> Result<Option<u64>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.wrong(key, v, "a non-negative integer")),
        }
    }
    fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong(key, v, "a number")),
        }
    }
    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.wrong(key, v, "a bool")),
        }
    }
    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong(key, v, "a string")),
        }
    }
    fn array(&self, key: &str) -> Result<Option<&'a [GgufValue]>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(|a| Some(&a.values[..])).ok_or_else(|| self.wrong(key, v, "an array")),
        }
    }
    fn str_array(&self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(a) = self.array(key)? else { return Ok(None) };
        a.iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| self.wrong(key, v, "strings")))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
    fn f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(a) = self.array(key)? else { return Ok(None) };
        a.iter()
            .map(|v| v.as_f64().map(|x| x as f32).ok_or_else(|| self.wrong(key, v, "numbers")))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
    fn i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        let Some(a) = self.array(key)? else { return Ok(None) };
        a.iter()
            .map(|v| v.as_i64().and_then(|x| i32::try_from(x).ok()).ok_or_else(|| self.wrong(key, v, "32-bit integers")))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

fn config_from_metadata(file: &GgufFile, names: &HashMap<String, usize>) -> Result<Config> {
    let path = file.path();
    let md = Meta { file };
    let required = |key: &str| -> Result<usize> {
        let v = md.u64(key)?.ok_or_else(|| field_err(path, key, "missing"))?;
        if v == 0 || v > 1 << 24 {
            return Err(field_err(path, key, format!("{v} is out of range")));
        }
        Ok(v as usize)
    };
    let hidden_size = required("llama.embedding_length")?;
    let num_layers = required("llama.block_count")?;
    let num_heads = required("llama.attention.head_count")?;
    let intermediate_size = required("llama.feed_forward_length")?;
    let num_kv_heads = match md.u64("llama.attention.head_count_kv")? {
        None => num_heads,
        Some(_) => required("llama.attention.head_count_kv")?,
    };
    if num_heads % num_kv_heads != 0 {
        return Err(field_err(path, "llama.attention.head_count_kv", format!("{num_kv_heads} does not divide head_count {num_heads}")));
    }
    let head_dim = match md.u64("llama.attention.key_length")? {
        Some(_) => required("llama.attention.key_length")?,
        None if hidden_size % num_heads == 0 => hidden_size / num_heads,
        None => return Err(field_err(path, "llama.attention.head_count", format!("{num_heads} does not divide embedding_length {hidden_size}"))),
    };
    if head_dim % 2 != 0 {
        return Err(field_err(path, "llama.attention.key_length", format!("head dimension {head_dim} is odd")));
    }
    if let Some(v) = md.u64("llama.attention.value_length")? {
        if v as usize != head_dim {
            return Err(Error::Unsupported(format!("{}: value_length {v} differs from key_length {head_dim}", path.display())));
        }
    }
    if let Some(rot) = md.u64("llama.rope.dimension_count")? {
        if rot as usize != head_dim {
            return Err(Error::Unsupported(format!(
                "{}: partial rotary embedding (rope.dimension_count {rot} < head dimension {head_dim})",
                path.display()
            )));
        }
    }
    let max_position_embeddings = required("llama.context_length")?;
    let rms_norm_eps = md.f64("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32;
    let rope_theta = md.f64("llama.rope.freq_base")?.unwrap_or(10_000.0) as f32;
    if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
        return Err(field_err(path, "llama.attention.layer_norm_rms_epsilon", format!("{rms_norm_eps} is not a valid epsilon")));
    }
    if !(rope_theta.is_finite() && rope_theta > 1.0) {
        return Err(field_err(path, "llama.rope.freq_base", format!("{rope_theta} is not a valid RoPE base")));
    }
    let rope_scaling = rope_scaling(file, &md, head_dim)?;

    // The embedding matrix decides the logit count; the token list must fit inside it.
    let embd = names
        .get("model.embed_tokens.weight")
        .map(|&i| &file.tensors()[i])
        .ok_or_else(|| Error::tensor("token_embd.weight", format!("missing from {}", path.display())))?;
    if embd.dims.len() != 2 || embd.dims[0] as usize != hidden_size {
        return Err(Error::tensor("token_embd.weight", format!("GGUF dims {:?} do not match embedding_length {hidden_size}", embd.dims)));
    }
    let vocab_size = embd.dims[1] as usize;
    if let Some(tokens) = md.array("tokenizer.ggml.tokens")? {
        if tokens.len() > vocab_size {
            return Err(field_err(path, "tokenizer.ggml.tokens", format!("{} tokens but the embedding has {vocab_size} rows", tokens.len())));
        }
    }
    // Saturate so an out-of-range id fails `Config::validate` instead of wrapping into range.
    let id32 = |v: u64| v.min(u32::MAX as u64) as u32;
    let bos_token_id = md.u64("tokenizer.ggml.bos_token_id")?.map(id32);
    let mut eos_token_ids = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(v) = md.u64(key)? {
            if !eos_token_ids.contains(&id32(v)) {
                eos_token_ids.push(id32(v));
            }
        }
    }
    let name = [md.str("general.name")?, md.str("general.basename")?].into_iter().flatten().collect::<Vec<_>>().join(" ");
    let arch = if name.to_ascii_lowercase().contains("mistral") { Arch::Mistral } else { Arch::Llama };

    let config = Config {
        arch,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        tie_word_embeddings: !names.contains_key("lm_head.weight"),
        max_position_embeddings,
        bos_token_id,
        eos_token_ids,
    };
    config.validate(path)?;
    Ok(config)
}

fn rope_scaling(file: &GgufFile, md: &Meta, head_dim: usize) -> Result<Option<RopeScaling>> {
    let path = file.path();
    if let Some(t) = file.tensor_info("rope_freqs.weight") {
        // Llama 3.x files carry their frequency scaling as one divisor per frequency.
        let bad = |msg: String| Error::tensor("rope_freqs.weight", format!("{}: {msg}", path.display()));
        if t.ggml_type.code != 0 || t.dims.len() != 1 || t.dims[0] as usize != head_dim / 2 {
            return Err(bad(format!("expected {} F32 values, found {} with dims {:?}", head_dim / 2, t.ggml_type.name, t.dims)));
        }
        let factors = crate::quant::dequantize("rope_freqs.weight", TensorFormat::F32, file.tensor_bytes(t), head_dim / 2)?;
        if let Some(f) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
            return Err(bad(format!("factor {f} is not a positive number")));
        }
        return Ok(Some(RopeScaling::Factors(factors)));
    }
    let factor = md.f64("llama.rope.scaling.factor")?;
    match md.str("llama.rope.scaling.type")? {
        None | Some("none") => {}
        Some("linear") => {
            let factor = factor.ok_or_else(|| field_err(path, "llama.rope.scaling.factor", "missing for linear scaling"))?;
            if !(factor.is_finite() && factor > 0.0) {
                return Err(field_err(path, "llama.rope.scaling.factor", format!("{factor} is not a valid factor")));
            }
            return Ok((factor != 1.0).then_some(RopeScaling::Linear { factor: factor as f32 }));
        }
        Some("yarn") => {
            let key = "llama.rope.scaling.factor";
            let factor = factor.ok_or_else(|| field_err(path, key, "missing for YaRN scaling"))?;
            if !(factor.is_finite() && factor > 0.0) {
                return Err(field_err(path, key, format!("{factor} is not a valid factor")));
            }
            let key = "llama.rope.scaling.original_context_length";
            let omp = md.u64(key)?.ok_or_else(|| field_err(path, key, "missing for YaRN scaling"))?;
            if omp == 0 {
                return Err(field_err(path, key, "must be greater than 0"));
            }
            // llama.cpp's `attn_factor` multiplies the default YaRN magnitude 0.1 ln(factor) + 1
            // (ggml's rope_yarn), unlike transformers' `attention_factor`, which replaces it.
            let attn = md.f64("llama.rope.scaling.attn_factor")?.unwrap_or(1.0);
            if !(attn.is_finite() && attn > 0.0) {
                return Err(field_err(path, "llama.rope.scaling.attn_factor", format!("{attn} is not a positive number")));
            }
            let beta_fast = md.f64("llama.rope.scaling.yarn_beta_fast")?.unwrap_or(32.0) as f32;
            let beta_slow = md.f64("llama.rope.scaling.yarn_beta_slow")?.unwrap_or(1.0) as f32;
            let factor = factor as f32;
            let attention_factor = attn as f32 * crate::model::config::yarn_default_attention_factor(factor);
            return Ok(Some(RopeScaling::Yarn { factor, original_max_position_embeddings: omp as usize, beta_fast, beta_slow, attention_factor }));
        }
        Some(other) => {
            return Err(Error::Unsupported(format!("{}: RoPE scaling type `{other}`", path.display())));
        }
    }
    // Older files: `llama.rope.scale_linear`.
    if let Some(f) = md.f64("llama.rope.scale_linear")? {
        if f.is_finite() && f > 0.0 && f != 1.0 {
            return Ok(Some(RopeScaling::Linear { factor: f as f32 }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (g, h) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            ("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight"),
            ("blk.12.ffn_down.weight", "model.layers.12.mlp.down_proj.weight"),
            ("blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
        ] {
            assert_eq!(hf_name(g).as_deref(), Some(h));
            assert_eq!(gguf_name(h), g);
        }
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // 2 heads of 4 rows, 1 byte per row. HF rows r = h*4 + s*2 + i; llama.cpp's permute puts HF
        // row (h, s, i) at h*4 + 2i + s.
        let hf: Vec<u8> = (0..8).collect();
        let mut gguf = vec![0u8; 8];
        for h in 0..2 {
            for s in 0..2 {
                for i in 0..2 {
                    gguf[h * 4 + 2 * i + s] = hf[h * 4 + s * 2 + i];
                }
            }
        }
        assert_eq!(reorder_rows(&gguf, 8, RowOrder::paired_heads("t", 8, 2).unwrap()), hf);
        assert_eq!(permute_rows("t", &hf, 8, 2).unwrap(), gguf);
    }
}
