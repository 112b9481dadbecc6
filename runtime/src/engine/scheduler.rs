//! Sequences, page tables and the per-step scheduling policy.
//!
//! A [`Sequence`] is one sample of a request: its tokens (prompt, then generated), how many of
//! them already have K/V in the cache (`num_computed`), and its [`PageTable`]. Sequences are
//! either *running* (admitted, may hold pages; kept in admission order) or *waiting* (hold no
//! pages, FIFO; preempted sequences re-enter at the front and recompute everything they had).
//!
//! One [`Scheduler::schedule`] call picks the chunks of one step:
//!
//! 1. running sequences with exactly one pending token (decodes), oldest admission first;
//! 2. running sequences with more pending tokens (prefill continuing over several steps, a
//!    fork's tail, ...), oldest first, each taking as many tokens as the budget allows;
//! 3. waiting sequences in FIFO order, admitted while the budget, `max_seqs` (sequences per
//!    step and running sequences) and the *free* pages allow, stopping at the first that does
//!    not fit (no skipping ahead). Admission never preempts, and is skipped in a step that
//!    preempted, so a victim is not readmitted straight into the next victim slot.
//!
//! All of it is bounded by `max_tokens_per_round` tokens and `max_seqs` sequences per step.
//! A running sequence that cannot get a page for even one token preempts the most recently
//! admitted running sequence (itself, when it is that one), repeatedly; a victim already
//! scheduled in this step is unscheduled. The oldest running sequence therefore always makes
//! progress, since one sequence of `max_seq_len` tokens fits the pool (checked at startup).

use std::collections::{BTreeMap, VecDeque};

use rand_chacha::ChaCha8Rng;

use super::page_allocator::{page_hash, PageAllocator, PageHash};
use super::{EngineConfig, EngineError, RequestId, SeqInBatch, StepBatch};

/// Scheduler-internal sequence handle.
pub type SeqId = u64;

/// A sequence's pages, in order: page `i` holds positions `i * page_size ..(i + 1) * page_size`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageTable {
    pages: Vec<u32>,
}

impl PageTable {
    pub fn new(pages: Vec<u32>) -> Self {
        PageTable { pages }
    }

    pub fn pages(&self) -> &[u32] {
        &self.pages
    }

    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// KV slot of token position `pos`: `pages[pos / page_size] * page_size + pos % page_size`,
    /// or `None` when the table does not reach `pos` (or `page_size` is 0, or it overflows).
    pub fn slot(&self, pos: usize, page_size: usize) -> Option<u32> {
        let page = *self.pages.get(pos.checked_div(page_size)?)? as usize;
        let slot = page.checked_mul(page_size)? + pos % page_size;
        u32::try_from(slot).ok()
    }

    /// Token positions the table covers.
    pub fn capacity(&self, page_size: usize) -> usize {
        self.pages.len() * page_size
    }

    fn push(&mut self, page: u32) {
        self.pages.push(page);
    }

    fn take(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.pages)
    }
}

/// One sample of a request.
#[derive(Clone, Debug)]
pub struct Sequence {
    pub request: RequestId,
    /// Index among the request's n samples.
    pub sample: usize,
    pub prompt_len: usize,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    /// Leading tokens whose K/V is in the cache.
    pub num_computed: usize,
    pub pages: PageTable,
    /// Admission stamp while running (larger = admitted later); `None` while waiting.
    pub admitted: Option<u64>,
    pub rng: ChaCha8Rng,
    /// Hashes of the sequence's full pages of tokens, in order, as far as computed (prefix
    /// cache; they depend on the tokens alone, so they survive preemption).
    page_hashes: Vec<PageHash>,
}

impl Sequence {
    pub fn new(request: RequestId, sample: usize, prompt: Vec<u32>, rng: ChaCha8Rng) -> Self {
        Sequence {
            request,
            sample,
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            pages: PageTable::default(),
            admitted: None,
            rng,
            page_hashes: Vec::new(),
        }
    }

    /// The hash of full page `i` (extending the chain as needed); `None` when the sequence's
    /// tokens do not fill it.
    fn page_hash(&mut self, i: usize, page_size: usize) -> Option<PageHash> {
        while self.page_hashes.len() <= i {
            let j = self.page_hashes.len();
            let tokens = self.tokens.get(j * page_size..(j + 1) * page_size)?;
            let prev = j.checked_sub(1).map(|k| self.page_hashes[k]);
            self.page_hashes.push(page_hash(prev, tokens));
        }
        Some(self.page_hashes[i])
    }

    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len.min(self.tokens.len())..]
    }

    /// Tokens still to be written to the cache.
    pub fn pending(&self) -> usize {
        self.tokens.len().saturating_sub(self.num_computed)
    }
}

