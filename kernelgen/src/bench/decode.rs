//! `kernelgen bench decode`: the serving engine's decode tokens/s at several batch sizes and its
//! prefill tokens/s, each beside the bound the bandwidth and matmul rate measured in the same
//! run imply, and each decode step taken apart (engine host work, input upload, the step's
//! matmuls alone on the same weight buffers, the rest of the program; and from the inside, with
//! the host kernels' timeline: [`super::timeline`]).

use super::timeline::InsideStep;
use super::{pjrt, probes, run_times, spread, submit_synthetic, BenchError, BenchModel};
use crate::serve::{open_model, start, ServeOptions, Served};
use crate::step::profile::matmul_chain;
use crate::step::weights::{num_params, weight_bytes};
use crate::step::MemoryReport;
use runtime::dtype::Dtype;
use runtime::engine::EngineConfig;
use runtime::kernels::timeline;
use runtime::model::LlamaConfig;
use runtime::pjrt::{Api, Arg, Client, CompileOptions};
use serde::Serialize;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct DecodeBench {
    pub served: BenchModel,
    pub batches: Vec<usize>,
    pub prompt_len: usize,
    pub new_tokens: usize,
    /// Measured rounds of each workload, after one warm-up round.
    pub repeats: usize,
    pub prefill_len: usize,
    pub page_size: usize,
    /// Batch-1 step time is also measured at these pool sizes (it must not grow with them).
    pub pool_pages: Vec<usize>,
    /// Degrees of tensor parallelism the decode batches run at; prefill and the pool sizes run
    /// at the first.
    pub tp: Vec<usize>,
    /// Batch-1 decode is also measured at this prompt length, in rounds alternating with
    /// `prompt_len` on one engine ([`LongContext`]).
    pub long_prompt: Option<usize>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DecodeReport {
    pub plugin: String,
    /// The KV pool's dtype.
    pub kv_dtype: Dtype,
    /// The weight matrices' dtype.
    pub weights_dtype: Dtype,
    /// Measured rounds behind each figure.
    pub repeats: usize,
    pub bandwidth_gbs: f64,
    pub matmul_gflops: f64,
    /// Weight bytes a decode step of the first batch size reads ([`decode_weight_bytes`]; each
    /// batch's bound uses its own).
    pub weight_bytes: u64,
    /// Bytes of every weight on the device.
    pub model_weight_bytes: u64,
    pub params: u64,
    pub decode: Vec<Figure>,
    pub prefill: Option<Figure>,
    /// (pool pages, batch-1 step ms).
    pub pool_scaling: Vec<(usize, f64)>,
    /// The largest decode batch's engine: start-up stages and each program's memory plan; the
    /// peak is the whole run's.
    pub memory: Option<MemoryReport>,
    /// Workloads whose block sizes missed the tuned table (each warning once).
    pub kernel_warnings: Vec<String>,
    /// Batch-1 decode at a long prompt beside the short one ([`DecodeBench::long_prompt`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContext>,
}

/// Batch-1 decode tokens/s at two prompt lengths, from rounds that alternate between them on
/// one engine (one step program, one KV pool), so that both figures meet the same stretches of
/// the host's memory bandwidth: on a host whose bandwidth moves within seconds, the two lengths
/// measured in separate runs compare the runs' bandwidth as much as the context's cost.
#[derive(Clone, Debug, Serialize)]
pub struct LongContext {
    pub short_prompt: usize,
    pub long_prompt: usize,
    /// Median over the short prompt's rounds.
    pub short_tokens_per_s: f64,
    /// Median over the long prompt's rounds.
    pub long_tokens_per_s: f64,
    /// `long_tokens_per_s / short_tokens_per_s`.
    pub ratio: f64,
    /// Lowest and highest ratio of one long round to the short round beside it.
    pub pair_ratio_range: (f64, f64),
}

#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub batch: usize,
    /// Devices of tensor parallelism.
    pub tp: usize,
    /// Median over the measured rounds.
    pub tokens_per_s: f64,
    /// Lowest and highest over the measured rounds.
    pub tokens_per_s_range: (f64, f64),
    pub bound_tokens_per_s: f64,
    pub ratio: f64,
    pub step_ms: f64,
    /// The kernel the engine ran ("emitted q_block=32 kv_pages_block=4 (tuned: ...)").
    pub kernel: String,
    /// Where a decode step's time goes (decode figures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Breakdown>,
}

