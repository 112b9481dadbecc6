//! `kernelgen check`: VMEM/SMEM budget of a kernel config on a TPU target, before any compile.

use super::exit;
use super::kernel_args::{KernelArgs, TPU_DEFAULTS};
use anyhow::Context;
use clap::{Args, Parser};
use kernelgen::config::{ConfigError, Geometry, KernelConfig, KernelParams};
use kernelgen::target::{fmt_bytes, parse_bytes, Target};
use kernelgen::vmem::suggest::{nearest_fits, Suggestion};
use kernelgen::vmem::{check, CheckRequest, KernelModel, LimitSource, Verdict, VmemReport};
use serde::Serialize;
use std::path::PathBuf;
use verify::oracle::{Oracle, OracleRequest, OracleResponse};

pub const EXIT_NO_FIT: i32 = 3;
pub const EXIT_UNCERTAIN: i32 = 4;

/// Check whether a kernel config fits a TPU's VMEM and SMEM, before any compile
#[derive(Args, Debug)]
#[command(after_help = "\
Prints every on-chip buffer (shape, Mosaic-padded shape, bytes), the fitted register-spill \
allowance, the total, the limit and the verdict. The spill allowance is fitted to the real TPU \
compiler; within its measured error of the limit the verdict is 'uncertain': run with --oracle \
to ask the compiler itself (first use creates a Python venv with jax/libtpu, ~1 min).

Heads are per device: --tp divides them (KV heads are replicated when fewer than --tp).
For --kernel jax-rpa, kv_pages_block is clamped to pages_per_seq as serving stacks do.

Exit codes: 0 fits, 3 does not fit, 4 uncertain, 1 usage or input error.

Examples:
  kernelgen check --target v5p --preset llama3-8b --page-size 128 --q 16 --kv 16
  kernelgen check --target v6e --q 32 --kv 16 --vmem-limit 48MiB --tp 4 --json
  kernelgen check --matrix ci/vmem.toml")]
pub struct CheckArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[command(flatten)]
    pub opts: CheckOpts,
    /// Check every config x target in a TOML matrix (CI gate); see ci/vmem.toml
    #[arg(long, value_name = "TOML", conflicts_with_all = ["target", "oracle"])]
    pub matrix: Option<PathBuf>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// Options shared by single checks and matrix entries.
#[derive(Args, Debug, Clone)]
pub struct CheckOpts {
    /// TPU generation: v4, v5e, v5p, v6e, v7x
    #[arg(long)]
    pub target: Option<String>,
    /// Kernel model: jax-rpa (JAX's Pallas TPU ragged_paged_attention) or kernelgen
    #[arg(long = "kernel", value_name = "KERNEL", default_value = "jax-rpa")]
    pub kernel_model: String,
    /// vmem_limit_bytes the kernel is compiled with (e.g. 32MiB) [default: the target's scoped default]
    #[arg(long)]
    pub vmem_limit: Option<String>,
    /// Tensor-parallel degree: heads are divided by it before accounting
    #[arg(long, default_value_t = 1)]
    pub tp: u32,
    /// Also compile with the real TPU compiler (deviceless) and print its verdict
    #[arg(long)]
    pub oracle: bool,
}

/// Heads one device sees under tensor parallelism `tp`.
pub fn per_device(g: Geometry, tp: u32) -> Result<(Geometry, Option<String>), ConfigError> {
    if tp == 0 || !g.num_q_heads.is_multiple_of(tp) {
        return Err(ConfigError::field(
            "tp",
            tp,
            format!("must divide num_q_heads ({})", g.num_q_heads),
        ));
    }
    let (kv, note) = if g.num_kv_heads.is_multiple_of(tp) {
        (g.num_kv_heads / tp, None)
    } else if tp.is_multiple_of(g.num_kv_heads) {
        (
            1,
            Some(format!(
                "tp {tp} > num_kv_heads {}: each device holds 1 replicated KV head",
                g.num_kv_heads
            )),
        )
    } else {
        return Err(ConfigError::field(
            "tp",
            tp,
            format!(
                "must divide num_kv_heads ({}) or be a multiple of it",
                g.num_kv_heads
            ),
        ));
    };
    Ok((
        Geometry {
            num_q_heads: g.num_q_heads / tp,
            num_kv_heads: kv,
            head_dim: g.head_dim,
        },
        note,
    ))
}

