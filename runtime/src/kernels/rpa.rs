//! Ragged paged attention on the host CPU, reading K/V pages where they lie in the pool.
//!
//! Same interface and semantics as the generated StableHLO kernels (`templates/rpa*.tera`,
//! `verify::rpa` is the f64 reference): `q[tokens, q_heads, d]`, `kv_pages[pages, page_size,
//! 2 * kv_heads, d]` (K at head `2h`, V at `2h + 1`), `kv_lens[seqs]`, `page_indices[seqs,
//! pages_per_seq]`, `cu_q_lens[seqs + 1]`, `num_seqs`.
//!
//! Work is split into items of (sequence, KV head, block of `q_block` query rows); each item
//! holds the block's rows for every query head of its group, so a key is read once for the
//! whole group. Keys are taken `kv_pages_block` pages at a time: scores for the chunk, then an
//! online-softmax update (running max `m`, sum `l`, accumulator `acc`), then the P.V product.
//! Only keys some row of the block may see are read; slots past a sequence's `kv_len`, pages
//! it does not own and rows past `num_seqs` are never touched, so whatever they hold (NaN
//! included) cannot reach the output. Page ids are clamped into the pool like the StableHLO
//! form's gather. Rows at or past `cu_q_lens[num_seqs]` are written as zeros.
//!
//! Metadata that breaks the contract (a sequence with more query rows than keys, more keys
//! than its pages hold, `cu_q_lens` decreasing or past the buffer) is an error, never a
//! fault.

use super::element::Element;
use super::workers::{SharedOut, Workers};

/// Buffer geometry, read from the operands' dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpaShape {
    pub tokens: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub total_pages: usize,
    pub page_size: usize,
    pub max_seqs: usize,
    pub pages_per_seq: usize,
}

/// The call's static parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RpaParams {
    pub sm_scale: f32,
    pub soft_cap: Option<f32>,
    pub sliding_window: Option<usize>,
    /// Query rows per work item.
    pub q_block: usize,
    /// Pages of keys scored per online-softmax update.
    pub kv_pages_block: usize,
}

/// The per-call metadata operands.
#[derive(Clone, Copy, Debug)]
pub struct RpaMeta<'a> {
    pub kv_lens: &'a [i32],
    pub page_indices: &'a [i32],
    pub cu_q_lens: &'a [i32],
    pub num_seqs: i32,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RpaError {
    #[error("kernelgen_rpa: {0}")]
    Shape(String),
    #[error("kernelgen_rpa: sequence {seq}: {what}")]
    Metadata { seq: usize, what: String },
}

/// One work item: rows `r0..r1` of sequence `seq`, KV heads `h0..h1` (with their query heads),
/// keys `k0..k1` of what those rows see.
#[derive(Clone, Copy, Debug)]
struct Item {
    seq: usize,
    h0: usize,
    h1: usize,
    r0: usize,
    r1: usize,
    k0: usize,
    k1: usize,
    /// Where a split item (one key range of several) leaves its rows' running max, sum and
    /// unnormalized accumulator in the call's partials, `d + 2` floats a row; `None`: the
    /// item sees all its keys and writes the output itself.
    part: Option<usize>,
}

impl Item {
    /// Whether `o` covers the same rows and heads (another key range of the same work).
    fn same_rows(&self, o: &Item) -> bool {
        (self.seq, self.h0, self.h1, self.r0, self.r1) == (o.seq, o.h0, o.h1, o.r0, o.r1)
    }
}

/// Fewest keys a split item scores: below this, combining partial softmaxes costs more than the
/// balance gained.
const MIN_SPLIT_KEYS: usize = 256;

/// How far ahead of the key it scores the decode-like scoring pass prefetches, in bytes of
/// the item's heads (at least [`MIN_PREFETCH_SLOTS`] slots), across chunk boundaries so that a
/// chunk's first keys are on their way while the previous chunk's softmax and P.V run. It
/// matters where a sequence's pages lie apart, as in a pool that has served many requests:
/// `kernelgen bench kernel --layers 30` (page tables drawn at random) on one SmolLM2 row of
/// 1800 keys in a pool larger than the caches (AMD EPYC, 2 vCPUs) ran 2.46-2.67 ms with 2 slots
/// ahead inside the chunk only, 2.13-2.27 with 4-6 slots (6-9 KB) across chunks; 32 slots lost
/// again. Over pages in order (a fresh pool) the hardware prefetchers keep up either way: the
/// two alternated inside one `generate` at 1540-2040 keys ran 14.25 / 14.31 ms a step.
const PREFETCH_BYTES: usize = 8 * 1024;
/// Fewest key slots ahead the scoring pass prefetches (wide slots: 32 query and 8 KV heads of
/// 128 read 8 KB a slot).
const MIN_PREFETCH_SLOTS: usize = 2;

/// Items per thread the planner aims for, so threads finish close together.
const ITEMS_PER_THREAD: usize = 4;

