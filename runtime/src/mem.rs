//! The process's memory as the kernel accounts it (`/proc/self/status`): resident set, split
//! into anonymous memory (heap, device buffers of a CPU plugin) and file-backed pages (mapped
//! model files, the plugin's code), and the peak resident set so far. A [`MemTrace`] records it
//! at named stages of start-up and serving, so a report says where the memory went.

use serde::Serialize;
use std::sync::OnceLock;
use std::time::Instant;

/// Resident memory at one moment, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemSnapshot {
    /// Resident set (`VmRSS`).
    pub rss_bytes: u64,
    /// Anonymous resident pages (`RssAnon`).
    pub anon_bytes: u64,
    /// File-backed resident pages (`RssFile`).
    pub file_bytes: u64,
    /// The largest resident set so far (`VmHWM`).
    pub peak_rss_bytes: u64,
}

impl MemSnapshot {
    /// Now; `None` where `/proc/self/status` cannot be read (not Linux).
    pub fn now() -> Option<MemSnapshot> {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .map(|s| MemSnapshot::parse(&s))
    }

    /// Reads the `kB` fields of a `/proc/<pid>/status` text; absent fields are 0.
    pub fn parse(status: &str) -> MemSnapshot {
        let kb = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |k| k * 1024)
        };
        MemSnapshot {
            rss_bytes: kb("VmRSS"),
            anon_bytes: kb("RssAnon"),
            file_bytes: kb("RssFile"),
            peak_rss_bytes: kb("VmHWM"),
        }
    }
}

/// Memory the kernel can give this machine's processes without swapping (`MemAvailable` of
/// `/proc/meminfo`); `None` where it cannot be read.
pub fn available_host_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// Hands the heap's free memory back to the kernel (glibc's `malloc_trim`). A compile frees
/// most of what it allocated, but the allocator keeps the freed pages resident for reuse
/// unless asked; after a one-time phase such as compiling, nothing is lost by giving them back.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One recorded stage.
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    /// What had just finished ("weights uploaded", "compiled t16-decode").
    pub stage: String,
    /// Seconds since the process's first recorded stage (so traces of one process line up).
    pub at_s: f64,
    #[serde(flatten)]
    pub mem: MemSnapshot,
}

/// Memory at named stages, in order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemTrace {
    pub stages: Vec<Stage>,
}

impl MemTrace {
    /// Records `stage` now (nothing where memory cannot be read).
    pub fn record(&mut self, stage: impl Into<String>) {
        static FIRST: OnceLock<Instant> = OnceLock::new();
        let first = *FIRST.get_or_init(Instant::now);
        if let Some(mem) = MemSnapshot::now() {
            self.stages.push(Stage {
                stage: stage.into(),
                at_s: first.elapsed().as_secs_f64(),
                mem,
            });
        }
    }

    /// The largest resident set of the process so far (`VmHWM` now).
    pub fn peak_rss_bytes() -> Option<u64> {
        MemSnapshot::now().map(|m| m.peak_rss_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_fields_in_bytes() {
        let s = "Name:\tkernelgen\nVmHWM:\t  909936 kB\nVmRSS:\t  700000 kB\nRssAnon:\t  600000 kB\nRssFile:\t   99000 kB\n";
        let m = MemSnapshot::parse(s);
        assert_eq!(m.peak_rss_bytes, 909936 * 1024);
        assert_eq!(m.rss_bytes, 700000 * 1024);
        assert_eq!(m.anon_bytes, 600000 * 1024);
        assert_eq!(m.file_bytes, 99000 * 1024);
        assert_eq!(MemSnapshot::parse("VmRSS: x kB\n"), MemSnapshot::default());
    }

    #[test]
    fn available_memory_is_some_and_below_the_total() {
        let avail = available_host_bytes().expect("Linux /proc/meminfo");
        let total = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total_kb: u64 = total
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(avail > 0 && avail <= total_kb * 1024);
    }

    /// The live process: a resident set, never above its own peak, that grows when a buffer
    /// is touched.
    #[test]
    fn the_live_process_shows_a_touched_buffer() {
        let before = MemSnapshot::now().expect("Linux /proc");
        assert!(before.rss_bytes > 0 && before.rss_bytes <= before.peak_rss_bytes);
        let big = vec![1u8; 64 << 20];
        let after = MemSnapshot::now().unwrap();
        assert!(
            after.anon_bytes >= before.anon_bytes + (48 << 20),
            "{before:?} -> {after:?}"
        );
        assert!(after.peak_rss_bytes >= after.rss_bytes);
        drop(std::hint::black_box(big));
    }
}
