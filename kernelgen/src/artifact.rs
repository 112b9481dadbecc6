//! The artifact directory a `kernelgen build` writes: `manifest.json` plus the emitted files.
//!
//! The manifest records every parameter (the validated config), the shape and dtype of every
//! kernel input and output, kernelgen's version, and the sha256 of each file, so a consumer can
//! refuse an artifact that was edited or truncated after it was built.

use crate::config::{Dtype, KernelConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "manifest.json";
/// Bumped when the manifest layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// Name, shape and element type of one kernel operand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: String,
}

/// One emitted file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub kernelgen_version: String,
    pub kernel: String,
    pub config: KernelConfig,
    /// Values the kernel actually uses that the config leaves implicit.
    pub derived: Derived,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Padding the kernel applies to the model's geometry (none for StableHLO).
    pub padding: String,
    pub files: BTreeMap<String, FileEntry>,
    /// Extra sections (VMEM report, TPU compile verdict) keyed by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    pub sm_scale: f32,
    pub max_model_len: u32,
    pub queries_per_kv_head: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid kernelgen manifest: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: manifest format {found} is not supported (this kernelgen reads format {FORMAT_VERSION}); rebuild the artifact with `kernelgen build`")]
    Format { path: PathBuf, found: u32 },
    #[error("{path} was modified after it was built: sha256 {actual}, manifest says {expected}; rebuild the artifact")]
    Hash {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: the manifest lists no file '{name}'")]
    Missing { path: PathBuf, name: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Input and output specs of the ragged paged attention kernel for `cfg`.
pub fn io_specs(cfg: &KernelConfig) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let g = cfg.geometry();
    let x = cfg.dtype().mlir().to_string();
    let spec = |name: &str, shape: Vec<u32>, dtype: &str| TensorSpec {
        name: name.into(),
        shape: shape.into_iter().map(u64::from).collect(),
        dtype: dtype.into(),
    };
    let q = vec![cfg.max_num_tokens(), g.num_q_heads, g.head_dim];
    let inputs = vec![
        spec("q", q.clone(), &x),
        spec(
            "kv_pages",
            vec![
                cfg.total_pages(),
                cfg.page_size(),
                2 * g.num_kv_heads,
                g.head_dim,
            ],
            &x,
        ),
        spec("kv_lens", vec![cfg.max_num_seqs()], "i32"),
        spec(
            "page_indices",
            vec![cfg.max_num_seqs(), cfg.pages_per_seq()],
            "i32",
        ),
        spec("cu_q_lens", vec![cfg.max_num_seqs() + 1], "i32"),
        spec("num_seqs", vec![1], "i32"),
    ];
    (inputs, vec![spec("out", q, &x)])
}

impl Manifest {
    /// A manifest for `cfg` with no files yet.
    pub fn new(cfg: &KernelConfig) -> Manifest {
        let (inputs, outputs) = io_specs(cfg);
        Manifest {
            format_version: FORMAT_VERSION,
            kernelgen_version: crate::VERSION.to_string(),
            kernel: "ragged_paged_attention".into(),
            config: cfg.clone(),
            derived: Derived {
                sm_scale: cfg.sm_scale(),
                max_model_len: cfg.max_model_len(),
                queries_per_kv_head: cfg.geometry().group(),
            },
            inputs,
            outputs,
            padding: "none: the StableHLO kernel takes any head count and head_dim as given".into(),
            files: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    pub fn dtype(&self) -> Dtype {
        self.config.dtype()
    }
}

/// An artifact directory being written: files first, the manifest last.
pub struct ArtifactWriter {
    dir: PathBuf,
    pub manifest: Manifest,
}

impl ArtifactWriter {
    pub fn create(dir: &Path, cfg: &KernelConfig) -> Result<ArtifactWriter, ArtifactError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(ArtifactWriter {
            dir: dir.to_path_buf(),
            manifest: Manifest::new(cfg),
        })
    }

    /// Writes `name` and records its hash.
    pub fn add_file(&mut self, name: &str, contents: &[u8]) -> Result<(), ArtifactError> {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).map_err(io(&path))?;
        self.manifest.files.insert(
            name.to_string(),
            FileEntry {
                sha256: sha256_hex(contents),
                bytes: contents.len() as u64,
            },
        );
        Ok(())
    }

    /// Writes `manifest.json` (atomically: a reader never sees half a manifest).
    pub fn finish(self) -> Result<Artifact, ArtifactError> {
        let path = self.dir.join(MANIFEST);
        let tmp = self.dir.join(format!(".{MANIFEST}.tmp"));
        let json = serde_json::to_string_pretty(&self.manifest).expect("manifest serializes");
        std::fs::write(&tmp, json + "\n").map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(Artifact {
            dir: self.dir,
            manifest: self.manifest,
        })
    }
}

/// A built artifact, read back and hash-checked.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Artifact {
    /// Reads `dir/manifest.json` (re-validating the config) and checks every file's sha256.
    pub fn open(dir: &Path) -> Result<Artifact, ArtifactError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ArtifactError::Json {
                path: path.clone(),
                source,
            })?;
        let found = raw
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        if found != FORMAT_VERSION {
            return Err(ArtifactError::Format { path, found });
        }
        let manifest: Manifest =
            serde_json::from_value(raw).map_err(|source| ArtifactError::Json {
                path: path.clone(),
                source,
            })?;
        let artifact = Artifact {
            dir: dir.to_path_buf(),
            manifest,
        };
        for name in artifact.manifest.files.keys() {
            artifact.read(name)?;
        }
        Ok(artifact)
    }

    /// Reads one listed file, checking its hash.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, ArtifactError> {
        let entry = self
            .manifest
            .files
            .get(name)
            .ok_or_else(|| ArtifactError::Missing {
                path: self.dir.join(MANIFEST),
                name: name.to_string(),
            })?;
        let path = self.dir.join(name);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let actual = sha256_hex(&bytes);
        if actual != entry.sha256 {
            return Err(ArtifactError::Hash {
                path,
                expected: entry.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    pub fn read_text(&self, name: &str) -> Result<String, ArtifactError> {
        let bytes = self.read(name)?;
        String::from_utf8(bytes).map_err(|e| ArtifactError::Io {
            path: self.dir.join(name),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Geometry, KernelParams};

    fn cfg() -> KernelConfig {
        KernelConfig::new(KernelParams::with_defaults(
            Geometry {
                num_q_heads: 4,
                num_kv_heads: 2,
                head_dim: 8,
            },
            8,
            4,
        ))
        .unwrap()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kg-art-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let dir = tmp("rt");
        let mut w = ArtifactWriter::create(&dir, &cfg()).unwrap();
        w.add_file("a.txt", b"hello").unwrap();
        let written = w.finish().unwrap();
        let read = Artifact::open(&dir).unwrap();
        assert_eq!(read.manifest, written.manifest);
        assert_eq!(read.manifest.inputs[1].shape, vec![256, 64, 4, 8]);
        std::fs::write(dir.join("a.txt"), b"hellO").unwrap();
        let err = Artifact::open(&dir).unwrap_err().to_string();
        assert!(err.contains("modified after it was built"), "{err}");
    }

    #[test]
    fn invalid_config_in_manifest_is_rejected() {
        let dir = tmp("bad");
        ArtifactWriter::create(&dir, &cfg())
            .unwrap()
            .finish()
            .unwrap();
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"kv_pages_block\": 4", "\"kv_pages_block\": 0"),
        )
        .unwrap();
        let err = Artifact::open(&dir).unwrap_err().to_string();
        assert!(err.contains("kv_pages_block = 0"), "{err}");
        std::fs::write(&path, "{\"format_version\": 99}").unwrap();
        assert!(Artifact::open(&dir)
            .unwrap_err()
            .to_string()
            .contains("format 99"));
    }
}
