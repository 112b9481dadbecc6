//! `kernelgen serve`: the OpenAI-compatible HTTP server on the paged-KV engine.

use super::args::{serve_options, EngineArgs, PluginArg, ProgramCacheArg, ServedArgs};
use super::ExitCode;
use anyhow::{bail, Context};
use clap::Args;
use kernelgen::http::metrics::ServerMetrics;
use kernelgen::http::{serve_until, wait_for_signal, ServerOptions};
use kernelgen::serve::open;
use std::path::PathBuf;
use std::time::Duration;

/// Serve a model over the OpenAI HTTP API (completions, chat, streaming) with Prometheus metrics
#[derive(Args, Debug)]
#[command(after_help = "\
Endpoints: POST /v1/completions, POST /v1/chat/completions (stream: server-sent events), \
GET /v1/models, GET /health (503 when the engine cannot step), GET /metrics (Prometheus text, \
with the vllm:num_requests_waiting and vllm:kv_cache_usage_perc gauges a Gateway API Inference \
Extension endpoint picker reads).

One engine thread owns the device; requests arriving while it steps join the next step \
(continuous batching). A client that disconnects mid-stream is cancelled and its KV pages freed \
at the next step. When more than --max-queue requests wait for their first step, new ones get \
429 with Retry-After. SIGTERM or Ctrl-C stops accepting, lets in-flight requests finish for \
--shutdown-timeout seconds, aborts the rest, and exits 0.

Examples:
  kernelgen serve                                          default model on 127.0.0.1:8000
  kernelgen serve --model m.gguf --kernel out/rpa-q16-kv8 --host 0.0.0.0 --port 8000 \\
                  --api-key-file key.txt --max-seqs 32 --max-pages 2048 --max-queue 256
  curl -s 127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 32}'
Any OpenAI client: OpenAI(base_url=\"http://127.0.0.1:8000/v1\", api_key=\"...\")")]
pub struct ServeArgs {
    /// Address to listen on (0.0.0.0: every interface)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port, printed at start)
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// File holding the API key clients must send as `Authorization: Bearer <key>` [default: none required]
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Model id clients name in requests [default: the model file's name]
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Requests waiting for their first step beyond which new ones get 429
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Seconds in-flight requests may run after SIGTERM before they are aborted
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Do not reuse the KV pages of prompt prefixes earlier requests computed (on by default: a shared system prompt is prefilled once)
    #[arg(long)]
    pub no_prefix_caching: bool,
    #[command(flatten)]
    pub served: ServedArgs,
    #[command(flatten)]
    pub plugin: PluginArg,
    #[command(flatten)]
    pub program_cache: ProgramCacheArg,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The model id: the file's name without `.gguf`, or the directory's name.
fn model_name(path: &std::path::Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    name.strip_suffix(".gguf")
        .map(str::to_string)
        .unwrap_or(name)
}

pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    if a.max_queue == 0 {
        bail!("--max-queue 0 would refuse every request; give at least 1");
    }
    let api_key = match &a.api_key_file {
        Some(path) => {
            let key = std::fs::read_to_string(path)
                .with_context(|| format!("--api-key-file {}", path.display()))?;
            let key = key.trim().to_string();
            if key.is_empty() {
                bail!(
                    "--api-key-file {} is empty; put the key in it",
                    path.display()
                );
            }
            Some(key)
        }
        None => None,
    };
    let opts = serve_options(
        &a.served,
        &a.plugin,
        &a.engine,
        &a.program_cache,
        !a.no_prefix_caching,
    )?;
    let server = ServerOptions {
        host: a.host.clone(),
        port: a.port,
        api_key,
        model_name: a
            .served_model_name
            .clone()
            .unwrap_or_else(|| model_name(&opts.model)),
        max_queue: a.max_queue,
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
    };
    let opened = open(&opts)?;
    if let Some(w) = &opened.kernel_warning {
        eprintln!("warning: {w}");
    }
    // The one-sequence decode program is what every request's tokens after the first use.
    let served = opened.start(vec![(1, true)]).map_err(super::failed)?;
    eprintln!(
        "[kernelgen serve] {} ; kernel: {} ; loaded in {:.1} s",
        opts.model.display(),
        served.kernel,
        served.load_time.as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let name = server.model_name.clone();
    let timeout = server.shutdown_timeout.as_secs();
    let stop = async move {
        wait_for_signal().await;
        eprintln!(
            "[kernelgen serve] shutting down: finishing in-flight requests (up to {timeout} s)"
        );
    };
    let listening =
        |addr| eprintln!("[kernelgen serve] listening on http://{addr} (model {name:?})");
    runtime
        .block_on(serve_until(
            served,
            server,
            listening,
            stop,
            ServerMetrics::new(),
        ))
        .map_err(super::failed)?;
    eprintln!("[kernelgen serve] stopped");
    Ok(ExitCode::Ok)
}
