//! A Hugging Face `config.json`, read once for both of its readers: the kernel's attention
//! geometry (`kernelgen build --hf-config`, any architecture) and the llama loader
//! ([`super::safetensors`], which adds its own checks).
//!
//! Parsed with serde into [`HfConfig`]; a field of the wrong type is an error naming the field
//! (`num_attention_heads: invalid type: string "x", expected u32`). Absent and `null` fields are
//! `None`. Multimodal configs nest the language model under `text_config`
//! ([`HfConfig::language`]).

use serde::Deserialize;
use std::path::Path;

/// `bos_token_id` / `eos_token_id`: one id or a list.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn ids(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// The fields of `config.json` kernelgen reads; others are ignored.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    pub hidden_size: Option<u32>,
    pub num_attention_heads: Option<u32>,
    /// Defaults to `num_attention_heads` (multi-head attention), as in `transformers`.
    pub num_key_value_heads: Option<u32>,
    /// Defaults to `hidden_size / num_attention_heads`, as in `transformers`.
    pub head_dim: Option<u32>,
    pub intermediate_size: Option<u32>,
    pub num_hidden_layers: Option<u32>,
    pub vocab_size: Option<u32>,
    pub rope_theta: Option<f64>,
    pub rms_norm_eps: Option<f64>,
    pub max_position_embeddings: Option<u32>,
    pub tie_word_embeddings: Option<bool>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
    pub rope_scaling: Option<serde_json::Value>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub sliding_window: Option<u32>,
    /// Qwen-style switch: a `sliding_window` only applies when this is absent or true.
    pub use_sliding_window: Option<bool>,
    /// Gemma 2's logit soft cap.
    pub attn_logit_softcapping: Option<f64>,
    pub text_config: Option<Box<HfConfig>>,
}

/// The attention shape a config describes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    /// `sliding_window`, when the config enables it.
    pub sliding_window: Option<u32>,
    pub soft_cap: Option<f32>,
    pub num_layers: Option<u32>,
}

impl HfConfig {
    /// Reads and parses `path`; the error says what is wrong (unreadable, not JSON, a field of
    /// the wrong type, by name) without the path, which callers add.
    pub fn read(path: &Path) -> Result<HfConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        HfConfig::parse(&text)
    }

    pub fn parse(text: &str) -> Result<HfConfig, String> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            if e.inner().is_data() {
                format!("{}: {}", e.path(), e.inner())
            } else {
                format!("not valid JSON: {}", e.inner())
            }
        })
    }

    /// The language model's config: `text_config` when present, else this one.
    pub fn language(&self) -> &HfConfig {
        self.text_config.as_deref().unwrap_or(self)
    }

    /// Heads, KV heads, head size, sliding window and soft cap of the language model.
    pub fn attention(&self) -> Result<Attention, String> {
        let c = self.language();
        let heads = c
            .num_attention_heads
            .ok_or("missing field 'num_attention_heads'")?;
        let kv_heads = c.num_key_value_heads.unwrap_or(heads);
        let head_dim = match c.head_dim {
            Some(d) => d,
            None => {
                let hidden = c
                    .hidden_size
                    .ok_or("neither 'head_dim' nor 'hidden_size' is set")?;
                if heads == 0 || !hidden.is_multiple_of(heads) {
                    return Err(format!(
                        "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
                    ));
                }
                hidden / heads
            }
        };
        let window_on = c.use_sliding_window.unwrap_or(true);
        Ok(Attention {
            num_q_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            sliding_window: c.sliding_window.filter(|_| window_on),
            soft_cap: c.attn_logit_softcapping.map(|x| x as f32),
            num_layers: c.num_hidden_layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_style_config() {
        let c = HfConfig::parse(
            r#"{"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
                "sliding_window": null, "rope_theta": 500000.0, "eos_token_id": [1, 2]}"#,
        )
        .unwrap();
        let a = c.attention().unwrap();
        assert_eq!((a.num_q_heads, a.num_kv_heads, a.head_dim), (32, 8, 128));
        assert_eq!(a.sliding_window, None);
        assert_eq!(c.eos_token_id.unwrap().ids(), vec![1, 2]);
    }

    #[test]
    fn qwen_window_disabled_gemma_cap_and_nested_text_config() {
        let qwen = r#"{"hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
                       "sliding_window": 131072, "use_sliding_window": false}"#;
        assert_eq!(
            HfConfig::parse(qwen)
                .unwrap()
                .attention()
                .unwrap()
                .sliding_window,
            None
        );
        let gemma = r#"{"text_config": {"hidden_size": 2304, "num_attention_heads": 8,
                        "num_key_value_heads": 4, "head_dim": 256, "sliding_window": 4096,
                        "attn_logit_softcapping": 50.0}}"#;
        let a = HfConfig::parse(gemma).unwrap().attention().unwrap();
        assert_eq!(a.head_dim, 256);
        assert_eq!(a.sliding_window, Some(4096));
        assert_eq!(a.soft_cap, Some(50.0));
    }

    #[test]
    fn malformed_configs_name_the_problem() {
        assert!(HfConfig::parse("{not json")
            .unwrap_err()
            .contains("not valid JSON"));
        let e = HfConfig::parse(r#"{"num_attention_heads": "x"}"#).unwrap_err();
        assert!(e.starts_with("num_attention_heads: invalid type"), "{e}");
        let e = HfConfig::parse(r#"{"hidden_size": 64}"#)
            .unwrap()
            .attention()
            .unwrap_err();
        assert!(e.contains("num_attention_heads"), "{e}");
    }
}
