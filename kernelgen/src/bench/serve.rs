//! `kernelgen bench serve`: the HTTP server against the engine's own batch mode on the same
//! prompts, in one run.
//!
//! - **Throughput** at each client count C: C clients each send `requests_per_client` streaming
//!   completions one after another (a closed loop, C in flight); batch mode runs the same
//!   prompts in-process with C in flight (a finished request is replaced by the next). Both
//!   decode exactly `new_tokens` tokens per request (`ignore_eos`). Each level runs once to warm
//!   up (compile its programs), then measured.
//! - **HTTP overhead per token**: the server's median inter-token gap at one client beside batch
//!   mode's median time per output token at one in flight.
//! - **Prefix caching**: one client sends chats that share a `system_prompt_len`-token system
//!   prompt, to a server with the prefix cache off and to one with it on: median time to first
//!   token of each.
//!
//! Clients are threads speaking HTTP/1.0 on 127.0.0.1 (the server closes each response), so
//! their cost is a socket read per chunk.

use super::{BenchError, BenchModel};
use crate::http::metrics::ServerMetrics;
use crate::http::{serve_until, ServerOptions};
use crate::serve::{start, Served};
use runtime::engine::{EngineConfig, SamplingParams};
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct ServeBench {
    pub served: BenchModel,
    /// Client counts to measure.
    pub clients: Vec<usize>,
    pub requests_per_client: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    /// Tokens of the shared system prompt in the prefix-caching measurement.
    pub system_prompt_len: usize,
    /// Requests of the prefix-caching measurement (each with its own question).
    pub prefix_requests: usize,
    pub page_size: usize,
}

/// Throughput and latency of one mode at one client count.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Throughput {
    pub requests: usize,
    pub wall_s: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p99_s: f64,
    /// Median time between consecutive output tokens of a request.
    pub itl_p50_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Level {
    pub clients: usize,
    pub batch: Throughput,
    pub server: Throughput,
    /// Server output tokens/s over batch mode's.
    pub ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PrefixFigures {
    pub system_prompt_tokens: usize,
    pub requests: usize,
    pub ttft_off_p50_s: f64,
    pub ttft_on_p50_s: f64,
    /// Off over on.
    pub speedup: f64,
    pub hit_tokens: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServeBenchReport {
    pub levels: Vec<Level>,
    /// Server inter-token gap at one client over batch mode's time per token at one in flight,
    /// minus one.
    pub http_overhead_per_token: Option<f64>,
    pub prefix: PrefixFigures,
}

fn percentile(mut xs: Vec<f64>, q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * q).round() as usize]
}

impl ServeBench {
    fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Options(m.to_string()));
        if self.clients.is_empty() || self.clients.contains(&0) {
            return bad("--clients: give counts >= 1, e.g. 1,8,32");
        }
        if self.requests_per_client == 0 || self.new_tokens == 0 || self.prompt_len == 0 {
            return bad("--requests-per-client, --new-tokens and --prompt-len must be >= 1");
        }
        if self.prefix_requests < 2 {
            return bad("--prefix-requests must be >= 2 (the first fills the cache)");
        }
        Ok(())
    }

    fn engine(&self) -> EngineConfig {
        let max_seqs = self.clients.iter().copied().max().unwrap_or(1);
        let longest = (self.system_prompt_len + 64).max(self.prompt_len) + self.new_tokens + 1;
        let max_seq_len = longest.div_ceil(self.page_size) * self.page_size;
        EngineConfig {
            max_seqs,
            max_pages: max_seqs * max_seq_len / self.page_size + 1,
            page_size: self.page_size,
            max_seq_len,
            max_tokens_per_round: 512,
        }
    }

    fn start(&self, prefix_caching: bool) -> Result<Served, BenchError> {
        let mut opts = self.served.serve_options(self.engine());
        opts.prefix_caching = prefix_caching;
        opts.program_cache = Some(runtime::cache::executables::ExecutableCache::default_dir());
        Ok(start(&opts)?)
    }
}

/// Prompt texts of about `len` tokens each, different per index, the same every run.
pub(super) fn prompts(served: &Served, count: usize, len: usize, salt: usize) -> Vec<String> {
    let vocab = served.model.vocab_size;
    (0..count)
        .map(|i| {
            let ids: Vec<u32> = (0..len)
                .map(|j| (1000 + (i * 7919 + j * 104_729 + salt * 31) % (vocab - 2000)) as u32)
                .collect();
            served.tokenizer.decode(&ids, true).unwrap_or_default()
        })
        .collect()
}

