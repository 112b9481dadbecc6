//! Llama-family decoder models: configuration, weights (dequantized to f32 at load), tokenizer.
//!
//! Weights are stored in one canonical layout whatever the source file, so the step program, the
//! dense reference decoder and every loader agree:
//! - every projection is `[in_features, out_features]` row-major (x @ W), i.e. transposed from
//!   PyTorch's `[out, in]`;
//! - Q and K projections use Hugging Face's head layout and rotate-half RoPE: GGUF files, whose
//!   converter permutes Q/K rows for llama.cpp's adjacent-pair RoPE, are un-permuted at load.
//!
//! Loaders: [`gguf`] (F32/F16/BF16/Q8_0/Q4_0/Q4_1), [`safetensors`] (+ config.json), [`tiny`]
//! (a deterministic random model for tests). Tokenizer: [`tokenizer`].

pub mod gguf;
pub mod safetensors;
pub mod tiny;
pub mod tokenizer;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Architecture hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_q_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
    /// The LM head is the embedding matrix (no separate `lm_head`).
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation (EOS and, for chat models, end-of-turn).
    pub eos_token_ids: Vec<u32>,
    /// Jinja chat template from the model file, if any.
    pub chat_template: Option<String>,
}

impl LlamaConfig {
    /// Whether the LM head is the embedding matrix.
    pub fn lm_head_tied(&self) -> bool {
        self.tie_word_embeddings
    }
}

/// A dense f32 matrix, row-major `[rows, cols]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Matrix {
        assert_eq!(
            rows * cols,
            data.len(),
            "matrix {rows}x{cols} with {} values",
            data.len()
        );
        Matrix { rows, cols, data }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// The transpose, `[cols, rows]`, row-major.
    pub fn transposed(&self) -> Matrix {
        let mut data = vec![0.0; self.data.len()];
        for (r, row) in self.data.chunks_exact(self.cols.max(1)).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                data[c * self.rows + r] = x;
            }
        }
        Matrix::new(self.cols, self.rows, data)
    }
}

/// One decoder layer. Projections are `[in, out]`: `wq` is `[hidden, num_q_heads * head_dim]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
}

/// All weights, f32.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaWeights {
    /// `[vocab, hidden]`.
    pub embed: Matrix,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `[hidden, vocab]`; `None` when tied to `embed`.
    pub lm_head: Option<Matrix>,
}

/// A loaded model: configuration, weights and where they came from.
#[derive(Clone, Debug)]
pub struct Model {
    pub config: LlamaConfig,
    pub weights: LlamaWeights,
    pub source: PathBuf,
}

/// Why a model or tokenizer could not be loaded. Each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid model file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: tensor '{tensor}': {reason}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{path}: unsupported: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
