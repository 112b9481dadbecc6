//! Paged-KV serving engine: page pool, page tables, continuous batching, sampling, metrics.
//!
//! The engine is device-agnostic. Each [`Engine::step`] schedules a batch of tokens (decode
//! tokens of running sequences plus chunks of waiting prompts, under `max_tokens_per_round` and
//! `max_seqs`), allocates KV pages for them, and hands a [`StepBatch`] to a [`StepExecutor`]
//! (the PJRT step program, or a host reference in tests), which writes the new tokens' K/V into
//! their slots, runs the model and returns logits for the rows that sample.
//!
//! Invariants (checked by the proptests): pages in use + free = max_pages; each page's refcount
//! equals the number of page-table entries naming it; a page is in two page tables only when
//! shared by refcount (n > 1 samples of one prompt); a finished sequence holds no pages.

pub mod driver;
pub mod metrics;
pub mod page_allocator;
pub mod sampler;
pub mod scheduler;

pub use driver::{
    engine_plan, validate_config, DecodeStats, Detokenizer, Engine, FinishedRequest, SampleOutput,
};
pub use metrics::{Metrics, MetricsReport};
pub use page_allocator::{PageAllocator, PageError};
pub use scheduler::{PageTable, SeqView};

use serde::{Deserialize, Serialize};

/// Engine knobs (validated at startup with `runtime::plan` rules).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Sequences in one step (decode rows + prefill chunks).
    pub max_seqs: usize,
    /// KV pages sequences can use (the executor may keep one more as a scratch page).
    pub max_pages: usize,
    pub page_size: usize,
    /// Longest sequence, prompt plus generation.
    pub max_seq_len: usize,
    /// Token budget of one step.
    pub max_tokens_per_round: usize,
}

impl EngineConfig {
    /// Columns of the page table: pages one sequence of `max_seq_len` tokens needs.
    pub fn pages_per_seq(&self) -> usize {
        self.max_seq_len.div_ceil(self.page_size)
    }
}

/// How to pick tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// Same seed, same output. `None`: derived from the request id.
    pub seed: Option<u64>,
    pub max_new_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    /// Samples per prompt; they share the prompt's full KV pages by refcount.
    pub n: usize,
    /// Generate past the engine-wide stop tokens (EOS): only this request's own
    /// `stop_token_ids`, stop strings and lengths end it (benchmarks, load tests).
    #[serde(default)]
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: None,
            max_new_tokens: 64,
            stop_token_ids: vec![],
            stop_strings: vec![],
            n: 1,
            ignore_eos: false,
        }
    }
}

pub type RequestId = u64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token id (EOS included) was sampled.
    StopToken,
    /// A stop string appeared in the decoded text (the text is cut before it).
    StopString,
    /// max_new_tokens reached.
    Length,
    /// The sequence reached max_seq_len.
    MaxSeqLen,
    /// The model produced a NaN or infinite logit for this sample: its state is broken (an
    /// overflow, or NaN in its own K/V), so it stops with what it had instead of sampling
    /// garbage. Its pages are released; no other sequence is affected.
    NonFiniteLogits,
}

impl FinishReason {
    /// Whether the sample ended in an error rather than a stop condition.
    pub fn is_error(&self) -> bool {
        matches!(self, FinishReason::NonFiniteLogits)
    }
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    pub request: RequestId,
    /// Which of the request's n samples.
    pub sample: usize,
    /// `None` when the sample failed this step instead of sampling (see `finished`).
    pub token: Option<u32>,
    pub finished: Option<FinishReason>,
}

/// One sequence's slice of a step.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqInBatch {
    /// First row of this sequence in the batch's token axis.
    pub q_start: usize,
    /// Rows (new tokens) this step.
    pub q_len: usize,
    /// Tokens in the cache after this step (prefix + new).
    pub kv_len: usize,
    /// Page table row: the sequence's pages in order (at least ceil(kv_len / page_size)).
    pub pages: Vec<u32>,
}

/// What the executor runs in one step. Rows are sequences' new tokens, concatenated.
#[derive(Clone, Debug, PartialEq)]
pub struct StepBatch {
    pub token_ids: Vec<u32>,
    /// Absolute position of each token (RoPE).
    pub positions: Vec<u32>,
    /// KV slot of each token: `page * page_size + offset`.
    pub slot_mapping: Vec<u32>,
    pub seqs: Vec<SeqInBatch>,
    /// Token rows whose logits are needed (each sampling sequence's last row), in order.
    pub logits_rows: Vec<usize>,
    /// Every row samples greedily, so only each row's argmax must be exact: the executor may
    /// return, for tokens that cannot be the argmax, logits below the row's maximum instead of
    /// their exact values (`runtime::kernels::lm_head` reads half the LM head then).
    pub argmax_only: bool,
}

/// Runs the model for one step.
pub trait StepExecutor {
    /// Writes the batch's K/V into their slots, runs the model, and returns logits for
    /// `batch.logits_rows`: `[logits_rows.len(), vocab_size]` row-major.
    fn step(&mut self, batch: &StepBatch) -> Result<Vec<f32>, EngineError>;
    fn vocab_size(&self) -> usize;
    /// One-time setup (e.g. compiling a program on first use) inside the steps since the last
    /// call: serving metrics leave it out of step times (wall-clock latencies keep it).
    fn take_setup_time(&mut self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Engine failures. Capacity problems never surface here: they preempt or queue instead.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid engine config: {0}")]
    Config(String),
    #[error("request rejected: {0}")]
    Request(String),
    #[error("executor: {0}")]
    Executor(String),
    /// An engine invariant broke (a bug): reported instead of panicking.
    #[error("engine bug: {0}")]
    Internal(String),
}
