//! A deterministic random tiny Llama for tests: weights from a seed, a byte-level BPE tokenizer
//! trained on a built-in English paragraph, written as a Hugging Face directory
//! ([`write_tiny_llama`]) or as a GGUF file with the converter's Q/K permutation
//! ([`write_tiny_llama_gguf`]), so both loaders can be checked against the same weights.
//!
//! Vocabulary: ids 0..4 are `<s>` (BOS), `</s>` (EOS), `<|im_start|>`, `<|im_end|>`; then the
//! 256 byte tokens; then merges, as many as `vocab_size` allows.
//!
//! Initialization keeps activations O(1): embeddings N(0, 1), projections N(0, 1/fan_in), norm
//! weights 1 + N(0, 0.1²), so logits are spread enough that greedy decoding wanders.

use super::gguf::{permute_rows, transpose, GgmlType, GgufWriter, MetaValue};
use super::tokenizer::{byte_to_char, ByteLevelBpe, PreTokenizerKind};
use super::{LayerWeights, LlamaConfig, LlamaWeights, Matrix, ModelError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Storage dtype of the safetensors file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TinyDtype {
    F32,
    F16,
    BF16,
}

/// Shape of the tiny model.
#[derive(Clone, Debug, PartialEq)]
pub struct TinyConfig {
    /// At least [`MIN_VOCAB`] (special + byte tokens); the rest are merges. Ids past the merges the
    /// built-in corpus yields still get embedding rows but no tokenizer entry.
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_q_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub dtype: TinyDtype,
}

impl Default for TinyConfig {
    fn default() -> Self {
        TinyConfig {
            vocab_size: 300,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_q_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 512,
            tie_word_embeddings: false,
            dtype: TinyDtype::F32,
        }
    }
}

pub const SPECIAL_TOKENS: [&str; 4] = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"];
pub const BOS_ID: u32 = 0;
pub const EOS_ID: u32 = 1;
pub const IM_END_ID: u32 = 3;
/// Special tokens plus the 256 byte tokens.
pub const MIN_VOCAB: usize = SPECIAL_TOKENS.len() + 256;

/// ChatML, the format the tiny tokenizer's special tokens are for.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const CORPUS: &str = "The quick brown fox jumps over the lazy dog. A small model reads the words \
and writes them again, one token at a time. The cache keeps the keys and the values of every \
token it has seen, so the next step only computes what is new. Pages of the cache are handed \
out to sequences as they grow, and given back when they finish. There are 12 pages, 16 slots \
each, and 3 sequences in the batch. Hello world! The weather is nice today, and the river runs \
through the old town where the people meet in the market.";

impl TinyConfig {
    fn check(&self, dir: &Path) -> Result<(), ModelError> {
        let bad = |reason: String| {
            Err(ModelError::Unsupported {
                path: dir.to_path_buf(),
                reason: format!("tiny config: {reason}"),
            })
        };
        if self.vocab_size < MIN_VOCAB {
            return bad(format!("vocab_size {} < {MIN_VOCAB}", self.vocab_size));
        }
        if self.num_kv_heads == 0 || !self.num_q_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} q heads / {} kv heads",
                self.num_q_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0
            || !self.head_dim.is_multiple_of(2)
            || self.hidden_size == 0
            || self.num_layers == 0
        {
            return bad("head_dim must be even; sizes positive".into());
        }
        Ok(())
    }

    /// The [`LlamaConfig`] the written model loads as (HF directory flavour).
    pub fn llama_config(&self) -> LlamaConfig {
        LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_layers,
            num_q_heads: self.num_q_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            bos_token_id: Some(BOS_ID),
            eos_token_ids: vec![EOS_ID, IM_END_ID],
            chat_template: Some(CHAT_TEMPLATE.to_string()),
        }
    }
}

/// Standard normal samples (Box-Muller) from a seeded stream.
struct Normal(ChaCha8Rng);

