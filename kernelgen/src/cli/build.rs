//! `kernelgen build`: emit a kernel artifact; with `--target`, also the Pallas TPU kernel,
//! checked against the target's VMEM budget; with `--emit tpu`, lowered and compiled by the real
//! TPU compiler.

use super::args::KernelArgs;
use super::print::{describe_compiler, print_report, print_suggestions};
use super::ExitCode;
use anyhow::Context;
use clap::{Args, ValueEnum};
use kernelgen::build::begin_stablehlo;
use kernelgen::build::tpu::TpuBuild;
use kernelgen::config::{KernelSpec, CPU_DEFAULTS};
use kernelgen::target::{fmt_bytes, parse_bytes, Target};
use kernelgen::tpu::{CompilerVerdict, TpuCompileRecord};
use kernelgen::tune::{self, table::Query, table::Store};
use kernelgen::vmem::suggest::nearest_fits;
use kernelgen::vmem::Verdict;
use std::path::PathBuf;

/// What to emit besides the portable StableHLO kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// rpa.stablehlo.mlir (plus rpa.pallas.py when --target is given)
    Stablehlo,
    /// also lower rpa.pallas.py for --target to rpa.<target>.stablehlo.mlir and compile it with the real TPU compiler
    Tpu,
}

/// Emit a ragged paged attention kernel artifact (manifest.json + rpa.stablehlo.mlir [+ rpa.pallas.py])
#[derive(Args, Debug)]
#[command(after_help = "\
The config is validated before anything is emitted; an invalid one exits 1 naming the field and its \
valid range. The StableHLO is rendered from templates/, parsed and verified by MLIR (melior), \
shape-checked, and written in MLIR's generic op form.

With --target the Pallas TPU kernel rpa.pallas.py is emitted too, after the VMEM checker \
(--kernel kernelgen model) has accounted it for that target: a config that does not fit is refused \
(exit 3, with the checker's report and the nearest configs that fit) unless --vmem-limit raises the \
limit enough; that limit is then baked into the module. With --emit tpu the module is lowered for \
the target (deviceless, in the toolkit's jax/libtpu venv) to rpa.<target>.stablehlo.mlir and compiled \
by the real TPU compiler; manifest.json records its verdict beside the checker's (exit 3 if the \
compiler runs out of memory).

Examples:
  kernelgen build --q 32 --kv 16
  kernelgen build --q 16 --kv 16 --target v5p --emit tpu
  kernelgen build --q 32 --kv 16 --target v5p --emit tpu --vmem-limit 32MiB")]
pub struct BuildArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// Output directory [default: out/rpa-q<Q>-kv<KV>]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// TPU generation to emit the Pallas kernel for: v4, v5e, v5p, v6e, v7x
    #[arg(long, help_heading = "TPU")]
    pub target: Option<String>,
    /// What to emit: stablehlo, or tpu (lower and compile for --target)
    #[arg(
        long,
        value_enum,
        default_value = "stablehlo",
        requires = "target",
        help_heading = "TPU"
    )]
    pub emit: Emit,
    /// vmem_limit_bytes for the Pallas kernel (e.g. 32MiB) [default: the target's scoped default]
    #[arg(long, requires = "target", help_heading = "TPU")]
    pub vmem_limit: Option<String>,
    /// Print the manifest as JSON instead of a summary
    #[arg(long)]
    pub json: bool,
}

/// The spec with --q/--kv from the tuned table when neither is given (device: --target, else
/// the CPU plugin), saying which entry or fallback it used.
fn with_tuned_blocks(spec: KernelSpec, target: Option<&str>) -> anyhow::Result<KernelSpec> {
    if spec.q_block.is_some() || spec.kv_pages_block.is_some() {
        return Ok(spec);
    }
    let probe = KernelSpec {
        q_block: Some(1),
        kv_pages_block: Some(1),
        ..spec.clone()
    }
    .params(&CPU_DEFAULTS)?;
    let device = match target {
        Some(t) => Target::find(t)?.name.to_string(),
        None => "cpu".to_string(),
    };
    let query = Query {
        device,
        compiler: None,
        geometry: probe.geometry,
        dtype: probe.dtype,
        page_size: probe.page_size,
        max_model_len: probe.pages_per_seq * probe.page_size,
        sliding_window: probe.sliding_window,
    };
    let chosen = tune::build_blocks(&Store::default_dir(), &query)?;
    match &chosen.warning {
        Some(w) => eprintln!("warning: {w}"),
        None => eprintln!("block sizes: {}", chosen.desc),
    }
    Ok(KernelSpec {
        q_block: Some(chosen.blocks.q_block),
        kv_pages_block: Some(chosen.blocks.kv_pages_block),
        ..spec
    })
}

pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let spec = with_tuned_blocks(args.kernel.spec(), args.target.as_deref())?;
    let cfg = spec.config(&CPU_DEFAULTS)?;
    let tpu = match &args.target {
        Some(name) => Some(TpuBuild::plan(
            &cfg,
            Target::find(name)?,
            args.vmem_limit.as_deref().map(parse_bytes).transpose()?,
        )?),
        None => None,
    };
    if let Some(plan) = &tpu {
        if let Some(refusal) = plan.refusal() {
            print_report(&plan.report, &plan.target);
            print_suggestions(&nearest_fits(&plan.request(&cfg), &plan.report));
            eprintln!(
                "error: refusing to build: {}",
                refusal.describe(&cfg, plan.target.name)
            );
            return Ok(ExitCode::NoFit);
        }
    }
    let dir = args
        .out
        .unwrap_or_else(|| PathBuf::from("out").join(cfg.short_name()));
    let (mut writer, emit_time) =
        begin_stablehlo(&cfg, &dir).with_context(|| format!("building {}", dir.display()))?;
    let mut status = ExitCode::Ok;
    let mut compiled = None;
    if let Some(plan) = &tpu {
        plan.write_module(&cfg, &mut writer)?;
        let compiling = args.emit == Emit::Tpu;
        if plan.report.verdict == Verdict::Uncertain && !compiling {
            eprintln!(
                "warning: the VMEM checker is not sure {cfg} fits {} (within its spill error of the limit); \
                 build with --emit tpu to compile it with the real TPU compiler",
                plan.target.name
            );
        }
        if compiling {
            eprintln!(
                "compiling rpa.pallas.py for {} with the real TPU compiler (deviceless)...",
                plan.target.name
            );
            let record = plan
                .compile(&cfg, &dir, &mut writer, &mut |msg| eprintln!("{msg}"))
                .map_err(super::failed)?;
            if record.compiler_verdict != CompilerVerdict::Fits {
                status = ExitCode::NoFit;
            }
            compiled = Some(record);
        }
    }
    let artifact = writer.finish()?;
    let m = &artifact.manifest;
    if args.json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(status);
    }
    println!("built    {}", dir.display());
    println!("config   {cfg}");
    for (name, f) in &m.files {
        println!(
            "file     {name} ({} bytes, sha256 {})",
            f.bytes,
            &f.sha256[..16]
        );
    }
    println!(
        "emit     {:.1} ms (render, parse, verify, shape-check, print)",
        emit_time.as_secs_f64() * 1e3
    );
    if let Some(plan) = &tpu {
        print_tpu_summary(plan, compiled.as_ref());
    }
    if status == ExitCode::Ok {
        println!("next     kernelgen verify {}", dir.display());
    }
    Ok(status)
}

fn print_tpu_summary(plan: &TpuBuild, compiled: Option<&TpuCompileRecord>) {
    let r = &plan.report;
    println!(
        "vmem     {}: checker {} ({} of {} limit)",
        plan.target.name,
        r.verdict,
        fmt_bytes(r.total_bytes),
        fmt_bytes(r.limit_bytes)
    );
    let Some(c) = compiled else { return };
    let verdict = describe_compiler(
        c.compiler_verdict,
        c.compiler_size_bytes,
        c.compiler_limit_bytes,
        &c.compiler_message,
    );
    println!(
        "tpu      {}: real compiler {verdict} ({:.1} s); checker {}{}",
        plan.target.name,
        c.compile_seconds,
        c.checker_verdict,
        match c.agree {
            Some(true) => ", agree",
            Some(false) => ", DISAGREE",
            None => "",
        }
    );
}
