//! [`XlaPool`]: the host kernels' work items shared with XLA's intra-op thread pool
//! (`XLA_FFI_ThreadPool_Schedule`). Helper tasks and the calling thread take items from one
//! counter; the call returns once every item is done. Falls back to the calling thread alone
//! when the plugin has no pool.
//!
//! A decode step calls a host kernel every ~150 us (four projections and the attention per
//! layer), with only small XLA ops between. A helper scheduled through XLA's pool then starts
//! ~6-8 us after the call (its thread has gone to sleep), and the call runs on one core
//! meanwhile. So after the items of a small call a helper *lingers*: it spins for up to
//! [`LINGER`] waiting for the next call's work, which is handed to it through a one-slot
//! mailbox instead of the pool. The README gives `bench decode` before and after this change
//! (batch 1 and 8 faster, batch 32 unchanged); [`LINGER`] was chosen by alternating lingers
//! every 10 steps inside one process (a temporary harness, not kept): 100 us beat none by 5% at
//! batch 1, 400 us beat 100 by 2%, 1 ms gained nothing more (so 200 us). A lingering thread is
//! one of XLA's pool threads held for at most [`LINGER`] after the last small call; large
//! (prefill) calls never linger, so XLA's own parallel ops there never wait on it.

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::workers::{Serial, Workers};
use crate::pjrt::ffi::CallFrame;

/// How long a helper waits for the next small call before going back to XLA's pool.
const LINGER: Duration = Duration::from_micros(200);

/// Work items of one call, run on XLA's intra-op pool and the calling thread.
pub struct XlaPool {
    helpers: Helpers,
    /// Whether helpers linger for the next call afterwards (decode-sized calls).
    linger: bool,
}

/// Where helper tasks run.
enum Helpers {
    /// XLA's intra-op pool, through the call's frame.
    Xla(*mut CallFrame),
    /// A fresh thread per task (the tests' stand-in for XLA's pool).
    #[cfg(test)]
    Threads,
}

impl XlaPool {
    pub fn new(frame: *mut CallFrame, linger: bool) -> XlaPool {
        XlaPool {
            helpers: Helpers::Xla(frame),
            linger,
        }
    }

    /// Starts `pool_task(data)` on a helper; false if it could not.
    fn schedule(&self, data: *mut c_void) -> bool {
        match self.helpers {
            // SAFETY: `frame` is XLA's call frame for this call; `pool_task` takes ownership
            // of `data` when it runs.
            Helpers::Xla(frame) => unsafe { CallFrame::schedule(frame, pool_task, data) },
            #[cfg(test)]
            Helpers::Threads => {
                let data = data as usize;
                // SAFETY: as above.
                std::thread::spawn(move || unsafe { pool_task(data as *mut c_void) });
                true
            }
        }
    }
}

struct Shared {
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
    n: usize,
    linger: bool,
    /// The caller's closure; dereferenced only for claimed items (index < n), which all finish
    /// before the caller returns.
    f: *const (dyn Fn(usize) + Sync),
}

// SAFETY: `f` is only called for claimed items while the caller waits (see above).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// A helper's share: runs items, lets go of the call, and says whether to linger after it.
    fn work_then_linger(self: Arc<Shared>) -> bool {
        self.work();
        self.linger
    }

    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            // SAFETY: `i < n`, so the caller is still waiting and `f` is alive.
            let call = std::panic::AssertUnwindSafe(|| unsafe { (*self.f)(i) });
            if std::panic::catch_unwind(call).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// The one lingering helper: [`IDLE`] (none), [`WAITING`] (spinning, free to claim) or
/// [`CLAIMED`] (a caller took it and puts its work in [`MAILBOX`]).
static STATE: AtomicU8 = AtomicU8::new(IDLE);
const IDLE: u8 = 0;
const WAITING: u8 = 1;
const CLAIMED: u8 = 2;
/// The claimed call's work: an `Arc<Shared>` reference for the lingering helper.
static MAILBOX: AtomicPtr<Shared> = AtomicPtr::new(ptr::null_mut());

