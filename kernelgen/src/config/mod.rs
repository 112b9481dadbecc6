//! The kernel configuration: one typed struct, validated once, passed everywhere.
//!
//! [`KernelParams`] is the raw, user-facing set of knobs (from CLI flags, a preset, a Hugging Face
//! `config.json` or a manifest). [`KernelConfig::new`] checks every rule and is the only way to get
//! a [`KernelConfig`]; emitters, the VMEM checker and the runtime take the validated struct, so
//! none of them re-checks or meets an invalid config.

mod hf;
mod preset;
pub mod spec;

pub use hf::{geometry_from_hf_config, HfAttention};
pub use preset::{Preset, PRESETS};
pub use spec::{CallDefaults, KernelSpec, CPU_DEFAULTS, TPU_DEFAULTS};

use serde::{Deserialize, Serialize};
use std::fmt;

pub use runtime::dtype::Dtype;

/// Parses a dtype flag or field, naming the field on error.
pub fn parse_dtype(s: &str) -> Result<Dtype, ConfigError> {
    s.parse()
        .map_err(|_| ConfigError::field("dtype", s, "one of f32, bf16 (float32, bfloat16)"))
}

/// Form of the kernel: two StableHLO loop nests and the host kernel's custom call (same
/// results, different speed profiles and backends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Per sequence: its query blocks, then their KV blocks. Work follows each sequence's length;
    /// many small ops when there are many sequences.
    #[default]
    Sequential,
    /// All sequences in lockstep: few large ops, but every sequence pays for the longest.
    /// Best for decode batches.
    Batched,
    /// One XLA FFI custom call to kernelgen's native CPU kernel (`runtime::kernels::rpa`), which
    /// reads pages in place: the fastest form on the XLA CPU backend, and only there.
    Host,
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, ConfigError> {
        match s {
            "sequential" => Ok(Schedule::Sequential),
            "batched" => Ok(Schedule::Batched),
            "host" => Ok(Schedule::Host),
            _ => Err(ConfigError::field(
                "schedule",
                s,
                "one of sequential, batched, host",
            )),
        }
    }
}

/// Attention geometry of the model (heads as the kernel sees them, i.e. per device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
}

impl Geometry {
    /// Query heads per KV head.
    pub fn group(&self) -> u32 {
        self.num_q_heads / self.num_kv_heads
    }
}

/// Raw kernel parameters, before validation. Every field is what a user can set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelParams {
    pub geometry: Geometry,
    pub dtype: Dtype,
    pub page_size: u32,
    /// Query tokens per block.
    pub q_block: u32,
    /// KV pages per block.
    pub kv_pages_block: u32,
    /// Rows of `q` (all sequences' new tokens, padded).
    pub max_num_tokens: u32,
    pub max_num_seqs: u32,
    /// Columns of `page_indices`: the most pages one sequence can hold.
    pub pages_per_seq: u32,
    /// Pages in the KV pool (first dim of `kv_pages`).
    pub total_pages: u32,
    /// Logit scale; `None` means `1 / sqrt(head_dim)`.
    pub sm_scale: Option<f32>,
    pub sliding_window: Option<u32>,
    pub soft_cap: Option<f32>,
    /// Form of the kernel ([`Schedule`]).
    #[serde(default)]
    pub schedule: Schedule,
}

/// Call-shape defaults, shared by every command so a kernel built with defaults runs under
/// `verify` and the checker with the same shapes.
pub mod defaults {
    pub const PAGE_SIZE: u32 = 64;
    pub const MAX_NUM_TOKENS: u32 = 256;
    pub const MAX_NUM_SEQS: u32 = 16;
    pub const MAX_MODEL_LEN: u32 = 1024;
}

