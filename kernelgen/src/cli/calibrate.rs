//! `kernelgen calibrate`: refit the spill allowance to oracle data and report how the checker's
//! verdicts agree with the compiler's.

use super::ExitCode;
use anyhow::Context;
use clap::Args;
use kernelgen::target::{fmt_bytes, Target};
use kernelgen::tpu::oracle::{parse_points, OraclePoint};
use kernelgen::vmem::calibrate::{
    agreement, committed_data, committed_points, fit_all, leave_one_out, observe, render_fitted,
    Agreement, HELDOUT,
};
use kernelgen::vmem::{check, CheckRequest, KernelModel};
use std::path::PathBuf;

/// Fit the VMEM spill allowance to oracle data and report model/compiler agreement
#[derive(Args, Debug)]
#[command(
    after_help = "Data: JSON lines from kernelgen/oracle/sweep.py (default: the committed \
kernelgen/data/vmem_oracle_<kernel>.jsonl, built into the binary). Prints the fitted coefficients per \
target, their worst relative error, the points the fit could not use and why, and how often the \
model's verdict at the default limit agrees with the compiler's. --write FILE regenerates the fitted \
constants (kernelgen/src/vmem/spill_fitted.rs in the source tree; rebuild to use them) from every \
kernel's committed data."
)]
pub struct CalibrateArgs {
    /// Kernel model: jax-rpa or kernelgen
    #[arg(long, default_value = "jax-rpa")]
    pub kernel: String,
    /// Oracle data files [default: the committed data for --kernel]
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Also judge each point by a model fitted without it (leave-one-out)
    #[arg(long)]
    pub cross_validate: bool,
    /// Also print every point: the compiler's verdict, its reported size and smallest fitting
    /// limit, beside the checker's estimate and verdict
    #[arg(long)]
    pub per_point: bool,
    /// Print each point of the data (with --heldout, of the held-out split) as one JSON line in
    /// the fit's terms: spill features, exact buffers, the limit, the compiler's verdict and
    /// measured minimum limit (to try other spill features outside the binary)
    #[arg(long, conflicts_with_all = ["write", "cross_validate", "per_point", "json"])]
    pub observations: bool,
    /// Judge the committed held-out split (both kernels; no fit ever reads it): agreement per kernel and target
    #[arg(long, conflicts_with_all = ["data", "write", "cross_validate"])]
    pub heldout: bool,
    /// Write the fitted constants to this file (kernelgen/src/vmem/spill_fitted.rs)
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// The points of `files` (or the committed ones), refusing any line that does not parse.
fn load(kernel: KernelModel, files: &[PathBuf]) -> anyhow::Result<(Vec<OraclePoint>, String)> {
    if files.is_empty() {
        let (name, _) = committed_data(kernel);
        let (points, bad) = committed_points(kernel);
        anyhow::ensure!(bad.is_empty(), "{name}: unreadable lines {bad:?}");
        return Ok((points, name.to_string()));
    }
    let mut points = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
        let (p, bad) = parse_points(&text);
        if let Some((line, why)) = bad.first() {
            anyhow::bail!(
                "{}:{line}: not an oracle point ({why}); {} such lines",
                f.display(),
                bad.len()
            );
        }
        points.extend(p);
    }
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    Ok((points, names.join(", ")))
}

/// The checker against the compiler on the held-out split, per kernel and target.
fn run_heldout(args: &CalibrateArgs) -> anyhow::Result<ExitCode> {
    let (name, text) = HELDOUT;
    let (points, bad) = parse_points(text);
    anyhow::ensure!(bad.is_empty(), "{name}: unreadable lines {bad:?}");
    if args.observations {
        return print_observations(&points);
    }
    let a = agreement(&points);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&a)?);
        return Ok(ExitCode::Ok);
    }
    println!(
        "held-out split {name}: {} points ({} not compared: the compiler failed for another reason)",
        points.len(),
        a.compiler_errors
    );
    print_groups(&a);
    if args.per_point {
        print_points(&points);
    }
    for d in &a.disagree {
        println!(
            "  WRONG {} {}: checker {} ({}), compiler {}",
            d.target,
            d.config,
            d.model,
            fmt_bytes(d.model_total),
            d.oracle
        );
    }
    Ok(ExitCode::Ok)
}

/// Agreement per kernel and target, and in all.
fn print_groups(a: &Agreement) {
    println!(
        "{:<18} {:>6} {:>6} {:>10} {:>6}",
        "kernel target", "points", "agree", "uncertain", "wrong"
    );
    let pct = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
    for (group, [n, agree, unsure, wrong]) in &a.groups {
        println!(
            "{group:<18} {n:>6} {agree:>6} {unsure:>4} ({:>3.0}%) {wrong:>6}",
            pct(*unsure, *n)
        );
    }
    println!(
        "{:<18} {:>6} {:>6} {:>4} ({:>3.0}%) {:>6}",
        "all",
        a.points,
        a.agree,
        a.uncertain,
        pct(a.uncertain, a.points),
        a.disagree.len()
    );
}

/// One JSON line per point that its kernel's model accounts (the others are counted on stderr).
fn print_observations(points: &[OraclePoint]) -> anyhow::Result<ExitCode> {
    let mut refused = 0;
    for p in points {
        match observe(p) {
            Ok(o) => println!("{}", serde_json::to_string(&o)?),
            Err(_) => refused += 1,
        }
    }
    if refused > 0 {
        eprintln!("{refused} points not accounted by the checker (not printed)");
    }
    Ok(ExitCode::Ok)
}

