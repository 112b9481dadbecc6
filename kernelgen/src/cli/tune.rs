//! `kernelgen tune`: flags into [`kernelgen::tune::TuneOptions`], a progress bar, the summary
//! table; and the hidden `kernelgen tune-candidate`, the child process that measures one
//! candidate.

use super::args::GeometryArgs;
use super::ExitCode;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kernelgen::config::{parse_dtype, Dtype, Geometry, KernelSpec, CPU_DEFAULTS};
use kernelgen::target::{fmt_bytes, parse_bytes, Target};
use kernelgen::tune::isolate::{ChildRunner, CompileOnly};
use kernelgen::tune::space::Prune;
use kernelgen::tune::table::Store;
use kernelgen::tune::{self, Event, Phase, Status, TuneOptions, TuneReport, Workload};
use kernelgen::vmem::KernelModel;
use runtime::pjrt::{Api, Client};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

fn parse_dtype_flag(s: &str) -> Result<Dtype, String> {
    parse_dtype(s).map_err(|e| e.to_string())
}

/// Find the fastest q_block x kv_pages_block per phase on the hardware at hand, and remember it
#[derive(Args, Debug)]
#[command(after_help = "\
Each phase (decode: one new token per sequence; prefill: one whole chunk; mixed: both, as a \
continuous-batching step) is swept over q_block x kv_pages_block at the workload's shapes. Before \
anything compiles, block sizes larger than the shapes are dropped, and with --target the VMEM/SMEM \
checker drops the configs that do not fit that TPU (its `uncertain` ones go to the compiler); a \
config at least as large as one that ran out of memory is skipped.

Live (the default, on --plugin): each candidate runs in its own child process with --timeout, is \
verified once against the f64 reference (NaN in every slot it must ignore: a fast wrong kernel is \
never a winner), then timed (median of --repeats calls after warm-up). A crash, hang or OOM is \
recorded as that candidate's status and the sweep goes on.

--compile-only (needs --target): no device; every surviving candidate is compiled by the real TPU \
compiler (deviceless), and the short list that compiles is printed with each one's VMEM use, ready \
for a timing run on a TPU host (`--plugin libtpu.so --target ...`).

Every measurement is appended to <tune dir>/measurements.jsonl (keyed by device, compiler, kernel \
source hash, phase and shapes; --resume takes earlier ones from it); the best per phase goes to \
<tune dir>/tuned_blocks.json, which build, generate, serve and bench decode read when --q/--kv are \
not given.

Examples:
  kernelgen tune --preset smollm2-135m --page-size 16 --dtype f32            # the default model's serving shapes
  kernelgen tune --model path/to/model.gguf --phase decode --budget 10m
  kernelgen tune --target v5p --preset llama3-8b --page-size 64 --compile-only
  kernelgen tune --hf-config config.json --plugin /path/libtpu.so --target v5p --phase decode,prefill,mixed
  kernelgen tune ... --q 16,32 --kv 4,8 --json")]
