//! Register-spill allowance: the scoped VMEM the TPU compiler allocates beyond a kernel's
//! explicit buffers (vector temporaries that do not fit the register file).
//!
//! It has no closed form, so it is fitted to the real compiler: for every committed oracle point
//! (`kernelgen/data/vmem_oracle_<kernel>.jsonl`) the smallest `vmem_limit_bytes` that compiles was
//! found by bisection (64 KiB steps); the spill is that minus the explicit buffers. What the
//! inner loop materializes per KV head is a `[rows, keys]` f32 score tile and `[keys, head_dim]`
//! K/V tiles, for each of the block's KV heads (JAX's kernel unrolls the loop over them, so
//! several heads' tiles can be live; kernelgen's rolls it, one head at a time); the compiler
//! then trades spill space against rescheduling under the limit, which is not additive.
//! Features: h = KV heads per block, r = rows (q_block x group) padded to 8 sublanes, k = keys
//! scored at once (kv_pages_block x page_size; kernelgen's kernel scores chunks of at most 512,
//! fewer at many rows: `emit::pallas::chunk_keys`) padded to 128 lanes, d = head_dim padded to 128
//! lanes, odd = 1 for an odd group size above 1 (3, 5, 7: its q slices take another layout path,
//! measured spills several times smaller), f32 = 1 for f32 K/V. Each kernel has its form
//! ([`SpillForm`]), the one with the fewest `uncertain` verdicts when each fit point is judged by
//! a fit without it (`kernelgen calibrate --cross-validate`):
//!
//! - kernelgen's kernel, multiplicative:
//!   `ln spill = c0 + c1 ln h + c2 ln r + c3 ln k + c4 odd + c5 f32 + c6 ln r ln k + c7 ln2 r +
//!   c8 ln2 k + c9 ln2 r ln k`, least squares in log space (the tile form's points have a zero
//!   tenth column, which the fit drops). The quadratic terms came with chunks whose keys shrink
//!   as the rows grow (`emit::pallas::chunk_keys`), which bent the surface: with `c7 ln g` in
//!   their place the band's widest was 4-8% above / 8-19% below the total; with the squares
//!   alone 4-9% / 8-11% (leave-one-out 199 agree, 1 uncertain, 1 disagree of 201); with c9 too
//!   5-10% / 7-9% (leave-one-out 200 / 0 / 1), and 4-5% / 7-9% (199 / 1 / 1) once the band
//!   was made narrowest near a limit rather than on average (see [`fit`]);
//! - JAX's kernel, in score tiles (T = 4 r k bytes, one f32 `[rows, keys]` tile), which its
//!   unrolled heads keep live one or more per head:
//!   `spill = c0 + c1 T[h=1] + c2 T[h=2] + c3 T[h<=4] + c4 T[h>4] + c5 f32 4hkd + c6 odd h T +
//!   c7 4kd[h=1] + c8 4hrd[h>=4]`, least squares weighted by 1 / measured limit (relative
//!   error). c7 is an f32 `[keys, head_dim]` copy of K that a lone head keeps (an LLO dump of
//!   6 q / 1 KV head, q_block 8, 64 pages of 256, bf16, on v5e at its smallest limit: 2848
//!   spilled vregs, 11.1 MiB, where its score tile is 3 MiB and that copy 8 MiB). c8 is f32
//!   `[rows, head_dim]` per head once 4 or more are unrolled: their measured spill per score
//!   tile grows as the keys shrink (4 heads, bf16, v6e: 5.1-5.4 T at 512 keys, 3.1-3.9 T at
//!   2048-4096), a part in the rows alone; it took the place of a term in all K/V bytes
//!   (`4hkd`), which no longer helped. Its points judged leave-one-out (`kernelgen calibrate
//!   --kernel jax-rpa --cross-validate`, 369 points measured with the operands in HBM): 17
//!   uncertain with this form, 20 with `4hkd` in c8's place; the widest band on v5e 37% above /
//!   28% below the total then, 17% / 20% now.
//!
//! One coefficient set per (kernel, target).
//!
//! The verdict band is asymmetric: the need lies in
//! `[max(explicit, total - over x base - over_abs), total + under x base + under_abs]`, where the
//! base is the total for JAX's kernel and the spill estimate for kernelgen's
//! ([`SpillForm::band_base`]). Each side's pair covers every miss on the calibration points,
//! each point judged both by the fit and by a fit without it (leave-one-out: how far off the
//! model is on a config it did not see, which an in-sample miss understates), with the absolute
//! part at least the bisection step; of those pairs, the one narrowest (relative to the total)
//! at its widest over the points whose estimate is near a limit (at least a quarter of the
//! target's default), then on average over all. So no committed point is ever on the wrong side
//! of a non-uncertain verdict, the band is tightest where verdicts turn on it, and the held-out
//! split (`vmem_agreement`) measures the rest.

