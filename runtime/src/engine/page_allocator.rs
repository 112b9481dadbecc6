//! KV page pool: a free list plus a per-page reference count, and optionally a prefix cache.
//!
//! A page is *free* when its refcount is 0 and it sits on the free list exactly once; it is *in
//! use* otherwise. [`PageAllocator::alloc`] hands out a free page with refcount 1,
//! [`PageAllocator::retain`] adds a reference (n > 1 samples sharing a prompt's full pages) and
//! [`PageAllocator::release`] drops one, returning the page to the free list at 0. Releasing or
//! retaining a page that is free or out of range is an error ([`PageError`]), never a silent
//! corruption of the counts.
//!
//! With the prefix cache on ([`PageAllocator::with_prefix_cache`]), a full page of computed
//! tokens is [`PageAllocator::register`]ed under a [`PageHash`] chained over every token up to
//! its end. Released to refcount 0, such a page is *cached* rather than free: it keeps its
//! contents, a later sequence with the same prefix takes it back with
//! [`PageAllocator::acquire`], and `alloc` evicts the least recently released cached page only
//! when no page is free. A page in use is never evicted. Empty + cached + in use = capacity.

/// Misuse of the page pool.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("page {page} is out of range (pool has {max_pages} pages)")]
    OutOfRange { page: u32, max_pages: usize },
    #[error("page {0} is free (released twice, or never allocated)")]
    NotInUse(u32),
}

/// The identity of a full page's contents: a hash chained over every token of the sequence up
/// to the page's end (see [`page_hash`]).
pub type PageHash = u128;

/// The hash of a page holding `tokens`, after a page whose hash is `prev` (`None` for the
/// first page): SHA-256 over the previous hash and the tokens, cut to 128 bits, so two pages
/// share a hash only when their whole prefixes are equal.
pub fn page_hash(prev: Option<PageHash>, tokens: &[u32]) -> PageHash {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    match prev {
        Some(p) => h.update(p.to_le_bytes()),
        None => h.update([0xff; 16]),
    }
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    let d = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    PageHash::from_le_bytes(first)
}

/// Full pages kept after their last user, by content.
#[derive(Clone, Debug, Default)]
struct PrefixCache {
    by_hash: std::collections::HashMap<PageHash, u32>,
    /// The hash each page is registered under.
    hash_of: Vec<Option<PageHash>>,
    /// Cached pages (refcount 0, registered), least recently released first: (tick, page).
    lru: std::collections::BTreeSet<(u64, u32)>,
    /// Each cached page's tick in `lru`.
    tick_of: Vec<u64>,
    tick: u64,
}

impl PrefixCache {
    fn new(pages: usize) -> PrefixCache {
        PrefixCache {
            hash_of: vec![None; pages],
            tick_of: vec![0; pages],
            ..PrefixCache::default()
        }
    }

    fn is_cached(&self, page: u32) -> bool {
        self.lru.contains(&(self.tick_of[page as usize], page))
    }

    /// Forgets the least recently released cached page's contents and returns it.
    fn evict(&mut self) -> Option<u32> {
        let (_, page) = self.lru.pop_first()?;
        if let Some(h) = self.hash_of[page as usize].take() {
            self.by_hash.remove(&h);
        }
        Some(page)
    }
}

/// Fixed pool of `max_pages` KV pages with reference counts.
#[derive(Clone, Debug)]
pub struct PageAllocator {
    refcount: Vec<u32>,
    /// Stack of free pages; the top is handed out next.
    free_list: Vec<u32>,
    cache: Option<PrefixCache>,
}

impl PageAllocator {
    /// A pool with every page free. Pages are handed out lowest id first.
    ///
    /// Page ids are `u32`; a pool larger than `u32::MAX` pages is clamped (the engine refuses
    /// such configs before building one).
    pub fn new(max_pages: usize) -> Self {
        let max_pages = max_pages.min(u32::MAX as usize);
        PageAllocator {
            refcount: vec![0; max_pages],
            free_list: (0..max_pages as u32).rev().collect(),
            cache: None,
        }
    }

    /// The same pool with the prefix cache on.
    pub fn with_prefix_cache(mut self) -> Self {
        self.cache = Some(PrefixCache::new(self.capacity()));
        self
    }

