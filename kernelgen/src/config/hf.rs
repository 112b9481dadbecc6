//! Attention geometry from a Hugging Face `config.json`, read by the runtime's one
//! [`runtime::model::hf_config::HfConfig`] reader.

use super::{ConfigError, Geometry};
use runtime::model::hf_config::HfConfig;
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

/// Reads heads, KV heads, head size, sliding window and soft cap from `config.json` (of the
/// language model: `text_config` in multimodal configs).
pub fn geometry_from_hf_config(path: &Path) -> Result<HfAttention, ConfigError> {
    let fail = |reason: String| ConfigError::HfConfig {
        path: path.display().to_string(),
        reason,
    };
    let a = HfConfig::read(path)
        .and_then(|c| c.attention())
        .map_err(fail)?;
    Ok(HfAttention {
        geometry: Geometry {
            num_q_heads: a.num_q_heads,
            num_kv_heads: a.num_kv_heads,
            head_dim: a.head_dim,
        },
        sliding_window: a.sliding_window,
        soft_cap: a.soft_cap,
        num_layers: a.num_layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_malformed_configs_name_the_file_and_the_problem() {
        let missing = geometry_from_hf_config(Path::new("/nonexistent/config.json"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/config.json"), "{missing}");
        let dir = std::env::temp_dir().join(format!("kg-hf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.json");
        std::fs::write(&p, r#"{"hidden_size": 64}"#).unwrap();
        let e = geometry_from_hf_config(&p).unwrap_err().to_string();
        assert!(
            e.contains("num_attention_heads") && e.contains("config.json"),
            "{e}"
        );
        std::fs::write(&p, r#"{"hidden_size": 4096, "num_attention_heads": 32}"#).unwrap();
        assert_eq!(geometry_from_hf_config(&p).unwrap().geometry.head_dim, 128);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
