//! One candidate on the live backend: emitted, compiled through PJRT, verified once against the
//! f64 reference (with NaN in every slot it must ignore: a fast wrong kernel is never a winner),
//! then timed: warm-up calls, then the median of `repeats` calls on one random ragged batch of
//! its phase (the same batch for every candidate of a tune: same seed).
//!
//! This is what the child process of [`super::isolate::ChildRunner`] runs; it reports through
//! [`Outcome`] on its stdout.

use super::{Candidate, Status, Workload};
use crate::emit::stablehlo;
use crate::numerics::{tolerance, KernelRunner};
use runtime::pjrt::{Api, Client};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use verify::Poison;

/// What a child process is asked to measure (its stdin, as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub workload: Workload,
    pub candidate: Candidate,
    pub plugin: PathBuf,
    pub warmup: u32,
    pub repeats: u32,
    pub seed: u64,
}

/// What the child reports (its last stdout line, as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    pub median_ms: Option<f64>,
    pub range_ms: Option<(f64, f64)>,
    pub error: Option<f64>,
    pub reason: Option<String>,
}

impl Outcome {
    fn failed(status: Status, reason: String) -> Outcome {
        Outcome {
            status,
            median_ms: None,
            range_ms: None,
            error: None,
            reason: Some(reason),
        }
    }
}

/// The environment variable tests use to inject a fault into one candidate's child process:
/// `PHASE:qQkvKV=panic|hang|oom`, comma-separated (e.g. `mixed:q8kv2=hang`).
pub const INJECT_ENV: &str = "KERNELGEN_TUNE_INJECT";

/// The fault injected into `c` by [`INJECT_ENV`], if any.
fn injected(c: Candidate) -> Option<String> {
    let spec = std::env::var(INJECT_ENV).ok()?;
    let name = format!("{}:q{}kv{}", c.phase, c.q_block, c.kv_pages_block);
    spec.split(',').find_map(|item| {
        let (who, what) = item.split_once('=')?;
        (who.trim() == name).then(|| what.trim().to_string())
    })
}

/// Acts out an injected fault the way a real one shows: a panic, a hang, an allocation failure.
fn act_out(fault: &str) {
    match fault {
        "panic" => panic!("injected panic ({INJECT_ENV})"),
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        "oom" => {
            // Rust's allocation-failure handler aborts with "memory allocation of N bytes
            // failed", as a real host OOM in the candidate would.
            let layout = std::alloc::Layout::from_size_align(1 << 62, 64).expect("layout");
            std::alloc::handle_alloc_error(layout);
        }
        _ => {}
    }
}

/// Measures `job` in this process. Failures come back as an [`Outcome`] with their status.
pub fn measure(job: &Job) -> Outcome {
    let c = job.candidate;
    if let Some(fault) = injected(c) {
        act_out(&fault);
    }
    let cfg = match job.workload.config(c.phase, c.q_block, c.kv_pages_block) {
        Ok(cfg) => cfg,
        Err(e) => return Outcome::failed(Status::Skipped, format!("invalid config: {e}")),
    };
    let text = match stablehlo::emit(&cfg) {
        Ok(k) => k.text,
        Err(e) => return Outcome::failed(Status::CompileError, format!("emit: {e}")),
    };
    let client = match Api::load(&job.plugin).and_then(Client::new) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::failed(
                Status::Crashed,
                format!("loading the plugin {}: {e}", job.plugin.display()),
            )
        }
    };
    let runner = match KernelRunner::compile(client, &cfg, &text) {
        Ok(r) => r,
        Err(e) => return Outcome::failed(Status::CompileError, e.to_string()),
    };
    let spec = job.workload.batch_spec(c.phase);
    let check = match runner.check_batch(&spec, job.seed, Some(Poison::Nan)) {
        Ok(o) => o,
        Err(e) => return Outcome::failed(Status::Crashed, format!("running: {e}")),
    };
    let error = check.stats.max_rel;
    if !check.passed(tolerance(cfg.dtype())) {
        return Outcome {
            error: Some(error),
            ..Outcome::failed(
                Status::Wrong,
                format!(
                    "relative error {error:.2e} against the f64 reference (tolerance {:.0e}), \
                     finite padding {}, deterministic {}",
                    tolerance(cfg.dtype()),
                    check.padding_finite,
                    check.deterministic
                ),
            )
        };
    }
    match runner.time(&spec, job.seed, job.warmup as usize, job.repeats as usize) {
        Ok(times) => {
            let (median, range) = crate::bench::spread(times);
            Outcome {
                status: Status::Ok,
                median_ms: Some(median * 1e3),
                range_ms: Some((range.0 * 1e3, range.1 * 1e3)),
                error: Some(error),
                reason: None,
            }
        }
        Err(e) => Outcome::failed(Status::Crashed, format!("timing: {e}")),
    }
}
