//! Random ragged batches: the inputs of one ragged paged attention call.
//!
//! The generator draws what real serving produces and what breaks naive kernels: decode rows
//! (`q_len = 1`), prefill chunks (`1 < q_len < kv_len`), whole prompts (`q_len = kv_len`), KV lengths
//! that are not a multiple of the page size, shuffled non-contiguous page ids, fewer sequences than
//! `max_num_seqs`, and garbage in every slot the kernel must ignore (unused page-table entries,
//! padding query rows, sequences past `num_seqs`).

use crate::rpa::RpaProblem;
use half::bf16;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What mix of sequences to draw.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchSpec {
    /// Exact number of sequences, or `None` for a random count in `1..=max_num_seqs`.
    pub num_seqs: Option<usize>,
    /// Probability that a sequence is a decode row (`q_len = 1`).
    pub decode_fraction: f64,
    /// Probability that a sequence is a whole prompt (`q_len = kv_len`); the rest are chunks.
    pub full_prefill_fraction: f64,
    /// Every sequence's KV length, or `None` to draw each one. Clamped like a drawn length to
    /// the pages left for the sequence: check it against the problem first to get it exactly.
    pub kv_len: Option<usize>,
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            num_seqs: None,
            decode_fraction: 0.4,
            full_prefill_fraction: 0.3,
            kv_len: None,
        }
    }
}

impl BatchSpec {
    /// `n` decode rows, nothing else.
    pub fn decode_only(n: usize) -> Self {
        BatchSpec {
            num_seqs: Some(n),
            decode_fraction: 1.0,
            full_prefill_fraction: 0.0,
            kv_len: None,
        }
    }
}

/// Inputs of one call, in the kernel's layouts, flattened row-major.
///
/// Values are stored as f32; for bf16 kernels they are already rounded to bf16, so the f64
/// reference sees exactly what the kernel sees.
#[derive(Clone, Debug, PartialEq)]
pub struct RaggedBatch {
    /// `[max_num_tokens, num_q_heads, head_dim]`
    pub q: Vec<f32>,
    /// `[total_pages, page_size, 2 * num_kv_heads, head_dim]`, K and V interleaved on the head axis.
    pub kv_pages: Vec<f32>,
    /// `[max_num_seqs]`
    pub kv_lens: Vec<i32>,
    /// `[max_num_seqs, pages_per_seq]`
    pub page_indices: Vec<i32>,
    /// `[max_num_seqs + 1]`
    pub cu_q_lens: Vec<i32>,
    pub num_seqs: i32,
}

/// Values drawn uniformly from `[-sqrt(3), sqrt(3)]`: unit variance, so `q . k / sqrt(d)` has unit
/// variance and the softmax is neither flat nor one-hot.
fn unit_variance(rng: &mut ChaCha8Rng, n: usize, round_bf16: bool) -> Vec<f32> {
    let a = 3.0f32.sqrt();
    (0..n)
        .map(|_| {
            let x = rng.random_range(-a..a);
            if round_bf16 {
                bf16::from_f32(x).to_f32()
            } else {
                x
            }
        })
        .collect()
}

