//! `kernelgen build`: emit a kernel artifact.

use super::exit;
use super::kernel_args::{KernelArgs, CPU_DEFAULTS};
use anyhow::Context;
use clap::Args;
use kernelgen::builder::build_stablehlo;
use std::path::PathBuf;

/// Emit a ragged paged attention kernel artifact (manifest.json + rpa.stablehlo.mlir)
#[derive(Args, Debug)]
#[command(
    after_help = "The config is validated before anything is emitted; an invalid one exits 1 \
naming the field and its valid range. The StableHLO is rendered from templates/, parsed and \
verified by MLIR (melior), shape-checked, and written in MLIR's generic op form."
)]
pub struct BuildArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// Output directory [default: out/rpa-q<Q>-kv<KV>]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the manifest as JSON instead of a summary
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BuildArgs) -> anyhow::Result<i32> {
    let cfg = args.kernel.to_config(&CPU_DEFAULTS)?;
    let dir = args
        .out
        .unwrap_or_else(|| PathBuf::from("out").join(cfg.short_name()));
    let built =
        build_stablehlo(&cfg, &dir).with_context(|| format!("building {}", dir.display()))?;
    let m = &built.artifact.manifest;
    if args.json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(exit::OK);
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
        built.emit_time.as_secs_f64() * 1e3
    );
    println!("next     kernelgen verify {}", dir.display());
    Ok(exit::OK)
}