impl KernelParams {
    /// Parameters for `geometry` with the documented defaults for everything else.
    pub fn with_defaults(geometry: Geometry, q_block: u32, kv_pages_block: u32) -> KernelParams {
        let pages_per_seq = defaults::MAX_MODEL_LEN.div_ceil(defaults::PAGE_SIZE);
        KernelParams {
            geometry,
            dtype: Dtype::Bf16,
            page_size: defaults::PAGE_SIZE,
            q_block,
            kv_pages_block,
            max_num_tokens: defaults::MAX_NUM_TOKENS,
            max_num_seqs: defaults::MAX_NUM_SEQS,
            pages_per_seq,
            total_pages: defaults::MAX_NUM_SEQS * pages_per_seq,
            sm_scale: None,
            sliding_window: None,
            soft_cap: None,
            schedule: Schedule::Sequential,
        }
    }
}

/// A rejected configuration: names the field, the value, and what would be valid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} = {value} is invalid: {expected}")]
    Field {
        field: &'static str,
        value: String,
        expected: String,
    },
    #[error("unknown preset '{name}': known presets are {known}")]
    UnknownPreset { name: String, known: String },
    #[error("cannot read Hugging Face config {path}: {reason}")]
    HfConfig { path: String, reason: String },
}

impl ConfigError {
    pub fn field(
        field: &'static str,
        value: impl fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError::Field {
            field,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// Largest value any integer knob may take; keeps every derived size well inside i32/i64.
const MAX_DIM: u32 = 1 << 20;
/// Longest sequence (in tokens) a page table may describe.
const MAX_POSITIONS: u64 = 1 << 30;

fn in_range(field: &'static str, v: u32, lo: u32, hi: u32) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(ConfigError::field(
            field,
            v,
            format!("must be in {lo}..={hi}"),
        ));
    }
    Ok(())
}

/// A validated kernel configuration. Construct with [`KernelConfig::new`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "KernelParams", into = "KernelParams")]
pub struct KernelConfig {
    p: KernelParams,
}

impl TryFrom<KernelParams> for KernelConfig {
    type Error = ConfigError;
    fn try_from(p: KernelParams) -> Result<Self, ConfigError> {
        KernelConfig::new(p)
    }
}

impl From<KernelConfig> for KernelParams {
    fn from(c: KernelConfig) -> KernelParams {
        c.p
    }
}

impl KernelConfig {
    /// Checks every rule; the error names the first offending field and its valid range.
    pub fn new(p: KernelParams) -> Result<KernelConfig, ConfigError> {
        let g = p.geometry;
        in_range("num_q_heads", g.num_q_heads, 1, 1024)?;
        in_range("num_kv_heads", g.num_kv_heads, 1, g.num_q_heads)?;
        if !g.num_q_heads.is_multiple_of(g.num_kv_heads) {
            let divisors: Vec<String> = (1..=g.num_q_heads)
                .filter(|d| g.num_q_heads.is_multiple_of(*d))
                .map(|d| d.to_string())
                .collect();
            return Err(ConfigError::field(
                "num_kv_heads",
                g.num_kv_heads,
                format!(
                    "num_q_heads ({}) must be a multiple of num_kv_heads; valid num_kv_heads: {}",
                    g.num_q_heads,
                    divisors.join(", ")
                ),
            ));
        }
        in_range("head_dim", g.head_dim, 1, 1024)?;
        in_range("page_size", p.page_size, 1, 4096)?;
        in_range("max_num_tokens", p.max_num_tokens, 1, MAX_DIM)?;
        in_range("max_num_seqs", p.max_num_seqs, 1, MAX_DIM)?;
        in_range("pages_per_seq", p.pages_per_seq, 1, MAX_DIM)?;
        in_range("total_pages", p.total_pages, 1, MAX_DIM)?;
        in_range("q_block", p.q_block, 1, p.max_num_tokens)
            .map_err(|e| explain(e, "q_block cannot exceed max_num_tokens"))?;
        in_range("kv_pages_block", p.kv_pages_block, 1, p.pages_per_seq)
            .map_err(|e| explain(e, "kv_pages_block cannot exceed pages_per_seq"))?;
        if let Some(s) = p.sm_scale {
            if !(s.is_finite() && s > 0.0) {
                return Err(ConfigError::field("sm_scale", s, "must be finite and > 0"));
            }
        }
        if let Some(w) = p.sliding_window {
            in_range("sliding_window", w, 1, u32::MAX)?;
        }
        if let Some(c) = p.soft_cap {
            if !(c.is_finite() && c > 0.0) {
                return Err(ConfigError::field("soft_cap", c, "must be finite and > 0"));
            }
        }
        // Token positions (kv_len, page * page_size + slot) are i32 in every kernel.
        let max_len = p.pages_per_seq as u64 * p.page_size as u64;
        if max_len > MAX_POSITIONS {
            return Err(ConfigError::field(
                "pages_per_seq",
                p.pages_per_seq,
                format!(
                    "pages_per_seq * page_size = {max_len} positions; at most {MAX_POSITIONS} fit the kernels' i32 positions"
                ),
            ));
        }
        Ok(KernelConfig { p })
    }

