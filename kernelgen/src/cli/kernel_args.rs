//! Flags that describe a kernel config, shared by the subcommands that take one.

use clap::Args;
use kernelgen::config::{
    defaults, geometry_from_hf_config, ConfigError, Dtype, Geometry, KernelConfig, KernelParams,
    Preset, Schedule,
};
use std::path::PathBuf;

fn parse_schedule(s: &str) -> Result<Schedule, String> {
    Schedule::parse(s).map_err(|e| e.to_string())
}

fn parse_dtype(s: &str) -> Result<Dtype, String> {
    Dtype::parse(s).map_err(|e| e.to_string())
}

#[derive(Args, Clone, Debug)]
pub struct KernelArgs {
    /// q_block: query tokens per block (required)
    #[arg(long = "q", value_name = "Q_BLOCK", allow_negative_numbers = true)]
    pub q_block: Option<u32>,
    /// kv_pages_block: KV pages per block (required)
    #[arg(
        long = "kv",
        value_name = "KV_PAGES_BLOCK",
        allow_negative_numbers = true
    )]
    pub kv_pages_block: Option<u32>,
    /// Model geometry preset (llama3-8b, llama3-70b, llama3.2-1b, mistral-7b, qwen2.5-7b, smollm2-135m) [default: llama3-8b]
    #[arg(long, conflicts_with = "hf_config", help_heading = "Geometry")]
    pub preset: Option<String>,
    /// Take heads, KV heads, head_dim, sliding window and soft cap from a Hugging Face config.json
    #[arg(long, value_name = "PATH", help_heading = "Geometry")]
    pub hf_config: Option<PathBuf>,
    /// Override the number of query heads (per device)
    #[arg(long, help_heading = "Geometry")]
    pub num_q_heads: Option<u32>,
    /// Override the number of KV heads (per device)
    #[arg(long, help_heading = "Geometry")]
    pub num_kv_heads: Option<u32>,
    /// Override head_dim
    #[arg(long, help_heading = "Geometry")]
    pub head_dim: Option<u32>,
    /// Tokens per KV page
    #[arg(long, default_value_t = defaults::PAGE_SIZE, help_heading = "Call shapes")]
    pub page_size: u32,
    /// Element type of q, kv_pages and the output: bf16 or f32 (accumulation is always f32)
    #[arg(long, default_value = "bf16", value_parser = parse_dtype, help_heading = "Call shapes")]
    pub dtype: Dtype,
    /// Rows of q: all sequences' new tokens per call, padded [default: 256 for build, 2048 for check]
    #[arg(long = "max-tokens", help_heading = "Call shapes")]
    pub max_num_tokens: Option<u32>,
    /// Sequences per call (rows of kv_lens and page_indices) [default: 16 for build, 128 for check]
    #[arg(long = "max-seqs", help_heading = "Call shapes")]
    pub max_num_seqs: Option<u32>,
    /// Longest sequence; sets pages_per_seq = ceil(max_model_len / page_size) [default: 1024 for build, 4096 for check]
    #[arg(long, conflicts_with = "pages_per_seq", help_heading = "Call shapes")]
    pub max_model_len: Option<u32>,
    /// Columns of page_indices (instead of --max-model-len)
    #[arg(long, help_heading = "Call shapes")]
    pub pages_per_seq: Option<u32>,
    /// Pages in the KV pool [default: max_seqs * pages_per_seq]
    #[arg(long, help_heading = "Call shapes")]
    pub total_pages: Option<u32>,
    /// Logit scale [default: 1/sqrt(head_dim)]
    #[arg(long, help_heading = "Attention")]
    pub sm_scale: Option<f32>,
    /// Keys further back than this many positions are masked
    #[arg(long, help_heading = "Attention")]
    pub sliding_window: Option<u32>,
    /// Loop nest of the StableHLO kernel: sequential (per sequence) or batched (all sequences in lockstep; best for decode batches)
    #[arg(long, default_value = "sequential", value_parser = parse_schedule, help_heading = "Attention")]
    pub schedule: Schedule,
    /// Logit soft cap: cap * tanh(logit / cap), applied before the mask
    #[arg(long, help_heading = "Attention")]
    pub soft_cap: Option<f32>,
}

/// Call-shape defaults: `build`/`verify` use shapes a CPU verifies in seconds; `check`/`plan`
/// use TPU serving shapes.
#[derive(Clone, Copy, Debug)]
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

impl KernelArgs {
    /// pages_per_seq as the flags give it.
    pub fn pages_per_seq(&self, d: &CallDefaults) -> u32 {
        self.pages_per_seq.unwrap_or_else(|| {
            self.max_model_len
                .unwrap_or(d.max_model_len)
                .div_ceil(self.page_size.max(1))
        })
    }

    /// Decoder layers of the preset or config.json, when known.
    pub fn num_layers(&self) -> Result<Option<u32>, ConfigError> {
        match &self.hf_config {
            Some(path) => Ok(geometry_from_hf_config(path)?.num_layers),
            None => Ok(Some(
                Preset::find(self.preset.as_deref().unwrap_or("llama3-8b"))?.num_layers,
            )),
        }
    }

    /// `--q` and `--kv`, which every config needs.
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

    /// Resolves geometry (preset or config.json, then overrides) and validates everything.
    pub fn to_config(&self, d: &CallDefaults) -> Result<KernelConfig, ConfigError> {
        let (q_block, kv_pages_block) = self.blocks()?;
        let max_num_seqs = self.max_num_seqs.unwrap_or(d.max_num_seqs);
        let max_model_len = self.max_model_len.unwrap_or(d.max_model_len);
        let (mut geometry, window, cap) = match &self.hf_config {
            Some(path) => {
                let a = geometry_from_hf_config(path)?;
                (a.geometry, a.sliding_window, a.soft_cap)
            }
            None => {
                let name = self.preset.as_deref().unwrap_or("llama3-8b");
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
        if self.page_size == 0 {
            return Err(ConfigError::field("page_size", 0, "must be in 1..=4096"));
        }
        let pages_per_seq = match self.pages_per_seq {
            Some(n) => n,
            None if max_model_len == 0 => {
                return Err(ConfigError::field("max_model_len", 0, "must be >= 1"))
            }
            None => max_model_len.div_ceil(self.page_size),
        };
        let params = KernelParams {
            geometry,
            dtype: self.dtype,
            page_size: self.page_size,
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
            schedule: self.schedule,
        };
        KernelConfig::new(params)
    }
}
