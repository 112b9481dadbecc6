//! `kernelgen bench memory`: how much host memory serving takes beside what it must hold (the
//! weights and the KV pool), and whether it grows over a long run.
//!
//! One engine serves `requests` requests, `max_seqs` at a time, each decoding `new_tokens`
//! tokens (stop tokens off, so every run has the same length). The process's resident memory
//! is read (`/proc/self/status`) at every start-up stage ([`crate::step::MemoryReport`]), after
//! `warm_steps` steps and after the last step; the report sets the peak beside the weights +
//! pool floor and the growth after warm-up beside the warm figure.

use super::{submit_synthetic, BenchError, BenchModel};
use crate::serve::start;
use crate::step::weights::weight_bytes;
use crate::step::MemoryReport;
use runtime::engine::EngineConfig;
use runtime::mem::MemSnapshot;
use serde::Serialize;

/// What to serve.
#[derive(Clone, Debug)]
pub struct MemoryBench {
    pub served: BenchModel,
    pub requests: usize,
    pub max_seqs: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub page_size: usize,
    /// KV pages in the pool; `None`: just enough for `max_seqs` whole sequences.
    pub max_pages: Option<usize>,
    /// Steps after which the run counts as warm (every program it needs compiled).
    pub warm_steps: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryBenchReport {
    pub plugin: String,
    /// The weights as the step program holds them (f32).
    pub weight_bytes: u64,
    /// The KV pool of every layer.
    pub pool_bytes: u64,
    pub load_time_s: f64,
    pub steps: usize,
    pub warm_steps: usize,
    /// Resident memory after `warm_steps` steps and after the last one.
    pub warm: MemSnapshot,
    pub last: MemSnapshot,
    /// The process's peak resident set, start-up stages, and each program's memory plan.
    pub memory: MemoryReport,
    /// Resident memory each time a wave of `max_seqs` requests has finished: (requests
    /// finished, steps, memory). The KV pool is created untouched and its pages become resident
    /// as sequences write them, so only from the end of the first wave on (every slot written
    /// once) does growth mean a leak.
    pub waves: Vec<(usize, usize, MemSnapshot)>,
    /// Programs compiled after the warm-up (each adds its executable to the resident set).
    pub compiled_after_warm: Vec<String>,
}

impl MemoryBenchReport {
    /// Peak resident set beyond the weights and the pool.
    pub fn overhead_bytes(&self) -> i64 {
        self.memory.peak_rss_bytes.unwrap_or(0) as i64
            - (self.weight_bytes + self.pool_bytes) as i64
    }

    /// Resident set after the last step over the one after warm-up, minus one.
    pub fn growth(&self) -> f64 {
        self.last.rss_bytes as f64 / self.warm.rss_bytes.max(1) as f64 - 1.0
    }

    /// Resident set after the last wave over the one after the first, minus one (`None` with
    /// a single wave).
    pub fn growth_after_first_wave(&self) -> Option<f64> {
        match self.waves.as_slice() {
            [first, .., last] => {
                Some(last.2.rss_bytes as f64 / first.2.rss_bytes.max(1) as f64 - 1.0)
            }
            _ => None,
        }
    }
}

fn validate(b: &MemoryBench) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::Options(m.to_string()));
    if b.requests == 0 || b.max_seqs == 0 || b.prompt_len == 0 || b.new_tokens == 0 {
        return bad("--requests, --max-seqs, --prompt-len and --new-tokens must be >= 1");
    }
    if b.page_size == 0 {
        return bad("--page-size must be >= 1");
    }
    if b.warm_steps == 0 {
        return bad("--warm-steps must be >= 1");
    }
    Ok(())
}

/// Serves the workload once; `progress` hears how far it got.
pub fn run(
    b: &MemoryBench,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<MemoryBenchReport, BenchError> {
    validate(b)?;
    let max_seq_len = (b.prompt_len + b.new_tokens + 1).div_ceil(b.page_size) * b.page_size;
    let max_pages = b
        .max_pages
        .unwrap_or(max_seq_len / b.page_size * b.max_seqs + 1);
    let mut served = start(&b.served.serve_options(EngineConfig {
        max_seqs: b.max_seqs,
        max_pages,
        page_size: b.page_size,
        max_seq_len,
        max_tokens_per_round: (b.max_seqs * b.prompt_len).clamp(b.max_seqs, 512),
    }))?;
    submit_synthetic(&mut served, b.requests, b.prompt_len, b.new_tokens)?;
    let expected = b.requests.div_ceil(b.max_seqs) * (b.new_tokens + b.prompt_len);
    let mut steps = 0;
    let mut warm = None;
    let mut compiled_at_warm = Vec::new();
    let (mut finished, mut waves) = (0, Vec::new());
    while served.engine.has_work() {
        served.engine.step()?;
        let before = finished;
        finished += served.engine.take_finished().len();
        steps += 1;
        if finished / b.max_seqs > before / b.max_seqs || finished == b.requests {
            waves.push((finished, steps, MemSnapshot::now().unwrap_or_default()));
        }
        if steps == b.warm_steps {
            warm = MemSnapshot::now();
            compiled_at_warm = served
                .engine
                .executor()
                .times
                .compile
                .keys()
                .cloned()
                .collect();
        }
        if steps % 50 == 0 {
            progress(steps, expected);
        }
    }
    let last = MemSnapshot::now().unwrap_or_default();
    let exec = served.engine.executor();
    let pool_bytes = exec.pool_bytes();
    let source = exec.source();
    let weight_bytes = weight_bytes(&served.model, source.weights, source.split_head());
    Ok(MemoryBenchReport {
        plugin: b.served.plugin.display().to_string(),
        weight_bytes,
        pool_bytes,
        load_time_s: served.load_time.as_secs_f64(),
        steps,
        warm_steps: b.warm_steps,
        warm: warm.unwrap_or(last),
        last,
        waves,
        memory: exec.memory_report(),
        compiled_after_warm: match warm {
            Some(_) => exec
                .times
                .compile
                .keys()
                .filter(|k| !compiled_at_warm.contains(k))
                .cloned()
                .collect(),
            None => Vec::new(),
        },
    })
}
