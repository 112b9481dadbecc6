//! `kernelgen build`: emit a kernel artifact; with `--target`, also the Pallas TPU kernel,
//! checked against the target's VMEM budget; with `--emit tpu`, lowered and compiled by the real
//! TPU compiler.

use super::check::{describe_compiler, print_report, print_suggestions, EXIT_NO_FIT};
use super::exit;
use super::kernel_args::{KernelArgs, CPU_DEFAULTS};
use anyhow::Context;
use clap::{Args, ValueEnum};
use kernelgen::artifact::ArtifactWriter;
use kernelgen::builder::begin_stablehlo;
use kernelgen::config::KernelConfig;
use kernelgen::emit::pallas::{self, VmemInfo};
use kernelgen::target::{fmt_bytes, parse_bytes, Target};
use kernelgen::tpu::{self, TpuCompileRecord};
use kernelgen::vmem::suggest::nearest_fits;
use kernelgen::vmem::{check, limit_that_fits, CheckRequest, KernelModel, Verdict, VmemReport};
use std::path::{Path, PathBuf};
use verify::oracle::Oracle;

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

pub fn run(args: BuildArgs) -> anyhow::Result<i32> {
    let cfg = args.kernel.to_config(&CPU_DEFAULTS)?;
    let tpu = match &args.target {
        Some(name) => Some(TpuPlan::new(
            &cfg,
            Target::find(name)?,
            args.vmem_limit.as_deref().map(parse_bytes).transpose()?,
        )?),
        None => None,
    };
    if let Some(plan) = &tpu {
        if plan.report.verdict == Verdict::DoesNotFit {
            plan.refuse(&cfg);
            return Ok(EXIT_NO_FIT);
        }
    }
    let dir = args
        .out
        .unwrap_or_else(|| PathBuf::from("out").join(cfg.short_name()));
    let (mut writer, emit_time) =
        begin_stablehlo(&cfg, &dir).with_context(|| format!("building {}", dir.display()))?;
    let mut status = exit::OK;
    let mut compiled = None;
    if let Some(plan) = &tpu {
        plan.write_module(&cfg, &mut writer, args.emit == Emit::Tpu)?;
        if args.emit == Emit::Tpu {
            let record = plan.compile(&cfg, &dir, &mut writer)?;
            if record.compiler_verdict != "fits" {
                status = EXIT_NO_FIT;
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
        plan.print_summary(compiled.as_ref());
    }
    if status == exit::OK {
        println!("next     kernelgen verify {}", dir.display());
    }
    Ok(status)
}

/// The Pallas kernel for one target: the checker's report at the requested limit.
struct TpuPlan {
    target: Target,
    limit: Option<u64>,
    report: VmemReport,
}

impl TpuPlan {
    fn new(cfg: &KernelConfig, target: Target, limit: Option<u64>) -> anyhow::Result<TpuPlan> {
        let report = check(&CheckRequest {
            cfg,
            target,
            kernel: KernelModel::Kernelgen,
            vmem_limit: limit,
        })?;
        Ok(TpuPlan {
            target,
            limit,
            report,
        })
    }

    fn request<'a>(&self, cfg: &'a KernelConfig) -> CheckRequest<'a> {
        CheckRequest {
            cfg,
            target: self.target,
            kernel: KernelModel::Kernelgen,
            vmem_limit: self.limit,
        }
    }

    /// Prints the checker's report and why the build stops.
    fn refuse(&self, cfg: &KernelConfig) {
        let r = &self.report;
        print_report(r, &self.target);
        print_suggestions(&nearest_fits(&self.request(cfg), r));
        if r.vmem_verdict != Verdict::DoesNotFit {
            let what = if r.smem.verdict == Verdict::DoesNotFit {
                format!(
                    "its scalar-prefetched arrays need {} of SMEM ({} available): lower --max-seqs or --max-model-len",
                    fmt_bytes(r.smem.total_bytes),
                    fmt_bytes(r.smem.capacity_bytes)
                )
            } else {
                format!(
                    "its operands need {} of HBM ({} available): lower --total-pages or --max-tokens",
                    fmt_bytes(r.hbm.operand_bytes),
                    fmt_bytes(r.hbm.capacity_bytes)
                )
            };
            eprintln!(
                "error: refusing to build: {cfg} cannot run on {}: {what}",
                self.target.name
            );
            return;
        }
        let raise = match limit_that_fits(r, &self.target) {
            Some(l) => format!("raise --vmem-limit to {} or", fmt_bytes(l)),
            None => format!(
                "no vmem_limit up to {}'s physical {} fits it;",
                self.target.name,
                fmt_bytes(self.target.vmem_bytes)
            ),
        };
        eprintln!(
            "error: refusing to build: {cfg} does not fit {}'s VMEM at a {} limit (needs at least {}); {raise} pick a config above",
            self.target.name,
            fmt_bytes(r.limit_bytes),
            fmt_bytes(r.lower_bytes),
        );
    }

    fn vmem_info(&self) -> VmemInfo {
        VmemInfo {
            target: Some(self.target.name.to_string()),
            estimate_bytes: Some(self.report.total_bytes),
            limit_bytes: self.limit,
        }
    }

    fn write_module(
        &self,
        cfg: &KernelConfig,
        w: &mut ArtifactWriter,
        compiling: bool,
    ) -> anyhow::Result<()> {
        let text = pallas::render(cfg, &self.vmem_info())?;
        w.add_file(pallas::FILE_NAME, text.as_bytes())?;
        w.manifest
            .extra
            .insert("vmem_check".into(), serde_json::to_value(&self.report)?);
        if self.report.verdict == Verdict::Uncertain && !compiling {
            eprintln!(
                "warning: the VMEM checker is not sure {cfg} fits {} (within its spill error of the limit); \
                 build with --emit tpu to compile it with the real TPU compiler",
                self.target.name
            );
        }
        Ok(())
    }

    /// Lowers and compiles the written module with the real TPU compiler; records the verdict.
    fn compile(
        &self,
        cfg: &KernelConfig,
        dir: &Path,
        w: &mut ArtifactWriter,
    ) -> anyhow::Result<TpuCompileRecord> {
        let module = std::fs::canonicalize(dir.join(pallas::FILE_NAME))?;
        let lowered_name = tpu::lowered_file_name(&self.target);
        let export = module.with_file_name(format!(".{lowered_name}.tmp"));
        let _ = std::fs::remove_file(&export);
        eprintln!(
            "compiling rpa.pallas.py for {} with the real TPU compiler (deviceless)...",
            self.target.name
        );
        let mut oracle = Oracle::start(&mut |msg| eprintln!("{msg}"))?;
        let req = tpu::oracle_request(
            cfg,
            &self.target,
            KernelModel::Kernelgen,
            self.limit,
            Some(&module),
            Some(&export),
        );
        let resp = oracle.compile(&req)?;
        let lowered = match std::fs::read(&export) {
            Ok(bytes) => {
                w.add_file(&lowered_name, &bytes)?;
                let _ = std::fs::remove_file(&export);
                Some(lowered_name)
            }
            Err(_) => None,
        };
        let record = TpuCompileRecord::new(&self.target, self.limit, &self.report, &resp, lowered);
        w.manifest
            .extra
            .insert("tpu_compile".into(), serde_json::to_value(&record)?);
        Ok(record)
    }

    fn print_summary(&self, compiled: Option<&TpuCompileRecord>) {
        let r = &self.report;
        println!(
            "vmem     {}: checker {} ({} of {} limit)",
            self.target.name,
            r.verdict,
            fmt_bytes(r.total_bytes),
            fmt_bytes(r.limit_bytes)
        );
        let Some(c) = compiled else { return };
        let verdict = describe_compiler(
            &c.compiler_verdict,
            c.compiler_size_bytes,
            c.compiler_limit_bytes,
            &c.compiler_message,
        );
        println!(
            "tpu      {}: real compiler {verdict} ({:.1} s); checker {}{}",
            self.target.name,
            c.compile_seconds,
            c.checker_verdict,
            match c.agree {
                Some(true) => ", agree",
                Some(false) => ", DISAGREE",
                None => "",
            }
        );
    }
}
