//! Register-spill allowance: the scoped VMEM the TPU compiler allocates beyond a kernel's
//! explicit buffers (vector temporaries that do not fit the register file).
//!
//! It has no closed form, so it is fitted to the real compiler: for every committed oracle point
//! (`verify/data/vmem_oracle_<kernel>.jsonl`) the smallest `vmem_limit_bytes` that compiles was
//! found by bisection; the spill is that minus the explicit buffers. The features count what the
//! kernel's inner loop materializes per KV head, in whole vector registers (8 sublanes x 128
//! lanes x 32 bit = 4 KiB):
//!
//! - `scores`: one `[rows, keys]` f32 tile (logits, then probabilities), rows = q_block * group;
//! - `kv`: one `[keys, head_dim]` 32-bit tile (the strided K/V load);
//! - both again times the KV heads per block, whose loop is unrolled.
//!
//! `spill = c0 + c1*scores + c2*kv + c3*heads*scores + c4*heads*kv` (clamped at 0), least squares
//! weighted by 1/measured, one coefficient set per target. The verdict is `uncertain` while the
//! limit is within `rel_err * total + abs_err` of the estimate: the largest error the fit makes on
//! its own calibration data, so no committed point is ever on the wrong side of a non-uncertain
//! verdict.

use crate::target::Target;
use serde::Serialize;

/// Whose inner loop the features describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Kernel {
    JaxRpa,
    Kernelgen,
}

/// Sizes of the inner loop's per-head temporaries.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SpillFeatures {
    /// Query rows per KV head: q_block * (num_q_heads / num_kv_heads).
    pub rows: u64,
    /// Keys per KV block: kv_pages_block * page_size.
    pub keys: u64,
    pub head_dim: u64,
    pub kv_heads_per_block: u64,
    pub kv_dtype_bytes: u64,
}

pub const N_FEATURES: usize = 5;
const VREG: f64 = 4096.0;

impl SpillFeatures {
    /// Bytes of an `[a, b]` 32-bit array held in whole vector registers.
    fn vregs(a: u64, b: u64) -> f64 {
        (a.div_ceil(8) * b.div_ceil(128)) as f64 * VREG
    }

    pub fn vector(&self) -> [f64; N_FEATURES] {
        let scores = Self::vregs(self.rows, self.keys);
        let kv = Self::vregs(self.keys, self.head_dim);
        let h = self.kv_heads_per_block as f64;
        [1.0, scores, kv, h * scores, h * kv]
    }
}

/// A fitted spill model for one (kernel, target).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SpillModel {
    pub coef: [f64; N_FEATURES],
    /// Largest relative error of the fitted total on the calibration points.
    pub rel_err: f64,
    /// Absolute slack: the bisection step (64 KiB) the measurements are known to.
    pub abs_err: f64,
    /// Calibration points the fit used.
    pub points: usize,
}

/// The allowance for one config, with its error bound.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SpillEstimate {
    pub bytes: u64,
    /// Uncertainty of (explicit + spill), filled in by [`SpillModel::uncertainty`].
    pub uncertainty_bytes: u64,
    pub model: Option<SpillModel>,
}

impl SpillModel {
    pub fn predict(&self, f: &SpillFeatures) -> f64 {
        let x = f.vector();
        self.coef
            .iter()
            .zip(x)
            .map(|(c, x)| c * x)
            .sum::<f64>()
            .max(0.0)
    }

    pub fn uncertainty(&self, total: f64) -> u64 {
        (self.rel_err * total + self.abs_err).ceil() as u64
    }
}

/// The committed model for `kernel` on `t`, if calibrated (see `FITTED`).
pub fn model(kernel: Kernel, t: &Target) -> Option<SpillModel> {
    super::spill_fitted::FITTED
        .iter()
        .find(|(k, name, _)| *k == kernel && *name == t.name)
        .map(|(_, _, m)| *m)
}

/// The spill allowance for `f`; `explicit` is the exact buffers' sum, needed for the error band.
pub fn estimate_with(
    kernel: Kernel,
    t: &Target,
    f: &SpillFeatures,
    explicit: u64,
) -> SpillEstimate {
    match model(kernel, t) {
        Some(m) => {
            let bytes = m.predict(f).round() as u64;
            SpillEstimate {
                bytes,
                uncertainty_bytes: m.uncertainty((explicit + bytes) as f64),
                model: Some(m),
            }
        }
        // Uncalibrated: no allowance and no upper bound; only "does not fit" (the exact buffers
        // alone exceed the limit) is certain, everything else is `uncertain`.
        None => SpillEstimate {
            bytes: 0,
            uncertainty_bytes: 0,
            model: None,
        },
    }
}

