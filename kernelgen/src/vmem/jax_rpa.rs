//! VMEM model of JAX's Pallas TPU `ragged_paged_attention` (jax 0.12.0.1,
//! `jax/experimental/pallas/ops/tpu/ragged_paged_attention/kernel.py`).
//!
//! Grid `(num_q_heads / hq_blk, cdiv(max_num_tokens, bq))`. Per grid step the kernel holds:
//!
//! | buffer | shape | dtype | source |
//! |---|---|---|---|
//! | `kv_bufs` | `(2, bkv, page_size, hkvc_blk, head_dim)` | kv | `double_buf_scratch`, DMA double buffer |
//! | `l_ref`, `m_ref` | `(hkv_blk, bq*G, 128)` | f32 | `lm_scratch` (128 lanes: no unaligned slicing) |
//! | `acc_ref` | `(bq, hq_blk, head_dim)` | f32 | `acc_scratch` |
//! | q window | `(bq, hq_blk, head_dim)` x 2 | q | `q_block_spec` input, pipelined |
//! | o window | `(bq, hq_blk, head_dim)` x 2 | q | `out_specs`, pipelined |
//! | internal scratch | per target | u32 | Mosaic, every kernel |
//!
//! Padding (Mosaic infer-memref-layout): minor dim to 128 lanes, second-minor to the dtype's
//! sublane tile ([`Target::sublane_tile`]). Verified byte for byte against the compiler's
//! allocation listing (`padding_matches_compiler_dumps` in `vmem/mod.rs`).

use super::spill::SpillFeatures;
use super::{buffer, ModelAccount, Note, VmemError};
use crate::config::{Dtype, KernelConfig};
use crate::target::Target;

/// `get_min_heads_per_blk`: (q heads, combined kv heads) per head block.
///
/// Combined KV heads (2 * num_kv_heads) must be "XLA fully tileable": divisible by the dtype's
/// packing (2 for bf16) with the quotient in {1, 2, 4, 8} or a multiple of 8. A block holds 8 *
/// packing combined heads when they divide evenly (and the matching q heads tile too), otherwise
/// all heads.
pub fn heads_per_block(
    num_q_heads: u64,
    num_kv_heads: u64,
    dtype: Dtype,
) -> Result<(u64, u64), String> {
    let packing = 4 / dtype.bytes();
    let tileable = |x: u64| {
        x.is_multiple_of(packing)
            && (matches!(x / packing, 1 | 2 | 4 | 8) || (x / packing).is_multiple_of(8))
    };
    let combined = 2 * num_kv_heads;
    if !tileable(combined) {
        return Err(format!(
            "2 * num_kv_heads = {combined} cannot be XLA fully tiled for {dtype} (needs a multiple of {packing} \
             whose quotient is 1, 2, 4, 8 or a multiple of 8); jax raises NotImplementedError"
        ));
    }
    let ratio = num_q_heads / num_kv_heads;
    let max_tiling = 8 * packing;
    let min_combined = if combined.is_multiple_of(max_tiling) {
        max_tiling
    } else {
        combined
    };
    let min_q = min_combined / 2 * ratio;
    if tileable(min_q) {
        Ok((min_q, min_combined))
    } else {
        Ok((num_q_heads, combined))
    }
}

