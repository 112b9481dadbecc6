//! `kernelgen plan`: check a whole engine config against a workload before hardware sees it.

use super::args::CheckOpts;
use super::check::{exit_code, resolve_request};
use super::ExitCode;
use anyhow::Context;
use clap::Args;
use kernelgen::config::{parse_dtype, KernelSpec, TPU_DEFAULTS};
use kernelgen::target::{fmt_bytes, Target};
use kernelgen::vmem::request::per_device;
use kernelgen::vmem::{Verdict, VmemReport};
use runtime::plan::{kv_bytes_per_token, EnginePlan, LevanterKnobs, Rule, Scope};
use serde::Serialize;

/// Check an engine config (pages, scheduler budget, SMEM, VMEM) against a workload
#[derive(Args, Debug)]
#[command(after_help = "\
Rules (each failure names the knob and a value that passes), for both engines unless marked:
  kv pages             min(num_prompts, max_seqs) x ceil((max_prompt_len + max_new_tokens) / page_size) <= max_pages
                       (kernelgen's engine preempts and recomputes instead of failing; Levanter's fails)
  sequence length      max_prompt_len + max_new_tokens <= max_seq_len
  decode token budget  [levanter] floor(max_seq_len / max_rounds) x max_rounds x min(max_tokens_per_round, max_seqs)
                       >= num_prompts x max_new_tokens (its fused decode loop)
  prefill capacity     [levanter] max_prefill_size >= max_prompt_len (it prefills prompts whole)
  device memory        [weights of --model +] max_pages x page_size x KV bytes per token (all layers)
                       <= the target's HBM per device (weights as kernelgen's runtime holds them: f32, unsharded)
  kernel SMEM / VMEM   the attention kernel at the prefill shape (max_prefill_size tokens) and the
                       decode shape (max_tokens_per_round tokens), as `kernelgen check` reports them

--max-rounds and --max-prefill-size are Levanter's knobs (kernelgen's engine has neither); give
--engine kernelgen to check kernelgen's engine, whose prefill is chunked by max_tokens_per_round.

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
    /// Which engine serves: levanter (fused decode loop, whole-prompt prefill) or kernelgen
    #[arg(long, default_value = "levanter", value_parser = ["levanter", "kernelgen"])]
    pub engine: String,
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
    /// A .gguf file or Hugging Face directory whose weights (f32, as kernelgen holds them) count
    /// against device memory; the geometry still comes from --preset or --hf-config
    #[arg(long, value_name = "PATH")]
    pub model: Option<std::path::PathBuf>,
    /// Levanter: decode steps per fused device call
    #[arg(long, default_value_t = 32)]
    pub max_rounds: u64,
    /// Tokens packed per step [default: max-seqs]
    #[arg(long)]
    pub max_tokens_per_round: Option<u64>,
    /// Levanter: token capacity of one prefill pass [default: max-prompt-len]
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
    /// The largest page tables that fit SMEM, one knob at a time.
    smem_room: kernelgen::vmem::smem::SmemRoom,
}

#[derive(Serialize)]
struct PlanOutput {
    plan: EnginePlan,
    rules: Vec<Rule>,
    kernel: Vec<KernelCheck>,
    verdict: &'static str,
}

/// The kernel config the engine calls at `tokens` rows.
fn kernel_spec(a: &PlanArgs, tokens: u64, max_seq_len: u64) -> anyhow::Result<KernelSpec> {
    let u32_of =
        |v: u64, what: &str| u32::try_from(v).with_context(|| format!("{what} exceeds u32"));
    Ok(KernelSpec {
        q_block: Some(a.q_block),
        kv_pages_block: Some(a.kv_pages_block),
        preset: a.preset.clone(),
        hf_config: a.hf_config.clone(),
        page_size: Some(a.page_size),
        dtype: Some(parse_dtype(&a.dtype)?),
        max_num_tokens: Some(u32_of(tokens, "token count")?),
        max_num_seqs: Some(u32_of(a.max_seqs, "--max-seqs")?),
        max_model_len: Some(u32_of(max_seq_len, "--max-seq-len")?),
        total_pages: Some(u32_of(a.max_pages, "--max-pages")?),
        ..KernelSpec::default()
    })
}