/// One calibration observation: features, explicit bytes, and the measured minimum limit.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub features: SpillFeatures,
    pub explicit: f64,
    pub min_limit: f64,
}

/// Weighted least squares fit (weights 1/min_limit, i.e. relative error) of the spill
/// (min_limit - explicit) on the features; the error bound is the worst relative miss.
pub fn fit(obs: &[Observation], abs_err: f64) -> Option<SpillModel> {
    if obs.len() < 2 * N_FEATURES {
        return None;
    }
    // Normal equations A^T W^2 A c = A^T W^2 y, solved by Gaussian elimination with pivoting.
    let mut ata = [[0.0f64; N_FEATURES]; N_FEATURES];
    let mut aty = [0.0f64; N_FEATURES];
    // Features span 1..1e8: scale columns to unit size for a well-conditioned solve.
    let mut scale = [0.0f64; N_FEATURES];
    for o in obs {
        for (s, x) in scale.iter_mut().zip(o.features.vector()) {
            *s = f64::max(*s, x.abs());
        }
    }
    // Relative weights (1/min_limit), normalized to mean 1.
    let mean = obs.iter().map(|o| o.min_limit).sum::<f64>() / obs.len() as f64;
    for o in obs {
        let w = mean / o.min_limit;
        let x: Vec<f64> = o
            .features
            .vector()
            .iter()
            .zip(&scale)
            .map(|(x, s)| x / s * w)
            .collect();
        let y = (o.min_limit - o.explicit) * w;
        for i in 0..N_FEATURES {
            aty[i] += x[i] * y;
            for j in 0..N_FEATURES {
                ata[i][j] += x[i] * x[j];
            }
        }
    }
    let mut coef = solve(ata, aty)?;
    for (c, s) in coef.iter_mut().zip(scale) {
        *c /= s;
    }
    let mut m = SpillModel {
        coef,
        rel_err: 0.0,
        abs_err,
        points: obs.len(),
    };
    m.rel_err = obs
        .iter()
        .map(|o| {
            (((o.explicit + m.predict(&o.features)) - o.min_limit).abs() - abs_err).max(0.0)
                / o.min_limit
        })
        .fold(0.0, f64::max);
    Some(m)
}

fn solve(
    mut a: [[f64; N_FEATURES]; N_FEATURES],
    mut b: [f64; N_FEATURES],
) -> Option<[f64; N_FEATURES]> {
    let largest = (0..N_FEATURES).map(|i| a[i][i].abs()).fold(0.0, f64::max);
    for col in 0..N_FEATURES {
        let pivot =
            (col..N_FEATURES).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() <= 1e-12 * largest {
            // Degenerate column (a feature constant over the data): drop it.
            a[col] = [0.0; N_FEATURES];
            a[col][col] = 1.0;
            b[col] = 0.0;
            continue;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in 0..N_FEATURES {
            if row != col {
                let f = a[row][col] / a[col][col];
                let pivot_row = a[col];
                for (x, p) in a[row].iter_mut().zip(pivot_row).skip(col) {
                    *x -= f * p;
                }
                b[row] -= f * b[col];
            }
        }
    }
    let mut x = [0.0; N_FEATURES];
    for i in 0..N_FEATURES {
        x[i] = b[i] / a[i][i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_a_known_linear_spill() {
        let truth = [40_000.0, 1.5, 2.0, 0.25, 0.5];
        let mut obs = Vec::new();
        for (i, rows) in [8u64, 16, 64, 128, 256, 512].iter().enumerate() {
            for keys in [64u64, 256, 1024, 4096] {
                let f = SpillFeatures {
                    rows: *rows,
                    keys,
                    head_dim: 128,
                    kv_heads_per_block: 1 + (i as u64 % 4),
                    kv_dtype_bytes: 2,
                };
                let spill: f64 = truth.iter().zip(f.vector()).map(|(c, x)| c * x).sum();
                obs.push(Observation {
                    features: f,
                    explicit: 1e6,
                    min_limit: 1e6 + spill,
                });
            }
        }
        let m = fit(&obs, 0.0).unwrap();
        for (c, t) in m.coef.iter().zip(truth) {
            assert!((c - t).abs() <= 1e-6 * t.abs().max(1.0), "{:?}", m.coef);
        }
        assert!(m.rel_err < 1e-9);
    }
}
