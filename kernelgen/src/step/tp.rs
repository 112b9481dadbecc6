//! Tensor parallelism of the step program: one SPMD program over `tp` devices (Megatron layout).
//!
//! Each device runs the step of a *shard model* ([`shard_config`]): its share of the q heads,
//! the KV heads those q heads read, and its share of the MLP's intermediate size; the embedding,
//! the norms and the LM head are whole on every device. Device `d` holds
//! - q heads `[d Hq/tp, (d+1) Hq/tp)` and the rows of `wqkv` that produce them, with the K/V rows
//!   of the KV heads they read (`Hkv/tp` heads when `tp` divides `Hkv`; one head, replicated on
//!   `tp/Hkv` devices, when `Hkv` divides `tp`, as tpu-inference does past the KV head count);
//! - the columns of `wo` those q heads feed (row-parallel: each device's output is a partial
//!   sum), and the same slice of the gate/up rows and of `w_down`'s columns;
//! - its KV heads' pool: pages are the same indices on every device, so the engine's one page
//!   table serves all of them.
//!
//! The program sums the partial outputs of `wo` and `w_down` across devices
//! (`stablehlo.all_reduce`) and marks every parameter and result manual: XLA compiles it with
//! `num_partitions = tp` and runs one copy per device; every device ends with the same hidden
//! state and logits. `tp = 1` is the single-device program, unchanged.

use crate::config::Geometry;
use crate::vmem::request::per_device;
use runtime::model::{LlamaConfig, Part};
use std::borrow::Cow;

/// Why a tensor-parallel degree cannot serve a model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TpError {
    #[error("--tp 0: the degree of tensor parallelism is at least 1")]
    Zero,
    #[error(
        "--tp {tp}: {q} q heads and {kv} KV heads cannot be split over {tp} devices (q heads \
         divide evenly; KV heads divide evenly, or each is replicated on tp/KV devices); degrees \
         this model can use: {valid}"
    )]
    Heads {
        tp: usize,
        q: usize,
        kv: usize,
        valid: String,
    },
    #[error(
        "--tp {tp}: the intermediate size ({size}) is not divisible by {tp}; degrees this model \
         can use: {valid}"
    )]
    Intermediate {
        tp: usize,
        size: usize,
        valid: String,
    },
}

/// The heads one device of `tp` holds, by the formula `check --tp` and `plan --tp` use
/// ([`crate::vmem::request::per_device`]); `None` when `tp` cannot split them.
fn heads(m: &LlamaConfig, tp: usize) -> Option<(usize, usize)> {
    let g = Geometry {
        num_q_heads: u32::try_from(m.num_q_heads).ok()?,
        num_kv_heads: u32::try_from(m.num_kv_heads).ok()?,
        head_dim: u32::try_from(m.head_dim).ok()?,
    };
    let (g, _) = per_device(g, u32::try_from(tp).ok()?).ok()?;
    Some((g.num_q_heads as usize, g.num_kv_heads as usize))
}