/// A check request resolved from flags: config per device, target, model, limit, and notes on
/// what was adjusted to match what the kernel sees.
pub struct Resolved {
    pub cfg: KernelConfig,
    pub target: Target,
    pub model: KernelModel,
    pub limit: Option<u64>,
    pub notes: Vec<String>,
}

impl Resolved {
    pub fn request(&self) -> CheckRequest<'_> {
        CheckRequest {
            cfg: &self.cfg,
            target: self.target,
            kernel: self.model,
            vmem_limit: self.limit,
        }
    }
}

/// Resolves flags into the request: config per device, target, model, limit.
pub fn request(args: &KernelArgs, opts: &CheckOpts) -> anyhow::Result<Resolved> {
    let target = Target::find(
        opts.target
            .as_deref()
            .context("--target is required (v4, v5e, v5p, v6e, v7x)")?,
    )?;
    let model = KernelModel::parse(&opts.kernel_model)?;
    let limit = opts.vmem_limit.as_deref().map(parse_bytes).transpose()?;
    let mut notes = Vec::new();
    let mut args = args.clone();
    // jax-rpa call sites clamp kv_pages_block to pages_per_seq (Levanter's min(kv, pages_per_seq)).
    let pages_per_seq = args.pages_per_seq(&TPU_DEFAULTS);
    let (_, kv) = args.blocks()?;
    if model == KernelModel::JaxRpa && kv > pages_per_seq && pages_per_seq > 0 {
        notes.push(format!(
            "kv_pages_block {} clamped to pages_per_seq {pages_per_seq}, as jax-rpa call sites must",
            kv
        ));
        args.kv_pages_block = Some(pages_per_seq);
    }
    let full = args.to_config(&TPU_DEFAULTS)?;
    let (geometry, tp_note) = per_device(full.geometry(), opts.tp)?;
    notes.extend(tp_note);
    let cfg = KernelConfig::new(KernelParams {
        geometry,
        ..full.params().clone()
    })?;
    Ok(Resolved {
        cfg,
        target,
        model,
        limit,
        notes,
    })
}

#[derive(Serialize)]
struct CheckOutput<'a> {
    #[serde(flatten)]
    report: &'a VmemReport,
    suggestions: Vec<Suggestion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    oracle: Option<OracleResponse>,
}

pub fn exit_code(v: Verdict) -> i32 {
    match v {
        Verdict::Fits => exit::OK,
        Verdict::DoesNotFit => EXIT_NO_FIT,
        Verdict::Uncertain => EXIT_UNCERTAIN,
    }
}

/// The oracle request for a checked config (the kernelgen module rendered into the cache).
pub fn oracle_request(
    cfg: &KernelConfig,
    target: &Target,
    model: KernelModel,
    limit: Option<u64>,
) -> anyhow::Result<OracleRequest> {
    let module = match model {
        KernelModel::Kernelgen => Some(kernelgen::tpu::cached_module(cfg)?),
        KernelModel::JaxRpa => None,
    };
    Ok(kernelgen::tpu::oracle_request(
        cfg,
        target,
        model,
        limit,
        module.as_deref(),
        None,
    ))
}

pub fn run(args: CheckArgs) -> anyhow::Result<i32> {
    if let Some(matrix) = &args.matrix {
        return super::matrix::run(matrix, args.json);
    }
    let kargs = &args.kernel;
    let resolved = request(kargs, &args.opts)?;
    let req = resolved.request();
    let mut report = check(&req)?;
    report.notes.splice(0..0, resolved.notes.iter().cloned());
    let (cfg, target, model, limit) = (
        &resolved.cfg,
        resolved.target,
        resolved.model,
        resolved.limit,
    );
    let suggestions = if report.verdict == Verdict::Fits {
        vec![]
    } else {
        nearest_fits(&req, &report)
    };
    let oracle = if args.opts.oracle {
        let mut oracle = Oracle::start(&mut |msg| eprintln!("{msg}"))?;
        Some(oracle.compile(&oracle_request(cfg, &target, model, limit)?)?)
    } else {
        None
    };
    if args.json {
        let out = CheckOutput {
            report: &report,
            suggestions,
            oracle,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&report, &target);
        print_suggestions(&suggestions);
        if let Some(o) = &oracle {
            print_oracle(o, &report);
        }
    }
    Ok(exit_code(report.verdict))
}