/// A mean decode step taken apart, in milliseconds. The parts sum to `step_ms`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Breakdown {
    /// The engine on the host: scheduling, building the batch, sampling.
    pub engine_host_ms: f64,
    /// Building and uploading the step's small inputs.
    pub inputs_ms: f64,
    /// The step's projections (QKV, O, gate/up, down, LM head) run alone as one program on the
    /// same weight buffers (`step::profile`), median of 10. Under tensor parallelism, device
    /// 0's share of them, alone.
    pub matmuls_ms: f64,
    /// Under tensor parallelism: the step's all-reduces (two per layer, over every device)
    /// run alone as one program on the same devices (`step::profile`), median of 10.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_reduces_ms: Option<f64>,
    /// The rest of the program: attention kernel, norms, RoPE, KV writes, and the logits copy;
    /// under tensor parallelism also the other devices' matmuls where they do not overlap
    /// device 0's.
    pub rest_of_program_ms: f64,
    /// Weight bytes per step over `matmuls_ms`: the read rate the matmuls reach.
    pub matmul_read_gbs: f64,
    /// The program's time from the inside, from one more round with the host kernels' timeline
    /// recorded (single device, host kernels only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inside: Option<InsideStep>,
}

fn options(
    b: &DecodeBench,
    max_seqs: usize,
    max_pages: usize,
    max_seq_len: usize,
    budget: usize,
) -> ServeOptions {
    b.served.serve_options(EngineConfig {
        max_seqs,
        max_pages,
        page_size: b.page_size,
        max_seq_len,
        max_tokens_per_round: budget,
    })
}

/// An engine for `batch` sequences of `prompt_len` prompt and `new_tokens` new tokens each,
/// with a pool of at least `max_pages` pages, admitting up to the whole batch's prompts (at
/// most 512 tokens) per step.
fn start_for(
    b: &DecodeBench,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    max_pages: usize,
) -> Result<Served, BenchError> {
    let max_seq_len = (prompt_len + new_tokens + 1).div_ceil(b.page_size) * b.page_size;
    let pages = max_pages.max(max_seq_len / b.page_size * batch);
    let budget = (batch * prompt_len).clamp(batch, 512);
    Ok(start(&options(b, batch, pages, max_seq_len, budget))?)
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
    memory: MemoryReport,
    /// The engine's LM head reads half its bytes in greedy steps.
    split_head: bool,
    kernel: String,
    kernel_warning: Option<String>,
}

/// Median seconds of the step's matmuls alone at `rows` rows, on the executor's own weights.
fn time_matmuls(served: &Served, rows: usize, tp: usize) -> Result<f64, BenchError> {
    let exec = served.engine.executor();
    let m = &crate::step::tp::shard_config(&served.model, tp).map_err(crate::Error::from)?;
    let source = exec.source();
    let chain = matmul_chain(m, rows, source.form(), source.weights, source.split_head())
        .map_err(crate::Error::from)?;
    let exe = exec
        .client()
        .compile(&chain.generic_text, &CompileOptions::new())
        .map_err(pjrt("compiling the matmul chain"))?;
    let x: Vec<f32> = (0..rows * m.hidden_size)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
        .collect();
    let x = exec
        .client()
        .buffer_from_host(&x, &[rows as i64, m.hidden_size as i64])
        .map_err(pjrt("uploading the matmul chain's input"))?;
    let mut args = vec![&x];
    args.extend(exec.weights());
    let times = run_times(&exe, &args, 3, 10).map_err(pjrt("running the matmul chain"))?;
    Ok(times[times.len() / 2])
}

