//! GGUF llama models: the container ([`container`]), the tensor types and their dequantization
//! ([`dequant`]), and the mapping of llama.cpp's tensor names and metadata onto [`Model`].
//!
//! The container and dequantizers are written here rather than taken from a crates.io crate:
//! the format is small (header, typed key/values, tensor infos, aligned data), the one crate
//! that covers the K-quants (candle-core) brings a whole tensor framework with it, and a local
//! parser lets every error name the file and the offending key or tensor.
//!
//! Layout conventions (ggml): a tensor's dims are listed fastest-first, so a llama projection
//! stored with dims `[in, out]` holds `out` rows of `in` values: the `[out, in]` layout the
//! model keeps. Each tensor is dequantized straight into its rows of the model's stacked
//! projections; Q/K rows are un-permuted in place (llama.cpp's converter interleaves the two
//! halves of each head for its adjacent-pair RoPE; the model rotates halves), see
//! [`unpermute_rows`].

pub mod container;
pub mod dequant;

pub use container::{parse_header, read_metadata, GgufMetadata, MetaValue, TensorInfo};
pub use dequant::{dequantize, dequantize_into, type_name, GgmlType, QK, QK_K};

use super::{LlamaConfig, Model, ModelError, ModelFile, Tensor, TensorFile, END_OF_TURN_TOKENS};
use container::map_file;
use std::path::Path;

/// Undoes llama.cpp's converter permutation of Q/K projection rows, in place.
///
/// `data` is `[rows, cols]` row-major with `rows = n_head * head_dim` output features. The
/// converter maps Hugging Face row `h*hd + p*hd/2 + i` (half `p` of head `h`) to GGUF row
/// `h*hd + 2*i + p`, so that llama.cpp's adjacent-pair RoPE sees pairs `(i, i + hd/2)`.
pub fn unpermute_rows(data: &mut [f32], cols: usize, n_head: usize) {
    let head_len = data.len() / n_head;
    let hd = head_len / cols;
    let mut gguf = vec![0f32; head_len];
    for head in data.chunks_exact_mut(head_len) {
        gguf.copy_from_slice(head);
        for (row, src) in gguf.chunks_exact(cols).enumerate() {
            let (i, p) = (row / 2, row % 2);
            let dst = p * hd / 2 + i;
            head[dst * cols..(dst + 1) * cols].copy_from_slice(src);
        }
    }
}

/// The tensor bytes of an opened file, with the header.
struct TensorSource<'a> {
    meta: &'a GgufMetadata,
    bytes: &'a [u8],
}

impl TensorSource<'_> {
    fn tensor_err(&self, name: &str, reason: impl Into<String>) -> ModelError {
        ModelError::Tensor {
            path: self.meta.path.clone(),
            tensor: name.to_string(),
            reason: reason.into(),
        }
    }

    /// The type and bytes of `name`, whose ggml dims must be `dims`.
    fn raw(&self, name: &str, dims: &[usize]) -> Result<(GgmlType, &[u8]), ModelError> {
        let info = self
            .meta
            .tensor(name)
            .ok_or_else(|| self.tensor_err(name, "missing"))?;
        let actual: Vec<u64> = info.dims.clone();
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        // Trailing 1-dims are equivalent (some writers keep them).
        let trim = |v: &[u64]| {
            let mut v = v.to_vec();
            while v.len() > 1 && v.last() == Some(&1) {
                v.pop();
            }
            v
        };
        if trim(&actual) != trim(&want) {
            return Err(self.tensor_err(
                name,
                format!("dims {actual:?}, expected {want:?} (ggml order)"),
            ));
        }
        let ty = GgmlType::from_id(info.type_id).ok_or_else(|| {
            ModelError::unsupported(
                &self.meta.path,
                format!(
                    "tensor '{name}' has type {} (supported: {})",
                    type_name(info.type_id),
                    dequant::supported_names()
                ),
            )
        })?;
        let n: usize = dims.iter().product();
        let nbytes = ty.bytes_for(n).ok_or_else(|| {
            self.tensor_err(
                name,
                format!("{n} elements are not a whole number of {ty:?} blocks"),
            )
        })?;
        let start = self
            .meta
            .data_offset
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok());
        let range = start
            .and_then(|s| Some(s..s.checked_add(nbytes)?))
            .filter(|r| r.end <= self.bytes.len())
            .ok_or_else(|| {
                self.tensor_err(
                    name,
                    format!(
                        "data at offset {} (+{nbytes} bytes) runs past the end of the {}-byte file (truncated?)",
                        info.offset,
                        self.bytes.len()
                    ),
                )
            })?;
        Ok((ty, &self.bytes[range]))
    }

    /// Dequantizes `name` (ggml dims `dims`) into `out`, which holds exactly its elements.
    fn load_into(&self, name: &str, dims: &[usize], out: &mut [f32]) -> Result<(), ModelError> {
        let (ty, bytes) = self.raw(name, dims)?;
        dequantize_into(ty, bytes, out).map_err(|e| self.tensor_err(name, e))
    }

    /// A projection of `d_out` rows of `d_in` values into `out` (its rows of a stacked matrix);
    /// `unpermute` gives the head count of a Q/K projection.
    fn projection_into(
        &self,
        name: &str,
        d_in: usize,
        unpermute: Option<usize>,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let d_out = out.len() / d_in;
        self.load_into(name, &[d_in, d_out], out)?;
        if let Some(n_head) = unpermute {
            unpermute_rows(out, d_in, n_head);
        }
        Ok(())
    }
}