/// Hands `shared` to the lingering helper if one waits; false if none does.
fn hand_to_lingering(shared: &Arc<Shared>) -> bool {
    if STATE
        .compare_exchange(WAITING, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    let data = Arc::into_raw(Arc::clone(shared)).cast_mut();
    MAILBOX.store(data, Ordering::Release);
    true
}

/// Runs on a helper after a small call's items: becomes the lingering helper unless there is
/// one, and runs every call handed to it until [`LINGER`] passes without one.
fn linger() {
    if STATE
        .compare_exchange(IDLE, WAITING, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let mut deadline = Instant::now() + LINGER;
    loop {
        if STATE.load(Ordering::Acquire) == CLAIMED {
            let data = loop {
                let p = MAILBOX.swap(ptr::null_mut(), Ordering::Acquire);
                if !p.is_null() {
                    break p;
                }
                std::hint::spin_loop();
            };
            // SAFETY: `hand_to_lingering` leaked this reference for the lingering helper.
            if !unsafe { Arc::from_raw(data.cast_const()) }.work_then_linger() {
                STATE.store(IDLE, Ordering::Release);
                return;
            }
            STATE.store(WAITING, Ordering::Release);
            deadline = Instant::now() + LINGER;
            continue;
        }
        for _ in 0..32 {
            std::hint::spin_loop();
        }
        if Instant::now() >= deadline
            && STATE
                .compare_exchange(WAITING, IDLE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return;
        }
    }
}

unsafe extern "C" fn pool_task(data: *mut c_void) {
    // SAFETY: `data` is an `Arc<Shared>` leaked by `XlaPool::run` for this task.
    if unsafe { Arc::from_raw(data.cast_const().cast::<Shared>()) }.work_then_linger() {
        linger();
    }
}

impl Workers for XlaPool {
    fn threads(&self) -> usize {
        // The tests' stand-in pool always has a helper, so one-CPU machines run the handoffs too.
        #[cfg(test)]
        if matches!(self.helpers, Helpers::Threads) {
            return 2;
        }
        // Read once: `available_parallelism` consults cgroup files, and this runs on every call
        // (once per layer per step).
        static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |p| p.get()))
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let mut helpers = self.threads().saturating_sub(1).min(n.saturating_sub(1));
        if helpers == 0 {
            return Serial.run(n, f);
        }
        // SAFETY: erasing the closure's lifetime; `Shared::work` calls it only while this
        // function waits below.
        let f: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let shared = Arc::new(Shared {
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            n,
            linger: self.linger,
            f,
        });
        if hand_to_lingering(&shared) {
            helpers -= 1;
        }
        for _ in 0..helpers {
            let data = Arc::into_raw(Arc::clone(&shared))
                .cast_mut()
                .cast::<c_void>();
            if !self.schedule(data) {
                // SAFETY: the task was not scheduled; reclaim its reference.
                drop(unsafe { Arc::from_raw(data.cast_const().cast::<Shared>()) });
                break;
            }
        }
        shared.work();
        while shared.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        if shared.panicked.load(Ordering::Relaxed) {
            panic!("a work item panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Every item of every call runs exactly once, whether a helper was scheduled for it or
    /// a lingering helper took it, and large calls release the lingering helper.
    #[test]
    fn every_item_runs_once_across_lingered_and_scheduled_calls() {
        let pool = |linger| XlaPool {
            helpers: Helpers::Threads,
            linger,
        };
        for call in 0..400 {
            let n = 1 + call % 37;
            let counts: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            // Every 50th call is large: it stops the lingering.
            pool(call % 50 != 49).run(n, &|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            for (i, c) in counts.iter().enumerate() {
                assert_eq!(c.load(Ordering::Relaxed), 1, "call {call}, item {i} of {n}");
            }
        }
    }

    #[test]
    fn a_panicking_item_fails_the_call_and_the_next_call_still_runs() {
        let pool = XlaPool {
            helpers: Helpers::Threads,
            linger: true,
        };
        let hit = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|i| assert!(i != 5, "item 5"));
        }));
        assert!(hit.is_err());
        let done = AtomicU32::new(0);
        pool.run(8, &|_| {
            done.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(done.load(Ordering::Relaxed), 8);
    }
}
