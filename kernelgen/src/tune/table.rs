//! What a tune leaves behind, in the tune folder (`<cache>/tune`, or `$KERNELGEN_TUNE_DIR`):
//!
//! - `measurements.jsonl`: every measurement ever made, one JSON object per line, appended as
//!   each candidate finishes (a killed sweep loses nothing it measured; `--resume` reads it);
//! - `tuned_blocks.json`: the best block sizes per [`TuneKey`], a plain JSON file a person may
//!   edit, like a tuned block-size table. Serving commands read it through
//!   [`Table::lookup`], which validates the entry it returns: an edited entry whose config is
//!   invalid, or that does not fit its TPU target's VMEM, is refused with the checker's reason.

use super::{Measurement, Phase, TuneError, Workload};
use crate::config::{Dtype, Geometry};
use crate::target::{fmt_bytes, Target};
use crate::vmem::{self, CheckRequest, KernelModel, Verdict};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a measurement is valid for: the device and compiler it ran on, the kernel source that
/// was compiled, and the shapes that decide the kernel's speed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TuneKey {
    /// `cpu` (the PJRT platform) for a live run; the TPU target (`v5p`) for a TPU.
    pub device: String,
    /// The plugin's platform version, or the TPU compiler's pinned versions.
    pub compiler: String,
    /// Hash of the kernel templates ([`kernel_source_hash`]): a changed kernel misses.
    pub kernel_source: String,
    pub phase: Phase,
    pub page_size: u32,
    pub dtype: Dtype,
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    /// max_model_len rounded up to a power of two.
    pub max_model_len_bucket: u32,
    pub sliding_window: Option<u32>,
}

impl TuneKey {
    pub fn new(w: &Workload, phase: Phase, device: &str, compiler: &str) -> TuneKey {
        TuneKey {
            device: device.to_string(),
            compiler: compiler.to_string(),
            kernel_source: kernel_source_hash(),
            phase,
            page_size: w.page_size,
            dtype: w.dtype,
            num_q_heads: w.geometry.num_q_heads,
            num_kv_heads: w.geometry.num_kv_heads,
            head_dim: w.geometry.head_dim,
            max_model_len_bucket: w.max_model_len.next_power_of_two(),
            sliding_window: w.sliding_window,
        }
    }

    /// Equal in everything but the compiler version and the length bucket (a plugin upgrade
    /// or another max length keeps the entry usable; [`Table::lookup`] prefers exact ones).
    fn same_shapes(&self, other: &TuneKey) -> bool {
        TuneKey {
            compiler: other.compiler.clone(),
            max_model_len_bucket: other.max_model_len_bucket,
            ..self.clone()
        } == *other
    }
}

/// What a live measurement's `compiler` records: the plugin's platform version, its PJRT C API
/// version, and its file name and size (cheap, and different for every plugin release).
pub fn compiler_id(client: &runtime::pjrt::Client) -> String {
    let api = client.plugin();
    let (major, minor) = api.version();
    let file = api.path();
    let size = std::fs::metadata(file).map_or(0, |m| m.len());
    format!(
        "{}; PJRT {major}.{minor}; {} ({size} bytes)",
        client.platform_version().unwrap_or_default(),
        file.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    )
}

/// The first 16 hex digits of the SHA-256 of the kernel's templates.
pub fn kernel_source_hash() -> String {
    crate::artifact::sha256_hex(crate::emit::templates::kernel_source().as_bytes())[..16].into()
}

/// One row of the tuned table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: TuneKey,
    pub q_block: u32,
    pub kv_pages_block: u32,
    pub median_ms: Option<f64>,
    /// The shapes it was measured at.
    pub workload: Workload,
    pub measured_at: u64,
}

impl Entry {
    /// One line for logs: `decode q1 kv8 (0.840 ms, cpu, max len 2048)`.
    pub fn describe(&self) -> String {
        format!(
            "{} q{} kv{} ({}{}, max len {})",
            self.key.phase,
            self.q_block,
            self.kv_pages_block,
            self.median_ms
                .map_or(String::new(), |t| format!("{t:.3} ms, ")),
            self.key.device,
            self.workload.max_model_len
        )
    }

    /// Why this entry cannot be used, if it cannot: an invalid config, or (for a TPU device) a
    /// config the checker says does not fit.
    fn problem(&self) -> Option<String> {
        let cfg = match self
            .workload
            .config(self.key.phase, self.q_block, self.kv_pages_block)
        {
            Ok(cfg) => cfg,
            Err(e) => return Some(e.to_string()),
        };
        let target = Target::find(&self.key.device).ok()?;
        let r = vmem::check(&CheckRequest {
            cfg: &cfg,
            target,
            kernel: KernelModel::Kernelgen,
            vmem_limit: None,
        });
        match r {
            Err(e) => Some(e.to_string()),
            Ok(r) if r.verdict == Verdict::DoesNotFit => Some(format!(
                "does not fit {}: the checker needs {} of scoped VMEM (limit {}){}",
                target.name,
                fmt_bytes(r.lower_bytes),
                fmt_bytes(r.limit_bytes),
                if r.smem.verdict == Verdict::DoesNotFit {
                    " and SMEM does not fit"
                } else {
                    ""
                }
            )),
            Ok(_) => None,
        }
    }
}

