//! The step program's interface: shapes, parameter order and weight packing, in one place so
//! the emitter (kernelgen `emit::step`) and the executor ([`super::DeviceExecutor`]) agree.
//!
//! Parameters, in order:
//! 1. per-step inputs: `token_ids i32[T]`, `positions i32[T]`, `slot_mapping i32[T]`,
//!    `kv_lens i32[S]`, `page_indices i32[S, PPS]`, `cu_q_lens i32[S+1]`, `num_seqs i32[1]`,
//!    `logits_rows i32[R]`;
//! 2. the KV pool of each layer, `[NP, page_size, 2*kv_heads, head_dim]` (K even, V odd heads),
//!    donated and aliased to output `1 + layer`: updated in place, never copied;
//! 3. weights, uploaded once and borrowed, every projection laid out `[out, in]` (see
//!    `out_major`): `rope_inv_freq f32[D/2]`, `embed [V, H]`, per layer `attn_norm [H]`,
//!    `wqkv [(Hq + 2 Hkv) D, H]` (q, k, v rows stacked), `wo [H, Hq D]`, `ffn_norm [H]`,
//!    `w_gate_up [2F, H]` (gate, up stacked), `w_down [H, F]`; then `final_norm [H]`, and
//!    `lm_head [V, H]` unless tied (then logits read `embed`, already `[V, H]`).
//!
//! Outputs: `logits f32[R, V]` (row i = token row `logits_rows[i]`), then the KV pools.

use crate::engine::EngineConfig;
use crate::model::{LlamaConfig, LlamaWeights, Matrix};
use serde::Serialize;

/// Element type of the KV pool and the attention kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum KvDtype {
    F32,
    Bf16,
}

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
    pub kv_dtype: KvDtype,
    /// A decode-only program: every sequence has one new token, so `seqs == tokens`.
    pub decode: bool,
}

impl StepShapes {
    /// A general step (prefill chunks and decode rows) of `tokens` rows.
    pub fn new(engine: &EngineConfig, tokens: usize, kv_dtype: KvDtype) -> StepShapes {
        StepShapes {
            tokens,
            seqs: engine.max_seqs,
            logits_rows: tokens.min(engine.max_seqs),
            pages_per_seq: engine.pages_per_seq(),
            pool_pages: engine.max_pages + 1,
            page_size: engine.page_size,
            kv_dtype,
            decode: false,
        }
    }

    /// A decode-only step of `tokens` sequences, one new token each.
    pub fn decode(engine: &EngineConfig, tokens: usize, kv_dtype: KvDtype) -> StepShapes {
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
pub const NUM_STEP_INPUTS: usize = 8;

/// One weight parameter: name (for the program's argument list) and row-major data.
pub struct WeightParam {
    pub name: String,
    pub dims: Vec<i64>,
    pub data: Vec<f32>,
}

/// The step program's layout of `x @ W` for an `[in, out]` projection `W`: `W` transposed to
/// `[out, in]`, so each output is a dot product over one contiguous row. XLA CPU reads this layout
/// faster than `[in, out]` (batch 1 and 32 chains of the model's matmuls: `kernelgen bench
/// decode`, README). Fused projections stack their rows: `[a, H] ++ [b, H] -> [a + b, H]`.
fn out_major(parts: &[&Matrix]) -> Matrix {
    let rows: usize = parts.iter().map(|m| m.cols).sum();
    let mut data = Vec::with_capacity(rows * parts[0].rows);
    for m in parts {
        data.append(&mut m.transposed().data);
    }
    Matrix::new(rows, parts[0].rows, data)
}

/// RoPE inverse frequencies `theta^(-2i/d)`, i < d/2 (Hugging Face rotate-half convention).
pub fn rope_inv_freq(m: &LlamaConfig) -> Vec<f32> {
    let d = m.head_dim;
    (0..d / 2)
        .map(|i| (m.rope_theta as f64).powf(-((2 * i) as f64) / d as f64) as f32)
        .collect()
}

/// Names and dims of [`pack_weights`]' parameters, in order, from the config alone.
pub fn pack_weights_dims(m: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, f, v) = (m.hidden_size, m.intermediate_size, m.vocab_size);
    let qd = m.num_q_heads * m.head_dim;
    let qkv = qd + 2 * m.num_kv_heads * m.head_dim;
    let mut out = vec![
        ("rope_inv_freq".to_string(), vec![m.head_dim / 2]),
        ("embed".to_string(), vec![v, h]),
    ];
    for i in 0..m.num_layers {
        out.push((format!("l{i}_attn_norm"), vec![h]));
        out.push((format!("l{i}_wqkv"), vec![qkv, h]));
        out.push((format!("l{i}_wo"), vec![h, qd]));
        out.push((format!("l{i}_ffn_norm"), vec![h]));
        out.push((format!("l{i}_w_gate_up"), vec![2 * f, h]));
        out.push((format!("l{i}_w_down"), vec![h, f]));
    }
    out.push(("final_norm".to_string(), vec![h]));
    if !m.tie_word_embeddings {
        out.push(("lm_head".to_string(), vec![v, h]));
    }
    out
}

/// The weights in parameter order, fused and laid out as the step program reads them; names
/// and dims are [`pack_weights_dims`]'.
pub fn pack_weights(m: &LlamaConfig, w: &LlamaWeights) -> Vec<WeightParam> {
    let mut data = vec![rope_inv_freq(m), w.embed.data.clone()];
    for l in &w.layers {
        data.push(l.attn_norm.clone());
        data.push(out_major(&[&l.wq, &l.wk, &l.wv]).data);
        data.push(out_major(&[&l.wo]).data);
        data.push(l.ffn_norm.clone());
        data.push(out_major(&[&l.w_gate, &l.w_up]).data);
        data.push(out_major(&[&l.w_down]).data);
    }
    data.push(w.final_norm.clone());
    if let Some(head) = &w.lm_head {
        data.push(out_major(&[head]).data);
    }
    let dims = pack_weights_dims(m);
    debug_assert_eq!(dims.len(), data.len(), "weights vs config (tied LM head?)");
    dims.into_iter()
        .zip(data)
        .map(|((name, dims), data)| WeightParam {
            name,
            dims: dims.iter().map(|&d| d as i64).collect(),
            data,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_weights_dims_lists_what_pack_weights_packs() {
        for tied in [false, true] {
            let cfg = crate::model::tiny::TinyConfig {
                tie_word_embeddings: tied,
                ..Default::default()
            };
            let config = cfg.llama_config();
            let weights = crate::model::tiny::tiny_weights(3, &cfg);
            let packed = pack_weights(&config, &weights);
            let names: Vec<(String, Vec<usize>)> = packed
                .iter()
                .map(|w| (w.name.clone(), w.dims.iter().map(|&d| d as usize).collect()))
                .collect();
            assert_eq!(names, pack_weights_dims(&config), "tied: {tied}");
            for w in &packed {
                let n: i64 = w.dims.iter().product();
                assert_eq!(w.data.len() as i64, n, "{} holds what its dims say", w.name);
            }
        }
    }

    #[test]
    fn out_major_stacks_transposed_projections() {
        // [in=2, out=2] and [in=2, out=1]: outputs become rows, the first projection's first
        let a = Matrix::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]);
        let b = Matrix::new(2, 1, vec![5.0, 6.0]);
        let c = out_major(&[&a, &b]);
        assert_eq!((c.rows, c.cols), (3, 2));
        assert_eq!(c.data, vec![1.0, 3.0, 2.0, 4.0, 5.0, 6.0]);
    }
}