/// Checks the metadata and lists the work items (validation happens here, once).
fn plan(s: &RpaShape, p: &RpaParams, m: &RpaMeta, threads: usize) -> Result<Plan, RpaError> {
    let num_seqs = usize::try_from(m.num_seqs)
        .ok()
        .filter(|&n| n <= s.max_seqs)
        .ok_or_else(|| {
            RpaError::Shape(format!(
                "num_seqs = {} is outside 0..={}",
                m.num_seqs, s.max_seqs
            ))
        })?;
    let q_block = p.q_block.max(1);
    if m.cu_q_lens[0] != 0 {
        return Err(RpaError::Shape(format!(
            "cu_q_lens[0] = {} must be 0 (the first sequence starts at query row 0)",
            m.cu_q_lens[0]
        )));
    }
    let mut blocks = Vec::new();
    for seq in 0..num_seqs {
        let bad = |what: String| RpaError::Metadata { seq, what };
        // `start` is the previous sequence's end (or 0), checked in the previous round.
        let (start, end) = (m.cu_q_lens[seq], m.cu_q_lens[seq + 1]);
        if end < start || end as usize > s.tokens {
            return Err(bad(format!(
                "cu_q_lens[{}] = {end} must lie in {start}..={} (cumulative query rows)",
                seq + 1,
                s.tokens
            )));
        }
        let q_len = (end - start) as usize;
        let kv_len = m.kv_lens[seq];
        let cap = s.pages_per_seq * s.page_size;
        if kv_len < 0 || (kv_len as usize) < q_len || kv_len as usize > cap {
            return Err(bad(format!(
                "kv_lens = {kv_len} must lie in {q_len}..={cap} (its query rows ..= its pages' \
                 slots)"
            )));
        }
        let kv_len = kv_len as usize;
        blocks.extend(
            (0..q_len)
                .step_by(q_block)
                .map(|r0| (seq, r0, (r0 + q_block).min(q_len), q_len, kv_len)),
        );
    }
    // A key slot holds every KV head side by side, so an item that takes all heads reads its
    // pages front to back. When there are too few blocks to share out, a long block's keys are
    // split into ranges first (flash-decoding: their partial softmaxes are combined after the
    // items run), and its heads only where that leaves a thread without an item: an item of
    // some heads reads part of every slot, which streams from memory worse (batch 1 at 1024
    // keys, SmolLM2, AMD EPYC 2 vCPUs, in-step: 58-61 us a call with whole slots against
    // 67-69 with the heads split to reach four items a thread).
    let threads = threads.max(1);
    let want = threads * ITEMS_PER_THREAD;
    let nblocks = blocks.len().max(1);
    let per_block = want.div_ceil(nblocks);
    let g = s.q_heads / s.kv_heads.max(1);
    let mut items = Vec::with_capacity(blocks.len() * per_block);
    let mut partials = 0;
    for (seq, r0, r1, q_len, kv_len) in blocks {
        let key_hi = kv_len - q_len + r1;
        let key_lo = match p.sliding_window {
            Some(w) => (kv_len - q_len + r0 + 1).saturating_sub(w),
            None => 0,
        };
        let ks = per_block.min((key_hi - key_lo) / MIN_SPLIT_KEYS).max(1);
        let span = (key_hi - key_lo)
            .div_ceil(ks)
            .next_multiple_of(s.page_size.max(1));
        let head_splits = threads.div_ceil(ks * nblocks).clamp(1, s.kv_heads);
        let per = s.kv_heads.div_ceil(head_splits);
        for h0 in (0..s.kv_heads).step_by(per) {
            let h1 = (h0 + per).min(s.kv_heads);
            let item = Item {
                seq,
                h0,
                h1,
                r0,
                r1,
                k0: 0,
                k1: usize::MAX,
                part: None,
            };
            if ks == 1 {
                items.push(item);
                continue;
            }
            let rows = (h1 - h0) * (r1 - r0) * g;
            for k0 in (key_lo..key_hi).step_by(span) {
                items.push(Item {
                    k0,
                    k1: (k0 + span).min(key_hi),
                    part: Some(partials),
                    ..item
                });
                partials += rows * (s.head_dim + 2);
            }
        }
    }
    Ok(Plan { items, partials })
}

/// The work items of a call, and the floats their split items leave in the partials.
struct Plan {
    items: Vec<Item>,
    partials: usize,
}

/// Ragged paged attention: writes `out` (same shape as `q`).
pub fn rpa<T: Element>(
    s: &RpaShape,
    p: &RpaParams,
    q: &[T],
    kv_pages: &[T],
    m: &RpaMeta,
    out: &mut [T],
    workers: &dyn Workers,
) -> Result<(), RpaError> {
    check_lengths(s, q, kv_pages, m, out)?;
    let Plan { items, partials } = plan(s, p, m, workers.threads())?;
    let valid_rows = m.cu_q_lens[m.num_seqs as usize] as usize;
    let row = s.q_heads * s.head_dim;
    out[valid_rows * row..].fill(T::from_f32(0.0));
    let out_ptr = SharedOut(out.as_mut_ptr());
    let mut partials = vec![0.0f32; partials];
    let ctx = Ctx {
        s,
        p,
        q,
        kv_pages,
        m,
        parts: SharedOut(partials.as_mut_ptr()),
    };
    let body = |i: usize| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            // SAFETY: items write disjoint (row, head) ranges of `out` (see `Ctx::item`).
            unsafe { ctx.item(&items[i], &mut scratch, &out_ptr) };
        })
    };
    workers.run(items.len(), &body);
    let mut i = 0;
    while i < items.len() {
        let n = items[i..]
            .iter()
            .take_while(|o| o.part.is_some() && o.same_rows(&items[i]))
            .count();
        if n > 0 {
            // SAFETY: every item has run; these split items' rows are theirs alone in `out`.
            unsafe { ctx.combine(&items[i..i + n], &partials, &out_ptr) };
        }
        i += n.max(1);
    }
    Ok(())
}

fn check_lengths<T>(
    s: &RpaShape,
    q: &[T],
    kv_pages: &[T],
    m: &RpaMeta,
    out: &[T],
) -> Result<(), RpaError> {
    let expect = |name: &str, got: usize, want: usize| {
        if got == want {
            Ok(())
        } else {
            Err(RpaError::Shape(format!(
                "{name} holds {got} elements, the shape says {want}"
            )))
        }
    };
    let positive = [
        ("q heads", s.q_heads),
        ("kv heads", s.kv_heads),
        ("head_dim", s.head_dim),
        ("page_size", s.page_size),
        ("total_pages", s.total_pages),
    ];
    if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(RpaError::Shape(format!("{name} must be positive, got 0")));
    }
    if !s.q_heads.is_multiple_of(s.kv_heads) {
        return Err(RpaError::Shape(format!(
            "q heads {} must be a multiple of kv heads {}",
            s.q_heads, s.kv_heads
        )));
    }
    expect("q", q.len(), s.tokens * s.q_heads * s.head_dim)?;
    expect("out", out.len(), q.len())?;
    expect(
        "kv_pages",
        kv_pages.len(),
        s.total_pages * s.page_size * 2 * s.kv_heads * s.head_dim,
    )?;
    expect("kv_lens", m.kv_lens.len(), s.max_seqs)?;
    expect(
        "page_indices",
        m.page_indices.len(),
        s.max_seqs * s.pages_per_seq,
    )?;
    expect("cu_q_lens", m.cu_q_lens.len(), s.max_seqs + 1)
}

