//! Calibration against the real TPU compiler: oracle points -> spill fit, and the agreement
//! between the model's verdict and the compiler's on every committed point.

use super::spill::{self, Observation, SpillFeatures, SpillModel};
use super::{check, CheckRequest, KernelModel, Verdict};
use crate::target::Target;
use crate::tpu::oracle::{parse_points, OraclePoint, Unreadable};
use serde::Serialize;
use std::collections::BTreeMap;

/// Measurements are bisected in 64 KiB steps (kernelgen/oracle/tpu_oracle.py).
pub const BISECT_STEP: f64 = 65536.0;

/// The committed data of each kernel model (`kernelgen/data/`), embedded so `kernelgen
/// calibrate` runs from any directory.
pub fn committed_data(kernel: KernelModel) -> (&'static str, &'static str) {
    match kernel {
        KernelModel::JaxRpa => (
            "kernelgen/data/vmem_oracle_jax_rpa.jsonl",
            include_str!("../../data/vmem_oracle_jax_rpa.jsonl"),
        ),
        KernelModel::Kernelgen => (
            "kernelgen/data/vmem_oracle_kernelgen.jsonl",
            include_str!("../../data/vmem_oracle_kernelgen.jsonl"),
        ),
    }
}

/// The held-out split (`kernelgen/data/vmem_oracle_heldout.jsonl`): both kernels on v5e, v5p,
/// v6e and v7x, GQA groups 1-16 and head_dim 64-256, a third at raised limits (`oracle/sweep.py
/// --grid heldout --seed 7`). No fit reads it, and the fit data never holds one of its configs at
/// any limit (`--grid wide --exclude` it). CI gates the checker's verdicts on it.
pub const HELDOUT: (&str, &str) = (
    "kernelgen/data/vmem_oracle_heldout.jsonl",
    include_str!("../../data/vmem_oracle_heldout.jsonl"),
);

/// The committed points of `kernel` (every line parses: `vmem_agreement` checks it).
pub fn committed_points(kernel: KernelModel) -> (Vec<OraclePoint>, Unreadable) {
    parse_points(committed_data(kernel).1)
}