fn params(new_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens: new_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

/// Batch mode: `texts` through the engine in-process, `inflight` at a time.
fn batch(
    served: &mut Served,
    texts: &[String],
    inflight: usize,
    new_tokens: usize,
) -> Result<Throughput, BenchError> {
    let mut next = 0;
    let submit = |served: &mut Served, next: &mut usize| -> Result<(), BenchError> {
        let ids = served.tokenizer.encode(&texts[*next], false)?;
        served.engine.submit(ids, params(new_tokens))?;
        *next += 1;
        Ok(())
    };
    served.engine.reset_metrics();
    let t0 = Instant::now();
    while next < texts.len().min(inflight) {
        submit(served, &mut next)?;
    }
    let (mut ttft, mut tokens, mut gaps) = (Vec::new(), 0, Vec::new());
    while served.engine.has_work() {
        served.engine.step()?;
        for f in served.engine.take_finished() {
            ttft.push(f.time_to_first_token().as_secs_f64());
            let n: usize = f.samples.iter().map(|s| s.tokens.len()).sum();
            tokens += n;
            if n > 1 {
                let decode = f.finished.duration_since(f.first_token).as_secs_f64();
                gaps.push(decode / (n - 1) as f64);
            }
            if next < texts.len() {
                submit(served, &mut next)?;
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    Ok(Throughput {
        requests: texts.len(),
        wall_s: wall,
        requests_per_s: texts.len() as f64 / wall,
        output_tokens_per_s: tokens as f64 / wall,
        ttft_p50_s: percentile(ttft.clone(), 0.5),
        ttft_p99_s: percentile(ttft, 0.99),
        itl_p50_s: percentile(gaps, 0.5),
    })
}

/// One streamed request's timings.
struct Timed {
    ttft: f64,
    gaps: Vec<f64>,
    tokens: usize,
}

/// One streaming request over HTTP/1.0; times its first content chunk and the gaps between
/// chunks, and reads the output token count from the usage chunk.
fn stream_one(addr: &str, path: &str, body: &serde_json::Value) -> Result<Timed, BenchError> {
    let fail = |m: String| BenchError::Options(format!("bench serve: {m}"));
    let body = body.to_string();
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| fail(format!("connect {addr}: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(600))).ok();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| fail(format!("send: {e}")))?;
    let mut r = BufReader::new(s);
    let (mut ttft, mut last, mut gaps, mut tokens) = (None, t0, Vec::new(), 0);
    let mut status = String::new();
    r.read_line(&mut status)
        .map_err(|e| fail(format!("read: {e}")))?;
    if !status.contains(" 200 ") {
        return Err(fail(format!("server answered {}", status.trim())));
    }
    for line in r.lines() {
        let line = line.map_err(|e| fail(format!("read: {e}")))?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: serde_json::Value =
            serde_json::from_str(data).map_err(|e| fail(format!("bad chunk {data}: {e}")))?;
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            tokens = n as usize;
        }
        let has_text = v["choices"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["text"].as_str().is_some_and(|t| !t.is_empty())
                    || c["delta"]["content"]
                        .as_str()
                        .is_some_and(|t| !t.is_empty())
            })
        });
        if has_text {
            let now = Instant::now();
            match ttft {
                None => ttft = Some(now.duration_since(t0).as_secs_f64()),
                Some(_) => gaps.push(now.duration_since(last).as_secs_f64()),
            }
            last = now;
        }
    }
    Ok(Timed {
        ttft: ttft.ok_or_else(|| fail("a stream without text".into()))?,
        gaps,
        tokens,
    })
}

/// A server on 127.0.0.1 in a thread of its own, stopped on drop.
pub(super) struct RunningServer {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub(super) metrics: ServerMetrics,
}

impl RunningServer {
    pub(super) fn start(served: Served) -> Result<RunningServer, BenchError> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        let opts = ServerOptions {
            host: "127.0.0.1".into(),
            port: 0,
            api_key: None,
            model_name: "bench".into(),
            max_queue: 4096,
            shutdown_timeout: Duration::from_secs(5),
        };
        let metrics = ServerMetrics::new();
        let m = metrics.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let stop = async move {
                let _ = stopped.await;
            };
            let _ = rt.block_on(serve_until(
                served,
                opts,
                move |addr| {
                    let _ = tx.send(addr.to_string());
                },
                stop,
                m,
            ));
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| BenchError::Options("bench serve: the server did not start".into()))?;
        Ok(RunningServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
            metrics,
        })
    }

    /// `clients` threads, each sending its share of `bodies` one after another.
    pub(super) fn run(
        &self,
        path: &str,
        bodies: &[serde_json::Value],
        clients: usize,
    ) -> Result<Throughput, BenchError> {
        let t0 = Instant::now();
        let results: Vec<Result<Vec<Timed>, BenchError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let addr = &self.addr;
                    scope.spawn(move || {
                        bodies
                            .iter()
                            .skip(c)
                            .step_by(clients)
                            .map(|b| stream_one(addr, path, b))
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(BenchError::Options("a client thread panicked".into()))
                    })
                })
                .collect()
        });
        let wall = t0.elapsed().as_secs_f64();
        let mut timed = Vec::new();
        for r in results {
            timed.extend(r?);
        }
        let tokens: usize = timed.iter().map(|t| t.tokens).sum();
        Ok(Throughput {
            requests: timed.len(),
            wall_s: wall,
            requests_per_s: timed.len() as f64 / wall,
            output_tokens_per_s: tokens as f64 / wall,
            ttft_p50_s: percentile(timed.iter().map(|t| t.ttft).collect(), 0.5),
            ttft_p99_s: percentile(timed.iter().map(|t| t.ttft).collect(), 0.99),
            itl_p50_s: percentile(timed.iter().flat_map(|t| t.gaps.clone()).collect(), 0.5),
        })
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn completion_bodies(texts: &[String], new_tokens: usize) -> Vec<serde_json::Value> {
    texts
        .iter()
        .map(|t| {
            serde_json::json!({
                "prompt": t, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": true,
                "stream": true, "stream_options": {"include_usage": true},
            })
        })
        .collect()
}