/// The tuned table's file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Table {
    pub entries: Vec<Entry>,
}

/// What the serving commands look a phase up by.
#[derive(Clone, Debug)]
pub struct Query {
    pub device: String,
    pub compiler: Option<String>,
    pub geometry: Geometry,
    pub dtype: Dtype,
    pub page_size: u32,
    pub max_model_len: u32,
    pub sliding_window: Option<u32>,
}

impl Query {
    fn key(&self, phase: Phase) -> TuneKey {
        TuneKey {
            device: self.device.clone(),
            compiler: self.compiler.clone().unwrap_or_default(),
            kernel_source: kernel_source_hash(),
            phase,
            page_size: self.page_size,
            dtype: self.dtype,
            num_q_heads: self.geometry.num_q_heads,
            num_kv_heads: self.geometry.num_kv_heads,
            head_dim: self.geometry.head_dim,
            max_model_len_bucket: self.max_model_len.next_power_of_two(),
            sliding_window: self.sliding_window,
        }
    }

    /// The `kernelgen tune` command that fills the table for this query.
    pub fn tune_command(&self, phases: &str) -> String {
        let g = self.geometry;
        let target = match Target::find(&self.device) {
            Ok(t) => format!(" --target {} --plugin libtpu.so", t.name),
            Err(_) => String::new(),
        };
        format!(
            "kernelgen tune --num-q-heads {} --num-kv-heads {} --head-dim {} --page-size {} \
             --dtype {} --max-model-len {} --phase {phases}{target}",
            g.num_q_heads,
            g.num_kv_heads,
            g.head_dim,
            self.page_size,
            self.dtype.mlir(),
            self.max_model_len
        )
    }
}

impl Table {
    /// The entry for `phase` under `q`: among entries of the same device, kernel source and
    /// shapes, the one whose length bucket is nearest (in powers of two), then the same compiler
    /// version, then the newest. Refused (an error, not a miss) when that entry is invalid or
    /// does not fit its target.
    pub fn lookup(&self, q: &Query, phase: Phase, path: &Path) -> Result<Option<Entry>, TuneError> {
        let key = q.key(phase);
        let distance = |e: &Entry| {
            let log2 = |x: u32| x.max(1).ilog2() as i64;
            (log2(e.key.max_model_len_bucket) - log2(key.max_model_len_bucket)).abs()
        };
        let found = self
            .entries
            .iter()
            .filter(|e| e.key.same_shapes(&key))
            .min_by_key(|e| {
                (
                    distance(e),
                    q.compiler.as_ref() != Some(&e.key.compiler),
                    std::cmp::Reverse(e.measured_at),
                )
            });
        match found {
            None => Ok(None),
            Some(e) => match e.problem() {
                Some(why) => Err(TuneError::Table {
                    path: path.to_path_buf(),
                    detail: format!(
                        "the entry for {} q_block {} kv_pages_block {} is refused: {why}; fix or \
                         delete it, or run `{}`",
                        e.key.phase,
                        e.q_block,
                        e.kv_pages_block,
                        q.tune_command(phase.name())
                    ),
                }),
                None => Ok(Some(e.clone())),
            },
        }
    }
}

