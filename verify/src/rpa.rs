//! Reference ragged paged attention, computed in f64 straight from the semantics.
//!
//! Semantics (the same as JAX's Pallas TPU `ragged_paged_attention`):
//! - sequence `i < num_seqs` owns query rows `cu_q_lens[i]..cu_q_lens[i+1]` (`q_len` rows) and
//!   `kv_lens[i]` keys stored in pages `page_indices[i][0..]`, `page_size` tokens per page;
//! - `kv_pages[page, slot, 2*h, :]` is key head `h`, `kv_pages[page, slot, 2*h+1, :]` value head `h`;
//! - query head `qh` reads KV head `qh / (num_q_heads / num_kv_heads)` (grouped-query attention);
//! - query row `r` sits at absolute position `kv_len - q_len + r`; it sees keys at positions `<=` its
//!   own (causal), and with a sliding window `w` only keys `k` with `pos - w < k`;
//! - logits are `q . k * sm_scale`, then `soft_cap * tanh(logit / soft_cap)` if a cap is set, then the
//!   mask, then softmax, then the weighted sum of values.
//!
//! Rows at or past `cu_q_lens[num_seqs]` are padding; the reference leaves them at zero and callers
//! only compare the valid rows.

use crate::batch::RaggedBatch;

/// Geometry and static parameters of one ragged paged attention call.
#[derive(Clone, Debug, PartialEq)]
pub struct RpaProblem {
    pub num_q_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub page_size: usize,
    pub max_num_tokens: usize,
    pub max_num_seqs: usize,
    pub pages_per_seq: usize,
    pub total_pages: usize,
    pub sm_scale: f64,
    pub sliding_window: Option<usize>,
    pub soft_cap: Option<f64>,
}

impl RpaProblem {
    /// Number of elements of `q` (and of the output).
    pub fn q_len(&self) -> usize {
        self.max_num_tokens * self.num_q_heads * self.head_dim
    }

    /// Number of elements of `kv_pages`.
    pub fn kv_len(&self) -> usize {
        self.total_pages * self.page_size * 2 * self.num_kv_heads * self.head_dim
    }

    /// Most sequences one call can hold: each needs a row of q, a sequence slot and a page.
    pub fn max_batch_seqs(&self) -> usize {
        self.max_num_seqs
            .min(self.max_num_tokens)
            .min(self.total_pages)
    }

    /// Longest KV length a sequence can have with `pages_per_seq` pages.
    pub fn max_kv_len(&self) -> usize {
        self.pages_per_seq * self.page_size
    }

    fn group(&self) -> usize {
        self.num_q_heads / self.num_kv_heads
    }

    /// Flat index of `kv_pages[page, slot, head, 0]`.
    fn kv_offset(&self, page: usize, slot: usize, head: usize) -> usize {
        ((page * self.page_size + slot) * 2 * self.num_kv_heads + head) * self.head_dim
    }
}

/// The valid query rows of a batch: `0..cu_q_lens[num_seqs]`.
pub fn valid_rows(batch: &RaggedBatch) -> usize {
    batch.cu_q_lens[batch.num_seqs as usize] as usize
}