use super::KernelModel;
use crate::target::Target;
use serde::Serialize;

/// Sizes of the inner loop's per-head temporaries.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SpillFeatures {
    /// Query rows per KV head: q_block * group.
    pub rows: u64,
    /// Keys scored at once: kv_pages_block * page_size for JAX's kernel; for kernelgen's, the
    /// chunk of the block it scores per loop step (`emit::pallas::chunk_pages` pages).
    pub keys: u64,
    pub head_dim: u64,
    pub kv_heads_per_block: u64,
    pub kv_dtype_bytes: u64,
    /// Query heads per KV head.
    pub group: u64,
}

pub const N_FEATURES: usize = 10;

/// The tile form's unit: features, coefficients and the intercept are in MiB.
const MIB: f64 = crate::target::MIB as f64;

/// How a kernel's spill depends on its features (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SpillForm {
    /// `ln spill` linear in logs of the features (kernelgen's kernel).
    LogLinear,
    /// `spill` linear in score-tile and K/V bytes (JAX's kernel).
    Tiles,
}

impl SpillForm {
    pub fn of(kernel: KernelModel) -> SpillForm {
        match kernel {
            KernelModel::JaxRpa => SpillForm::Tiles,
            KernelModel::Kernelgen => SpillForm::LogLinear,
        }
    }

    /// What the verdict band's relative half-widths multiply. kernelgen's spill is a small part
    /// of its total (a median 5-8% of the measured minimum limit), fitted in logs, so its miss
    /// scales with the spill: a band in parts of the total would be as wide for a config that
    /// barely spills as for one that spills much. JAX's spill is a quarter to a third of its
    /// total and its linear fit's misses scale with the total. Chosen like the forms, by
    /// leave-one-out verdicts on the fit points (`calibrate --cross-validate`; kernelgen's 201
    /// points when it was chosen, before the rows-aware chunks: 1 uncertain with the spill as
    /// the base, 5 with the total).
    pub fn band_base(self) -> BandBase {
        match self {
            SpillForm::LogLinear => BandBase::Spill,
            SpillForm::Tiles => BandBase::Total,
        }
    }

    /// The fitted formula, for reports.
    pub fn formula(self) -> &'static str {
        match self {
            SpillForm::LogLinear => {
                "ln spill = c0 + c1 ln h + c2 ln r + c3 ln k + c4 odd + c5 f32 + c6 ln r ln k + c7 ln2 r + c8 ln2 k + c9 ln2 r ln k"
            }
            SpillForm::Tiles => {
                "spill = c0 + c1 T[h=1] + c2 T[h=2] + c3 T[h<=4] + c4 T[h>4] + c5 f32 4hkd + c6 odd h T + c7 4kd[h=1] + c8 4hrd[h>=4] (T = 4rk; MiB)"
            }
        }
    }
}

/// See [`SpillForm::band_base`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BandBase {
    /// The estimated total (explicit buffers + spill).
    Total,
    /// The estimated spill alone.
    Spill,
}

impl BandBase {
    fn of(self, total: f64, explicit: f64) -> f64 {
        match self {
            BandBase::Total => total,
            BandBase::Spill => (total - explicit).max(0.0),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BandBase::Total => "total",
            BandBase::Spill => "spill",
        }
    }
}