struct Ctx<'a, T> {
    s: &'a RpaShape,
    p: &'a RpaParams,
    q: &'a [T],
    kv_pages: &'a [T],
    m: &'a RpaMeta<'a>,
    /// The call's partials ([`Item::part`]); split items write disjoint ranges.
    parts: SharedOut<f32>,
}

#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
    keys: Vec<usize>,
    /// One value row widened to f32.
    value: Vec<f32>,
    /// One KV head's chunk of keys transposed to `[d, ck rounded up to 16]` f32 (many-row
    /// items: scores then vectorize across keys).
    kt: Vec<f32>,
    /// Addresses of one KV head's value rows in the chunk (many-row items).
    vptr: Vec<usize>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

impl<T: Element> Ctx<'_, T> {
    /// # Safety
    /// `out` must point to `tokens * q_heads * head_dim` elements, and no other item may write
    /// rows `r0..r1` of this item's sequence for this item's KV head's query heads.
    unsafe fn item(&self, it: &Item, sc: &mut Scratch, out: &SharedOut<T>) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::avx512() {
                // SAFETY: the CPU has the features (checked just above; AVX-512F implies AVX2
                // and FMA).
                return unsafe { self.item_avx512(it, sc, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                return unsafe { self.item_avx2(it, sc, out) };
            }
        }
        self.item_body::<false>(it, sc, out)
    }

    /// [`Ctx::item_body`] compiled for AVX-512 with the features of the [`tiles`] it calls,
    /// so that they inline: with AVX-512BW and VL missing here, each decode key's
    /// [`tiles::score_key`] was a call of its own (its scores handed back through memory).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn item_avx512(&self, it: &Item, sc: &mut Scratch, out: &SharedOut<T>) {
        self.item_body::<true>(it, sc, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn item_avx2(&self, it: &Item, sc: &mut Scratch, out: &SharedOut<T>) {
        self.item_body::<true>(it, sc, out)
    }

    /// The AVX-512 many-row tiles, where the CPU has AVX-512 and `d` is a multiple of
    /// [`LANES`]; `None` sends items to the portable loops.
    #[inline(always)]
    fn tiles(&self, d: usize) -> Option<Tiles> {
        #[cfg(target_arch = "x86_64")]
        if d.is_multiple_of(LANES) && super::avx512() {
            return Some(Tiles(()));
        }
        let _ = d;
        None
    }

    /// Offset of `kv_pages[page(key), slot(key), 0, 0]` for key `k` of sequence `seq`.
    #[inline(always)]
    fn slot_offset(&self, seq: usize, k: usize) -> usize {
        let s = self.s;
        let id = self.m.page_indices[seq * s.pages_per_seq + k / s.page_size];
        let page = (id.max(0) as usize).min(s.total_pages - 1);
        (page * s.page_size + k % s.page_size) * 2 * s.kv_heads * s.head_dim
    }

    /// Asks for the K and V rows of heads `h0..h1` in the slot at `slot` to be brought into
    /// cache: a slot's heads are read with gaps (K, then V a pass later), which the hardware
    /// prefetchers follow poorly.
    #[inline(always)]
    fn prefetch(&self, slot: usize, h0: usize, h1: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let line = 64 / std::mem::size_of::<T>();
            let range =
                &self.kv_pages[slot + 2 * h0 * self.s.head_dim..slot + 2 * h1 * self.s.head_dim];
            for e in (0..range.len()).step_by(line) {
                // SAFETY: a prefetch of an address inside the pool; it never faults.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(range.as_ptr().add(e).cast()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (slot, h0, h1);
    }

    /// Row `i` of the item's tiles is (KV head `h0 + i / (rows * g)`, query row
    /// `r0 + (i / g) % rows`, head `i % g` of that KV head's group).
    #[inline(always)]
    fn item_body<const FMA: bool>(&self, it: &Item, sc: &mut Scratch, out: &SharedOut<T>) {
        let (s, p) = (self.s, self.p);
        let d = s.head_dim;
        let g = s.q_heads / s.kv_heads;
        let rows = it.r1 - it.r0;
        let per_head = rows * g;
        let nr = (it.h1 - it.h0) * per_head;
        let q_start = self.m.cu_q_lens[it.seq] as usize;
        let q_len = self.m.cu_q_lens[it.seq + 1] as usize - q_start;
        let kv_len = self.m.kv_lens[it.seq] as usize;
        let pos = |r: usize| kv_len - q_len + r;
        let lo_of = |r: usize| match p.sliding_window {
            Some(w) => (pos(r) + 1).saturating_sub(w),
            None => 0,
        };
        let q_row = |i: usize| self.row_offset(it, i);

        sc.q.clear();
        for i in 0..nr {
            let base = q_row(i);
            sc.q.extend(
                self.q[base..base + d]
                    .iter()
                    .map(|x| x.to_f32() * p.sm_scale),
            );
        }
        sc.m.clear();
        sc.m.resize(nr, f32::NEG_INFINITY);
        sc.l.clear();
        sc.l.resize(nr, 0.0);
        sc.acc.clear();
        sc.acc.resize(nr * d, 0.0);

        let (key_lo, key_hi) = (lo_of(it.r0).max(it.k0), (pos(it.r1 - 1) + 1).min(it.k1));
        let chunk = (p.kv_pages_block.max(1) * s.page_size).max(1);
        let mut c0 = key_lo;
        while c0 < key_hi {
            let c1 = (c0 + chunk).min(key_hi);
            let ck = c1 - c0;
            sc.keys.clear();
            sc.keys
                .extend((c0..c1).map(|k| self.slot_offset(it.seq, k)));
            sc.scores.clear();
            sc.scores.resize(nr * ck, 0.0);
            sc.value.resize(d, 0.0);
            // Scores: each KV head's rows four at a time against the chunk's keys, so four
            // query rows stay in registers while the head's keys stream through L1.
            if per_head <= 4 {
                // Decode-like items: few rows; prefetch the next slots as keys are read.
                let tiles = self.tiles(d);
                let slot_bytes = 2 * (it.h1 - it.h0) * d * std::mem::size_of::<T>();
                let ahead = (PREFETCH_BYTES / slot_bytes.max(1)).max(MIN_PREFETCH_SLOTS);
                for (j, &slot) in sc.keys.iter().enumerate() {
                    if c0 + j + ahead < key_hi {
                        self.prefetch(self.slot_offset(it.seq, c0 + j + ahead), it.h0, it.h1);
                    }
                    for h in it.h0..it.h1 {
                        let key = &self.kv_pages[slot + 2 * h * d..][..d];
                        let first = (h - it.h0) * per_head;
                        let rows = first..first + per_head;
                        if let Some(tiles) = tiles {
                            let q = &sc.q[first * d..(first + per_head) * d];
                            let out = &mut sc.scores[first * ck..];
                            tiles.score_key(per_head, q, key, (out, j, ck));
                        } else if std::mem::size_of::<T>() == 4 || per_head.is_multiple_of(4) {
                            score_rows::<T, FMA>(&sc.q, &mut sc.scores, rows, (j, ck), key);
                        } else {
                            // Narrow keys for fewer than four rows: widened once for them.
                            sc.value
                                .iter_mut()
                                .zip(key)
                                .for_each(|(f, k)| *f = k.to_f32());
                            score_rows::<f32, FMA>(&sc.q, &mut sc.scores, rows, (j, ck), &sc.value);
                        }
                    }
                }
            } else if let Some(tiles) = self.tiles(d) {
                // Many rows: the head's keys transposed once, then tiles of four rows against
                // 32 keys at a time, accumulated across head_dim without horizontal sums.
                let ckp = ck.next_multiple_of(LANES);
                for h in it.h0..it.h1 {
                    sc.kt.clear();
                    sc.kt.resize(d * ckp, 0.0);
                    for (j, &slot) in sc.keys.iter().enumerate() {
                        let key = &self.kv_pages[slot + 2 * h * d..][..d];
                        for (c, k) in key.iter().enumerate() {
                            sc.kt[c * ckp + j] = k.to_f32();
                        }
                    }
                    let first = (h - it.h0) * per_head;
                    let mut i = first;
                    while i < first + per_head {
                        let n = (first + per_head - i).min(4);
                        let q = &sc.q[i * d..(i + n) * d];
                        let out = &mut sc.scores[i * ck..(i + n) * ck];
                        tiles.score(n, q, d, (&sc.kt, ckp), out, ck);
                        i += n;
                    }
                }
            } else {
                for h in it.h0..it.h1 {
                    let first = (h - it.h0) * per_head;
                    let mut i = first;
                    while i < first + per_head {
                        let end = (i + 4).min(first + per_head);
                        for (j, &slot) in sc.keys.iter().enumerate() {
                            let key = &self.kv_pages[slot + 2 * h * d..][..d];
                            score_rows::<T, FMA>(&sc.q, &mut sc.scores, i..end, (j, ck), key);
                        }
                        i = end;
                    }
                }
            }
            for i in 0..nr {
                let r = it.r0 + (i / g) % rows;
                let (lo, hi) = (lo_of(r), pos(r));
                let row = &mut sc.scores[i * ck..(i + 1) * ck];
                // Keys this row sees in the chunk: `lo..=hi` clipped to `c0..c1`.
                let lo_c = lo.clamp(c0, c1);
                let (a, b) = (lo_c - c0, (hi + 1).clamp(lo_c, c1) - c0);
                row[..a].fill(f32::NEG_INFINITY);
                row[b..].fill(f32::NEG_INFINITY);
                if let Some(cap) = p.soft_cap {
                    row[a..b]
                        .iter_mut()
                        .for_each(|x| *x = cap * (*x / cap).tanh());
                }
                let mx = max_of(&row[a..b]);
                if a == b {
                    row.fill(0.0);
                    continue;
                }
                let m_new = sc.m[i].max(mx);
                let corr = (sc.m[i] - m_new).exp();
                let sum = exp_shifted(row, m_new);
                sc.l[i] = sc.l[i] * corr + sum;
                sc.m[i] = m_new;
                if corr != 1.0 {
                    sc.acc[i * d..(i + 1) * d]
                        .iter_mut()
                        .for_each(|a| *a *= corr);
                }
            }
            // P.V. With AVX-512: tiles of up to four rows x 32 lanes of head_dim held in
            // registers while the chunk's values of their head stream by. Otherwise few rows:
            // each value row is read once for all of them; many rows: each row's accumulator
            // stays in L1 while its head's values stream by.
            if let Some(tiles) = self.tiles(d) {
                for h in it.h0..it.h1 {
                    let first = (h - it.h0) * per_head;
                    sc.vptr.clear();
                    sc.vptr.extend(sc.keys.iter().map(|&slot| {
                        self.kv_pages[slot + (2 * h + 1) * d..][..d].as_ptr() as usize
                    }));
                    let mut i = first;
                    while i < first + per_head {
                        let n = (first + per_head - i).min(4);
                        let w = &sc.scores[i * ck..(i + n) * ck];
                        let acc = &mut sc.acc[i * d..(i + n) * d];
                        tiles.pv::<T>(n, w, ck, &sc.vptr, acc, d);
                        i += n;
                    }
                }
            } else if per_head <= 4 {
                for (j, &slot) in sc.keys.iter().enumerate() {
                    for h in it.h0..it.h1 {
                        let value = &self.kv_pages[slot + (2 * h + 1) * d..][..d];
                        // Widened once for the group's rows (a no-op copy for f32).
                        sc.value
                            .iter_mut()
                            .zip(value)
                            .for_each(|(f, v)| *f = v.to_f32());
                        let first = (h - it.h0) * per_head;
                        for i in first..first + per_head {
                            let w = sc.scores[i * ck + j];
                            if w != 0.0 {
                                axpy::<f32, FMA>(w, &sc.value, &mut sc.acc[i * d..(i + 1) * d]);
                            }
                        }
                    }
                }
            } else {
                for h in it.h0..it.h1 {
                    let first = (h - it.h0) * per_head;
                    for i in first..first + per_head {
                        let acc = &mut sc.acc[i * d..(i + 1) * d];
                        for (j, &slot) in sc.keys.iter().enumerate() {
                            let w = sc.scores[i * ck + j];
                            if w != 0.0 {
                                let value = &self.kv_pages[slot + (2 * h + 1) * d..][..d];
                                axpy::<T, FMA>(w, value, acc);
                            }
                        }
                    }
                }
            }
            c0 = c1;
        }

        if let Some(part) = it.part {
            for i in 0..nr {
                let at = part + i * (d + 2);
                // SAFETY: `plan` gave this item `nr * (d + 2)` floats of the partials from
                // `part`, which no other item writes.
                unsafe {
                    *self.parts.0.add(at) = sc.m[i];
                    *self.parts.0.add(at + 1) = sc.l[i];
                    std::ptr::copy_nonoverlapping(
                        sc.acc[i * d..].as_ptr(),
                        self.parts.0.add(at + 2),
                        d,
                    );
                }
            }
            return;
        }
        for i in 0..nr {
            let base = q_row(i);
            let inv = 1.0 / sc.l[i];
            for (e, a) in sc.acc[i * d..(i + 1) * d].iter().enumerate() {
                // SAFETY: `base + e` lies in this item's (row, head) range of `out` (caller's
                // contract), which no other item writes.
                unsafe { *out.0.add(base + e) = T::from_f32(a * inv) };
            }
        }
    }

    /// Offset in `q` and `out` of row `i` of `it`'s tiles: (KV head `h0 + i / (rows * g)`,
    /// query row `r0 + (i / g) % rows`, head `i % g` of that KV head's group).
    fn row_offset(&self, it: &Item, i: usize) -> usize {
        let s = self.s;
        let g = s.q_heads / s.kv_heads;
        let rows = it.r1 - it.r0;
        let q_start = self.m.cu_q_lens[it.seq] as usize;
        let (kvh, r, j) = (it.h0 + i / (rows * g), it.r0 + (i / g) % rows, i % g);
        ((q_start + r) * s.q_heads + kvh * g + j) * s.head_dim
    }

    /// Merges the partial softmaxes of `split` (one item's key ranges) into its output rows.
    ///
    /// # Safety
    /// Every item of `split` has run; no other thread writes their rows of `out`.
    unsafe fn combine(&self, split: &[Item], partials: &[f32], out: &SharedOut<T>) {
        let it = &split[0];
        let d = self.s.head_dim;
        let g = self.s.q_heads / self.s.kv_heads;
        let nr = (it.h1 - it.h0) * (it.r1 - it.r0) * g;
        let mut acc = vec![0.0f32; d];
        for i in 0..nr {
            let at = |o: &Item| o.part.expect("split items have partials") + i * (d + 2);
            let mx = split
                .iter()
                .map(|o| partials[at(o)])
                .fold(f32::NEG_INFINITY, f32::max);
            acc.fill(0.0);
            let mut l = 0.0f32;
            if mx > f32::NEG_INFINITY {
                for o in split {
                    let (m_o, l_o) = (partials[at(o)], partials[at(o) + 1]);
                    if l_o == 0.0 {
                        continue;
                    }
                    let w = (m_o - mx).exp();
                    l += l_o * w;
                    for (a, x) in acc.iter_mut().zip(&partials[at(o) + 2..at(o) + 2 + d]) {
                        *a += w * x;
                    }
                }
            }
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            let base = self.row_offset(it, i);
            for (e, a) in acc.iter().enumerate() {
                // SAFETY: the item's rows of `out` (caller's contract).
                unsafe { *out.0.add(base + e) = T::from_f32(a * inv) };
            }
        }
    }
}

/// `x = exp(x - m)` for every entry, with masked entries (`-inf`) set to 0; returns the sum.
/// Vectorizes (no libm call): see [`exp_approx`].
#[inline(always)]
fn exp_shifted(row: &mut [f32], m: f32) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let n = row.len() - row.len() % L;
    let one = |x: &mut f32| {
        *x = if *x == f32::NEG_INFINITY {
            0.0
        } else {
            exp_approx(*x - m)
        };
        *x
    };
    for c in row[..n].chunks_exact_mut(L) {
        for l in 0..L {
            acc[l] += one(&mut c[l]);
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for x in &mut row[n..] {
        sum += one(x);
    }
    sum
}

/// `e^x` for `x <= 0` (the online softmax's only case; larger `x` are clamped to 88), within
/// 2e-7 relative: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r` by its degree-6 Taylor
/// polynomial (remainder `r^7 / 7! < 1.3e-7`), `2^n` built in the exponent bits. Inputs below
/// -87 give `e^-87` (~1.6e-38) instead of smaller values: negligible beside the row's largest
/// weight, which is 1.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    // The rounded sum's bits minus ROUND's are that integer too (it sits in the low mantissa
    // bits): no float-to-integer conversion, whose saturating `as` kept the loop scalar.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits());
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(n_int.wrapping_add(127) << 23)
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Proof that the AVX-512 tiles may run: the CPU has AVX-512F, BW and VL (only [`Ctx::tiles`]
/// makes one).
#[derive(Clone, Copy)]
struct Tiles(());

impl Tiles {
    /// [`tiles::score`] for `n` (1 to 4) rows.
    #[inline(always)]
    fn score(
        self,
        n: usize,
        q: &[f32],
        d: usize,
        (kt, ckp): (&[f32], usize),
        out: &mut [f32],
        ck: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `Tiles` exists only where the CPU has AVX-512F, BW and VL.
        unsafe {
            match n {
                4 => tiles::score::<4>(q, d, kt, ckp, out, ck),
                3 => tiles::score::<3>(q, d, kt, ckp, out, ck),
                2 => tiles::score::<2>(q, d, kt, ckp, out, ck),
                _ => tiles::score::<1>(q, d, kt, ckp, out, ck),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (n, q, d, kt, ckp, out, ck);
    }

    /// [`tiles::score_key`] for `n` (1 to 4) rows, into column `j` of `scores` (stride `ck`).
    #[inline(always)]
    fn score_key<T: Element>(
        self,
        n: usize,
        q: &[f32],
        key: &[T],
        (scores, j, ck): (&mut [f32], usize, usize),
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            let d = key.len();
            let mut put = |r: &[f32]| {
                for (e, v) in r.iter().enumerate() {
                    scores[e * ck + j] = *v;
                }
            };
            // SAFETY: a `Tiles` exists only where the CPU has AVX-512F, BW and VL, and d % 16 == 0.
            unsafe {
                match n {
                    4 => put(&tiles::score_key::<T, 4>(q, key.as_ptr(), d)),
                    3 => put(&tiles::score_key::<T, 3>(q, key.as_ptr(), d)),
                    2 => put(&tiles::score_key::<T, 2>(q, key.as_ptr(), d)),
                    _ => put(&tiles::score_key::<T, 1>(q, key.as_ptr(), d)),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (n, q, key, scores, j, ck);
    }

    /// [`tiles::pv`] for `n` (1 to 4) rows; `values` holds the addresses of the chunk's value
    /// rows of one KV head, `d` values of `T` each, inside the pool.
    #[inline(always)]
    fn pv<T: Element>(
        self,
        n: usize,
        w: &[f32],
        ck: usize,
        values: &[usize],
        acc: &mut [f32],
        d: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `usize` and a pointer have one layout; the addresses point into the pool.
            let values: &[*const T] =
                unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), values.len()) };
            // SAFETY: a `Tiles` exists only where the CPU has AVX-512F, BW and VL; rows as documented.
            unsafe {
                match n {
                    4 => tiles::pv::<T, 4>(w, ck, values, acc, d),
                    3 => tiles::pv::<T, 3>(w, ck, values, acc, d),
                    2 => tiles::pv::<T, 2>(w, ck, values, acc, d),
                    _ => tiles::pv::<T, 1>(w, ck, values, acc, d),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (n, w, ck, values, acc, d);
    }
}

/// Vector lanes of the many-row tiles ([`tiles`]): one AVX-512 register of f32.
const LANES: usize = 16;

/// The many-row (prefill) tiles in AVX-512: scores vectorized across keys from a transposed
/// chunk, and P.V with the rows' accumulators in registers. Plain loops did not vectorize
/// (LLVM kept the accumulator arrays on the stack).
#[cfg(target_arch = "x86_64")]
// Rows index two accumulator arrays (and a pointer) in step: plain index loops read clearer.
#[allow(clippy::needless_range_loop)]
mod tiles {
    use super::{Element, LANES as L};
    use std::arch::x86_64::*;

    /// Scores of `R` rows (`q`: `R` rows of `d`) against a chunk of keys transposed to
    /// `kt[d, ckp]` (`ckp` a multiple of 16, zero-padded), into `out` (`R` rows of stride
    /// `ck`): two vectors of keys at a time where there are, `2 R` accumulators.
    ///
    /// # Safety
    /// AVX-512F available; the slices hold what the dimensions say.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn score<const R: usize>(
        q: &[f32],
        d: usize,
        kt: &[f32],
        ckp: usize,
        out: &mut [f32],
        ck: usize,
    ) {
        assert!(
            q.len() >= R * d && kt.len() >= d * ckp && out.len() >= R * ck && ckp.is_multiple_of(L)
        );
        let mut kb = 0;
        while kb < ckp {
            let two = kb + 2 * L <= ckp;
            // SAFETY: bounds asserted above; every offset stays inside them.
            unsafe {
                let mut a0 = [_mm512_setzero_ps(); R];
                let mut a1 = [_mm512_setzero_ps(); R];
                let (kp, qp) = (kt.as_ptr(), q.as_ptr());
                if two {
                    for c in 0..d {
                        let k0 = _mm512_loadu_ps(kp.add(c * ckp + kb));
                        let k1 = _mm512_loadu_ps(kp.add(c * ckp + kb + L));
                        for r in 0..R {
                            let qv = _mm512_set1_ps(*qp.add(r * d + c));
                            a0[r] = _mm512_fmadd_ps(qv, k0, a0[r]);
                            a1[r] = _mm512_fmadd_ps(qv, k1, a1[r]);
                        }
                    }
                } else {
                    for c in 0..d {
                        let k0 = _mm512_loadu_ps(kp.add(c * ckp + kb));
                        for r in 0..R {
                            let qv = _mm512_set1_ps(*qp.add(r * d + c));
                            a0[r] = _mm512_fmadd_ps(qv, k0, a0[r]);
                        }
                    }
                }
                let mut buf = [0.0f32; 2 * L];
                for r in 0..R {
                    _mm512_storeu_ps(buf.as_mut_ptr(), a0[r]);
                    _mm512_storeu_ps(buf.as_mut_ptr().add(L), a1[r]);
                    let n = (if two { 2 * L } else { L }).min(ck.saturating_sub(kb));
                    out[r * ck + kb..r * ck + kb + n].copy_from_slice(&buf[..n]);
                }
            }
            kb += if two { 2 * L } else { L };
        }
    }

    /// Scores of `R` rows (`q`: `R` rows of `d`, a multiple of 16) against one key at `key`
    /// (`d` values): `R` accumulators over d, then one tree reduction each.
    ///
    /// # Safety
    /// AVX-512F (and BW, VL for bf16) available; `key` points to `d` readable values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn score_key<T: Element, const R: usize>(
        q: &[f32],
        key: *const T,
        d: usize,
    ) -> [f32; R] {
        assert!(q.len() >= R * d && d.is_multiple_of(L));
        // SAFETY: bounds asserted above; `key` by the caller's contract.
        unsafe {
            let qp = q.as_ptr();
            let mut a = [_mm512_setzero_ps(); R];
            for c in (0..d).step_by(L) {
                let k = T::load16(key.add(c));
                for r in 0..R {
                    a[r] = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(r * d + c)), k, a[r]);
                }
            }
            a.map(|v| _mm512_reduce_add_ps(v))
        }
    }

    /// `acc[r] += sum_j w[r, j] * value_j` for `R` rows (`w`: `R` rows of stride `ck`; `acc`:
    /// `R` rows of `d`, a multiple of 16), 32 (or 16) lanes of head_dim at a time held in
    /// registers while the chunk's value rows (`values[j]`, `d` each) stream by.
    ///
    /// # Safety
    /// AVX-512F available; `values[j]` point to `d` readable values for `j < ck`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn pv<T: Element, const R: usize>(
        w: &[f32],
        ck: usize,
        values: &[*const T],
        acc: &mut [f32],
        d: usize,
    ) {
        assert!(
            w.len() >= R * ck && acc.len() >= R * d && values.len() >= ck && d.is_multiple_of(L)
        );
        let mut dc = 0;
        while dc < d {
            let two = dc + 2 * L <= d;
            // SAFETY: bounds asserted above; `values` by the caller's contract.
            unsafe {
                let ap = acc.as_mut_ptr();
                let mut a0 = [_mm512_setzero_ps(); R];
                let mut a1 = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    a0[r] = _mm512_loadu_ps(ap.add(r * d + dc));
                    if two {
                        a1[r] = _mm512_loadu_ps(ap.add(r * d + dc + L));
                    }
                }
                for (j, &vp) in values[..ck].iter().enumerate() {
                    let v0 = T::load16(vp.add(dc));
                    if two {
                        let v1 = T::load16(vp.add(dc + L));
                        for r in 0..R {
                            let wv = _mm512_set1_ps(*w.get_unchecked(r * ck + j));
                            a0[r] = _mm512_fmadd_ps(wv, v0, a0[r]);
                            a1[r] = _mm512_fmadd_ps(wv, v1, a1[r]);
                        }
                    } else {
                        for r in 0..R {
                            let wv = _mm512_set1_ps(*w.get_unchecked(r * ck + j));
                            a0[r] = _mm512_fmadd_ps(wv, v0, a0[r]);
                        }
                    }
                }
                for r in 0..R {
                    _mm512_storeu_ps(ap.add(r * d + dc), a0[r]);
                    if two {
                        _mm512_storeu_ps(ap.add(r * d + dc + L), a1[r]);
                    }
                }
            }
            dc += if two { 2 * L } else { L };
        }
    }
}