    /// Whether the prefix cache is on.
    pub fn caches_prefixes(&self) -> bool {
        self.cache.is_some()
    }

    /// Pages in the pool.
    pub fn capacity(&self) -> usize {
        self.refcount.len()
    }

    /// A free page with refcount 1 (evicting the least recently released cached page when
    /// none is free), or `None` when every page is in use.
    pub fn alloc(&mut self) -> Option<u32> {
        let page = match self.free_list.pop() {
            Some(p) => p,
            None => self.cache.as_mut()?.evict()?,
        };
        self.refcount[page as usize] = 1;
        Some(page)
    }

    /// Registers in-use `page` as holding the contents `hash` names. A page already
    /// registered, or contents another page already holds, leave the cache as it is.
    pub fn register(&mut self, page: u32, hash: PageHash) -> Result<(), PageError> {
        if *self.count_mut(page)? == 0 {
            return Err(PageError::NotInUse(page));
        }
        if let Some(c) = self.cache.as_mut() {
            if c.hash_of[page as usize].is_none() && !c.by_hash.contains_key(&hash) {
                c.by_hash.insert(hash, page);
                c.hash_of[page as usize] = Some(hash);
            }
        }
        Ok(())
    }

    /// The page holding the contents `hash` names, taken with one more reference (out of the
    /// cached set if it had none); `None` when no page holds them.
    pub fn acquire(&mut self, hash: PageHash) -> Option<u32> {
        let c = self.cache.as_mut()?;
        let page = *c.by_hash.get(&hash)?;
        if c.is_cached(page) {
            c.lru.remove(&(c.tick_of[page as usize], page));
        }
        self.refcount[page as usize] += 1;
        Some(page)
    }

    /// One more reference to an in-use page (sharing it with another page table).
    pub fn retain(&mut self, page: u32) -> Result<(), PageError> {
        let count = self.count_mut(page)?;
        if *count == 0 {
            return Err(PageError::NotInUse(page));
        }
        *count += 1;
        Ok(())
    }

    /// Drops one reference; the page returns to the free list when none are left.
    pub fn release(&mut self, page: u32) -> Result<(), PageError> {
        let count = self.count_mut(page)?;
        if *count == 0 {
            return Err(PageError::NotInUse(page));
        }
        *count -= 1;
        if *count == 0 {
            match self.cache.as_mut() {
                Some(c) if c.hash_of[page as usize].is_some() => {
                    c.tick += 1;
                    c.tick_of[page as usize] = c.tick;
                    c.lru.insert((c.tick, page));
                }
                _ => self.free_list.push(page),
            }
        }
        Ok(())
    }

    /// References to `page` (0 when free or out of range).
    pub fn refcount(&self, page: u32) -> u32 {
        self.refcount.get(page as usize).copied().unwrap_or(0)
    }

    /// Pages with at least one reference.
    pub fn in_use(&self) -> usize {
        self.capacity() - self.free()
    }

    /// Pages `alloc` can hand out: empty ones and cached ones (which it evicts).
    pub fn free(&self) -> usize {
        self.free_list.len() + self.cached()
    }