pub struct TuneArgs {
    #[command(flatten)]
    pub geometry: GeometryArgs,
    /// Take the geometry from a model to be served: a .gguf file or a Hugging Face directory
    #[arg(long, conflicts_with_all = ["preset", "hf_config"], help_heading = "Geometry")]
    pub model: Option<PathBuf>,
    /// Tensor-parallel degree: heads are divided by it
    #[arg(long, default_value_t = 1, help_heading = "Geometry")]
    pub tp: u32,
    /// Tokens per KV page [default: 16, or 64 with --target]
    #[arg(long, help_heading = "Workload")]
    pub page_size: Option<u32>,
    /// KV and q dtype: f32 or bf16 [default: f32, or bf16 with --target]
    #[arg(long, value_parser = parse_dtype_flag, help_heading = "Workload")]
    pub dtype: Option<Dtype>,
    /// Sequences per step [default: 32 (generate's --max-seqs), or 128 with --target]
    #[arg(long, help_heading = "Workload")]
    pub max_seqs: Option<u32>,
    /// Tokens per step, the prefill chunk [default: 256 (generate's --max-tokens-per-round), or 2048 with --target]
    #[arg(long, help_heading = "Workload")]
    pub max_tokens: Option<u32>,
    /// Longest sequence [default: 2048 (generate's --max-seq-len), or 4096 with --target]
    #[arg(long, help_heading = "Workload")]
    pub max_model_len: Option<u32>,
    /// Phases to tune, comma-separated: decode, prefill, mixed
    #[arg(long, default_value = "decode,prefill,mixed", help_heading = "Search")]
    pub phase: String,
    /// q_block values to try, comma-separated [default: powers of two from 8 to the step's tokens; decode always 1]
    #[arg(long = "q", value_delimiter = ',', help_heading = "Search")]
    pub q_blocks: Option<Vec<u32>>,
    /// kv_pages_block values to try, comma-separated [default: powers of two up to a sequence's pages]
    #[arg(long = "kv", value_delimiter = ',', help_heading = "Search")]
    pub kv_blocks: Option<Vec<u32>>,
    /// Stop starting candidates after this long (e.g. 90s, 10m, 1h)
    #[arg(long, help_heading = "Search")]
    pub budget: Option<String>,
    /// Take candidates measured before under the same key from the cache instead of measuring them again
    #[arg(long, help_heading = "Search")]
    pub resume: bool,
    /// TPU generation: prune with the VMEM/SMEM checker for it (v4, v5e, v5p, v6e, v7x)
    #[arg(long, help_heading = "TPU")]
    pub target: Option<String>,
    /// Kernel the checker and the compiler account: kernelgen (this toolkit's Pallas kernel) or jax-rpa
    #[arg(long = "kernel", default_value = "kernelgen", help_heading = "TPU")]
    pub kernel_model: String,
    /// vmem_limit_bytes the kernels are compiled with (e.g. 32MiB) [default: the target's scoped default]
    #[arg(long, requires = "target", help_heading = "TPU")]
    pub vmem_limit: Option<String>,
    /// No device: compile every surviving candidate with the real TPU compiler for --target and list what compiles
    #[arg(long, requires = "target", help_heading = "TPU")]
    pub compile_only: bool,
    /// PJRT plugin to time on [default: the cached serving CPU plugin]
    #[arg(long, env = "PJRT_PLUGIN", help_heading = "Measurement")]
    pub plugin: Option<PathBuf>,
    /// Timed calls per candidate (the median is kept)
    #[arg(long, default_value_t = 20, help_heading = "Measurement")]
    pub repeats: u32,
    /// Untimed calls before timing
    #[arg(long, default_value_t = 3, help_heading = "Measurement")]
    pub warmup: u32,
    /// Seconds a candidate's process may take before it is killed (status timeout)
    #[arg(long, default_value_t = 300.0, help_heading = "Measurement")]
    pub timeout: f64,
    /// Seed of the random ragged batches (the same batch for every candidate)
    #[arg(long, default_value_t = 0, help_heading = "Measurement")]
    pub seed: u64,
    /// Folder of the measurement cache and the tuned table [default: <cache>/tune]
    #[arg(long, env = "KERNELGEN_TUNE_DIR")]
    pub tune_dir: Option<PathBuf>,
    /// Print the report as JSON (no progress bar)
    #[arg(long)]
    pub json: bool,
}