/// What a test (or a dashboard) may see of a sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqView {
    pub request: RequestId,
    pub sample: usize,
    pub prompt_len: usize,
    pub num_tokens: usize,
    pub num_computed: usize,
    pub pages: Vec<u32>,
    pub running: bool,
}

/// Tokens `start .. start + len` of sequence `seq` run this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub seq: SeqId,
    pub start: usize,
    pub len: usize,
}

/// One step's decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// In batch order.
    pub chunks: Vec<Chunk>,
    /// Sequences preempted while scheduling, in order.
    pub preempted: Vec<SeqId>,
}

/// Sequences, the page pool and the queues.
#[derive(Debug)]
pub struct Scheduler {
    config: EngineConfig,
    alloc: PageAllocator,
    seqs: BTreeMap<SeqId, Sequence>,
    /// Admission order.
    running: Vec<SeqId>,
    waiting: VecDeque<SeqId>,
    next_seq: SeqId,
    next_admission: u64,
    prefix: PrefixStats,
}

/// What the prefix cache saved: tokens admitted sequences looked up, and those found computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub queried_tokens: u64,
    pub hit_tokens: u64,
}

fn bug(msg: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(msg.to_string())
}

impl Scheduler {
    /// Assumes a validated config (see `Engine::new`).
    pub fn new(config: EngineConfig) -> Self {
        Scheduler {
            alloc: PageAllocator::new(config.max_pages),
            config,
            seqs: BTreeMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            next_seq: 0,
            next_admission: 0,
            prefix: PrefixStats::default(),
        }
    }

    /// Keeps full pages after their last user and reuses them for equal prefixes.
    pub fn enable_prefix_caching(&mut self) {
        if !self.alloc.caches_prefixes() {
            self.alloc =
                std::mem::replace(&mut self.alloc, PageAllocator::new(0)).with_prefix_cache();
        }
    }

    pub fn prefix_stats(&self) -> PrefixStats {
        self.prefix
    }

    /// Gives waiting sequence `id` the cached pages of its longest cached prefix of full
    /// pages (never its last token: that one must run to sample), marking them computed.
    fn take_cached_prefix(&mut self, id: SeqId) -> Result<(), EngineError> {
        if !self.alloc.caches_prefixes() {
            return Ok(());
        }
        let ps = self.config.page_size;
        let seq = self
            .seqs
            .get_mut(&id)
            .ok_or_else(|| bug(format!("unknown sequence {id}")))?;
        if seq.num_computed != 0 || !seq.pages.is_empty() {
            return Ok(());
        }
        let usable = seq.tokens.len().saturating_sub(1) / ps;
        for i in 0..usable {
            let Some(hash) = seq.page_hash(i, ps) else {
                break;
            };
            let Some(page) = self.alloc.acquire(hash) else {
                break;
            };
            seq.pages.push(page);
        }
        seq.num_computed = seq.pages.len() * ps;
        Ok(())
    }

    /// Undoes [`Scheduler::take_cached_prefix`] for a sequence that could not be admitted.
    fn return_cached_prefix(&mut self, id: SeqId) -> Result<(), EngineError> {
        let seq = self
            .seqs
            .get_mut(&id)
            .ok_or_else(|| bug(format!("unknown sequence {id}")))?;
        for page in seq.pages.take() {
            self.alloc.release(page).map_err(bug)?;
        }
        seq.num_computed = 0;
        Ok(())
    }

