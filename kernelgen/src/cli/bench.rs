//! `kernelgen bench`: flags for the benchmarks of [`kernelgen::bench`], and how their reports
//! print.

use super::args::{parse_dtype, PluginArg, ServedArgs};
use super::ExitCode;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kernelgen::bench::decode::{DecodeReport, Figure};
use kernelgen::bench::memory::MemoryBenchReport;
use kernelgen::bench::{self, check::CheckReport, kernel::KernelReport};
use kernelgen::vmem::KernelModel;
use runtime::dtype::Dtype;
use std::path::PathBuf;

/// Benchmarks (ratios against bounds measured in the same run)
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    Decode(DecodeArgs),
    Serve(ServeBenchArgs),
    Memory(MemoryArgs),
    Programs(ProgramsBenchArgs),
    Kernel(KernelBenchArgs),
    Check(CheckBenchArgs),
}

/// Host memory of serving: peak resident set beside weights + KV pool, and growth over a long run
#[derive(Args, Debug)]
#[command(after_help = "\
Serves --requests requests of --prompt-len prompt tokens, --max-seqs at a time, each decoding \
--new-tokens tokens (stop tokens off), on one engine. The process's resident memory \
(/proc/self/status: VmRSS, RssAnon, RssFile, VmHWM) is read after each start-up stage (model \
opened, plugin loaded, weights uploaded, KV pools created, each program compiled, first step), \
after --warm-steps steps and after the last step. It prints the peak beside the floor every \
server of this model must hold (weights as the step program reads them + the KV pool), and the \
growth from the warm figure to the last (a leak per step or per request shows there). The \
compiler's memory plan of each program (PJRT_Executable_GetCompiledMemoryStats) is printed too.

Example (about 2,000 decode steps):
  kernelgen bench memory --requests 64 --max-seqs 32 --new-tokens 1000")]
pub struct MemoryArgs {
    #[command(flatten)]
    pub served: ServedArgs,
    #[command(flatten)]
    pub plugin: PluginArg,
    /// Requests served
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// Sequences decoded at once
    #[arg(long, default_value_t = 32)]
    pub max_seqs: usize,
    /// Prompt tokens per request
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// Tokens decoded per request
    #[arg(long, default_value_t = 1000)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,
    /// KV pages in the pool [default: enough for --max-seqs whole requests]
    #[arg(long)]
    pub max_pages: Option<usize>,
    /// Steps after which the run counts as warm
    #[arg(long, default_value_t = 100)]
    pub warm_steps: usize,
    #[arg(long)]
    pub json: bool,
}

/// The HTTP server (kernelgen serve) beside the engine's batch mode on the same prompts
#[derive(Args, Debug)]
#[command(after_help = "\
At each --clients count C, C client threads each send --requests-per-client streaming \
completions (--prompt-len prompt tokens, exactly --new-tokens output tokens) one after another \
to a server on 127.0.0.1; batch mode runs the same prompts in-process with C in flight. Each \
level runs once unmeasured first (compiles its programs), then measured. Printed: requests/s, \
output tokens/s, time to first token p50/p99, median inter-token gap, and the server's output \
tokens/s over batch mode's (target >= 0.90 at 32 clients); the HTTP overhead per token (the \
server's inter-token gap at one client over batch mode's time per token, target < 5%); and the \
median time to first token of chats sharing a --system-prompt-len system prompt with the prefix \
cache off and on (target: on at least 3x faster for 512 tokens).

Example: kernelgen bench serve --clients 1,8,32 --json")]
pub struct ServeBenchArgs {
    #[command(flatten)]
    pub served: ServedArgs,
    #[command(flatten)]
    pub plugin: PluginArg,
    /// Concurrent clients to measure
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub clients: Vec<usize>,
    /// Requests each client sends, one after another
    #[arg(long, default_value_t = 2)]
    pub requests_per_client: usize,
    /// Prompt tokens per request (about: prompts are text)
    #[arg(long, default_value_t = 64)]
    pub prompt_len: usize,
    /// Output tokens per request (end-of-sequence ignored)
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Tokens of the shared system prompt (prefix caching)
    #[arg(long, default_value_t = 512)]
    pub system_prompt_len: usize,
    /// Chats measured with the shared system prompt, cache off and on
    #[arg(long, default_value_t = 6)]
    pub prefix_requests: usize,
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,
    #[arg(long)]
    pub json: bool,
}