/// The model one device of `tp` runs: its q heads, KV heads and intermediate size.
pub fn shard_config(m: &LlamaConfig, tp: usize) -> Result<LlamaConfig, TpError> {
    if tp == 0 {
        return Err(TpError::Zero);
    }
    let valid = || {
        valid_degrees(m)
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (q, kv) = heads(m, tp).ok_or_else(|| TpError::Heads {
        tp,
        q: m.num_q_heads,
        kv: m.num_kv_heads,
        valid: valid(),
    })?;
    if !m.intermediate_size.is_multiple_of(tp) {
        return Err(TpError::Intermediate {
            tp,
            size: m.intermediate_size,
            valid: valid(),
        });
    }
    Ok(LlamaConfig {
        num_q_heads: q,
        num_kv_heads: kv,
        intermediate_size: m.intermediate_size / tp,
        ..m.clone()
    })
}

/// Every degree [`shard_config`] accepts for `m`, ascending.
pub fn valid_degrees(m: &LlamaConfig) -> Vec<usize> {
    (1..=m.num_q_heads)
        .filter(|&tp| heads(m, tp).is_some() && m.intermediate_size.is_multiple_of(tp))
        .collect()
}

/// The first KV head device `d` holds (its q heads read it and the next ones).
fn kv_head_start(m: &LlamaConfig, tp: usize, d: usize) -> usize {
    let group = m.num_q_heads / m.num_kv_heads;
    d * (m.num_q_heads / tp) / group
}

/// Device `d`'s share of `part` (`full`, laid out as [`Part::dims`] of `m` says), as the shard
/// model's part of the same name: rows of `wqkv` and of the gate/up stack, columns of `wo` and
/// `w_down`; the rest, and every part at `tp` = 1, is `full` itself (borrowed, not copied).
pub fn shard_part<'a>(
    m: &LlamaConfig,
    tp: usize,
    d: usize,
    part: Part,
    full: &'a [f32],
) -> Cow<'a, [f32]> {
    if tp == 1 {
        return Cow::Borrowed(full);
    }
    let (h, hd, f) = (m.hidden_size, m.head_dim, m.intermediate_size);
    let lq = m.num_q_heads / tp;
    let lkv = (m.num_kv_heads / tp).max(1);
    let lf = f / tp;
    let rows = |start: usize, count: usize, width: usize| {
        full[start * width..(start + count) * width].iter().copied()
    };
    let columns = |start: usize, count: usize, width: usize| {
        full.chunks_exact(width)
            .flat_map(move |row| row[start..start + count].iter().copied())
    };
    Cow::Owned(match part {
        Part::Wqkv(_) => {
            let (q_dim, kv_dim) = (m.num_q_heads * hd, m.num_kv_heads * hd);
            let kv0 = kv_head_start(m, tp, d) * hd;
            rows(d * lq * hd, lq * hd, h)
                .chain(rows(q_dim + kv0, lkv * hd, h))
                .chain(rows(q_dim + kv_dim + kv0, lkv * hd, h))
                .collect()
        }
        Part::Wo(_) => columns(d * lq * hd, lq * hd, m.num_q_heads * hd).collect(),
        Part::WGateUp(_) => rows(d * lf, lf, h).chain(rows(f + d * lf, lf, h)).collect(),
        Part::WDown(_) => columns(d * lf, lf, f).collect(),
        Part::Embed | Part::AttnNorm(_) | Part::FfnNorm(_) | Part::FinalNorm | Part::LmHead => {
            return Cow::Borrowed(full);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hq: usize, hkv: usize) -> LlamaConfig {
        verify::fixtures::tiny::TinyConfig {
            num_q_heads: hq,
            num_kv_heads: hkv,
            ..Default::default()
        }
        .llama_config()
    }

    #[test]
    fn degrees_split_q_heads_and_split_or_replicate_kv_heads() {
        let m = config(8, 4);
        assert_eq!(valid_degrees(&m), vec![1, 2, 4, 8]);
        let s = shard_config(&m, 8).unwrap();
        assert_eq!(
            (s.num_q_heads, s.num_kv_heads),
            (1, 1),
            "replicated KV head"
        );
        let s = shard_config(&m, 2).unwrap();
        assert_eq!((s.num_q_heads, s.num_kv_heads), (4, 2));
        assert_eq!(shard_config(&m, 0), Err(TpError::Zero));
        let e = shard_config(&m, 3).unwrap_err().to_string();
        assert!(e.contains("--tp 3") && e.contains("use: 1, 2, 4, 8"), "{e}");
        // KV heads neither divisible by nor dividing the degree.
        let e = shard_config(&config(12, 8), 12).unwrap_err().to_string();
        assert!(
            e.contains("8 KV heads") && e.contains("use: 1, 2, 4"),
            "{e}"
        );
        // SmolLM2's 9 q / 3 KV heads, intermediate 1536: 3 splits both, 9 does not divide 1536.
        let smol = LlamaConfig {
            intermediate_size: 1536,
            ..config(9, 3)
        };
        assert_eq!(valid_degrees(&smol), vec![1, 3]);
        let e = shard_config(&smol, 9).unwrap_err().to_string();
        assert!(
            e.contains("intermediate size (1536)") && e.contains(": 1, 3"),
            "{e}"
        );
    }

    /// The shards of every part put back together are the part: q/k/v rows of device d are
    /// the heads it serves, and a replicated KV head is the one its q heads read.
    #[test]
    fn shards_cover_each_part_exactly() {
        let m = config(8, 4);
        let hd = m.head_dim;
        for tp in [2usize, 4, 8] {
            for part in [Part::Wqkv(0), Part::Wo(0), Part::WGateUp(0), Part::WDown(0)] {
                let dims = part.dims(&m);
                let n: usize = dims.iter().product();
                let full: Vec<f32> = (0..n).map(|i| i as f32).collect();
                let shard_dims = part.dims(&shard_config(&m, tp).unwrap());
                let mut seen = std::collections::BTreeSet::new();
                for d in 0..tp {
                    let s = shard_part(&m, tp, d, part, &full);
                    assert_eq!(
                        s.len(),
                        shard_dims.iter().product::<usize>(),
                        "{part:?} tp {tp}"
                    );
                    seen.extend(s.iter().map(|&x| x as usize));
                }
                let replicated = matches!(part, Part::Wqkv(_)) && tp > m.num_kv_heads;
                if !replicated {
                    assert_eq!(seen.len(), n, "{part:?} tp {tp}: every value once");
                }
            }
            // Device d's first K row is the first row of the KV head its first q head reads.
            let full: Vec<f32> = (0..Part::Wqkv(0).dims(&m).iter().product::<usize>())
                .map(|i| i as f32)
                .collect();
            let h = m.hidden_size;
            let (lq, group) = (m.num_q_heads / tp, m.num_q_heads / m.num_kv_heads);
            for d in 0..tp {
                let s = shard_part(&m, tp, d, Part::Wqkv(0), &full);
                let kv_head = d * lq / group;
                let k_row = m.num_q_heads * hd + kv_head * hd;
                assert_eq!(s[lq * hd * h], (k_row * h) as f32, "tp {tp} device {d}");
            }
        }
    }
}