/// "90s", "10m", "1h", or plain seconds.
fn parse_budget(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = match s.trim().char_indices().find(|(_, c)| c.is_alphabetic()) {
        Some((i, _)) => s.trim().split_at(i),
        None => (s.trim(), "s"),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .with_context(|| {
            format!("--budget {s}: give a positive duration such as 90s, 10m or 1h")
        })?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => anyhow::bail!("--budget {s}: unknown unit {unit:?}; use s, m or h (e.g. 10m)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// The geometry (per device) and the sliding window / soft cap of the model tuned for.
fn geometry(a: &TuneArgs, tpu: bool) -> anyhow::Result<(Geometry, Option<u32>, Option<f32>)> {
    let (mut g, window, cap) = match &a.model {
        Some(path) => {
            let m = runtime::model::ModelFile::open(path)
                .with_context(|| format!("--model {}", path.display()))?
                .config;
            let g = Geometry {
                num_q_heads: m.num_q_heads as u32,
                num_kv_heads: m.num_kv_heads as u32,
                head_dim: m.head_dim as u32,
            };
            (g, None, None)
        }
        None => {
            let g = &a.geometry;
            let default = (g.hf_config.is_none() && !tpu).then(|| "smollm2-135m".to_string());
            let p = KernelSpec {
                q_block: Some(1),
                kv_pages_block: Some(1),
                preset: g.preset.clone().or(default),
                num_q_heads: None,
                num_kv_heads: None,
                head_dim: None,
                ..g.spec()
            }
            .params(&CPU_DEFAULTS)?;
            (p.geometry, p.sliding_window, p.soft_cap)
        }
    };
    let o = &a.geometry;
    g.num_q_heads = o.num_q_heads.unwrap_or(g.num_q_heads);
    g.num_kv_heads = o.num_kv_heads.unwrap_or(g.num_kv_heads);
    g.head_dim = o.head_dim.unwrap_or(g.head_dim);
    if a.tp == 0 || g.num_q_heads % a.tp != 0 || g.num_kv_heads % a.tp != 0 {
        anyhow::bail!(
            "--tp {}: must divide both {} query heads and {} KV heads",
            a.tp,
            g.num_q_heads,
            g.num_kv_heads
        );
    }
    g.num_q_heads /= a.tp;
    g.num_kv_heads /= a.tp;
    Ok((g, window, cap))
}

fn workload(a: &TuneArgs, tpu: bool) -> anyhow::Result<Workload> {
    let (geometry, sliding_window, soft_cap) = geometry(a, tpu)?;
    let pick = |v: Option<u32>, cpu: u32, tpu_v: u32| v.unwrap_or(if tpu { tpu_v } else { cpu });
    let w = Workload {
        geometry,
        dtype: a
            .dtype
            .unwrap_or(if tpu { Dtype::Bf16 } else { Dtype::F32 }),
        page_size: pick(a.page_size, 16, 64),
        max_num_seqs: pick(a.max_seqs, 32, 128),
        max_num_tokens: pick(a.max_tokens, 256, 2048),
        max_model_len: pick(a.max_model_len, 2048, 4096),
        sliding_window,
        soft_cap,
    };
    for (name, v) in [
        ("--page-size", w.page_size),
        ("--max-seqs", w.max_num_seqs),
        ("--max-tokens", w.max_num_tokens),
        ("--max-model-len", w.max_model_len),
    ] {
        if v == 0 {
            anyhow::bail!("{name} 0: must be at least 1");
        }
    }
    // The shapes themselves must make a valid config (checked once, with the smallest blocks).
    w.config(Phase::Mixed, 1, 1)
        .context("the workload's shapes")?;
    Ok(w)
}

pub fn run(a: TuneArgs) -> anyhow::Result<ExitCode> {
    let phases = Phase::parse_list(&a.phase)?;
    let target = a.target.as_deref().map(Target::find).transpose()?;
    let kernel = KernelModel::parse(&a.kernel_model)?;
    let vmem_limit = a.vmem_limit.as_deref().map(parse_bytes).transpose()?;
    let budget = a.budget.as_deref().map(parse_budget).transpose()?;
    if a.repeats == 0 {
        anyhow::bail!("--repeats 0: time at least 1 call");
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        anyhow::bail!("--timeout {}: give a positive number of seconds", a.timeout);
    }
    for (flag, vs) in [("--q", &a.q_blocks), ("--kv", &a.kv_blocks)] {
        if vs.as_ref().is_some_and(|v| v.is_empty() || v.contains(&0)) {
            anyhow::bail!("{flag}: give positive block sizes, comma-separated (e.g. 4,8,16)");
        }
    }
    let w = workload(&a, target.is_some())?;
    let store = a
        .tune_dir
        .clone()
        .map_or_else(Store::default_dir, Store::at);
    let prune = target.map(|target| Prune {
        target,
        kernel,
        vmem_limit,
    });
    let mut runner: Box<dyn tune::CandidateRunner>;
    let (device, compiler);
    if a.compile_only {
        let t = target.expect("clap: --compile-only requires --target");
        device = t.name.to_string();
        compiler = kernelgen::tpu::oracle::PINNED.join(" ");
        store.ensure_writable()?;
        eprintln!("starting the TPU compiler (deviceless; the first run creates its venv)...");
        let oracle =
            kernelgen::tpu::Oracle::start(&mut |msg| eprintln!("{msg}")).map_err(super::failed)?;
        runner = Box::new(CompileOnly::new(oracle, t, kernel, vmem_limit));
    } else {
        let plugin = a
            .plugin
            .clone()
            .unwrap_or_else(runtime::cache::serving_plugin_path);
        let client = Api::load(&plugin).and_then(Client::new).with_context(|| {
            format!(
                "loading the PJRT plugin {} (run scripts/setup.sh, or pass --plugin)",
                plugin.display()
            )
        })?;
        device = match &target {
            Some(t) => t.name.to_string(),
            None => client.platform_name()?,
        };
        compiler = tune::table::compiler_id(&client);
        drop(client);
        runner = Box::new(ChildRunner {
            program: std::env::current_exe().context("finding this binary to run candidates")?,
            args: vec!["tune-candidate".into()],
            plugin,
            warmup: a.warmup,
            repeats: a.repeats,
            seed: a.seed,
            timeout: Duration::from_secs_f64(a.timeout),
        });
    }
    let opts = TuneOptions {
        workload: w,
        phases,
        q_blocks: a.q_blocks.clone(),
        kv_blocks: a.kv_blocks.clone(),
        prune,
        budget,
        resume: a.resume,
        device,
        compiler,
    };
    let bar = progress(a.json);
    let mut best: Vec<(Phase, f64, String)> = Vec::new();
    let mut on_event = |e: Event| match e {
        Event::Planned { candidates } => bar.set_length(candidates as u64),
        Event::Started { candidate } => {
            bar.set_message(format!("{candidate} ...{}", best_line(&best)))
        }
        Event::Finished { m, .. } => {
            if let Some(t) = m.median_ms {
                let phase = m.key.phase;
                let better = best.iter().find(|b| b.0 == phase).is_none_or(|b| t < b.1);
                if better {
                    best.retain(|b| b.0 != phase);
                    best.push((phase, t, format!("q{} kv{}", m.q_block, m.kv_pages_block)));
                }
            }
            if m.status != Status::Skipped || m.reason.as_deref() != Some("--budget reached") {
                bar.inc(1);
            }
            bar.set_message(best_line(&best));
        }
    };
    let report = tune::run(
        &opts,
        runner.as_mut(),
        &store,
        !a.compile_only,
        &mut on_event,
    )?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, a.compile_only);
    }
    let any = report
        .rows
        .iter()
        .any(|r| matches!(r.m.status, Status::Ok | Status::Compiles));
    Ok(if any { ExitCode::Ok } else { ExitCode::Failed })
}

fn best_line(best: &[(Phase, f64, String)]) -> String {
    if best.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = best
        .iter()
        .map(|(p, t, c)| format!("{p} {c} {t:.3} ms"))
        .collect();
    format!(" best: {}", parts.join(", "))
}

fn progress(hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} candidates, {elapsed} ({eta} left){msg}",
        )
        .expect("a valid template"),
    );
    bar
}