fn run_serve(a: ServeBenchArgs) -> anyhow::Result<ExitCode> {
    let b = bench::serve::ServeBench {
        served: bench_model(&a.served, &a.plugin),
        clients: a.clients.clone(),
        requests_per_client: a.requests_per_client,
        prompt_len: a.prompt_len,
        new_tokens: a.new_tokens,
        system_prompt_len: a.system_prompt_len,
        prefix_requests: a.prefix_requests,
        page_size: a.page_size,
    };
    let bar = ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let r = bench::serve::run(&b, &mut |msg| bar.set_message(msg.to_string()));
    bar.finish_and_clear();
    let r = r.map_err(classify)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::Ok);
    }
    println!(
        "{:>7}  {:>22}  {:>22}  {:>17}  {:>17}  {:>13}  {:>6}",
        "clients",
        "req/s batch | server",
        "out tok/s batch | srv",
        "TTFT p50 b | s",
        "TTFT p99 b | s",
        "ITL b | s ms",
        "ratio"
    );
    for l in &r.levels {
        println!(
            "{:>7}  {:>10.2} | {:>9.2}  {:>10.1} | {:>9.1}  {:>7.3} | {:>7.3}  {:>7.3} | {:>7.3}  {:>5.1} | {:>5.1}  {:>6.2}",
            l.clients,
            l.batch.requests_per_s,
            l.server.requests_per_s,
            l.batch.output_tokens_per_s,
            l.server.output_tokens_per_s,
            l.batch.ttft_p50_s,
            l.server.ttft_p50_s,
            l.batch.ttft_p99_s,
            l.server.ttft_p99_s,
            l.batch.itl_p50_s * 1e3,
            l.server.itl_p50_s * 1e3,
            l.ratio
        );
    }
    if let Some(o) = r.http_overhead_per_token {
        println!("HTTP overhead per token at 1 client: {:+.1}% of batch mode's time per token (target < 5%)", o * 100.0);
    }
    let p = &r.prefix;
    println!(
        "prefix caching, {}-token system prompt, {} chats: TTFT p50 {:.3} s off, {:.3} s on: {:.1}x (target >= 3x); {} prompt tokens found",
        p.system_prompt_tokens, p.requests, p.ttft_off_p50_s, p.ttft_on_p50_s, p.speedup, p.hit_tokens
    );
    Ok(ExitCode::Ok)
}

/// The server's peak memory and wall time under each bound on loaded step programs (`serve --max-programs`)
#[derive(Args, Debug)]
#[command(after_help = "\
Serves the same workload through the HTTP server once per bound, each on a fresh engine with \
programs from the program cache: --requests completions whose prompts cycle through 6 to 300 \
tokens and whose outputs cycle through 16-63 tokens (end-of-sequence ignored), --clients in \
flight, so steps meet many token buckets and decode batch sizes. Prints, per bound, the programs \
loaded at the end, unloads and reloads, the peak resident set and the wall time beside the \
first bound's. A warm-up pass first fills the program cache, and each bound runs in a process \
of its own, so no bound pays for a compile and no peak includes another bound's memory.

Example:
  kernelgen bench programs --max-programs 0,6,3")]
pub struct ProgramsBenchArgs {
    #[command(flatten)]
    pub served: ServedArgs,
    #[command(flatten)]
    pub plugin: PluginArg,
    /// Bounds on loaded programs to measure, in order (0: no bound; the first is the baseline)
    #[arg(long, value_delimiter = ',', default_value = "0,6,3")]
    pub max_programs: Vec<usize>,
    /// Requests per bound
    #[arg(long, default_value_t = 48)]
    pub requests: usize,
    /// Requests in flight
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,
    #[arg(long)]
    pub json: bool,
    /// Measure the first bound in this process and print its figures as JSON (what each child
    /// of a run does)
    #[arg(long, hide = true)]
    pub one: bool,
}

