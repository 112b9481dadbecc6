//! `kernelgen verify`: run an artifact through PJRT against the f64 reference.

use super::ExitCode;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kernelgen::artifact::Artifact;
use kernelgen::emit::stablehlo;
use kernelgen::numerics::{batch_specs, poison_of, tolerance, BatchOutcome, KernelRunner};
use runtime::pjrt::{default_plugin_path, Api, Client};
use std::path::PathBuf;

/// Run an artifact on random ragged batches and compare with an f64 reference
#[derive(Args, Debug)]
#[command(
    after_help = "Each batch is drawn from --seed + i and cycles through: mixed decode/prefill, \
decode only, one whole prompt; and fills every KV slot no sequence owns, the padding query rows \
and the unused page-table entries with: nothing (finite garbage), NaN, +Inf, -Inf, in turn (unused \
page ids out of range), since a kernel must ignore them whatever they hold. Error is normwise: max |out - ref| / max |ref| over valid rows, \
with ref computed in f64 on the same (bf16-rounded) inputs. Tolerance: 1e-5 for f32, 2e-2 for bf16. \
Padding rows must be finite and two runs bit-identical. Exit 2 if any batch fails."
)]
pub struct VerifyArgs {
    /// Artifact directory written by `kernelgen build`
    pub artifact: PathBuf,
    /// PJRT plugin (.so) to run on [default: the cached xla-cpu-pjrt plugin]
    #[arg(long, env = "PJRT_PLUGIN")]
    pub plugin: Option<PathBuf>,
    /// Number of random batches
    #[arg(long, default_value_t = 6)]
    pub batches: u64,
    /// Seed of the first batch
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    artifact: String,
    plugin: String,
    platform: String,
    compile_ms: f64,
    tolerance: f64,
    batches: &'a [BatchOutcome],
    worst_max_rel: f64,
    worst_max_abs: f64,
    passed: bool,
}

/// The artifact file to run on `platform`: on TPU the Pallas kernel lowered for a TPU target
/// (the `lowered_file` that `build --target T --emit tpu` records under `tpu_compile`),
/// elsewhere the portable StableHLO kernel.
fn kernel_file_for(artifact: &Artifact, platform: &str) -> anyhow::Result<String> {
    if !platform.eq_ignore_ascii_case("tpu") {
        return Ok(stablehlo::FILE_NAME.to_string());
    }
    artifact
        .manifest
        .extra
        .get("tpu_compile")
        .and_then(|c| c["lowered_file"].as_str())
        .map(str::to_string)
        .with_context(|| {
            format!(
                "{} has no TPU kernel: rebuild it with `kernelgen build ... --target <v5e|v5p|v6e|...> --emit tpu`",
                artifact.dir.display()
            )
        })
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let artifact = Artifact::open(&args.artifact)?;
    let cfg = artifact.manifest.config.clone();
    let plugin = args.plugin.clone().unwrap_or_else(default_plugin_path);
    let api = Api::load(&plugin)
        .with_context(|| "loading the PJRT plugin (run scripts/setup.sh, or pass --plugin)")?;
    let client = Client::new(api).with_context(|| {
        format!(
            "creating a PJRT client with {} (a TPU plugin needs TPU hardware on this machine)",
            plugin.display()
        )
    })?;
    let platform = client.platform_name()?;
    let kernel_file = kernel_file_for(&artifact, &platform)?;
    let mlir = artifact.read_text(&kernel_file)?;
    let runner = KernelRunner::compile(client, &cfg, &mlir)
        .context("compiling the kernel")
        .map_err(super::failed)?;
    let tol = tolerance(cfg.dtype());
    if !args.json {
        println!("artifact {} ({cfg})", args.artifact.display());
        println!("plugin   {} ({platform})", plugin.display());
        println!("compile  {:.0} ms", runner.compile_time.as_secs_f64() * 1e3);
    }
    let bar = ProgressBar::new(args.batches);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} batches {elapsed}")
            .expect("valid template"),
    );
    let specs = batch_specs(&cfg);
    let mut outcomes = Vec::new();
    for i in 0..args.batches {
        let spec = &specs[i as usize % specs.len()];
        let o = runner
            .check_batch(spec, args.seed + i, poison_of(i))
            .map_err(super::failed)?;
        if !args.json {
            bar.suspend(|| print_batch(i, &o, tol));
        }
        outcomes.push(o);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let worst = outcomes
        .iter()
        .fold(verify::ErrorStats::default(), |w, o| w.merge(o.stats));
    let passed = outcomes.iter().all(|o| o.passed(tol));
    if args.json {
        let report = Report {
            artifact: args.artifact.display().to_string(),
            plugin: plugin.display().to_string(),
            platform,
            compile_ms: runner.compile_time.as_secs_f64() * 1e3,
            tolerance: tol,
            batches: &outcomes,
            worst_max_rel: worst.max_rel,
            worst_max_abs: worst.max_abs,
            passed,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "worst    max abs err {:.3e}, max rel err {:.3e} (tolerance {tol:.0e}): {}",
            worst.max_abs,
            worst.max_rel,
            if passed { "PASS" } else { "FAIL" }
        );
    }
    Ok(if passed {
        ExitCode::Ok
    } else {
        ExitCode::VerifyFailed
    })
}

fn print_batch(i: u64, o: &BatchOutcome, tol: f64) {
    let decode = o.seqs.iter().filter(|(q, _)| *q == 1).count();
    let tokens: usize = o.seqs.iter().map(|(q, _)| q).sum();
    let max_kv = o.seqs.iter().map(|(_, kv)| *kv).max().unwrap_or(0);
    let mut flags = String::new();
    if o.stats.non_finite > 0 {
        flags.push_str(&format!(
            " {} of {} valid outputs NOT FINITE",
            o.stats.non_finite, o.stats.compared
        ));
    }
    if !o.padding_finite {
        flags.push_str(" PADDING-NOT-FINITE");
    }
    if !o.deterministic {
        flags.push_str(" NONDETERMINISTIC");
    }
    let poison = o.poison.map_or("clean".to_string(), |p| p.to_string());
    println!(
        "batch {i:<2} seed {:<4} {poison:<5} {:>3} seqs ({decode} decode), {tokens:>4} q tokens, kv_len <= {max_kv:<5} \
         max abs {:.2e} rel {:.2e} {:>6.1} ms  {}{flags}",
        o.seed,
        o.seqs.len(),
        o.stats.max_abs,
        o.stats.max_rel,
        o.run_time_ms,
        if o.passed(tol) { "ok" } else { "FAIL" }
    );
}
