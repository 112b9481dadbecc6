//! A kernel config as a user states it ([`KernelSpec`]): a preset or a `config.json` for the
//! geometry, overrides, call shapes, block sizes, any of them left out. CLI flags and the
//! entries of `ci/vmem.toml` are both this struct (field names are the flag names);
//! [`KernelSpec::params`] fills what is missing from a command's [`CallDefaults`] and
//! [`KernelSpec::config`] validates the result into the one [`KernelConfig`].

use super::{
    defaults, geometry_from_hf_config, ConfigError, Dtype, Geometry, KernelConfig, KernelParams,
    Preset, Schedule,
};
use serde::Deserialize;
use std::path::PathBuf;

/// The preset used when neither `preset` nor `hf-config` is given.
pub const DEFAULT_PRESET: &str = "llama3-8b";

/// Call-shape defaults: `build`/`verify` use shapes a CPU verifies in seconds; `check`/`plan`
/// use TPU serving shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallDefaults {
    pub max_num_tokens: u32,
    pub max_num_seqs: u32,
    pub max_model_len: u32,
}

pub const CPU_DEFAULTS: CallDefaults = CallDefaults {
    max_num_tokens: defaults::MAX_NUM_TOKENS,
    max_num_seqs: defaults::MAX_NUM_SEQS,
    max_model_len: defaults::MAX_MODEL_LEN,
};

pub const TPU_DEFAULTS: CallDefaults = CallDefaults {
    max_num_tokens: 2048,
    max_num_seqs: 128,
    max_model_len: 4096,
};

/// Every knob of a kernel config, as given (`None`: not given).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KernelSpec {
    #[serde(rename = "q")]
    pub q_block: Option<u32>,
    #[serde(rename = "kv")]
    pub kv_pages_block: Option<u32>,
    pub preset: Option<String>,
    pub hf_config: Option<PathBuf>,
    pub num_q_heads: Option<u32>,
    pub num_kv_heads: Option<u32>,
    pub head_dim: Option<u32>,
    pub page_size: Option<u32>,
    pub dtype: Option<Dtype>,
    #[serde(rename = "max-tokens")]
    pub max_num_tokens: Option<u32>,
    #[serde(rename = "max-seqs")]
    pub max_num_seqs: Option<u32>,
    pub max_model_len: Option<u32>,
    pub pages_per_seq: Option<u32>,
    pub total_pages: Option<u32>,
    pub sm_scale: Option<f32>,
    pub sliding_window: Option<u32>,
    pub soft_cap: Option<f32>,
    pub schedule: Option<Schedule>,
}

impl KernelSpec {
    /// This spec with every field it leaves out taken from `base`.
    pub fn or(self, base: &KernelSpec) -> KernelSpec {
        let b = base.clone();
        KernelSpec {
            q_block: self.q_block.or(b.q_block),
            kv_pages_block: self.kv_pages_block.or(b.kv_pages_block),
            preset: self.preset.or(b.preset),
            hf_config: self.hf_config.or(b.hf_config),
            num_q_heads: self.num_q_heads.or(b.num_q_heads),
            num_kv_heads: self.num_kv_heads.or(b.num_kv_heads),
            head_dim: self.head_dim.or(b.head_dim),
            page_size: self.page_size.or(b.page_size),
            dtype: self.dtype.or(b.dtype),
            max_num_tokens: self.max_num_tokens.or(b.max_num_tokens),
            max_num_seqs: self.max_num_seqs.or(b.max_num_seqs),
            max_model_len: self.max_model_len.or(b.max_model_len),
            pages_per_seq: self.pages_per_seq.or(b.pages_per_seq),
            total_pages: self.total_pages.or(b.total_pages),
            sm_scale: self.sm_scale.or(b.sm_scale),
            sliding_window: self.sliding_window.or(b.sliding_window),
            soft_cap: self.soft_cap.or(b.soft_cap),
            schedule: self.schedule.or(b.schedule),
        }
    }

    fn page_size(&self) -> u32 {
        self.page_size.unwrap_or(defaults::PAGE_SIZE)
    }

    /// pages_per_seq as the spec gives it (explicitly, or from max_model_len).
    pub fn pages_per_seq(&self, d: &CallDefaults) -> u32 {
        self.pages_per_seq.unwrap_or_else(|| {
            self.max_model_len
                .unwrap_or(d.max_model_len)
                .div_ceil(self.page_size().max(1))
        })
    }

    /// Decoder layers of the preset or config.json, when known.
    pub fn num_layers(&self) -> Result<Option<u32>, ConfigError> {
        match &self.hf_config {
            Some(path) => Ok(geometry_from_hf_config(path)?.num_layers),
            None => Ok(Some(
                Preset::find(self.preset.as_deref().unwrap_or(DEFAULT_PRESET))?.num_layers,
            )),
        }
    }

