//! Flag groups shared by several subcommands, each flattened into the commands that take it:
//! [`KernelArgs`] (a kernel config), [`CheckOpts`] (a VMEM check's target, kernel model, limit,
//! tensor parallelism), [`ServedArgs`] and [`PluginArg`] (the model, kernel and plugin a
//! serving command runs), [`EngineArgs`] (the engine's shape).

use clap::Args;
use kernelgen::config::{defaults, Dtype, KernelSpec, Schedule};
use kernelgen::step::program::{AttentionChoice, BlockSizes};
use runtime::engine::EngineConfig;
use std::path::PathBuf;

fn parse_schedule(s: &str) -> Result<Schedule, String> {
    Schedule::parse(s).map_err(|e| e.to_string())
}

pub(super) fn parse_dtype(s: &str) -> Result<Dtype, String> {
    kernelgen::config::parse_dtype(s).map_err(|e| e.to_string())
}

#[derive(Args, Clone, Debug)]
pub struct KernelArgs {
    /// q_block: query tokens per block (build without --q/--kv: the tuned table's, see `kernelgen tune`)
    #[arg(long = "q", value_name = "Q_BLOCK", allow_negative_numbers = true)]
    pub q_block: Option<u32>,
    /// kv_pages_block: KV pages per block (build without --q/--kv: the tuned table's)
    #[arg(
        long = "kv",
        value_name = "KV_PAGES_BLOCK",
        allow_negative_numbers = true
    )]
    pub kv_pages_block: Option<u32>,
    #[command(flatten)]
    pub geometry: GeometryArgs,
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
    /// Form of the StableHLO kernel: sequential (per sequence) or batched (all sequences in lockstep; best for decode batches), portable to any PJRT backend; or host (one XLA FFI custom call to kernelgen's native CPU kernel, which reads pages in place: XLA CPU only, the fastest form there)
    #[arg(long, default_value = "sequential", value_parser = parse_schedule, help_heading = "Attention")]
    pub schedule: Schedule,
    /// Logit soft cap: cap * tanh(logit / cap), applied before the mask
    #[arg(long, help_heading = "Attention")]
    pub soft_cap: Option<f32>,
}

/// Where the attention geometry comes from: a preset or a config.json, then overrides.
#[derive(Args, Clone, Debug)]
pub struct GeometryArgs {
    /// Model geometry preset (llama3-8b, llama3-70b, llama3.2-1b, mistral-7b, qwen2.5-7b, smollm2-135m) [default: llama3-8b; tune without --target: smollm2-135m]
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
}

impl GeometryArgs {
    /// These flags as a spec with nothing else given.
    pub fn spec(&self) -> KernelSpec {
        KernelSpec {
            preset: self.preset.clone(),
            hf_config: self.hf_config.clone(),
            num_q_heads: self.num_q_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            ..KernelSpec::default()
        }
    }
}

impl KernelArgs {
    /// The flags as the library's spec of a kernel config.
    pub fn spec(&self) -> KernelSpec {
        KernelSpec {
            q_block: self.q_block,
            kv_pages_block: self.kv_pages_block,
            page_size: Some(self.page_size),
            dtype: Some(self.dtype),
            max_num_tokens: self.max_num_tokens,
            max_num_seqs: self.max_num_seqs,
            max_model_len: self.max_model_len,
            pages_per_seq: self.pages_per_seq,
            total_pages: self.total_pages,
            sm_scale: self.sm_scale,
            sliding_window: self.sliding_window,
            soft_cap: self.soft_cap,
            schedule: Some(self.schedule),
            ..self.geometry.spec()
        }
    }
}

/// A VMEM check's options, shared by `check` and `plan`.
#[derive(Args, Debug, Clone)]
pub struct CheckOpts {
    /// TPU generation: v4, v5e, v5p, v6e, v7x
    #[arg(long)]
    pub target: Option<String>,
    /// Kernel model: jax-rpa (JAX's Pallas TPU ragged_paged_attention) or kernelgen
    #[arg(long = "kernel", value_name = "KERNEL", default_value = "jax-rpa")]
    pub kernel_model: String,
    /// vmem_limit_bytes the kernel is compiled with (e.g. 32MiB) [default: the target's scoped default]
    #[arg(long)]
    pub vmem_limit: Option<String>,
    /// Tensor-parallel degree: heads are divided by it before accounting
    #[arg(long, default_value_t = 1)]
    pub tp: u32,
    /// Also compile with the real TPU compiler (deviceless) and print its verdict
    #[arg(long)]
    pub oracle: bool,
}

