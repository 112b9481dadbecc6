//! A host (CPU, f32) [`StepExecutor`] with a paged KV cache, for testing the engine without a
//! device and as the reference for the device step program.
//!
//! KV pool, per layer: `[num_pages + 1, page_size, 2 * kv_heads, head_dim]`, keys at even and
//! values at odd head slots (the kernel's interleaved layout); the last page is scratch. A step
//! writes each row's K/V to its `slot_mapping` slot (`page * page_size + offset`), then sequence
//! `s`'s row `r` (absolute position `kv_len - q_len + r`) attends causally to positions
//! `0..=kv_len - q_len + r`, read through the sequence's page table. The layer math is
//! [`crate::dense`]'s, shared with [`crate::dense::DenseDecoder`].

use crate::dense::{forward, KvCache, Rope};
use runtime::engine::{EngineConfig, EngineError, StepBatch, StepExecutor};
use runtime::model::Model;
use std::sync::Arc;

/// Paged host executor. See the module docs for the layout.
pub struct HostExecutor {
    model: Arc<Model>,
    rope: Rope,
    page_size: usize,
    num_pages: usize,
    /// Per layer, `(num_pages + 1) * page_size * 2 * kv_heads * head_dim` values.
    pools: Vec<Vec<f32>>,
}

impl HostExecutor {
    /// `num_pages` usable pages of `page_size` tokens, plus one scratch page (index `num_pages`).
    pub fn new(model: Arc<Model>, num_pages: usize, page_size: usize) -> HostExecutor {
        let c = &model.config;
        let per_layer = (num_pages + 1) * page_size * 2 * c.num_kv_heads * c.head_dim;
        HostExecutor {
            rope: Rope::new(c.head_dim, c.rope_theta),
            pools: vec![vec![0f32; per_layer]; c.num_layers],
            model,
            page_size,
            num_pages,
        }
    }

    pub fn from_engine_config(model: Arc<Model>, cfg: &EngineConfig) -> HostExecutor {
        HostExecutor::new(model, cfg.max_pages, cfg.page_size)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Usable pages (the scratch page not counted).
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }

    /// Index of the scratch page.
    pub fn scratch_page(&self) -> u32 {
        self.num_pages as u32
    }

    /// Key (`value = false`) or value of KV head `head` in `slot`, layer `layer` (for tests).
    pub fn kv_at(&self, layer: usize, slot: usize, head: usize, value: bool) -> &[f32] {
        let c = &self.model.config;
        let i = ((slot * c.num_kv_heads + head) * 2 + usize::from(value)) * c.head_dim;
        &self.pools[layer][i..i + c.head_dim]
    }

    /// Rejects batches whose shapes, ids, pages or positions are inconsistent.
    fn check(&self, b: &StepBatch) -> Result<Vec<Option<(usize, usize)>>, String> {
        let n = b.token_ids.len();
        if b.positions.len() != n || b.slot_mapping.len() != n {
            return Err(format!(
                "{n} tokens but {} positions and {} slots",
                b.positions.len(),
                b.slot_mapping.len()
            ));
        }
        let vocab = self.model.config.vocab_size;
        if let Some(t) = b.token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(format!("token {t} outside the vocabulary of {vocab}"));
        }
        let slots = (self.num_pages + 1) * self.page_size;
        if let Some(s) = b.slot_mapping.iter().find(|&&s| s as usize >= slots) {
            return Err(format!("slot {s} outside the pool of {slots} slots"));
        }
        // row -> (sequence, index within the sequence's rows)
        let mut owner = vec![None; n];
        for (i, s) in b.seqs.iter().enumerate() {
            let end = s.q_start.checked_add(s.q_len).filter(|&e| e <= n);
            let Some(end) = end else {
                return Err(format!(
                    "sequence {i}: rows {}+{} past {n} tokens",
                    s.q_start, s.q_len
                ));
            };
            if s.q_len > s.kv_len {
                return Err(format!(
                    "sequence {i}: q_len {} > kv_len {}",
                    s.q_len, s.kv_len
                ));
            }
            if s.pages.len() < s.kv_len.div_ceil(self.page_size) {
                return Err(format!(
                    "sequence {i}: {} pages for {} tokens of page size {}",
                    s.pages.len(),
                    s.kv_len,
                    self.page_size
                ));
            }
            if let Some(p) = s.pages.iter().find(|&&p| p as usize > self.num_pages) {
                return Err(format!(
                    "sequence {i}: page {p} outside the {} pages",
                    self.num_pages
                ));
            }
            let rows = owner[s.q_start..end]
                .iter_mut()
                .zip(&b.positions[s.q_start..end]);
            for (j, (row, &position)) in rows.enumerate() {
                let r = s.q_start + j;
                if row.is_some() {
                    return Err(format!("row {r} belongs to two sequences"));
                }
                let pos = s.kv_len - s.q_len + j;
                if position as usize != pos {
                    return Err(format!(
                        "sequence {i} row {r}: position {position} but kv_len - q_len + {j} = {pos}"
                    ));
                }
                *row = Some((i, j));
            }
        }
        if let Some(r) = b.logits_rows.iter().find(|&&r| r >= n) {
            return Err(format!("logits row {r} past {n} tokens"));
        }
        Ok(owner)
    }
}