pub fn account(cfg: &KernelConfig, t: &Target) -> Result<ModelAccount, VmemError> {
    let g = cfg.geometry();
    let dtype = cfg.dtype();
    let (hq, hkv, d) = (
        g.num_q_heads as u64,
        g.num_kv_heads as u64,
        g.head_dim as u64,
    );
    let (hq_blk, hkvc_blk) =
        heads_per_block(hq, hkv, dtype).map_err(|reason| VmemError::Unsupported {
            kernel: "jax-rpa",
            reason,
        })?;
    // Pallas TPU BlockSpec rule: a block's second-minor dim must be divisible by 8 or equal the
    // array's (measured: f32 MHA gives hq_blk = 4 and fails to lower).
    if !hq_blk.is_multiple_of(8) && hq_blk != hq {
        return Err(VmemError::Unsupported {
            kernel: "jax-rpa",
            reason: format!(
                "its q block (q_block, {hq_blk} heads, head_dim) has a second-minor dim that is neither a multiple \
                 of 8 nor num_q_heads = {hq}; Pallas TPU cannot lower it"
            ),
        });
    }
    let hkv_blk = hkvc_blk / 2;
    let group = hq / hkv;
    let p = cfg.page_size() as u64;
    let bq = cfg.q_block() as u64;
    let bkv = cfg.kv_pages_block() as u64;
    let mut notes = vec![Note::JaxHeads {
        q: hq_blk,
        combined_kv: hkvc_blk,
        blocks: hq / hq_blk,
    }];
    if d != 128 {
        notes.push(Note::JaxHeadDim(d));
    }
    let buffers = vec![
        buffer(
            t,
            "kv_bufs",
            "KV block, double-buffered DMA target",
            dtype,
            &[2, bkv, p, hkvc_blk, d],
            1,
        ),
        buffer(
            t,
            "l_ref",
            "online-softmax denominator",
            Dtype::F32,
            &[hkv_blk, bq * group, 128],
            1,
        ),
        buffer(
            t,
            "m_ref",
            "online-softmax running max",
            Dtype::F32,
            &[hkv_blk, bq * group, 128],
            1,
        ),
        buffer(
            t,
            "acc_ref",
            "output accumulator",
            Dtype::F32,
            &[bq, hq_blk, d],
            1,
        ),
        buffer(
            t,
            "q window",
            "pipelined q block (BlockSpec, 2 buffers)",
            dtype,
            &[bq, hq_blk, d],
            2,
        ),
        buffer(
            t,
            "o window",
            "pipelined output block (BlockSpec, 2 buffers)",
            dtype,
            &[bq, hq_blk, d],
            2,
        ),
        buffer(
            t,
            "internal scratch",
            "Mosaic internal scratch",
            Dtype::F32,
            &[t.internal_scratch_bytes / 512, 128],
            1,
        ),
    ];
    let features = SpillFeatures {
        rows: bq * group,
        keys: bkv * p,
        head_dim: d,
        kv_heads_per_block: hkv_blk,
        kv_dtype_bytes: dtype.bytes(),
        group,
    };
    Ok(ModelAccount {
        buffers,
        features,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_per_block_matches_jax() {
        // examples worked from get_min_heads_per_blk (shared/research/rpa-kernel.md)
        assert_eq!(heads_per_block(32, 8, Dtype::Bf16), Ok((32, 16)));
        assert_eq!(heads_per_block(8, 2, Dtype::Bf16), Ok((8, 4)));
        assert_eq!(heads_per_block(32, 32, Dtype::Bf16), Ok((8, 16)));
        assert_eq!(heads_per_block(24, 8, Dtype::Bf16), Ok((24, 16)));
        assert_eq!(heads_per_block(8, 1, Dtype::Bf16), Ok((8, 2)));
        assert!(heads_per_block(9, 3, Dtype::Bf16).is_err());
        assert_eq!(heads_per_block(32, 8, Dtype::F32), Ok((16, 8)));
        assert_eq!(heads_per_block(16, 16, Dtype::F32), Ok((4, 8)));
    }

    /// The user-reported failure: Llama-3-8B, page_size 128, bq 16, bkv 16 on v5p. The compiler's
    /// stage-1 size (kernel scratch + internal scratch) is "16.79M" = 17,600,512 bytes.
    #[test]
    fn reproduces_the_16_79m_scratch_figure() {
        use crate::config::{Geometry, KernelParams};
        let mut p = KernelParams::with_defaults(
            Geometry {
                num_q_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
            },
            16,
            16,
        );
        p.page_size = 128;
        p.pages_per_seq = 32;
        let cfg = KernelConfig::new(p).unwrap();
        let t = Target::find("v5p").unwrap();
        let a = account(&cfg, &t).unwrap();
        let stage1: u64 = a
            .buffers
            .iter()
            .filter(|b| !b.name.ends_with("window"))
            .map(|b| b.bytes)
            .sum();
        assert_eq!(stage1, 17_600_512);
    }
}