impl Normal {
    fn sample(&mut self) -> f32 {
        let u1: f64 = 1.0 - self.0.random::<f64>(); // (0, 1]
        let u2: f64 = self.0.random();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    fn vec(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        (0..n).map(|_| mean + std * self.sample()).collect()
    }

    /// A canonical `[in, out]` projection with N(0, 1/in) entries.
    fn proj(&mut self, d_in: usize, d_out: usize) -> Matrix {
        Matrix::new(
            d_in,
            d_out,
            self.vec(d_in * d_out, 0.0, 1.0 / (d_in as f32).sqrt()),
        )
    }
}

/// The tiny model's weights in the canonical layout, as f32 (before any storage rounding).
pub fn tiny_weights(seed: u64, cfg: &TinyConfig) -> LlamaWeights {
    let mut rng = Normal(ChaCha8Rng::seed_from_u64(seed));
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let (q_dim, kv_dim) = (
        cfg.num_q_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    let embed = Matrix::new(cfg.vocab_size, h, rng.vec(cfg.vocab_size * h, 0.0, 1.0));
    let layers = (0..cfg.num_layers)
        .map(|_| LayerWeights {
            attn_norm: rng.vec(h, 1.0, 0.1),
            wq: rng.proj(h, q_dim),
            wk: rng.proj(h, kv_dim),
            wv: rng.proj(h, kv_dim),
            wo: rng.proj(q_dim, h),
            ffn_norm: rng.vec(h, 1.0, 0.1),
            w_gate: rng.proj(h, f),
            w_up: rng.proj(h, f),
            w_down: rng.proj(f, h),
        })
        .collect();
    let final_norm = rng.vec(h, 1.0, 0.1);
    let lm_head = (!cfg.tie_word_embeddings).then(|| rng.proj(h, cfg.vocab_size));
    LlamaWeights {
        embed,
        layers,
        final_norm,
        lm_head,
    }
}

/// Splits text like GPT-2's pre-tokenizer roughly does: runs of letters (with one leading space
/// joined), of digits, of whitespace, of other characters.
fn corpus_words(text: &str) -> Vec<String> {
    let class = |c: char| {
        if c.is_alphabetic() {
            0
        } else if c.is_numeric() {
            1
        } else if c.is_whitespace() {
            2
        } else {
            3
        }
    };
    let chars: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        if chars[i] == ' ' && chars.get(i + 1).is_some_and(|c| c.is_alphabetic()) {
            i += 1;
        }
        let k = class(chars[i]);
        while i < chars.len() && class(chars[i]) == k {
            i += 1;
        }
        words.push(chars[start..i].iter().collect());
    }
    words
}

/// The tiny vocabulary (`tokens[id]`) and merges: greedy BPE over the built-in corpus, most
/// frequent pair first, ties broken by the pair's order.
pub fn tiny_vocab(vocab_size: usize) -> (Vec<String>, Vec<(String, String)>) {
    let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    tokens.extend((0..=255u8).map(|b| byte_to_char(b).to_string()));
    let mut known: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    let mut counts: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for w in corpus_words(CORPUS) {
        let syms = w.bytes().map(|b| byte_to_char(b).to_string()).collect();
        *counts.entry(syms).or_default() += 1;
    }
    let mut words: Vec<(Vec<String>, usize)> = counts.into_iter().collect();
    let mut merges = Vec::new();
    while tokens.len() < vocab_size {
        let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (syms, n) in &words {
            for p in syms.windows(2) {
                *pairs.entry((&p[0], &p[1])).or_default() += n;
            }
        }
        let Some(((a, b), _)) = pairs.iter().fold(
            None,
            |best: Option<(&(&str, &str), usize)>, (p, &n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((p, n)),
            },
        ) else {
            break;
        };
        let (a, b) = (a.to_string(), b.to_string());
        let joined = format!("{a}{b}");
        for (syms, _) in &mut words {
            let mut i = 0;
            while i + 1 < syms.len() {
                if syms[i] == a && syms[i + 1] == b {
                    syms[i] = joined.clone();
                    syms.remove(i + 1);
                }
                i += 1;
            }
        }
        if known.insert(joined.clone()) {
            tokens.push(joined);
        }
        merges.push((a, b));
    }
    (tokens, merges)
}

/// The tiny vocabulary, its merges and the tokenizer built from them.
struct TinyTokenizer {
    tokens: Vec<String>,
    merges: Vec<(String, String)>,
    tokenizer: tokenizers::Tokenizer,
}

fn tiny_tokenizer(vocab_size: usize) -> Result<TinyTokenizer, ModelError> {
    let (tokens, merges) = tiny_vocab(vocab_size);
    let tok = ByteLevelBpe {
        tokens: &tokens,
        merges: merges.clone(),
        added: (0..SPECIAL_TOKENS.len() as u32)
            .map(|i| (i, true))
            .collect(),
        pre: PreTokenizerKind::Gpt2,
        bos: Some(BOS_ID),
    }
    .build()?;
    Ok(TinyTokenizer {
        tokens,
        merges,
        tokenizer: tok,
    })
}

fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| io_err(path, e.into()))?;
    std::fs::write(path, text).map_err(|e| io_err(path, e))
}