/// f64 reference output, flat `[max_num_tokens, num_q_heads, head_dim]`; padding rows are zero.
pub fn reference(p: &RpaProblem, b: &RaggedBatch) -> Vec<f64> {
    let d = p.head_dim;
    let mut out = vec![0.0f64; p.q_len()];
    let mut logits: Vec<f64> = Vec::new();
    let mut acc = vec![0.0f64; d];
    for seq in 0..b.num_seqs as usize {
        let q_start = b.cu_q_lens[seq] as usize;
        let q_len = b.cu_q_lens[seq + 1] as usize - q_start;
        let kv_len = b.kv_lens[seq] as usize;
        let pages = &b.page_indices[seq * p.pages_per_seq..(seq + 1) * p.pages_per_seq];
        for r in 0..q_len {
            let pos = kv_len - q_len + r;
            let lo = match p.sliding_window {
                Some(w) => (pos + 1).saturating_sub(w),
                None => 0,
            };
            let token = q_start + r;
            for qh in 0..p.num_q_heads {
                let kvh = qh / p.group();
                let q_row = &b.q[(token * p.num_q_heads + qh) * d..][..d];
                logits.clear();
                for k in lo..=pos {
                    let page = pages[k / p.page_size] as usize;
                    let key = &b.kv_pages[p.kv_offset(page, k % p.page_size, 2 * kvh)..][..d];
                    let dot: f64 = q_row
                        .iter()
                        .zip(key)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    let mut logit = dot * p.sm_scale;
                    if let Some(cap) = p.soft_cap {
                        logit = cap * (logit / cap).tanh();
                    }
                    logits.push(logit);
                }
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut denom = 0.0;
                acc.iter_mut().for_each(|a| *a = 0.0);
                for (i, k) in (lo..=pos).enumerate() {
                    let w = (logits[i] - max).exp();
                    denom += w;
                    let page = pages[k / p.page_size] as usize;
                    let value = &b.kv_pages[p.kv_offset(page, k % p.page_size, 2 * kvh + 1)..][..d];
                    for (a, &v) in acc.iter_mut().zip(value) {
                        *a += w * v as f64;
                    }
                }
                let o = &mut out[(token * p.num_q_heads + qh) * d..][..d];
                for (o, a) in o.iter_mut().zip(&acc) {
                    *o = a / denom;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchSpec, RaggedBatch};

    fn problem(window: Option<usize>) -> RpaProblem {
        RpaProblem {
            num_q_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            page_size: 4,
            max_num_tokens: 16,
            max_num_seqs: 3,
            pages_per_seq: 4,
            total_pages: 12,
            sm_scale: 0.5,
            sliding_window: window,
            soft_cap: None,
        }
    }

    /// One key only: the output must be that key's value exactly, whatever the logits.
    #[test]
    fn single_key_returns_its_value() {
        let p = problem(None);
        let mut b = RaggedBatch::generate(&p, &BatchSpec::decode_only(1), 7, false);
        b.kv_lens[0] = 1;
        let out = reference(&p, &b);
        let page = b.page_indices[0] as usize;
        for qh in 0..p.num_q_heads {
            let v = &b.kv_pages[p.kv_offset(page, 0, 2 * (qh / 2) + 1)..][..p.head_dim];
            let o = &out[qh * p.head_dim..][..p.head_dim];
            for (o, v) in o.iter().zip(v) {
                assert!((o - *v as f64).abs() < 1e-12);
            }
        }
    }

    /// A window of 1 leaves each row only its own position, so the output is that position's value.
    #[test]
    fn window_of_one_sees_only_its_own_position() {
        let p = problem(Some(1));
        let b = RaggedBatch::generate(&p, &BatchSpec::default(), 3, false);
        let out = reference(&p, &b);
        for seq in 0..b.num_seqs as usize {
            let q0 = b.cu_q_lens[seq] as usize;
            let q_len = b.cu_q_lens[seq + 1] as usize - q0;
            let kv_len = b.kv_lens[seq] as usize;
            for r in 0..q_len {
                let pos = kv_len - q_len + r;
                let page = b.page_indices[seq * p.pages_per_seq + pos / p.page_size] as usize;
                for qh in 0..p.num_q_heads {
                    let v = &b.kv_pages[p.kv_offset(page, pos % p.page_size, 2 * (qh / 2) + 1)..]
                        [..p.head_dim];
                    let o = &out[((q0 + r) * p.num_q_heads + qh) * p.head_dim..][..p.head_dim];
                    for (o, v) in o.iter().zip(v) {
                        assert!((o - *v as f64).abs() < 1e-12);
                    }
                }
            }
        }
    }

    /// Outputs are convex combinations of values: each lies within the values' range.
    #[test]
    fn outputs_lie_within_value_range() {
        let p = problem(None);
        let b = RaggedBatch::generate(&p, &BatchSpec::default(), 11, false);
        let (lo, hi) = b
            .kv_pages
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| {
                (lo.min(x as f64), hi.max(x as f64))
            });
        for &o in &reference(&p, &b) {
            assert!(o >= lo - 1e-12 && o <= hi + 1e-12);
        }
    }
}