impl RaggedBatch {
    /// Draws a batch for `p` from `seed`; the same arguments always give the same batch.
    ///
    /// Panics only if `p` cannot hold one sequence (`max_num_tokens`, `max_num_seqs`,
    /// `pages_per_seq` or `total_pages` is zero), which validated configs exclude.
    pub fn generate(p: &RpaProblem, spec: &BatchSpec, seed: u64, round_bf16: bool) -> RaggedBatch {
        assert!(p.max_num_tokens > 0 && p.max_num_seqs > 0 && p.pages_per_seq > 0);
        assert!(p.total_pages > 0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let max_seqs = p.max_batch_seqs();
        let n = spec
            .num_seqs
            .unwrap_or_else(|| rng.random_range(1..=max_seqs))
            .clamp(1, max_seqs);

        let mut free_pages: Vec<i32> = (0..p.total_pages as i32).collect();
        free_pages.shuffle(&mut rng);

        let mut kv_lens = vec![0i32; p.max_num_seqs];
        let mut cu_q_lens = vec![0i32; p.max_num_seqs + 1];
        let mut page_indices: Vec<i32> = (0..p.max_num_seqs * p.pages_per_seq)
            .map(|_| rng.random_range(0..p.total_pages as i32))
            .collect();

        let mut tokens_left = p.max_num_tokens;
        let mut pages_left = p.total_pages;
        for seq in 0..n {
            // Leave at least one token and one page for each sequence still to come.
            let later = n - seq - 1;
            let token_budget = tokens_left - later;
            let page_budget = (pages_left - later).min(p.pages_per_seq);
            let kv_len = match spec.kv_len {
                Some(len) => len.clamp(1, page_budget * p.page_size),
                None => rng.random_range(1..=page_budget * p.page_size),
            };
            let draw: f64 = rng.random();
            let q_len = if draw < spec.decode_fraction {
                1
            } else if draw < spec.decode_fraction + spec.full_prefill_fraction {
                kv_len.min(token_budget)
            } else {
                rng.random_range(1..=kv_len.min(token_budget))
            };
            let pages = kv_len.div_ceil(p.page_size);
            let row = &mut page_indices[seq * p.pages_per_seq..][..pages];
            row.copy_from_slice(&free_pages[p.total_pages - pages_left..][..pages]);
            pages_left -= pages;
            tokens_left -= q_len;
            kv_lens[seq] = kv_len as i32;
            cu_q_lens[seq + 1] = cu_q_lens[seq] + q_len as i32;
        }
        // Sequences past num_seqs: plausible-looking garbage the kernel must not read.
        let total = cu_q_lens[n];
        for seq in n..p.max_num_seqs {
            kv_lens[seq] = rng.random_range(1..=p.max_kv_len() as i32);
            cu_q_lens[seq + 1] = total;
        }

        RaggedBatch {
            q: unit_variance(&mut rng, p.q_len(), round_bf16),
            kv_pages: unit_variance(&mut rng, p.kv_len(), round_bf16),
            kv_lens,
            page_indices,
            cu_q_lens,
            num_seqs: n as i32,
        }
    }

    /// `(q_len, kv_len)` of each valid sequence.
    pub fn seq_lens(&self) -> Vec<(usize, usize)> {
        (0..self.num_seqs as usize)
            .map(|s| {
                let q = (self.cu_q_lens[s + 1] - self.cu_q_lens[s]) as usize;
                (q, self.kv_lens[s] as usize)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn problem() -> RpaProblem {
        RpaProblem {
            num_q_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
            page_size: 8,
            max_num_tokens: 40,
            max_num_seqs: 6,
            pages_per_seq: 5,
            total_pages: 20,
            sm_scale: 1.0,
            sliding_window: None,
            soft_cap: None,
        }
    }

    /// Every generated batch obeys the kernel's input contract, for many seeds.
    #[test]
    fn batches_respect_the_contract() {
        let p = problem();
        for seed in 0..500 {
            let b = RaggedBatch::generate(&p, &BatchSpec::default(), seed, seed % 2 == 0);
            let n = b.num_seqs as usize;
            assert!(n >= 1 && n <= p.max_num_seqs);
            assert!(b.cu_q_lens[n] as usize <= p.max_num_tokens);
            let mut used = HashSet::new();
            for (s, (q_len, kv_len)) in b.seq_lens().into_iter().enumerate() {
                assert!(q_len >= 1 && q_len <= kv_len && kv_len <= p.max_kv_len());
                for k in 0..kv_len.div_ceil(p.page_size) {
                    let page = b.page_indices[s * p.pages_per_seq + k];
                    assert!(page >= 0 && (page as usize) < p.total_pages);
                    assert!(used.insert(page), "page {page} used twice");
                }
            }
            assert!(b.cu_q_lens.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    /// The generator covers the cases the kernel must handle, not just one shape of batch.
    #[test]
    fn batches_cover_the_interesting_cases() {
        let p = problem();
        let (mut decode, mut chunk, mut full, mut ragged_tail, mut partial) = (0, 0, 0, 0, 0);
        for seed in 0..200 {
            let b = RaggedBatch::generate(&p, &BatchSpec::default(), seed, false);
            partial += (b.num_seqs < p.max_num_seqs as i32) as usize;
            for (q, kv) in b.seq_lens() {
                decode += (q == 1) as usize;
                full += (q == kv && q > 1) as usize;
                chunk += (q > 1 && q < kv) as usize;
                ragged_tail += (kv % p.page_size != 0) as usize;
            }
        }
        for (name, n) in [
            ("decode", decode),
            ("chunk", chunk),
            ("full", full),
            ("kv_len % page_size != 0", ragged_tail),
            ("num_seqs < max", partial),
        ] {
            assert!(n >= 20, "{name}: only {n}");
        }
    }

    /// A fixed KV length gives every sequence that length and its own pages, and leaves the
    /// draw of everything else to the seed.
    #[test]
    fn a_fixed_kv_len_is_every_sequences_length() {
        let p = problem();
        for seed in 0..50 {
            let spec = BatchSpec {
                kv_len: Some(17),
                ..BatchSpec::decode_only(6)
            };
            let b = RaggedBatch::generate(&p, &spec, seed, false);
            assert_eq!(b.seq_lens(), vec![(1, 17); 6]);
            let pages: HashSet<i32> = (0..6)
                .flat_map(|s| b.page_indices[s * p.pages_per_seq..][..3].to_vec())
                .collect();
            assert_eq!(pages.len(), 18, "each sequence's 3 pages are its own");
        }
    }

    #[test]
    fn bf16_rounding_is_applied() {
        let b = RaggedBatch::generate(&problem(), &BatchSpec::default(), 1, true);
        assert!(b.q.iter().all(|&x| bf16::from_f32(x).to_f32() == x));
        assert!(b.kv_pages.iter().all(|&x| bf16::from_f32(x).to_f32() == x));
    }
}
