//! Command-line interface: argument parsing, dispatch, printing and exit codes. Every command
//! parses its flags into the library's typed options, calls the library, and prints what it
//! returns; no kernel, VMEM, benchmark or build logic lives here.

mod args;
mod bench;
mod build;
mod calibrate;
mod check;
mod emit_pallas;
mod emit_step;
mod explain;
mod generate;
mod plan;
mod print;
mod serve;
mod setup;
mod tune;
mod verify;

use clap::{Parser, Subcommand};

/// Exit codes, shared by every subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Ok,
    /// Bad flags, unreadable input, invalid config: nothing was compiled or run.
    Input,
    /// `verify`: the kernel's error exceeded the tolerance (or output was not finite).
    VerifyFailed,
    /// `check`/`plan`: does not fit; `build --target`: refused, or the TPU compiler ran out of
    /// memory.
    NoFit,
    /// `check`/`plan`: uncertain (within the spill model's error of the limit).
    Uncertain,
    /// Work started and then failed: a compile, the device, or generation (e.g. the model
    /// produced non-finite logits).
    Failed,
}

impl ExitCode {
    pub const ALL: [ExitCode; 6] = [
        ExitCode::Ok,
        ExitCode::Input,
        ExitCode::VerifyFailed,
        ExitCode::NoFit,
        ExitCode::Uncertain,
        ExitCode::Failed,
    ];

    pub fn code(self) -> i32 {
        match self {
            ExitCode::Ok => 0,
            ExitCode::Input => 1,
            ExitCode::VerifyFailed => 2,
            ExitCode::NoFit => 3,
            ExitCode::Uncertain => 4,
            ExitCode::Failed => 5,
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            ExitCode::Ok => "success",
            ExitCode::Input => "usage or input error (nothing compiled or run)",
            ExitCode::VerifyFailed => "verify: an error above tolerance",
            ExitCode::NoFit => {
                "check/plan: does not fit; build --target: refused, or the TPU compiler ran out of memory"
            }
            ExitCode::Uncertain => "check/plan: uncertain",
            ExitCode::Failed => {
                "a run failed after it started (a compile, the device, or generation)"
            }
        }
    }
}

/// An error after work started (exit 5), rather than an input error (exit 1).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Failed(pub anyhow::Error);

/// Marks an error as a failure after work started.
pub fn failed(e: impl Into<anyhow::Error>) -> anyhow::Error {
    Failed(e.into()).into()
}

fn after_help() -> String {
    let codes: Vec<String> = ExitCode::ALL
        .iter()
        .map(|c| format!("  {}  {}", c.code(), c.meaning()))
        .collect();
    format!(
        "Exit codes:\n{}\n\nExamples:\n  \
         kernelgen setup                                        fetch the PJRT plugins and the default model\n  \
         kernelgen build --q 32 --kv 16                         Llama-3-8B geometry, page_size 64, bf16\n  \
         kernelgen build --q 16 --kv 8 --preset smollm2-135m --page-size 16 --dtype f32 --out /tmp/k\n  \
         kernelgen verify out/rpa-q32-kv16                      run on the PJRT CPU plugin vs an f64 reference\n  \
         kernelgen check --target v5p --q 16 --kv 16            VMEM/SMEM budget on a TPU, before any compile\n  \
         kernelgen generate --prompt \"Write a haiku.\"           serve the default model with the paged-KV engine\n  \
         kernelgen serve --port 8000                            the same engine behind the OpenAI HTTP API\n  \
         kernelgen tune --preset smollm2-135m --page-size 16 --dtype f32   fastest block sizes here, into the tuned table",
        codes.join("\n")
    )
}

#[derive(Parser)]
#[command(
    name = "kernelgen",
    version,
    about = "Ragged paged attention kernels for XLA devices: emit, verify, check, serve",
    long_about = "kernelgen generates ragged paged attention (RPA) kernels parameterized by q_block \
                  (query tokens per block) and kv_pages_block (KV pages per block), emits them as \
                  StableHLO for any PJRT backend and as a Pallas TPU kernel, verifies them against \
                  an f64 reference, checks them against TPU VMEM budgets before any hardware run, \
                  and serves Llama-family models with them.",
    after_help = after_help()
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Setup(setup::SetupArgs),
    Build(build::BuildArgs),
    Verify(verify::VerifyArgs),
    Check(check::CheckArgs),
    Plan(plan::PlanArgs),
    Explain(explain::ExplainArgs),
    Generate(generate::GenerateArgs),
    Serve(serve::ServeArgs),
    Bench(bench::BenchArgs),
    Tune(tune::TuneArgs),
    #[command(hide = true)]
    TuneCandidate(tune::TuneCandidateArgs),
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
                ExitCode::Input
            } else {
                ExitCode::Ok
            };
            let _ = e.print();
            return code.code();
        }
    };
    let result = match cli.command {
        Command::Setup(args) => setup::run(args),
        Command::Build(args) => build::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Check(args) => check::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Tune(args) => tune::run(args),
        Command::TuneCandidate(args) => tune::run_candidate(args),
        Command::EmitStep(args) => emit_step::run(args),
        Command::EmitPallas(args) => emit_pallas::run(args),
        Command::Calibrate(args) => calibrate::run(args),
    };
    match result {
        Ok(code) => code.code(),
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<Failed>().is_some() {
                ExitCode::Failed.code()
            } else {
                ExitCode::Input.code()
            }
        }
    }
}
