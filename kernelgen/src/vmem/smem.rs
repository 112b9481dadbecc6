//! SMEM: the scalar-prefetched arrays (kv_lens, page_indices, cu_q_lens, num_seqs, and the
//! kernel's own small state array) live in SMEM, whose capacity is 1 MiB per core (v4-v7x).
//!
//! Layout (from the compiler's allocation listing, libtpu 0.0.50.1): each prefetched operand is
//! padded to rows of 128 words (512 bytes): `kv_lens i32[64]` takes 512 B, `page_indices
//! i32[64, 64]` takes 64 x 128 x 4 = 32 KiB. On top, the compiler reserves a little SMEM for its
//! own constants: an overflow with 1 MiB + 2 KiB of operands reported "exceeded by 3.1K", so
//! about 1.1 KiB.

use super::{Dims, KernelModel, Verdict};
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
    pub shape: Dims,
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
    account_shape(
        cfg.max_num_seqs() as u64,
        cfg.pages_per_seq() as u64,
        t,
        kernel,
    )
}

/// The largest page tables that fit SMEM, one knob at a time: the most sequences at the
/// config's pages per sequence, and the most pages per sequence at its sequence count (`None`
/// where not even one fits). A fitting config gets its own figures or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SmemRoom {
    pub max_num_seqs: Option<u64>,
    pub pages_per_seq: Option<u64>,
}

/// [`SmemRoom`] of `cfg` on `t` (binary search over the one formula [`account`] uses).
pub fn room(cfg: &KernelConfig, t: &Target, kernel: KernelModel) -> SmemRoom {
    let (s, pps) = (cfg.max_num_seqs() as u64, cfg.pages_per_seq() as u64);
    let fits = |s: u64, pps: u64| account_shape(s, pps, t, kernel).verdict == Verdict::Fits;
    // SMEM grows with both knobs, so the fitting values are a prefix: find its end.
    let largest = |f: &dyn Fn(u64) -> bool| -> Option<u64> {
        if !f(1) {
            return None;
        }
        let (mut lo, mut hi) = (1u64, 1u64 << 32);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if f(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Some(lo)
    };
    SmemRoom {
        max_num_seqs: largest(&|x| fits(x, pps)),
        pages_per_seq: largest(&|x| fits(s, x)),
    }
}

fn account_shape(s: u64, pps: u64, t: &Target, kernel: KernelModel) -> SmemReport {
    let item = |name: &'static str, shape: &[u64]| SmemItem {
        name,
        shape: Dims::from_slice(shape),
        bytes: padded_i32(shape),
    };
    let mut items = Vec::with_capacity(6);
    items.push(item("kv_lens", &[s]));
    match kernel {
        KernelModel::JaxRpa => items.push(item("page_indices", &[s, pps])),
        KernelModel::Kernelgen => items.push(item("page_indices (flattened)", &[s * pps])),
    }
    items.push(item("cu_q_lens", &[s + 1]));
    if kernel == KernelModel::JaxRpa {
        items.push(item("kernel state (seq_idx, buf_idx)", &[2]));
    }
    items.push(item("num_seqs", &[1]));
    items.push(SmemItem {
        name: "compiler reserved",
        shape: Dims::new(),
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
    fn room_is_the_edge_of_what_fits() {
        let t = Target::find("v5p").unwrap();
        for kernel in [KernelModel::JaxRpa, KernelModel::Kernelgen] {
            for (s, pps) in [(1024u64, 260u64), (64, 64), (128, 4096), (7, 16)] {
                let mut p = crate::config::KernelParams::with_defaults(
                    crate::config::Geometry {
                        num_q_heads: 32,
                        num_kv_heads: 8,
                        head_dim: 128,
                    },
                    16,
                    16,
                );
                p.max_num_seqs = s as u32;
                p.pages_per_seq = pps as u32;
                p.total_pages = (s * pps) as u32;
                let cfg = KernelConfig::new(p).unwrap();
                let r = room(&cfg, &t, kernel);
                let fits = |s, p| account_shape(s, p, &t, kernel).verdict == Verdict::Fits;
                if let Some(m) = r.max_num_seqs {
                    assert!(
                        fits(m, pps) && !fits(m + 1, pps),
                        "{kernel:?} {s}x{pps}: {m}"
                    );
                }
                if let Some(m) = r.pages_per_seq {
                    assert!(fits(s, m) && !fits(s, m + 1), "{kernel:?} {s}x{pps}: {m}");
                }
                assert_eq!(fits(s, pps), r.max_num_seqs.is_some_and(|m| m >= s));
            }
        }
    }

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
