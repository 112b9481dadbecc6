//! The search space of one phase, and what is dropped before anything compiles.
//!
//! Candidates are q_block x kv_pages_block over powers of two and the shapes' edges (the step's
//! tokens, the sequence's pages). Dropped before any compile: block sizes larger than the shapes
//! (a q block past the step's tokens, a KV block past a sequence's pages), configs the config
//! rules refuse, and, with a TPU target, configs the VMEM/SMEM checker says do not fit. The
//! checker's `uncertain` ones stay, marked, for the real compiler to decide. The order is
//! ascending (q, then kv), so every config that another dominates ran first: [`super::run`]
//! skips a candidate at least as large as one that ran out of memory.

use super::{Phase, Workload};
use crate::target::{fmt_bytes, Target};
use crate::vmem::{self, CheckRequest, KernelModel, Verdict};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One point of the space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub phase: Phase,
    pub q_block: u32,
    pub kv_pages_block: u32,
}

impl Candidate {
    /// At least as large as `other` in both block sizes (same phase): it needs at least as much
    /// memory.
    pub fn dominates(&self, other: &Candidate) -> bool {
        self.phase == other.phase
            && self.q_block >= other.q_block
            && self.kv_pages_block >= other.kv_pages_block
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} q{} kv{}",
            self.phase, self.q_block, self.kv_pages_block
        )
    }
}

/// Pruning with the checker: the TPU target, kernel model and limit the candidates must fit.
#[derive(Clone, Debug)]
pub struct Prune {
    pub target: Target,
    pub kernel: KernelModel,
    pub vmem_limit: Option<u64>,
}

/// One phase's space: what runs (ascending), and what was dropped with the reason.
#[derive(Clone, Debug, Default)]
pub struct Space {
    pub run: Vec<Candidate>,
    pub skipped: Vec<(Candidate, String)>,
    /// Candidates the checker could not decide (they run; the compiler decides).
    pub uncertain: Vec<Candidate>,
}

/// Powers of two from `from` up to `max`, and `max` itself.
fn powers_up_to(from: u32, max: u32) -> Vec<u32> {
    let mut v: Vec<u32> = (0..32)
        .map(|i| 1u32 << i)
        .filter(|&x| x >= from && x <= max)
        .collect();
    if max >= from && !v.contains(&max) {
        v.push(max);
    }
    v
}

/// The default q_block values of `phase` (decode programs have one row per sequence).
pub fn default_q_blocks(w: &Workload, phase: Phase) -> Vec<u32> {
    match phase {
        Phase::Decode => vec![1],
        _ => powers_up_to(8, w.max_num_tokens),
    }
}

/// The default kv_pages_block values: powers of two up to a sequence's pages.
pub fn default_kv_blocks(w: &Workload) -> Vec<u32> {
    powers_up_to(1, w.pages_per_seq())
}

/// `phase`'s candidates at `w`'s shapes, pruned.
pub fn candidates(
    w: &Workload,
    phase: Phase,
    qs: Option<&[u32]>,
    kvs: Option<&[u32]>,
    prune: Option<&Prune>,
) -> Space {
    let mut qs: Vec<u32> = match (phase, qs) {
        (Phase::Decode, _) => vec![1],
        (_, Some(q)) => q.to_vec(),
        (_, None) => default_q_blocks(w, phase),
    };
    let mut kvs: Vec<u32> = kvs.map_or_else(|| default_kv_blocks(w), <[u32]>::to_vec);
    qs.sort_unstable();
    qs.dedup();
    kvs.sort_unstable();
    kvs.dedup();
    let mut s = Space::default();
    for &q in &qs {
        for &kv in &kvs {
            let c = Candidate {
                phase,
                q_block: q,
                kv_pages_block: kv,
            };
            match static_reason(w, c)
                .or_else(|| prune.and_then(|p| checker_reason(w, c, p, &mut s)))
            {
                Some(reason) => s.skipped.push((c, reason)),
                None => s.run.push(c),
            }
        }
    }
    s
}

/// Why `c` cannot run at `w`'s shapes at all, if it cannot.
fn static_reason(w: &Workload, c: Candidate) -> Option<String> {
    let tokens = match c.phase {
        Phase::Decode => w.max_num_seqs,
        _ => w.max_num_tokens,
    };
    if c.q_block > tokens {
        return Some(format!(
            "q_block {} is larger than the step's {tokens} tokens",
            c.q_block
        ));
    }
    if c.kv_pages_block > w.pages_per_seq() {
        return Some(format!(
            "kv_pages_block {} is larger than a sequence's {} pages",
            c.kv_pages_block,
            w.pages_per_seq()
        ));
    }
    w.config(c.phase, c.q_block, c.kv_pages_block)
        .err()
        .map(|e| format!("invalid config: {e}"))
}

