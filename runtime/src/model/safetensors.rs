//! Hugging Face model directories: `config.json` plus `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), dtypes F32/F16/BF16, converted to the canonical f32 layout.
//!
//! PyTorch's `nn.Linear` stores `[out, in]`; projections are transposed to `[in, out]`. Q/K rows are
//! already in the rotate-half head layout, so nothing is permuted. The chat template and the
//! special tokens come from `tokenizer_config.json` / `generation_config.json` when present.

use super::gguf::{transpose, END_OF_TURN_TOKENS};
use super::{LayerWeights, LlamaConfig, LlamaWeights, Matrix, Model, ModelError};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| format_err(path, format!("invalid JSON: {e}")))
}

/// Reads `path` as JSON if the file exists.
fn read_optional_json(path: &Path) -> Result<Option<Value>, ModelError> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// `eos_token_id` may be an integer or a list of integers.
fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .into_iter()
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect(),
        _ => vec![],
    }
}

/// Parses a Hugging Face llama `config.json` (plus the optional sibling files for special tokens
/// and the chat template).
pub fn read_config(dir: &Path) -> Result<LlamaConfig, ModelError> {
    let path = dir.join("config.json");
    let cfg = read_json(&path)?;
    let unsupported = |reason: String| ModelError::Unsupported {
        path: path.clone(),
        reason,
    };
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    let arch_is_llama = cfg
        .get("architectures")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("LlamaForCausalLM")));
    if model_type != "llama" && !arch_is_llama {
        return Err(unsupported(format!(
            "model_type '{model_type}' (only 'llama' is supported)"
        )));
    }
    let uint = |key: &str| -> Result<Option<usize>, ModelError> {
        match cfg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    format_err(&path, format!("'{key}' is not a non-negative integer: {v}"))
                }),
        }
    };
    let required =
        |key: &str| uint(key)?.ok_or_else(|| format_err(&path, format!("missing '{key}'")));
    let float = |key: &str, default: f64| -> Result<f64, ModelError> {
        match cfg.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| format_err(&path, format!("'{key}' is not a number: {v}"))),
        }
    };
    let flag = |key: &str| cfg.get(key).and_then(Value::as_bool).unwrap_or(false);
    if let Some(s) = cfg.get("rope_scaling").filter(|v| !v.is_null()) {
        return Err(unsupported(format!("rope_scaling {s}")));
    }
    if flag("attention_bias") || flag("mlp_bias") {
        return Err(unsupported("attention or MLP biases".into()));
    }
    if cfg
        .get("hidden_act")
        .and_then(Value::as_str)
        .is_some_and(|a| a != "silu")
    {
        return Err(unsupported(format!("hidden_act {}", cfg["hidden_act"])));
    }
    let hidden = required("hidden_size")?;
    let heads = required("num_attention_heads")?;
    let kv_heads = uint("num_key_value_heads")?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(format_err(
            &path,
            format!("{heads} attention heads are not a positive multiple of {kv_heads} KV heads"),
        ));
    }
    let head_dim = match uint("head_dim")? {
        Some(d) => d,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => {
            return Err(format_err(
                &path,
                format!("hidden_size {hidden} not a multiple of {heads} heads"),
            ))
        }
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(format_err(
            &path,
            format!("head_dim {head_dim} must be even and positive"),
        ));
    }

    let tok_cfg = read_optional_json(&dir.join("tokenizer_config.json"))?;
    let gen_cfg = read_optional_json(&dir.join("generation_config.json"))?;
    let mut eos_token_ids = token_ids(cfg.get("eos_token_id"));
    if let Some(g) = &gen_cfg {
        eos_token_ids.extend(token_ids(g.get("eos_token_id")));
    }
    let chat_template = tok_cfg
        .as_ref()
        .and_then(|t| t.get("chat_template"))
        .and_then(Value::as_str)
        .map(str::to_string);
    if chat_template.is_some() {
        eos_token_ids.extend(end_of_turn_ids(dir)?);
    }
    let mut seen = std::collections::HashSet::new();
    eos_token_ids.retain(|id| seen.insert(*id));
    let bos_token_id = token_ids(cfg.get("bos_token_id"))
        .first()
        .copied()
        .or_else(|| {
            gen_cfg
                .as_ref()
                .and_then(|g| token_ids(g.get("bos_token_id")).first().copied())
        });
    Ok(LlamaConfig {
        vocab_size: required("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: required("intermediate_size")?,
        num_layers: required("num_hidden_layers")?,
        num_q_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rope_theta: float("rope_theta", 10000.0)? as f32,
        rms_norm_eps: float("rms_norm_eps", 1e-6)? as f32,
        max_position_embeddings: uint("max_position_embeddings")?.unwrap_or(2048),
        tie_word_embeddings: flag("tie_word_embeddings"),
        bos_token_id,
        eos_token_ids,
        chat_template,
    })
}