/// Runs the benchmark; `progress` gets a line per phase.
pub fn run(b: &ServeBench, progress: &mut dyn FnMut(&str)) -> Result<ServeBenchReport, BenchError> {
    b.validate()?;
    progress("batch mode: loading the model");
    let mut served = b.start(false)?;
    let mut batch_rows = Vec::new();
    for &c in &b.clients {
        let texts = prompts(&served, c * b.requests_per_client, b.prompt_len, c);
        progress(&format!("batch mode, {c} in flight"));
        batch(&mut served, &texts[..c], c, b.new_tokens)?; // warm-up: compiles this level's programs
        batch_rows.push(batch(&mut served, &texts, c, b.new_tokens)?);
    }
    let system = prompts(&served, 1, b.system_prompt_len, 999).remove(0);
    let system_tokens = served.tokenizer.encode(&system, false)?.len();
    let questions = prompts(&served, b.prefix_requests + 1, 12, 555);
    drop(served);

    let chats: Vec<serde_json::Value> = questions
        .iter()
        .map(|q| {
            serde_json::json!({
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}],
                "max_tokens": 8, "temperature": 0, "ignore_eos": true, "stream": true,
            })
        })
        .collect();
    let mut levels = Vec::new();
    let prefix_off;
    {
        progress("server (prefix cache off): loading the model");
        let served = b.start(false)?;
        let texts: Vec<Vec<String>> = b
            .clients
            .iter()
            .map(|&c| prompts(&served, c * b.requests_per_client, b.prompt_len, c))
            .collect();
        let server = RunningServer::start(served)?;
        for ((&c, texts), batch) in b.clients.iter().zip(&texts).zip(&batch_rows) {
            progress(&format!("server, {c} clients"));
            let bodies = completion_bodies(texts, b.new_tokens);
            server.run("/v1/completions", &bodies[..c], c)?;
            let s = server.run("/v1/completions", &bodies, c)?;
            levels.push(Level {
                clients: c,
                ratio: s.output_tokens_per_s / batch.output_tokens_per_s,
                batch: batch.clone(),
                server: s,
            });
        }
        progress("prefix cache off: shared system prompt");
        server.run("/v1/chat/completions", &chats[..1], 1)?; // the same first request as below
        prefix_off = server
            .run("/v1/chat/completions", &chats[1..], 1)?
            .ttft_p50_s;
    }
    progress("server (prefix cache on): loading the model");
    let server = RunningServer::start(b.start(true)?)?;
    server.run("/v1/chat/completions", &chats[..1], 1)?; // fills the cache
    progress("prefix cache on: shared system prompt");
    let on = server.run("/v1/chat/completions", &chats[1..], 1)?;
    let hit_tokens = server.metrics.prefix_hit_tokens();
    drop(server);
    let one = levels.iter().find(|l| l.clients == 1);
    Ok(ServeBenchReport {
        http_overhead_per_token: one
            .filter(|l| l.batch.itl_p50_s > 0.0)
            .map(|l| l.server.itl_p50_s / l.batch.itl_p50_s - 1.0),
        levels,
        prefix: PrefixFigures {
            system_prompt_tokens: system_tokens,
            requests: b.prefix_requests,
            ttft_off_p50_s: prefix_off,
            ttft_on_p50_s: on.ttft_p50_s,
            speedup: prefix_off / on.ttft_p50_s.max(1e-9),
            hit_tokens,
        },
    })
}