/// Writes `config.json`, `model.safetensors`, `tokenizer.json` and `tokenizer_config.json` of a
/// random tiny Llama into `dir` (created if needed). Same seed and config, same files.
pub fn write_tiny_llama(dir: &Path, seed: u64, cfg: &TinyConfig) -> Result<(), ModelError> {
    cfg.check(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let w = tiny_weights(seed, cfg);
    let (dtype, torch_dtype) = match cfg.dtype {
        TinyDtype::F32 => (safetensors::Dtype::F32, "float32"),
        TinyDtype::F16 => (safetensors::Dtype::F16, "float16"),
        TinyDtype::BF16 => (safetensors::Dtype::BF16, "bfloat16"),
    };
    let encode = |values: &[f32]| -> Vec<u8> {
        match cfg.dtype {
            TinyDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TinyDtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            TinyDtype::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut vector = |name: String, v: &[f32]| tensors.push((name, vec![v.len()], encode(v)));
    vector("model.norm.weight".into(), &w.final_norm);
    for (i, l) in w.layers.iter().enumerate() {
        vector(
            format!("model.layers.{i}.input_layernorm.weight"),
            &l.attn_norm,
        );
        vector(
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            &l.ffn_norm,
        );
    }
    // nn.Linear stores [out, in]: the transpose of the canonical [in, out].
    let mut linear = |name: String, m: &Matrix| {
        tensors.push((
            name,
            vec![m.cols, m.rows],
            encode(&transpose(&m.data, m.rows, m.cols)),
        ))
    };
    for (i, l) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        linear(p("self_attn.q_proj"), &l.wq);
        linear(p("self_attn.k_proj"), &l.wk);
        linear(p("self_attn.v_proj"), &l.wv);
        linear(p("self_attn.o_proj"), &l.wo);
        linear(p("mlp.gate_proj"), &l.w_gate);
        linear(p("mlp.up_proj"), &l.w_up);
        linear(p("mlp.down_proj"), &l.w_down);
    }
    if let Some(head) = &w.lm_head {
        linear("lm_head.weight".into(), head);
    }
    tensors.push((
        "model.embed_tokens.weight".into(),
        vec![w.embed.rows, w.embed.cols],
        encode(&w.embed.data),
    ));
    let views = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io_err(dir, std::io::Error::other(e.to_string())))?;
    let st_path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &st_path)
        .map_err(|e| io_err(&st_path, std::io::Error::other(e.to_string())))?;

    write_json(
        &dir.join("config.json"),
        &json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_q_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": "silu",
            "rope_theta": cfg.rope_theta,
            "rms_norm_eps": cfg.rms_norm_eps,
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "rope_scaling": null,
            "torch_dtype": torch_dtype,
        }),
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "bos_token": SPECIAL_TOKENS[BOS_ID as usize],
            "eos_token": SPECIAL_TOKENS[EOS_ID as usize],
            "chat_template": CHAT_TEMPLATE,
        }),
    )?;
    let tok = tiny_tokenizer(cfg.vocab_size)?.tokenizer;
    let tok_path = dir.join("tokenizer.json");
    tok.save(&tok_path, true)
        .map_err(|e| io_err(&tok_path, std::io::Error::other(e.to_string())))
}

