//! `kernelgen check`: VMEM/SMEM budget of a kernel config on a TPU target, before any compile.

use super::args::{CheckOpts, KernelArgs};
use super::print::{print_matrix, print_oracle, print_report, print_suggestions};
use super::ExitCode;
use anyhow::Context;
use clap::Args;
use kernelgen::config::{KernelSpec, TPU_DEFAULTS};
use kernelgen::target::{parse_bytes, Target};
use kernelgen::tpu::{checked_config_request, Oracle, OracleResponse};
use kernelgen::vmem::request::{resolve, Resolved};
use kernelgen::vmem::suggest::{nearest_fits, Suggestion};
use kernelgen::vmem::{matrix, KernelModel, Verdict, VmemReport};
use serde::Serialize;
use std::path::PathBuf;

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

/// The check `spec` and `opts` ask for, resolved by the library's one rule set.
pub fn resolve_request(spec: &KernelSpec, opts: &CheckOpts) -> anyhow::Result<Resolved> {
    let target = Target::find(
        opts.target
            .as_deref()
            .context("--target is required (v4, v5e, v5p, v6e, v7x)")?,
    )?;
    let model = KernelModel::parse(&opts.kernel_model)?;
    let limit = opts.vmem_limit.as_deref().map(parse_bytes).transpose()?;
    Ok(resolve(
        spec.params(&TPU_DEFAULTS)?,
        target,
        model,
        limit,
        opts.tp,
    )?)
}

pub fn exit_code(v: Verdict) -> ExitCode {
    match v {
        Verdict::Fits => ExitCode::Ok,
        Verdict::DoesNotFit => ExitCode::NoFit,
        Verdict::Uncertain => ExitCode::Uncertain,
    }
}

#[derive(Serialize)]
struct CheckOutput<'a> {
    #[serde(flatten)]
    report: &'a VmemReport,
    suggestions: Vec<Suggestion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    oracle: Option<OracleResponse>,
}

fn run_matrix(path: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let m = matrix::run_file(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        print_matrix(&m);
    }
    Ok(if m.failed() {
        ExitCode::NoFit
    } else if m.uncertain() {
        ExitCode::Uncertain
    } else {
        ExitCode::Ok
    })
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.matrix {
        return run_matrix(path, args.json);
    }
    let resolved = resolve_request(&args.kernel.spec(), &args.opts)?;
    let req = resolved.request();
    let report = resolved.check()?;
    let suggestions = if report.verdict == Verdict::Fits {
        vec![]
    } else {
        nearest_fits(&req, &report)
    };
    let oracle = if args.opts.oracle {
        let mut oracle = Oracle::start(&mut |msg| eprintln!("{msg}"))?;
        let r = &resolved;
        let request = checked_config_request(&r.cfg, &r.target, r.model, r.limit)?;
        Some(oracle.compile(&request).map_err(super::failed)?)
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
        print_report(&report, &resolved.target);
        print_suggestions(&suggestions);
        if let Some(o) = &oracle {
            print_oracle(o, &report);
        }
    }
    Ok(exit_code(report.verdict))
}
