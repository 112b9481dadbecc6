//! The element types kernelgen computes in: one definition for the kernel config, the KV pool,
//! the step program and the TPU compiler's requests.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Element type of q, the KV pool and the attention output (accumulation is always f32).
/// The default, f32, is the engine's KV pool dtype unless told otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
}

/// A dtype name that is none of the accepted spellings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype '{0}': use f32 or bf16 (float32, bfloat16)")]
pub struct UnknownDtype(pub String);

impl Dtype {
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }

    /// The MLIR element type: `f32`, `bf16`.
    pub fn mlir(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }

    /// The numpy / jax.numpy name: `float32`, `bfloat16`.
    pub fn numpy(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::Bf16 => "bfloat16",
        }
    }
}

impl FromStr for Dtype {
    type Err = UnknownDtype;

    /// `f32`/`float32` or `bf16`/`bfloat16`, any case.
    fn from_str(s: &str) -> Result<Dtype, UnknownDtype> {
        [Dtype::F32, Dtype::Bf16]
            .into_iter()
            .find(|d| s.eq_ignore_ascii_case(d.mlir()) || s.eq_ignore_ascii_case(d.numpy()))
            .ok_or_else(|| UnknownDtype(s.to_string()))
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mlir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_round_trips() {
        for d in [Dtype::F32, Dtype::Bf16] {
            for s in [d.mlir(), d.numpy(), &d.mlir().to_uppercase()] {
                assert_eq!(s.parse::<Dtype>(), Ok(d));
            }
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(serde_json::from_str::<Dtype>(&json).unwrap(), d);
        }
        assert!("f16".parse::<Dtype>().is_err());
    }
}