    /// `q` and `kv`, which every config needs.
    pub fn blocks(&self) -> Result<(u32, u32), ConfigError> {
        let q = self.q_block.ok_or_else(|| {
            ConfigError::field(
                "q_block",
                "missing",
                "give --q Q_BLOCK (query tokens per block)",
            )
        })?;
        let kv = self.kv_pages_block.ok_or_else(|| {
            ConfigError::field(
                "kv_pages_block",
                "missing",
                "give --kv KV_PAGES_BLOCK (KV pages per block)",
            )
        })?;
        Ok((q, kv))
    }

    /// Resolves the geometry (preset or config.json, then overrides) and fills what is missing
    /// from `d`: the parameters, not yet validated.
    pub fn params(&self, d: &CallDefaults) -> Result<KernelParams, ConfigError> {
        let (q_block, kv_pages_block) = self.blocks()?;
        let max_num_seqs = self.max_num_seqs.unwrap_or(d.max_num_seqs);
        let max_model_len = self.max_model_len.unwrap_or(d.max_model_len);
        if self.pages_per_seq.is_some() && self.max_model_len.is_some() {
            return Err(ConfigError::field(
                "pages_per_seq",
                self.pages_per_seq.unwrap_or(0),
                "give max_model_len or pages_per_seq, not both",
            ));
        }
        let (mut geometry, window, cap) = match &self.hf_config {
            Some(path) => {
                let a = geometry_from_hf_config(path)?;
                (a.geometry, a.sliding_window, a.soft_cap)
            }
            None => {
                let name = self.preset.as_deref().unwrap_or(DEFAULT_PRESET);
                (Preset::find(name)?.geometry, None, None)
            }
        };
        let Geometry {
            num_q_heads,
            num_kv_heads,
            head_dim,
        } = &mut geometry;
        *num_q_heads = self.num_q_heads.unwrap_or(*num_q_heads);
        *num_kv_heads = self.num_kv_heads.unwrap_or(*num_kv_heads);
        *head_dim = self.head_dim.unwrap_or(*head_dim);
        let page_size = self.page_size();
        if page_size == 0 {
            return Err(ConfigError::field("page_size", 0, "must be in 1..=4096"));
        }
        let pages_per_seq = match self.pages_per_seq {
            Some(n) => n,
            None if max_model_len == 0 => {
                return Err(ConfigError::field("max_model_len", 0, "must be >= 1"))
            }
            None => max_model_len.div_ceil(page_size),
        };
        Ok(KernelParams {
            geometry,
            dtype: self.dtype.unwrap_or(Dtype::Bf16),
            page_size,
            q_block,
            kv_pages_block,
            max_num_tokens: self.max_num_tokens.unwrap_or(d.max_num_tokens),
            max_num_seqs,
            pages_per_seq,
            total_pages: self
                .total_pages
                .unwrap_or(max_num_seqs.saturating_mul(pages_per_seq)),
            sm_scale: self.sm_scale,
            sliding_window: self.sliding_window.or(window),
            soft_cap: self.soft_cap.or(cap),
            schedule: self.schedule.unwrap_or_default(),
        })
    }

    /// [`KernelSpec::params`], validated.
    pub fn config(&self, d: &CallDefaults) -> Result<KernelConfig, ConfigError> {
        KernelConfig::new(self.params(d)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_the_spec_leaves_out() {
        let s = KernelSpec {
            q_block: Some(16),
            kv_pages_block: Some(8),
            page_size: Some(128),
            ..Default::default()
        };
        let c = s.config(&TPU_DEFAULTS).unwrap();
        assert_eq!((c.max_num_tokens(), c.max_num_seqs()), (2048, 128));
        assert_eq!(c.pages_per_seq(), 4096 / 128);
        assert_eq!(c.total_pages(), 128 * 32);
        assert_eq!(c.geometry().num_q_heads, 32, "llama3-8b");
        let merged = KernelSpec::default().or(&s);
        assert_eq!(merged, s);
        assert!(
            KernelSpec::default().config(&CPU_DEFAULTS).is_err(),
            "no blocks"
        );
    }

    #[test]
    fn a_spec_reads_from_toml_with_flag_names() {
        let s: KernelSpec = toml::from_str(
            "q = 16\nkv = 8\npage-size = 64\nmax-model-len = 4096\ndtype = \"f32\"\nmax-seqs = 64",
        )
        .unwrap();
        assert_eq!(s.q_block, Some(16));
        assert_eq!(s.dtype, Some(Dtype::F32));
        assert_eq!(s.max_num_seqs, Some(64));
        assert_eq!(s.pages_per_seq(&TPU_DEFAULTS), 64);
    }
}