/// The model and kernel a serving command runs (`generate`, `bench decode`, `emit-step`).
#[derive(Args, Debug)]
pub struct ServedArgs {
    /// Model: a .gguf file or a Hugging Face directory [default: cached SmolLM2-135M-Instruct]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Kernel artifact directory from `kernelgen build` (must match the model's heads, head_dim, page size, dtype)
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// q_block of the emitted kernels when --kernel is not given [default: the tuned table's entry (`kernelgen tune`), else 32]
    #[arg(long = "q")]
    pub q_block: Option<u32>,
    /// kv_pages_block of the emitted kernels when --kernel is not given [default: the tuned table's entries, else 4]
    #[arg(long = "kv")]
    pub kv_pages_block: Option<u32>,
    /// Kernel form of emitted programs: auto (on the XLA CPU plugin the native host kernels as XLA FFI custom calls: attention, and with AVX-512 the projections of steps up to 32 rows; portable StableHLO elsewhere), host (refused where the plugin cannot run it), portable (StableHLO only, XLA's dots, any backend)
    #[arg(long, value_name = "auto|host|portable", default_value = "auto", value_parser = parse_attention)]
    pub attention: AttentionChoice,
}

fn parse_attention(s: &str) -> Result<AttentionChoice, String> {
    match s {
        "auto" => Ok(AttentionChoice::Auto),
        "host" => Ok(AttentionChoice::Host),
        "portable" => Ok(AttentionChoice::Portable),
        _ => Err(format!("'{s}' is not one of auto, host, portable")),
    }
}

impl ServedArgs {
    /// --model, or the cached default model.
    pub fn model_path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(runtime::cache::default_model_path)
    }

    /// --q/--kv for every program (the fallback fills the one not given); `None` when neither
    /// is given: the tuned table decides.
    pub fn blocks(&self) -> Option<BlockSizes> {
        let f = kernelgen::tune::FALLBACK;
        (self.q_block.is_some() || self.kv_pages_block.is_some()).then(|| {
            BlockSizes::uniform(
                self.q_block.unwrap_or(f.q_block),
                self.kv_pages_block.unwrap_or(f.kv_pages_block),
            )
        })
    }
}

/// The PJRT plugin the engine runs on (`generate`, `bench decode`, `bench kernel`).
#[derive(Args, Debug)]
pub struct PluginArg {
    /// PJRT plugin [default: the cached lammps-jax-pjrt-cpu 0.11.2 CPU plugin, whose XLA updates the KV pool in place]
    #[arg(long, env = "PJRT_PLUGIN")]
    pub plugin: Option<PathBuf>,
}

impl PluginArg {
    /// --plugin (or $PJRT_PLUGIN), else the cached serving plugin.
    pub fn path(&self) -> PathBuf {
        self.plugin
            .clone()
            .unwrap_or_else(runtime::cache::serving_plugin_path)
    }
}

/// What `generate` and `serve` start serving with, refused when the model file is missing.
pub fn serve_options(
    served: &ServedArgs,
    plugin: &PluginArg,
    engine: &EngineArgs,
    cache: &ProgramCacheArg,
    prefix_caching: bool,
) -> anyhow::Result<kernelgen::serve::ServeOptions> {
    let opts = kernelgen::serve::ServeOptions {
        model: served.model_path(),
        kernel: served.kernel.clone(),
        blocks: served.blocks(),
        engine: engine.config(),
        kv_dtype: engine.kv_dtype,
        weights_dtype: engine.weights,
        plugin: plugin.path(),
        buckets: None,
        program_cache: cache.cache(),
        max_loaded_programs: cache.max_loaded(),
        prefix_caching,
        tp: engine.tp,
        attention: served.attention,
    };
    if !opts.model.exists() {
        anyhow::bail!(
            "model {} not found: run scripts/setup.sh --model, or pass --model",
            opts.model.display()
        );
    }
    Ok(opts)
}

