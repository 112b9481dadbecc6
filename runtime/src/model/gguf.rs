//! GGUF: container parser, dequantizers, llama weight mapping, and a small writer.
//!
//! The container is parsed here rather than with a crates.io crate: the format is small (header,
//! typed key/values, tensor infos, aligned data), the available crates either pull in a whole ML
//! framework (candle) or are thinly maintained, and a local parser lets every error name the file
//! and the offending key or tensor. Supported: GGUF v2/v3, little-endian, `general.alignment`
//! (default 32), tensor types F32, F16, BF16, Q8_0, Q4_0, Q4_1 (dequantized to f32 at load).
//!
//! Layout conventions (ggml): a tensor's dims are listed fastest-first, so a llama projection
//! stored with dims `[in, out]` holds `out` rows of `in` values, i.e. PyTorch's `[out, in]`. The
//! loader transposes projections into the canonical `[in, out]` and undoes the converter's Q/K row
//! permutation (llama.cpp rotates adjacent pairs; the canonical layout rotates halves), see
//! [`unpermute_rows`].

use super::{LayerWeights, LlamaConfig, LlamaWeights, Matrix, Model, ModelError};
use half::{bf16, f16};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Elements per block of the Q8_0 / Q4_0 / Q4_1 formats.
pub const QK: usize = 32;

/// Tensor element types this module reads (and writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl GgmlType {
    /// The type's id in a GGUF file.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q8_0 => (QK, 2 + QK),
            GgmlType::Q4_0 => (QK, 2 + QK / 2),
            GgmlType::Q4_1 => (QK, 4 + QK / 2),
        }
    }

    /// Bytes that `n` elements take, or `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (per, bytes) = self.block();
        if !n.is_multiple_of(per) {
            return None;
        }
        (n / per).checked_mul(bytes)
    }
}

/// Name of a ggml type id, for error messages (covers the common ones this loader rejects).
fn type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        _ => return format!("ggml type {id}"),
    };
    name.to_string()
}

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

    fn type_id(&self) -> u32 {
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
    /// ggml type id (see [`GgmlType::from_id`]).
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

    fn format_err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Format {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn u64_key(&self, key: &str) -> Result<Option<u64>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                self.format_err(format!("metadata '{key}' is not an integer: {v:?}"))
            }),
        }
    }

    fn usize_key(&self, key: &str) -> Result<Option<usize>, ModelError> {
        self.u64_key(key)?
            .map(|v| {
                usize::try_from(v)
                    .map_err(|_| self.format_err(format!("metadata '{key}' too large")))
            })
            .transpose()
    }

    fn required_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.usize_key(key)?
            .ok_or_else(|| self.format_err(format!("missing metadata '{key}'")))
    }

    fn f64_key(&self, key: &str) -> Result<Option<f64>, ModelError> {
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

fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file, memory-mapped.
fn map_file(path: &Path) -> Result<memmap2::Mmap, ModelError> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the map is read-only and lives only while loading; like every mmap-based loader we
    // assume the model file is not truncated or rewritten concurrently.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))
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

/// Dequantizes `n` elements of type `ty` from `bytes` (which must hold exactly that many).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let need = ty
        .bytes_for(n)
        .ok_or_else(|| format!("{n} elements are not a whole number of {ty:?} blocks"))?;
    if bytes.len() != need {
        return Err(format!(
            "{n} {ty:?} elements need {need} bytes, got {}",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    let h = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| h(c, 0))),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for block in bytes.chunks_exact(2 + QK) {
                let d = h(block, 0);
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for block in bytes.chunks_exact(2 + QK / 2) {
                let d = h(block, 0);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| (f32::from(q & 0x0f) - 8.0) * d));
                out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
            }
        }
        GgmlType::Q4_1 => {
            for block in bytes.chunks_exact(4 + QK / 2) {
                let (d, m) = (h(block, 0), h(block, 2));
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0f) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
    }
    Ok(out)
}

/// Reference quantizers: the inverse of [`dequantize`], used by [`GgufWriter`] and tests.
pub mod quant {
    use super::{GgmlType, QK};
    use half::{bf16, f16};