fn print_report(r: &TuneReport, compile_only: bool) {
    let w = &r.workload;
    println!(
        "tune on {} ({}), kernel source {}: {}q/{}kv heads, head_dim {}, {}, page {}, {} seqs, {} tokens per step, max len {}",
        r.device,
        r.compiler,
        r.kernel_source,
        w.geometry.num_q_heads,
        w.geometry.num_kv_heads,
        w.geometry.head_dim,
        w.dtype.mlir(),
        w.page_size,
        w.max_num_seqs,
        w.max_num_tokens,
        w.max_model_len
    );
    println!(
        "{:<8} {:>5} {:>5}  {:<13} {:>10} {:>7} {:>9} {:>10} {:>7}  reason",
        "phase", "q", "kv", "status", "median ms", "ratio", "error", "vmem", "secs"
    );
    let mut skipped: Vec<&str> = Vec::new();
    for row in &r.rows {
        let m = &row.m;
        if m.status == Status::Skipped {
            skipped.push(m.reason.as_deref().unwrap_or(""));
            continue;
        }
        println!(
            "{:<8} {:>5} {:>5}  {:<13} {:>10} {:>7} {:>9} {:>10} {:>7.1}  {}{}",
            m.key.phase.name(),
            m.q_block,
            m.kv_pages_block,
            m.status.name(),
            m.median_ms.map_or("-".into(), |t| format!("{t:.3}")),
            row.ratio.map_or("-".into(), |x| format!("{x:.2}")),
            m.error.map_or("-".into(), |e| format!("{e:.1e}")),
            m.vmem_bytes.map_or("-".into(), fmt_bytes),
            m.seconds,
            m.reason.as_deref().unwrap_or(""),
            if row.cached { " (cached)" } else { "" }
        );
    }
    if !skipped.is_empty() {
        let count = |p: &str| skipped.iter().filter(|r| r.starts_with(p)).count();
        let (checker, dominated, budget) =
            (count("checker"), count("dominated"), count("--budget"));
        println!(
            "skipped before running: {} ({checker} by the VMEM/SMEM checker, {dominated} dominated \
             by a config that ran out of memory, {budget} by --budget, {} larger than the shapes \
             or invalid); --json lists each with its reason",
            skipped.len(),
            skipped.len() - checker - dominated - budget
        );
    }
    if r.rows.iter().any(|x| x.m.vmem_bytes.is_some()) {
        println!("vmem: the compiler's figure on an OOM, else the checker's estimate");
    }
    if compile_only {
        let ok: Vec<String> = r
            .rows
            .iter()
            .filter(|x| x.m.status == Status::Compiles)
            .map(|x| {
                format!(
                    "{:<8} --q {} --kv {} ({})",
                    x.m.key.phase.name(),
                    x.m.q_block,
                    x.m.kv_pages_block,
                    x.m.vmem_bytes.map_or("-".into(), fmt_bytes)
                )
            })
            .collect();
        println!(
            "{} of {} candidates compile for {}; time them on a TPU host with `kernelgen tune --plugin libtpu.so --target {} --q ... --kv ...`:",
            ok.len(),
            r.rows.len(),
            r.device,
            r.device
        );
        for line in ok {
            println!("  {line}");
        }
    } else {
        for b in &r.best {
            println!(
                "best {}: q_block {} kv_pages_block {} ({})",
                b.key.phase,
                b.q_block,
                b.kv_pages_block,
                match b.median_ms {
                    Some(t) => format!("{t:.3} ms"),
                    None => b.reason.clone().unwrap_or_default(),
                }
            );
        }
        if let Some(t) = &r.table {
            println!("tuned table: {}", t.display());
        }
    }
    if r.budget_reached {
        println!("--budget reached: the candidates marked so did not run (--resume continues)");
    }
    println!(
        "{:.1} s wall; measurements appended to {}",
        r.wall_seconds,
        r.cache.display()
    );
}

/// The hidden child process: one [`kernelgen::tune::measure::Job`] on stdin, its outcome as one
/// JSON line on stdout.
#[derive(Args, Debug)]
pub struct TuneCandidateArgs {}

pub fn run_candidate(_: TuneCandidateArgs) -> anyhow::Result<ExitCode> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let job: tune::measure::Job =
        serde_json::from_str(&input).context("tune-candidate: a job as JSON on stdin")?;
    let outcome = tune::measure::measure(&job);
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(ExitCode::Ok)
}