    /// Pages with no reference that keep their contents for a later prefix (prefix cache).
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.lru.len())
    }

    /// Largest refcount of any page (0 when all are free).
    pub fn max_refcount(&self) -> u32 {
        self.refcount.iter().copied().max().unwrap_or(0)
    }

    /// Checks that the free list and the cached set hold exactly the pages with refcount 0,
    /// each once, that cached pages are registered and free ones not, and that the hash index
    /// and the pages agree.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut on_list = vec![false; self.capacity()];
        let cached = self
            .cache
            .iter()
            .flat_map(|c| c.lru.iter().map(|&(_, p)| p));
        for page in self.free_list.iter().copied().chain(cached) {
            let slot = on_list
                .get_mut(page as usize)
                .ok_or_else(|| format!("free list holds out-of-range page {page}"))?;
            if *slot {
                return Err(format!("page {page} is on the free list twice"));
            }
            *slot = true;
        }
        for (page, (&count, &free)) in self.refcount.iter().zip(&on_list).enumerate() {
            if (count == 0) != free {
                return Err(format!(
                    "page {page}: refcount {count} but {} the free list or cached set",
                    if free { "on" } else { "not on" }
                ));
            }
        }
        if let Some(c) = &self.cache {
            for &p in &self.free_list {
                if c.hash_of[p as usize].is_some() {
                    return Err(format!("free page {p} still registered"));
                }
            }
            for &(tick, p) in &c.lru {
                if c.hash_of[p as usize].is_none() || c.tick_of[p as usize] != tick {
                    return Err(format!("cached page {p} unregistered or out of order"));
                }
            }
            for (&h, &p) in &c.by_hash {
                if c.hash_of.get(p as usize).copied().flatten() != Some(h) {
                    return Err(format!(
                        "hash index names page {p}, which holds other contents"
                    ));
                }
            }
            let registered = c.hash_of.iter().filter(|h| h.is_some()).count();
            if registered != c.by_hash.len() {
                return Err(format!(
                    "{registered} pages registered, {} in the hash index",
                    c.by_hash.len()
                ));
            }
        }
        Ok(())
    }

    fn count_mut(&mut self, page: u32) -> Result<&mut u32, PageError> {
        let max_pages = self.refcount.len();
        self.refcount
            .get_mut(page as usize)
            .ok_or(PageError::OutOfRange { page, max_pages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Clone, Debug)]
    enum Op {
        Alloc,
        Retain(usize),
        Release(usize),
        /// Release or retain an arbitrary page id, which may be free or out of range.
        Wild(u32, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Alloc),
            1 => any::<usize>().prop_map(Op::Retain),
            3 => any::<usize>().prop_map(Op::Release),
            1 => (0u32..40, any::<bool>()).prop_map(|(p, r)| Op::Wild(p, r)),
        ]
    }

    proptest! {
        /// Against a model (a list of held references): counts, free list and errors agree.
        #[test]
        fn matches_reference_model(max_pages in 0usize..24, ops in prop::collection::vec(op(), 0..200)) {
            let mut a = PageAllocator::new(max_pages);
            let mut held: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc => match a.alloc() {
                        Some(p) => {
                            prop_assert!(!held.contains(&p), "handed out a page in use");
                            prop_assert!((p as usize) < max_pages);
                            held.push(p);
                        }
                        None => {
                            let distinct: std::collections::BTreeSet<_> = held.iter().collect();
                            prop_assert_eq!(distinct.len(), max_pages);
                        }
                    },
                    Op::Retain(i) if !held.is_empty() => {
                        let p = held[i % held.len()];
                        prop_assert!(a.retain(p).is_ok());
                        held.push(p);
                    }
                    Op::Release(i) if !held.is_empty() => {
                        let p = held.swap_remove(i % held.len());
                        prop_assert!(a.release(p).is_ok());
                    }
                    Op::Retain(_) | Op::Release(_) => {}
                    Op::Wild(p, release) => {
                        let refs = held.iter().filter(|&&h| h == p).count();
                        let r = if release { a.release(p) } else { a.retain(p) };
                        if (p as usize) >= max_pages {
                            prop_assert_eq!(r, Err(PageError::OutOfRange { page: p, max_pages }));
                        } else if refs == 0 {
                            prop_assert_eq!(r, Err(PageError::NotInUse(p)));
                        } else if release {
                            prop_assert!(r.is_ok());
                            let at = held.iter().position(|&h| h == p).unwrap();
                            held.swap_remove(at);
                        } else {
                            prop_assert!(r.is_ok());
                            held.push(p);
                        }
                    }
                }
                prop_assert!(a.check_invariants().is_ok(), "{:?}", a.check_invariants());
                let distinct: std::collections::BTreeSet<_> = held.iter().copied().collect();
                prop_assert_eq!(a.in_use(), distinct.len());
                prop_assert_eq!(a.in_use() + a.free(), max_pages);
                for p in 0..max_pages as u32 {
                    let refs = held.iter().filter(|&&h| h == p).count() as u32;
                    prop_assert_eq!(a.refcount(p), refs);
                }
                let max_ref = (0..max_pages as u32).map(|p| a.refcount(p)).max().unwrap_or(0);
                prop_assert_eq!(a.max_refcount(), max_ref);
            }
        }
    }

    #[derive(Clone, Debug)]
    enum CacheOp {
        Alloc,
        Retain(usize),
        Release(usize),
        Register(usize, u8),
        Acquire(u8),
    }

    fn cache_op() -> impl Strategy<Value = CacheOp> {
        prop_oneof![
            3 => Just(CacheOp::Alloc),
            1 => any::<usize>().prop_map(CacheOp::Retain),
            3 => any::<usize>().prop_map(CacheOp::Release),
            2 => (any::<usize>(), 0u8..6).prop_map(|(i, h)| CacheOp::Register(i, h)),
            2 => (0u8..6).prop_map(CacheOp::Acquire),
        ]
    }

    proptest! {
        /// The prefix cache against a model: held references, what each page holds, and the
        /// order cached pages were released in. A page in use is never handed out or evicted;
        /// eviction takes the least recently released cached page, and only when no page is
        /// empty; empty + cached + in use = capacity after every operation.
        #[test]
        fn cached_pages_match_reference_model(
            max_pages in 1usize..12,
            ops in prop::collection::vec(cache_op(), 0..300),
        ) {
            let mut a = PageAllocator::new(max_pages).with_prefix_cache();
            let mut held: Vec<u32> = Vec::new();
            let mut holds: BTreeMap<u32, PageHash> = BTreeMap::new();
            let mut released: Vec<u32> = Vec::new(); // cached pages, oldest first
            let refs = |held: &Vec<u32>, p: u32| held.iter().filter(|&&h| h == p).count();
            for op in ops {
                match op {
                    CacheOp::Alloc => {
                        let empty = (0..max_pages as u32)
                            .any(|p| refs(&held, p) == 0 && !holds.contains_key(&p));
                        match a.alloc() {
                            Some(p) => {
                                prop_assert_eq!(refs(&held, p), 0, "handed out a page in use");
                                if empty {
                                    prop_assert!(!holds.contains_key(&p), "evicted while a page was empty");
                                } else {
                                    prop_assert_eq!(Some(&p), released.first(), "not the LRU cached page");
                                    released.remove(0);
                                    holds.remove(&p);
                                }
                                held.push(p);
                            }
                            None => prop_assert!(!empty && released.is_empty()),
                        }
                    }
                    CacheOp::Retain(i) if !held.is_empty() => {
                        let p = held[i % held.len()];
                        prop_assert!(a.retain(p).is_ok());
                        held.push(p);
                    }
                    CacheOp::Release(i) if !held.is_empty() => {
                        let p = held.swap_remove(i % held.len());
                        prop_assert!(a.release(p).is_ok());
                        if refs(&held, p) == 0 && holds.contains_key(&p) {
                            released.push(p);
                        }
                    }
                    CacheOp::Register(i, h) if !held.is_empty() => {
                        let p = held[i % held.len()];
                        let hash = h as PageHash;
                        prop_assert!(a.register(p, hash).is_ok());
                        if !holds.contains_key(&p) && !holds.values().any(|&x| x == hash) {
                            holds.insert(p, hash);
                        }
                    }
                    CacheOp::Retain(_) | CacheOp::Release(_) | CacheOp::Register(..) => {}
                    CacheOp::Acquire(h) => {
                        let hash = h as PageHash;
                        let want = holds.iter().find(|(_, &x)| x == hash).map(|(&p, _)| p);
                        let got = a.acquire(hash);
                        prop_assert_eq!(got, want);
                        if let Some(p) = got {
                            released.retain(|&r| r != p);
                            held.push(p);
                        }
                    }
                }
                prop_assert!(a.check_invariants().is_ok(), "{:?}", a.check_invariants());
                let distinct: BTreeSet<u32> = held.iter().copied().collect();
                prop_assert_eq!(a.in_use(), distinct.len());
                prop_assert_eq!(a.cached(), released.len());
                prop_assert_eq!(a.free_list.len() + a.cached() + a.in_use(), max_pages);
                for p in 0..max_pages as u32 {
                    prop_assert_eq!(a.refcount(p) as usize, refs(&held, p));
                }
            }
        }
    }

    #[test]
    fn double_release_is_an_error() {
        let mut a = PageAllocator::new(2);
        let p = a.alloc().unwrap();
        a.release(p).unwrap();
        assert_eq!(a.release(p), Err(PageError::NotInUse(p)));
        assert_eq!(a.retain(p), Err(PageError::NotInUse(p)));
        assert!(a.check_invariants().is_ok());
        assert_eq!(a.free(), 2);
    }
}