impl SpillFeatures {
    pub fn vector(&self, form: SpillForm) -> [f64; N_FEATURES] {
        let h = self.kv_heads_per_block.max(1);
        let r = (self.rows.div_ceil(8).max(1) * 8) as f64;
        let k = (self.keys.div_ceil(128).max(1) * 128) as f64;
        let odd = f64::from(self.group > 1 && self.group % 2 == 1);
        let f32 = f64::from(self.kv_dtype_bytes == 4);
        match form {
            SpillForm::LogLinear => {
                let (r, k) = (r.ln(), k.ln());
                [
                    1.0,
                    (h as f64).ln(),
                    r,
                    k,
                    odd,
                    f32,
                    r * k,
                    r * r,
                    k * k,
                    r * r * k,
                ]
            }
            SpillForm::Tiles => {
                // in MiB, so the normal equations stay well scaled beside the intercept
                let d = (self.head_dim.div_ceil(128).max(1) * 128) as f64;
                let tile = 4.0 * r * k / MIB;
                let class = match h {
                    1 => 1,
                    2 => 2,
                    3 | 4 => 3,
                    _ => 4,
                };
                let mut x = [0.0; N_FEATURES];
                x[0] = 1.0;
                x[class] = tile;
                x[5] = f32 * 4.0 * h as f64 * k * d / MIB;
                x[6] = odd * h as f64 * tile;
                x[7] = if h == 1 { 4.0 * k * d / MIB } else { 0.0 };
                x[8] = if h >= 4 {
                    4.0 * h as f64 * r * d / MIB
                } else {
                    0.0
                };
                x
            }
        }
    }
}

/// A fitted spill model for one (kernel, target).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SpillModel {
    pub form: SpillForm,
    pub coef: [f64; N_FEATURES],
    /// The band above the estimate: `under` x the band base ([`SpillForm::band_base`]) +
    /// `under_abs` bytes, the narrowest such band near a limit (see [`fit`]) that covers every
    /// underestimate on the calibration points, in-sample and leave-one-out.
    pub under: f64,
    pub under_abs: f64,
    /// The band below the estimate, likewise for overestimates.
    pub over: f64,
    pub over_abs: f64,
    /// Calibration points the fit used.
    pub points: usize,
    /// The calibrated domain: the largest rows (q_block x group) and keys (kv_pages_block x
    /// page_size) among the points. Outside it the fit is an extrapolation and gives no bound.
    pub max_rows: u64,
    pub max_keys: u64,
}

/// The allowance for one config and the range the true need lies in.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SpillEstimate {
    pub bytes: u64,
    pub lower: u64,
    /// `None` without a calibration: no upper bound.
    pub upper: Option<u64>,
    pub model: Option<SpillModel>,
    /// A model exists but `f` lies outside its calibrated domain (no upper bound either).
    pub outside_domain: bool,
}

impl SpillModel {
    pub fn predict(&self, f: &SpillFeatures) -> f64 {
        predict(self.form, &self.coef, f)
    }

    /// `[lower, upper]` for a total estimate of `total` with exact buffers `explicit`.
    pub fn band(&self, total: f64, explicit: f64) -> (u64, u64) {
        let base = self.form.band_base().of(total, explicit);
        let lower = (total - self.over * base - self.over_abs).max(explicit);
        let upper = total + self.under * base + self.under_abs;
        (lower.floor() as u64, upper.ceil() as u64)
    }