/// This binary's `bench programs` measuring `bound` alone in a child process, with `a`'s model,
/// kernel, plugin and workload; `None` serves the workload once to fill the program cache.
fn programs_child(
    a: &ProgramsBenchArgs,
    bound: usize,
) -> anyhow::Result<bench::programs::BoundFigures> {
    use anyhow::Context;
    let exe = std::env::current_exe().context("finding this binary to run each bound")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "bench",
        "programs",
        "--one",
        "--max-programs",
        &bound.to_string(),
    ])
    .args([
        "--requests",
        &a.requests.to_string(),
        "--clients",
        &a.clients.to_string(),
    ])
    .args(["--page-size", &a.page_size.to_string()])
    .args(["--model".as_ref(), a.served.model_path().as_os_str()])
    .args(["--plugin".as_ref(), a.plugin.path().as_os_str()]);
    if let Some(k) = &a.served.kernel {
        cmd.args(["--kernel".as_ref(), k.as_os_str()]);
    }
    if let Some(q) = a.served.q_block {
        cmd.args(["--q", &q.to_string()]);
    }
    if let Some(kv) = a.served.kv_pages_block {
        cmd.args(["--kv", &kv.to_string()]);
    }
    let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        anyhow::bail!("measuring --max-programs {bound} failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading the figures of --max-programs {bound}"))
}

fn run_programs(a: ProgramsBenchArgs) -> anyhow::Result<ExitCode> {
    let b = bench::programs::ProgramsBench {
        served: bench_model(&a.served, &a.plugin),
        bounds: a.max_programs.clone(),
        requests: a.requests,
        clients: a.clients,
        page_size: a.page_size,
    };
    if a.one {
        let f = bench::programs::measure(&b, b.bounds[0]).map_err(classify)?;
        println!("{}", serde_json::to_string(&f)?);
        return Ok(ExitCode::Ok);
    }
    let bar = ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar.set_message("warm-up: every program into the program cache");
    let warm = bench::programs::warm_up(&b).map_err(classify);
    let mut figures = Vec::new();
    for &bound in &b.bounds {
        if warm.is_err() {
            break;
        }
        bar.set_message(format!(
            "--max-programs {bound}: {} requests, {} in flight",
            a.requests, a.clients
        ));
        figures.push(programs_child(&a, bound));
    }
    bar.finish_and_clear();
    warm?;
    let r = bench::programs::report(figures.into_iter().collect::<anyhow::Result<Vec<_>>>()?);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::Ok);
    }
    println!(
        "{:>12}  {:>6}  {:>15}  {:>13}  {:>12}  {:>8}  {:>9}  {:>10}",
        "max-programs",
        "loaded",
        "unloads/reloads",
        "peak RSS MB",
        "end RSS MB",
        "wall s",
        "out tok/s",
        "wall ratio"
    );
    for f in &r.bounds {
        let bound = if f.max_programs == 0 {
            "none".to_string()
        } else {
            f.max_programs.to_string()
        };
        println!(
            "{:>12}  {:>6}  {:>15}  {:>13.0}  {:>12.0}  {:>8.1}  {:>9.1}  {:>10.2}",
            bound,
            f.programs_loaded,
            format!("{} / {}", f.unloads, f.reloads),
            f.peak_rss_bytes as f64 / 1e6,
            f.rss_bytes as f64 / 1e6,
            f.wall_s,
            f.output_tokens_per_s,
            f.wall_ratio
        );
    }
    Ok(ExitCode::Ok)
}

/// Throughput of the analytic VMEM checker (configs per second)
#[derive(Args, Debug)]
#[command(
    after_help = "Checks a grid of configs (5 targets x 12 head layouts x 5 page sizes x 5 q_blocks x \
7 kv_pages_blocks x 2 dtypes = 21,000) once untimed, then --passes times, with each kernel's formula and prints configs/s against the \
500,000/s target (issue 18). A config a kernel cannot run (JAX's kernel needs 2 x KV heads XLA-tileable) is checked \
too (its clear error) and counted as unsupported. With --oracle, also compiles one config with the real TPU \
compiler in the same run and prints the speedup.

