//! Command-line interface: argument parsing, dispatch, exit codes.

mod bench;
mod bench_kernel;
mod build;
mod calibrate;
mod check;
mod emit_pallas;
mod emit_step;
mod generate;
mod kernel_args;
mod matrix;
mod plan;
mod verify;

use clap::{Parser, Subcommand};

/// Exit codes, shared by every subcommand.
pub mod exit {
    pub const OK: i32 = 0;
    /// Bad flags, unreadable input, invalid config: nothing was compiled or run.
    pub const INPUT: i32 = 1;
    /// `verify`: the kernel's error exceeded the tolerance (or output was not finite).
    pub const VERIFY_FAILED: i32 = 2;
}

const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 usage or input error (nothing compiled or run), 2 verification failed.

Examples:
  kernelgen build --q 32 --kv 16                         Llama-3-8B geometry, page_size 64, bf16
  kernelgen build --q 16 --kv 8 --preset smollm2-135m --page-size 16 --dtype f32 --out /tmp/k
  kernelgen build --q 32 --kv 16 --hf-config path/to/config.json
  kernelgen verify out/rpa-q32-kv16                      run on the PJRT CPU plugin vs an f64 reference";

#[derive(Parser)]
#[command(
    name = "kernelgen",
    version,
    about = "Ragged paged attention kernels for XLA devices: emit, verify, check",
    long_about = "kernelgen generates ragged paged attention (RPA) kernels parameterized by q_block \
                  (query tokens per block) and kv_pages_block (KV pages per block), emits them as \
                  StableHLO for any PJRT backend, and verifies them against an f64 reference.",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Build(build::BuildArgs),
    Verify(verify::VerifyArgs),
    Check(check::CheckArgs),
    Plan(plan::PlanArgs),
    Generate(generate::GenerateArgs),
    Bench(bench::BenchArgs),
    #[command(hide = true)]
    EmitStep(emit_step::EmitStepArgs),
    #[command(hide = true)]
    EmitPallas(emit_pallas::EmitPallasArgs),
    Calibrate(calibrate::CalibrateArgs),
}

/// Parses arguments, runs the command, returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::INPUT
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    let result = match cli.command {
        Command::Build(args) => build::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Check(args) => check::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::EmitStep(args) => emit_step::run(args),
        Command::EmitPallas(args) => emit_pallas::run(args),
        Command::Calibrate(args) => calibrate::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::INPUT
        }
    }
}