/// Reads the llama hyperparameters from GGUF metadata.
pub fn llama_config(meta: &GgufMetadata) -> Result<LlamaConfig, ModelError> {
    let unsupported = |reason: String| ModelError::unsupported(&meta.path, reason);
    let arch = meta
        .get_str("general.architecture")
        .ok_or_else(|| meta.format_err("missing metadata 'general.architecture'"))?;
    if arch != "llama" {
        return Err(unsupported(format!(
            "architecture '{arch}' (only 'llama' is supported)"
        )));
    }
    let key = |k: &str| format!("llama.{k}");
    let hidden = meta.required_usize(&key("embedding_length"))?;
    let heads = meta.required_usize(&key("attention.head_count"))?;
    let kv_heads = meta
        .usize_key(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(meta.format_err(format!(
            "head counts {heads} (q) / {kv_heads} (kv): q heads must be a positive multiple of kv heads"
        )));
    }
    let head_dim = match meta.usize_key(&key("attention.key_length"))? {
        Some(d) => d,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => {
            return Err(meta.format_err(format!(
                "hidden {hidden} is not a multiple of {heads} heads"
            )))
        }
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(meta.format_err(format!("head_dim {head_dim} must be even and positive")));
    }
    if let Some(v) = meta.usize_key(&key("attention.value_length"))? {
        if v != head_dim {
            return Err(unsupported(format!(
                "value head dim {v} differs from key head dim {head_dim}"
            )));
        }
    }
    if let Some(rd) = meta.usize_key(&key("rope.dimension_count"))? {
        if rd != head_dim {
            return Err(unsupported(format!(
                "partial RoPE: rope.dimension_count {rd} != head_dim {head_dim}"
            )));
        }
    }
    if let Some(kind) = meta.get_str(&key("rope.scaling.type")) {
        let factor = meta.f64_key(&key("rope.scaling.factor"))?.unwrap_or(1.0);
        if kind != "none" && factor != 1.0 {
            return Err(unsupported(format!(
                "RoPE scaling '{kind}' (factor {factor})"
            )));
        }
    }
    if meta
        .get(&key("expert_count"))
        .and_then(MetaValue::as_u64)
        .unwrap_or(0)
        > 0
    {
        return Err(unsupported("mixture-of-experts llama".into()));
    }
    let tokens = meta.get_str_array("tokenizer.ggml.tokens");
    let vocab_size = match (meta.usize_key(&key("vocab_size"))?, &tokens) {
        (Some(v), _) => v,
        (None, Some(t)) => t.len(),
        (None, None) => match meta.tensor("token_embd.weight").map(|t| t.dims.as_slice()) {
            Some(&[_, v]) => v as usize,
            _ => return Err(meta.format_err("cannot tell the vocabulary size")),
        },
    };
    let id_key = |k: &str| -> Result<Option<u32>, ModelError> {
        meta.u64_key(k)?
            .map(|v| u32::try_from(v).map_err(|_| meta.format_err(format!("'{k}' out of range"))))
            .transpose()
    };
    let bos_token_id = id_key("tokenizer.ggml.bos_token_id")?;
    let mut eos_token_ids: Vec<u32> = id_key("tokenizer.ggml.eos_token_id")?.into_iter().collect();
    if let Some(eot) = id_key("tokenizer.ggml.eot_token_id")? {
        eos_token_ids.push(eot);
    }
    if let Some(tokens) = &tokens {
        for t in END_OF_TURN_TOKENS {
            if let Some(i) = tokens.iter().position(|&s| s == t) {
                eos_token_ids.push(i as u32);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    eos_token_ids.retain(|id| seen.insert(*id));
    Ok(LlamaConfig {
        vocab_size,
        hidden_size: hidden,
        intermediate_size: meta.required_usize(&key("feed_forward_length"))?,
        num_layers: meta.required_usize(&key("block_count"))?,
        num_q_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rope_theta: meta.f64_key(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32,
        rms_norm_eps: meta
            .f64_key(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5) as f32,
        max_position_embeddings: meta.usize_key(&key("context_length"))?.unwrap_or(2048),
        tie_word_embeddings: meta.tensor("output.weight").is_none(),
        bos_token_id,
        eos_token_ids,
        chat_template: meta.get_str("tokenizer.chat_template").map(str::to_string),
    })
}

/// Tensors a plain llama model has a place for (anything else: biases, RoPE frequency factors,
/// experts... is refused rather than silently ignored).
fn known_tensor(name: &str, num_layers: usize) -> bool {
    matches!(
        name,
        "token_embd.weight" | "output_norm.weight" | "output.weight"
    ) || name.strip_prefix("blk.").is_some_and(|rest| {
        rest.split_once('.').is_some_and(|(n, t)| {
            n.parse::<usize>().is_ok_and(|n| n < num_layers)
                && matches!(
                    t,
                    "attn_norm.weight"
                        | "attn_q.weight"
                        | "attn_k.weight"
                        | "attn_v.weight"
                        | "attn_output.weight"
                        | "ffn_norm.weight"
                        | "ffn_gate.weight"
                        | "ffn_up.weight"
                        | "ffn_down.weight"
                )
        })
    })
}

/// A GGUF file's tensors, mapped: each is dequantized into its rows when asked, and its pages
/// are then given back to the kernel (a mapped page read once would otherwise count in the
/// process's resident memory until the map is dropped).
struct GgufTensors {
    map: memmap2::Mmap,
    meta: GgufMetadata,
    config: LlamaConfig,
}

impl GgufTensors {
    /// The name of `t`, the input width of a projection (`None` for a vector), and the head
    /// count of a Q/K projection to un-permute.
    fn locate(&self, t: Tensor) -> (String, Option<usize>, Option<usize>) {
        let c = &self.config;
        let (h, f, qd) = (c.hidden_size, c.intermediate_size, c.q_dim());
        let blk = |i: usize, n: &str| format!("blk.{i}.{n}.weight");
        match t {
            Tensor::Embed => ("token_embd.weight".to_string(), Some(h), None),
            Tensor::FinalNorm => ("output_norm.weight".to_string(), None, None),
            Tensor::LmHead => ("output.weight".to_string(), Some(h), None),
            Tensor::AttnNorm(i) => (blk(i, "attn_norm"), None, None),
            Tensor::Q(i) => (blk(i, "attn_q"), Some(h), Some(c.num_q_heads)),
            Tensor::K(i) => (blk(i, "attn_k"), Some(h), Some(c.num_kv_heads)),
            Tensor::V(i) => (blk(i, "attn_v"), Some(h), None),
            Tensor::O(i) => (blk(i, "attn_output"), Some(qd), None),
            Tensor::FfnNorm(i) => (blk(i, "ffn_norm"), None, None),
            Tensor::Gate(i) => (blk(i, "ffn_gate"), Some(h), None),
            Tensor::Up(i) => (blk(i, "ffn_up"), Some(h), None),
            Tensor::Down(i) => (blk(i, "ffn_down"), Some(f), None),
        }
    }

    fn source(&self) -> TensorSource<'_> {
        TensorSource {
            meta: &self.meta,
            bytes: &self.map,
        }
    }
}

impl TensorFile for GgufTensors {
    fn read(&self, t: Tensor, out: &mut [f32]) -> Result<(), ModelError> {
        let (name, d_in, heads) = self.locate(t);
        let src = self.source();
        let read = match d_in {
            Some(d_in) => src.projection_into(&name, d_in, heads, out),
            None => src.load_into(&name, &[out.len()], out),
        };
        super::release_pages(&self.map);
        read
    }

    fn check(&self, t: Tensor, len: usize) -> Result<(), ModelError> {
        let (name, d_in, _) = self.locate(t);
        // ggml lists dims fastest-first: a projection of `out` rows of `in` values is [in, out].
        let dims = match d_in {
            Some(d_in) => vec![d_in, len / d_in],
            None => vec![len],
        };
        self.source().raw(&name, &dims).map(|_| ())
    }
}

/// Opens a llama GGUF model: header and config now, tensors dequantized as they are read.
pub fn open_gguf(path: &Path) -> Result<ModelFile, ModelError> {
    let map = map_file(path)?;
    let meta = parse_header(path, &map)?;
    let config = llama_config(&meta)?;
    if let Some(t) = meta
        .tensors
        .iter()
        .find(|t| !known_tensor(&t.name, config.num_layers))
    {
        return Err(ModelError::unsupported(
            path,
            format!("tensor '{}' has no place in a plain llama model", t.name),
        ));
    }
    let tensors = GgufTensors {
        map,
        meta,
        config: config.clone(),
    };
    ModelFile::new(config, path, Box::new(tensors))
}

/// Loads a llama GGUF model, dequantizing every tensor to f32 straight into the model's layout.
pub fn load_gguf(path: &Path) -> Result<Model, ModelError> {
    open_gguf(path)?.load()
}
