//! `kernelgen calibrate`: refit the spill allowance to committed oracle data.

use super::exit;
use anyhow::Context;
use clap::Args;
use kernelgen::target::fmt_bytes;
use kernelgen::vmem::calibrate::{agreement, data_file, fit_all, leave_one_out, render_fitted};
use kernelgen::vmem::KernelModel;
use std::path::PathBuf;

/// Fit the VMEM spill allowance to oracle data and report model/compiler agreement
#[derive(Args, Debug)]
#[command(
    after_help = "Data: JSON lines from verify/oracle/sweep.py (default: verify/data/vmem_oracle_<kernel>.jsonl). \
Prints the fitted coefficients per target, their worst relative error, and how often the model's verdict at \
the default limit agrees with the compiler's. --write regenerates kernelgen/src/vmem/spill_fitted.rs (run \
from the source tree, then rebuild) from every kernel's committed data."
)]
pub struct CalibrateArgs {
    /// Kernel model: jax-rpa or kernelgen
    #[arg(long, default_value = "jax-rpa")]
    pub kernel: String,
    /// Oracle data files [default: the committed file for --kernel]
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Also judge each point by a model fitted without it (leave-one-out)
    #[arg(long)]
    pub cross_validate: bool,
    /// Also print every point: the compiler's verdict, its reported size and smallest fitting
    /// limit, beside the checker's estimate and verdict
    #[arg(long)]
    pub per_point: bool,
    /// Write the fitted constants into kernelgen/src/vmem/spill_fitted.rs
    #[arg(long)]
    pub write: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CalibrateArgs) -> anyhow::Result<i32> {
    let kernel = KernelModel::parse(&args.kernel)?;
    let files = if args.data.is_empty() {
        vec![data_file(kernel)]
    } else {
        args.data
    };
    let mut points = Vec::new();
    for f in &files {
        points.extend(verify::oracle::read_points(f).map_err(anyhow::Error::msg)?);
    }
    let models = fit_all(&points);
    if args.write {
        // spill_fitted.rs holds every kernel's models: refit from all committed data.
        let mut all = Vec::new();
        for k in [KernelModel::JaxRpa, KernelModel::Kernelgen] {
            let f = data_file(k);
            if f.exists() {
                all.extend(verify::oracle::read_points(&f).map_err(anyhow::Error::msg)?);
            }
        }
        let models = fit_all(&all);
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/vmem/spill_fitted.rs");
        std::fs::write(&path, render_fitted(&models))
            .with_context(|| path.display().to_string())?;
        eprintln!("wrote {} (rebuild to use it)", path.display());
    }
    let agree = agreement(&points);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"models": models, "agreement": agree})
            )?
        );
        return Ok(exit::OK);
    }
    println!(
        "{} points from {}",
        points.len(),
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "{:<5} {:>6}  {:<62} {:>7} {:>7}",
        "target",
        "points",
        "ln spill = c0 + c1 ln h + c2 ln r + c3 ln k + c4 odd + c5 f32 + c6 ln r ln k",
        "under",
        "over"
    );
    for (_, t, m) in &models {
        let coef: Vec<String> = m.coef.iter().map(|c| format!("{c:.3}")).collect();
        println!(
            "{t:<5} {:>6}  {:<62} {:>6.1}% {:>6.1}%",
            m.points,
            coef.join(" "),
            m.under * 100.0,
            m.over * 100.0
        );
    }
    println!(
        "agreement with the compiler (committed constants): {} points, {} agree, {} uncertain ({:.1}%), {} disagree, {} compiler errors not compared",
        agree.points,
        agree.agree,
        agree.uncertain,
        100.0 * agree.uncertain as f64 / agree.points.max(1) as f64,
        agree.disagree.len(),
        agree.compiler_errors
    );
    if args.cross_validate {
        let (a, u, d) = leave_one_out(&points);
        println!("leave-one-out (each point judged by a fit without it): {a} agree, {u} uncertain, {d} disagree");
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
    Ok(exit::OK)
}

/// One line per oracle point: compiler vs checker at the target's default limit.
fn print_points(points: &[verify::oracle::OraclePoint]) {
    use kernelgen::target::Target;
    use kernelgen::vmem::calibrate::config_of;
    use kernelgen::vmem::{check, CheckRequest};
    let mib =
        |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{:.2}", b as f64 / 1048576.0));
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
        let name = format!(
            "{}/{} d{} P{} q{} kv{} {}",
            r.num_q_heads,
            r.num_kv_heads,
            r.head_dim,
            r.page_size,
            r.q_block,
            r.kv_pages_block,
            if r.dtype == "float32" { "f32" } else { "bf16" }
        );
        let checked = match (
            KernelModel::parse(&r.kernel),
            Target::find(&r.target),
            config_of(r),
        ) {
            (Ok(kernel), Ok(target), Ok(cfg)) => check(&CheckRequest {
                cfg: &cfg,
                target,
                kernel,
                vmem_limit: None,
            })
            .map_err(|e| e.to_string()),
            _ => Err("invalid request".to_string()),
        };
        let (est, verdict) = match checked {
            Ok(rep) => (Some(rep.total_bytes), rep.verdict.to_string()),
            Err(e) => (None, format!("refused: {e}")),
        };
        println!(
            "{:<6} {:<34} {:<9} {:>9} {:>9} {:>9}  {verdict}",
            r.target,
            name,
            p.response.verdict,
            mib(p.response.size_bytes),
            mib(p.response.min_limit_bytes),
            mib(est)
        );
    }
}
