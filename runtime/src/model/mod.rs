//! Llama-family decoder models: configuration, weights (dequantized to f32 at load), tokenizer.
//!
//! Weights are loaded once, in the layout the step program reads them, whatever the source
//! file, so the step program, the dense reference decoder and every loader agree:
//! - every projection is `[out_features, in_features]` row-major (PyTorch's `nn.Linear` and
//!   GGUF's own order): output `o` is a dot product over the contiguous row `o`, which XLA CPU
//!   reads faster than `[in, out]` (`kernelgen bench decode`); nothing is transposed at load;
//! - projections that read the same input are stacked: `wqkv` holds the q, k and v rows, and
//!   `w_gate_up` the gate and up rows, so a step runs one matmul for each pair;
//! - Q and K rows use Hugging Face's head layout and rotate-half RoPE: GGUF files, whose
//!   converter permutes Q/K rows for llama.cpp's adjacent-pair RoPE, are un-permuted at load.
//!
//! Loaders: [`gguf`] (F32/F16/BF16, Q8_0/Q4_0/Q4_1 and the K-quants), [`safetensors`] (+
//! `config.json`, read by [`hf_config`]). Tokenizer: [`tokenizer`].

pub mod gguf;
pub mod hf_config;
pub mod safetensors;
pub mod tokenizer;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Tokens that end a chat turn, added to `eos_token_ids` when the vocabulary has them.
pub const END_OF_TURN_TOKENS: [&str; 2] = ["<|im_end|>", "<|eot_id|>"];

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
    /// Output features of the q projection: `num_q_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.num_q_heads * self.head_dim
    }

    /// Output features of the k (and v) projection: `num_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Rows of the stacked q, k, v projection.
    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
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

    pub fn zeros(rows: usize, cols: usize) -> Matrix {
        Matrix::new(rows, cols, vec![0.0; rows * cols])
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Rows `lo..hi`, contiguous.
    pub fn rows_range(&self, lo: usize, hi: usize) -> &[f32] {
        &self.data[lo * self.cols..hi * self.cols]
    }

    /// Rows `lo..hi`, contiguous and writable (loaders fill stacked projections part by part).
    pub fn rows_range_mut(&mut self, lo: usize, hi: usize) -> &mut [f32] {
        &mut self.data[lo * self.cols..hi * self.cols]
    }
}

/// One decoder layer, every projection `[out, in]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    /// `[q_dim + 2 kv_dim, hidden]`: the q rows, then k, then v.
    pub wqkv: Matrix,
    /// `[hidden, q_dim]`.
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    /// `[2 intermediate, hidden]`: the gate rows, then the up rows.
    pub w_gate_up: Matrix,
    /// `[hidden, intermediate]`.
    pub w_down: Matrix,
}

/// All weights, f32.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaWeights {
    /// `[vocab, hidden]`.
    pub embed: Matrix,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<Matrix>,
}

impl LlamaWeights {
    /// The LM head, `[vocab, hidden]`: `lm_head`, or `embed` when tied.
    pub fn head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Builds the weights of `c` tensor by tensor: `read(t, out)` writes tensor `t` (as the
    /// source file stores it, `[out, in]`) into `out`, exactly its rows of the model's (stacked)
    /// layout. Every loader goes through here, so the layout is decided in one place.
    pub fn assemble(c: &LlamaConfig, read: &mut ReadTensor) -> Result<LlamaWeights, ModelError> {
        let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let embed = Matrix::read(Tensor::Embed, v, h, read)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let mut wqkv = Matrix::zeros(c.qkv_dim(), h);
            read(Tensor::Q(i), wqkv.rows_range_mut(0, qd))?;
            read(Tensor::K(i), wqkv.rows_range_mut(qd, qd + kvd))?;
            read(Tensor::V(i), wqkv.rows_range_mut(qd + kvd, qd + 2 * kvd))?;
            let mut w_gate_up = Matrix::zeros(2 * f, h);
            read(Tensor::Gate(i), w_gate_up.rows_range_mut(0, f))?;
            read(Tensor::Up(i), w_gate_up.rows_range_mut(f, 2 * f))?;
            layers.push(LayerWeights {
                attn_norm: Matrix::read(Tensor::AttnNorm(i), 1, h, read)?.data,
                wqkv,
                wo: Matrix::read(Tensor::O(i), h, qd, read)?,
                ffn_norm: Matrix::read(Tensor::FfnNorm(i), 1, h, read)?.data,
                w_gate_up,
                w_down: Matrix::read(Tensor::Down(i), h, f, read)?,
            });
        }
        let final_norm = Matrix::read(Tensor::FinalNorm, 1, h, read)?.data;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(Matrix::read(Tensor::LmHead, v, h, read)?)
        };
        Ok(LlamaWeights {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }
}

impl Matrix {
    /// A `[rows, cols]` matrix filled by `read`.
    fn read(
        t: Tensor,
        rows: usize,
        cols: usize,
        read: &mut ReadTensor,
    ) -> Result<Matrix, ModelError> {
        let mut m = Matrix::zeros(rows, cols);
        read(t, &mut m.data)?;
        Ok(m)
    }
}

/// How a loader writes one tensor into its rows of the model's layout (see
/// [`LlamaWeights::assemble`]).
pub type ReadTensor<'a> = dyn FnMut(Tensor, &mut [f32]) -> Result<(), ModelError> + 'a;

/// One tensor of a llama model, as its files name them apart (layer index inside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tensor {
    Embed,
    FinalNorm,
    LmHead,
    AttnNorm(usize),
    /// The q projection: the first rows of `wqkv`, then `K` and `V`.
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
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

impl ModelError {
    /// An I/O failure on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A malformed file, with what is wrong in it.
    pub fn format(path: &Path, reason: impl Into<String>) -> ModelError {
        ModelError::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// A well-formed file this loader does not support, with what it does not support.
    pub fn unsupported(path: &Path, reason: impl Into<String>) -> ModelError {
        ModelError::Unsupported {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