    /// The band's width relative to the estimated total at the calibration points whose estimate
    /// is at least `floor` bytes (see [`BandWidths`]).
    pub fn widths(&self, obs: &[Observation], floor: u64) -> BandWidths {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for o in obs {
            let e = Estimate::of(self.form, &self.coef, o);
            if e.total < floor as f64 {
                continue;
            }
            up.push(e.width(self.under, self.under_abs, Side::Above));
            down.push(e.width(self.over, self.over_abs, Side::Below));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        BandWidths {
            floor,
            points: up.len(),
            max_up: up.iter().copied().fold(0.0, f64::max),
            max_down: down.iter().copied().fold(0.0, f64::max),
            median_up: median(&mut up),
            median_down: median(&mut down),
        }
    }
}

/// The committed model for `kernel` on `t`, if calibrated (see `spill_fitted.rs`).
pub fn model(kernel: KernelModel, t: &Target) -> Option<SpillModel> {
    super::spill_fitted::FITTED
        .iter()
        .find(|(k, name, _)| *k == kernel && *name == t.name)
        .map(|(_, _, m)| *m)
}

/// The spill allowance for `f` given the exact buffers' sum `explicit`.
pub fn estimate_with(
    kernel: KernelModel,
    t: &Target,
    f: &SpillFeatures,
    explicit: u64,
) -> SpillEstimate {
    match model(kernel, t) {
        Some(m) if f.rows > m.max_rows || f.keys > m.max_keys => SpillEstimate {
            bytes: m.predict(f).round() as u64,
            lower: explicit,
            upper: None,
            model: Some(m),
            outside_domain: true,
        },
        Some(m) => {
            let bytes = m.predict(f).round() as u64;
            let (lower, upper) = m.band((explicit + bytes) as f64, explicit as f64);
            SpillEstimate {
                bytes,
                lower,
                upper: Some(upper),
                model: Some(m),
                outside_domain: false,
            }
        }
        // Uncalibrated: no allowance and no upper bound; only "does not fit" (the exact buffers
        // alone exceed the limit) is certain, everything else is `uncertain`.
        None => SpillEstimate {
            bytes: 0,
            lower: explicit,
            upper: None,
            model: None,
            outside_domain: false,
        },
    }
}

/// How wide a model's band is, relative to the estimated total, at calibration points whose
/// estimate is at least `floor` bytes (where a limit is near: below, the absolute slack
/// dominates and no target's default limit is close).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct BandWidths {
    pub floor: u64,
    pub points: usize,
    pub median_up: f64,
    pub median_down: f64,
    pub max_up: f64,
    pub max_down: f64,
}

/// One calibration observation: features, explicit bytes, and the measured minimum limit.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub features: SpillFeatures,
    pub explicit: f64,
    pub min_limit: f64,
}

/// Smallest spill the log fit takes (a measured minimum at or below the explicit buffers is the
/// bisection step's rounding, not a negative spill).
const MIN_SPILL: f64 = 16384.0;

/// One estimate's miss on a calibration point, with the band base it was made at.
#[derive(Clone, Copy, Debug)]
struct Miss {
    bytes: f64,
    base: f64,
}

/// Least squares fit of the spill in `form` on the features. The band covers every miss each
/// way, in-sample and leave-one-out; `step` (the bisection step the measurements are known to)
/// is the least absolute slack. Of the pairs tried, each side's band is the narrowest at its
/// widest over the in-sample estimates of at least `floor` bytes (those near a limit, where a
/// verdict turns on the band), then on average over every estimate; with no estimate that
/// large, on average alone.
pub fn fit(form: SpillForm, obs: &[Observation], step: f64, floor: f64) -> Option<SpillModel> {
    if obs.len() < 2 * N_FEATURES {
        return None;
    }
    let coef = least_squares(form, obs.iter())?;
    let (mut under, mut over, mut at, mut near) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, o) in obs.iter().enumerate() {
        let others = obs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, o)| o);
        let loo = least_squares(form, others).unwrap_or(coef);
        for (c, in_sample) in [(coef, true), (loo, false)] {
            let e = Estimate::of(form, &c, o);
            let miss = o.min_limit - e.total;
            let side = if miss > 0.0 { &mut under } else { &mut over };
            side.push(Miss {
                bytes: miss.abs(),
                base: e.base,
            });
            at.push(e);
            if in_sample && e.total >= floor {
                near.push(e);
            }
        }
    }
    let (under, under_abs) = cover(&under, &at, &near, step, Side::Above);
    let (over, over_abs) = cover(&over, &at, &near, step, Side::Below);
    Some(SpillModel {
        form,
        coef,
        under,
        under_abs,
        over,
        over_abs,
        points: obs.len(),
        max_rows: obs.iter().map(|o| o.features.rows).max().unwrap_or(0),
        max_keys: obs.iter().map(|o| o.features.keys).max().unwrap_or(0),
    })
}

/// One estimate a band is drawn around: its band base, total and exact buffers.
#[derive(Clone, Copy, Debug)]
struct Estimate {
    base: f64,
    total: f64,
    explicit: f64,
}

