//! How the host kernels share their work items out: [`Workers`] runs `f(0..n)` (the runtime's
//! implementation hands items to XLA's intra-op pool, `super::XlaPool`), and [`SharedOut`] lets
//! items write disjoint parts of one output.

/// Runs `f(0..n)`, possibly on several threads; returns when every call has returned.
pub trait Workers {
    /// How many threads `run` may use.
    fn threads(&self) -> usize;
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync));
}

/// Everything on the calling thread.
pub struct Serial;

impl Workers for Serial {
    fn threads(&self) -> usize {
        1
    }
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..n).for_each(f);
    }
}

/// An output pointer shared by work items that write disjoint ranges of it.
pub struct SharedOut<T>(pub *mut T);
// SAFETY: work items write disjoint ranges through it.
unsafe impl<T> Sync for SharedOut<T> {}
