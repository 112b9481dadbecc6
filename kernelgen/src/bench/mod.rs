//! Benchmarks: each prints its figures beside a baseline or bound measured in the same run
//! (machines of this kind differ, and one machine's bandwidth varies from run to run: ratios
//! within one run are what compare). The CLI (`kernelgen bench ...`) parses flags into these
//! options and prints the reports.
//!
//! - [`decode`]: the serving engine's decode and prefill tokens/s beside the bandwidth and
//!   matmul-rate bounds, with each decode step taken apart;
//! - [`kernel`]: kernel artifacts timed against each other on one decode batch;
//! - [`memory`]: serving's peak and long-run resident memory beside the weights + KV pool;
//! - [`serve`]: the HTTP server beside the engine's batch mode on the same prompts, and what
//!   prefix caching does to time to first token;
//! - [`programs`]: the server's peak memory and wall time under each bound on loaded programs;
//! - [`check`]: the VMEM checker's configs/s;
//! - [`probes`]: the bandwidth and matmul-rate probes;
//! - [`timeline`]: a decode step program taken apart from the host kernels' own timeline.

pub mod check;
pub mod decode;
pub mod kernel;
pub mod memory;
pub mod probes;
pub mod programs;
pub mod serve;
pub mod timeline;

use crate::serve::{ServeOptions, Served};
use runtime::dtype::Dtype;
use runtime::engine::{EngineConfig, SamplingParams};
use runtime::pjrt::{Buffer, Executable, PjrtError};
use std::path::PathBuf;
use std::time::Instant;

/// The model a serving benchmark runs, and on what: shared by [`decode`] and [`memory`].
#[derive(Clone, Debug)]
pub struct BenchModel {
    /// A `.gguf` file or a Hugging Face directory.
    pub model: PathBuf,
    /// A kernel artifact; `None` emits one with `blocks` (`None`: the tuned table's).
    pub kernel: Option<PathBuf>,
    pub blocks: Option<crate::step::program::BlockSizes>,
    pub plugin: PathBuf,
    /// Devices of tensor parallelism ([`crate::step::tp`]).
    pub tp: usize,
    /// The attention kernel's form.
    pub attention: crate::step::program::AttentionChoice,
    /// The KV pool's dtype.
    pub kv_dtype: Dtype,
    /// The weight matrices' dtype (`--weights`).
    pub weights_dtype: Dtype,
}

impl BenchModel {
    /// Serving options for `engine`: its KV dtype, the default token buckets.
    pub fn serve_options(&self, engine: EngineConfig) -> ServeOptions {
        ServeOptions {
            model: self.model.clone(),
            kernel: self.kernel.clone(),
            blocks: self.blocks,
            engine,
            kv_dtype: self.kv_dtype,
            weights_dtype: self.weights_dtype,
            plugin: self.plugin.clone(),
            buckets: None,
            program_cache: None,
            max_loaded_programs: None,
            prefix_caching: false,
            tp: self.tp,
            attention: self.attention,
        }
    }
}

/// Submits `requests` synthetic prompts of `prompt_len` tokens (ids spread over the vocabulary,
/// the same for every run), each decoding exactly `new_tokens` tokens: stop tokens are off.
pub(crate) fn submit_synthetic(
    served: &mut Served,
    requests: usize,
    prompt_len: usize,
    new_tokens: usize,
) -> Result<(), BenchError> {
    served.engine.set_stop_token_ids(vec![]);
    let vocab = served.model.vocab_size as u32;
    for i in 0..requests {
        let prompt: Vec<u32> = (0..prompt_len)
            .map(|j| 100 + ((i * 31 + j * 7) as u32 % (vocab - 200)))
            .collect();
        let params = SamplingParams {
            max_new_tokens: new_tokens,
            stop_token_ids: vec![],
            ..SamplingParams::default()
        };
        served.engine.submit(prompt, params)?;
    }
    Ok(())
}

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
    /// The JAX peer of `bench kernel --peer jax` could not run.
    #[error("the JAX peer (--peer jax): {0}")]
    Peer(String),
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
