//! Nearest configs that fit: what to change when a config does not.

use super::{check, limit_that_fits, CheckRequest, Verdict, VmemReport};
use crate::config::{KernelConfig, KernelParams};
use crate::target::fmt_bytes;
use serde::Serialize;

/// One alternative: the flag to change, its value, and the model's account of the result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Suggestion {
    pub change: String,
    pub total_bytes: u64,
    pub limit_bytes: u64,
}

fn fits(req: &CheckRequest, cfg: &KernelConfig) -> Option<VmemReport> {
    let r = check(&CheckRequest { cfg, ..req.clone() }).ok()?;
    (r.verdict == Verdict::Fits).then_some(r)
}

fn with(cfg: &KernelConfig, f: impl FnOnce(&mut KernelParams)) -> Option<KernelConfig> {
    let mut p = cfg.params().clone();
    f(&mut p);
    KernelConfig::new(p).ok()
}

/// For each knob, the largest smaller value that fits (halving): kv_pages_block, q_block,
/// page_size (keeping max_model_len), then the vmem_limit_bytes that would make the original fit.
pub fn nearest_fits(req: &CheckRequest, report: &VmemReport) -> Vec<Suggestion> {
    let cfg = req.cfg;
    let mut out = Vec::new();
    let mut push = |change: String, r: &VmemReport| {
        out.push(Suggestion {
            change,
            total_bytes: r.total_bytes,
            limit_bytes: r.limit_bytes,
        })
    };
    let mut kv = cfg.kv_pages_block() / 2;
    while kv >= 1 {
        if let Some(r) = with(cfg, |p| p.kv_pages_block = kv).and_then(|c| fits(req, &c)) {
            push(format!("--kv {kv}"), &r);
            break;
        }
        kv /= 2;
    }
    let mut q = cfg.q_block() / 2;
    while q >= 1 {
        if let Some(r) = with(cfg, |p| p.q_block = q).and_then(|c| fits(req, &c)) {
            push(format!("--q {q}"), &r);
            break;
        }
        q /= 2;
    }
    let len = cfg.max_model_len();
    let mut page = cfg.page_size() / 2;
    while page >= 8 {
        let candidate = with(cfg, |p| {
            p.page_size = page;
            p.pages_per_seq = len.div_ceil(page);
            p.total_pages = p.total_pages.saturating_mul(cfg.page_size() / page);
            p.kv_pages_block = p.kv_pages_block.min(p.pages_per_seq);
        });
        if let Some(r) = candidate.and_then(|c| fits(req, &c)) {
            push(format!("--page-size {page}"), &r);
            break;
        }
        page /= 2;
    }
    if let Some(limit) = limit_that_fits(report, &req.target) {
        if limit > report.limit_bytes {
            out.push(Suggestion {
                change: format!(
                    "--vmem-limit {} (physical VMEM {})",
                    fmt_bytes(limit).replace(' ', ""),
                    fmt_bytes(req.target.vmem_bytes)
                ),
                total_bytes: report.total_bytes,
                limit_bytes: limit,
            });
        }
    }
    out
}