/// Which side of the estimate a band is for: below, it stops at the exact buffers
/// ([`SpillModel::band`]).
#[derive(Clone, Copy, Debug)]
enum Side {
    Above,
    Below,
}

impl Estimate {
    /// The estimate of `o` by the coefficients `coef` of `form`.
    fn of(form: SpillForm, coef: &[f64; N_FEATURES], o: &Observation) -> Estimate {
        let total = o.explicit + predict(form, coef, &o.features);
        Estimate {
            base: form.band_base().of(total, o.explicit),
            total,
            explicit: o.explicit,
        }
    }

    /// The band `rel x base + abs` on `side` ([`SpillModel::band`], unrounded), relative to the
    /// total: what [`SpillModel::widths`] reports and the fit's pair is chosen by.
    fn width(&self, rel: f64, abs: f64, side: Side) -> f64 {
        let bytes = rel * self.base + abs;
        let bytes = match side {
            Side::Above => bytes,
            Side::Below => bytes.min(self.total - self.explicit),
        };
        bytes / self.total.max(1.0)
    }
}

/// `(rel, abs)` with `miss <= rel * base + abs` for every miss and `abs >= step`. It tries
/// `abs` at the step and at each miss's bytes, each with the least `rel` that covers the rest,
/// and keeps the pair narrowest at its widest over `near` (see [`fit`]), then on average over
/// `at`. Narrowest on average alone let the many small configs, far from any limit, choose:
/// kernelgen's band above on v5e was 28.7% of the spill plus 64 KiB, 10.3% of the total at a
/// 5 MiB config, where 3.9% plus 0.22 MiB is 5.5% at most. The exact optimum may lie between
/// two tried `abs` (where two misses' lines cross), a little narrower; every pair tried covers
/// every miss.
fn cover(misses: &[Miss], at: &[Estimate], near: &[Estimate], step: f64, side: Side) -> (f64, f64) {
    let candidates =
        std::iter::once(step).chain(misses.iter().map(|m| m.bytes).filter(|&b| b > step));
    let mut best: Option<(f64, f64, f64, f64)> = None;
    for abs in candidates {
        let mut rel = 0.0f64;
        let mut feasible = true;
        for m in misses.iter().filter(|m| m.bytes > abs) {
            if m.base <= 0.0 {
                feasible = false;
                break;
            }
            rel = rel.max((m.bytes - abs) / m.base);
        }
        if !feasible {
            continue;
        }
        let widest = near
            .iter()
            .map(|e| e.width(rel, abs, side))
            .fold(0.0, f64::max);
        let sum = at.iter().map(|e| e.width(rel, abs, side)).sum::<f64>();
        let narrower = |(w, s, _, _): (f64, f64, f64, f64)| {
            widest.total_cmp(&w).then(sum.total_cmp(&s)).is_lt()
        };
        if best.is_none_or(narrower) {
            best = Some((widest, sum, rel, abs));
        }
    }
    // the largest miss is always a feasible candidate (abs = it, rel = 0)
    best.map_or((0.0, step), |(_, _, rel, abs)| (rel, abs))
}

fn predict(form: SpillForm, coef: &[f64; N_FEATURES], f: &SpillFeatures) -> f64 {
    let dot: f64 = coef.iter().zip(f.vector(form)).map(|(c, x)| c * x).sum();
    match form {
        SpillForm::LogLinear => dot.exp(),
        // a linear fit may dip below zero where the spill is nil
        SpillForm::Tiles => dot.max(0.0) * MIB,
    }
}