/// The fitted models, and the points the fit could not use, counted by reason.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Fit {
    pub models: Vec<(KernelModel, &'static str, SpillModel)>,
    /// Each model's band at its own points (estimates of at least a quarter of the target's
    /// default scoped limit).
    pub widths: Vec<(KernelModel, &'static str, spill::BandWidths)>,
    pub skipped: BTreeMap<String, usize>,
}

/// One oracle point in the fit's terms: what `kernelgen calibrate --observations` prints, one
/// JSON line each, for trying other spill features outside the binary.
#[derive(Clone, Debug, Serialize)]
pub struct PointObservation {
    pub kernel: KernelModel,
    pub target: &'static str,
    pub features: SpillFeatures,
    /// The exact buffers' sum.
    pub explicit_bytes: u64,
    /// The limit the point was compiled with (the target's default unless it names one).
    pub limit_bytes: u64,
    pub compiler: String,
    pub min_limit_bytes: Option<u64>,
}

/// `p` accounted by its kernel's model on its target, or why not.
pub fn observe(p: &OraclePoint) -> Result<PointObservation, String> {
    let r = &p.request;
    let t = Target::find(&r.target).map_err(|e| e.to_string())?;
    let a = r
        .kernel
        .account(&r.config, &t)
        .map_err(|e| format!("not accounted: {e}"))?;
    Ok(PointObservation {
        kernel: r.kernel,
        target: t.name,
        features: a.features,
        explicit_bytes: a.buffers.iter().map(|b| b.bytes).sum(),
        limit_bytes: r.vmem_limit_bytes.unwrap_or(t.default_scoped_vmem_bytes),
        compiler: p.response.verdict.to_string(),
        min_limit_bytes: p.response.min_limit_bytes,
    })
}

/// Fits one spill model per (kernel, target) from the points with a measured minimum limit;
/// the others are counted in [`Fit::skipped`] with the reason.
pub fn fit_all(points: &[OraclePoint]) -> Fit {
    let mut groups: BTreeMap<(KernelModel, &'static str), Vec<Observation>> = BTreeMap::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    for p in points {
        let Some(min_limit) = p.response.min_limit_bytes else {
            let why = format!(
                "no measured minimum limit (compiler: {})",
                p.response.verdict
            );
            *skipped.entry(why).or_default() += 1;
            continue;
        };
        let o = match observe(p) {
            Ok(o) => o,
            Err(why) => {
                *skipped.entry(why).or_default() += 1;
                continue;
            }
        };
        groups
            .entry((o.kernel, o.target))
            .or_default()
            .push(Observation {
                features: o.features,
                explicit: o.explicit_bytes as f64,
                min_limit: min_limit as f64,
            });
    }
    let mut fit = Fit {
        skipped,
        ..Fit::default()
    };
    for ((k, target), obs) in groups {
        let floor = Target::find(target)
            .ok()
            .map(|t| t.default_scoped_vmem_bytes / 4);
        // an unknown target has no limit to be near: its band is narrowest on average
        let near = floor.map_or(f64::INFINITY, |f| f as f64);
        let Some(m) = spill::fit(spill::SpillForm::of(k), &obs, BISECT_STEP, near) else {
            continue;
        };
        let floor = floor.unwrap_or(0);
        fit.widths.push((k, target, m.widths(&obs, floor)));
        fit.models.push((k, target, m));
    }
    fit
}

/// Rust source of `spill_fitted.rs` for `models`.
pub fn render_fitted(models: &[(KernelModel, &'static str, SpillModel)]) -> String {
    let mut s = String::from(
        "//! Fitted spill models, written by `kernelgen calibrate --write kernelgen/src/vmem/spill_fitted.rs` from the committed oracle data.\n\
         //! Do not edit by hand: `spill_constants_match_a_refit_of_the_data` keeps them equal to a refit.\n\n\
         use super::spill::{SpillForm, SpillModel};\nuse super::KernelModel;\n\n\
         pub const FITTED: &[(KernelModel, &str, SpillModel)] = &[\n",
    );
    for (k, t, m) in models {
        let coef: Vec<String> = m.coef.iter().map(|c| format!("{c:e}")).collect();
        s.push_str(&format!(
            "    (\n        KernelModel::{k:?},\n        \"{t}\",\n        SpillModel {{\n            form: SpillForm::{:?},\n            coef: [{}],\n            under: {:e},\n            under_abs: {:e},\n            over: {:e},\n            over_abs: {:e},\n            points: {},\n            max_rows: {},\n            max_keys: {},\n        }},\n    ),\n",
            m.form,
            coef.join(", "),
            m.under,
            m.under_abs,
            m.over,
            m.over_abs,
            m.points,
            m.max_rows,
            m.max_keys
        ));
    }
    s.push_str("];\n");
    s
}

/// The compiler's verdict at the default limit, in the model's terms.
pub fn oracle_verdict(p: &OraclePoint) -> Option<Verdict> {
    crate::tpu::compiler_verdict(&p.response)
}

/// One point where model and compiler disagree.
#[derive(Clone, Debug, Serialize)]
pub struct Disagreement {
    pub target: String,
    pub config: String,
    pub model: Verdict,
    pub oracle: Verdict,
    pub model_total: u64,
    pub oracle_min_limit: Option<u64>,
}

/// Model vs compiler over a set of points.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Agreement {
    pub points: usize,
    pub agree: usize,
    pub uncertain: usize,
    pub disagree: Vec<Disagreement>,
    /// Points the compiler rejected for reasons other than memory (not compared).
    pub compiler_errors: usize,
    pub targets: BTreeMap<String, usize>,
    /// Per `kernel target`: (points, agree, uncertain, disagree).
    pub groups: BTreeMap<String, [usize; 4]>,
}

/// Checks every point at the limit it was compiled with (the target's default unless the point
/// names one) with the committed spill models.
pub fn agreement(points: &[OraclePoint]) -> Agreement {
    let mut a = Agreement::default();
    for p in points {
        let r = &p.request;
        let (Some(oracle), Ok(t)) = (oracle_verdict(p), Target::find(&r.target)) else {
            a.compiler_errors += 1;
            continue;
        };
        let Ok(rep) = check(&CheckRequest {
            cfg: &r.config,
            target: t,
            kernel: r.kernel,
            vmem_limit: r.vmem_limit_bytes,
        }) else {
            a.compiler_errors += 1;
            continue;
        };
        a.points += 1;
        *a.targets.entry(t.name.to_string()).or_default() += 1;
        let g = a
            .groups
            .entry(format!("{} {}", r.kernel.name(), t.name))
            .or_default();
        g[0] += 1;
        match rep.verdict {
            Verdict::Uncertain => {
                a.uncertain += 1;
                g[2] += 1;
            }
            v if v == oracle => {
                a.agree += 1;
                g[1] += 1;
            }
            v => {
                g[3] += 1;
                a.disagree.push(Disagreement {
                    target: t.name.into(),
                    config: r.config.to_string(),
                    model: v,
                    oracle,
                    model_total: rep.total_bytes,
                    oracle_min_limit: p.response.min_limit_bytes,
                })
            }
        }
    }
    a
}

/// Leave-one-out tallies: each point judged by a model fitted without it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LeaveOneOut {
    pub agree: usize,
    pub uncertain: usize,
    pub disagree: usize,
}

/// Leave-one-out: each point judged by a model fitted without it (an estimate of how the
/// checker does on configs it was not calibrated on).
pub fn leave_one_out(points: &[OraclePoint]) -> LeaveOneOut {
    let mut out = LeaveOneOut::default();
    for (i, p) in points.iter().enumerate() {
        let r = &p.request;
        let (Some(oracle), Ok(t)) = (oracle_verdict(p), Target::find(&r.target)) else {
            continue;
        };
        let Ok(a) = r.kernel.account(&r.config, &t) else {
            continue;
        };
        let others: Vec<OraclePoint> = points
            .iter()
            .enumerate()
            .filter(|(j, q)| {
                *j != i && q.request.target == r.target && q.request.kernel == r.kernel
            })
            .map(|(_, q)| q.clone())
            .collect();
        let Some((_, _, m)) = fit_all(&others).models.into_iter().next() else {
            continue;
        };
        let explicit: u64 = a.buffers.iter().map(|b| b.bytes).sum();
        let total = explicit as f64 + m.predict(&a.features);
        let (lower, upper) = m.band(total, explicit as f64);
        let vmem = super::verdict(lower, Some(upper), t.default_scoped_vmem_bytes);
        let smem = super::smem::account(&r.config, &t, r.kernel).verdict;
        match super::worst(&[vmem, smem]) {
            Verdict::Uncertain => out.uncertain += 1,
            v if v == oracle => out.agree += 1,
            _ => out.disagree += 1,
        }
    }
    out
}