/// Scores of rows `rows` (at most 4) against `key`, into column `j` of the score tile.
#[inline(always)]
fn score_rows<E: Element, const FMA: bool>(
    q: &[f32],
    scores: &mut [f32],
    rows: std::ops::Range<usize>,
    (j, ck): (usize, usize),
    key: &[E],
) {
    let d = key.len();
    let mut i = rows.start;
    while i < rows.end {
        let n = (rows.end - i).min(4);
        let q = &q[i * d..(i + n) * d];
        let mut put = |r: &[f32]| {
            for (e, v) in r.iter().enumerate() {
                scores[(i + e) * ck + j] = *v;
            }
        };
        match n {
            4 => put(&dot4::<E, FMA>(q, key)),
            3 => put(&dot_rows::<E, FMA, 3>(q, key)),
            2 => put(&dot_rows::<E, FMA, 2>(q, key)),
            _ => put(&dot_rows::<E, FMA, 1>(q, key)),
        }
        i += n;
    }
}

/// The largest of `xs` (`-inf` when empty), in 16 lanes so it vectorizes.
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    const L: usize = 16;
    let mut m = [f32::NEG_INFINITY; L];
    let n = xs.len() - xs.len() % L;
    for c in xs[..n].chunks_exact(L) {
        for l in 0..L {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    xs[n..]
        .iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a })
}