/// The coefficients minimizing the squared error over `obs`: of `ln(spill)` for the log-linear
/// form, of the spill relative to the measured limit for the tile form.
fn least_squares<'a>(
    form: SpillForm,
    obs: impl Iterator<Item = &'a Observation>,
) -> Option<[f64; N_FEATURES]> {
    let mut ata = [[0.0f64; N_FEATURES]; N_FEATURES];
    let mut aty = [0.0f64; N_FEATURES];
    for o in obs {
        let (x, y) = match form {
            SpillForm::LogLinear => (
                o.features.vector(form),
                (o.min_limit - o.explicit).max(MIN_SPILL).ln(),
            ),
            SpillForm::Tiles => {
                let w = MIB / o.min_limit;
                (
                    o.features.vector(form).map(|x| x * w),
                    (o.min_limit - o.explicit) / MIB * w,
                )
            }
        };
        for i in 0..N_FEATURES {
            aty[i] += x[i] * y;
            for j in 0..N_FEATURES {
                ata[i][j] += x[i] * x[j];
            }
        }
    }
    solve(ata, aty)
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
            // Degenerate column (a feature constant over the data, e.g. no f32 points): drop it.
            for row in a.iter_mut() {
                row[col] = 0.0;
            }
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

    fn features(rows: u64, keys: u64, h: u64, group: u64, bytes: u64) -> SpillFeatures {
        SpillFeatures {
            rows,
            keys,
            head_dim: 128,
            kv_heads_per_block: h,
            kv_dtype_bytes: bytes,
            group,
        }
    }

    #[test]
    fn fit_recovers_a_known_multiplicative_spill() {
        let truth = [9.0, 0.6, 0.4, 0.5, -1.2, 0.3, 0.02, 0.01, -0.01, 0.001];
        let mut obs = Vec::new();
        for (i, rows) in [8u64, 16, 64, 128, 256, 512].iter().enumerate() {
            for keys in [128u64, 256, 1024, 4096] {
                let f = features(
                    *rows,
                    keys,
                    1 + (i as u64 % 4),
                    [1, 3, 4, 6, 8][(i + keys as usize / 128) % 5],
                    if i % 2 == 0 { 2 } else { 4 },
                );
                let spill: f64 = truth
                    .iter()
                    .zip(f.vector(SpillForm::LogLinear))
                    .map(|(c, x)| c * x)
                    .sum::<f64>()
                    .exp();
                obs.push(Observation {
                    features: f,
                    explicit: 1e6,
                    min_limit: 1e6 + spill,
                });
            }
        }
        let m = fit(SpillForm::LogLinear, &obs, 0.0, 0.0).unwrap();
        for (c, t) in m.coef.iter().zip(truth) {
            assert!((c - t).abs() <= 1e-6, "{:?}", m.coef);
        }
        assert!(m.under < 1e-9 && m.over < 1e-9);
        assert!(m.under_abs < 1.0 && m.over_abs < 1.0, "{m:?}");
    }

    #[test]
    fn fit_recovers_a_known_tile_spill() {
        // spill = 0.1 MiB + 1.2 T (one head) .. 13 T (h > 4) + 0.5 f32 KV bytes, less for odd
        // groups, + 0.8 a lone head's f32 K, + 0.9 f32 [rows, d] per head from 4 heads up (every
        // spill positive, so `predict`'s floor at 0 leaves the data linear)
        // (the tenth feature is the log form's; a zero column here)
        let truth = [0.1, 1.2, 2.3, 4.5, 13.0, 0.5, -0.2, 0.8, 0.9, 0.0];
        let mut obs = Vec::new();
        for (i, rows) in [8u64, 16, 64, 128, 256, 512].iter().enumerate() {
            for keys in [128u64, 256, 1024, 4096] {
                for h in [1u64, 2, 4, 8] {
                    let f = SpillFeatures {
                        rows: *rows,
                        keys,
                        head_dim: 128,
                        kv_heads_per_block: h,
                        kv_dtype_bytes: if (i + h as usize).is_multiple_of(2) {
                            2
                        } else {
                            4
                        },
                        group: [1, 3, 4, 8][(i + keys as usize / 128) % 4],
                    };
                    let spill = predict(SpillForm::Tiles, &truth, &f);
                    let explicit = 4e6 + 1e3 * keys as f64;
                    obs.push(Observation {
                        features: f,
                        explicit,
                        min_limit: explicit + spill,
                    });
                }
            }
        }
        let m = fit(SpillForm::Tiles, &obs, 0.0, 0.0).unwrap();
        for (c, t) in m.coef.iter().zip(truth) {
            assert!((c - t).abs() <= 1e-6, "{:?}", m.coef);
        }
        assert!(m.under < 1e-9 && m.over < 1e-9, "{m:?}");
    }

    #[test]
    fn band_never_drops_below_the_exact_buffers() {
        let m = SpillModel {
            form: SpillForm::Tiles,
            coef: [0.0; N_FEATURES],
            under: 0.2,
            under_abs: 0.0,
            over: 0.5,
            over_abs: 0.0,
            points: 20,
            max_rows: 64,
            max_keys: 1024,
        };
        assert_eq!(m.band(100.0, 80.0), (80, 120));
        // kernelgen's band scales with the spill (20 here), not the total
        let m = SpillModel {
            form: SpillForm::LogLinear,
            over: 2.0,
            under_abs: 1.0,
            ..m
        };
        assert_eq!(m.band(100.0, 80.0), (80, 105));
    }

    #[test]
    fn the_band_covers_every_miss_and_is_narrowest_near_a_limit() {
        let step = 65536.0;
        // a 1 MiB miss on a 2 MiB config, 5% misses on 20-40 MiB configs
        let misses = [
            Miss {
                bytes: 1048576.0,
                base: 2097152.0,
            },
            Miss {
                bytes: 1048576.0,
                base: 20971520.0,
            },
            Miss {
                bytes: 2097152.0,
                base: 41943040.0,
            },
        ];
        let at: Vec<_> = misses
            .iter()
            .map(|m| Estimate {
                base: m.base,
                total: m.base,
                explicit: 0.0,
            })
            .collect();
        let above = |near: &[Estimate]| cover(&misses, &at, near, step, Side::Above);
        // near a limit: the 20 and 40 MiB configs
        let (rel, abs) = above(&at[1..]);
        for m in misses {
            assert!(m.bytes <= rel * m.base + abs + 1e-6, "{m:?}: {rel} {abs}");
        }
        assert!(abs >= step);
        // 1 MiB absolute + 2.5% (the 40 MiB config's rest) is 7.5% at most on those two, where
        // the 46.9% + 64 KiB the 2 MiB config alone would need is 47.2% (at 20 MiB), and 2 MiB
        // absolute 10%
        assert_eq!(abs, 1048576.0);
        assert!((rel - 0.025).abs() < 1e-12, "{rel}");
        // none near a limit: narrowest on average, the same pair here (65% summed, against 144%
        // and 115%)
        assert_eq!(above(&[]), (rel, abs));
        // with the 2 MiB config near a limit too, the relative band is the narrower at its widest
        // (50% there, where 1 MiB + 2.5% is 52.5%), though wider on average
        let (rel, abs) = above(&at);
        assert_eq!(abs, step);
        assert!(
            (rel - (1048576.0 - step) / 2097152.0).abs() < 1e-12,
            "{rel}"
        );
        // below the estimate the band stops at the exact buffers: a config whose whole total is
        // exact buffers has no width there, whatever the pair
        let exact = Estimate {
            explicit: 2097152.0,
            ..at[0]
        };
        assert_eq!(exact.width(0.5, step, Side::Below), 0.0);
        assert!(exact.width(0.5, step, Side::Above) > 0.5);
        // with nothing to cover the band is the bisection step alone
        assert_eq!(cover(&[], &at, &at, step, Side::Above), (0.0, step));
    }

    #[test]
    fn outside_the_calibrated_domain_there_is_no_upper_bound() {
        let t = Target::find("v5p").unwrap();
        let m = model(KernelModel::JaxRpa, &t).expect("committed model");
        let inside = SpillFeatures {
            rows: m.max_rows,
            keys: m.max_keys,
            head_dim: 128,
            kv_heads_per_block: 8,
            kv_dtype_bytes: 2,
            group: 4,
        };
        let e = estimate_with(KernelModel::JaxRpa, &t, &inside, 1 << 20);
        assert!(!e.outside_domain && e.upper.is_some());
        for f in [
            SpillFeatures {
                keys: 2 * m.max_keys,
                ..inside
            },
            SpillFeatures {
                rows: 2 * m.max_rows,
                ..inside
            },
        ] {
            let e = estimate_with(KernelModel::JaxRpa, &t, &f, 1 << 20);
            assert!(e.outside_domain && e.upper.is_none(), "{f:?}");
            assert_eq!(e.lower, 1 << 20);
        }
    }
}
