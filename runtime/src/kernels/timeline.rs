//! An opt-in record of when each host kernel call and each step ran, to take a step program
//! apart from the inside: how long its kernels took by kind, how long XLA's own ops and call
//! overheads between them took, and how long the program took to start after `execute` and to
//! hand its result back after the last kernel. Off by default; while off, a call costs one
//! relaxed atomic load. `kernelgen bench decode` records one round per batch with it.
//!
//! The record is process-wide (XLA runs the kernels on its own threads): spans from every
//! program that runs while recording are kept, so record one engine at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What a span timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum What {
    /// [`super::rpa`]: the attention.
    Attention,
    /// [`super::matmul`]: a projection (with its fused norm or residual add, if any).
    Projection,
    /// [`super::lm_head`].
    LmHead,
    /// A whole step as the executor saw it, from `execute` to the logits on the host; `decode`
    /// when every sequence had one new token.
    Step { decode: bool },
}

/// One timed interval.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub what: What,
    pub start: Instant,
    pub end: Instant,
}

static RECORDING: AtomicBool = AtomicBool::new(false);
static SPANS: Mutex<Vec<Span>> = Mutex::new(Vec::new());

/// Starts recording (dropping anything recorded before).
pub fn start() {
    lock().clear();
    RECORDING.store(true, Ordering::Release);
}

/// Stops recording and returns the spans recorded since [`start`], in the order they ended.
pub fn stop() -> Vec<Span> {
    RECORDING.store(false, Ordering::Release);
    std::mem::take(&mut *lock())
}

/// The time now if recording (a span's start), else `None`.
pub fn now() -> Option<Instant> {
    RECORDING.load(Ordering::Relaxed).then(Instant::now)
}

/// Records `what` from `start` (from [`now`]) until now; nothing if `start` is `None`.
pub fn record(what: What, start: Option<Instant>) {
    if let Some(start) = start {
        let end = Instant::now();
        lock().push(Span { what, start, end });
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Span>> {
    SPANS.lock().unwrap_or_else(|e| e.into_inner())
}
