//! The GGUF container: header, typed metadata key/values, tensor directory, aligned data.
//!
//! Parsed here rather than with a crates.io crate (see `super`'s docs): every error names the
//! file and the key or tensor at fault, and every read is bounds-checked, so a truncated or
//! corrupt file is an error, never a panic. Supported: GGUF v2/v3, little-endian,
//! `general.alignment` (default 32).

use crate::model::ModelError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file magic.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer type as u64 (negative values give `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float or integer type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value type's id in a GGUF file.
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the fastest-varying axis.
    pub dims: Vec<u64>,
    /// ggml type id (see [`super::GgmlType::from_id`]).
    pub type_id: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn num_elements(&self) -> Option<usize> {
        self.dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
    }
}

/// A parsed GGUF header: metadata and tensor directory.
#[derive(Clone, Debug)]
pub struct GgufMetadata {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

impl GgufMetadata {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`); `None` if absent or not all strings.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(MetaValue::as_str)
            .collect()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub(crate) fn format_err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Format {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    pub(crate) fn u64_key(&self, key: &str) -> Result<Option<u64>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                self.format_err(format!("metadata '{key}' is not an integer: {v:?}"))
            }),
        }
    }

    pub(crate) fn usize_key(&self, key: &str) -> Result<Option<usize>, ModelError> {
        self.u64_key(key)?
            .map(|v| {
                usize::try_from(v)
                    .map_err(|_| self.format_err(format!("metadata '{key}' too large")))
            })
            .transpose()
    }

    pub(crate) fn required_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.usize_key(key)?
            .ok_or_else(|| self.format_err(format!("missing metadata '{key}'")))
    }

    pub(crate) fn f64_key(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.format_err(format!("metadata '{key}' is not a number: {v:?}"))),
        }
    }
}

/// Little-endian reader over the file bytes; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("truncated while reading {what} at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length that must fit in the bytes left (each counted item takes at least `min_item` bytes).
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, String> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(format!(
                "{what} {n} exceeds the {left} bytes left (truncated or corrupt)"
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> Result<MetaValue, String> {
        let what = |k: &str| format!("value of '{k}'");
        Ok(match type_id {
            0 => MetaValue::U8(u8::from_le_bytes(self.array(&what(key))?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(&what(key))?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what(key))?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what(key))?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(&what(key))?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what(key))?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what(key))?)),
            7 => match self.array::<1>(&what(key))?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("metadata '{key}': bool byte {b}")),
            },
            8 => MetaValue::String(self.string(&what(key))?),
            9 => {
                if depth > 8 {
                    return Err(format!("metadata '{key}': arrays nested too deeply"));
                }
                let elem = self.u32(&what(key))?;
                let n = self.count(&format!("length of array '{key}'"), 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(&what(key))?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what(key))?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what(key))?)),
            t => return Err(format!("metadata '{key}': unknown value type {t}")),
        })
    }
}

/// The file, memory-mapped.
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap, ModelError> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the map is read-only and lives only while loading; like every mmap-based loader we
    // assume the model file is not truncated or rewritten concurrently.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))
}
/// Parses the header of an in-memory GGUF image (`path` is only used in errors).
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<GgufMetadata, ModelError> {
    let fmt = |reason: String| ModelError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let mut r = Reader { buf: bytes, pos: 0 };
    let magic = r.take(4, "magic").map_err(|_| {
        fmt(format!(
            "file is {} bytes, too short for a GGUF header",
            bytes.len()
        ))
    })?;
    if magic != MAGIC {
        return Err(fmt(format!("bad magic {magic:02x?}, expected \"GGUF\"")));
    }
    let version = r.u32("version").map_err(fmt)?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(ModelError::Unsupported {
                path: path.to_path_buf(),
                reason: "GGUF version 1 (re-convert the model)".into(),
            })
        }
        v if v.swap_bytes() <= 3 => {
            return Err(ModelError::Unsupported {
                path: path.to_path_buf(),
                reason: "big-endian GGUF".into(),
            })
        }
        v => return Err(fmt(format!("unknown GGUF version {v}"))),
    }
    // Each tensor info takes at least 8 + 4 + 4 + 8 bytes, each key/value at least 8 + 4 + 1.
    let n_tensors = r.count("tensor count", 24).map_err(fmt)?;
    let n_kv = r.count("metadata count", 13).map_err(fmt)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string("metadata key").map_err(fmt)?;
        let ty = r.u32(&format!("type of '{key}'")).map_err(fmt)?;
        let value = r.value(ty, &key, 0).map_err(fmt)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string("tensor name").map_err(fmt)?;
        let n_dims = r.u32(&format!("dims of tensor '{name}'")).map_err(fmt)?;
        if n_dims == 0 || n_dims > 4 {
            return Err(fmt(format!(
                "tensor '{name}' has {n_dims} dims (1 to 4 allowed)"
            )));
        }
        let dims = (0..n_dims)
            .map(|_| r.u64(&format!("dims of tensor '{name}'")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fmt)?;
        let type_id = r.u32(&format!("type of tensor '{name}'")).map_err(fmt)?;
        let offset = r.u64(&format!("offset of tensor '{name}'")).map_err(fmt)?;
        tensors.push(TensorInfo {
            name,
            dims,
            type_id,
            offset,
        });
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(fmt(format!(
                    "general.alignment {v:?} is not a power of two"
                )))
            }
        },
    };
    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
    Ok(GgufMetadata {
        path: path.to_path_buf(),
        version,
        metadata,
        tensors,
        data_offset,
    })
}

/// Reads a GGUF file's header: metadata key/values and the tensor directory (no tensor data).
pub fn read_metadata(path: &Path) -> Result<GgufMetadata, ModelError> {
    let map = map_file(path)?;
    parse_header(path, &map)
}