/// Four rows of `q` (`4 * d` values) against one key, as [`dot_rows`] does for fewer: written
/// with zipped chunk iterators, which LLVM keeps in four vector registers.
#[inline(always)]
fn dot4<T: Element, const FMA: bool>(q: &[f32], b: &[T]) -> [f32; 4] {
    const L: usize = 16;
    let d = b.len();
    let n = d - d % L;
    let (q0, rest) = q.split_at(d);
    let (q1, rest) = rest.split_at(d);
    let (q2, q3) = rest.split_at(d);
    let (mut a0, mut a1, mut a2, mut a3) = ([0.0f32; L], [0.0f32; L], [0.0f32; L], [0.0f32; L]);
    for ((((c0, c1), c2), c3), cb) in q0[..n]
        .chunks_exact(L)
        .zip(q1[..n].chunks_exact(L))
        .zip(q2[..n].chunks_exact(L))
        .zip(q3[..n].chunks_exact(L))
        .zip(b[..n].chunks_exact(L))
    {
        for l in 0..L {
            let k = cb[l].to_f32();
            a0[l] = madd::<FMA>(c0[l], k, a0[l]);
            a1[l] = madd::<FMA>(c1[l], k, a1[l]);
            a2[l] = madd::<FMA>(c2[l], k, a2[l]);
            a3[l] = madd::<FMA>(c3[l], k, a3[l]);
        }
    }
    let mut out = [a0, a1, a2, a3].map(|a| a.iter().sum::<f32>());
    for (o, qr) in out.iter_mut().zip([q0, q1, q2, q3]) {
        for (x, y) in qr[n..].iter().zip(&b[n..]) {
            *o = madd::<FMA>(*x, y.to_f32(), *o);
        }
    }
    out
}

