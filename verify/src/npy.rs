//! Minimal NumPy `.npy` files: f32 and i32 arrays, little endian, C order.
//!
//! Writes format version 1.0 (header padded so the data starts at a multiple of 64 bytes, as
//! NumPy does); reads versions 1.0 and 2.0. Enough to hand kernel inputs to Python and read its
//! outputs back without a NumPy binding.

use std::path::Path;

/// Element data of an array.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// A C-order array read from or written to a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a supported .npy file: {0}")]
    Format(String),
}

const MAGIC: &[u8] = b"\x93NUMPY";

impl NpyArray {
    pub fn f32(shape: &[usize], data: Vec<f32>) -> NpyArray {
        NpyArray {
            shape: shape.to_vec(),
            data: NpyData::F32(data),
        }
    }

    pub fn i32(shape: &[usize], data: Vec<i32>) -> NpyArray {
        NpyArray {
            shape: shape.to_vec(),
            data: NpyData::I32(data),
        }
    }

    fn len(&self) -> usize {
        match &self.data {
            NpyData::F32(v) => v.len(),
            NpyData::I32(v) => v.len(),
        }
    }

    /// The file's bytes. Panics if the data length does not match the shape.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n: usize = self.shape.iter().product();
        assert_eq!(n, self.len(), "shape {:?} holds {n} values", self.shape);
        let descr = match self.data {
            NpyData::F32(_) => "<f4",
            NpyData::I32(_) => "<i4",
        };
        let shape = match self.shape.as_slice() {
            [x] => format!("({x},)"),
            dims => format!(
                "({})",
                dims.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // magic (6) + version (2) + header length (2) + header, a multiple of 64, ending in '\n'
        let total = (10 + header.len() + 1).div_ceil(64) * 64;
        header.extend(std::iter::repeat_n(' ', total - 10 - header.len() - 1));
        header.push('\n');
        let mut out = Vec::with_capacity(total + 4 * n);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        match &self.data {
            NpyData::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::I32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
        out
    }

    /// Parses a `.npy` file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<NpyArray, NpyError> {
        let bad = |m: &str| NpyError::Format(m.to_string());
        if bytes.len() < 10 || &bytes[..6] != MAGIC {
            return Err(bad("missing \\x93NUMPY magic"));
        }
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            v => return Err(NpyError::Format(format!("format version {v}"))),
        };
        let header = bytes
            .get(start..start + header_len)
            .ok_or_else(|| bad("truncated header"))?;
        let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
        let descr = dict_value(header, "descr")?;
        let descr = descr.trim_matches(|c| c == '\'' || c == '"');
        if dict_value(header, "fortran_order")? != "False" {
            return Err(bad("Fortran order"));
        }
        let shape_text = dict_value(header, "shape")?;
        let shape: Vec<usize> = shape_text
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| NpyError::Format(format!("shape {shape_text}")))
            })
            .collect::<Result<_, _>>()?;
        let n: usize = shape.iter().product();
        let data = &bytes[start + header_len..];
        if data.len() != 4 * n {
            return Err(NpyError::Format(format!(
                "shape {shape:?} needs {} data bytes, file has {}",
                4 * n,
                data.len()
            )));
        }
        let words = data.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
        let data = match descr {
            "<f4" => NpyData::F32(words.map(f32::from_le_bytes).collect()),
            "<i4" => NpyData::I32(words.map(i32::from_le_bytes).collect()),
            other => {
                return Err(NpyError::Format(format!(
                    "dtype {other} (only <f4 and <i4)"
                )))
            }
        };
        Ok(NpyArray { shape, data })
    }

    pub fn write(&self, path: &Path) -> Result<(), NpyError> {
        std::fs::write(path, self.to_bytes()).map_err(|source| NpyError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn read(path: &Path) -> Result<NpyArray, NpyError> {
        let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        NpyArray::from_bytes(&bytes)
    }

    /// The data as f32, or an error naming the actual dtype.
    pub fn into_f32(self) -> Result<Vec<f32>, NpyError> {
        match self.data {
            NpyData::F32(v) => Ok(v),
            NpyData::I32(_) => Err(NpyError::Format("expected f32 data, found i32".into())),
        }
    }
}

/// The raw text of `key`'s value in a NumPy header dict (`{'descr': '<f4', ...}`).
fn dict_value<'a>(header: &'a str, key: &str) -> Result<&'a str, NpyError> {
    let missing = || NpyError::Format(format!("header has no '{key}': {header}"));
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))
        .ok_or_else(missing)?;
    let rest = header[at + key.len() + 2..].trim_start();
    let rest = rest.strip_prefix(':').ok_or_else(missing)?.trim_start();
    // a tuple runs to its ')'; anything else to the next ','
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(missing)?;
    Ok(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn round_trips_random_arrays() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let shapes: [&[usize]; 5] = [&[1], &[7], &[3, 5], &[2, 3, 4, 5], &[0, 4]];
        for shape in shapes {
            let n: usize = shape.iter().product();
            let f: Vec<f32> = (0..n).map(|_| rng.random_range(-1e6f32..1e6)).collect();
            let i: Vec<i32> = (0..n).map(|_| rng.random()).collect();
            for a in [
                NpyArray::f32(shape, f.clone()),
                NpyArray::i32(shape, i.clone()),
            ] {
                let bytes = a.to_bytes();
                let data_start = bytes.len() - 4 * n;
                assert_eq!(data_start % 64, 0, "data aligned to 64");
                assert_eq!(bytes[data_start - 1], b'\n');
                assert_eq!(NpyArray::from_bytes(&bytes).unwrap(), a);
            }
        }
        // special f32 values survive bit for bit
        let special = vec![f32::NAN, f32::INFINITY, -0.0, f32::MIN_POSITIVE, f32::MAX];
        let back = NpyArray::from_bytes(&NpyArray::f32(&[5], special.clone()).to_bytes())
            .unwrap()
            .into_f32()
            .unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&special));
    }

    #[test]
    fn writes_the_numpy_header_and_reads_files() {
        let bytes = NpyArray::i32(&[2, 3], vec![1, 2, 3, 4, 5, 6]).to_bytes();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        // data starts at a multiple of 64 bytes, the header ends in '\n'
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(bytes.len(), 10 + header_len + 6 * 4);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.starts_with("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        let one = NpyArray::f32(&[3], vec![1.0, 2.0, 3.0]).to_bytes();
        let one_len = u16::from_le_bytes([one[8], one[9]]) as usize;
        assert!(std::str::from_utf8(&one[10..10 + one_len])
            .unwrap()
            .contains("'shape': (3,), }"));

        let dir = std::env::temp_dir().join(format!("npy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.npy");
        NpyArray::f32(&[2, 2], vec![0.5, -1.5, 2.0, 3.25])
            .write(&path)
            .unwrap();
        let a = NpyArray::read(&path).unwrap();
        assert_eq!(a.shape, vec![2, 2]);
        assert_eq!(a.into_f32().unwrap(), vec![0.5, -1.5, 2.0, 3.25]);
        NpyArray::i32(&[1], vec![-7]).write(&path).unwrap();
        assert!(NpyArray::read(&path).unwrap().into_f32().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let mut bytes = NpyArray::f32(&[2], vec![1.0, 2.0]).to_bytes();
        assert!(NpyArray::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let text = std::str::from_utf8(&bytes[10..64])
            .unwrap()
            .replace("<f4", ">f4");
        bytes[10..64].copy_from_slice(text.as_bytes());
        assert!(NpyArray::from_bytes(&bytes)
            .unwrap_err()
            .to_string()
            .contains(">f4"));
        assert!(NpyArray::from_bytes(b"not numpy").is_err());
    }
}