    /// Encodes `values` as `ty`; `None` when the length is not a whole number of blocks.
    pub fn quantize(ty: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(ty.bytes_for(values.len())?);
        match ty {
            GgmlType::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
            GgmlType::F16 => values
                .iter()
                .for_each(|&v| out.extend(f16::from_f32(v).to_le_bytes())),
            GgmlType::BF16 => values
                .iter()
                .for_each(|&v| out.extend(bf16::from_f32(v).to_le_bytes())),
            GgmlType::Q8_0 => values
                .chunks_exact(QK)
                .for_each(|b| q8_0_block(b, &mut out)),
            GgmlType::Q4_0 => values
                .chunks_exact(QK)
                .for_each(|b| q4_0_block(b, &mut out)),
            GgmlType::Q4_1 => values
                .chunks_exact(QK)
                .for_each(|b| q4_1_block(b, &mut out)),
        }
        Some(out)
    }

    /// Scale `amax / 127`, codes `round(x / d)` in -127..=127.
    fn q8_0_block(x: &[f32], out: &mut Vec<u8>) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(
            x.iter()
                .map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }

    /// Scale `d = m / -8` where `m` is the value of largest magnitude (so it maps to code 0),
    /// codes `round(x / d) + 8` clamped to 0..=15; element `j` in the low nibble of byte `j`,
    /// element `j + 16` in its high nibble.
    fn q4_0_block(x: &[f32], out: &mut Vec<u8>) {
        let m = x
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = m / -8.0;
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_le_bytes());
        let code = |v: f32| ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8;
        let half = QK / 2;
        out.extend((0..half).map(|j| code(x[j]) | (code(x[j + half]) << 4)));
    }

    /// Scale `(max - min) / 15`, offset `min`, codes `round((x - min) / d)` in 0..=15.
    fn q4_1_block(x: &[f32], out: &mut Vec<u8>) {
        let min = x.iter().copied().fold(f32::INFINITY, f32::min);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(f16::from_f32(min).to_le_bytes());
        let code = |v: f32| ((v - min) * inv).round().clamp(0.0, 15.0) as u8;
        let half = QK / 2;
        out.extend((0..half).map(|j| code(x[j]) | (code(x[j + half]) << 4)));
    }
}

/// Undoes llama.cpp's converter permutation of Q/K projection rows.
///
/// `data` is `[rows, cols]` row-major with `rows = n_head * head_dim` output features. The
/// converter maps Hugging Face row `h*hd + p*hd/2 + i` (half `p` of head `h`) to GGUF row
/// `h*hd + 2*i + p`, so that llama.cpp's adjacent-pair RoPE sees pairs `(i, i + hd/2)`.
pub fn unpermute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    remap_rows(data, rows, cols, n_head, |h, hd, p, i| {
        (h * hd + 2 * i + p, h * hd + p * hd / 2 + i)
    })
}

/// The converter's permutation (inverse of [`unpermute_rows`]), for writing GGUF files.
pub fn permute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    remap_rows(data, rows, cols, n_head, |h, hd, p, i| {
        (h * hd + p * hd / 2 + i, h * hd + 2 * i + p)
    })
}

