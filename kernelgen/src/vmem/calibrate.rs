//! Calibration against the real TPU compiler: oracle points -> spill fit, and the agreement
//! between the model's verdict and the compiler's on every committed point.

use super::spill::{self, Observation, SpillModel};
use super::{check, CheckRequest, KernelModel, Verdict};
use crate::config::{Dtype, Geometry, KernelConfig, KernelParams};
use crate::target::Target;
use serde::Serialize;
use std::collections::BTreeMap;
use verify::oracle::{OraclePoint, OracleRequest};

/// Measurements are bisected in 64 KiB steps (verify/oracle/tpu_oracle.py).
pub const BISECT_STEP: f64 = 65536.0;

/// The committed data file of each kernel model.
pub fn data_file(kernel: KernelModel) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../verify/data")
        .join(format!(
            "vmem_oracle_{}.jsonl",
            kernel.name().replace('-', "_")
        ))
}

/// The config an oracle request describes.
pub fn config_of(r: &OracleRequest) -> Result<KernelConfig, String> {
    let dtype = Dtype::parse(&r.dtype).map_err(|e| e.to_string())?;
    KernelConfig::new(KernelParams {
        geometry: Geometry {
            num_q_heads: r.num_q_heads,
            num_kv_heads: r.num_kv_heads,
            head_dim: r.head_dim,
        },
        dtype,
        page_size: r.page_size,
        q_block: r.q_block,
        kv_pages_block: r.kv_pages_block,
        max_num_tokens: r.max_num_tokens,
        max_num_seqs: r.max_num_seqs,
        pages_per_seq: r.pages_per_seq,
        total_pages: r.total_pages,
        sm_scale: None,
        sliding_window: None,
        soft_cap: None,
        schedule: Default::default(),
    })
    .map_err(|e| e.to_string())
}

fn kernel_of(p: &OraclePoint) -> Option<KernelModel> {
    KernelModel::parse(&p.request.kernel).ok()
}

/// Fits one spill model per (kernel, target) from points with a measured minimum limit.
pub fn fit_all(points: &[OraclePoint]) -> Vec<(spill::Kernel, &'static str, SpillModel)> {
    let mut groups: BTreeMap<(&'static str, &'static str), (spill::Kernel, Vec<Observation>)> =
        BTreeMap::new();
    for p in points {
        let (Some(kernel), Some(min_limit)) = (kernel_of(p), p.response.min_limit_bytes) else {
            continue;
        };
        let (Ok(t), Ok(cfg)) = (Target::find(&p.request.target), config_of(&p.request)) else {
            continue;
        };
        let Ok(a) = kernel.account(&cfg, &t) else {
            continue;
        };
        let explicit: u64 = a.buffers.iter().map(|b| b.bytes).sum();
        groups
            .entry((kernel.name(), t.name))
            .or_insert_with(|| (a.spill_kernel, Vec::new()))
            .1
            .push(Observation {
                features: a.features,
                explicit: explicit as f64,
                min_limit: min_limit as f64,
            });
    }
    groups
        .into_iter()
        .filter_map(|((_, target), (k, obs))| spill::fit(&obs, BISECT_STEP).map(|m| (k, target, m)))
        .collect()
}

/// Rust source of `spill_fitted.rs` for `models`.
pub fn render_fitted(models: &[(spill::Kernel, &'static str, SpillModel)]) -> String {
    let mut s = String::from(
        "//! Fitted spill models, written by `kernelgen calibrate --write` from the committed oracle data.\n\
         //! Do not edit by hand: `spill_constants_match_a_refit_of_the_data` keeps them equal to a refit.\n\n\
         use super::spill::{Kernel, SpillModel};\n\n\
         pub const FITTED: &[(Kernel, &str, SpillModel)] = &[\n",
    );
    for (k, t, m) in models {
        let coef: Vec<String> = m.coef.iter().map(|c| format!("{c:e}")).collect();
        s.push_str(&format!(
            "    (\n        Kernel::{k:?},\n        \"{t}\",\n        SpillModel {{\n            coef: [{}],\n            under: {:e},\n            over: {:e},\n            abs_err: {:e},\n            points: {},\n            max_rows: {},\n            max_keys: {},\n        }},\n    ),\n",
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
        let (Some(kernel), Some(oracle)) = (kernel_of(p), oracle_verdict(p)) else {
            a.compiler_errors += 1;
            continue;
        };
        let (Ok(t), Ok(cfg)) = (Target::find(&p.request.target), config_of(&p.request)) else {
            a.compiler_errors += 1;
            continue;
        };
        let Ok(r) = check(&CheckRequest {
            cfg: &cfg,
            target: t,
            kernel,
            vmem_limit: None,
        }) else {
            a.compiler_errors += 1;
            continue;
        };
        a.points += 1;
        *a.targets.entry(t.name.to_string()).or_default() += 1;
        match r.verdict {
            Verdict::Uncertain => a.uncertain += 1,
            v if v == oracle => a.agree += 1,
            v => a.disagree.push(Disagreement {
                target: t.name.into(),
                config: cfg.to_string(),
                model: v,
                oracle,
                model_total: r.total_bytes,
                oracle_min_limit: p.response.min_limit_bytes,
            }),
        }
    }
    a
}

/// Leave-one-out: each point judged by a model fitted without it (an estimate of how the
/// checker does on configs it was not calibrated on). Returns (agree, uncertain, disagree).
pub fn leave_one_out(points: &[OraclePoint]) -> (usize, usize, usize) {
    let (mut agree, mut uncertain, mut disagree) = (0, 0, 0);
    for (i, p) in points.iter().enumerate() {
        let (Some(kernel), Some(oracle)) = (kernel_of(p), oracle_verdict(p)) else {
            continue;
        };
        let (Ok(t), Ok(cfg)) = (Target::find(&p.request.target), config_of(&p.request)) else {
            continue;
        };
        let Ok(a) = kernel.account(&cfg, &t) else {
            continue;
        };
        let others: Vec<OraclePoint> = points
            .iter()
            .enumerate()
            .filter(|(j, q)| {
                *j != i
                    && q.request.target == p.request.target
                    && q.request.kernel == p.request.kernel
            })
            .map(|(_, q)| q.clone())
            .collect();
        let Some((_, _, m)) = fit_all(&others).into_iter().next() else {
            continue;
        };
        let explicit: u64 = a.buffers.iter().map(|b| b.bytes).sum();
        let total = explicit as f64 + m.predict(&a.features);
        let (lower, upper) = m.band(total, explicit as f64);
        let vmem = super::verdict(lower, Some(upper), t.default_scoped_vmem_bytes);
        let smem = super::smem::account(&cfg, &t, kernel).verdict;
        match super::worst(&[vmem, smem]) {
            Verdict::Uncertain => uncertain += 1,
            v if v == oracle => agree += 1,
            _ => disagree += 1,
        }
    }
    (agree, uncertain, disagree)
}
