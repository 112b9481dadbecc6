//! `kernelgen bench`: throughput benchmarks that print ratios against bounds measured in the
//! same run (this machine is noisy: separate runs differ, ratios within one run do not).

use super::exit;
use anyhow::Context;
use clap::{Args, Subcommand};
use kernelgen::serve::{start, ServeOptions};
use runtime::engine::{EngineConfig, SamplingParams};
use runtime::pjrt::{Api, Client, CompileOptions};
use runtime::step::layout::KvDtype;
use serde::Serialize;
use std::time::Instant;

/// Benchmarks (ratios against bounds measured in the same run)
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    Decode(DecodeArgs),
    Kernel(super::bench_kernel::KernelBenchArgs),
    Check(CheckBenchArgs),
}

/// Throughput of the analytic VMEM checker (configs per second)
#[derive(Args, Debug)]
#[command(
    after_help = "Checks a grid of configs (5 targets x 12 head layouts x 5 page sizes x 5 q_blocks x \
7 kv_pages_blocks x 2 dtypes = 21,000) several times and prints configs/s against the 10,000/s target. \
With --oracle, also compiles one config with the real TPU compiler in the same run and prints the speedup."
)]
pub struct CheckBenchArgs {
    /// Passes over the grid
    #[arg(long, default_value_t = 5)]
    pub passes: usize,
    /// Also time one real TPU compile (creates the oracle venv on first use)
    #[arg(long)]
    pub oracle: bool,
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
rest of the program (attention kernel, norms, RoPE, KV writes, logits copy). Step time vs max_pages \
checks that the KV pool is never copied (it must not grow with the pool).")]
pub struct DecodeArgs {
    #[command(flatten)]
    pub served: super::generate::ServedArgs,
    #[command(flatten)]
    pub plugin: super::generate::PluginArg,
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
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Default)]
struct Report {
    plugin: String,
    /// Measured rounds behind each figure.
    repeats: usize,
    bandwidth_gbs: f64,
    matmul_gflops: f64,
    weight_bytes: u64,
    params: u64,
    decode: Vec<Figure>,
    prefill: Option<Figure>,
    pool_scaling: Vec<(usize, f64)>,
}

#[derive(Serialize)]
struct Figure {
    batch: usize,
    /// Median over the measured rounds.
    tokens_per_s: f64,
    /// Lowest and highest over the measured rounds.
    tokens_per_s_range: (f64, f64),
    bound_tokens_per_s: f64,
    ratio: f64,
    step_ms: f64,
    /// Where a decode step's time goes (decode figures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    breakdown: Option<Breakdown>,
}

/// A mean decode step taken apart, in milliseconds. The parts sum to `step_ms`.
#[derive(Serialize, Clone, Copy)]
struct Breakdown {
    /// The engine on the host: scheduling, building the batch, sampling.
    engine_host_ms: f64,
    /// Building and uploading the step's small inputs.
    inputs_ms: f64,
    /// The step's projections (QKV, O, gate/up, down, LM head) run alone as one program on the
    /// same weight buffers (runtime::step::profile), median of 10.
    matmuls_ms: f64,
    /// The rest of the program: attention kernel, norms, RoPE, KV writes, and the logits copy.
    rest_of_program_ms: f64,
    /// Weight bytes per step over `matmuls_ms`: the read rate the matmuls reach.
    matmul_read_gbs: f64,
}

/// Bandwidth: GB/s of a device-side sum over 256 MiB (a read-only stream, like a decode step's
/// weight reads), best of 15 after 2 warm-ups. A best-of-5 with no warm-up read 33.5-41.0 GB/s
/// over five runs where this reads 40.1-48.9 on the same host: it caught the memory at its
/// fastest less often, so the batch-1 bound came out low.
fn measure_bandwidth(client: &Client) -> anyhow::Result<f64> {
    let n = 64 << 20; // f32 elements
    let text = format!(
        "func.func @main(%x: tensor<{n}xf32>) -> tensor<f32> {{\n  %z = \"stablehlo.constant\"() {{value = dense<0.0> : tensor<f32>}} : () -> tensor<f32>\n  \
         %s = \"stablehlo.reduce\"(%x, %z) ({{\n  ^bb0(%a: tensor<f32>, %b: tensor<f32>):\n    %c = \"stablehlo.add\"(%a, %b) : (tensor<f32>, tensor<f32>) -> tensor<f32>\n    \
         \"stablehlo.return\"(%c) : (tensor<f32>) -> ()\n  }}) {{dimensions = array<i64: 0>}} : (tensor<{n}xf32>, tensor<f32>) -> tensor<f32>\n  return %s : tensor<f32>\n}}\n"
    );
    let exe = client.compile(&text, &CompileOptions::new())?;
    let x = client.buffer_from_host(&vec![0f32; n], &[n as i64])?;
    let best = run_times(&exe, &[&x], 2, 15)?[0];
    Ok((n * 4) as f64 / best / 1e9)
}