/// Where compiled step programs are kept between runs.
#[derive(Args, Debug)]
pub struct ProgramCacheArg {
    /// Folder of compiled step programs: a later run with the same model, kernel, engine shape and plugin loads them instead of compiling (seconds saved per program); `off` compiles every run. Bounded to 1 GiB, least recently used first out [default: <cache>/executables]
    #[arg(long, value_name = "DIR|off")]
    pub program_cache: Option<PathBuf>,
    /// Step programs kept loaded at once (one per token bucket and decode batch met so far). XLA's CPU executable keeps ~70 MB resident per SmolLM2 step program (its optimized module and copies), so a server that met every bucket would hold them all; past this bound the least recently used is unloaded and loaded again from the program cache (~0.5 s) when a step needs it. 0: no bound
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PROGRAMS)]
    pub max_programs: usize,
}

/// `--max-programs`' default: a serving mix's working set (a decode batch size or two, a mixed
/// bucket or two) stays loaded; not every bucket it ever met.
pub const DEFAULT_MAX_PROGRAMS: usize = 6;

impl ProgramCacheArg {
    /// The cache this flag names: `None` for `off`.
    pub fn cache(&self) -> Option<runtime::cache::executables::ExecutableCache> {
        use runtime::cache::executables::ExecutableCache;
        match &self.program_cache {
            Some(dir) if dir.as_os_str() == "off" => None,
            Some(dir) => Some(ExecutableCache::at(dir)),
            None => Some(ExecutableCache::default_dir()),
        }
    }

    /// `--max-programs`, `None` for 0 (no bound).
    pub fn max_loaded(&self) -> Option<usize> {
        (self.max_programs > 0).then_some(self.max_programs)
    }
}

/// Engine shape flags: what `generate` serves with and what `emit-step` emits a program for.
#[derive(Args, Debug)]
pub struct EngineArgs {
    /// Sequences per step
    #[arg(long, default_value_t = 32, help_heading = "Engine")]
    pub max_seqs: usize,
    /// KV pages in each layer's pool
    #[arg(long, default_value_t = 1024, help_heading = "Engine")]
    pub max_pages: usize,
    #[arg(long, default_value_t = 16, help_heading = "Engine")]
    pub page_size: usize,
    /// Longest sequence (prompt + generation)
    #[arg(long, default_value_t = 2048, help_heading = "Engine")]
    pub max_seq_len: usize,
    /// Token budget of one step (prefill chunk size)
    #[arg(long, default_value_t = 256, help_heading = "Engine")]
    pub max_tokens_per_round: usize,
    /// KV pool dtype: f32 or bf16
    #[arg(long, default_value = "f32", value_parser = parse_dtype, help_heading = "Engine")]
    pub kv_dtype: Dtype,
    /// Weight matrices' dtype on the device: f32 (the default: the checkpoint's values as loaded) or bf16 (each value rounded to nearest even: half the bytes a decode step reads, and half the weights' memory). Norms stay f32; activations and accumulation stay f32 either way
    #[arg(long, default_value = "f32", value_parser = parse_dtype, help_heading = "Engine")]
    pub weights: Dtype,
    /// Tensor parallelism: one SPMD step program over this many devices (Megatron layout: each holds its share of the q heads, the KV heads they read, and of the MLP; the embedding, norms and LM head whole). On the CPU plugin, this many CPU devices are made. q heads and the intermediate size must divide by it, and KV heads divide by it or it by them (then each KV head is replicated)
    #[arg(long, default_value_t = 1, help_heading = "Engine")]
    pub tp: usize,
}

impl EngineArgs {
    /// The engine configuration these flags describe.
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            max_seqs: self.max_seqs,
            max_pages: self.max_pages,
            page_size: self.page_size,
            max_seq_len: self.max_seq_len,
            max_tokens_per_round: self.max_tokens_per_round,
        }
    }
}