/// Bytes per MiB, for the reports' figures.
const MIB: f64 = kernelgen::target::MIB as f64;

pub fn run(args: CalibrateArgs) -> anyhow::Result<ExitCode> {
    if args.heldout {
        return run_heldout(&args);
    }
    let kernel = KernelModel::parse(&args.kernel)?;
    let (points, source) = load(kernel, &args.data)?;
    if args.observations {
        return print_observations(&points);
    }
    let fit = fit_all(&points);
    if let Some(path) = &args.write {
        // spill_fitted.rs holds every kernel's models: refit from all committed data.
        let mut all = Vec::new();
        for k in [KernelModel::JaxRpa, KernelModel::Kernelgen] {
            all.extend(load(k, &[])?.0);
        }
        std::fs::write(path, render_fitted(&fit_all(&all).models))
            .with_context(|| path.display().to_string())?;
        eprintln!("wrote {} (rebuild to use it)", path.display());
    }
    let agree = agreement(&points);
    let loo = args.cross_validate.then(|| leave_one_out(&points));
    if args.json {
        let out = serde_json::json!({
            "models": fit.models,
            "band_widths": fit.widths,
            "skipped": fit.skipped,
            "agreement": agree,
            "leave_one_out": loo,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::Ok);
    }
    println!("{} points from {source}", points.len());
    let form = kernelgen::vmem::spill::SpillForm::of(kernel);
    println!("fit: {}", form.formula());
    let base = form.band_base().name();
    println!(
        "{:<5} {:>6}  {:<69} {:>22} {:>22}",
        "target",
        "points",
        format!("c0 .. c{}", kernelgen::vmem::spill::N_FEATURES - 1),
        format!("band above: x {base} +"),
        format!("band below: x {base} +")
    );
    for (_, t, m) in &fit.models {
        let coef: Vec<String> = m.coef.iter().map(|c| format!("{c:.3}")).collect();
        println!(
            "{t:<5} {:>6}  {:<69} {:>12.1}% {:>6.2}M {:>12.1}% {:>6.2}M",
            m.points,
            coef.join(" "),
            m.under * 100.0,
            m.under_abs / MIB,
            m.over * 100.0,
            m.over_abs / MIB
        );
    }
    println!("the band at the fit's own points, relative to the estimated total (estimates of at least a quarter of the default limit):");
    println!(
        "{:<5} {:>6} {:>7} {:>8} {:>8} {:>8}",
        "target", "floor", "points", "median +", "median -", "widest"
    );
    for (_, t, w) in &fit.widths {
        println!(
            "{t:<5} {:>5.0}M {:>7} {:>7.1}% {:>7.1}% {:>+5.0}%/-{:.0}%",
            w.floor as f64 / MIB,
            w.points,
            w.median_up * 100.0,
            w.median_down * 100.0,
            w.max_up * 100.0,
            w.max_down * 100.0
        );
    }
    for (why, n) in &fit.skipped {
        println!("not fitted: {n} points: {why}");
    }
    println!(
        "agreement with the compiler (committed constants; {} compiler errors not compared):",
        agree.compiler_errors
    );
    print_groups(&agree);
    if let Some(l) = loo {
        println!(
            "leave-one-out (each point judged by a fit without it): {} agree, {} uncertain, {} disagree",
            l.agree, l.uncertain, l.disagree
        );
    }
    if args.per_point {
        print_points(&points);
    }
    for d in &agree.disagree {
        println!(
            "  DISAGREE {} {}: model {} ({}), compiler {} (min limit {:?})",
            d.target,
            d.config,
            d.model,
            fmt_bytes(d.model_total),
            d.oracle,
            d.oracle_min_limit
        );
    }
    Ok(ExitCode::Ok)
}

/// One line per oracle point: compiler vs checker at the target's default limit.
fn print_points(points: &[OraclePoint]) {
    let mib = |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{:.2}", b as f64 / MIB));
    println!(
        "{:<6} {:<34} {:<9} {:>9} {:>9} {:>9}  checker",
        "target",
        "config (q/kv heads, head_dim, page, q, kv)",
        "compiler",
        "oom MiB",
        "min MiB",
        "est MiB"
    );
    for p in points {
        let r = &p.request;
        let c = &r.config;
        let g = c.geometry();
        let name = format!(
            "{}/{} d{} P{} q{} kv{} {}",
            g.num_q_heads,
            g.num_kv_heads,
            g.head_dim,
            c.page_size(),
            c.q_block(),
            c.kv_pages_block(),
            c.dtype()
        );
        let checked = Target::find(&r.target)
            .map_err(|e| e.to_string())
            .and_then(|target| {
                check(&CheckRequest {
                    cfg: c,
                    target,
                    kernel: r.kernel,
                    vmem_limit: r.vmem_limit_bytes,
                })
                .map_err(|e| e.to_string())
            });
        let (est, verdict) = match checked {
            Ok(rep) => (Some(rep.total_bytes), rep.verdict.to_string()),
            Err(e) => (None, format!("refused: {e}")),
        };
        println!(
            "{:<6} {:<34} {:<9} {:>9} {:>9} {:>9}  {verdict}",
            r.target,
            name,
            p.response.verdict.to_string(),
            mib(p.response.size_bytes),
            mib(p.response.min_limit_bytes),
            mib(est)
        );
    }
}