/// `map(h, hd, p, i) -> (src_row, dst_row)`.
fn remap_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
    map: impl Fn(usize, usize, usize, usize) -> (usize, usize),
) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for p in 0..2 {
            for i in 0..hd / 2 {
                let (src, dst) = map(h, hd, p, i);
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// `[rows, cols]` -> `[cols, rows]`.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

/// The tensor bytes of an opened file, with the header.
struct TensorSource<'a> {
    meta: &'a GgufMetadata,
    bytes: &'a [u8],
}

impl TensorSource<'_> {
    fn tensor_err(&self, name: &str, reason: impl Into<String>) -> ModelError {
        ModelError::Tensor {
            path: self.meta.path.clone(),
            tensor: name.to_string(),
            reason: reason.into(),
        }
    }

    /// Dequantized values of `name`, whose ggml dims must be `dims`.
    fn load(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, ModelError> {
        let info = self
            .meta
            .tensor(name)
            .ok_or_else(|| self.tensor_err(name, "missing"))?;
        let actual: Vec<u64> = info.dims.clone();
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        // Trailing 1-dims are equivalent (some writers keep them).
        let trim = |v: &[u64]| {
            let mut v = v.to_vec();
            while v.len() > 1 && v.last() == Some(&1) {
                v.pop();
            }
            v
        };
        if trim(&actual) != trim(&want) {
            return Err(self.tensor_err(
                name,
                format!("dims {actual:?}, expected {want:?} (ggml order)"),
            ));
        }
        let ty = GgmlType::from_id(info.type_id).ok_or_else(|| ModelError::Unsupported {
            path: self.meta.path.clone(),
            reason: format!(
                "tensor '{name}' has type {} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                type_name(info.type_id)
            ),
        })?;
        let n: usize = dims.iter().product();
        let nbytes = ty.bytes_for(n).ok_or_else(|| {
            self.tensor_err(
                name,
                format!("{n} elements are not a whole number of {ty:?} blocks"),
            )
        })?;
        let start = self
            .meta
            .data_offset
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok());
        let range = start
            .and_then(|s| Some(s..s.checked_add(nbytes)?))
            .filter(|r| r.end <= self.bytes.len())
            .ok_or_else(|| {
                self.tensor_err(
                    name,
                    format!(
                        "data at offset {} (+{nbytes} bytes) runs past the end of the {}-byte file (truncated?)",
                        info.offset,
                        self.bytes.len()
                    ),
                )
            })?;
        dequantize(ty, &self.bytes[range], n).map_err(|e| self.tensor_err(name, e))
    }

    /// A projection stored `[out rows, in cols]` (ggml dims `[in, out]`), as canonical `[in, out]`;
    /// `unpermute` gives the head count of a Q/K projection.
    fn projection(
        &self,
        name: &str,
        d_in: usize,
        d_out: usize,
        unpermute: Option<usize>,
    ) -> Result<Matrix, ModelError> {
        let mut w = self.load(name, &[d_in, d_out])?;
        if let Some(n_head) = unpermute {
            w = unpermute_rows(&w, d_out, d_in, n_head);
        }
        Ok(Matrix::new(d_in, d_out, transpose(&w, d_out, d_in)))
    }
}

/// Tokens that end a chat turn, added to `eos_token_ids` when the vocabulary has them.
pub(crate) const END_OF_TURN_TOKENS: [&str; 2] = ["<|im_end|>", "<|eot_id|>"];

