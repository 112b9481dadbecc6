//! A check request resolved from what the user asked: the config per device under tensor
//! parallelism, the kernel's own call-site rules, the target and the limit. `check`, `plan`,
//! `ci/vmem.toml` and `bench check` all resolve through [`resolve`], so they agree.

use super::{CheckRequest, KernelModel};
use crate::config::{ConfigError, Geometry, KernelConfig, KernelParams};
use crate::target::Target;

/// Heads one device sees under tensor parallelism `tp`: q heads split evenly; KV heads split
/// too, or replicated (one per device) when fewer than `tp`. The note says when KV heads are
/// replicated.
pub fn per_device(g: Geometry, tp: u32) -> Result<(Geometry, Option<String>), ConfigError> {
    if tp == 0 || !g.num_q_heads.is_multiple_of(tp) {
        let valid: Vec<String> = (1..=g.num_q_heads)
            .filter(|d| g.num_q_heads.is_multiple_of(*d))
            .map(|d| d.to_string())
            .collect();
        return Err(ConfigError::field(
            "tp",
            tp,
            format!(
                "must divide num_q_heads ({}); valid degrees: {}",
                g.num_q_heads,
                valid.join(", ")
            ),
        ));
    }
    let (kv, note) = if g.num_kv_heads.is_multiple_of(tp) {
        (g.num_kv_heads / tp, None)
    } else if tp.is_multiple_of(g.num_kv_heads) {
        (
            1,
            Some(format!(
                "tp {tp} > num_kv_heads {}: each device holds 1 replicated KV head",
                g.num_kv_heads
            )),
        )
    } else {
        return Err(ConfigError::field(
            "tp",
            tp,
            format!(
                "must divide num_kv_heads ({}) or be a multiple of it",
                g.num_kv_heads
            ),
        ));
    };
    Ok((
        Geometry {
            num_q_heads: g.num_q_heads / tp,
            num_kv_heads: kv,
            head_dim: g.head_dim,
        },
        note,
    ))
}

/// A request ready for [`super::check`]: the config as one device's kernel sees it, and notes
/// on what was adjusted to get there.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub cfg: KernelConfig,
    pub target: Target,
    pub model: KernelModel,
    pub limit: Option<u64>,
    pub notes: Vec<String>,
}

impl Resolved {
    pub fn request(&self) -> CheckRequest<'_> {
        CheckRequest {
            cfg: &self.cfg,
            target: self.target,
            kernel: self.model,
            vmem_limit: self.limit,
        }
    }

    /// [`super::check`] of [`Self::request`], its report's notes led by this request's own.
    pub fn check(&self) -> Result<super::VmemReport, super::VmemError> {
        let mut report = super::check(&self.request())?;
        let own = self.notes.iter().cloned().map(super::Note::Request);
        report.notes.splice(0..0, own);
        Ok(report)
    }
}

/// Resolves `params` (the whole model's config, not yet validated) for `model` on `target`:
/// jax-rpa call sites clamp kv_pages_block to pages_per_seq (Levanter's `min(kv,
/// pages_per_seq)`), then the config is validated and its heads split over `tp` devices.
pub fn resolve(
    mut params: KernelParams,
    target: Target,
    model: KernelModel,
    limit: Option<u64>,
    tp: u32,
) -> Result<Resolved, ConfigError> {
    let mut notes = Vec::new();
    let pages_per_seq = params.pages_per_seq;
    if model == KernelModel::JaxRpa && params.kv_pages_block > pages_per_seq && pages_per_seq > 0 {
        notes.push(format!(
            "kv_pages_block {} clamped to pages_per_seq {pages_per_seq}, as jax-rpa call sites must",
            params.kv_pages_block
        ));
        params.kv_pages_block = pages_per_seq;
    }
    let full = KernelConfig::new(params)?;
    let (geometry, tp_note) = per_device(full.geometry(), tp)?;
    notes.extend(tp_note);
    let cfg = KernelConfig::new(KernelParams {
        geometry,
        ..full.params().clone()
    })?;
    Ok(Resolved {
        cfg,
        target,
        model,
        limit,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(q: u32, kv: u32) -> Geometry {
        Geometry {
            num_q_heads: q,
            num_kv_heads: kv,
            head_dim: 128,
        }
    }

    #[test]
    fn heads_split_or_replicate_and_bad_degrees_name_the_valid_ones() {
        assert_eq!(per_device(g(32, 8), 4).unwrap(), (g(8, 2), None));
        let (d, note) = per_device(g(32, 8), 16).unwrap();
        assert_eq!(d, g(2, 1));
        assert!(note.unwrap().contains("replicated"));
        let e = per_device(g(9, 3), 2).unwrap_err().to_string();
        assert!(e.contains("valid degrees: 1, 3, 9"), "{e}");
        assert!(per_device(g(32, 8), 0).is_err());
        assert!(
            per_device(g(24, 6), 4).is_err(),
            "4 neither divides nor is a multiple of 6"
        );
    }
}