Example: kernelgen bench check --passes 20 --json"
)]
pub struct CheckBenchArgs {
    /// Timed passes over the grid, per kernel (after one untimed pass)
    #[arg(long, default_value_t = 20)]
    pub passes: usize,
    /// Kernel models to time, comma-separated: jax-rpa, kernelgen
    #[arg(long, value_delimiter = ',', default_value = "jax-rpa,kernelgen")]
    pub kernel: Vec<String>,
    /// Also time one real TPU compile (creates the oracle venv on first use)
    #[arg(long)]
    pub oracle: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// Decode and prefill throughput of the serving engine on the default (or given) model
#[derive(Args, Debug)]
#[command(after_help = "\
Measures, in one run: memory bandwidth (a device-side sum over 256 MiB, best of 15 after 2 warm-ups) and \
the f32 matmul rate (XLA dot of the model's MLP shape at batch 32 and at 256, the faster; best of 30 after \
3 warm-ups), then decode tokens/s at each --batches size and \
prefill tokens/s. Each figure is printed beside the bound it implies: batch-1 decode is bounded by \
bandwidth / bytes of weights read per step; batch-B decode by min(bandwidth bound x B, matmul rate / \
(2 x params)); prefill by matmul rate / (2 x params). Each workload runs once to compile and warm up, then --repeats times measured: \
every figure is the median round, printed with the lowest and highest round beside it (this machine's \
memory bandwidth varies from run to run; ratios to bounds measured in the same run vary less). The \
median round's mean decode step is then taken apart: engine host work (scheduling, sampling), input upload, the step's matmuls alone (the model's \
projections run as one program on the same weight buffers) with the rate they read weights at, and the \
rest of the program (attention kernel, norms, RoPE, KV writes, logits copy). With the host kernels on one \
device, one more round records the kernels' own timeline and splits the step program from the inside: \
start (execute to the first kernel), projections, attention, LM head, between kernels (XLA's own ops and \
call overheads) and finish (the last kernel to the logits on the host). Step time vs max_pages \
checks that the KV pool is never copied (it must not grow with the pool). With --long-prompt N, \
batch-1 decode at --prompt-len and at N run in alternating rounds on one engine and the ratio of their \
medians is printed: both lengths meet the same stretches of the host's bandwidth, which two separate \
runs do not.

Example (how much a 1024-token context costs batch-1 decode):
  kernelgen bench decode --batches 1 --repeats 5 --long-prompt 1024")]
pub struct DecodeArgs {
    #[command(flatten)]
    pub served: ServedArgs,
    #[command(flatten)]
    pub plugin: PluginArg,
    /// Batch sizes to measure
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batches: Vec<usize>,
    /// Prompt tokens per sequence
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// Decode steps measured per batch size
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Measured rounds of each workload (after one warm-up round); figures are their median
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub repeats: usize,
    /// Prompt length for the prefill measurement
    #[arg(long, default_value_t = 256)]
    pub prefill_len: usize,
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,
    /// Also measure batch-1 step time at these pool sizes
    #[arg(long, value_delimiter = ',', default_value = "256,2048")]
    pub pool_pages: Vec<usize>,
    /// Degrees of tensor parallelism to measure the decode batches at (`generate --tp`), in order; prefill and the pool sizes run at the first. On a CPU the devices share the cores and the memory bandwidth: TP cannot beat 1 there, the figures say what its collectives cost
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub tp: Vec<usize>,
    /// KV pool dtype: f32 or bf16 (bf16 reads half the K/V bytes per step; llama.cpp keeps its KV cache in f16 unless told otherwise)
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub kv_dtype: Dtype,
    /// Weight matrices' dtype: f32 or bf16 (half the bytes each decode step reads; the bound uses the bytes actually read)
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub weights: Dtype,
    /// Also measure batch-1 decode at this prompt length beside --prompt-len, in rounds that alternate between the two on one engine, and print the ratio (e.g. 1024: how much a long context costs, measured on the same stretches of the host's memory bandwidth)
    #[arg(long, value_name = "TOKENS")]
    pub long_prompt: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

/// Time kernel artifacts against each other (StableHLO, on a PJRT plugin)
#[derive(Args, Debug)]
#[command(after_help = "\
Each artifact's StableHLO kernel is linked --layers times in a chain (call i's output is call i+1's \
q; each call has its own page table, so it gathers other pages, and cannot start gathering before the \
previous call is done), as a model's step calls it once per layer, and the chains run interleaved on one decode batch drawn from --seed: --seqs sequences of one new token each, KV \
lengths drawn up to the artifact's capacity (or all --kv-len). Every figure is the median of --repeats rounds with \
its min-max, and the ratio is each artifact's median over the first artifact's, measured in the \
same run. The artifacts must share their call shapes (heads, head_dim, page size, dtype, \
max-tokens, max-seqs, pages per sequence, total pages), so that they run the same batch.

Example (two block sizes of one call shape):
  kernelgen build --q 1 --kv 4 --preset smollm2-135m --page-size 16 --dtype f32 --max-tokens 1 \\
                  --max-seqs 1 --pages-per-seq 16 --total-pages 17 --schedule batched --out /tmp/kv4
  kernelgen build --q 1 --kv 2 ... --out /tmp/kv2
  kernelgen bench kernel /tmp/kv4 /tmp/kv2 --kv-len 48")]
pub struct KernelBenchArgs {
    /// Artifact directories from `kernelgen build`; ratios are against the first
    #[arg(required = true, num_args = 1..)]
    pub artifacts: Vec<PathBuf>,
    /// Decode sequences in the batch [default: as many as the artifacts hold]
    #[arg(long)]
    pub seqs: Option<usize>,
    /// A mixed batch instead of decode rows alone: half the sequences (drawn from --seed) are
    /// decode rows, the rest prompt chunks or whole prompts, as a serving step that admits new
    /// requests holds; needs artifacts with --max-tokens above --max-seqs
    #[arg(long)]
    pub mixed: bool,
    /// KV length of every sequence (the new token included) [default: drawn from --seed, up to
    /// pages-per-seq x page size]
    #[arg(long)]
    pub kv_len: Option<usize>,
    /// Kernel calls chained per run (one per model layer)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub layers: u32,
    /// Measured rounds (after 3 warm-up rounds); each round runs every artifact once
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub repeats: u32,
    /// Seed of the batch
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub plugin: PluginArg,
    /// Also time a peer on the same batch, chain and page tables, and print how many times faster each artifact ran: `jax` is a dense-gather jnp formulation (gather each sequence's pages, masked softmax) jit-compiled by XLA CPU in the project's JAX venv (made by scripts/setup.sh; first use creates it)
    #[arg(long, value_name = "jax", value_parser = ["jax"])]
    pub peer: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// Options and inputs refused before any work are input errors (exit 1); the rest failed after
/// work started (exit 5).
fn classify(e: bench::BenchError) -> anyhow::Error {
    use bench::BenchError::*;
    match e {
        Options(_) | Model(_) | Serve(_) => e.into(),
        Kernelgen(kernelgen::Error::Artifact(_) | kernelgen::Error::Config(_)) => e.into(),
        other => super::failed(other),
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchWhat::Decode(a) => run_decode(a),
        BenchWhat::Memory(a) => run_memory(a),
        BenchWhat::Serve(a) => run_serve(a),
        BenchWhat::Programs(a) => run_programs(a),
        BenchWhat::Kernel(k) => run_kernel(k),
        BenchWhat::Check(c) => run_check(c),
    }
}

fn bench_model(served: &ServedArgs, plugin: &PluginArg) -> bench::BenchModel {
    bench::BenchModel {
        model: served.model_path(),
        kernel: served.kernel.clone(),
        blocks: served.blocks(),
        plugin: plugin.path(),
        tp: 1,
        attention: served.attention,
        kv_dtype: Dtype::F32,
        weights_dtype: Dtype::F32,
    }
}

fn run_decode(a: DecodeArgs) -> anyhow::Result<ExitCode> {
    let b = bench::decode::DecodeBench {
        served: bench::BenchModel {
            kv_dtype: a.kv_dtype,
            weights_dtype: a.weights,
            ..bench_model(&a.served, &a.plugin)
        },
        batches: a.batches.clone(),
        prompt_len: a.prompt_len,
        new_tokens: a.new_tokens,
        repeats: a.repeats,
        prefill_len: a.prefill_len,
        page_size: a.page_size,
        pool_pages: a.pool_pages.clone(),
        tp: a.tp.clone(),
        long_prompt: a.long_prompt,
    };
    let r = bench::decode::run(&b, &mut |m| eprintln!("{m}")).map_err(classify)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_decode(&r, a.prefill_len);
    }
    Ok(ExitCode::Ok)
}

fn run_memory(a: MemoryArgs) -> anyhow::Result<ExitCode> {
    let b = bench::memory::MemoryBench {
        served: bench_model(&a.served, &a.plugin),
        requests: a.requests,
        max_seqs: a.max_seqs,
        prompt_len: a.prompt_len,
        new_tokens: a.new_tokens,
        page_size: a.page_size,
        max_pages: a.max_pages,
        warm_steps: a.warm_steps,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/~{len} steps, {elapsed} ({eta} left)")
            .expect("a valid template"),
    );
    let r = bench::memory::run(&b, &mut |done, expected| {
        bar.set_length(expected.max(done) as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let r = r.map_err(classify)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_memory(&r);
    }
    Ok(ExitCode::Ok)
}

fn print_memory(r: &MemoryBenchReport) {
    let mb = |b: u64| b as f64 / 1e6;
    println!("plugin {}", r.plugin);
    println!(
        "floor: weights {:.0} MB + KV pool {:.0} MB = {:.0} MB; loaded in {:.2} s",
        mb(r.weight_bytes),
        mb(r.pool_bytes),
        mb(r.weight_bytes + r.pool_bytes),
        r.load_time_s
    );
    println!(
        "\n{:<24} {:>8} {:>9} {:>8} {:>9}   (MB)",
        "stage", "rss", "anon", "file", "peak"
    );
    let row = |name: &str, m: &runtime::mem::MemSnapshot| {
        println!(
            "{name:<24} {:>8.1} {:>9.1} {:>8.1} {:>9.1}",
            mb(m.rss_bytes),
            mb(m.anon_bytes),
            mb(m.file_bytes),
            mb(m.peak_rss_bytes)
        )
    };
    for s in &r.memory.stages {
        row(&s.stage, &s.mem);
    }
    row(&format!("after step {}", r.warm_steps), &r.warm);
    for (requests, steps, m) in &r.waves {
        row(&format!("{requests} done, step {steps}"), m);
    }
    println!("\nprogram        args MB  outputs MB  aliased MB  temp MB  (the compiler's plan)");
    for (name, c) in &r.memory.compiled {
        println!(
            "{name:<14} {:>7.1} {:>11.1} {:>11.1} {:>8.1}",
            mb(c.argument_bytes),
            mb(c.output_bytes),
            mb(c.alias_bytes),
            mb(c.temp_bytes)
        );
    }
    let peak = r.memory.peak_rss_bytes.unwrap_or(0);
    println!(
        "\npeak resident {:.0} MB = floor + {:.0} MB ({:.2}x the floor)",
        mb(peak),
        r.overhead_bytes() as f64 / 1e6,
        peak as f64 / (r.weight_bytes + r.pool_bytes).max(1) as f64
    );
    if let Some(g) = r.growth_after_first_wave() {
        println!(
            "resident after the last wave vs after the first (every KV slot written): {:+.1}%",
            100.0 * g
        );
    }
    println!(
        "resident after step {} vs after step {} (the KV pool fills in between): {:+.1}%{}",
        r.steps,
        r.warm_steps,
        100.0 * r.growth(),
        if r.compiled_after_warm.is_empty() {
            String::new()
        } else {
            format!(
                " (programs compiled after the warm-up: {})",
                r.compiled_after_warm.join(", ")
            )
        }
    );
}

fn print_decode(r: &DecodeReport, prefill_len: usize) {
    println!("plugin {}", r.plugin);
    for w in &r.kernel_warnings {
        eprintln!("warning: {w}");
    }
    let mut kernels: Vec<&str> = r
        .decode
        .iter()
        .chain(&r.prefill)
        .map(|f| f.kernel.as_str())
        .collect();
    kernels.dedup();
    for k in kernels {
        println!("kernel: {k}");
    }
    println!(
        "measured: memory bandwidth {:.1} GB/s, f32 matmul {:.1} GFLOP/s; {} params, {:.0} MB of {} weights read per decode step; {} KV pool",
        r.bandwidth_gbs,
        r.matmul_gflops,
        r.params,
        r.weight_bytes as f64 / 1e6,
        r.weights_dtype,
        r.kv_dtype
    );
    println!(
        "{:<18} {:>10} {:>16} {:>12} {:>8} {:>10}",
        "figure",
        "tok/s",
        format!("min-max of {}", r.repeats),
        "bound tok/s",
        "ratio",
        "step ms"
    );
    let row = |name: String, f: &Figure| {
        println!(
            "{:<18} {:>10.1} {:>16} {:>12.1} {:>8.2} {:>10.2}",
            name,
            f.tokens_per_s,
            format!(
                "{:.1}-{:.1}",
                f.tokens_per_s_range.0, f.tokens_per_s_range.1
            ),
            f.bound_tokens_per_s,
            f.ratio,
            f.step_ms
        )
    };
    let tp_shown = r.decode.iter().any(|f| f.tp > 1);
    let name = |f: &Figure| match tp_shown {
        true => format!("decode b{} tp {}", f.batch, f.tp),
        false => format!("decode batch {}", f.batch),
    };
    for f in &r.decode {
        row(name(f), f);
    }
    if let Some(f) = &r.prefill {
        row(format!("prefill {prefill_len} tok"), f);
    }
    println!(
        "\nwhere a decode step goes (ms): {:>7} {:>8} {:>9} {:>10} {:>9} {:>7}   matmul reads",
        "engine", "inputs", "matmuls", "all-reduce", "rest", "step"
    );
    for f in &r.decode {
        if let Some(b) = &f.breakdown {
            println!(
                "{:<30} {:>7.2} {:>8.2} {:>9.2} {:>10} {:>9.2} {:>7.2}   {:.1} GB/s",
                format!("  {}", name(f)),
                b.engine_host_ms,
                b.inputs_ms,
                b.matmuls_ms,
                b.all_reduces_ms
                    .map_or("-".to_string(), |a| format!("{a:.2}")),
                b.rest_of_program_ms,
                f.step_ms,
                b.matmul_read_gbs
            );
        }
    }
    println!(
        "  engine: scheduling and sampling on the host; inputs: building and uploading them; matmuls: the step's projections alone on the same weights (under --tp, device 0's share); all-reduce: the step's collectives alone (--tp > 1); rest: attention kernel, norms, RoPE, KV writes, logits copy (and under --tp the other devices' matmuls not overlapping device 0's)\n"
    );
    let inside: Vec<_> = r
        .decode
        .iter()
        .filter_map(|f| Some((f, f.breakdown?.inside?)))
        .collect();
    if !inside.is_empty() {
        println!(
            "inside the step program (ms): {:>7} {:>11} {:>9} {:>7} {:>7} {:>7} {:>7}   steps",
            "start", "projections", "attention", "head", "between", "finish", "program"
        );
        for (f, i) in &inside {
            println!(
                "{:<30} {:>7.2} {:>11.2} {:>9.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2}   {}",
                format!("  {}", name(f)),
                i.start_ms,
                i.projections_ms,
                i.attention_ms,
                i.lm_head_ms,
                i.between_ms,
                i.finish_ms,
                i.step_ms,
                i.steps
            );
        }
        println!(
            "  one more round with the host kernels' timeline, mean per decode step: start: from execute to the first kernel (the PJRT call, XLA's set-up, the ops before it); projections, attention, head: the host kernels' own time in the step; between: between one kernel's end and the next one's start (XLA's RoPE, KV writes, SiLU, each call's overhead); finish: from the last kernel to the logits on the host; program: the sum, from execute to the logits on the host\n"
        );
    }
    for (pages, ms) in &r.pool_scaling {
        println!("batch-1 step with a {pages}-page pool: {ms:.2} ms");
    }
    if let Some(l) = &r.long_context {
        println!(
            "batch-1 decode at prompt {}: {:.1} tok/s, {:.0}% of prompt {}'s {:.1} (medians of \
             rounds alternating on one engine; one round against the one beside it: {:.0}-{:.0}%)",
            l.long_prompt,
            l.long_tokens_per_s,
            100.0 * l.ratio,
            l.short_prompt,
            l.short_tokens_per_s,
            100.0 * l.pair_ratio_range.0,
            100.0 * l.pair_ratio_range.1
        );
    }
    if let Some(peak) = r.memory.as_ref().and_then(|m| m.peak_rss_bytes) {
        println!(
            "peak resident memory of the run: {:.0} MB ({:.0} MB of weights)",
            peak as f64 / 1e6,
            r.model_weight_bytes as f64 / 1e6
        );
    }
}

fn run_kernel(a: KernelBenchArgs) -> anyhow::Result<ExitCode> {
    let b = bench::kernel::KernelBench {
        artifacts: a.artifacts.clone(),
        seqs: a.seqs,
        mixed: a.mixed,
        kv_len: a.kv_len,
        layers: a.layers,
        repeats: a.repeats,
        seed: a.seed,
        plugin: a.plugin.path(),
        peer_jax: a.peer.is_some(),
    };
    let report = bench::kernel::run(&b).map_err(classify)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_kernel(&report);
    }
    Ok(ExitCode::Ok)
}

fn print_kernel(report: &KernelReport) {
    let max_kv = report.seqs.iter().map(|s| s.1).max().unwrap_or(0);
    println!("plugin {}", report.plugin);
    println!(
        "{} chained calls per run on one {} batch ({} seqs, {} query rows, kv_len <= {max_kv}, seed {}); median of {} rounds",
        report.layers,
        if report.mixed { "mixed prefill+decode" } else { "decode" },
        report.seqs.len(),
        report.seqs.iter().map(|s| s.0).sum::<usize>(),
        report.seed,
        report.repeats
    );
    println!(
        "bound: {:.3} ms per run, the larger of the K/V bytes at {:.1} GB/s ({:.3} ms) and the \
         QK and PV flops at {:.0} GFLOP/s ({:.3} ms), both rates measured now",
        report.bound_ms,
        report.bandwidth_gbs,
        report.bandwidth_bound_ms,
        report.matmul_gflops,
        report.compute_bound_ms
    );
    println!(
        "{:<28} {:>10} {:>18} {:>10} {:>7} {:>8}",
        "artifact", "ms/run", "min-max", "us/call", "ratio", "of bound"
    );
    for r in &report.rows {
        println!(
            "{:<28} {:>10.3} {:>18} {:>10.1} {:>7.2} {:>8.2}",
            r.artifact,
            r.chain_ms,
            format!("{:.3}-{:.3}", r.chain_ms_range.0, r.chain_ms_range.1),
            r.per_call_us,
            r.ratio,
            r.of_bound
        );
    }
    if let Some(p) = &report.peer {
        println!(
            "{:<28} {:>10.3} {:>18}",
            p.peer,
            p.chain_ms,
            format!("{:.3}-{:.3}", p.chain_ms_range.0, p.chain_ms_range.1),
        );
        for (r, x) in report.rows.iter().zip(&p.speedups) {
            println!(
                "  {} runs {x:.2}x faster than the {} peer",
                r.artifact, p.peer
            );
        }
    }
    for r in &report.rows {
        println!("  {}: {}", r.artifact, r.config);
    }
}

fn run_check(a: CheckBenchArgs) -> anyhow::Result<ExitCode> {
    let kernels = a
        .kernel
        .iter()
        .map(|k| KernelModel::parse(k))
        .collect::<Result<Vec<_>, _>>()?;
    let r = bench::check::run(a.passes, &kernels, a.oracle, &mut |m| eprintln!("{m}"))
        .map_err(classify)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_check(&r);
    }
    Ok(ExitCode::Ok)
}

fn print_check(r: &CheckReport) {
    println!("{} configs x {} passes per kernel", r.grid, r.passes);
    for k in &r.kernels {
        println!(
            "{:<9} {:.3} s: {:.0} configs/s ({:.1}x the 500,000/s target), {:.2} us per config",
            k.kernel.name(),
            k.seconds,
            k.configs_per_s,
            k.configs_per_s / 5e5,
            1e6 / k.configs_per_s
        );
        let [fit, no, unsure] = k.verdicts;
        println!(
            "          per pass: {fit} fit, {no} do not fit, {unsure} uncertain, {} unsupported",
            k.unsupported
        );
    }
    if let Some((s, verdict)) = &r.oracle {
        let jax = r.kernels.iter().find(|k| k.kernel == KernelModel::JaxRpa);
        let speedup = jax.map_or(String::new(), |k| {
            format!(
                "; the checker (jax-rpa) is {:.0}x faster",
                s * k.configs_per_s
            )
        });
        println!("real TPU compile of one config (jax-rpa): {s:.2} s ({verdict}){speedup}");
    }
}