/// Reads the llama hyperparameters from GGUF metadata.
pub fn llama_config(meta: &GgufMetadata) -> Result<LlamaConfig, ModelError> {
    let unsupported = |reason: String| ModelError::Unsupported {
        path: meta.path.clone(),
        reason,
    };
    let arch = meta
        .get_str("general.architecture")
        .ok_or_else(|| meta.format_err("missing metadata 'general.architecture'"))?;
    if arch != "llama" {
        return Err(unsupported(format!(
            "architecture '{arch}' (only 'llama' is supported)"
        )));
    }
    let key = |k: &str| format!("llama.{k}");
    let hidden = meta.required_usize(&key("embedding_length"))?;
    let heads = meta.required_usize(&key("attention.head_count"))?;
    let kv_heads = meta
        .usize_key(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(meta.format_err(format!(
            "head counts {heads} (q) / {kv_heads} (kv): q heads must be a positive multiple of kv heads"
        )));
    }
    let head_dim = match meta.usize_key(&key("attention.key_length"))? {
        Some(d) => d,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => {
            return Err(meta.format_err(format!(
                "hidden {hidden} is not a multiple of {heads} heads"
            )))
        }
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(meta.format_err(format!("head_dim {head_dim} must be even and positive")));
    }
    if let Some(v) = meta.usize_key(&key("attention.value_length"))? {
        if v != head_dim {
            return Err(unsupported(format!(
                "value head dim {v} differs from key head dim {head_dim}"
            )));
        }
    }
    if let Some(rd) = meta.usize_key(&key("rope.dimension_count"))? {
        if rd != head_dim {
            return Err(unsupported(format!(
                "partial RoPE: rope.dimension_count {rd} != head_dim {head_dim}"
            )));
        }
    }
    if let Some(kind) = meta.get_str(&key("rope.scaling.type")) {
        let factor = meta.f64_key(&key("rope.scaling.factor"))?.unwrap_or(1.0);
        if kind != "none" && factor != 1.0 {
            return Err(unsupported(format!(
                "RoPE scaling '{kind}' (factor {factor})"
            )));
        }
    }
    if meta
        .get(&key("expert_count"))
        .and_then(MetaValue::as_u64)
        .unwrap_or(0)
        > 0
    {
        return Err(unsupported("mixture-of-experts llama".into()));
    }
    let tokens = meta.get_str_array("tokenizer.ggml.tokens");
    let vocab_size = match (meta.usize_key(&key("vocab_size"))?, &tokens) {
        (Some(v), _) => v,
        (None, Some(t)) => t.len(),
        (None, None) => match meta.tensor("token_embd.weight").map(|t| t.dims.as_slice()) {
            Some(&[_, v]) => v as usize,
            _ => return Err(meta.format_err("cannot tell the vocabulary size")),
        },
    };
    let id_key = |k: &str| -> Result<Option<u32>, ModelError> {
        meta.u64_key(k)?
            .map(|v| u32::try_from(v).map_err(|_| meta.format_err(format!("'{k}' out of range"))))
            .transpose()
    };
    let bos_token_id = id_key("tokenizer.ggml.bos_token_id")?;
    let mut eos_token_ids: Vec<u32> = id_key("tokenizer.ggml.eos_token_id")?.into_iter().collect();
    if let Some(eot) = id_key("tokenizer.ggml.eot_token_id")? {
        eos_token_ids.push(eot);
    }
    if let Some(tokens) = &tokens {
        for t in END_OF_TURN_TOKENS {
            if let Some(i) = tokens.iter().position(|&s| s == t) {
                eos_token_ids.push(i as u32);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    eos_token_ids.retain(|id| seen.insert(*id));
    Ok(LlamaConfig {
        vocab_size,
        hidden_size: hidden,
        intermediate_size: meta.required_usize(&key("feed_forward_length"))?,
        num_layers: meta.required_usize(&key("block_count"))?,
        num_q_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rope_theta: meta.f64_key(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32,
        rms_norm_eps: meta
            .f64_key(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5) as f32,
        max_position_embeddings: meta.usize_key(&key("context_length"))?.unwrap_or(2048),
        tie_word_embeddings: meta.tensor("output.weight").is_none(),
        bos_token_id,
        eos_token_ids,
        chat_template: meta.get_str("tokenizer.chat_template").map(str::to_string),
    })
}

/// Loads a llama GGUF model, dequantizing every tensor to f32 in the canonical layout.
pub fn load_gguf(path: &Path) -> Result<Model, ModelError> {
    let map = map_file(path)?;
    let meta = parse_header(path, &map)?;
    let config = llama_config(&meta)?;
    let src = TensorSource {
        meta: &meta,
        bytes: &map,
    };
    let c = &config;
    let (h, q_dim, kv_dim) = (
        c.hidden_size,
        c.num_q_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
    );

    // Refuse tensors the canonical model has no place for (biases, RoPE frequency factors, ...)
    // rather than silently computing something else.
    let known = |name: &str| {
        matches!(
            name,
            "token_embd.weight" | "output_norm.weight" | "output.weight"
        ) || name.strip_prefix("blk.").is_some_and(|rest| {
            rest.split_once('.').is_some_and(|(n, t)| {
                n.parse::<usize>().is_ok_and(|n| n < c.num_layers)
                    && matches!(
                        t,
                        "attn_norm.weight"
                            | "attn_q.weight"
                            | "attn_k.weight"
                            | "attn_v.weight"
                            | "attn_output.weight"
                            | "ffn_norm.weight"
                            | "ffn_gate.weight"
                            | "ffn_up.weight"
                            | "ffn_down.weight"
                    )
            })
        })
    };
    if let Some(t) = meta.tensors.iter().find(|t| !known(&t.name)) {
        return Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("tensor '{}' has no place in a plain llama model", t.name),
        });
    }

    let embed = Matrix::new(
        c.vocab_size,
        h,
        src.load("token_embd.weight", &[h, c.vocab_size])?,
    );
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let name = |t: &str| format!("blk.{i}.{t}.weight");
        layers.push(LayerWeights {
            attn_norm: src.load(&name("attn_norm"), &[h])?,
            wq: src.projection(&name("attn_q"), h, q_dim, Some(c.num_q_heads))?,
            wk: src.projection(&name("attn_k"), h, kv_dim, Some(c.num_kv_heads))?,
            wv: src.projection(&name("attn_v"), h, kv_dim, None)?,
            wo: src.projection(&name("attn_output"), q_dim, h, None)?,
            ffn_norm: src.load(&name("ffn_norm"), &[h])?,
            w_gate: src.projection(&name("ffn_gate"), h, c.intermediate_size, None)?,
            w_up: src.projection(&name("ffn_up"), h, c.intermediate_size, None)?,
            w_down: src.projection(&name("ffn_down"), c.intermediate_size, h, None)?,
        });
    }
    let final_norm = src.load("output_norm.weight", &[h])?;
    let lm_head = if c.tie_word_embeddings {
        None
    } else {
        Some(src.projection("output.weight", h, c.vocab_size, None)?)
    };
    Ok(Model {
        config,
        weights: LlamaWeights {
            embed,
            layers,
            final_norm,
            lm_head,
        },
        source: path.to_path_buf(),
    })
}

/// Builds a GGUF file: metadata plus tensors quantized from f32 with [`quant::quantize`].
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    pub fn metadata(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor with ggml `dims` (fastest first) from row-major f32 `values`.
    pub fn tensor(
        &mut self,
        name: &str,
        dims: &[usize],
        ty: GgmlType,
        values: &[f32],
    ) -> Result<&mut Self, String> {
        let n: usize = dims.iter().product();
        if n != values.len() {
            return Err(format!(
                "tensor '{name}': dims {dims:?} but {} values",
                values.len()
            ));
        }
        let bytes = quant::quantize(ty, values).ok_or_else(|| {
            format!("tensor '{name}': {n} values are not a whole number of {ty:?} blocks")
        })?;
        self.tensors.push((
            name.to_string(),
            dims.iter().map(|&d| d as u64).collect(),
            ty,
            bytes,
        ));
        Ok(self)
    }

    /// The file image (GGUF v3; alignment from `general.alignment`, default 32).
    pub fn to_bytes(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        fn value(out: &mut Vec<u8>, v: &MetaValue) {
            match v {
                MetaValue::U8(x) => out.extend(x.to_le_bytes()),
                MetaValue::I8(x) => out.extend(x.to_le_bytes()),
                MetaValue::U16(x) => out.extend(x.to_le_bytes()),
                MetaValue::I16(x) => out.extend(x.to_le_bytes()),
                MetaValue::U32(x) => out.extend(x.to_le_bytes()),
                MetaValue::I32(x) => out.extend(x.to_le_bytes()),
                MetaValue::U64(x) => out.extend(x.to_le_bytes()),
                MetaValue::I64(x) => out.extend(x.to_le_bytes()),
                MetaValue::F32(x) => out.extend(x.to_le_bytes()),
                MetaValue::F64(x) => out.extend(x.to_le_bytes()),
                MetaValue::Bool(x) => out.push(u8::from(*x)),
                MetaValue::String(s) => string(out, s),
                MetaValue::Array(items) => {
                    // An empty array's element type is arbitrary; use u8.
                    out.extend(items.first().map_or(0, MetaValue::type_id).to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|i| value(out, i));
                }
            }
        }
        let align = self
            .metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT) as usize;
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            string(&mut out, k);
            out.extend(v.type_id().to_le_bytes());
            value(&mut out, v);
        }
        let mut offset = 0usize;
        for (name, dims, ty, bytes) in &self.tensors {
            string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = (offset + bytes.len()).div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for (_, _, _, bytes) in &self.tensors {
            out.extend(bytes);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }

    pub fn write(&self, path: &Path) -> Result<(), ModelError> {
        std::fs::write(path, self.to_bytes()).map_err(|e| io_err(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f16_bits(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    /// A normal f16 scale from an exponent and 10-bit mantissa.
    fn scale(e: i32, mant: u16) -> f32 {
        (1.0 + f32::from(mant) / 1024.0) * 2f32.powi(e)
    }

    proptest! {
        /// A hand-packed Q8_0 block dequantizes to exactly `q * d`.
        #[test]
        fn q8_0_block_decodes(qs in prop::collection::vec(-128i8..=127, QK), e in -12i32..4, m in 0u16..1024) {
            let d = f16::from_f32(scale(e, m)).to_f32();
            let mut block = f16_bits(d).to_vec();
            block.extend(qs.iter().map(|&q| q as u8));
            let out = dequantize(GgmlType::Q8_0, &block, QK).unwrap();
            for (o, &q) in out.iter().zip(&qs) {
                prop_assert_eq!(*o, f32::from(q) * d);
            }
        }

        /// Q4_0: low nibbles are elements 0..16, high nibbles 16..32, value `(q - 8) * d`.
        #[test]
        fn q4_0_block_decodes(codes in prop::collection::vec(0u8..16, QK), e in -12i32..4, m in 0u16..1024, neg: bool) {
            let d = f16::from_f32(if neg { -scale(e, m) } else { scale(e, m) }).to_f32();
            let mut block = f16_bits(d).to_vec();
            block.extend((0..16).map(|j| codes[j] | (codes[j + 16] << 4)));
            let out = dequantize(GgmlType::Q4_0, &block, QK).unwrap();
            for (o, &q) in out.iter().zip(&codes) {
                prop_assert_eq!(*o, (f32::from(q) - 8.0) * d);
            }
        }

        /// Q4_1: value `q * d + m` with f16 `d` and `m`.
        #[test]
        fn q4_1_block_decodes(codes in prop::collection::vec(0u8..16, QK), e in -12i32..4, mant in 0u16..1024, min in -4f32..4.0) {
            let d = f16::from_f32(scale(e, mant)).to_f32();
            let m = f16::from_f32(min).to_f32();
            let mut block = f16_bits(d).to_vec();
            block.extend(f16_bits(m));
            block.extend((0..16).map(|j| codes[j] | (codes[j + 16] << 4)));
            let out = dequantize(GgmlType::Q4_1, &block, QK).unwrap();
            for (o, &q) in out.iter().zip(&codes) {
                prop_assert_eq!(*o, f32::from(q) * d + m);
            }
        }

        /// Quantize-dequantize error stays within half a step (plus the f16 rounding of the scale).
        #[test]
        fn round_trip_error_bounds(values in prop::collection::vec(-8f32..8.0, QK * 3)) {
            for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
                let bytes = quant::quantize(ty, &values).unwrap();
                prop_assert_eq!(bytes.len(), ty.bytes_for(values.len()).unwrap());
                let out = dequantize(ty, &bytes, values.len()).unwrap();
                for (block_in, block_out) in values.chunks(QK).zip(out.chunks(QK)) {
                    let amax = block_in.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let (lo, hi) = block_in.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                    let f16_eps = 1.0 / 1024.0;
                    let bound = |v: f32| match ty {
                        GgmlType::F32 => 0.0,
                        GgmlType::F16 => v.abs() * f16_eps / 2.0 + 1e-7,
                        GgmlType::BF16 => v.abs() / 256.0,
                        // half a step, plus up to 127 steps of scale rounding
                        GgmlType::Q8_0 => amax / 127.0 * (0.5 + 127.0 * f16_eps) + 1e-6,
                        // codes reach -8..7 steps: the value opposite the extreme may clamp one step
                        GgmlType::Q4_0 => amax / 8.0 * (1.0 + 8.0 * f16_eps) + 1e-6,
                        GgmlType::Q4_1 => (hi - lo) / 15.0 * (0.5 + 15.0 * f16_eps) + lo.abs() * f16_eps + 1e-6,
                    };
                    for (&x, &y) in block_in.iter().zip(block_out) {
                        prop_assert!((x - y).abs() <= bound(x), "{ty:?}: {x} -> {y} (bound {})", bound(x));
                    }
                }
            }
        }

        /// Values on a quantization grid are reconstructed exactly.
        #[test]
        fn representable_values_are_exact(codes in prop::collection::vec(0u8..16, QK), q8 in prop::collection::vec(-127i8..=127, QK), e in -8i32..2, off in -20i32..20) {
            let d = 2f32.powi(e);
            // Q8_0: force one code to +-127 so the scale is exactly d.
            let mut q8 = q8;
            q8[0] = if q8[0] < 0 { -127 } else { 127 };
            let x: Vec<f32> = q8.iter().map(|&q| f32::from(q) * d).collect();
            let back = dequantize(GgmlType::Q8_0, &quant::quantize(GgmlType::Q8_0, &x).unwrap(), QK).unwrap();
            prop_assert_eq!(&back, &x);
            // Q4_0: one code at -8 (the extreme) makes the scale exactly d.
            let mut c = codes.clone();
            c[0] = 0;
            let x: Vec<f32> = c.iter().map(|&q| (f32::from(q) - 8.0) * d).collect();
            let back = dequantize(GgmlType::Q4_0, &quant::quantize(GgmlType::Q4_0, &x).unwrap(), QK).unwrap();
            prop_assert_eq!(&back, &x);
            // Q4_1: codes spanning 0..=15 on a grid offset by a multiple of d.
            let mut c = codes;
            c[0] = 0;
            c[1] = 15;
            let m = off as f32 * d;
            let x: Vec<f32> = c.iter().map(|&q| f32::from(q) * d + m).collect();
            let back = dequantize(GgmlType::Q4_1, &quant::quantize(GgmlType::Q4_1, &x).unwrap(), QK).unwrap();
            prop_assert_eq!(&back, &x);
        }

        /// un-permute inverts the converter's permutation, and pairs rows (i, i + hd/2) of a head.
        #[test]
        fn unpermute_inverts_permute(n_head in 1usize..5, half in 1usize..6, cols in 1usize..4, seed: u64) {
            let rows = n_head * half * 2;
            let data: Vec<f32> = (0..rows * cols).map(|i| (i as u64 ^ seed) as f32).collect();
            let p = permute_rows(&data, rows, cols, n_head);
            prop_assert_eq!(&unpermute_rows(&p, rows, cols, n_head), &data);
            // GGUF rows 2i and 2i+1 of head h are HF rows i and i + hd/2.
            let hd = 2 * half;
            for h in 0..n_head {
                for i in 0..half {
                    prop_assert_eq!(&p[(h * hd + 2 * i) * cols..][..cols], &data[(h * hd + i) * cols..][..cols]);
                    prop_assert_eq!(&p[(h * hd + 2 * i + 1) * cols..][..cols], &data[(h * hd + half + i) * cols..][..cols]);
                }
            }
        }
    }

    #[test]
    fn header_round_trips_through_writer() {
        let mut w = GgufWriter::new();
        w.metadata("general.architecture", MetaValue::String("llama".into()))
            .metadata("general.alignment", MetaValue::U32(64))
            .metadata(
                "nested",
                MetaValue::Array(vec![
                    MetaValue::Array(vec![MetaValue::I64(-3)]),
                    MetaValue::Array(vec![]),
                ]),
            )
            .metadata("flag", MetaValue::Bool(true));
        // Codes -127, -119, ..., 121 (-127 in each block) times 1/32: exactly representable in Q8_0.
        let values: Vec<f32> = (0..QK * 2)
            .map(|i| ((i % QK * 8) as f32 - 127.0) / 32.0)
            .collect();
        w.tensor("t", &[QK, 2], GgmlType::Q8_0, &values).unwrap();
        let bytes = w.to_bytes();
        let meta = parse_header(Path::new("mem.gguf"), &bytes).unwrap();
        assert_eq!(meta.version, 3);
        assert_eq!(meta.get_str("general.architecture"), Some("llama"));
        assert_eq!(meta.get("flag"), Some(&MetaValue::Bool(true)));
        assert_eq!(meta.tensors[0].dims, vec![QK as u64, 2]);
        assert_eq!(meta.data_offset % 64, 0);
        let start = meta.data_offset as usize;
        let back = dequantize(GgmlType::Q8_0, &bytes[start..start + 2 * (2 + QK)], 2 * QK).unwrap();
        assert_eq!(back, values);
        // Every truncation inside the header is an error, never a panic; the header ends at most
        // one alignment before the data.
        let first_ok = (0..bytes.len())
            .find(|&cut| parse_header(Path::new("mem.gguf"), &bytes[..cut]).is_ok())
            .unwrap();
        assert!(first_ok > start - 64);
        for cut in 0..first_ok {
            let err = parse_header(Path::new("mem.gguf"), &bytes[..cut]).unwrap_err();
            assert!(err.to_string().starts_with("mem.gguf: "), "{err}");
        }
    }
}
