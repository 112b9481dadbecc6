//! `kernelgen emit-step` (hidden, for debugging and profiling): write one bucket's linked step
//! program to a file.

use super::exit;
use super::generate::kv_dtype;
use anyhow::Context;
use clap::Args;
use kernelgen::emit::step::{emit, KernelSource};
use runtime::engine::EngineConfig;
use runtime::step::layout::StepShapes;
use std::path::PathBuf;

/// Write the model's step program for one token bucket (linked, checked) to a file
#[derive(Args, Debug)]
pub struct EmitStepArgs {
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub tokens: usize,
    #[arg(long = "q", default_value_t = 8)]
    pub q_block: u32,
    #[arg(long = "kv", default_value_t = 8)]
    pub kv_pages_block: u32,
    #[arg(long, default_value_t = 32)]
    pub max_seqs: usize,
    #[arg(long, default_value_t = 1024)]
    pub max_pages: usize,
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,
    #[arg(long, default_value_t = 2048)]
    pub max_seq_len: usize,
    #[arg(long, default_value = "f32")]
    pub kv_dtype: String,
    /// The decode-only program the engine runs when every sequence adds one token: one row
    /// per sequence (`--tokens` sequences) and the batched decode kernel
    #[arg(long)]
    pub decode: bool,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: EmitStepArgs) -> anyhow::Result<i32> {
    let path = a
        .model
        .clone()
        .unwrap_or_else(runtime::cache::default_model_path);
    let (model, _) =
        kernelgen::serve::load_model(&path).with_context(|| path.display().to_string())?;
    let engine = EngineConfig {
        max_seqs: a.max_seqs,
        max_pages: a.max_pages,
        page_size: a.page_size,
        max_seq_len: a.max_seq_len,
        max_tokens_per_round: a.tokens,
    };
    let kv = kv_dtype(&a.kv_dtype)?;
    let shapes = if a.decode {
        StepShapes::decode(&engine, a.tokens, kv)
    } else {
        StepShapes::new(&engine, a.tokens, kv)
    };
    let source = KernelSource::Blocks {
        q_block: a.q_block,
        kv_pages_block: a.kv_pages_block,
    };
    let p = emit(&model.config, &shapes, &source)?;
    std::fs::write(&a.out, &p.module.generic_text).with_context(|| a.out.display().to_string())?;
    eprintln!(
        "wrote {} ({} ops, kernel {})",
        a.out.display(),
        p.module.op_counts.values().sum::<usize>(),
        p.kernel
    );
    Ok(exit::OK)
}
