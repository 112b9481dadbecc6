//! The model's step program: one StableHLO module per token-count bucket, from
//! `templates/step.stablehlo.mlir.tera`, with the ragged paged attention kernel linked in, and
//! the device executor that runs it. Everything about it lives here:
//!
//! - [`StepShapes`] (this file): a bucket's shapes, and the program's interface below;
//! - [`weights`]: the weight parameters, in order, borrowed from the loaded model (which holds
//!   them in the step's layout: nothing is copied or transposed);
//! - [`program`]: the template's dims, the kernel for a bucket, rendering and linking;
//! - [`executor`]: [`DeviceExecutor`], the engine's `StepExecutor` on a PJRT device;
//! - [`profile`]: the step's matmuls alone, for `kernelgen bench decode`'s breakdown.
//!
//! Parameters, in order:
//! 1. per-step inputs: `token_ids i32[T]`, `positions i32[T]`, `slot_mapping i32[T]`,
//!    `kv_lens i32[S]`, `page_indices i32[S, PPS]`, `cu_q_lens i32[S+1]`, `num_seqs i32[1]`,
//!    `logits_rows i32[R]`, `argmax_only i32[1]` (non-zero: every row only needs its argmax,
//!    which a split LM head finds from a quarter of its bytes, [`StepShapes::split_head`]);
//! 2. the KV pool of each layer, `[NP, page_size, 2*kv_heads, head_dim]` (K even, V odd heads),
//!    donated and aliased to output `1 + layer`: updated in place, never copied;
//! 3. weights, uploaded once and borrowed, every projection laid out `[out, in]`, matrices in
//!    [`StepShapes::weights_dtype`] (f32 or bf16), norms and RoPE frequencies f32:
//!    `rope_inv_freq f32[D/2]`, `embed [V, H]`, per layer `attn_norm [H]`,
//!    `wqkv [(Hq + 2 Hkv) D, H]` (q, k, v rows stacked), `wo [H, Hq D]`, `ffn_norm [H]`,
//!    `w_gate_up [2F, H]` (gate, up stacked), `w_down [H, F]`; then `final_norm [H]`, and
//!    `lm_head [V, H]` unless tied (then logits read `embed`). With
//!    [`StepShapes::split_head`] the LM head's matrix (`embed` when tied) is instead
//!    `u16[2, V, H]`, the f32 values' top halves then their bottom halves
//!    ([`runtime::kernels::lm_head`]), and its tables come last: `head_rows f32[2, V]` and
//!    `head_screen i8[V, H]` ([`runtime::kernels::lm_head::tables`]).
//!
//! Outputs: `logits f32[R, V]` (row i = token row `logits_rows[i]`), then the KV pools.

pub mod executor;
pub mod profile;
pub mod program;
pub mod tp;
pub mod weights;

pub use executor::{DeviceExecutor, MemoryReport};
pub use program::{KernelSource, StepSource};

use runtime::dtype::Dtype;
use runtime::engine::EngineConfig;
use runtime::model::LlamaConfig;
use serde::Serialize;

/// Shapes of one step program.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepShapes {
    /// Token rows (the bucket).
    pub tokens: usize,
    /// Sequences (rows of the page table).
    pub seqs: usize,
    /// Logits rows: min(tokens, seqs).
    pub logits_rows: usize,
    pub pages_per_seq: usize,
    /// Pages in each layer's pool, including the scratch page padding tokens write to.
    pub pool_pages: usize,
    pub page_size: usize,
    pub kv_dtype: Dtype,
    /// The weight matrices' dtype ([`weights::weight_params`]); f32 unless `--weights bf16`.
    pub weights_dtype: Dtype,
    /// A decode-only program: every sequence has one new token, so `seqs == tokens`.
    pub decode: bool,
    /// The LM head's f32 matrix is held as two 16-bit planes and read by the host LM head
    /// ([`StepSource::split_head`]).
    pub split_head: bool,
}

impl StepShapes {
    /// A general step (prefill chunks and decode rows) of `tokens` rows.
    pub fn new(engine: &EngineConfig, tokens: usize, kv_dtype: Dtype) -> StepShapes {
        StepShapes {
            tokens,
            seqs: engine.max_seqs,
            logits_rows: tokens.min(engine.max_seqs),
            pages_per_seq: engine.pages_per_seq(),
            pool_pages: engine.max_pages + 1,
            page_size: engine.page_size,
            kv_dtype,
            weights_dtype: Dtype::F32,
            decode: false,
            split_head: false,
        }
    }

    /// A decode-only step of `tokens` sequences, one new token each.
    pub fn decode(engine: &EngineConfig, tokens: usize, kv_dtype: Dtype) -> StepShapes {
        StepShapes {
            seqs: tokens,
            logits_rows: tokens,
            decode: true,
            ..StepShapes::new(engine, tokens, kv_dtype)
        }
    }

    /// The scratch page: padding tokens write their K/V here.
    pub fn scratch_page(&self) -> usize {
        self.pool_pages - 1
    }

    pub fn pool_dims(&self, m: &LlamaConfig) -> [i64; 4] {
        [
            self.pool_pages as i64,
            self.page_size as i64,
            2 * m.num_kv_heads as i64,
            m.head_dim as i64,
        ]
    }
}

/// Number of per-step inputs before the KV pools.
pub const NUM_STEP_INPUTS: usize = 9;

/// Powers of two up to `max_tokens` (and `max_tokens` itself).
pub fn default_buckets(max_tokens: usize) -> Vec<usize> {
    let mut b: Vec<usize> = (0..)
        .map(|i| 1usize << i)
        .take_while(|&n| n < max_tokens)
        .collect();
    b.push(max_tokens);
    b
}