/// The checker's reason to drop `c`, if it does not fit; notes the uncertain ones in `s`.
fn checker_reason(w: &Workload, c: Candidate, p: &Prune, s: &mut Space) -> Option<String> {
    let cfg = w.config(c.phase, c.q_block, c.kv_pages_block).ok()?;
    let req = CheckRequest {
        cfg: &cfg,
        target: p.target,
        kernel: p.kernel,
        vmem_limit: p.vmem_limit,
    };
    match vmem::check(&req) {
        Err(e) => Some(format!("checker: {e}")),
        Ok(r) => match r.verdict {
            Verdict::Fits => None,
            Verdict::Uncertain => {
                s.uncertain.push(c);
                None
            }
            Verdict::DoesNotFit => Some(if r.smem.verdict == Verdict::DoesNotFit {
                format!("checker: SMEM does not fit on {}", p.target.name)
            } else {
                format!(
                    "checker: needs {} of scoped VMEM, limit {} on {}",
                    fmt_bytes(r.lower_bytes),
                    fmt_bytes(r.limit_bytes),
                    p.target.name
                )
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dtype, Geometry};

    fn smol() -> Workload {
        Workload {
            geometry: Geometry {
                num_q_heads: 9,
                num_kv_heads: 3,
                head_dim: 64,
            },
            dtype: Dtype::F32,
            page_size: 16,
            max_num_seqs: 32,
            max_num_tokens: 256,
            max_model_len: 2048,
            sliding_window: None,
            soft_cap: None,
        }
    }

    #[test]
    fn the_space_is_ascending_bounded_by_the_shapes_and_decode_tunes_kv_only() {
        let w = smol();
        let s = candidates(&w, Phase::Prefill, None, None, None);
        let qs: Vec<u32> = s.run.iter().map(|c| c.q_block).collect();
        assert_eq!(*qs.first().unwrap(), 8);
        assert_eq!(*qs.last().unwrap(), 256);
        let kv_max = s.run.iter().map(|c| c.kv_pages_block).max().unwrap();
        assert_eq!(kv_max, 128, "2048 / 16 pages per sequence");
        let mut sorted = s.run.clone();
        sorted.sort_by_key(|c| (c.q_block, c.kv_pages_block));
        assert_eq!(sorted, s.run, "smallest first, so dominance can skip");
        let d = candidates(&w, Phase::Decode, Some(&[64]), Some(&[4, 8]), None);
        assert!(d.run.iter().all(|c| c.q_block == 1));
        assert_eq!(d.run.len(), 2);
        let big = candidates(&w, Phase::Mixed, Some(&[512]), Some(&[256]), None);
        assert!(big.run.is_empty());
        assert!(big.skipped[0]
            .1
            .contains("larger than the step's 256 tokens"));
    }

    #[test]
    fn the_checker_drops_what_does_not_fit_a_tpu_target() {
        let w = Workload {
            geometry: Geometry {
                num_q_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
            },
            dtype: Dtype::Bf16,
            page_size: 128,
            max_num_seqs: 128,
            max_num_tokens: 2048,
            max_model_len: 4096,
            sliding_window: None,
            soft_cap: None,
        };
        let p = Prune {
            target: Target::find("v5e").unwrap(),
            kernel: KernelModel::Kernelgen,
            vmem_limit: None,
        };
        let s = candidates(&w, Phase::Mixed, Some(&[16, 512]), Some(&[1, 32]), Some(&p));
        assert!(!s.run.is_empty());
        assert!(
            s.skipped
                .iter()
                .any(|(c, r)| c.q_block == 512 && r.contains("checker")),
            "{:?}",
            s.skipped
        );
    }

    #[test]
    fn a_larger_config_dominates_a_smaller_one_of_the_same_phase() {
        let c = |phase, q, kv| Candidate {
            phase,
            q_block: q,
            kv_pages_block: kv,
        };
        assert!(c(Phase::Mixed, 32, 8).dominates(&c(Phase::Mixed, 16, 8)));
        assert!(!c(Phase::Mixed, 32, 4).dominates(&c(Phase::Mixed, 16, 8)));
        assert!(!c(Phase::Prefill, 32, 8).dominates(&c(Phase::Mixed, 16, 8)));
    }
}
