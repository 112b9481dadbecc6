//! VMEM model of the Pallas TPU kernel kernelgen emits (`templates/rpa.pallas.py.tera`,
//! rendered by `emit::pallas`).
//!
//! Grid `(num_kv_heads / h, cdiv(max_num_tokens, q_block))` with `h` KV heads per block
//! ([`crate::emit::pallas::kv_heads_per_block`]) and `rows = q_block * group` folded query rows
//! per KV head. Per grid step the kernel holds (names as in the module's `VMEM_BUFFERS`):
//!
//! | buffer | shape | dtype | source |
//! |---|---|---|---|
//! | `q_window` | `(h, rows, head_dim)` x 2 | q | `window` BlockSpec input, pipelined |
//! | `out_window` | `(h, rows, head_dim)` x 2 | q | `out_specs`, pipelined |
//! | `kv_buf` | `(2, kv_pages_block, 2h, page_size, head_dim)` | kv | scratch, the DMA double buffer (head-major pages, as the pool) |
//! | `m`, `l` | `(h, rows, 128)` | f32 | scratch, lane-replicated softmax state |
//! | `acc` | `(h, rows, head_dim)` | f32 | scratch, unnormalized output |
//! | internal scratch | per target | u32 | Mosaic, every kernel |
//!
//! Padding (Mosaic's memref layout, [`super::padded`]): minor dim to 128 lanes (head_dim 64
//! occupies full 128-lane rows), second-minor to the dtype's sublane tile (`rows` and
//! `page_size`).
//! The shapes are taken from [`PallasDims::vmem_buffers`], the Rust mirror of the module's
//! `VMEM_BUFFERS`, which the interpret-mode test checks against the rendered module.

use super::spill::SpillFeatures;
use super::{buffer, Buffer, ModelAccount, Note, VmemError};
use crate::config::{Dtype, KernelConfig};
use crate::emit::pallas::{PallasDims, VmemBuffer};
use crate::target::Target;

/// What each of the module's buffers holds, for the itemized report.
fn describe(name: &str) -> (&'static str, &'static str) {
    match name {
        "q_window" => ("q_window", "pipelined q block (BlockSpec, 2 buffers)"),
        "out_window" => (
            "out_window",
            "pipelined output block (BlockSpec, 2 buffers)",
        ),
        "kv_buf" => ("kv_buf", "KV block, double-buffered page DMA target"),
        "m" => ("m", "online-softmax running max (lane-replicated)"),
        "l" => ("l", "online-softmax denominator (lane-replicated)"),
        "acc" => ("acc", "output accumulator"),
        _ => ("?", "unknown buffer"),
    }
}

fn to_buffer(t: &Target, b: &VmemBuffer) -> Buffer {
    let (name, what) = describe(&b.name);
    let dtype = b
        .dtype
        .parse::<Dtype>()
        .expect("PallasDims names its dtypes");
    // kv_buf's two copies are one scratch array with a leading axis of 2; the pipelined
    // windows are two separate allocations.
    if b.name == "kv_buf" {
        let mut shape = super::Dims::from_slice(&[b.copies as u64]);
        shape.extend_from_slice(&b.shape);
        buffer(t, name, what, dtype, &shape, 1)
    } else {
        buffer(t, name, what, dtype, &b.shape, b.copies as u64)
    }
}

pub fn account(cfg: &KernelConfig, t: &Target) -> Result<ModelAccount, VmemError> {
    let dims = PallasDims::new(cfg);
    let mut buffers: Vec<Buffer> = dims
        .vmem_buffers()
        .iter()
        .map(|b| to_buffer(t, b))
        .collect();
    buffers.push(buffer(
        t,
        "internal scratch",
        "Mosaic internal scratch",
        Dtype::F32,
        &[t.internal_scratch_bytes / 512, 128],
        1,
    ));
    let mut notes = vec![Note::KernelgenHeads {
        q: dims.q_heads_per_block as u64,
        kv: dims.kv_heads_per_block as u64,
        blocks: dims.num_head_blocks as u64,
        rows: dims.rows as u64,
    }];
    if dims.head_dim < 128 {
        notes.push(Note::KernelgenNarrowHeadDim(dims.head_dim as u64));
    }
    let features = SpillFeatures {
        rows: dims.rows as u64,
        // the kernel scores a KV block a chunk of pages at a time: the chunk sets the temporaries
        keys: dims.chunk_pages as u64 * dims.page_size as u64,
        head_dim: dims.head_dim as u64,
        kv_heads_per_block: dims.kv_heads_per_block as u64,
        kv_dtype_bytes: cfg.dtype().bytes(),
        group: dims.group as u64,
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
    use crate::config::{Geometry, KernelParams};

    fn llama(page: u32, q: u32, kv: u32) -> KernelConfig {
        let mut p = KernelParams::with_defaults(
            Geometry {
                num_q_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
            },
            q,
            kv,
        );
        p.page_size = page;
        p.pages_per_seq = 64;
        KernelConfig::new(p).unwrap()
    }

    /// Sizes from the TPU compiler's allocation listing for this config on v5p (libtpu
    /// 0.0.50.1, `--xla_jf_dump_llo_text`, `*pre-finalize-registers-and-allocations*`):
    /// `bf16[2,16,16,64,128]{...T(8,128)(2,1)} size 0x800000 'scratch operand'` (head-major
    /// pages), three
    /// `f32[8,64,128] size 0x40000 'scratch operand'`, `u32[72,128] size 0x9000 'internal scratch'`.
    #[test]
    fn buffers_are_padded_module_buffers() {
        let t = Target::find("v5p").unwrap();
        let a = account(&llama(64, 16, 16), &t).unwrap();
        let internal = a
            .buffers
            .iter()
            .find(|b| b.name == "internal scratch")
            .unwrap();
        assert_eq!(internal.bytes, 0x9000);
        let bytes = |n: &str| a.buffers.iter().find(|b| b.name == n).unwrap().bytes;
        // kv_buf bf16[2, 16, 16, 64, 128]: 64-slot pages are whole bf16 tiles
        assert_eq!(bytes("kv_buf"), 0x800000);
        // q window bf16[8, 64, 128] x 2 (rows = 16 tokens x 4 q heads per KV head)
        assert_eq!(bytes("q_window"), 2 * 8 * 64 * 128 * 2);
        // m/l f32[8, 64, 128]; acc f32[8, 64, 128]
        assert_eq!(bytes("m"), 0x40000);
        assert_eq!(bytes("l"), 0x40000);
        assert_eq!(bytes("acc"), 0x40000);
        // SmolLM2: head_dim 64 takes 128 lanes; 6 combined heads are a leading dim, unpadded
        let mut p = KernelParams::with_defaults(
            Geometry {
                num_q_heads: 9,
                num_kv_heads: 3,
                head_dim: 64,
            },
            16,
            4,
        );
        p.page_size = 16;
        let a = account(&KernelConfig::new(p).unwrap(), &t).unwrap();
        let kv = a.buffers.iter().find(|b| b.name == "kv_buf").unwrap();
        assert_eq!(kv.padded_shape[..], [2, 4, 6, 16, 128]);
    }
}
