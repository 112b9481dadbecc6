//! `kernelgen plan`: check a whole engine config against a workload before hardware sees it.

use super::check::{exit_code, per_device, request, CheckOpts, EXIT_NO_FIT};
use super::exit;
use super::kernel_args::{KernelArgs, TPU_DEFAULTS};
use anyhow::Context;
use clap::Args;
use kernelgen::target::fmt_bytes;
use kernelgen::vmem::{check, Verdict, VmemReport};
use runtime::plan::{EnginePlan, Rule};
use serde::Serialize;

/// Check an engine config (pages, scheduler budget, SMEM, VMEM) against a workload
#[derive(Args, Debug)]
#[command(after_help = "\
Rules (each failure names the knob and a value that passes):
  kv pages             min(num_prompts, max_seqs) x ceil((max_prompt_len + max_new_tokens) / page_size) <= max_pages
  sequence length      max_prompt_len + max_new_tokens <= max_seq_len
  decode token budget  floor(max_seq_len / max_rounds) x max_rounds x min(max_tokens_per_round, max_seqs)
                       >= num_prompts x max_new_tokens
  prefill capacity     max_prefill_size >= max_prompt_len
  page pool memory     max_pages x page_size x KV bytes per token (all layers) <= the target's HBM per device
  kernel SMEM / VMEM   the attention kernel at the prefill shape (max_prefill_size tokens) and the
                       decode shape (max_tokens_per_round tokens), as `kernelgen check` reports them

Exit codes: 0 all pass, 3 a rule fails or the kernel does not fit, 4 uncertain, 1 usage error.

Example:
  kernelgen plan --target v5p --preset llama3-8b --max-seqs 125 --max-pages 4096 --page-size 64 \\
                 --max-prompt-len 64 --max-new-tokens 2048 --q 32 --kv 16")]