    pub fn params(&self) -> &KernelParams {
        &self.p
    }
    pub fn geometry(&self) -> Geometry {
        self.p.geometry
    }
    pub fn dtype(&self) -> Dtype {
        self.p.dtype
    }
    pub fn page_size(&self) -> u32 {
        self.p.page_size
    }
    pub fn q_block(&self) -> u32 {
        self.p.q_block
    }
    pub fn kv_pages_block(&self) -> u32 {
        self.p.kv_pages_block
    }
    pub fn max_num_tokens(&self) -> u32 {
        self.p.max_num_tokens
    }
    pub fn max_num_seqs(&self) -> u32 {
        self.p.max_num_seqs
    }
    pub fn pages_per_seq(&self) -> u32 {
        self.p.pages_per_seq
    }
    pub fn total_pages(&self) -> u32 {
        self.p.total_pages
    }
    pub fn schedule(&self) -> Schedule {
        self.p.schedule
    }
    pub fn sliding_window(&self) -> Option<u32> {
        self.p.sliding_window
    }
    pub fn soft_cap(&self) -> Option<f32> {
        self.p.soft_cap
    }
    /// The logit scale actually applied.
    pub fn sm_scale(&self) -> f32 {
        self.p
            .sm_scale
            .unwrap_or(1.0 / (self.p.geometry.head_dim as f32).sqrt())
    }
    /// Longest sequence the page table can describe.
    pub fn max_model_len(&self) -> u32 {
        self.p.pages_per_seq * self.p.page_size
    }
    /// Short name used for artifact directories: `rpa-q32-kv16` (`-batched` for that schedule).
    pub fn short_name(&self) -> String {
        let suffix = match self.p.schedule {
            Schedule::Sequential => "",
            Schedule::Batched => "-batched",
            Schedule::Host => "-host",
        };
        format!(
            "rpa-q{}-kv{}{suffix}",
            self.p.q_block, self.p.kv_pages_block
        )
    }

    /// Returns a copy with other block sizes, validated again.
    pub fn with_blocks(
        &self,
        q_block: u32,
        kv_pages_block: u32,
    ) -> Result<KernelConfig, ConfigError> {
        KernelConfig::new(KernelParams {
            q_block,
            kv_pages_block,
            ..self.p.clone()
        })
    }

    /// The same problem in the reference's terms.
    pub fn problem(&self) -> verify::RpaProblem {
        let g = self.p.geometry;
        verify::RpaProblem {
            num_q_heads: g.num_q_heads as usize,
            num_kv_heads: g.num_kv_heads as usize,
            head_dim: g.head_dim as usize,
            page_size: self.p.page_size as usize,
            max_num_tokens: self.p.max_num_tokens as usize,
            max_num_seqs: self.p.max_num_seqs as usize,
            pages_per_seq: self.p.pages_per_seq as usize,
            total_pages: self.p.total_pages as usize,
            sm_scale: self.sm_scale() as f64,
            sliding_window: self.p.sliding_window.map(|w| w as usize),
            soft_cap: self.p.soft_cap.map(|c| c as f64),
        }
    }
}

