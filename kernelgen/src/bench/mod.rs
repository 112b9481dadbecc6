//! Benchmarks: each prints its figures beside a baseline or bound measured in the same run
//! (machines of this kind differ, and one machine's bandwidth varies from run to run: ratios
//! within one run are what compare). The CLI (`kernelgen bench ...`) parses flags into these
//! options and prints the reports.
//!
//! - [`decode`]: the serving engine's decode and prefill tokens/s beside the bandwidth and
//!   matmul-rate bounds, with each decode step taken apart;
//! - [`kernel`]: kernel artifacts timed against each other on one decode batch;
//! - [`memory`]: serving's peak and long-run resident memory beside the weights + KV pool;
//! - [`check`]: the VMEM checker's configs/s;
//! - [`probes`]: the bandwidth and matmul-rate probes.

pub mod check;
pub mod decode;
pub mod kernel;
pub mod memory;
pub mod probes;

use runtime::pjrt::{Buffer, Executable, PjrtError};
use std::time::Instant;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Options that cannot be measured; the message names the flag and the fix.
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Kernelgen(#[from] crate::Error),
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    #[error(transparent)]
    Engine(#[from] runtime::engine::EngineError),
    #[error(transparent)]
    Model(#[from] runtime::model::ModelError),
    /// What was being done; the PJRT error is its source (printed after it by the CLI).
    #[error("{what}")]
    Pjrt { what: String, source: PjrtError },
}

/// Attaches what was being done to a PJRT error.
pub(crate) fn pjrt(what: impl Into<String>) -> impl FnOnce(PjrtError) -> BenchError {
    let what = what.into();
    move |source| BenchError::Pjrt { what, source }
}

/// The median of `xs` and their lowest and highest.
pub fn spread(mut xs: Vec<f64>) -> (f64, (f64, f64)) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], (xs[0], xs[xs.len() - 1]))
}

/// Seconds of `runs` executions of `exe` on `args` (each waited for), after `warmup` untimed
/// ones, sorted ascending.
pub fn run_times(
    exe: &Executable,
    args: &[&Buffer],
    warmup: usize,
    runs: usize,
) -> Result<Vec<f64>, PjrtError> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let t = Instant::now();
        let out = exe.execute_borrowed(args)?;
        out[0].block_until_ready()?;
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}
