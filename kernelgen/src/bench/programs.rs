//! `kernelgen bench programs`: what bounding the loaded step programs (`serve --max-programs`)
//! saves in memory and costs in time, in one run.
//!
//! Each bound serves the same workload through the HTTP server, in a process of its own (the
//! CLI runs [`measure`] in a child per bound, so one bound's peak resident set and the memory
//! its allocator kept never count against the next): `requests` completions whose prompts cycle
//! through lengths from a few tokens to a few hundred (so steps meet many token buckets and
//! decode batch sizes) and whose outputs cycle through 16-63 tokens (end-of-sequence ignored),
//! `clients` in flight. [`warm_up`] first serves the workload once so that every program is in
//! the program cache: no bound pays for a compile. The first bound is the baseline the others'
//! wall times are set against ([`report`]).

use super::serve::{prompts, RunningServer};
use super::{BenchError, BenchModel};
use crate::serve::start;
use runtime::engine::EngineConfig;
use runtime::mem::MemSnapshot;
use serde::{Deserialize, Serialize};

/// What to run.
#[derive(Clone, Debug)]
pub struct ProgramsBench {
    pub served: BenchModel,
    /// Bounds to measure (0: no bound), in order.
    pub bounds: Vec<usize>,
    pub requests: usize,
    pub clients: usize,
    pub page_size: usize,
}

/// One bound's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoundFigures {
    /// 0: no bound.
    pub max_programs: usize,
    pub programs_loaded: usize,
    pub unloads: u64,
    pub reloads: u64,
    /// Peak resident set of the bound's process (`VmHWM`): start-up and the workload.
    pub peak_rss_bytes: u64,
    /// Resident set after the last request.
    pub rss_bytes: u64,
    pub wall_s: f64,
    pub output_tokens_per_s: f64,
    /// Wall time over the first bound's.
    pub wall_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramsReport {
    pub bounds: Vec<BoundFigures>,
}

/// Prompt lengths the workload cycles through (tokens, about: prompts are text).
const PROMPT_LENS: [usize; 6] = [6, 20, 45, 90, 170, 300];

impl ProgramsBench {
    fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Options(m.to_string()));
        if self.bounds.is_empty() {
            return bad("--max-programs: give bounds, e.g. 0,6,3 (0: no bound)");
        }
        if self.requests == 0 || self.clients == 0 {
            return bad("--requests and --clients must be >= 1");
        }
        Ok(())
    }

    fn engine(&self) -> EngineConfig {
        let longest = PROMPT_LENS[PROMPT_LENS.len() - 1] * 2 + 64;
        let max_seq_len = longest.div_ceil(self.page_size) * self.page_size;
        EngineConfig {
            max_seqs: self.clients,
            max_pages: self.clients * max_seq_len / self.page_size + 1,
            page_size: self.page_size,
            max_seq_len,
            max_tokens_per_round: 256,
        }
    }
}

/// Serves the workload once with no bound, so every program it meets is in the program cache.
pub fn warm_up(b: &ProgramsBench) -> Result<(), BenchError> {
    b.validate()?;
    serve_workload(b, 0).map(|_| ())
}

/// One bound's figures, in this process (its peak resident set is the process's): `bound`
/// programs at most (0: no bound).
pub fn measure(b: &ProgramsBench, bound: usize) -> Result<BoundFigures, BenchError> {
    b.validate()?;
    serve_workload(b, bound)
}

/// The bounds' figures, each wall time set against the first's.
pub fn report(mut bounds: Vec<BoundFigures>) -> ProgramsReport {
    let base = bounds.first().map_or(1.0, |f| f.wall_s.max(1e-9));
    for f in &mut bounds {
        f.wall_ratio = f.wall_s / base;
    }
    ProgramsReport { bounds }
}

fn serve_workload(b: &ProgramsBench, bound: usize) -> Result<BoundFigures, BenchError> {
    let mut opts = b.served.serve_options(b.engine());
    opts.program_cache = Some(runtime::cache::executables::ExecutableCache::default_dir());
    opts.max_loaded_programs = (bound > 0).then_some(bound);
    let served = start(&opts)?;
    let bodies = bodies(&served, b.requests);
    let server = RunningServer::start(served)?;
    let t = server.run("/v1/completions", &bodies, b.clients)?;
    let (loaded, unloads, reloads) = server.metrics.programs();
    let now = MemSnapshot::now().unwrap_or_default();
    drop(server);
    Ok(BoundFigures {
        max_programs: bound,
        programs_loaded: loaded,
        unloads,
        reloads,
        peak_rss_bytes: now.peak_rss_bytes,
        rss_bytes: now.rss_bytes,
        wall_s: t.wall_s,
        output_tokens_per_s: t.output_tokens_per_s,
        wall_ratio: 1.0,
    })
}

/// The workload: prompt lengths cycling through [`PROMPT_LENS`], outputs through 16-63 tokens.
fn bodies(served: &crate::serve::Served, requests: usize) -> Vec<serde_json::Value> {
    (0..requests)
        .map(|i| {
            let len = PROMPT_LENS[i % PROMPT_LENS.len()];
            let text = prompts(served, 1, len, 7000 + i).remove(0);
            serde_json::json!({
                "prompt": text, "max_tokens": 16 + (i * 13) % 48, "temperature": 0,
                "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true},
            })
        })
        .collect()
}
