//! Named model geometries (attention heads and head size as published in each model's
//! `config.json`).

use super::{ConfigError, Geometry};

/// A named attention geometry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub model: &'static str,
    pub geometry: Geometry,
    /// Decoder layers (for page-pool memory: every layer has its own KV pages).
    pub num_layers: u32,
}

const fn preset(
    name: &'static str,
    model: &'static str,
    q: u32,
    kv: u32,
    d: u32,
    layers: u32,
) -> Preset {
    Preset {
        name,
        model,
        num_layers: layers,
        geometry: Geometry {
            num_q_heads: q,
            num_kv_heads: kv,
            head_dim: d,
        },
    }
}

/// Known presets; `llama3-8b` is the default.
pub const PRESETS: &[Preset] = &[
    preset("llama3-8b", "meta-llama/Meta-Llama-3-8B", 32, 8, 128, 32),
    preset("llama3-70b", "meta-llama/Meta-Llama-3-70B", 64, 8, 128, 80),
    preset("llama3.2-1b", "meta-llama/Llama-3.2-1B", 32, 8, 64, 16),
    preset("mistral-7b", "mistralai/Mistral-7B-v0.1", 32, 8, 128, 32),
    preset("qwen2.5-7b", "Qwen/Qwen2.5-7B", 28, 4, 128, 28),
    preset(
        "smollm2-135m",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        9,
        3,
        64,
        30,
    ),
];

impl Preset {
    pub fn find(name: &str) -> Result<Preset, ConfigError> {
        PRESETS
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| ConfigError::UnknownPreset {
                name: name.to_string(),
                known: Self::names(),
            })
    }

    pub fn names() -> String {
        PRESETS
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let err = Preset::find("llama9").unwrap_err().to_string();
        assert!(
            err.contains("llama9") && err.contains("smollm2-135m"),
            "{err}"
        );
        assert_eq!(Preset::find("LLAMA3-8B").unwrap().geometry.num_q_heads, 32);
    }

    #[test]
    fn every_preset_is_a_valid_gqa_geometry() {
        for p in PRESETS {
            assert_eq!(
                p.geometry.num_q_heads % p.geometry.num_kv_heads,
                0,
                "{}",
                p.name
            );
        }
    }
}
