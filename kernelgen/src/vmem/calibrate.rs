//! Calibration against the real TPU compiler: oracle points -> spill fit, and the agreement
//! between the model's verdict and the compiler's on every committed point.

use super::spill::{self, Observation, SpillModel};
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

/// The committed points of `kernel` (every line parses: `vmem_agreement` checks it).
pub fn committed_points(kernel: KernelModel) -> (Vec<OraclePoint>, Unreadable) {
    parse_points(committed_data(kernel).1)
}

/// The fitted models, and the points the fit could not use, counted by reason.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Fit {
    pub models: Vec<(KernelModel, &'static str, SpillModel)>,
    pub skipped: BTreeMap<String, usize>,
}

/// Fits one spill model per (kernel, target) from the points with a measured minimum limit;
/// the others are counted in [`Fit::skipped`] with the reason.
pub fn fit_all(points: &[OraclePoint]) -> Fit {
    let mut groups: BTreeMap<(KernelModel, &'static str), Vec<Observation>> = BTreeMap::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    for p in points {
        let r = &p.request;
        let Some(min_limit) = p.response.min_limit_bytes else {
            let why = format!(
                "no measured minimum limit (compiler: {})",
                p.response.verdict
            );
            *skipped.entry(why).or_default() += 1;
            continue;
        };
        let t = match Target::find(&r.target) {
            Ok(t) => t,
            Err(e) => {
                *skipped.entry(e.to_string()).or_default() += 1;
                continue;
            }
        };
        let a = match r.kernel.account(&r.config, &t) {
            Ok(a) => a,
            Err(e) => {
                *skipped.entry(format!("not accounted: {e}")).or_default() += 1;
                continue;
            }
        };
        let explicit: u64 = a.buffers.iter().map(|b| b.bytes).sum();
        groups
            .entry((r.kernel, t.name))
            .or_default()
            .push(Observation {
                features: a.features,
                explicit: explicit as f64,
                min_limit: min_limit as f64,
            });
    }
    let models = groups
        .into_iter()
        .filter_map(|((k, target), obs)| spill::fit(&obs, BISECT_STEP).map(|m| (k, target, m)))
        .collect();
    Fit { models, skipped }
}

/// Rust source of `spill_fitted.rs` for `models`.
pub fn render_fitted(models: &[(KernelModel, &'static str, SpillModel)]) -> String {
    let mut s = String::from(
        "//! Fitted spill models, written by `kernelgen calibrate --write kernelgen/src/vmem/spill_fitted.rs` from the committed oracle data.\n\
         //! Do not edit by hand: `spill_constants_match_a_refit_of_the_data` keeps them equal to a refit.\n\n\
         use super::spill::SpillModel;\nuse super::KernelModel;\n\n\
         pub const FITTED: &[(KernelModel, &str, SpillModel)] = &[\n",
    );
    for (k, t, m) in models {
        let coef: Vec<String> = m.coef.iter().map(|c| format!("{c:e}")).collect();
        s.push_str(&format!(
            "    (\n        KernelModel::{k:?},\n        \"{t}\",\n        SpillModel {{\n            coef: [{}],\n            under: {:e},\n            over: {:e},\n            abs_err: {:e},\n            points: {},\n            max_rows: {},\n            max_keys: {},\n        }},\n    ),\n",
            coef.join(", "),
            m.under,
            m.over,
            m.abs_err,
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
}

/// Checks every point at its default limit with the committed spill models.
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
            vmem_limit: None,
        }) else {
            a.compiler_errors += 1;
            continue;
        };
        a.points += 1;
        *a.targets.entry(t.name.to_string()).or_default() += 1;
        match rep.verdict {
            Verdict::Uncertain => a.uncertain += 1,
            v if v == oracle => a.agree += 1,
            v => a.disagree.push(Disagreement {
                target: t.name.into(),
                config: r.config.to_string(),
                model: v,
                oracle,
                model_total: rep.total_bytes,
                oracle_min_limit: p.response.min_limit_bytes,
            }),
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
