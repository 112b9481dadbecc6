//! `kernelgen generate`: serve a Llama model with a paged KV cache and a generated kernel.

use super::args::{serve_options, EngineArgs, PluginArg, ProgramCacheArg, ServedArgs};
use super::ExitCode;
use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kernelgen::serve::{first_programs, open, TextStream};
use runtime::cache::executables::Origin;
use runtime::engine::{FinishReason, FinishedRequest, SamplingParams};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// Generate text with a paged-KV engine running the model's step program through PJRT
#[derive(Args, Debug)]
#[command(after_help = "\
One --prompt streams text to stdout. --prompts FILE.jsonl (one {\"prompt\": ...} per line, optional \
per-line max_new_tokens/temperature/top_p/top_k/seed/stop/n) runs them all with continuous batching, \
shows a progress bar, and writes one JSON line per request (text, token ids, finish reason, timings) \
to --out or stdout.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to f32; fetched by \
scripts/setup.sh --model). Prompts are wrapped in the model's chat template unless --raw.
Without --kernel, a ragged paged attention kernel is emitted for the model: with --q/--kv blocks if \
given, else the tuned table's (`kernelgen tune`: decode programs from its decode entry, the others \
from its general, mixed or prefill entry), else q_block 32 kv_pages_block 4 with a warning naming the tune \
command that would fill the table.

Examples:
  kernelgen generate --prompt \"Write a haiku about TPUs.\"
  kernelgen generate --kernel out/rpa-q16-kv8 --model m.gguf --prompt \"...\" --max-new-tokens 256 \\
                     --temperature 0.7 --top-p 0.9 --seed 1
  kernelgen generate --prompts prompts.jsonl --out results.jsonl --max-seqs 32 --max-pages 2048 --page-size 16")]
pub struct GenerateArgs {
    /// One prompt (text streams to stdout)
    #[arg(long, conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// JSON lines of prompts for batch mode
    #[arg(long, value_name = "JSONL")]
    pub prompts: Option<PathBuf>,
    /// Where batch mode writes its JSON lines [default: stdout]
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub served: ServedArgs,
    #[command(flatten)]
    pub plugin: PluginArg,
    #[command(flatten)]
    pub program_cache: ProgramCacheArg,
    #[arg(long, default_value_t = 128, help_heading = "Sampling")]
    pub max_new_tokens: usize,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0, help_heading = "Sampling")]
    pub temperature: f32,
    #[arg(long, help_heading = "Sampling")]
    pub top_p: Option<f32>,
    #[arg(long, help_heading = "Sampling")]
    pub top_k: Option<usize>,
    /// Same seed, same output
    #[arg(long, help_heading = "Sampling")]
    pub seed: Option<u64>,
    /// Stop string (repeatable)
    #[arg(long, help_heading = "Sampling")]
    pub stop: Vec<String>,
    /// Samples per prompt (share the prompt's KV pages)
    #[arg(long, default_value_t = 1, help_heading = "Sampling")]
    pub n: usize,
    /// Do not apply the chat template
    #[arg(long)]
    pub raw: bool,
    /// Reuse the KV pages of prompt prefixes earlier requests computed (same system prompt, same document): later requests prefill only what differs
    #[arg(long)]
    pub prefix_caching: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print the run's metrics as JSON (to stderr in batch mode when --out is stdout)
    #[arg(long)]
    pub json_metrics: bool,
}

/// One line of --prompts.
#[derive(Deserialize, Debug)]
struct PromptLine {
    prompt: String,
    id: Option<serde_json::Value>,
    max_new_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    #[serde(default)]
    stop: Vec<String>,
    n: Option<usize>,
}

#[derive(Serialize)]
struct ResultLine {
    id: serde_json::Value,
    text: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    finish_reason: Vec<FinishReason>,
    prompt_tokens: usize,
    ttft_s: f64,
    latency_s: f64,
}

fn params(a: &GenerateArgs, line: Option<&PromptLine>) -> SamplingParams {
    let l = line;
    SamplingParams {
        temperature: l.and_then(|l| l.temperature).unwrap_or(a.temperature),
        top_k: l.and_then(|l| l.top_k).or(a.top_k),
        top_p: l.and_then(|l| l.top_p).or(a.top_p),
        seed: l.and_then(|l| l.seed).or(a.seed),
        max_new_tokens: l.and_then(|l| l.max_new_tokens).unwrap_or(a.max_new_tokens),
        stop_token_ids: vec![],
        stop_strings: l
            .filter(|l| !l.stop.is_empty())
            .map(|l| l.stop.clone())
            .unwrap_or_else(|| a.stop.clone()),
        n: l.and_then(|l| l.n).unwrap_or(a.n),
        ignore_eos: false,
    }
}

