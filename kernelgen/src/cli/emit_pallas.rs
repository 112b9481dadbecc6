//! `kernelgen emit-pallas` (hidden, for the calibration sweep): render one config's Pallas module
//! to a file, with no VMEM check (the sweep wants the compiler's verdict on configs that do not fit).

use super::args::KernelArgs;
use super::ExitCode;
use anyhow::Context;
use clap::Args;
use kernelgen::config::TPU_DEFAULTS;
use kernelgen::emit::pallas;
use std::path::PathBuf;

/// Write the Pallas TPU module for a config to a file, unchecked (TPU call-shape defaults)
#[derive(Args, Debug)]
pub struct EmitPallasArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: EmitPallasArgs) -> anyhow::Result<ExitCode> {
    let cfg = a.kernel.spec().config(&TPU_DEFAULTS)?;
    let text = pallas::render(&cfg, &Default::default())?;
    std::fs::write(&a.out, text).with_context(|| a.out.display().to_string())?;
    Ok(ExitCode::Ok)
}
