//! `kernelgen bench check`: the VMEM checker's throughput (configs/s) over a grid of configs
//! and targets, optionally beside one real TPU compile of the same kind in the same run.

use super::BenchError;
use crate::config::{Dtype, Geometry, KernelConfig, KernelParams};
use crate::target::{Target, TARGETS};
use crate::tpu::{checked_config_request, Oracle};
use crate::vmem::{check, CheckRequest, KernelModel, Verdict};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// Passes over the grid.
    pub passes: usize,
    /// Configs in the grid (the same for every kernel).
    pub grid: usize,
    /// One row per kernel model, each timed over the whole grid `passes` times.
    pub kernels: Vec<KernelThroughput>,
    /// One real TPU compile of a grid config (JAX's kernel), when asked for: its seconds and
    /// verdict.
    pub oracle: Option<(f64, String)>,
}

/// The checker's speed on one kernel model's formula.
#[derive(Clone, Debug, Serialize)]
pub struct KernelThroughput {
    pub kernel: KernelModel,
    /// Configs checked (grid size x passes).
    pub configs: usize,
    pub seconds: f64,
    pub configs_per_s: f64,
    /// Per pass: fit, do not fit, uncertain.
    pub verdicts: [usize; 3],
    /// Per pass: configs the kernel cannot run (`check` refuses them with a clear error, which
    /// is part of the work timed).
    pub unsupported: usize,
}

/// 5 targets x 12 head layouts x 5 page sizes x 5 q_blocks x 7 kv_pages_blocks x 2 dtypes.
pub fn grid() -> Vec<(KernelConfig, Target)> {
    let heads = [
        (8, 8),
        (16, 16),
        (32, 32),
        (16, 8),
        (24, 8),
        (32, 8),
        (64, 8),
        (32, 4),
        (8, 1),
        (4, 1),
        (8, 2),
        (16, 2),
    ];
    let mut out = Vec::new();
    for t in TARGETS {
        for &(q, kv) in &heads {
            for page in [16, 32, 64, 128, 256] {
                for bq in [8, 16, 32, 64, 128] {
                    for bkv in [1, 2, 4, 8, 16, 32, 64] {
                        for dtype in [Dtype::Bf16, Dtype::F32] {
                            let p = KernelParams {
                                geometry: Geometry {
                                    num_q_heads: q,
                                    num_kv_heads: kv,
                                    head_dim: 128,
                                },
                                dtype,
                                page_size: page,
                                q_block: bq,
                                kv_pages_block: bkv,
                                max_num_tokens: 2048,
                                max_num_seqs: 64,
                                pages_per_seq: 64,
                                total_pages: 4096,
                                sm_scale: None,
                                sliding_window: None,
                                soft_cap: None,
                                schedule: Default::default(),
                            };
                            out.push((KernelConfig::new(p).expect("grid configs are valid"), *t));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Checks the grid `passes` times with each of `kernels` (a kernel named twice is timed once);
/// with `oracle`, also times one real compile (`on_setup` hears about a first-time venv install).
pub fn run(
    passes: usize,
    kernels: &[KernelModel],
    oracle: bool,
    on_setup: &mut dyn FnMut(&str),
) -> Result<CheckReport, BenchError> {
    if passes == 0 {
        return Err(BenchError::Options("--passes must be >= 1".into()));
    }
    if kernels.is_empty() {
        return Err(BenchError::Options(
            "--kernel: give at least one kernel".into(),
        ));
    }
    let grid = grid();
    let mut timed: Vec<KernelThroughput> = Vec::new();
    for &k in kernels {
        if !timed.iter().any(|t| t.kernel == k) {
            timed.push(throughput(&grid, k, passes));
        }
    }
    let oracle = if oracle {
        Some(one_compile(&grid, on_setup)?)
    } else {
        None
    };
    Ok(CheckReport {
        passes,
        grid: grid.len(),
        kernels: timed,
        oracle,
    })
}

fn throughput(
    grid: &[(KernelConfig, Target)],
    kernel: KernelModel,
    passes: usize,
) -> KernelThroughput {
    pass(grid, kernel); // untimed: warms the caches and the allocator
    let mut counts = [0usize; 4];
    let start = Instant::now();
    for _ in 0..passes {
        for (c, n) in counts.iter_mut().zip(pass(grid, kernel)) {
            *c += n;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let configs = grid.len() * passes;
    let [fit, no, unsure, unsupported] = counts.map(|c| c / passes);
    KernelThroughput {
        kernel,
        configs,
        seconds,
        configs_per_s: configs as f64 / seconds,
        verdicts: [fit, no, unsure],
        unsupported,
    }
}

/// One pass over the grid: fits, does not fit, uncertain, unsupported.
fn pass(grid: &[(KernelConfig, Target)], kernel: KernelModel) -> [usize; 4] {
    let mut counts = [0usize; 4];
    for (cfg, t) in grid {
        let r = check(&CheckRequest {
            cfg,
            target: *t,
            kernel,
            vmem_limit: None,
        });
        counts[match r.map(|r| r.verdict) {
            Ok(Verdict::Fits) => 0,
            Ok(Verdict::DoesNotFit) => 1,
            Ok(Verdict::Uncertain) => 2,
            Err(_) => 3,
        }] += 1;
    }
    counts
}

/// Seconds and verdict of one real TPU compile of llama3-8b at page 64, q16 kv16 on v5p (JAX's
/// kernel), after a first compile that pays jax's warm-up.
fn one_compile(
    grid: &[(KernelConfig, Target)],
    on_setup: &mut dyn FnMut(&str),
) -> Result<(f64, String), BenchError> {
    let (cfg, t) = grid
        .iter()
        .find(|(c, t)| {
            t.name == "v5p" && c.page_size() == 64 && c.q_block() == 16 && c.kv_pages_block() == 16
        })
        .expect("the grid holds llama3-8b at page 64, q16 kv16 on v5p");
    let mut o = Oracle::start(on_setup).map_err(crate::Error::from)?;
    let req = checked_config_request(cfg, t, KernelModel::JaxRpa, None)?;
    o.compile(&req).map_err(crate::Error::from)?;
    let t0 = Instant::now();
    let resp = o.compile(&req).map_err(crate::Error::from)?;
    Ok((t0.elapsed().as_secs_f64(), resp.verdict.to_string()))
}