pub fn run(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    if a.prompt.is_none() && a.prompts.is_none() {
        bail!("give --prompt TEXT or --prompts FILE.jsonl; see kernelgen generate --help");
    }
    // Read every input before loading anything: bad input fails fast.
    let lines: Vec<PromptLine> = match &a.prompts {
        Some(path) => {
            let f =
                std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
            let mut v = Vec::new();
            for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                v.push(serde_json::from_str(&line).with_context(|| {
                    format!("{}:{}: expected {{\"prompt\": ...}}", path.display(), i + 1)
                })?);
            }
            v
        }
        None => vec![],
    };
    let opts = serve_options(
        &a.served,
        &a.plugin,
        &a.engine,
        &a.program_cache,
        a.prefix_caching,
    )?;
    let opened = open(&opts)?;
    if let Some(w) = &opened.kernel_warning {
        eprintln!("warning: {w}");
    }
    let lines_params: Vec<(&str, Option<&PromptLine>)> = match &a.prompt {
        Some(p) => vec![(p.as_str(), None)],
        None => lines.iter().map(|l| (l.prompt.as_str(), Some(l))).collect(),
    };
    let mut prepared: Vec<(Vec<u32>, SamplingParams)> = lines_params
        .into_iter()
        .map(|(text, line)| Ok((opened.encode_prompt(text, a.raw)?, params(&a, line))))
        .collect::<anyhow::Result<_>>()?;
    let shapes: Vec<(usize, usize)> = prepared.iter().map(|(ids, p)| (ids.len(), p.n)).collect();
    let mut served = opened.start(first_programs(&opts.engine, &shapes))?;
    if a.prompt.is_some() {
        let (ids, p) = prepared.remove(0);
        let stops = p.stop_strings.clone();
        let id = served.engine.submit(ids, p)?;
        let times = &served.engine.executor().times;
        let loaded = times.origin.values().filter(|&&o| o == Origin::Loaded);
        eprintln!(
            "[kernelgen] {} ; kernel: {} ; loaded in {:.1} s ; {} programs in {:.1} s ({} from the program cache)",
            opts.model.display(),
            served.kernel,
            served.load_time.as_secs_f64(),
            times.origin.len(),
            times.compile.values().sum::<f64>(),
            loaded.count(),
        );
        stream(&mut served, id, &stops)?;
    } else {
        let mut ids = BTreeMap::new();
        for (i, (prompt, p)) in prepared.into_iter().enumerate() {
            let id = served
                .engine
                .submit(prompt, p)
                .with_context(|| format!("prompt line {}", i + 1))?;
            ids.insert(id, i);
        }
        let bar = ProgressBar::new(ids.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} requests {elapsed} {msg}")
                .expect("valid template"),
        );
        let mut results: BTreeMap<usize, FinishedRequest> = BTreeMap::new();
        while served.engine.has_work() {
            served.engine.step().map_err(super::failed)?;
            for f in served.engine.take_finished() {
                results.insert(ids[&f.id], f);
                bar.inc(1);
            }
            let s = served.engine.stats();
            bar.set_message(format!(
                "{} active, {} pages in use",
                s.active_seqs, s.pages_in_use
            ));
        }
        bar.finish_and_clear();
        let mut out: Box<dyn Write> = match &a.out {
            Some(p) => Box::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            ),
            None => Box::new(std::io::stdout()),
        };
        for (i, f) in results {
            let line = ResultLine {
                id: lines[i].id.clone().unwrap_or(serde_json::json!(i)),
                text: f
                    .samples
                    .iter()
                    .map(|s| s.text.clone().unwrap_or_default())
                    .collect(),
                token_ids: f.samples.iter().map(|s| s.tokens.clone()).collect(),
                finish_reason: f.samples.iter().map(|s| s.finish_reason.clone()).collect(),
                prompt_tokens: f.prompt_len,
                ttft_s: f.time_to_first_token().as_secs_f64(),
                latency_s: f.latency().as_secs_f64(),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
    }
    if a.json_metrics {
        let report = serde_json::json!({
            "engine": served.engine.metrics().report(),
            "executor": served.engine.executor().times,
            "kernel": served.kernel,
            "load_time_s": served.load_time.as_secs_f64(),
            "memory": served.engine.executor().memory_report(),
        });
        let text = serde_json::to_string_pretty(&report)?;
        if a.prompts.is_some() && a.out.is_none() {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
    Ok(ExitCode::Ok)
}

/// Streams one request's text to stdout as tokens arrive, holding back text that may turn out
/// to be a stop string so nothing past the final cut is ever printed.
fn stream(
    served: &mut kernelgen::serve::Served,
    id: runtime::engine::RequestId,
    stops: &[String],
) -> anyhow::Result<()> {
    let mut text = TextStream::default();
    let mut stdout = std::io::stdout();
    while served.engine.has_work() {
        for ev in served.engine.step().map_err(super::failed)? {
            let Some(token) = ev.token.filter(|_| ev.request == id && ev.sample == 0) else {
                continue;
            };
            let piece = text.push(&served.tokenizer, token, stops)?;
            if !piece.is_empty() {
                write!(stdout, "{piece}")?;
                stdout.flush()?;
            }
        }
    }
    // The final text (cut before a stop string, if one matched) supplies the held-back tail.
    let finished = served.engine.take_finished();
    let sample = finished
        .iter()
        .find(|f| f.id == id)
        .and_then(|f| f.samples.first());
    let whole = match sample.and_then(|s| s.text.as_deref()) {
        Some(t) => t.to_string(),
        None => served.tokenizer.decode(text.tokens(), true)?,
    };
    writeln!(stdout, "{}", text.rest(&whole))?;
    match sample.map(|s| &s.finish_reason) {
        Some(FinishReason::StopString) => eprintln!("[kernelgen] stopped at a stop string"),
        Some(FinishReason::NonFiniteLogits) => {
            return Err(super::failed(anyhow::anyhow!(
                "generation stopped after {} tokens: the model produced NaN or infinite logits \
                 (finish reason non_finite_logits)",
                text.tokens().len()
            )))
        }
        _ => {}
    }
    Ok(())
}