pub fn run(a: PlanArgs) -> anyhow::Result<ExitCode> {
    let page = a.page_size as u64;
    let max_seq_len = a
        .max_seq_len
        .unwrap_or_else(|| (a.max_prompt_len + a.max_new_tokens).div_ceil(page.max(1)) * page);
    let per_round = a.max_tokens_per_round.unwrap_or(a.max_seqs);
    let levanter = a.engine == "levanter";
    // kernelgen's engine prefills in chunks of max_tokens_per_round: that is its prefill shape.
    let prefill = if levanter {
        a.max_prefill_size.unwrap_or(a.max_prompt_len)
    } else {
        per_round
    };
    let probe = kernel_spec(&a, prefill.max(1), max_seq_len)?;
    let cfg = probe.config(&TPU_DEFAULTS)?;
    let (dev, _) = per_device(cfg.geometry(), a.opts.tp)?;
    let layers = match a.layers {
        Some(l) => Some(l),
        None => probe.num_layers()?,
    };
    let target = Target::find(a.opts.target.as_deref().context("--target is required")?)?;
    let plan = EnginePlan {
        max_seqs: a.max_seqs,
        max_pages: a.max_pages,
        page_size: page,
        max_prompt_len: a.max_prompt_len,
        max_new_tokens: a.max_new_tokens,
        num_prompts: a.num_prompts.unwrap_or(a.max_seqs),
        max_seq_len,
        max_tokens_per_round: per_round,
        kv_bytes_per_token: layers.map(|l| {
            kv_bytes_per_token(
                dev.num_kv_heads as u64,
                dev.head_dim as u64,
                cfg.dtype().bytes(),
                l as u64,
            )
        }),
        hbm_bytes: Some(target.hbm_bytes),
        weight_bytes: match &a.model {
            Some(path) => {
                let file = runtime::model::ModelFile::open(path)
                    .with_context(|| format!("--model {}", path.display()))?;
                // One device's weights: its shard under --tp (the embedding, norms and LM
                // head whole), as the runtime uploads them.
                let shard = kernelgen::step::tp::shard_config(&file.config, a.opts.tp as usize)?;
                Some(4 * kernelgen::step::weights::num_params(&shard))
            }
            None => None,
        },
        host_bytes: None,
        levanter: levanter.then_some(LevanterKnobs {
            max_rounds: a.max_rounds,
            max_prefill_size: prefill,
        }),
    };
    let rules = plan.rules();
    let mut kernel = Vec::new();
    for (shape, tokens) in [("prefill", prefill), ("decode", per_round)] {
        let spec = kernel_spec(&a, tokens.max(a.q_block as u64), max_seq_len)?;
        let resolved = resolve_request(&spec, &a.opts)?;
        let report = resolved.check()?;
        let smem_room = kernelgen::vmem::smem::room(&resolved.cfg, &target, report.kernel);
        kernel.push(KernelCheck {
            shape,
            max_num_tokens: resolved.cfg.max_num_tokens(),
            report,
            smem_room,
        });
    }
    let rules_ok = rules.iter().all(|r| r.ok);
    let verdicts: Vec<Verdict> = kernel.iter().map(|k| k.report.verdict).collect();
    let worst = kernelgen::vmem::worst(&verdicts);
    let code = if !rules_ok {
        ExitCode::NoFit
    } else {
        exit_code(worst)
    };
    let verdict = match code {
        ExitCode::Ok => "ok",
        ExitCode::NoFit => "rejected",
        _ => "uncertain",
    };
    if a.json {
        let out = PlanOutput {
            plan,
            rules,
            kernel,
            verdict,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(code);
    }
    for r in &rules {
        let scope = match r.scope {
            Scope::Both => "",
            Scope::Levanter => " [levanter]",
        };
        println!(
            "{} {:<20} {}{scope}",
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
        if r.smem.verdict != Verdict::Fits {
            // The page table (max_seqs x pages_per_seq int32, rows padded to 128 words) is
            // what outgrows SMEM: name the most of each knob that fits with the other kept.
            let room = &k.smem_room;
            let mut fixes = Vec::new();
            if let Some(s) = room.max_num_seqs {
                fixes.push(format!(
                    "max_seqs {s} (the most whose page tables fit SMEM at max_seq_len {max_seq_len})"
                ));
            }
            if let Some(p) = room.pages_per_seq {
                fixes.push(format!(
                    "max_seq_len {} (the longest whose page tables fit at max_seqs {})",
                    p * page,
                    a.max_seqs
                ));
            }
            if fixes.is_empty() {
                fixes.push("no single knob fits: lower max_seqs and max_seq_len together".into());
            }
            println!("     {:<20} fix: {}", "", fixes.join(", or "));
        }
    }
    println!("verdict: {}", verdict.to_uppercase());
    Ok(code)
}