/// Median seconds of the step's all-reduces alone over `tp` devices at `rows` rows, on the
/// executor's own devices.
fn time_all_reduces(served: &Served, rows: usize, tp: usize) -> Result<f64, BenchError> {
    let client = served.engine.executor().client();
    let m = &served.model;
    let chain = crate::step::profile::all_reduce_chain(m, rows, tp).map_err(crate::Error::from)?;
    let exe = client
        .compile(
            &chain.generic_text,
            &CompileOptions::new().with_partitions(tp as i64),
        )
        .map_err(pjrt("compiling the all-reduce chain"))?;
    let x: Vec<f32> = (0..rows * m.hidden_size).map(|i| (i % 7) as f32).collect();
    let dims = [rows as i64, m.hidden_size as i64];
    let xs = (0..tp)
        .map(|d| client.buffer_from_host_on(d, &x, &dims))
        .collect::<Result<Vec<_>, _>>()
        .map_err(pjrt("uploading the all-reduce chain's input"))?;
    let mut times = Vec::new();
    for i in 0..13 {
        let args = xs.iter().map(|b| vec![Arg::Borrowed(b)]).collect();
        let t = Instant::now();
        exe.execute_partitioned(args)
            .map_err(pjrt("running the all-reduce chain"))?;
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Submits `batch` prompts of `prompt_len` tokens for `new_tokens` each and steps the engine
/// until all finish; returns that round's figures.
fn run_round(
    served: &mut Served,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
) -> Result<Round, BenchError> {
    served.engine.reset_metrics();
    served.engine.executor_mut().times = Default::default();
    submit_synthetic(served, batch, prompt_len, new_tokens)?;
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
    served: &Served,
    batch: usize,
    r: &Round,
    tp: usize,
    inside: Option<InsideStep>,
) -> Result<Breakdown, BenchError> {
    let matmuls = time_matmuls(served, batch, tp)?;
    let all_reduces = match tp {
        1 => None,
        _ => Some(time_all_reduces(served, batch, tp)?),
    };
    let shard = crate::step::tp::shard_config(&served.model, tp).map_err(crate::Error::from)?;
    let source = served.engine.executor().source();
    let weight_bytes = decode_weight_bytes(&shard, source.weights, source.split_head(), batch);
    let ms = |s: f64| s * 1e3;
    Ok(Breakdown {
        engine_host_ms: ms(r.decode_step_s - r.inputs_s - r.program_s),
        inputs_ms: ms(r.inputs_s),
        matmuls_ms: ms(matmuls),
        all_reduces_ms: all_reduces.map(ms),
        rest_of_program_ms: ms(r.program_s - matmuls - all_reduces.unwrap_or(0.0)),
        matmul_read_gbs: weight_bytes as f64 / matmuls / 1e9,
        inside,
    })
}

/// Runs one workload `1 + b.repeats` times on one engine: the first round compiles every bucket
/// the workload uses and touches every buffer; the others are measured. With `breakdown`, the
/// median round's decode step is also taken apart (it compiles and times the matmul chain).
fn run_batch(
    b: &DecodeBench,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    max_pages: usize,
    breakdown: bool,
) -> Result<BatchFigures, BenchError> {
    let mut served = start_for(b, batch, prompt_len, new_tokens, max_pages)?;
    run_round(&mut served, batch, prompt_len, new_tokens)?;
    let mut rounds = Vec::with_capacity(b.repeats);
    for _ in 0..b.repeats {
        rounds.push(run_round(&mut served, batch, prompt_len, new_tokens)?);
    }
    rounds.sort_by(|x, y| x.decode_step_s.total_cmp(&y.decode_step_s));
    let median = rounds[rounds.len() / 2];
    // One more round with the kernels' timeline (not among the measured rounds: recording
    // costs a lock per kernel call).
    let inside = if breakdown && b.served.tp == 1 {
        timeline::start();
        let round = run_round(&mut served, batch, prompt_len, new_tokens);
        let spans = timeline::stop();
        round?;
        super::timeline::take_apart(&spans)
    } else {
        None
    };
    Ok(BatchFigures {
        median,
        decode_range: spread(rounds.iter().map(|r| r.decode_tokens_per_s).collect()).1,
        prefill: spread(rounds.iter().map(|r| r.prefill_tokens_per_s).collect()),
        breakdown: if breakdown {
            Some(take_apart(&served, batch, &median, b.served.tp, inside)?)
        } else {
            None
        },
        memory: served.engine.executor().memory_report(),
        split_head: served.engine.executor().source().split_head(),
        kernel: served.kernel.clone(),
        kernel_warning: served.kernel_warning.clone(),
    })
}

impl DecodeReport {
    fn note_warning(&mut self, w: Option<String>) {
        if let Some(w) = w {
            if !self.kernel_warnings.contains(&w) {
                self.kernel_warnings.push(w);
            }
        }
    }
}

/// Bytes a greedy decode step of `rows` rows reads with weight matrices in `weights`: every
/// weight except the embedding table (one row is gathered), plus the embedding once more when
/// it is the (tied) LM head; with `split_head` ([`crate::step::StepSource::split_head`]) a
/// quarter of the LM head's f32 bytes (its 8-bit screen, a few candidate rows' exact values
/// left out) up to [`runtime::kernels::lm_head::ARGMAX_MAX_ROWS`] rows.
pub fn decode_weight_bytes(c: &LlamaConfig, weights: Dtype, split_head: bool, rows: usize) -> u64 {
    let embed = (c.vocab_size * c.hidden_size) as u64 * weights.bytes();
    let bytes =
        weight_bytes(c, weights, false) - embed + if c.tie_word_embeddings { embed } else { 0 };
    if split_head && rows <= runtime::kernels::lm_head::ARGMAX_MAX_ROWS {
        bytes - embed / 4 * 3
    } else {
        bytes
    }
}

/// Multiply-adds per token of a decode step's matmuls (the weights [`decode_weight_bytes`]
/// counts, one each).
fn decode_weight_params(c: &LlamaConfig) -> u64 {
    decode_weight_bytes(c, Dtype::F32, false, 1) / 4
}

impl DecodeBench {
    /// The same benchmark with its engines at `tp` devices.
    fn at_tp(&self, tp: usize) -> DecodeBench {
        DecodeBench {
            served: BenchModel {
                tp,
                ..self.served.clone()
            },
            ..self.clone()
        }
    }
}

/// Checks `b` before any work: every count positive and the prompt fits the model.
fn validate(b: &DecodeBench) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::Options(m.to_string()));
    if b.batches.is_empty() || b.batches.contains(&0) {
        return bad("--batches: give batch sizes >= 1, e.g. --batches 1,8,32");
    }
    if b.tp.is_empty() {
        return bad("--tp: give degrees, e.g. --tp 1,3");
    }
    if b.repeats == 0 {
        return bad("--repeats must be >= 1");
    }
    if b.prompt_len == 0 || b.new_tokens == 0 || b.prefill_len == 0 || b.page_size == 0 {
        return bad("--prompt-len, --new-tokens, --prefill-len and --page-size must be >= 1");
    }
    match b.long_prompt {
        Some(long) if long <= b.prompt_len => Err(BenchError::Options(format!(
            "--long-prompt {long} must exceed --prompt-len {} (it is measured beside it), \
             e.g. --long-prompt 1024",
            b.prompt_len
        ))),
        _ => Ok(()),
    }
}

