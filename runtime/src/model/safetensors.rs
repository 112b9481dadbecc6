//! Hugging Face model directories: `config.json` plus `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), dtypes F32/F16/BF16, converted to f32 in the model's layout.
//!
//! PyTorch's `nn.Linear` stores `[out, in]`, the model's own layout: each projection is
//! converted straight into its rows of the stacked `wqkv` / `w_gate_up`. Q/K rows are already
//! in the rotate-half head layout, so nothing is permuted. The chat template and the special
//! tokens come from `tokenizer_config.json` / `generation_config.json` when present.

use super::hf_config::HfConfig;
use super::{LlamaConfig, Model, ModelError, ModelFile, Tensor, TensorFile, END_OF_TURN_TOKENS};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))
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
    if !path.is_file() {
        return Err(ModelError::io(
            &path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no config.json in the model directory",
            ),
        ));
    }
    let cfg = HfConfig::read(&path).map_err(|e| ModelError::format(&path, e))?;
    let unsupported = |reason: String| ModelError::unsupported(&path, reason);
    let model_type = cfg.model_type.as_deref().unwrap_or("");
    let arch_is_llama = cfg
        .architectures
        .iter()
        .flatten()
        .any(|a| a == "LlamaForCausalLM");
    if model_type != "llama" && !arch_is_llama {
        return Err(unsupported(format!(
            "model_type '{model_type}' (only 'llama' is supported)"
        )));
    }
    let required = |v: Option<u32>, key: &str| {
        v.map(|v| v as usize)
            .ok_or_else(|| ModelError::format(&path, format!("missing '{key}'")))
    };
    if let Some(s) = cfg.rope_scaling.as_ref().filter(|v| !v.is_null()) {
        return Err(unsupported(format!("rope_scaling {s}")));
    }
    if cfg.attention_bias == Some(true) || cfg.mlp_bias == Some(true) {
        return Err(unsupported("attention or MLP biases".into()));
    }
    if let Some(act) = cfg.hidden_act.as_deref().filter(|&a| a != "silu") {
        return Err(unsupported(format!("hidden_act {act}")));
    }
    let hidden = required(cfg.hidden_size, "hidden_size")?;
    let attention = cfg.attention().map_err(|e| ModelError::format(&path, e))?;
    let (heads, kv_heads) = (
        attention.num_q_heads as usize,
        attention.num_kv_heads as usize,
    );
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(ModelError::format(
            &path,
            format!("{heads} attention heads are not a positive multiple of {kv_heads} KV heads"),
        ));
    }
    let head_dim = attention.head_dim as usize;
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(ModelError::format(
            &path,
            format!("head_dim {head_dim} must be even and positive"),
        ));
    }

    let tok_cfg = read_optional_json(&dir.join("tokenizer_config.json"))?;
    let gen_cfg = read_optional_json(&dir.join("generation_config.json"))?;
    let mut eos_token_ids = cfg.eos_token_id.as_ref().map_or(vec![], |t| t.ids());
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
    let bos_token_id = cfg
        .bos_token_id
        .as_ref()
        .and_then(|t| t.ids().first().copied())
        .or_else(|| {
            gen_cfg
                .as_ref()
                .and_then(|g| token_ids(g.get("bos_token_id")).first().copied())
        });
    Ok(LlamaConfig {
        vocab_size: required(cfg.vocab_size, "vocab_size")?,
        hidden_size: hidden,
        intermediate_size: required(cfg.intermediate_size, "intermediate_size")?,
        num_layers: required(cfg.num_hidden_layers, "num_hidden_layers")?,
        num_q_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rope_theta: cfg.rope_theta.unwrap_or(10000.0) as f32,
        rms_norm_eps: cfg.rms_norm_eps.unwrap_or(1e-6) as f32,
        max_position_embeddings: cfg.max_position_embeddings.map_or(2048, |v| v as usize),
        tie_word_embeddings: cfg.tie_word_embeddings.unwrap_or(false),
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
        return Err(ModelError::io(
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
        .ok_or_else(|| ModelError::format(&index, "no 'weight_map' object"))?;
    let mut files: Vec<String> = map
        .values()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| ModelError::format(&index, "weight_map values must be file names"))
        })
        .collect::<Result<_, _>>()?;
    files.sort();
    files.dedup();
    for f in &files {
        if Path::new(f).components().count() != 1 {
            return Err(ModelError::format(
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
            let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: read-only map used only while loading; the file is assumed not to be
            // truncated or rewritten concurrently (as with every mmap-based loader).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                ModelError::format(&path, format!("not a valid safetensors file: {e}"))
            })?;
            for name in st.names() {
                index.insert(name.to_string(), maps.len());
            }
            maps.push((path, map));
        }
        Ok(Tensors { maps, index })
    }

    /// The tensor `name`, which must have `shape` and a dtype this loader converts, and its map.
    fn view(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<(TensorView<'_>, &(PathBuf, memmap2::Mmap)), ModelError> {
        let first = &self.maps[0].0;
        let &i = self.index.get(name).ok_or_else(|| ModelError::Tensor {
            path: first.clone(),
            tensor: name.to_string(),
            reason: "missing".into(),
        })?;
        let shard = &self.maps[i];
        let path = &shard.0;
        let terr = |reason: String| ModelError::Tensor {
            path: path.clone(),
            tensor: name.to_string(),
            reason,
        };
        let st = SafeTensors::deserialize(&shard.1).map_err(|e| terr(e.to_string()))?;
        let view = st.tensor(name).map_err(|e| terr(e.to_string()))?;
        if view.shape() != shape {
            return Err(terr(format!(
                "shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(ModelError::unsupported(
                path,
                format!(
                    "tensor '{name}' has dtype {:?} (supported: F32, F16, BF16)",
                    view.dtype()
                ),
            ));
        }
        Ok((view, shard))
    }

    /// The tensor's values as f32 into `out`, which holds exactly its `shape`.
    fn load_into(&self, name: &str, shape: &[usize], out: &mut [f32]) -> Result<(), ModelError> {
        let (view, (_, map)) = self.view(name, shape)?;
        let bytes = view.data();
        let mut widen = |width: usize, f: &dyn Fn(&[u8]) -> f32| {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(width)) {
                *o = f(c);
            }
        };
        match view.dtype() {
            Dtype::F32 => widen(4, &|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            Dtype::F16 => widen(2, &|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            _ => widen(2, &|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        }
        super::release_pages(map);
        Ok(())
    }
}

impl HfTensors {
    /// The name of `tensor` and its shape when it fills `len` values: `[len]` for a norm,
    /// `[out, in]` for an `nn.Linear` weight (PyTorch's layout, the model's own: each goes
    /// straight into its rows). Some tied checkpoints still ship lm_head; the config decides
    /// (it is read only when untied).
    fn locate(&self, tensor: Tensor, len: usize) -> (String, Vec<usize>) {
        let c = &self.config;
        let layer = |i: usize, n: &str| format!("model.layers.{i}.{n}.weight");
        let (name, d_in) = match tensor {
            Tensor::Embed => ("model.embed_tokens.weight".to_string(), c.hidden_size),
            Tensor::FinalNorm => return ("model.norm.weight".to_string(), vec![len]),
            Tensor::LmHead => ("lm_head.weight".to_string(), c.hidden_size),
            Tensor::AttnNorm(i) => return (layer(i, "input_layernorm"), vec![len]),
            Tensor::FfnNorm(i) => return (layer(i, "post_attention_layernorm"), vec![len]),
            Tensor::Q(i) => (layer(i, "self_attn.q_proj"), c.hidden_size),
            Tensor::K(i) => (layer(i, "self_attn.k_proj"), c.hidden_size),
            Tensor::V(i) => (layer(i, "self_attn.v_proj"), c.hidden_size),
            Tensor::O(i) => (layer(i, "self_attn.o_proj"), c.q_dim()),
            Tensor::Gate(i) => (layer(i, "mlp.gate_proj"), c.hidden_size),
            Tensor::Up(i) => (layer(i, "mlp.up_proj"), c.hidden_size),
            Tensor::Down(i) => (layer(i, "mlp.down_proj"), c.intermediate_size),
        };
        (name, vec![len / d_in, d_in])
    }
}

impl TensorFile for HfTensors {
    fn read(&self, tensor: Tensor, out: &mut [f32]) -> Result<(), ModelError> {
        let (name, shape) = self.locate(tensor, out.len());
        self.tensors.load_into(&name, &shape, out)
    }

    fn check(&self, tensor: Tensor, len: usize) -> Result<(), ModelError> {
        let (name, shape) = self.locate(tensor, len);
        self.tensors.view(&name, &shape).map(|_| ())
    }
}

/// A model directory's mapped shards and the config that says what to read from them.
struct HfTensors {
    tensors: Tensors,
    config: LlamaConfig,
}

/// Opens a Hugging Face llama model directory: config now, tensors converted as they are read.
pub fn open_hf_dir(dir: &Path) -> Result<ModelFile, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
        ));
    }
    let config = read_config(dir)?;
    let tensors = HfTensors {
        tensors: Tensors::open(shard_files(dir)?)?,
        config: config.clone(),
    };
    ModelFile::new(config, dir, Box::new(tensors))
}

/// Loads a Hugging Face llama model directory.
pub fn load_hf_dir(dir: &Path) -> Result<Model, ModelError> {
    open_hf_dir(dir)?.load()
}
