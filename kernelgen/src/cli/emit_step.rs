//! `kernelgen emit-step` (hidden, for debugging and profiling): write one bucket's linked step
//! program to a file, for the same model, kernel blocks and engine flags `generate` takes.

use super::args::{EngineArgs, ServedArgs};
use super::ExitCode;
use anyhow::Context;
use clap::Args;
use kernelgen::serve::kernel_source;
use kernelgen::step::program::emit_tp;
use kernelgen::step::StepShapes;
use runtime::engine::validate_config;
use std::path::PathBuf;

/// Write the model's step program for one token bucket (linked, checked) to a file
#[derive(Args, Debug)]
pub struct EmitStepArgs {
    /// Rows of the program: the token bucket (with --decode, the number of sequences)
    #[arg(long, default_value_t = 1)]
    pub tokens: usize,
    /// The decode-only program the engine runs when every sequence adds one token: one row
    /// per sequence (`--tokens` sequences) and the batched decode kernel
    #[arg(long)]
    pub decode: bool,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub served: ServedArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(a: EmitStepArgs) -> anyhow::Result<ExitCode> {
    // The engine's own rules, before the model loads: the same message generate gives.
    let engine = a.engine.config();
    validate_config(&engine)?;
    let kv = a.engine.kv_dtype;
    let path = a.served.model_path();
    let (model, _) =
        kernelgen::serve::open_model(&path).with_context(|| path.display().to_string())?;
    let shapes = if a.decode {
        StepShapes::decode(&engine, a.tokens, kv)
    } else {
        StepShapes::new(&engine, a.tokens, kv)
    };
    // With --tp, one device's program: its heads, its MLP share, the all-reduces.
    let shard = kernelgen::step::tp::shard_config(&model.config, a.engine.tp)?;
    let (source, _) = kernel_source(
        a.served.kernel.as_deref(),
        a.served.blocks().unwrap_or(kernelgen::tune::FALLBACK),
        &shard,
        engine.page_size,
        kv,
    )?;
    let p = emit_tp(&shard, &shapes, &source, a.engine.tp)?;
    std::fs::write(&a.out, &p.module.generic_text).with_context(|| a.out.display().to_string())?;
    eprintln!(
        "wrote {} ({} ops, kernel {})",
        a.out.display(),
        p.module.op_counts.values().sum::<usize>(),
        p.kernel
    );
    Ok(ExitCode::Ok)
}