/// The tune folder: the measurement cache and the tuned table.
#[derive(Clone, Debug)]
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn at(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// `$KERNELGEN_TUNE_DIR`, else `<cache>/tune`.
    pub fn default_dir() -> Store {
        match std::env::var_os("KERNELGEN_TUNE_DIR") {
            Some(d) if !d.is_empty() => Store::at(d),
            _ => Store::at(runtime::cache::cache_dir().join("tune")),
        }
    }

    pub fn cache_path(&self) -> PathBuf {
        self.dir.join("measurements.jsonl")
    }

    pub fn table_path(&self) -> PathBuf {
        self.dir.join("tuned_blocks.json")
    }

    fn folder_error(&self, detail: impl std::fmt::Display) -> TuneError {
        TuneError::Folder {
            path: self.dir.clone(),
            detail: detail.to_string(),
        }
    }

    /// Creates the folder and proves it writable, before any candidate runs.
    pub fn ensure_writable(&self) -> Result<(), TuneError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.folder_error(e))?;
        let probe = self.dir.join(".write-probe");
        std::fs::write(&probe, b"").map_err(|e| self.folder_error(format!("not writable: {e}")))?;
        let _ = std::fs::remove_file(probe);
        // A table that exists but cannot be read would be overwritten at the end: refuse now.
        self.read_table()?;
        Ok(())
    }

    /// Appends one measurement to the cache.
    pub fn append(&self, m: &Measurement) -> Result<(), TuneError> {
        let line = serde_json::to_string(m).map_err(|e| self.folder_error(e))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cache_path())
            .map_err(|e| self.folder_error(e))?;
        writeln!(f, "{line}").map_err(|e| self.folder_error(e))
    }

    /// Every measurement in the cache (lines that do not parse, e.g. a line cut by a kill, are
    /// passed over).
    pub fn read_cache(&self) -> Result<Vec<Measurement>, TuneError> {
        match std::fs::read_to_string(self.cache_path()) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.folder_error(e)),
        }
    }

    /// The tuned table (empty when there is none yet).
    pub fn read_table(&self) -> Result<Table, TuneError> {
        let path = self.table_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| TuneError::Table {
                path,
                detail: format!("unreadable ({e}); fix the JSON or delete the file"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Table::default()),
            Err(e) => Err(TuneError::Table {
                path,
                detail: e.to_string(),
            }),
        }
    }

    /// Writes `best` into the table, replacing the entries with the same keys; other entries
    /// (other devices, shapes, hand edits) are kept. Written to a temporary file, then renamed.
    pub fn write_best(&self, best: &[Measurement], w: &Workload) -> Result<PathBuf, TuneError> {
        let mut table = self.read_table()?;
        for m in best {
            table.entries.retain(|e| e.key != m.key);
            table.entries.push(Entry {
                key: m.key.clone(),
                q_block: m.q_block,
                kv_pages_block: m.kv_pages_block,
                median_ms: m.median_ms,
                workload: w.clone(),
                measured_at: m.measured_at,
            });
        }
        let path = self.table_path();
        let tmp = self.dir.join("tuned_blocks.json.tmp");
        let text = serde_json::to_string_pretty(&table).map_err(|e| self.folder_error(e))?;
        std::fs::write(&tmp, text + "\n").map_err(|e| self.folder_error(e))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.folder_error(e))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(max_model_len: u32) -> Workload {
        Workload {
            geometry: Geometry {
                num_q_heads: 9,
                num_kv_heads: 3,
                head_dim: 64,
            },
            dtype: Dtype::F32,
            page_size: 16,
            max_num_seqs: 8,
            max_num_tokens: 64,
            max_model_len,
            sliding_window: None,
            soft_cap: None,
        }
    }

    fn entry(device: &str, compiler: &str, len: u32, kv: u32, at: u64) -> Entry {
        let w = workload(len);
        Entry {
            key: TuneKey::new(&w, Phase::Decode, device, compiler),
            q_block: 1,
            kv_pages_block: kv,
            median_ms: Some(1.0),
            workload: w,
            measured_at: at,
        }
    }

    fn query(len: u32, compiler: Option<&str>) -> Query {
        let w = workload(len);
        Query {
            device: "cpu".into(),
            compiler: compiler.map(Into::into),
            geometry: w.geometry,
            dtype: w.dtype,
            page_size: w.page_size,
            max_model_len: len,
            sliding_window: None,
        }
    }

    #[test]
    fn lookup_prefers_the_nearest_length_then_the_same_compiler_then_the_newest() {
        let t = Table {
            entries: vec![
                entry("cpu", "a", 256, 2, 1),
                entry("cpu", "b", 256, 4, 2),
                entry("cpu", "a", 4096, 8, 3),
                entry("v5p", "a", 256, 16, 4),
            ],
        };
        let p = Path::new("t.json");
        let kv = |len, c| {
            t.lookup(&query(len, c), Phase::Decode, p)
                .unwrap()
                .map(|e| e.kv_pages_block)
        };
        assert_eq!(kv(256, Some("a")), Some(2), "same compiler beats newer");
        assert_eq!(kv(256, None), Some(4), "no compiler known: the newest");
        assert_eq!(kv(200, Some("b")), Some(4), "200 is in the 256 bucket");
        assert_eq!(kv(3000, Some("b")), Some(8), "nearest bucket: 4096");
        assert_eq!(t.lookup(&query(256, None), Phase::Mixed, p).unwrap(), None);
    }

    #[test]
    fn an_entry_with_an_invalid_config_is_refused_not_used() {
        let mut bad = entry("cpu", "a", 256, 2, 1);
        bad.kv_pages_block = 0;
        let t = Table { entries: vec![bad] };
        let e = t
            .lookup(&query(256, None), Phase::Decode, Path::new("t.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kv_pages_block 0 is refused"), "{e}");
        assert!(e.contains("kernelgen tune"), "{e}");
    }
}
