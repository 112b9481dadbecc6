//! `kernelgen calibrate`: refit the spill allowance to committed oracle data.

use super::exit;
use anyhow::Context;
use clap::Args;
use kernelgen::target::fmt_bytes;
use kernelgen::vmem::calibrate::{agreement, data_file, fit_all, render_fitted};
use kernelgen::vmem::KernelModel;
use std::path::PathBuf;

/// Fit the VMEM spill allowance to oracle data and report model/compiler agreement
#[derive(Args, Debug)]
#[command(
    after_help = "Data: JSON lines from verify/oracle/sweep.py (default: verify/data/vmem_oracle_<kernel>.jsonl). \
Prints the fitted coefficients per target, their worst relative error, and how often the model's verdict at \
the default limit agrees with the compiler's. --write regenerates kernelgen/src/vmem/spill_fitted.rs (run \
from the source tree, then rebuild)."
)]
pub struct CalibrateArgs {
    /// Kernel model: jax-rpa or kernelgen
    #[arg(long, default_value = "jax-rpa")]
    pub kernel: String,
    /// Oracle data files [default: the committed file for --kernel]
    #[arg(long)]
    pub data: Vec<PathBuf>,
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
        "{:<5} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "target", "points", "c0", "scores", "kv", "h*scores", "h*kv", "rel err"
    );
    for (_, t, m) in &models {
        println!(
            "{t:<5} {:>6} {:>10} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>7.1}%",
            m.points,
            fmt_bytes(m.coef[0].max(0.0) as u64),
            m.coef[1],
            m.coef[2],
            m.coef[3],
            m.coef[4],
            m.rel_err * 100.0
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