fn explain(e: ConfigError, why: &str) -> ConfigError {
    match e {
        ConfigError::Field {
            field,
            value,
            expected,
        } => ConfigError::Field {
            field,
            value,
            expected: format!("{expected} ({why})"),
        },
        other => other,
    }
}

impl fmt::Display for KernelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.p;
        let g = p.geometry;
        write!(
            f,
            "q_block={} kv_pages_block={} heads={}q/{}kv head_dim={} page_size={} dtype={} \
             max_num_tokens={} max_num_seqs={} pages_per_seq={} total_pages={} sm_scale={}",
            p.q_block,
            p.kv_pages_block,
            g.num_q_heads,
            g.num_kv_heads,
            g.head_dim,
            p.page_size,
            p.dtype,
            p.max_num_tokens,
            p.max_num_seqs,
            p.pages_per_seq,
            p.total_pages,
            self.sm_scale()
        )?;
        if let Some(w) = p.sliding_window {
            write!(f, " sliding_window={w}")?;
        }
        if let Some(c) = p.soft_cap {
            write!(f, " soft_cap={c}")?;
        }
        match p.schedule {
            Schedule::Sequential => {}
            Schedule::Batched => write!(f, " schedule=batched")?,
            Schedule::Host => write!(f, " schedule=host")?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama() -> KernelParams {
        KernelParams::with_defaults(
            Geometry {
                num_q_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
            },
            32,
            16,
        )
    }

    fn field_of(p: KernelParams) -> &'static str {
        match KernelConfig::new(p).unwrap_err() {
            ConfigError::Field { field, .. } => field,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn defaults_validate() {
        let c = KernelConfig::new(llama()).unwrap();
        assert_eq!(c.max_model_len(), 1024);
        assert!((c.sm_scale() - 128f32.sqrt().recip()).abs() < 1e-9);
        assert_eq!(c.short_name(), "rpa-q32-kv16");
    }

    #[test]
    fn each_invalid_field_is_named() {
        assert_eq!(
            field_of(KernelParams {
                q_block: 0,
                ..llama()
            }),
            "q_block"
        );
        assert_eq!(
            field_of(KernelParams {
                kv_pages_block: 17,
                ..llama()
            }),
            "kv_pages_block"
        );
        let mut p = llama();
        p.geometry.num_kv_heads = 3;
        assert_eq!(field_of(p), "num_kv_heads");
        let mut p = llama();
        p.geometry.head_dim = 0;
        assert_eq!(field_of(p), "head_dim");
        assert_eq!(
            field_of(KernelParams {
                soft_cap: Some(0.0),
                ..llama()
            }),
            "soft_cap"
        );
        assert_eq!(
            field_of(KernelParams {
                sliding_window: Some(0),
                ..llama()
            }),
            "sliding_window"
        );
        assert_eq!(
            field_of(KernelParams {
                total_pages: 0,
                ..llama()
            }),
            "total_pages"
        );
        let long = KernelParams {
            page_size: 4096,
            pages_per_seq: 1 << 20,
            ..llama()
        };
        assert_eq!(field_of(long), "pages_per_seq");
    }

    #[test]
    fn error_message_names_range_and_reason() {
        let msg = KernelConfig::new(KernelParams {
            kv_pages_block: 17,
            ..llama()
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            msg,
            "kv_pages_block = 17 is invalid: must be in 1..=16 (kv_pages_block cannot exceed pages_per_seq)"
        );
    }

    #[test]
    fn manifest_round_trip_revalidates() {
        let c = KernelConfig::new(llama()).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<KernelConfig>(&json).unwrap(), c);
        let bad = json.replace("\"q_block\":32", "\"q_block\":0");
        let err = serde_json::from_str::<KernelConfig>(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("q_block = 0"), "{err}");
    }
}