/// Seconds of `runs` executions of `exe` on `args` (each waited for), after `warmup` untimed
/// ones, sorted ascending.
fn run_times(
    exe: &runtime::pjrt::Executable,
    args: &[&runtime::pjrt::Buffer],
    warmup: usize,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
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

/// f32 matmul rate: [m, k] x [k, n] on the device, best of 30 after 3 warm-ups (a best-of-5
/// with no warm-up measured 208-438 GFLOP/s over five runs, this 402-434).
fn measure_matmul(client: &Client, m: usize, k: usize, n: usize) -> anyhow::Result<f64> {
    let text = format!(
        "func.func @main(%a: tensor<{m}x{k}xf32>, %b: tensor<{k}x{n}xf32>) -> tensor<{m}x{n}xf32> {{\n  \
         %c = \"stablehlo.dot_general\"(%a, %b) {{dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>}} : (tensor<{m}x{k}xf32>, tensor<{k}x{n}xf32>) -> tensor<{m}x{n}xf32>\n  \
         return %c : tensor<{m}x{n}xf32>\n}}\n"
    );
    let exe = client.compile(&text, &CompileOptions::new())?;
    let a = client.buffer_from_host(&vec![0.5f32; m * k], &[m as i64, k as i64])?;
    let b = client.buffer_from_host(&vec![0.25f32; k * n], &[k as i64, n as i64])?;
    let best = run_times(&exe, &[&a, &b], 3, 30)?[0];
    Ok((2 * m * k * n) as f64 / best / 1e9)
}

fn options(
    a: &DecodeArgs,
    max_seqs: usize,
    max_pages: usize,
    max_seq_len: usize,
    budget: usize,
) -> ServeOptions {
    ServeOptions {
        model: a.served.model_path(),
        kernel: a.served.kernel.clone(),
        blocks: a.served.blocks(),
        engine: EngineConfig {
            max_seqs,
            max_pages,
            page_size: a.page_size,
            max_seq_len,
            max_tokens_per_round: budget,
        },
        kv_dtype: KvDtype::F32,
        plugin: a.plugin.path(),
        buckets: None,
    }
}

/// What one measured round of a workload gave, from the engine's own metrics.
#[derive(Clone, Copy)]
struct Round {
    /// Tokens sampled in decode-only steps per second of those steps.
    decode_tokens_per_s: f64,
    /// Mean decode-only step, seconds.
    decode_step_s: f64,
    /// Prompt tokens per second of the steps that held prompt work.
    prefill_tokens_per_s: f64,
    /// Mean decode step's input building and upload, seconds.
    inputs_s: f64,
    /// Mean decode step's program execution and logits download, seconds.
    program_s: f64,
}

/// What one workload measured over its rounds: the median round (by decode step time) and the
/// spread of every round.
struct BatchFigures {
    median: Round,
    /// Lowest and highest decode tokens/s of the rounds.
    decode_range: (f64, f64),
    /// Median, lowest and highest prefill tokens/s of the rounds.
    prefill: (f64, (f64, f64)),
    /// The median round's decode step taken apart, when asked for.
    breakdown: Option<Breakdown>,
}

/// The median of `xs` and their lowest and highest.
pub(super) fn spread(mut xs: Vec<f64>) -> (f64, (f64, f64)) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], (xs[0], xs[xs.len() - 1]))
}