/// Batch-1 decode at `b.prompt_len` and at `long` prompt tokens, `b.repeats` rounds each, in
/// pairs on one engine sized for the long prompt; each pair's order flips from the one before,
/// so that a drift in the host's speed falls on both lengths alike.
fn long_context(b: &DecodeBench, long: usize) -> Result<LongContext, BenchError> {
    let mut served = start_for(b, 1, long, b.new_tokens, 0)?;
    let (short, new) = (b.prompt_len, b.new_tokens);
    // Warm-up: every program both lengths use is compiled and loaded.
    run_round(&mut served, 1, short, new)?;
    run_round(&mut served, 1, long, new)?;
    let (mut s, mut l, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..b.repeats {
        let (a, z) = if i % 2 == 0 {
            let a = run_round(&mut served, 1, short, new)?;
            (a, run_round(&mut served, 1, long, new)?)
        } else {
            let z = run_round(&mut served, 1, long, new)?;
            (run_round(&mut served, 1, short, new)?, z)
        };
        pairs.push(z.decode_tokens_per_s / a.decode_tokens_per_s);
        s.push(a.decode_tokens_per_s);
        l.push(z.decode_tokens_per_s);
    }
    let ((short_tps, _), (long_tps, _)) = (spread(s), spread(l));
    Ok(LongContext {
        short_prompt: short,
        long_prompt: long,
        short_tokens_per_s: short_tps,
        long_tokens_per_s: long_tps,
        ratio: long_tps / short_tps,
        pair_ratio_range: spread(pairs).1,
    })
}

/// Runs every measurement; `progress` hears what is being measured.
pub fn run(b: &DecodeBench, progress: &mut dyn FnMut(&str)) -> Result<DecodeReport, BenchError> {
    validate(b)?;
    let (model, _) = open_model(&b.served.model)?;
    let c = &model.config;
    let plugin_err = pjrt(format!(
        "loading the PJRT plugin {}",
        b.served.plugin.display()
    ));
    let client = Client::new(Api::load(&b.served.plugin).map_err(plugin_err)?)
        .map_err(pjrt("creating a PJRT client"))?;
    // Until the first engine says whether it splits the LM head.
    let step_bytes = decode_weight_bytes(c, b.served.weights_dtype, false, 1);
    let mut r = DecodeReport {
        plugin: b.served.plugin.display().to_string(),
        kv_dtype: b.served.kv_dtype,
        weights_dtype: b.served.weights_dtype,
        repeats: b.repeats,
        weight_bytes: step_bytes,
        model_weight_bytes: weight_bytes(c, b.served.weights_dtype, false),
        params: num_params(c),
        ..DecodeReport::default()
    };
    progress("measuring bandwidth and matmul rate ...");
    r.bandwidth_gbs = probes::bandwidth(&client)?;
    let f2 = 2 * c.intermediate_size;
    r.matmul_gflops = probes::matmul(&client, 32, c.hidden_size, f2)?.max(probes::matmul(
        &client,
        256,
        c.hidden_size,
        f2,
    )?);
    drop(client);
    let flop_bound = r.matmul_gflops * 1e9 / (2.0 * decode_weight_params(c) as f64);
    for &tp in &b.tp {
        // Every degree refused before any work, naming the ones the model can use.
        crate::step::tp::shard_config(c, tp).map_err(crate::Error::from)?;
    }
    let first_tp = b.at_tp(b.tp[0]);
    for &tp in &b.tp {
        let at_tp = b.at_tp(tp);
        for &batch in &b.batches {
            progress(&format!("decode batch {batch}, tp {tp} ..."));
            let f = run_batch(&at_tp, batch, b.prompt_len, b.new_tokens, 0, true)?;
            let step_bytes = decode_weight_bytes(c, b.served.weights_dtype, f.split_head, batch);
            if tp == b.tp[0] {
                r.weight_bytes = step_bytes;
            }
            let bw_bound = r.bandwidth_gbs * 1e9 / step_bytes as f64;
            let bound = (bw_bound * batch as f64).min(flop_bound);
            r.decode.push(Figure {
                batch,
                tp,
                tokens_per_s: f.median.decode_tokens_per_s,
                tokens_per_s_range: f.decode_range,
                bound_tokens_per_s: bound,
                ratio: f.median.decode_tokens_per_s / bound,
                step_ms: f.median.decode_step_s * 1e3,
                kernel: f.kernel.clone(),
                breakdown: f.breakdown,
            });
            r.note_warning(f.kernel_warning);
            r.memory = Some(f.memory);
        }
    }
    let b = &first_tp;
    progress("prefill ...");
    let pf = run_batch(b, 1, b.prefill_len, 2, 0, false)?;
    let (pps, pps_range) = pf.prefill;
    r.note_warning(pf.kernel_warning);
    r.prefill = Some(Figure {
        batch: 1,
        tp: b.served.tp,
        tokens_per_s: pps,
        tokens_per_s_range: pps_range,
        bound_tokens_per_s: flop_bound,
        ratio: pps / flop_bound,
        step_ms: b.prefill_len as f64 / pps * 1e3,
        kernel: pf.kernel,
        breakdown: None,
    });
    for &pages in &b.pool_pages {
        progress(&format!("pool of {pages} pages ..."));
        let step = run_batch(b, 1, b.prompt_len, 16, pages, false)?
            .median
            .decode_step_s;
        r.pool_scaling.push((pages, step * 1e3));
    }
    if let Some(long) = b.long_prompt {
        progress(&format!(
            "batch 1 at prompts {} and {long}, alternating ...",
            b.prompt_len
        ));
        r.long_context = Some(long_context(b, long)?);
    }
    if let Some(m) = &mut r.memory {
        m.peak_rss_bytes = runtime::mem::MemTrace::peak_rss_bytes();
    }
    Ok(r)
}