    pub fn allocator(&self) -> &PageAllocator {
        &self.alloc
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn seq(&self, id: SeqId) -> Result<&Sequence, EngineError> {
        self.seqs
            .get(&id)
            .ok_or_else(|| bug(format!("unknown sequence {id}")))
    }

    pub fn seq_mut(&mut self, id: SeqId) -> Result<&mut Sequence, EngineError> {
        self.seqs
            .get_mut(&id)
            .ok_or_else(|| bug(format!("unknown sequence {id}")))
    }

    /// Every live sequence: running ones in admission order, then the waiting queue.
    pub fn views(&self) -> Vec<SeqView> {
        let view = |id: &SeqId, running: bool| {
            self.seqs.get(id).map(|s| SeqView {
                request: s.request,
                sample: s.sample,
                prompt_len: s.prompt_len,
                num_tokens: s.tokens.len(),
                num_computed: s.num_computed,
                pages: s.pages.pages().to_vec(),
                running,
            })
        };
        self.running
            .iter()
            .filter_map(|id| view(id, true))
            .chain(self.waiting.iter().filter_map(|id| view(id, false)))
            .collect()
    }

    /// Queues a new sequence at the back of the waiting queue.
    pub fn add_waiting(&mut self, seq: Sequence) -> SeqId {
        let id = self.next_seq;
        self.next_seq += 1;
        self.seqs.insert(id, seq);
        self.waiting.push_back(id);
        id
    }

    /// A new running sample of `parent`'s request that shares the parent's full prompt pages
    /// (refcount + 1 each) and will recompute the prompt's partial last page into a page of its
    /// own. The parent must have its whole prompt (and nothing else) computed.
    pub fn fork(
        &mut self,
        parent: SeqId,
        sample: usize,
        rng: ChaCha8Rng,
    ) -> Result<SeqId, EngineError> {
        let ps = self.config.page_size;
        let p = self.seq(parent)?;
        if p.tokens.len() != p.prompt_len || p.num_computed != p.prompt_len {
            return Err(bug(format!(
                "fork of sequence {parent} with {} tokens, {} computed, prompt {}",
                p.tokens.len(),
                p.num_computed,
                p.prompt_len
            )));
        }
        let full = p.prompt_len / ps;
        let shared = p
            .pages
            .pages()
            .get(..full)
            .ok_or_else(|| bug(format!("sequence {parent} lacks its prompt pages")))?
            .to_vec();
        let mut child = Sequence::new(p.request, sample, p.tokens.clone(), rng);
        for &page in &shared {
            self.alloc.retain(page).map_err(bug)?;
        }
        child.num_computed = full * ps;
        child.pages = PageTable::new(shared);
        child.admitted = Some(self.next_admission);
        self.next_admission += 1;
        let id = self.next_seq;
        self.next_seq += 1;
        self.seqs.insert(id, child);
        self.running.push(id);
        Ok(id)
    }

    /// The live sequences (running or waiting) of `request`.
    pub fn seqs_of(&self, request: RequestId) -> Vec<SeqId> {
        self.seqs
            .iter()
            .filter(|(_, s)| s.request == request)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Removes a finished sequence and releases its pages.
    pub fn finish(&mut self, id: SeqId) -> Result<Sequence, EngineError> {
        let mut seq = self
            .seqs
            .remove(&id)
            .ok_or_else(|| bug(format!("finishing unknown sequence {id}")))?;
        for page in seq.pages.take() {
            self.alloc.release(page).map_err(bug)?;
        }
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        Ok(seq)
    }

    /// Releases a running sequence's pages and queues it at the front of the waiting queue to
    /// recompute all its tokens.
    fn preempt(&mut self, id: SeqId) -> Result<(), EngineError> {
        let seq = self
            .seqs
            .get_mut(&id)
            .ok_or_else(|| bug(format!("preempting unknown sequence {id}")))?;
        for page in seq.pages.take() {
            self.alloc.release(page).map_err(bug)?;
        }
        seq.num_computed = 0;
        seq.admitted = None;
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        Ok(())
    }

    /// How many of the next `want` tokens of `id` can get slots: the free room in its last
    /// page plus whole free pages.
    fn fit(&self, id: SeqId, want: usize) -> Result<usize, EngineError> {
        let ps = self.config.page_size;
        let seq = self.seq(id)?;
        let room = seq.pages.capacity(ps).saturating_sub(seq.num_computed);
        let room = room.saturating_add(self.alloc.free().saturating_mul(ps));
        Ok(want.min(room))
    }

    /// Allocates the pages `len` more tokens of `id` need (they must fit).
    fn grow(&mut self, id: SeqId, len: usize) -> Result<(), EngineError> {
        let ps = self.config.page_size;
        let seq = self
            .seqs
            .get_mut(&id)
            .ok_or_else(|| bug(format!("growing unknown sequence {id}")))?;
        let need = (seq.num_computed + len).div_ceil(ps);
        while seq.pages.len() < need {
            let page = self
                .alloc
                .alloc()
                .ok_or_else(|| bug(format!("sequence {id}: pool exhausted after fit check")))?;
            seq.pages.push(page);
        }
        Ok(())
    }

    /// Picks this step's chunks (see the module docs), allocating their pages and preempting
    /// as needed.
    pub fn schedule(&mut self) -> Result<Schedule, EngineError> {
        let mut budget = self.config.max_tokens_per_round;
        let mut slots = self.config.max_seqs;
        let mut out = Schedule::default();

        for decode_pass in [true, false] {
            let order = self.running.clone();
            for id in order {
                if budget == 0 || slots == 0 {
                    break;
                }
                if !self.running.contains(&id) {
                    continue; // preempted earlier in this step
                }
                let pending = self.seq(id)?.pending();
                if pending == 0 || (pending == 1) != decode_pass {
                    continue;
                }
                let want = pending.min(budget);
                let mut len = self.fit(id, want)?;
                while len == 0 {
                    let victim = *self
                        .running
                        .last()
                        .ok_or_else(|| bug("running list emptied while scheduling"))?;
                    if victim == id && self.running.len() == 1 {
                        return Err(bug(format!(
                            "lone sequence {id} cannot get a page ({} free of {})",
                            self.alloc.free(),
                            self.alloc.capacity()
                        )));
                    }
                    self.preempt(victim)?;
                    out.preempted.push(victim);
                    if let Some(at) = out.chunks.iter().position(|c| c.seq == victim) {
                        budget += out.chunks.remove(at).len;
                        slots += 1;
                    }
                    if victim == id {
                        break;
                    }
                    len = self.fit(id, want)?;
                }
                if len == 0 {
                    continue;
                }
                self.grow(id, len)?;
                let start = self.seq(id)?.num_computed;
                out.chunks.push(Chunk {
                    seq: id,
                    start,
                    len,
                });
                budget -= len;
                slots -= 1;
            }
        }

        if out.preempted.is_empty() {
            while budget > 0 && slots > 0 && self.running.len() < self.config.max_seqs {
                let Some(&id) = self.waiting.front() else {
                    break;
                };
                self.take_cached_prefix(id)?;
                let pending = self.seq(id)?.pending();
                let len = self.fit(id, pending.min(budget))?;
                if len == 0 {
                    self.return_cached_prefix(id)?;
                    break;
                }
                self.waiting.pop_front();
                if self.alloc.caches_prefixes() {
                    let seq = self.seq(id)?;
                    let (queried, hit) = (seq.tokens.len() as u64, seq.num_computed as u64);
                    self.prefix.queried_tokens += queried;
                    self.prefix.hit_tokens += hit;
                }
                self.running.push(id);
                let stamp = self.next_admission;
                self.next_admission += 1;
                self.seq_mut(id)?.admitted = Some(stamp);
                self.grow(id, len)?;
                let start = self.seq(id)?.num_computed;
                out.chunks.push(Chunk {
                    seq: id,
                    start,
                    len,
                });
                budget -= len;
                slots -= 1;
            }
        }
        Ok(out)
    }

    /// The executor's view of `chunks`, plus for each chunk whether it samples (its chunk
    /// reaches the end of the sequence's known tokens). Checks that every written slot lies in
    /// a page this sequence holds alone.
    pub fn build_batch(&self, chunks: &[Chunk]) -> Result<(StepBatch, Vec<bool>), EngineError> {
        let ps = self.config.page_size;
        let rows: usize = chunks.iter().map(|c| c.len).sum();
        let mut batch = StepBatch {
            token_ids: Vec::with_capacity(rows),
            positions: Vec::with_capacity(rows),
            slot_mapping: Vec::with_capacity(rows),
            seqs: Vec::with_capacity(chunks.len()),
            logits_rows: Vec::new(),
            argmax_only: false,
        };
        let mut samples = Vec::with_capacity(chunks.len());
        for c in chunks {
            let seq = self.seq(c.seq)?;
            let end = c.start + c.len;
            let tokens = seq
                .tokens
                .get(c.start..end)
                .ok_or_else(|| bug(format!("chunk {c:?} past the sequence's tokens")))?;
            let q_start = batch.token_ids.len();
            for (pos, &tok) in (c.start..end).zip(tokens) {
                let slot = seq
                    .pages
                    .slot(pos, ps)
                    .ok_or_else(|| bug(format!("sequence {}: no page for {pos}", c.seq)))?;
                let page = (slot as usize / ps) as u32;
                if self.alloc.refcount(page) != 1 {
                    return Err(bug(format!(
                        "sequence {} writes position {pos} into page {page} with refcount {}",
                        c.seq,
                        self.alloc.refcount(page)
                    )));
                }
                batch.token_ids.push(tok);
                batch.positions.push(pos as u32);
                batch.slot_mapping.push(slot);
            }
            batch.seqs.push(SeqInBatch {
                q_start,
                q_len: c.len,
                kv_len: end,
                pages: seq.pages.pages().to_vec(),
            });
            let sampling = end == seq.tokens.len();
            if sampling {
                batch.logits_rows.push(batch.token_ids.len() - 1);
            }
            samples.push(sampling);
        }
        Ok((batch, samples))
    }

    /// Marks the chunks' tokens as computed (after the executor ran them); with the prefix
    /// cache on, registers the pages they filled.
    pub fn commit(&mut self, chunks: &[Chunk]) -> Result<(), EngineError> {
        let ps = self.config.page_size;
        let caching = self.alloc.caches_prefixes();
        for c in chunks {
            let seq = self
                .seqs
                .get_mut(&c.seq)
                .ok_or_else(|| bug(format!("unknown sequence {}", c.seq)))?;
            if seq.num_computed != c.start {
                return Err(bug(format!("chunk {c:?} does not continue the sequence")));
            }
            seq.num_computed += c.len;
            if !caching {
                continue;
            }
            for i in (c.start / ps)..(seq.num_computed / ps) {
                let hash = seq
                    .page_hash(i, ps)
                    .ok_or_else(|| bug(format!("sequence {}: page {i} not full", c.seq)))?;
                self.alloc
                    .register(seq.pages.pages()[i], hash)
                    .map_err(bug)?;
            }
        }
        Ok(())
    }

    /// Cross-checks the pool against the page tables: refcount of every page = number of
    /// page-table entries naming it; waiting sequences hold nothing; tables cover exactly the
    /// computed tokens; a page in two tables is a full prompt page shared by samples of one
    /// request at the same table index.
    pub fn check_invariants(&self) -> Result<(), String> {
        let ps = self.config.page_size;
        self.alloc.check_invariants()?;
        let mut refs = vec![0u32; self.alloc.capacity()];
        let mut owner: BTreeMap<u32, (RequestId, usize, SeqId)> = BTreeMap::new();
        for (id, seq) in &self.seqs {
            let running = self.running.contains(id);
            if running == self.waiting.contains(id) {
                return Err(format!("sequence {id} must be in exactly one queue"));
            }
            if !running && !seq.pages.is_empty() {
                return Err(format!("waiting sequence {id} holds pages"));
            }
            if seq.pages.capacity(ps) < seq.num_computed {
                return Err(format!("sequence {id}: pages do not cover computed tokens"));
            }
            if seq.pages.len() > self.config.pages_per_seq() {
                return Err(format!("sequence {id} holds {} pages", seq.pages.len()));
            }
            for (i, &page) in seq.pages.pages().iter().enumerate() {
                let r = refs
                    .get_mut(page as usize)
                    .ok_or_else(|| format!("sequence {id} names out-of-range page {page}"))?;
                *r += 1;
                if let Some(&(req, at, first)) = owner.get(&page) {
                    let end = (i + 1) * ps;
                    let ok = if self.alloc.caches_prefixes() {
                        // Any sequences, if the page is full and their prefixes equal.
                        let other = &self.seqs[&first];
                        at == i
                            && end <= seq.num_computed
                            && end <= other.num_computed
                            && seq.tokens[..end] == other.tokens[..end]
                    } else {
                        req == seq.request && at == i && end <= seq.prompt_len
                    };
                    if !ok {
                        return Err(format!(
                            "page {page} shared by sequences whose contents for it differ"
                        ));
                    }
                } else {
                    owner.insert(page, (seq.request, i, *id));
                }
            }
        }
        for (page, &r) in refs.iter().enumerate() {
            let have = self.alloc.refcount(page as u32);
            if r != have {
                return Err(format!(
                    "page {page}: {r} page-table entries, refcount {have}"
                ));
            }
        }
        if self.running.len() + self.waiting.len() != self.seqs.len() {
            return Err("queues and sequence map disagree".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn slot_formula(pages in prop::collection::vec(0u32..1000, 0..16), ps in 1usize..64, pos in 0usize..2000) {
            let t = PageTable::new(pages.clone());
            match t.slot(pos, ps) {
                Some(s) => {
                    prop_assert!(pos < pages.len() * ps);
                    prop_assert_eq!(s as usize, pages[pos / ps] as usize * ps + pos % ps);
                }
                None => prop_assert!(pos >= pages.len() * ps),
            }
        }
    }
}
