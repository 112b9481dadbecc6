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

    /// Builds the weights of `c` part by part ([`Part::read`]), as every loader does, so the
    /// layout is decided in one place.
    pub fn assemble(c: &LlamaConfig, read: &mut ReadTensor) -> Result<LlamaWeights, ModelError> {
        let mut part = |p: Part| p.read(c, read);
        let embed = part(Part::Embed)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            layers.push(LayerWeights {
                attn_norm: part(Part::AttnNorm(i))?.data,
                wqkv: part(Part::Wqkv(i))?,
                wo: part(Part::Wo(i))?,
                ffn_norm: part(Part::FfnNorm(i))?.data,
                w_gate_up: part(Part::WGateUp(i))?,
                w_down: part(Part::WDown(i))?,
            });
        }
        let final_norm = part(Part::FinalNorm)?.data;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(part(Part::LmHead)?)
        };
        Ok(LlamaWeights {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    /// The values of `p`, row-major in its [`Part::dims`].
    pub fn part(&self, p: Part) -> &[f32] {
        match p {
            Part::Embed => &self.embed.data,
            Part::AttnNorm(i) => &self.layers[i].attn_norm,
            Part::Wqkv(i) => &self.layers[i].wqkv.data,
            Part::Wo(i) => &self.layers[i].wo.data,
            Part::FfnNorm(i) => &self.layers[i].ffn_norm,
            Part::WGateUp(i) => &self.layers[i].w_gate_up.data,
            Part::WDown(i) => &self.layers[i].w_down.data,
            Part::FinalNorm => &self.final_norm,
            Part::LmHead => &self.head().data,
        }
    }
}

/// One weight as the step program takes it: a (stacked) projection `[out, in]` or a norm
/// vector. [`Part::all`] lists them in the program's parameter order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `[vocab, hidden]`.
    Embed,
    AttnNorm(usize),
    /// `[q_dim + 2 kv_dim, hidden]`: the q rows, then k, then v.
    Wqkv(usize),
    /// `[hidden, q_dim]`.
    Wo(usize),
    FfnNorm(usize),
    /// `[2 intermediate, hidden]`: the gate rows, then the up rows.
    WGateUp(usize),
    /// `[hidden, intermediate]`.
    WDown(usize),
    FinalNorm,
    /// `[vocab, hidden]`: a part of its own only when the model does not tie it to `Embed`.
    LmHead,
}

impl Part {
    /// Every part of `c`'s weights, in the step program's parameter order.
    pub fn all(c: &LlamaConfig) -> Vec<Part> {
        let mut parts = vec![Part::Embed];
        for i in 0..c.num_layers {
            parts.extend([
                Part::AttnNorm(i),
                Part::Wqkv(i),
                Part::Wo(i),
                Part::FfnNorm(i),
                Part::WGateUp(i),
                Part::WDown(i),
            ]);
        }
        parts.push(Part::FinalNorm);
        if !c.tie_word_embeddings {
            parts.push(Part::LmHead);
        }
        parts
    }

    /// The step program's name for the parameter (`l3_wqkv`).
    pub fn name(self) -> String {
        match self {
            Part::Embed => "embed".into(),
            Part::AttnNorm(i) => format!("l{i}_attn_norm"),
            Part::Wqkv(i) => format!("l{i}_wqkv"),
            Part::Wo(i) => format!("l{i}_wo"),
            Part::FfnNorm(i) => format!("l{i}_ffn_norm"),
            Part::WGateUp(i) => format!("l{i}_w_gate_up"),
            Part::WDown(i) => format!("l{i}_w_down"),
            Part::FinalNorm => "final_norm".into(),
            Part::LmHead => "lm_head".into(),
        }
    }

    /// The source tensors stacked in this part, top to bottom, with their rows; and the
    /// part's columns.
    fn layout(self, c: &LlamaConfig) -> (Vec<(Tensor, usize)>, usize) {
        let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        match self {
            Part::Embed => (vec![(Tensor::Embed, v)], h),
            Part::AttnNorm(i) => (vec![(Tensor::AttnNorm(i), 1)], h),
            Part::Wqkv(i) => (
                vec![
                    (Tensor::Q(i), c.q_dim()),
                    (Tensor::K(i), c.kv_dim()),
                    (Tensor::V(i), c.kv_dim()),
                ],
                h,
            ),
            Part::Wo(i) => (vec![(Tensor::O(i), h)], c.q_dim()),
            Part::FfnNorm(i) => (vec![(Tensor::FfnNorm(i), 1)], h),
            Part::WGateUp(i) => (vec![(Tensor::Gate(i), f), (Tensor::Up(i), f)], h),
            Part::WDown(i) => (vec![(Tensor::Down(i), h)], f),
            Part::FinalNorm => (vec![(Tensor::FinalNorm, 1)], h),
            Part::LmHead => (vec![(Tensor::LmHead, v)], h),
        }
    }

    /// Dims as the step program declares them: `[rows, cols]`, or `[len]` for a norm.
    pub fn dims(self, c: &LlamaConfig) -> Vec<usize> {
        let (tensors, cols) = self.layout(c);
        match self {
            Part::AttnNorm(_) | Part::FfnNorm(_) | Part::FinalNorm => vec![cols],
            _ => vec![tensors.iter().map(|&(_, n)| n).sum(), cols],
        }
    }