pub struct PlanArgs {
    /// q_block of the attention kernel
    #[arg(long = "q", value_name = "Q_BLOCK")]
    pub q_block: u32,
    /// kv_pages_block of the attention kernel
    #[arg(long = "kv", value_name = "KV_PAGES_BLOCK")]
    pub kv_pages_block: u32,
    /// Model geometry preset [default: llama3-8b]
    #[arg(long, conflicts_with = "hf_config")]
    pub preset: Option<String>,
    /// Geometry and layer count from a Hugging Face config.json
    #[arg(long, value_name = "PATH")]
    pub hf_config: Option<std::path::PathBuf>,
    /// KV cache dtype: bf16 or f32
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Decoder layers [default: from the preset or config.json]
    #[arg(long)]
    pub layers: Option<u32>,
    /// Sequences decoded concurrently
    #[arg(long)]
    pub max_seqs: u64,
    /// KV pages in the pool
    #[arg(long)]
    pub max_pages: u64,
    /// Tokens per KV page
    #[arg(long, default_value_t = 64)]
    pub page_size: u32,
    /// Longest prompt
    #[arg(long)]
    pub max_prompt_len: u64,
    /// Tokens generated per request
    #[arg(long)]
    pub max_new_tokens: u64,
    /// Requests in the workload [default: max-seqs]
    #[arg(long)]
    pub num_prompts: Option<u64>,
    /// Longest sequence the engine accepts [default: max-prompt-len + max-new-tokens rounded up to a page]
    #[arg(long)]
    pub max_seq_len: Option<u64>,
    /// Decode steps per fused device call
    #[arg(long, default_value_t = 32)]
    pub max_rounds: u64,
    /// Tokens packed per decode step [default: max-seqs]
    #[arg(long)]
    pub max_tokens_per_round: Option<u64>,
    /// Token capacity of one prefill pass [default: max-prompt-len]
    #[arg(long)]
    pub max_prefill_size: Option<u64>,
    #[command(flatten)]
    pub opts: CheckOpts,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct KernelCheck {
    shape: &'static str,
    max_num_tokens: u32,
    report: VmemReport,
}

#[derive(Serialize)]
struct PlanOutput {
    plan: EnginePlan,
    rules: Vec<Rule>,
    kernel: Vec<KernelCheck>,
    verdict: &'static str,
}

fn kernel_args(a: &PlanArgs, tokens: u64, max_seq_len: u64) -> anyhow::Result<KernelArgs> {
    let dtype = kernelgen::config::Dtype::parse(&a.dtype)?;
    Ok(KernelArgs {
        q_block: Some(a.q_block),
        kv_pages_block: Some(a.kv_pages_block),
        preset: a.preset.clone(),
        hf_config: a.hf_config.clone(),
        num_q_heads: None,
        num_kv_heads: None,
        head_dim: None,
        page_size: a.page_size,
        dtype,
        max_num_tokens: Some(u32::try_from(tokens).context("token count exceeds u32")?),
        max_num_seqs: Some(u32::try_from(a.max_seqs).context("--max-seqs exceeds u32")?),
        max_model_len: Some(u32::try_from(max_seq_len).context("--max-seq-len exceeds u32")?),
        pages_per_seq: None,
        total_pages: Some(u32::try_from(a.max_pages).context("--max-pages exceeds u32")?),
        sm_scale: None,
        sliding_window: None,
        soft_cap: None,
        schedule: kernelgen::config::Schedule::Sequential,
    })
}

pub fn run(a: PlanArgs) -> anyhow::Result<i32> {
    let page = a.page_size as u64;
    let max_seq_len = a
        .max_seq_len
        .unwrap_or_else(|| (a.max_prompt_len + a.max_new_tokens).div_ceil(page.max(1)) * page);
    let per_round = a.max_tokens_per_round.unwrap_or(a.max_seqs);
    let prefill = a.max_prefill_size.unwrap_or(a.max_prompt_len);
    let probe = kernel_args(&a, prefill.max(1), max_seq_len)?;
    let cfg = probe.to_config(&TPU_DEFAULTS)?;
    let (dev, _) = per_device(cfg.geometry(), a.opts.tp)?;
    let layers = match a.layers {
        Some(l) => Some(l),
        None => probe.num_layers()?,
    };
    let target =
        kernelgen::target::Target::find(a.opts.target.as_deref().context("--target is required")?)?;
    let plan = EnginePlan {
        max_seqs: a.max_seqs,
        max_pages: a.max_pages,
        page_size: page,
        max_prompt_len: a.max_prompt_len,
        max_new_tokens: a.max_new_tokens,
        num_prompts: a.num_prompts.unwrap_or(a.max_seqs),
        max_seq_len,
        max_rounds: a.max_rounds,
        max_tokens_per_round: per_round,
        max_prefill_size: Some(prefill),
        kv_bytes_per_token: layers.map(|l| {
            2 * dev.num_kv_heads as u64 * dev.head_dim as u64 * cfg.dtype().bytes() * l as u64
        }),
        hbm_bytes: Some(target.hbm_bytes),
    };
    let rules = plan.rules();
    let mut kernel = Vec::new();
    for (shape, tokens) in [("prefill", prefill), ("decode", per_round)] {
        let args = kernel_args(&a, tokens.max(a.q_block as u64), max_seq_len)?;
        let resolved = request(&args, &a.opts)?;
        let mut report = check(&resolved.request())?;
        report.notes.splice(0..0, resolved.notes.iter().cloned());
        kernel.push(KernelCheck {
            shape,
            max_num_tokens: resolved.cfg.max_num_tokens(),
            report,
        });
    }
    let rules_ok = rules.iter().all(|r| r.ok);
    let verdicts: Vec<Verdict> = kernel.iter().map(|k| k.report.verdict).collect();
    let worst = kernelgen::vmem::worst(&verdicts);
    let code = if !rules_ok {
        EXIT_NO_FIT
    } else {
        exit_code(worst)
    };
    let verdict = match code {
        exit::OK => "ok",
        EXIT_NO_FIT => "rejected",
        _ => "uncertain",
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&PlanOutput {
                plan,
                rules,
                kernel,
                verdict
            })?
        );
        return Ok(code);
    }
    for r in &rules {
        println!(
            "{} {:<20} {}",
            if r.ok { "ok  " } else { "FAIL" },
            r.name,
            r.detail
        );
        if let Some(fix) = &r.fix {
            println!("     {:<20} fix: {fix}", "");
        }
    }
    for k in &kernel {
        let r = &k.report;
        let tag = match r.verdict {
            Verdict::Fits => "ok  ",
            Verdict::DoesNotFit => "FAIL",
            Verdict::Uncertain => "??  ",
        };
        println!(
            "{tag} {:<20} {} at {} tokens: VMEM {} of {} ({}), SMEM {} of {} ({})",
            format!("kernel {}", k.shape),
            r.kernel.name(),
            k.max_num_tokens,
            fmt_bytes(r.total_bytes),
            fmt_bytes(r.limit_bytes),
            r.vmem_verdict,
            fmt_bytes(r.smem.total_bytes),
            fmt_bytes(r.smem.capacity_bytes),
            r.smem.verdict
        );
    }
    println!("verdict: {}", verdict.to_uppercase());
    Ok(code)
}