/// The pool seen through one step's page tables.
struct PagedView<'a> {
    pools: &'a mut [Vec<f32>],
    batch: &'a StepBatch,
    owner: &'a [Option<(usize, usize)>],
    page_size: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl PagedView<'_> {
    /// Start of `head`'s key (value: +1 head slot) in `slot`.
    fn offset(&self, slot: usize, head: usize, value: bool) -> usize {
        ((slot * self.kv_heads + head) * 2 + usize::from(value)) * self.head_dim
    }

    fn slot(&self, row: usize, pos: usize) -> usize {
        let (s, _) = self.owner[row].expect("attention only reads rows that belong to a sequence");
        let pages = &self.batch.seqs[s].pages;
        pages[pos / self.page_size] as usize * self.page_size + pos % self.page_size
    }
}

impl KvCache for PagedView<'_> {
    fn store(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let kv_dim = self.kv_heads * self.head_dim;
        for (r, &slot) in self.batch.slot_mapping.iter().enumerate() {
            for h in 0..self.kv_heads {
                let src = r * kv_dim + h * self.head_dim;
                let ko = self.offset(slot as usize, h, false);
                let vo = self.offset(slot as usize, h, true);
                let pool = &mut self.pools[layer];
                pool[ko..ko + self.head_dim].copy_from_slice(&k[src..src + self.head_dim]);
                pool[vo..vo + self.head_dim].copy_from_slice(&v[src..src + self.head_dim]);
            }
        }
    }

    fn context_len(&self, row: usize) -> usize {
        match self.owner[row] {
            Some((s, j)) => {
                let seq = &self.batch.seqs[s];
                seq.kv_len - seq.q_len + j + 1
            }
            None => 0,
        }
    }

    fn key(&self, layer: usize, row: usize, pos: usize, head: usize) -> &[f32] {
        let o = self.offset(self.slot(row, pos), head, false);
        &self.pools[layer][o..o + self.head_dim]
    }

    fn value(&self, layer: usize, row: usize, pos: usize, head: usize) -> &[f32] {
        let o = self.offset(self.slot(row, pos), head, true);
        &self.pools[layer][o..o + self.head_dim]
    }
}

impl StepExecutor for HostExecutor {
    fn step(&mut self, batch: &StepBatch) -> Result<Vec<f32>, EngineError> {
        let owner = self.check(batch).map_err(EngineError::Executor)?;
        if batch.token_ids.is_empty() {
            return Ok(Vec::new());
        }
        let c = &self.model.config;
        let mut view = PagedView {
            pools: &mut self.pools,
            batch,
            owner: &owner,
            page_size: self.page_size,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        Ok(forward(
            &self.model,
            &self.rope,
            &batch.token_ids,
            &batch.positions,
            &mut view,
            &batch.logits_rows,
        ))
    }

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }
}