    /// A fresh matrix holding this part: `read(t, out)` writes tensor `t` (as the source file
    /// stores it, `[out, in]`) into exactly its rows.
    pub fn read(self, c: &LlamaConfig, read: &mut ReadTensor) -> Result<Matrix, ModelError> {
        let mut data = Vec::new();
        let (rows, cols) = self.read_into(c, read, &mut data)?;
        Ok(Matrix::new(rows, cols, data))
    }

    /// [`Part::read`] into `buf` (resized to the part, its allocation reused); returns the
    /// part's rows and columns.
    pub fn read_into(
        self,
        c: &LlamaConfig,
        read: &mut ReadTensor,
        buf: &mut Vec<f32>,
    ) -> Result<(usize, usize), ModelError> {
        let (tensors, cols) = self.layout(c);
        let rows = tensors.iter().map(|&(_, n)| n).sum();
        buf.clear();
        buf.resize(rows * cols, 0.0);
        let mut lo = 0;
        for (t, n) in tensors {
            read(t, &mut buf[lo * cols..(lo + n) * cols])?;
            lo += n;
        }
        Ok((rows, cols))
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

/// Reads one tensor of an opened model file into exactly its rows of the model's layout.
pub trait TensorFile: Send {
    fn read(&self, t: Tensor, out: &mut [f32]) -> Result<(), ModelError>;
    /// Whether `t` is there, `len` values long, of a type [`TensorFile::read`] converts, and
    /// within the file, without reading its values.
    fn check(&self, t: Tensor, len: usize) -> Result<(), ModelError>;
}

/// A model file opened but not loaded: its config now, its weights part by part on demand
/// ([`ModelFile::read_part`]), so a caller that uploads each part and drops it holds at most
/// one part of the weights in host memory ([`ModelFile::load`] keeps them all).
pub struct ModelFile {
    pub config: LlamaConfig,
    pub source: PathBuf,
    tensors: Box<dyn TensorFile>,
}

impl std::fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFile")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ModelFile {
    /// The opened file, every tensor checked ([`TensorFile::check`]).
    pub fn new(
        config: LlamaConfig,
        source: &Path,
        tensors: Box<dyn TensorFile>,
    ) -> Result<ModelFile, ModelError> {
        let file = ModelFile {
            config,
            source: source.to_path_buf(),
            tensors,
        };
        file.check()?;
        Ok(file)
    }

    /// A `.gguf` file, or a Hugging Face directory (config.json + safetensors).
    pub fn open(path: &Path) -> Result<ModelFile, ModelError> {
        if path.is_dir() {
            safetensors::open_hf_dir(path)
        } else {
            gguf::open_gguf(path)
        }
    }

    /// Refuses a file any of whose tensors is missing, misshapen, of an unsupported type or
    /// cut short, before anything is read or uploaded ([`TensorFile::check`]).
    fn check(&self) -> Result<(), ModelError> {
        for p in Part::all(&self.config) {
            let (tensors, cols) = p.layout(&self.config);
            for (t, rows) in tensors {
                self.tensors.check(t, rows * cols)?;
            }
        }
        Ok(())
    }

    /// Part `p`, read (and dequantized) now into `buf` (see [`Part::read_into`]).
    pub fn read_part_into(&self, p: Part, buf: &mut Vec<f32>) -> Result<(), ModelError> {
        p.read_into(&self.config, &mut |t, out| self.tensors.read(t, out), buf)
            .map(|_| ())
    }

    /// Every weight, in host memory.
    pub fn load(self) -> Result<Model, ModelError> {
        let weights =
            LlamaWeights::assemble(&self.config, &mut |t, out| self.tensors.read(t, out))?;
        Ok(Model {
            config: self.config,
            weights,
            source: self.source,
        })
    }
}

/// Where a consumer of the step's weights (an uploader) takes them from, part by part: a
/// loaded [`Model`] lends its own, a [`ModelFile`] reads each into `scratch` when asked (one
/// buffer for every part: the uploader holds one part's worth of host memory, allocated once).
pub trait WeightSource {
    fn config(&self) -> &LlamaConfig;
    fn part<'a>(&'a self, p: Part, scratch: &'a mut Vec<f32>) -> Result<&'a [f32], ModelError>;
}

impl WeightSource for Model {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn part<'a>(&'a self, p: Part, _: &'a mut Vec<f32>) -> Result<&'a [f32], ModelError> {
        Ok(self.weights.part(p))
    }
}

impl WeightSource for ModelFile {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn part<'a>(&'a self, p: Part, scratch: &'a mut Vec<f32>) -> Result<&'a [f32], ModelError> {
        self.read_part_into(p, scratch)?;
        Ok(scratch)
    }
}

/// Drops the resident pages of a read-only file map: a model part read once would otherwise
/// count in the process's resident memory until the map is dropped. A later read faults the
/// pages back in from the page cache. Only memory accounting changes, so a failure is ignored.
pub(crate) fn release_pages(map: &memmap2::Mmap) {
    // SAFETY: the map is shared and read-only, so MADV_DONTNEED discards nothing: the pages
    // are re-read from the file on the next access, with the same contents.
    let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
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