/// Writes the same tiny model as one GGUF file, as llama.cpp's converter would: ggml dims, Q/K
/// rows permuted for adjacent-pair RoPE, matrices stored as `ty` (norms F32), and the tokenizer
/// as `tokenizer.ggml.*` metadata. `ty` must divide the row lengths into whole blocks (32 for the
/// quantized types, which the default config does).
pub fn write_tiny_llama_gguf(
    path: &Path,
    seed: u64,
    cfg: &TinyConfig,
    ty: GgmlType,
) -> Result<(), ModelError> {
    cfg.check(path)?;
    let w = tiny_weights(seed, cfg);
    let TinyTokenizer { tokens, merges, .. } = tiny_tokenizer(cfg.vocab_size)?;
    let mut g = GgufWriter::new();
    let u32v = |v: usize| MetaValue::U32(v as u32);
    let s = |v: &str| MetaValue::String(v.to_string());
    let strings = |v: Vec<String>| MetaValue::Array(v.into_iter().map(MetaValue::String).collect());
    g.metadata("general.architecture", s("llama"))
        .metadata("general.name", s("tiny-llama"))
        .metadata("llama.block_count", u32v(cfg.num_layers))
        .metadata("llama.context_length", u32v(cfg.max_position_embeddings))
        .metadata("llama.embedding_length", u32v(cfg.hidden_size))
        .metadata("llama.feed_forward_length", u32v(cfg.intermediate_size))
        .metadata("llama.attention.head_count", u32v(cfg.num_q_heads))
        .metadata("llama.attention.head_count_kv", u32v(cfg.num_kv_heads))
        .metadata("llama.attention.key_length", u32v(cfg.head_dim))
        .metadata("llama.attention.value_length", u32v(cfg.head_dim))
        .metadata("llama.rope.dimension_count", u32v(cfg.head_dim))
        .metadata("llama.rope.freq_base", MetaValue::F32(cfg.rope_theta))
        .metadata(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(cfg.rms_norm_eps),
        )
        .metadata("llama.vocab_size", u32v(cfg.vocab_size))
        .metadata("tokenizer.ggml.model", s("gpt2"))
        .metadata("tokenizer.ggml.pre", s("gpt2"))
        .metadata(
            "tokenizer.ggml.token_type",
            MetaValue::Array(
                (0..tokens.len())
                    .map(|i| MetaValue::I32(if i < SPECIAL_TOKENS.len() { 3 } else { 1 }))
                    .collect(),
            ),
        )
        .metadata("tokenizer.ggml.tokens", strings(tokens))
        .metadata(
            "tokenizer.ggml.merges",
            strings(
                merges
                    .into_iter()
                    .map(|(a, b)| format!("{a} {b}"))
                    .collect(),
            ),
        )
        .metadata("tokenizer.ggml.bos_token_id", MetaValue::U32(BOS_ID))
        .metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(EOS_ID))
        .metadata("tokenizer.ggml.add_bos_token", MetaValue::Bool(true))
        .metadata("tokenizer.chat_template", s(CHAT_TEMPLATE));
    let fail = |e: String| ModelError::Unsupported {
        path: path.to_path_buf(),
        reason: e,
    };
    // Canonical [in, out] -> stored rows [out, in] (ggml dims [in, out]), permuting Q/K rows.
    let mut proj =
        |name: String, m: &Matrix, permute_heads: Option<usize>| -> Result<(), ModelError> {
            let mut rows = transpose(&m.data, m.rows, m.cols);
            if let Some(n) = permute_heads {
                rows = permute_rows(&rows, m.cols, m.rows, n);
            }
            g.tensor(&name, &[m.rows, m.cols], ty, &rows)
                .map_err(fail)?;
            Ok(())
        };
    for (i, l) in w.layers.iter().enumerate() {
        let n = |t: &str| format!("blk.{i}.{t}.weight");
        proj(n("attn_q"), &l.wq, Some(cfg.num_q_heads))?;
        proj(n("attn_k"), &l.wk, Some(cfg.num_kv_heads))?;
        proj(n("attn_v"), &l.wv, None)?;
        proj(n("attn_output"), &l.wo, None)?;
        proj(n("ffn_gate"), &l.w_gate, None)?;
        proj(n("ffn_up"), &l.w_up, None)?;
        proj(n("ffn_down"), &l.w_down, None)?;
    }
    if let Some(head) = &w.lm_head {
        proj("output.weight".into(), head, None)?;
    }
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    g.tensor("token_embd.weight", &[h, v], ty, &w.embed.data)
        .map_err(fail)?;
    for (i, l) in w.layers.iter().enumerate() {
        g.tensor(
            &format!("blk.{i}.attn_norm.weight"),
            &[h],
            GgmlType::F32,
            &l.attn_norm,
        )
        .map_err(fail)?;
        g.tensor(
            &format!("blk.{i}.ffn_norm.weight"),
            &[h],
            GgmlType::F32,
            &l.ffn_norm,
        )
        .map_err(fail)?;
    }
    g.tensor("output_norm.weight", &[h], GgmlType::F32, &w.final_norm)
        .map_err(fail)?;
    g.write(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_words_attach_leading_spaces_to_letters() {
        let w = corpus_words("Hello world, 12 cats!");
        assert_eq!(w, ["Hello", " world", ",", " ", "12", " cats", "!"]);
    }

    #[test]
    fn vocab_has_unique_tokens_and_merges_build_them() {
        let (tokens, merges) = tiny_vocab(400);
        assert_eq!(tokens.len(), 400);
        let set: std::collections::HashSet<_> = tokens.iter().collect();
        assert_eq!(set.len(), tokens.len());
        for (a, b) in &merges {
            assert!(set.contains(&format!("{a}{b}")));
            assert!(set.contains(a) && set.contains(b));
        }
    }
}