/// Median seconds of the step's matmuls alone at `rows` rows, on the executor's own weights.
fn time_matmuls(served: &kernelgen::serve::Served, rows: usize) -> anyhow::Result<f64> {
    let exec = served.engine.executor();
    let m = &served.model;
    let text = runtime::step::profile::matmul_chain_program(m, rows);
    let exe = exec
        .client()
        .compile(&text, &CompileOptions::new())
        .context("compiling the matmul chain")?;
    let x: Vec<f32> = (0..rows * m.hidden_size)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
        .collect();
    let x = exec
        .client()
        .buffer_from_host(&x, &[rows as i64, m.hidden_size as i64])?;
    let mut args = vec![&x];
    args.extend(exec.weights());
    let times = run_times(&exe, &args, 3, 10)?;
    Ok(times[times.len() / 2])
}

/// Submits `batch` prompts of `prompt_len` tokens for `new_tokens` each and steps the engine
/// until all finish; returns that round's figures.
fn run_round(
    served: &mut kernelgen::serve::Served,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
) -> anyhow::Result<Round> {
    let vocab = served.model.vocab_size as u32;
    served.engine.reset_metrics();
    served.engine.executor_mut().times = Default::default();
    for i in 0..batch {
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
    while served.engine.has_work() {
        served.engine.step()?;
    }
    served.engine.take_finished();
    let m = served.engine.metrics().report();
    let d = &served.engine.executor().times.decode;
    let per_step = |s: f64| s / d.steps.max(1) as f64;
    Ok(Round {
        decode_tokens_per_s: m.decode_tokens_per_s,
        decode_step_s: m.decode_only_time_s / m.decode_only_steps.max(1) as f64,
        prefill_tokens_per_s: m.prefill_tokens as f64 / m.prefill_time_s,
        inputs_s: per_step(d.host_s),
        program_s: per_step(d.execute_s + d.download_s),
    })
}

/// The median round's decode step taken apart: its engine, input and program times, and the
/// step's matmuls timed alone on the same weights.
fn take_apart(
    served: &kernelgen::serve::Served,
    batch: usize,
    r: &Round,
) -> anyhow::Result<Breakdown> {
    let matmuls = time_matmuls(served, batch)?;
    let weight_bytes = decode_weight_bytes(&served.model);
    let ms = |s: f64| s * 1e3;
    Ok(Breakdown {
        engine_host_ms: ms(r.decode_step_s - r.inputs_s - r.program_s),
        inputs_ms: ms(r.inputs_s),
        matmuls_ms: ms(matmuls),
        rest_of_program_ms: ms(r.program_s - matmuls),
        matmul_read_gbs: weight_bytes as f64 / matmuls / 1e9,
    })
}

/// Runs one workload `1 + a.repeats` times on one engine: the first round compiles every bucket
/// the workload uses and touches every buffer; the others are measured. With `breakdown`, the
/// median round's decode step is also taken apart (it compiles and times the matmul chain).
fn run_batch(
    a: &DecodeArgs,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    max_pages: usize,
    breakdown: bool,
) -> anyhow::Result<BatchFigures> {
    let max_seq_len = (prompt_len + new_tokens + 1).div_ceil(a.page_size) * a.page_size;
    let per_seq = max_seq_len / a.page_size;
    let pages = max_pages.max(per_seq * batch);
    let budget = (batch * prompt_len).clamp(batch, 512);
    let mut served = start(&options(a, batch, pages, max_seq_len, budget))?;
    served.engine.set_stop_token_ids(vec![]);
    run_round(&mut served, batch, prompt_len, new_tokens)?;
    let mut rounds = Vec::with_capacity(a.repeats);
    for _ in 0..a.repeats {
        rounds.push(run_round(&mut served, batch, prompt_len, new_tokens)?);
    }
    rounds.sort_by(|x, y| x.decode_step_s.total_cmp(&y.decode_step_s));
    let median = rounds[rounds.len() / 2];
    Ok(BatchFigures {
        median,
        decode_range: spread(rounds.iter().map(|r| r.decode_tokens_per_s).collect()).1,
        prefill: spread(rounds.iter().map(|r| r.prefill_tokens_per_s).collect()),
        breakdown: if breakdown {
            Some(take_apart(&served, batch, &median)?)
        } else {
            None
        },
    })
}

/// Parameters of the step program's weights.
fn num_params(c: &runtime::model::LlamaConfig) -> u64 {
    runtime::step::layout::pack_weights_dims(c)
        .iter()
        .map(|(_, d)| d.iter().product::<usize>() as u64)
        .sum()
}

/// Bytes a decode step reads: every weight except the embedding table (one row is gathered),
/// plus the embedding once more when it is the (tied) LM head.
fn decode_weight_bytes(c: &runtime::model::LlamaConfig) -> u64 {
    let embed = (c.vocab_size * c.hidden_size) as u64;
    4 * (num_params(c) - embed + if c.tie_word_embeddings { embed } else { 0 })
}

pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    let a = match args.what {
        BenchWhat::Decode(a) => a,
        BenchWhat::Check(c) => return run_check(c),
        BenchWhat::Kernel(k) => return super::bench_kernel::run(k),
    };
    let model_path = a.served.model_path();
    let (model, _) = kernelgen::serve::load_model(&model_path)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let plugin = a.plugin.path();
    let client = Client::new(Api::load(&plugin)?)?;
    let c = &model.config;
    let params = num_params(c);
    let weight_bytes = decode_weight_bytes(c);
    let mut r = Report {
        plugin: plugin.display().to_string(),
        repeats: a.repeats,
        weight_bytes,
        params,
        ..Report::default()
    };
    eprintln!("measuring bandwidth and matmul rate ...");
    r.bandwidth_gbs = measure_bandwidth(&client)?;
    r.matmul_gflops = measure_matmul(&client, 32, c.hidden_size, 2 * c.intermediate_size)?.max(
        measure_matmul(&client, 256, c.hidden_size, 2 * c.intermediate_size)?,
    );
    drop(client);
    let bw_bound = r.bandwidth_gbs * 1e9 / weight_bytes as f64;
    let flop_bound = r.matmul_gflops * 1e9 / (2.0 * weight_bytes as f64 / 4.0);
    for &b in &a.batches {
        eprintln!("decode batch {b} ...");
        let f = run_batch(&a, b, a.prompt_len, a.new_tokens, 0, true)?;
        let bound = (bw_bound * b as f64).min(flop_bound);
        r.decode.push(Figure {
            batch: b,
            tokens_per_s: f.median.decode_tokens_per_s,
            tokens_per_s_range: f.decode_range,
            bound_tokens_per_s: bound,
            ratio: f.median.decode_tokens_per_s / bound,
            step_ms: f.median.decode_step_s * 1e3,
            breakdown: f.breakdown,
        });
    }
    eprintln!("prefill ...");
    let (pps, pps_range) = run_batch(&a, 1, a.prefill_len, 2, 0, false)?.prefill;
    r.prefill = Some(Figure {
        batch: 1,
        tokens_per_s: pps,
        tokens_per_s_range: pps_range,
        bound_tokens_per_s: flop_bound,
        ratio: pps / flop_bound,
        step_ms: a.prefill_len as f64 / pps * 1e3,
        breakdown: None,
    });
    for &pages in &a.pool_pages {
        eprintln!("pool of {pages} pages ...");
        let step = run_batch(&a, 1, a.prompt_len, 16, pages, false)?
            .median
            .decode_step_s;
        r.pool_scaling.push((pages, step * 1e3));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(exit::OK);
    }
    println!("plugin {}", r.plugin);
    println!(
        "measured: memory bandwidth {:.1} GB/s, f32 matmul {:.1} GFLOP/s; {} params, {:.0} MB of weights read per decode step",
        r.bandwidth_gbs,
        r.matmul_gflops,
        r.params,
        r.weight_bytes as f64 / 1e6
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
    for f in &r.decode {
        row(format!("decode batch {}", f.batch), f);
    }
    if let Some(f) = &r.prefill {
        row(format!("prefill {} tok", a.prefill_len), f);
    }
    println!(
        "\nwhere a decode step goes (ms): {:>7} {:>8} {:>9} {:>9} {:>7}   matmul reads",
        "engine", "inputs", "matmuls", "rest", "step"
    );
    for f in &r.decode {
        if let Some(b) = &f.breakdown {
            println!(
                "{:<30} {:>7.2} {:>8.2} {:>9.2} {:>9.2} {:>7.2}   {:.1} GB/s",
                format!("  batch {}", f.batch),
                b.engine_host_ms,
                b.inputs_ms,
                b.matmuls_ms,
                b.rest_of_program_ms,
                f.step_ms,
                b.matmul_read_gbs
            );
        }
    }
    println!(
        "  engine: scheduling and sampling on the host; inputs: building and uploading them; matmuls: the step's projections alone on the same weights; rest: attention kernel, norms, RoPE, KV writes, logits copy\n"
    );
    for (pages, ms) in &r.pool_scaling {
        println!("batch-1 step with a {pages}-page pool: {ms:.2} ms");
    }
    Ok(exit::OK)
}

fn check_grid() -> Vec<(kernelgen::config::KernelConfig, kernelgen::target::Target)> {
    use kernelgen::config::{Dtype, Geometry, KernelConfig, KernelParams};
    let heads = [
        (8, 8),
        (16, 16),
        (32, 32),
        (16, 8),
        (24, 8),
        (32, 8),
        (64, 8),
        (32, 4),
        (8, 1),
        (4, 1),
        (8, 2),
        (16, 2),
    ];
    let mut out = Vec::new();
    for t in kernelgen::target::TARGETS {
        for &(q, kv) in &heads {
            for page in [16, 32, 64, 128, 256] {
                for bq in [8, 16, 32, 64, 128] {
                    for bkv in [1, 2, 4, 8, 16, 32, 64] {
                        for dtype in [Dtype::Bf16, Dtype::F32] {
                            let p = KernelParams {
                                geometry: Geometry {
                                    num_q_heads: q,
                                    num_kv_heads: kv,
                                    head_dim: 128,
                                },
                                dtype,
                                page_size: page,
                                q_block: bq,
                                kv_pages_block: bkv,
                                max_num_tokens: 2048,
                                max_num_seqs: 64,
                                pages_per_seq: 64,
                                total_pages: 4096,
                                sm_scale: None,
                                sliding_window: None,
                                soft_cap: None,
                                schedule: Default::default(),
                            };
                            out.push((KernelConfig::new(p).expect("grid configs are valid"), *t));
                        }
                    }
                }
            }
        }
    }
    out
}

fn run_check(a: CheckBenchArgs) -> anyhow::Result<i32> {
    use kernelgen::vmem::{check, CheckRequest, KernelModel, Verdict};
    let grid = check_grid();
    let mut counts = [0usize; 3];
    let start = Instant::now();
    for _ in 0..a.passes {
        for (cfg, t) in &grid {
            let r = check(&CheckRequest {
                cfg,
                target: *t,
                kernel: KernelModel::JaxRpa,
                vmem_limit: None,
            });
            if let Ok(r) = r {
                counts[match r.verdict {
                    Verdict::Fits => 0,
                    Verdict::DoesNotFit => 1,
                    Verdict::Uncertain => 2,
                }] += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = grid.len() * a.passes;
    let rate = n as f64 / secs;
    println!("checked {n} configs in {:.3} s: {:.0} configs/s ({:.1}x the 10,000/s target), {:.2} us per config", secs, rate, rate / 1e4, secs / n as f64 * 1e6);
    println!(
        "verdicts per pass: {} fit, {} do not fit, {} uncertain",
        counts[0] / a.passes,
        counts[1] / a.passes,
        counts[2] / a.passes
    );
    if a.oracle {
        let (cfg, t) = grid
            .iter()
            .find(|(c, t)| {
                t.name == "v5p"
                    && c.page_size() == 64
                    && c.q_block() == 16
                    && c.kv_pages_block() == 16
            })
            .expect("in grid");
        let mut oracle = verify::oracle::Oracle::start(&mut |m| eprintln!("{m}"))?;
        let req = super::check::oracle_request(cfg, t, KernelModel::JaxRpa, None)?;
        oracle.compile(&req)?; // first compile pays jax's warm-up
        let t0 = Instant::now();
        let resp = oracle.compile(&req)?;
        let oracle_s = t0.elapsed().as_secs_f64();
        println!(
            "real TPU compile of one config: {:.2} s ({}); the model is {:.0}x faster",
            oracle_s,
            resp.verdict,
            oracle_s / (secs / n as f64)
        );
    }
    Ok(exit::OK)
}