/// Ids of end-of-turn tokens (`<|im_end|>`, `<|eot_id|>`) among `tokenizer.json`'s added tokens.
fn end_of_turn_ids(dir: &Path) -> Result<Vec<u32>, ModelError> {
    let Some(tok) = read_optional_json(&dir.join("tokenizer.json"))? else {
        return Ok(vec![]);
    };
    let added = tok.get("added_tokens").and_then(Value::as_array);
    Ok(added
        .into_iter()
        .flatten()
        .filter(|t| {
            t.get("content")
                .and_then(Value::as_str)
                .is_some_and(|c| END_OF_TURN_TOKENS.contains(&c))
        })
        .filter_map(|t| {
            t.get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
        })
        .collect())
}

/// The safetensors files of a model directory: one file, or the shards of an index.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(io_err(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors nor model.safetensors.index.json in the directory",
            ),
        ));
    }
    let json = read_json(&index)?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| format_err(&index, "no 'weight_map' object"))?;
    let mut files: Vec<String> = map
        .values()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format_err(&index, "weight_map values must be file names"))
        })
        .collect::<Result<_, _>>()?;
    files.sort();
    files.dedup();
    for f in &files {
        if Path::new(f).components().count() != 1 {
            return Err(format_err(
                &index,
                format!("shard '{f}' is not a plain file name"),
            ));
        }
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// One tensor's location: which mapped shard, and its dtype/shape/bytes.
struct Tensors {
    maps: Vec<(PathBuf, memmap2::Mmap)>,
    /// name -> (shard index)
    index: BTreeMap<String, usize>,
}

impl Tensors {
    fn open(files: Vec<PathBuf>) -> Result<Tensors, ModelError> {
        let mut maps = Vec::new();
        let mut index = BTreeMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
            // SAFETY: read-only map used only while loading; the file is assumed not to be
            // truncated or rewritten concurrently (as with every mmap-based loader).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(&path, e))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| format_err(&path, format!("not a valid safetensors file: {e}")))?;
            for name in st.names() {
                index.insert(name.to_string(), maps.len());
            }
            maps.push((path, map));
        }
        Ok(Tensors { maps, index })
    }

    /// The tensor's values as f32, checking its shape.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let first = &self.maps[0].0;
        let &i = self.index.get(name).ok_or_else(|| ModelError::Tensor {
            path: first.clone(),
            tensor: name.to_string(),
            reason: "missing".into(),
        })?;
        let (path, map) = &self.maps[i];
        let terr = |reason: String| ModelError::Tensor {
            path: path.clone(),
            tensor: name.to_string(),
            reason,
        };
        let st = SafeTensors::deserialize(map).map_err(|e| terr(e.to_string()))?;
        let view = st.tensor(name).map_err(|e| terr(e.to_string()))?;
        if view.shape() != shape {
            return Err(terr(format!(
                "shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
        let bytes = view.data();
        Ok(match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            d => {
                return Err(ModelError::Unsupported {
                    path: path.clone(),
                    reason: format!("tensor '{name}' has dtype {d:?} (supported: F32, F16, BF16)"),
                })
            }
        })
    }

    /// An `nn.Linear` weight `[out, in]` as canonical `[in, out]`.
    fn linear(&self, name: &str, d_in: usize, d_out: usize) -> Result<Matrix, ModelError> {
        let w = self.load(name, &[d_out, d_in])?;
        Ok(Matrix::new(d_in, d_out, transpose(&w, d_out, d_in)))
    }
}

/// Loads a Hugging Face llama model directory.
pub fn load_hf_dir(dir: &Path) -> Result<Model, ModelError> {
    if !dir.is_dir() {
        return Err(io_err(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
        ));
    }
    let config = read_config(dir)?;
    let t = Tensors::open(shard_files(dir)?)?;
    let c = &config;
    let (h, q_dim, kv_dim) = (
        c.hidden_size,
        c.num_q_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
    );
    let embed = Matrix::new(
        c.vocab_size,
        h,
        t.load("model.embed_tokens.weight", &[c.vocab_size, h])?,
    );
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        layers.push(LayerWeights {
            attn_norm: t.load(&p("input_layernorm"), &[h])?,
            wq: t.linear(&p("self_attn.q_proj"), h, q_dim)?,
            wk: t.linear(&p("self_attn.k_proj"), h, kv_dim)?,
            wv: t.linear(&p("self_attn.v_proj"), h, kv_dim)?,
            wo: t.linear(&p("self_attn.o_proj"), q_dim, h)?,
            ffn_norm: t.load(&p("post_attention_layernorm"), &[h])?,
            w_gate: t.linear(&p("mlp.gate_proj"), h, c.intermediate_size)?,
            w_up: t.linear(&p("mlp.up_proj"), h, c.intermediate_size)?,
            w_down: t.linear(&p("mlp.down_proj"), c.intermediate_size, h)?,
        });
    }
    let final_norm = t.load("model.norm.weight", &[h])?;
    // Some tied checkpoints still ship lm_head; the config decides.
    let lm_head = if c.tie_word_embeddings {
        None
    } else {
        Some(t.linear("lm_head.weight", h, c.vocab_size)?)
    };
    Ok(Model {
        config,
        weights: LlamaWeights {
            embed,
            layers,
            final_norm,
            lm_head,
        },
        source: dir.to_path_buf(),
    })
}