fn dims(v: &[u64]) -> String {
    v.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

pub fn print_report(r: &VmemReport, t: &Target) {
    println!("{} on {}: {}", r.kernel.name(), t.name, r.config);
    for n in &r.notes {
        println!("note: {n}");
    }
    println!(
        "{:<17} {:<22} {:<22} {:>6} {:>12}",
        "buffer", "shape", "padded", "copies", "bytes"
    );
    for b in &r.buffers {
        let bytes = if b.exact {
            fmt_bytes(b.bytes)
        } else {
            format!("~{}", fmt_bytes(b.bytes))
        };
        if b.exact {
            println!(
                "{:<17} {:<22} {:<22} {:>6} {:>12}",
                b.name,
                format!("{} {}", dims(&b.shape), b.dtype),
                dims(&b.padded_shape),
                b.copies,
                bytes
            );
        } else {
            println!(
                "{:<17} {:<53} {:>12}",
                b.name, "(fitted to the TPU compiler)", bytes
            );
        }
    }
    let upper = r
        .upper_bytes
        .map(fmt_bytes)
        .unwrap_or_else(|| "unbounded (no spill calibration)".into());
    println!(
        "{:<17} {} (exact buffers {}; range {} .. {})",
        "total",
        fmt_bytes(r.total_bytes),
        fmt_bytes(r.explicit_bytes),
        fmt_bytes(r.lower_bytes),
        upper
    );
    let source = match r.limit_source {
        LimitSource::TargetDefault => format!("{} default scoped limit", t.name),
        LimitSource::Explicit => "vmem_limit_bytes".to_string(),
    };
    println!(
        "{:<17} {} ({source}; physical VMEM {})",
        "limit",
        fmt_bytes(r.limit_bytes),
        fmt_bytes(t.vmem_bytes)
    );
    let margin = if r.margin_bytes >= 0 {
        fmt_bytes(r.margin_bytes as u64)
    } else {
        format!("-{}", fmt_bytes(r.margin_bytes.unsigned_abs()))
    };
    println!("{:<17} {margin}", "margin");
    println!(
        "{:<17} {} of {} ({})",
        "smem",
        fmt_bytes(r.smem.total_bytes),
        fmt_bytes(r.smem.capacity_bytes),
        r.smem.verdict
    );
    println!(
        "{:<17} {} of {} HBM ({})",
        "operands",
        fmt_bytes(r.hbm.operand_bytes),
        fmt_bytes(r.hbm.capacity_bytes),
        r.hbm.verdict
    );
    let hint = if r.verdict == Verdict::Uncertain {
        "  (within the spill model's error: run with --oracle)"
    } else {
        ""
    };
    println!(
        "{:<17} {}{hint}",
        "verdict",
        r.verdict.to_string().to_uppercase()
    );
}

pub fn print_suggestions(s: &[Suggestion]) {
    if s.is_empty() {
        return;
    }
    println!("nearest configs that fit:");
    for x in s {
        println!(
            "  {:<40} total {} under limit {}",
            x.change,
            fmt_bytes(x.total_bytes),
            fmt_bytes(x.limit_bytes)
        );
    }
}

/// The real compiler's verdict in one phrase: `FITS`, `DOES NOT FIT (scoped VMEM X of limit Y)`
/// or `ERROR: first line`.
pub fn describe_compiler(
    verdict: &str,
    size: Option<u64>,
    limit: Option<u64>,
    message: &str,
) -> String {
    match verdict {
        "fits" => "FITS".to_string(),
        "vmem_oom" | "smem_oom" => format!(
            "DOES NOT FIT ({} {} of limit {})",
            if verdict == "smem_oom" {
                "SMEM"
            } else {
                "scoped VMEM"
            },
            size.map(fmt_bytes).unwrap_or_default(),
            limit.map(fmt_bytes).unwrap_or_default()
        ),
        "hbm_oom" => "DOES NOT FIT (HBM)".to_string(),
        _ => format!("ERROR: {}", message.lines().next().unwrap_or("")),
    }
}

fn print_oracle(o: &OracleResponse, r: &VmemReport) {
    let verdict = describe_compiler(&o.verdict, o.size_bytes, o.limit_bytes, &o.message);
    println!(
        "{:<17} {verdict} (real TPU compiler, {:.1} s); model said {}",
        "oracle", o.compile_s, r.verdict
    );
}

/// Parses one matrix entry's flags with the same parser as the command line.
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
pub struct EntryArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[command(flatten)]
    pub opts: CheckOpts,
}
