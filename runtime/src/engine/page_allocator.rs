//! KV page pool: a free list plus a per-page reference count.
//!
//! A page is *free* when its refcount is 0 and it sits on the free list exactly once; it is *in
//! use* otherwise. [`PageAllocator::alloc`] hands out a free page with refcount 1,
//! [`PageAllocator::retain`] adds a reference (n > 1 samples sharing a prompt's full pages) and
//! [`PageAllocator::release`] drops one, returning the page to the free list at 0. Releasing or
//! retaining a page that is free or out of range is an error ([`PageError`]), never a silent
//! corruption of the counts.

/// Misuse of the page pool.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("page {page} is out of range (pool has {max_pages} pages)")]
    OutOfRange { page: u32, max_pages: usize },
    #[error("page {0} is free (released twice, or never allocated)")]
    NotInUse(u32),
}

/// Fixed pool of `max_pages` KV pages with reference counts.
#[derive(Clone, Debug)]
pub struct PageAllocator {
    refcount: Vec<u32>,
    /// Stack of free pages; the top is handed out next.
    free_list: Vec<u32>,
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
        }
    }

    /// Pages in the pool.
    pub fn capacity(&self) -> usize {
        self.refcount.len()
    }

    /// A free page with refcount 1, or `None` when the pool is exhausted.
    pub fn alloc(&mut self) -> Option<u32> {
        let page = self.free_list.pop()?;
        self.refcount[page as usize] = 1;
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
            self.free_list.push(page);
        }
        Ok(())
    }

    /// References to `page` (0 when free or out of range).
    pub fn refcount(&self, page: u32) -> u32 {
        self.refcount.get(page as usize).copied().unwrap_or(0)
    }

    /// Pages with at least one reference.
    pub fn in_use(&self) -> usize {
        self.capacity() - self.free_list.len()
    }

    /// Pages on the free list.
    pub fn free(&self) -> usize {
        self.free_list.len()
    }

    /// Largest refcount of any page (0 when all are free).
    pub fn max_refcount(&self) -> u32 {
        self.refcount.iter().copied().max().unwrap_or(0)
    }

    /// Checks that the free list holds exactly the pages with refcount 0, each once.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut on_list = vec![false; self.capacity()];
        for &page in &self.free_list {
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
                    "page {page}: refcount {count} but {} the free list",
                    if free { "on" } else { "not on" }
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
