//! SMEM: the scalar-prefetched arrays (kv_lens, page_indices, cu_q_lens, num_seqs, and the
//! kernel's own small state array) live in SMEM, whose capacity is 1 MiB per core (v4-v7x).
//!
//! Layout (from the compiler's allocation listing, libtpu 0.0.50.1): each prefetched operand is
//! padded to rows of 128 words (512 bytes): `kv_lens i32[64]` takes 512 B, `page_indices
//! i32[64, 64]` takes 64 x 128 x 4 = 32 KiB. On top, the compiler reserves a little SMEM for its
//! own constants: an overflow with 1 MiB + 2 KiB of operands reported "exceeded by 3.1K", so
//! about 1.1 KiB.

use super::{KernelModel, Verdict};
use crate::config::KernelConfig;
use crate::target::Target;
use serde::Serialize;

/// SMEM the compiler keeps for itself, measured as above.
const RESERVED_BYTES: u64 = 1126;
/// The reserved figure is read off a message rounded to 0.1K.
const UNCERTAINTY_BYTES: u64 = 64;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SmemItem {
    pub name: &'static str,
    pub shape: Vec<u64>,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SmemReport {
    pub items: Vec<SmemItem>,
    pub total_bytes: u64,
    pub capacity_bytes: u64,
    pub verdict: Verdict,
}

/// Bytes of an i32 array in SMEM: the minor dim padded to 128 words.
fn padded_i32(shape: &[u64]) -> u64 {
    let (minor, rows) = match shape.split_last() {
        Some((m, rest)) => (*m, rest.iter().product::<u64>()),
        None => (1, 1),
    };
    rows * minor.div_ceil(128) * 128 * 4
}

/// SMEM of `kernel`'s scalar-prefetched operands. JAX's kernel prefetches page_indices as a 2-D
/// array (each row padded to 128 words) and keeps a 2-word state array; kernelgen's flattens
/// page_indices to 1-D and keeps its state in registers.
pub fn account(cfg: &KernelConfig, t: &Target, kernel: KernelModel) -> SmemReport {
    let s = cfg.max_num_seqs() as u64;
    let pps = cfg.pages_per_seq() as u64;
    let mut arrays: Vec<(&'static str, Vec<u64>)> = vec![("kv_lens", vec![s])];
    match kernel {
        KernelModel::JaxRpa => arrays.push(("page_indices", vec![s, pps])),
        KernelModel::Kernelgen => arrays.push(("page_indices (flattened)", vec![s * pps])),
    }
    arrays.push(("cu_q_lens", vec![s + 1]));
    if kernel == KernelModel::JaxRpa {
        arrays.push(("kernel state (seq_idx, buf_idx)", vec![2]));
    }
    arrays.push(("num_seqs", vec![1]));
    let mut items: Vec<SmemItem> = arrays
        .into_iter()
        .map(|(name, shape)| SmemItem {
            name,
            bytes: padded_i32(&shape),
            shape,
        })
        .collect();
    items.push(SmemItem {
        name: "compiler reserved",
        shape: vec![],
        bytes: RESERVED_BYTES,
    });
    let total_bytes = items.iter().map(|i| i.bytes).sum();
    let verdict = if total_bytes + UNCERTAINTY_BYTES <= t.smem_bytes {
        Verdict::Fits
    } else if total_bytes > t.smem_bytes + UNCERTAINTY_BYTES {
        Verdict::DoesNotFit
    } else {
        Verdict::Uncertain
    };
    SmemReport {
        items,
        total_bytes,
        capacity_bytes: t.smem_bytes,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_matches_compiler_listing() {
        assert_eq!(padded_i32(&[64]), 512);
        assert_eq!(padded_i32(&[64, 64]), 32768);
        assert_eq!(padded_i32(&[65]), 512);
        assert_eq!(padded_i32(&[129]), 1024);
        assert_eq!(padded_i32(&[64, 4096]), 1 << 20);
        // kernelgen's flattened page_indices i32[16 * 16]: 'u8[1024] prefetched SMEM operand 1'
        assert_eq!(padded_i32(&[256]), 1024);
    }
}
