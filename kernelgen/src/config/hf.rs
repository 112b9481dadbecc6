//! Attention geometry from a Hugging Face `config.json`.

use super::{ConfigError, Geometry};
use std::path::Path;

/// What a Hugging Face config says about attention.
#[derive(Clone, Debug, PartialEq)]
pub struct HfAttention {
    pub geometry: Geometry,
    /// `sliding_window`, when the config enables it (`use_sliding_window` absent or true).
    pub sliding_window: Option<u32>,
    /// `attn_logit_softcapping` (Gemma 2 style).
    pub soft_cap: Option<f32>,
    /// `num_hidden_layers`.
    pub num_layers: Option<u32>,
}

fn read_u32(v: &serde_json::Value, key: &str) -> Option<Result<u32, String>> {
    let x = v.get(key)?;
    if x.is_null() {
        return None;
    }
    Some(
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("field '{key}' must be a non-negative integer, found {x}")),
    )
}

/// Reads heads, KV heads, head size, sliding window and soft cap from `config.json`.
///
/// `num_key_value_heads` defaults to `num_attention_heads` (multi-head attention) and `head_dim` to
/// `hidden_size / num_attention_heads`, as in `transformers`.
pub fn geometry_from_hf_config(path: &Path) -> Result<HfAttention, ConfigError> {
    let fail = |reason: String| ConfigError::HfConfig {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    // Multimodal configs nest the language model under text_config.
    let v = v.get("text_config").unwrap_or(&v);
    let heads = read_u32(v, "num_attention_heads")
        .ok_or_else(|| fail("missing field 'num_attention_heads'".into()))?
        .map_err(&fail)?;
    let kv_heads = read_u32(v, "num_key_value_heads")
        .unwrap_or(Ok(heads))
        .map_err(&fail)?;
    let head_dim = match read_u32(v, "head_dim") {
        Some(d) => d.map_err(&fail)?,
        None => {
            let hidden = read_u32(v, "hidden_size")
                .ok_or_else(|| fail("neither 'head_dim' nor 'hidden_size' is set".into()))?
                .map_err(&fail)?;
            if heads == 0 || hidden % heads != 0 {
                return Err(fail(format!(
                    "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
                )));
            }
            hidden / heads
        }
    };
    let window_on = v
        .get("use_sliding_window")
        .and_then(|x| x.as_bool())
        .unwrap_or(true);
    let sliding_window = match read_u32(v, "sliding_window") {
        Some(w) if window_on => Some(w.map_err(&fail)?),
        _ => None,
    };
    let soft_cap = v
        .get("attn_logit_softcapping")
        .and_then(|x| x.as_f64())
        .map(|c| c as f32);
    Ok(HfAttention {
        geometry: Geometry {
            num_q_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
        },
        sliding_window,
        soft_cap,
        num_layers: read_u32(v, "num_hidden_layers").and_then(|r| r.ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kg-hf-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.json");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn llama_style_config() {
        let p = write(
            "llama",
            r#"{"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
                "sliding_window": null, "rope_theta": 500000.0}"#,
        );
        let a = geometry_from_hf_config(&p).unwrap();
        assert_eq!(
            a.geometry,
            Geometry {
                num_q_heads: 32,
                num_kv_heads: 8,
                head_dim: 128
            }
        );
        assert_eq!(a.sliding_window, None);
    }

    #[test]
    fn qwen_window_disabled_and_gemma_cap() {
        let p = write(
            "qwen",
            r#"{"hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
                "sliding_window": 131072, "use_sliding_window": false}"#,
        );
        assert_eq!(geometry_from_hf_config(&p).unwrap().sliding_window, None);
        let p = write(
            "gemma",
            r#"{"hidden_size": 2304, "num_attention_heads": 8, "num_key_value_heads": 4,
                "head_dim": 256, "sliding_window": 4096, "attn_logit_softcapping": 50.0}"#,
        );
        let a = geometry_from_hf_config(&p).unwrap();
        assert_eq!(a.geometry.head_dim, 256);
        assert_eq!(a.sliding_window, Some(4096));
        assert_eq!(a.soft_cap, Some(50.0));
    }

    #[test]
    fn unreadable_and_malformed_configs_name_the_problem() {
        let missing = geometry_from_hf_config(Path::new("/nonexistent/config.json"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/config.json"), "{missing}");
        let p = write("bad", "{not json");
        assert!(geometry_from_hf_config(&p)
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        let p = write("noheads", r#"{"hidden_size": 64}"#);
        assert!(geometry_from_hf_config(&p)
            .unwrap_err()
            .to_string()
            .contains("num_attention_heads"));
    }
}