/// `N` (1 to 4) rows of `q` (`N * d` values) against one key: the key is loaded once, and the
/// rows' accumulators are independent chains.
#[inline(always)]
fn dot_rows<T: Element, const FMA: bool, const N: usize>(q: &[f32], b: &[T]) -> [f32; N] {
    const L: usize = 16;
    let d = b.len();
    let n = d - d % L;
    let mut acc = [[0.0f32; L]; N];
    for c in (0..n).step_by(L) {
        let key: &[T; L] = b[c..c + L].try_into().expect("L values");
        let k = key.map(|x| x.to_f32());
        for (r, a) in acc.iter_mut().enumerate() {
            let qr: &[f32; L] = q[r * d + c..r * d + c + L].try_into().expect("L values");
            for l in 0..L {
                a[l] = madd::<FMA>(qr[l], k[l], a[l]);
            }
        }
    }
    let mut out = acc.map(|a| a.iter().sum::<f32>());
    for (r, o) in out.iter_mut().enumerate() {
        for (x, y) in q[r * d + n..(r + 1) * d].iter().zip(&b[n..]) {
            *o = madd::<FMA>(*x, y.to_f32(), *o);
        }
    }
    out
}

/// `acc += w * v`.
#[inline(always)]
fn axpy<T: Element, const FMA: bool>(w: f32, v: &[T], acc: &mut [f32]) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a = madd::<FMA>(w, x.to_f32(), *a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values as values;

    /// Runs items one after another but reports `n` threads, so the planner splits keys.
    struct Claims(usize);
    impl Workers for Claims {
        fn threads(&self) -> usize {
            self.0
        }
        fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
            (0..n).rev().for_each(f);
        }
    }

    /// Long sequences on few items are split into key ranges whose partial softmaxes are
    /// combined: the result equals an f64 reference, with and without a sliding window, for
    /// any thread count the planner is told (1 to 16 items per KV head).
    #[test]
    fn split_key_ranges_combine_to_the_reference() {
        let s = RpaShape {
            tokens: 8,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 64,
            total_pages: 70,
            page_size: 16,
            max_seqs: 2,
            pages_per_seq: 64,
        };
        let (kv_lens, cu) = (vec![1000, 700], vec![0, 5, 6]);
        // Pages of the two sequences interleaved through the pool.
        let pages: Vec<i32> = (0..128).map(|i| (i * 37) % 70).collect();
        let d = s.head_dim;
        let q = values(s.tokens * s.q_heads * d, 3);
        let kv = values(s.total_pages * s.page_size * 2 * s.kv_heads * d, 5);
        for window in [None, Some(600)] {
            let p = RpaParams {
                sm_scale: 0.125,
                soft_cap: None,
                sliding_window: window,
                q_block: 8,
                kv_pages_block: 4,
            };
            let m = RpaMeta {
                kv_lens: &kv_lens,
                page_indices: &pages,
                cu_q_lens: &cu,
                num_seqs: 2,
            };
            let want = reference(&s, &p, &q, &kv, &m);
            for threads in [1, 2, 8] {
                let split = plan(&s, &p, &m, threads).unwrap();
                assert!(
                    threads == 1 || split.partials > 0,
                    "{threads} threads: no split"
                );
                let mut out = vec![f32::NAN; q.len()];
                rpa(&s, &p, &q, &kv, &m, &mut out, &Claims(threads)).unwrap();
                for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() <= 1e-5,
                        "window {window:?}, {threads} threads, value {i}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// One long decode row on two threads: its keys are split into ranges, one item or more a
    /// thread, and every item reads whole slots (all KV heads); heads are split only when key
    /// ranges cannot give each thread an item.
    #[test]
    fn a_long_decode_row_is_split_by_keys_before_heads() {
        let s = RpaShape {
            tokens: 1,
            q_heads: 9,
            kv_heads: 3,
            head_dim: 64,
            total_pages: 80,
            page_size: 16,
            max_seqs: 1,
            pages_per_seq: 72,
        };
        let p = RpaParams {
            sm_scale: 0.125,
            soft_cap: None,
            sliding_window: None,
            q_block: 1,
            kv_pages_block: 4,
        };
        let pages: Vec<i32> = (0..72).collect();
        for (kv_len, threads, whole) in [(1056, 2, true), (1056, 8, false), (300, 2, false)] {
            let m = RpaMeta {
                kv_lens: &[kv_len],
                page_indices: &pages,
                cu_q_lens: &[0, 1],
                num_seqs: 1,
            };
            let items = plan(&s, &p, &m, threads).unwrap().items;
            assert!(
                items.len() >= threads,
                "{kv_len} keys, {threads} threads: {items:?}"
            );
            assert_eq!(
                items.iter().all(|it| (it.h0, it.h1) == (0, 3)),
                whole,
                "{kv_len} keys, {threads} threads: {items:?}"
            );
        }
    }

    /// Causal attention in f64 over the pool, rows past the batch zero.
    fn reference(s: &RpaShape, p: &RpaParams, q: &[f32], kv: &[f32], m: &RpaMeta) -> Vec<f64> {
        let (d, g) = (s.head_dim, s.q_heads / s.kv_heads);
        let mut out = vec![0.0f64; q.len()];
        for seq in 0..m.num_seqs as usize {
            let (c0, c1) = (m.cu_q_lens[seq] as usize, m.cu_q_lens[seq + 1] as usize);
            let kv_len = m.kv_lens[seq] as usize;
            for t in c0..c1 {
                let pos = kv_len - (c1 - c0) + (t - c0);
                let lo = p.sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
                for h in 0..s.q_heads {
                    let qr = &q[(t * s.q_heads + h) * d..][..d];
                    let slot = |k: usize, which: usize| {
                        let page = m.page_indices[seq * s.pages_per_seq + k / s.page_size];
                        let at = (page as usize * s.page_size + k % s.page_size) * 2 * s.kv_heads;
                        &kv[(at + 2 * (h / g) + which) * d..][..d]
                    };
                    let scores: Vec<f64> = (lo..=pos)
                        .map(|k| {
                            let dot: f64 = qr
                                .iter()
                                .zip(slot(k, 0))
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum();
                            dot * p.sm_scale as f64
                        })
                        .collect();
                    let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for (k, w) in (lo..=pos).zip(&e) {
                        for (o, v) in out[(t * s.q_heads + h) * d..][..d]
                            .iter_mut()
                            .zip(slot(k, 1))
                        {
                            *o += w / sum * *v as f64;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn exp_approx_is_within_its_stated_error() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 87.0 * i as f64 / 200_000.0;
            let rel = (exp_approx(x as f32) as f64 / (x as f32 as f64).exp() - 1.0).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        assert_eq!(exp_approx(0.0), 1.0);
    }
}
