//! Random ragged batches: the inputs of one ragged paged attention call.
//!
//! The generator draws what real serving produces and what breaks naive kernels: decode rows
//! (`q_len = 1`), prefill chunks (`1 < q_len < kv_len`), whole prompts (`q_len = kv_len`), KV lengths
//! that are not a multiple of the page size, shuffled non-contiguous page ids, fewer sequences than
//! `max_num_seqs`, and garbage in every slot the kernel must ignore (unused page-table entries,
//! padding query rows, sequences past `num_seqs`).
//!
//! [`RaggedBatch::poison`] goes further and fills everything a sequence does not own with a
//! non-finite value (NaN, +Inf or -Inf) and the page table's unused entries with out-of-range
//! page ids: a kernel whose output changes under it reads, or multiplies by zero, what it must
//! ignore.

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

/// What [`RaggedBatch::poison`] writes into the slots a kernel must ignore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Poison {
    Nan,
    PosInf,
    NegInf,
}

impl Poison {
    /// Every poison, in the order tests cycle through them.
    pub const ALL: [Poison; 3] = [Poison::Nan, Poison::PosInf, Poison::NegInf];

    pub fn value(self) -> f32 {
        match self {
            Poison::Nan => f32::NAN,
            Poison::PosInf => f32::INFINITY,
            Poison::NegInf => f32::NEG_INFINITY,
        }
    }
}

impl std::fmt::Display for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Poison::Nan => "NaN",
            Poison::PosInf => "+Inf",
            Poison::NegInf => "-Inf",
        })
    }
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

    /// Fills everything no valid sequence owns with `poison`, in place:
    /// - every KV slot (keys and values) outside the positions a valid sequence's rows may see,
    ///   `lo..kv_len` of the pages its page-table row names (`lo` is 0, or with a sliding window
    ///   the first row's `pos - window + 1`: an engine may free pages that slid out): the tail
    ///   of each last page, the slots before the window, and every unused page;
    /// - the padding query rows (at or past `cu_q_lens[num_seqs]`);
    /// - every page-table entry past a valid sequence's pages (or wholly before its window),
    ///   and every entry of the sequences past `num_seqs`, with out-of-range page ids (negative, `total_pages` and beyond, the i32
    ///   extremes, in turn).
    ///
    /// A correct kernel's output on the valid rows is unchanged: the reference, which reads only
    /// owned slots, gives exactly the same result before and after.
    pub fn poison(&mut self, p: &RpaProblem, poison: Poison) {
        let value = poison.value();
        let slot = 2 * p.num_kv_heads * p.head_dim;
        let mut owned = vec![false; p.total_pages * p.page_size];
        let total = p.total_pages as i32;
        let bad_ids = [-1, total, i32::MIN, i32::MAX, -total - 1, total + 7];
        let mut next_bad = 0;
        let lens = self.seq_lens();
        for seq in 0..p.max_num_seqs {
            let (q_len, kv_len) = lens.get(seq).copied().unwrap_or((0, 0));
            let lo = match p.sliding_window {
                Some(w) => (kv_len - q_len + 1).saturating_sub(w),
                None => 0,
            };
            let row = &mut self.page_indices[seq * p.pages_per_seq..][..p.pages_per_seq];
            for (i, page) in row.iter_mut().enumerate() {
                let (start, end) = (i * p.page_size, (i + 1) * p.page_size);
                if end > lo && start < kv_len {
                    let first = *page as usize * p.page_size;
                    let (a, b) = (lo.max(start) - start, kv_len.min(end) - start);
                    owned[first + a..first + b].fill(true);
                } else {
                    *page = bad_ids[next_bad % bad_ids.len()];
                    next_bad += 1;
                }
            }
        }
        for (s, _) in owned.iter().enumerate().filter(|(_, &o)| !o) {
            self.kv_pages[s * slot..][..slot].fill(value);
        }
        let row = p.num_q_heads * p.head_dim;
        let valid = self.cu_q_lens[self.num_seqs as usize] as usize;
        self.q[valid * row..].fill(value);
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

    /// Poison reaches every slot no sequence owns and only those: the reference (which reads
    /// owned slots alone) gives bit-identical output, and every unowned KV value, padding query
    /// value and unused page-table entry is poisoned.
    #[test]
    fn poison_fills_exactly_what_no_sequence_owns() {
        for (seed, window) in (0..200).zip([None, Some(1), Some(5), Some(13)].iter().cycle()) {
            let p = RpaProblem {
                sliding_window: *window,
                ..problem()
            };
            let owns =
                |q: usize, kv: usize| kv - window.map_or(0, |w| (kv - q + 1).saturating_sub(w));
            let clean = RaggedBatch::generate(&p, &BatchSpec::default(), seed, false);
            for poison in Poison::ALL {
                let mut b = clean.clone();
                b.poison(&p, poison);
                let (want, got) = (crate::reference(&p, &clean), crate::reference(&p, &b));
                assert!(want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
                let owned_slots: usize = b.seq_lens().iter().map(|&(q, kv)| owns(q, kv)).sum();
                let slot = 2 * p.num_kv_heads * p.head_dim;
                let poisoned = b.kv_pages.iter().filter(|x| !x.is_finite()).count();
                assert_eq!(poisoned, (p.total_pages * p.page_size - owned_slots) * slot);
                let valid = crate::valid_rows(&b) * p.num_q_heads * p.head_dim;
                assert!(b.q[..valid].iter().all(|x| x.is_finite()));
                assert!(b.q[valid..].iter().all(|x| !x.is_finite()));
                let owned_entries: usize = b
                    .seq_lens()
                    .iter()
                    .map(|&(q, kv)| {
                        let lo = kv - owns(q, kv);
                        kv.div_ceil(p.page_size) - lo / p.page_size
                    })
                    .sum();
                let out_of_range = b
                    .page_indices
                    .iter()
                    .filter(|&&x| x < 0 || x as usize >= p.total_pages)
                    .count();
                assert_eq!(out_of_range, b.page_indices.len() - owned_entries);
            }
        }
    }

    #[test]
    fn bf16_rounding_is_applied() {
        let b = RaggedBatch::generate(&problem(), &BatchSpec::default(), 1, true);
        assert!(b.q.iter().all(|&x| bf16::from_f32(x).to_f32() == x));
        assert!(b.kv_pages.iter().all(|&x| bf16::from_f32(x).to_f32() == x));
    }
}
