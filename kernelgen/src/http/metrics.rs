//! The server's Prometheus metrics (`GET /metrics`, text format), through `prometheus-client`.
//!
//! Besides kernelgen's own `kernelgen_*` families, the server exports the gauges the Kubernetes
//! Gateway API Inference Extension's model-server protocol reads to pick an endpoint, under the
//! names it expects from vLLM: `vllm:num_requests_waiting`, `vllm:num_requests_running`,
//! `vllm:kv_cache_usage_perc` (and its older name `vllm:gpu_cache_usage_perc`), a 0-1 fraction.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

/// One figure of a step program's compiled memory plan.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramFigure {
    /// "t16", "t16-decode".
    pub program: String,
    /// argument, output, alias, temp (`PJRT_Executable_GetCompiledMemoryStats`).
    pub kind: String,
}

/// Every metric, cheap to clone (shared counters inside).
#[derive(Clone)]
pub struct ServerMetrics {
    registry: Arc<Registry>,
    running: Gauge,
    waiting: Gauge,
    pages_in_use: Gauge,
    pages_total: Gauge,
    usage: Gauge<f64, AtomicU64>,
    preemptions: Counter,
    pages_cached: Gauge,
    prefix_queries: Counter,
    prefix_hits: Counter,
    pub requests: Family<Outcome, Counter>,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub latency: Histogram,
    rss: Gauge,
    peak_rss: Gauge,
    programs_loaded: Gauge,
    program_unloads: Counter,
    program_reloads: Counter,
    program_bytes: Family<ProgramFigure, Gauge>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMetrics {
    pub fn new() -> ServerMetrics {
        let mut r = Registry::default();
        let m = ServerMetrics {
            registry: Arc::new(Registry::default()),
            running: Gauge::default(),
            waiting: Gauge::default(),
            pages_in_use: Gauge::default(),
            pages_total: Gauge::default(),
            usage: Gauge::default(),
            preemptions: Counter::default(),
            pages_cached: Gauge::default(),
            prefix_queries: Counter::default(),
            prefix_hits: Counter::default(),
            requests: Family::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            ttft: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            itl: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            latency: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            rss: Gauge::default(),
            peak_rss: Gauge::default(),
            programs_loaded: Gauge::default(),
            program_unloads: Counter::default(),
            program_reloads: Counter::default(),
            program_bytes: Family::default(),
        };
        let k = |name: &str| format!("kernelgen_{name}");
        r.register(
            k("requests_running"),
            "Requests generating tokens",
            m.running.clone(),
        );
        r.register(
            k("requests_waiting"),
            "Requests submitted and not yet scheduled for their first token",
            m.waiting.clone(),
        );
        r.register(
            k("kv_pages_in_use"),
            "KV pages held by sequences",
            m.pages_in_use.clone(),
        );
        r.register(
            k("kv_pages_total"),
            "KV pages in the pool",
            m.pages_total.clone(),
        );
        r.register(
            k("kv_cache_usage_ratio"),
            "KV pages in use / total (0-1)",
            m.usage.clone(),
        );
        r.register(
            k("preemptions"),
            "Sequences preempted for pages",
            m.preemptions.clone(),
        );
        r.register(
            k("kv_pages_cached"),
            "Free KV pages keeping a prefix for reuse (prefix cache)",
            m.pages_cached.clone(),
        );
        r.register(
            k("prefix_cache_queries"),
            "Prompt tokens looked up in the prefix cache",
            m.prefix_queries.clone(),
        );
        r.register(
            k("prefix_cache_hits"),
            "Prompt tokens found in the prefix cache (not prefilled)",
            m.prefix_hits.clone(),
        );
        r.register(
            k("requests"),
            "Requests ended, by outcome (completed, failed, cancelled, rejected)",
            m.requests.clone(),
        );
        r.register(
            k("prompt_tokens"),
            "Prompt tokens of ended requests",
            m.prompt_tokens.clone(),
        );
        r.register(
            k("generation_tokens"),
            "Tokens generated",
            m.generation_tokens.clone(),
        );
        r.register(
            k("time_to_first_token_seconds"),
            "Arrival to first token",
            m.ttft.clone(),
        );
        r.register(
            k("inter_token_latency_seconds"),
            "Time between consecutive tokens of a sample",
            m.itl.clone(),
        );
        r.register(
            k("request_latency_seconds"),
            "Arrival to the end of the request",
            m.latency.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process (VmRSS)",
            m.rss.clone(),
        );
        r.register(
            k("peak_resident_memory_bytes"),
            "Peak resident memory of the server process (VmHWM)",
            m.peak_rss.clone(),
        );
        r.register(
            k("programs_loaded"),
            "Step programs loaded now (bounded by --max-programs)",
            m.programs_loaded.clone(),
        );
        r.register(
            k("program_unloads"),
            "Step programs unloaded to stay within --max-programs",
            m.program_unloads.clone(),
        );
        r.register(
            k("program_reloads"),
            "Step programs loaded again after an unload",
            m.program_reloads.clone(),
        );
        r.register(
            k("program_memory_bytes"),
            "Each step program's compiled memory plan, by kind: argument, output, alias (outputs reusing donated arguments), temp",
            m.program_bytes.clone(),
        );
        r.register(
            "vllm:num_requests_waiting",
            "Requests waiting (Gateway API Inference Extension protocol)",
            m.waiting.clone(),
        );
        r.register(
            "vllm:num_requests_running",
            "Requests running (Gateway API Inference Extension protocol)",
            m.running.clone(),
        );
        r.register(
            "vllm:kv_cache_usage_perc",
            "KV cache usage, 0-1 (Gateway API Inference Extension protocol)",
            m.usage.clone(),
        );
        r.register(
            "vllm:gpu_cache_usage_perc",
            "KV cache usage, 0-1 (the protocol's older name)",
            m.usage.clone(),
        );
        ServerMetrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn set_state(&self, running: usize, waiting: usize, in_use: usize, total: usize) {
        let ratio = if total == 0 {
            0.0
        } else {
            in_use as f64 / total as f64
        };
        self.running.set(running as i64);
        self.waiting.set(waiting as i64);
        self.pages_in_use.set(in_use as i64);
        self.pages_total.set(total as i64);
        self.usage.set(ratio);
    }

    /// The engine's running totals: the counters follow them.
    pub fn totals_seen(&self, preemptions: usize, prefix_queried: u64, prefix_hit: u64) {
        let up = follow;
        up(&self.preemptions, preemptions as u64);
        up(&self.prefix_queries, prefix_queried);
        up(&self.prefix_hits, prefix_hit);
    }

    /// The process's resident and peak resident memory, now (read at each scrape).
    pub fn refresh_process_memory(&self) {
        if let Some(m) = runtime::mem::MemSnapshot::now() {
            self.rss.set(m.rss_bytes as i64);
            self.peak_rss.set(m.peak_rss_bytes as i64);
        }
    }

    /// How many programs are loaded, and the unloads and reloads so far.
    pub fn set_programs(&self, loaded: usize, unloads: u64, reloads: u64) {
        self.programs_loaded.set(loaded as i64);
        follow(&self.program_unloads, unloads);
        follow(&self.program_reloads, reloads);
    }

    /// Programs loaded now, unloads and reloads so far.
    pub fn programs(&self) -> (usize, u64, u64) {
        (
            self.programs_loaded.get().max(0) as usize,
            self.program_unloads.get(),
            self.program_reloads.get(),
        )
    }

    /// Every program's compiled memory plan.
    pub fn set_program_plans(
        &self,
        compiled: &std::collections::BTreeMap<String, runtime::pjrt::CompiledMemoryStats>,
    ) {
        for (program, s) in compiled {
            for (kind, bytes) in [
                ("argument", s.argument_bytes),
                ("output", s.output_bytes),
                ("alias", s.alias_bytes),
                ("temp", s.temp_bytes),
            ] {
                let figure = ProgramFigure {
                    program: program.clone(),
                    kind: kind.to_string(),
                };
                self.program_bytes.get_or_create(&figure).set(bytes as i64);
            }
        }
    }

    /// Prompt tokens found in the prefix cache so far.
    pub fn prefix_hit_tokens(&self) -> u64 {
        self.prefix_hits.get()
    }

    pub fn set_cached(&self, pages: usize) {
        self.pages_cached.set(pages as i64);
    }

    /// A request ended with `outcome`.
    pub fn finish(&self, outcome: &str, prompt_tokens: usize, latency: Duration) {
        self.count(outcome);
        self.prompt_tokens.inc_by(prompt_tokens as u64);
        self.latency.observe(latency.as_secs_f64());
    }

    /// A request counted under `outcome` without reaching the engine (rejected).
    pub fn count(&self, outcome: &str) {
        self.requests
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

/// Raises counter `c` to the running `total` it mirrors.
fn follow(c: &Counter, total: u64) {
    if total > c.get() {
        c.inc_by(total - c.get());
    }
}
