//! The LM head `logits = x @ w^T` over an f32 weight `[v, k]` stored as two 16-bit planes
//! ([`split`]): `hi`, the top half of every value (a bf16 rounded toward zero), then `lo`, the
//! bottom half. Same bytes as the f32 matrix, plus an 8-bit copy of it (a quarter more) for
//! greedy rows, and two ways to read them:
//!
//! - [`HeadMode::Exact`]: both planes, rejoined into the f32 values: the very sums
//!   [`super::matmul`] computes over the f32 matrix (the same tiles, `super::matmul::WeightRows`).
//!   Calls of `super::matmul::PACKED_MIN_ROWS` rows or more (compute bound) are always exact.
//! - [`HeadMode::Argmax`]: for rows that only need their argmax (greedy decoding), an estimate
//!   `a` of every logit and a bound `e` on how far the exact sum `c` can lie from it, then
//!   [`HeadMode::Exact`]'s sums for the candidates, the logits with `a + e >= max(a - e)`.
//!   Up to [`SCREEN_MAX_ROWS`] rows the estimate reads an 8-bit copy of the matrix, a quarter
//!   of its bytes (the screen, [`tables`]: f32 dot products with each row's integers, times
//!   its scale); above, the `hi` plane alone, half the bytes (BF16 dot products of `x` rounded
//!   to bf16 and `hi`, 32 per instruction). Any other logit `j` is below the row's largest exact one:
//!   `c_j <= a_j + e_j < a_m - e_m <= c_m` for the `m` reaching `max(a - e)`, a candidate. So
//!   the argmax, ties included (the lowest index of the largest value), is the one
//!   [`HeadMode::Exact`] gives; the row holds candidates' exact sums and the others' estimates
//!   (each below the row's maximum).
//!
//! The screen's bound is row `j`'s `|x| b_j` ([`tables`]: the screen's own error and the f32
//! sums' rounding, by Cauchy-Schwarz). The `hi` plane's: `hi` truncates each value's mantissa
//! to 7 bits, so `|w - hi| <= 2^-7 |hi|`;
//! rounding `x` to bf16 moves it by at most `2^-8 |x|`; and an f32 sum of `k` products `p` lies
//! within `gamma_k * sum |p|` of the real one (`gamma_k = k u / (1 - k u)`, `u = 2^-24`,
//! Higham's bound). Every such sum of magnitudes is at most `|x| |hi_j|` (Cauchy-Schwarz, the
//! rows' norms computed once at upload, [`row_norms`]), so
//! `e_j = (2^-7 + 2^-8 + 3 gamma_k)(1 + 2^-6) |x| |hi_j|` plus a floor for values the BF16 dot
//! product flushes to zero ([`bound_scale`], [`bound_floor`]). A call whose estimates or bounds
//! are not finite gets [`HeadMode::Exact`]'s sums throughout (a NaN there must reach the
//! sampler as it is), and so does a CPU without AVX-512 BF16 ([`argmax_reads_half`]).

use super::matmul::{self, MatmulError, MatmulShape, WeightRows};
use super::workers::{SharedOut, Workers};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// How the LM head reads its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadMode {
    /// Every logit exact (both planes).
    Exact,
    /// Each row's argmax exact, from the `hi` plane and the candidates' `lo` halves.
    Argmax,
}

/// `w` (`[v, k]` f32) as its two planes, `[2, v, k]` 16-bit: the top halves, then the bottom
/// halves. [`join`] inverts it exactly.
pub fn split(w: &[f32]) -> Vec<u16> {
    let mut planes = vec![0u16; 2 * w.len()];
    let (hi, lo) = planes.split_at_mut(w.len());
    for ((h, l), v) in hi.iter_mut().zip(lo.iter_mut()).zip(w) {
        let bits = v.to_bits();
        *h = (bits >> 16) as u16;
        *l = bits as u16;
    }
    planes
}

/// The f32 value whose halves are `hi` and `lo`.
#[inline(always)]
pub fn join(hi: u16, lo: u16) -> f32 {
    f32::from_bits(((hi as u32) << 16) | lo as u32)
}

/// The planes of [`split`] as a weight source for the matmul tiles: each value rejoined.
#[derive(Clone, Copy)]
pub(crate) struct Split {
    hi: *const u16,
    lo: *const u16,
}

// SAFETY: a read-only view of the planes, shared by work items for the call.
unsafe impl Send for Split {}
// SAFETY: as above.
unsafe impl Sync for Split {}

impl WeightRows for Split {
    #[inline(always)]
    unsafe fn offset(self, n: usize) -> Self {
        // SAFETY: the caller's contract (both planes have the same length).
        unsafe {
            Split {
                hi: self.hi.add(n),
                lo: self.lo.add(n),
            }
        }
    }
    #[inline(always)]
    unsafe fn get(self, i: usize) -> f32 {
        // SAFETY: the caller's contract.
        unsafe { join(*self.hi.add(i), *self.lo.add(i)) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(self, i: usize) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe {
            let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(self.hi.add(i).cast()));
            let l = _mm512_cvtepu16_epi32(_mm256_loadu_si256(self.lo.add(i).cast()));
            _mm512_castsi512_ps(_mm512_or_si512(_mm512_slli_epi32(h, 16), l))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_tail(self, i: usize, n: usize) -> __m512 {
        let mask = ((1u32 << n) - 1) as __mmask16;
        // SAFETY: masked lanes are not read.
        unsafe {
            let h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, self.hi.add(i).cast()));
            let l = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, self.lo.add(i).cast()));
            _mm512_castsi512_ps(_mm512_or_si512(_mm512_slli_epi32(h, 16), l))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch(self, i: usize) {
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(self.hi.wrapping_add(i).cast::<i8>());
            _mm_prefetch::<_MM_HINT_T0>(self.lo.wrapping_add(i).cast::<i8>());
        }
    }
}

/// What one call did: how many logits [`HeadMode::Argmax`] summed exactly (all of them in
/// [`HeadMode::Exact`], or where it fell back to exact sums).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadStats {
    pub exact: usize,
}

/// Whether this CPU runs [`HeadMode::Argmax`]'s estimate: AVX-512 with BF16 dot products
/// (`vdpbf16ps`, 32 products per instruction). Elsewhere [`HeadMode::Argmax`] sums exactly, and
/// step programs keep the plain f32 LM head (`kernelgen::step::StepSource::split_head`).
pub fn argmax_reads_half() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::avx512() && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Each row's Euclidean norm of the `hi` plane of `planes` (`[2, n, k]`, [`split`]), rounded
/// up to f32: the bound's per-row factor ([`HeadMode::Argmax`]), computed once at upload.
pub fn row_norms(planes: &[u16], k: usize) -> Vec<f32> {
    let n = (planes.len() / 2).checked_div(k).unwrap_or(0);
    (0..n)
        .map(|j| {
            let sq: f64 = planes[j * k..(j + 1) * k]
                .iter()
                .map(|&h| (join(h, 0) as f64).powi(2))
                .sum();
            round_up(sq.sqrt())
        })
        .collect()
}

/// Rows of `x` up to which [`HeadMode::Argmax`] estimates from the 8-bit screen ([`Tables`]),
/// a quarter of the matrix's bytes; above, from the `hi` plane (half of them), whose BF16 dot
/// products do 32 multiply-adds an instruction against the screen's 16 (widened to f32,
/// [`screen_estimate_block`]), so that many rows are compute bound there. SmolLM2's head in
/// one `kernelgen bench decode` process alternating the two every 10 calls (a temporary
/// harness; AMD EPYC, 2 vCPUs), median call: 1 row 0.75 / 0.81 ms against 1.42 / 1.53 from
/// `hi`, 4 rows 0.95 / 0.98 against 1.76 / 1.83, 8 rows 1.78 / 1.93 against 1.74 / 2.22, 16
/// rows 3.02 / 3.26 against 2.50 / 2.74, 32 rows 6.43 against 4.83.
pub const SCREEN_MAX_ROWS: usize = 8;

/// What [`HeadMode::Argmax`] reads besides the planes, computed once at upload ([`tables`]):
/// `norms` `[3, n]`, each row's [`row_norms`], its screen scale `s_j` and its screen bound
/// `b_j`; `screen` `[n, k]`, each row of the matrix as 8-bit integers `q_j` with
/// `w_j ~ s_j q_j`.
#[derive(Clone, Copy, Debug)]
pub struct Tables<'a> {
    pub norms: &'a [f32],
    pub screen: &'a [i8],
}

/// [`Tables`]' contents for the matrix `planes` (`[2, n, k]`, [`split`]): `(norms [3, n],
/// screen [n, k])`. Row `j`'s scale is `s_j = max |w_j| / 127` and `q_j = round(w_j / s_j)`;
/// its bound `b_j` rounds up `|w_j - s_j q_j| + gamma (|w_j| + s_j |q_j|)` (Euclidean norms,
/// in f64, `gamma` the f32 sums' [`sum_gamma`]), so that `|x| b_j` bounds how far the
/// screen's estimate of a logit lies from the exact f32 sum ([`RowBound::screen`]). A row
/// whose scale would be subnormal (values below `127 * 2^-126`, which a thread flushing
/// subnormals would read as zero) gets `s_j = 0` and `q_j = 0`: its estimate is zero, its bound
/// `|w_j|` and more. A row holding a non-finite value gets an infinite bound (its call then
/// sums exactly).
pub fn tables(planes: &[u16], k: usize) -> (Vec<f32>, Vec<i8>) {
    let n = (planes.len() / 2).checked_div(k).unwrap_or(0);
    let (hi, lo) = planes.split_at(n * k);
    let mut norms = row_norms(planes, k);
    norms.resize(3 * n, 0.0);
    let mut screen = vec![0i8; n * k];
    let gamma = sum_gamma(k);
    for j in 0..n {
        let row: Vec<f32> = (j * k..(j + 1) * k).map(|i| join(hi[i], lo[i])).collect();
        let q = &mut screen[j * k..(j + 1) * k];
        let absmax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (scale, bound) = if !row.iter().all(|v| v.is_finite()) {
            (0.0, f32::INFINITY)
        } else {
            let scale = match absmax / 127.0 {
                s if s >= f32::MIN_POSITIVE => s,
                _ => 0.0,
            };
            if scale > 0.0 {
                for (q, v) in q.iter_mut().zip(&row) {
                    *q = (v / scale).round().clamp(-127.0, 127.0) as i8;
                }
            }
            let (mut err, mut wn, mut qn) = (0.0f64, 0.0f64, 0.0f64);
            for (q, v) in q.iter().zip(&row) {
                let sq = scale as f64 * *q as f64;
                err += (*v as f64 - sq).powi(2);
                wn += (*v as f64).powi(2);
                qn += sq * sq;
            }
            let bound = err.sqrt() + gamma * (wn.sqrt() + qn.sqrt());
            (scale, round_up(bound))
        };
        norms[n + j] = scale;
        norms[2 * n + j] = bound;
    }
    (norms, screen)
}

/// `gamma_k` of an f32 sum of `k` products (Higham's `k u / (1 - k u)`, `u = 2^-24`), with 32
/// more terms for the vector lanes' final sum.
fn sum_gamma(k: usize) -> f64 {
    let ku = (k + 32) as f64 * f64::powi(2.0, -24);
    ku / (1.0 - ku)
}

/// The smallest f32 at least `v` (`v` finite and non-negative).
fn round_up(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) < v {
        f32::from_bits(f.to_bits() + 1)
    } else {
        f
    }
}

/// `out[m, v] = x[m, k] @ w^T`, `w` given as `planes` (`[2, v, k]`, [`split`]) with `tables`
/// ([`tables`]), in `mode`.
pub fn lm_head(
    s: &MatmulShape,
    x: &[f32],
    planes: &[u16],
    tables: Tables,
    mode: HeadMode,
    out: &mut [f32],
    workers: &dyn Workers,
) -> Result<HeadStats, MatmulError> {
    let check = |name, dims: String, got, want| {
        matmul::check_len(super::LM_HEAD_TARGET, name, dims, got, want)
    };
    check("x", format!("{}, {}", s.m, s.k), x.len(), s.m * s.k)?;
    check(
        "planes",
        format!("2, {}, {}", s.n, s.k),
        planes.len(),
        2 * s.n * s.k,
    )?;
    check("norms", format!("3, {}", s.n), tables.norms.len(), 3 * s.n)?;
    check(
        "screen",
        format!("{}, {}", s.n, s.k),
        tables.screen.len(),
        s.n * s.k,
    )?;
    check("out", format!("{}, {}", s.m, s.n), out.len(), s.m * s.n)?;
    if out.is_empty() {
        return Ok(HeadStats::default());
    }
    let (hi, lo) = planes.split_at(s.n * s.k);
    let w = Split {
        hi: hi.as_ptr(),
        lo: lo.as_ptr(),
    };
    // From PACKED_MIN_ROWS rows the call is compute bound: every logit exact, in the f32
    // matmul's packed tiles (reading half the bytes would save little there).
    if mode == HeadMode::Argmax && s.k > 0 && s.m < matmul::PACKED_MIN_ROWS && argmax_reads_half() {
        #[cfg(target_arch = "x86_64")]
        {
            let estimate = if s.m <= SCREEN_MAX_ROWS {
                Estimate::Screen {
                    screen: tables.screen,
                    scales: &tables.norms[s.n..2 * s.n],
                    bounds: &tables.norms[2 * s.n..],
                }
            } else {
                Estimate::Hi {
                    hi,
                    norms: &tables.norms[..s.n],
                }
            };
            // SAFETY: lengths checked above; the CPU has AVX-512 BF16.
            return Ok(unsafe { argmax(s, x, w, estimate, out, workers) });
        }
    }
    // SAFETY: lengths checked above.
    unsafe { matmul::matmul_rows(s, x, w, out, true, None, workers) };
    Ok(HeadStats { exact: out.len() })
}

/// The bound's factor of `|x| |hi_j|` (both Euclidean norms) for sums of `k` products: `hi`'s
/// truncation (2^-7), `x` rounded to bf16 for the estimate (2^-8) and three f32 sums' rounding
/// (the exact sum, the estimate, and the exact sum's products with `w` in place of `hi`), each
/// within `gamma_k` of its real value; enlarged by 2^-6 for the rest (second-order terms, the
/// norms' own rounding).
fn bound_scale(k: usize) -> f64 {
    let gamma = sum_gamma(k);
    (f64::powi(2.0, -7) + f64::powi(2.0, -8) + 3.0 * gamma) * (1.0 + f64::powi(2.0, -6))
}

/// The bound's absolute part for one row of `x` and weight row norm `norm`: values flushed to
/// zero by the BF16 dot product (inputs and results below 2^-126) and `hi`'s zero or subnormal
/// values.
fn bound_floor(k: usize, x_max: f64, norm: f64) -> f64 {
    (k + 32) as f64 * f64::powi(2.0, -126) * (2.0 + x_max + norm)
}

/// One row of `x`'s bound, `e_j = slope |hi_j| + floor` ([`bound_scale`] and [`bound_floor`]
/// spelled out, so the scans over the vocabulary stay simple loops).
#[derive(Clone, Copy)]
struct RowBound {
    slope: f64,
    floor: f64,
}

impl RowBound {
    fn of(x: &[f32], scale: f64) -> RowBound {
        let x_norm = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let x_max = x.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
        let tiny = bound_floor(x.len(), 0.0, 0.0) / 2.0;
        RowBound {
            slope: scale * x_norm + tiny,
            floor: tiny * (2.0 + x_max),
        }
    }

    /// The screen's bound for one row of `x`: `e_j = (1 + 2^-6) |x| b_j` ([`tables`]) plus
    /// what flushing subnormals to zero may cost, in case the calling thread does: a subnormal
    /// `x` value read as zero moves a sum by at most `2^-126 |q| s_j`, a flushed partial sum
    /// by `2^-126 s_j`, `k + 32` of each at most, which `2^-99 b_j` exceeds (`b_j >= gamma
    /// |w_j| >= 127 gamma s_j`), and the final product's flush by `2^-126`.
    fn screen(x: &[f32]) -> RowBound {
        let x_norm = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        RowBound {
            slope: (1.0 + f64::powi(2.0, -6)) * x_norm + f64::powi(2.0, -99),
            floor: f64::powi(2.0, -125),
        }
    }

    #[inline(always)]
    fn at(self, norm: f32) -> f64 {
        self.slope * norm as f64 + self.floor
    }
}

/// Where [`HeadMode::Argmax`]'s estimates come from, with the per-row factors of their bounds.
#[derive(Clone, Copy)]
enum Estimate<'a> {
    /// BF16 dot products of `x` rounded to bf16 and the `hi` plane; bounds `slope |hi_j|`
    /// ([`bound_scale`]).
    Hi { hi: &'a [u16], norms: &'a [f32] },
    /// f32 dot products of `x` and the 8-bit screen, times each row's scale; bounds
    /// [`RowBound::screen`].
    Screen {
        screen: &'a [i8],
        scales: &'a [f32],
        bounds: &'a [f32],
    },
}

impl Estimate<'_> {
    /// Each row's factor of its bound ([`RowBound::at`]).
    fn norms(&self) -> &[f32] {
        match self {
            Estimate::Hi { norms, .. } => norms,
            Estimate::Screen { bounds, .. } => bounds,
        }
    }

    fn bound(&self, x: &[f32]) -> RowBound {
        match self {
            Estimate::Hi { .. } => RowBound::of(x, bound_scale(x.len())),
            Estimate::Screen { .. } => RowBound::screen(x),
        }
    }
}

/// One work item's scan of one row of `x` over its block of the vocabulary.
#[derive(Clone, Debug, Default)]
struct BlockScan {
    /// The block's largest `a - e`.
    low: f64,
    /// Every `a` and `e` finite, and `|a| + e` within f32's range.
    finite: bool,
    /// The block's logits with `a + e >= low`: a superset of the row's candidates, whose
    /// threshold (the row's largest `a - e`) is at least `low`.
    candidates: Vec<usize>,
}

/// Scans `a` (estimates of logits `first..`) against `bounds`.
fn scan(a: &[f32], norms: &[f32], first: usize, bound: RowBound) -> BlockScan {
    let mut low = f64::NEG_INFINITY;
    let mut finite = true;
    for (&aj, &nj) in a.iter().zip(norms) {
        let (aj, ej) = (aj as f64, bound.at(nj));
        // False for NaN too.
        finite &= aj.abs() + ej < f32::MAX as f64;
        let lo = aj - ej;
        low = if lo > low { lo } else { low };
    }
    let candidates = a
        .iter()
        .zip(norms)
        .enumerate()
        .filter(|(_, (&aj, &nj))| aj as f64 + bound.at(nj) >= low)
        .map(|(j, _)| first + j)
        .collect();
    BlockScan {
        low,
        finite,
        candidates,
    }
}

/// [`HeadMode::Argmax`]: pass one (each work item's block of estimates, then its scan while
/// the block is in cache), then the candidates' exact sums on the calling thread.
///
/// # Safety
/// `w` holds `n * k` values (its `hi` plane is the estimate's), the estimate's tables `n` rows,
/// `x` `m * k`, `out` `m * n`; the CPU has AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
unsafe fn argmax(
    s: &MatmulShape,
    x: &[f32],
    w: Split,
    estimate: Estimate,
    out: &mut [f32],
    workers: &dyn Workers,
) -> HeadStats {
    let norms = estimate.norms();
    let bounds: Vec<RowBound> = x.chunks(s.k).map(|r| estimate.bound(r)).collect();
    let xb: Vec<u16> = match estimate {
        Estimate::Hi { .. } => x
            .iter()
            .map(|v| half::bf16::from_f32(*v).to_bits())
            .collect(),
        Estimate::Screen { .. } => Vec::new(),
    };
    let block = matmul::block_rows(s.n, workers.threads());
    let items = s.n.div_ceil(block);
    let scans: Vec<std::sync::Mutex<Vec<BlockScan>>> =
        (0..items).map(|_| Default::default()).collect();
    let o = SharedOut(out.as_mut_ptr());
    let job = |item: usize| {
        let rows = item * block..((item + 1) * block).min(s.n);
        // SAFETY: the caller's contract; items write disjoint columns `rows` of `out`.
        unsafe {
            match estimate {
                Estimate::Hi { hi, .. } => avx512bf16::estimate_block(s, &xb, hi, rows.clone(), &o),
                Estimate::Screen { screen, scales, .. } => {
                    screen_estimate_block(s, x, screen, scales, rows.clone(), &o)
                }
            }
        };
        let found = bounds
            .iter()
            .enumerate()
            .map(|(i, &bound)| {
                // SAFETY: this item's columns of row i, written just above.
                let a = unsafe {
                    std::slice::from_raw_parts(
                        o.0.add(i * s.n + rows.start).cast_const(),
                        rows.len(),
                    )
                };
                scan(a, &norms[rows.clone()], rows.start, bound)
            })
            .collect();
        *scans[item].lock().unwrap_or_else(|e| e.into_inner()) = found;
    };
    workers.run(items, &job);
    let scans: Vec<Vec<BlockScan>> = scans
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let mut candidates: Vec<usize> = Vec::new();
    let mut whole = false;
    for (i, &bound) in bounds.iter().enumerate() {
        let row = scans.iter().map(|item| &item[i]);
        // A non-finite `x` makes every bound non-finite, which the scans flag too.
        whole |= row.clone().any(|b| !b.finite);
        let low = row.clone().fold(f64::NEG_INFINITY, |l, b| l.max(b.low));
        candidates.extend(
            row.flat_map(|b| &b.candidates)
                .filter(|&&j| out[i * s.n + j] as f64 + bound.at(norms[j]) >= low),
        );
    }
    candidates.sort_unstable();
    candidates.dedup();
    // Past a quarter of the weight, reading it all is as cheap.
    if whole || candidates.len() * 4 > s.n {
        // SAFETY: the caller's contract.
        unsafe { matmul::matmul_rows(s, x, w, out, false, None, workers) };
        return HeadStats { exact: out.len() };
    }
    let o = SharedOut(out.as_mut_ptr());
    for &j in &candidates {
        // SAFETY: j < n; column j of `out` is written by this thread alone now.
        unsafe { matmul::rows_block(s, x, w, j..j + 1, &o, false) };
    }
    HeadStats {
        exact: candidates.len() * s.m,
    }
}

/// Columns `rows` of [`Estimate::Screen`]'s estimates: `out` gets `s_j` times the f32 sums of
/// `x` and the screen's rows, each 8-bit value widened to f32 (exactly), 16 per vector.
///
/// # Safety
/// AVX-512F, BW and VL available; `out` points to `m * n` values, columns `rows` this
/// thread's alone; `x` holds `m * k` values, `screen` `n * k`, `scales` `n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn screen_estimate_block(
    s: &MatmulShape,
    x: &[f32],
    screen: &[i8],
    scales: &[f32],
    rows: std::ops::Range<usize>,
    out: &SharedOut<f32>,
) {
    use matmul::avx512::{for_each_tile, TileKernel};

    struct Tile {
        x: *const f32,
        q: *const i8,
        scales: *const f32,
        k: usize,
        out: *mut f32,
        ldo: usize,
    }

    /// 16 values at `p` widened to f32, or the first `n` of them (the other lanes zero).
    ///
    /// # Safety
    /// `p..p+n` readable; AVX-512F, BW and VL available.
    #[inline(always)]
    unsafe fn load16(p: *const i8, n: usize) -> __m512 {
        // SAFETY: the caller's contract; masked lanes are not read.
        unsafe {
            let v = if n == 16 {
                _mm_loadu_si128(p.cast())
            } else {
                _mm_maskz_loadu_epi8(((1u32 << n) - 1) as __mmask16, p.cast())
            };
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))
        }
    }

    impl TileKernel for Tile {
        #[inline(always)]
        unsafe fn tile<const MT: usize, const NT: usize>(&self, i: usize, j: usize) {
            let k = self.k;
            // SAFETY: the caller's contract; every offset stays below k in its row.
            unsafe {
                let (x, q) = (self.x.add(i * k), self.q.add(j * k));
                let out = self.out.add(i * self.ldo + j);
                let mut acc = [[_mm512_setzero_ps(); NT]; MT];
                let mut c = 0;
                while c < k {
                    let n = (k - c).min(16);
                    let mut wv = [_mm512_setzero_ps(); NT];
                    for (jj, v) in wv.iter_mut().enumerate() {
                        if c % 64 == 0 {
                            _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add((jj + NT) * k + c).cast());
                        }
                        *v = load16(q.add(jj * k + c), n);
                    }
                    for (ii, row) in acc.iter_mut().enumerate() {
                        let xv = if n == 16 {
                            _mm512_loadu_ps(x.add(ii * k + c))
                        } else {
                            _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, x.add(ii * k + c))
                        };
                        for (a, v) in row.iter_mut().zip(&wv) {
                            *a = _mm512_fmadd_ps(xv, *v, *a);
                        }
                    }
                    c += n;
                }
                for (ii, row) in acc.iter().enumerate() {
                    for (jj, a) in row.iter().enumerate() {
                        *out.add(ii * self.ldo + jj) =
                            _mm512_reduce_add_ps(*a) * *self.scales.add(j + jj);
                    }
                }
            }
        }
    }

    let t = Tile {
        x: x.as_ptr(),
        q: screen.as_ptr(),
        scales: scales.as_ptr(),
        k: s.k,
        out: out.0,
        ldo: s.n,
    };
    // SAFETY: rows `rows` of the screen and every row of `x` exist; the cells are this item's.
    unsafe { for_each_tile(s.m, rows, &t) }
}

#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use super::{MatmulShape, SharedOut};
    use crate::kernels::matmul::avx512::{for_each_tile, TileKernel};
    use std::arch::x86_64::*;

    /// bf16 values per vector.
    const LANES: usize = 32;

    /// Columns `rows` of pass one (see [`super::argmax`]): `out` gets the sums of `xb` (`x`
    /// rounded to bf16) and the `hi` plane.
    ///
    /// # Safety
    /// AVX-512F, BW, VL and BF16 available; `out` points to `m * n` values, columns `rows`
    /// this thread's alone; `xb` holds `m * k` values, `hi` `n * k`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn estimate_block(
        s: &MatmulShape,
        xb: &[u16],
        hi: &[u16],
        rows: std::ops::Range<usize>,
        out: &SharedOut<f32>,
    ) {
        let t = Tile {
            x: xb.as_ptr(),
            w: hi.as_ptr(),
            k: s.k,
            out: out.0,
            ldo: s.n,
        };
        // SAFETY: rows `rows` of `hi` and every row of `xb` exist; the cells are this item's.
        unsafe { for_each_tile(s.m, rows, &t) }
    }

    /// One tile: bf16 rows of `x` (row stride `k`) against rows of `hi` (row stride `k`).
    struct Tile {
        x: *const u16,
        w: *const u16,
        k: usize,
        out: *mut f32,
        ldo: usize,
    }

    /// 32 bf16 values at `p`, or the first `n` of them (the other lanes zero).
    ///
    /// # Safety
    /// `p..p+n` readable; AVX-512BW available.
    #[inline(always)]
    unsafe fn load32(p: *const u16, n: usize) -> __m512bh {
        // SAFETY: the caller's contract; masked lanes are not read. The transmute
        // reinterprets 32 16-bit lanes as 32 bf16 lanes.
        unsafe {
            let v = if n == LANES {
                _mm512_loadu_si512(p.cast())
            } else {
                _mm512_maskz_loadu_epi16(((1u64 << n) - 1) as __mmask32, p.cast())
            };
            std::mem::transmute::<__m512i, __m512bh>(v)
        }
    }

    impl TileKernel for Tile {
        /// `MT` x `NT` BF16 dot products over `k`, 32 products per instruction.
        #[inline(always)]
        unsafe fn tile<const MT: usize, const NT: usize>(&self, i: usize, j: usize) {
            let k = self.k;
            // SAFETY: the caller's contract; every offset stays below k in its row.
            unsafe {
                let (x, w) = (self.x.add(i * k), self.w.add(j * k));
                let out = self.out.add(i * self.ldo + j);
                let mut acc = [[_mm512_setzero_ps(); NT]; MT];
                let mut c = 0;
                while c < k {
                    let n = (k - c).min(LANES);
                    let mut wv =
                        [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); NT];
                    for (jj, v) in wv.iter_mut().enumerate() {
                        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((jj + NT) * k + c).cast::<i8>());
                        *v = load32(w.add(jj * k + c), n);
                    }
                    for (ii, row) in acc.iter_mut().enumerate() {
                        let xv = load32(x.add(ii * k + c), n);
                        for (a, v) in row.iter_mut().zip(&wv) {
                            *a = _mm512_dpbf16_ps(*a, xv, *v);
                        }
                    }
                    c += n;
                }
                for (ii, row) in acc.iter().enumerate() {
                    for (jj, a) in row.iter().enumerate() {
                        *out.add(ii * self.ldo + jj) = _mm512_reduce_add_ps(*a);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::workers::Serial;
    use proptest::prelude::*;

    fn reference(s: &MatmulShape, x: &[f32], w: &[f32]) -> Vec<f64> {
        let mut out = vec![0.0; s.m * s.n];
        for i in 0..s.m {
            for j in 0..s.n {
                out[i * s.n + j] = (0..s.k)
                    .map(|c| x[i * s.k + c] as f64 * w[j * s.k + c] as f64)
                    .sum();
            }
        }
        out
    }

    /// The lowest index of the largest value (the sampler's greedy pick).
    fn argmax(row: &[f32]) -> usize {
        let mut best = 0;
        for (j, v) in row.iter().enumerate() {
            if *v > row[best] {
                best = j;
            }
        }
        best
    }

    fn run(s: &MatmulShape, x: &[f32], w: &[f32], mode: HeadMode) -> (Vec<f32>, HeadStats) {
        let mut out = vec![f32::NAN; s.m * s.n];
        let planes = split(w);
        let (norms, screen) = tables(&planes, s.k);
        let t = Tables {
            norms: &norms,
            screen: &screen,
        };
        let stats = lm_head(s, x, &planes, t, mode, &mut out, &Serial).unwrap();
        (out, stats)
    }

    #[test]
    fn split_planes_join_back_exactly() {
        let w = [
            0.0,
            -0.0,
            1.5,
            -3.25e-20,
            f32::MIN_POSITIVE / 3.0,
            1e38,
            f32::INFINITY,
        ];
        let planes = split(&w);
        for (i, v) in w.iter().enumerate() {
            assert_eq!(join(planes[i], planes[w.len() + i]).to_bits(), v.to_bits());
        }
    }

    /// Exact mode computes the f32 matmul's very sums.
    #[test]
    fn exact_mode_equals_the_f32_matmul_bit_for_bit() {
        for (m, k, n) in [(1, 576, 300), (3, 17, 41), (8, 64, 70), (70, 33, 9)] {
            let s = MatmulShape { m, k, n };
            let x = crate::kernels::test_values(m * k, 3);
            let w = crate::kernels::test_values(n * k, 5);
            let mut plain = vec![0.0; m * n];
            matmul::matmul(&s, &x, &w, &mut plain, &Serial).unwrap();
            let (got, _) = run(&s, &x, &w, HeadMode::Exact);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{s:?}"
            );
        }
    }

    /// A weight whose first three rows are `x`'s first row with random low halves, the others
    /// random at half the scale: for that row of `x` the three are the top logits, which only
    /// the low halves (the exact sums) tell apart.
    fn near_ties(x: &[f32], k: usize, n: usize, seed: u64) -> Vec<f32> {
        let noise = crate::kernels::test_values(n * k, seed + 1);
        (0..n * k)
            .map(|i| {
                if i / k < 3 {
                    let lo = ((noise[i] + 1.0) * 32767.0) as u32;
                    f32::from_bits((x[i % k].to_bits() & 0xffff_0000) | lo)
                } else {
                    noise[i] / 2.0
                }
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Argmax mode picks exact mode's argmax on every row, its candidates hold exact
        /// mode's sums and every other logit lies below the row's maximum; exact mode is within
        /// f32 rounding of the f64 reference.
        #[test]
        fn argmax_mode_keeps_the_exact_argmax(
            m in 1usize..13, k in 1usize..100, n in 1usize..200, seed in 0u64..1000,
            ties in any::<bool>(), scale in -8i32..8,
        ) {
            let s = MatmulShape { m, k, n };
            let x: Vec<f32> = crate::kernels::test_values(m * k, seed)
                .iter()
                .map(|v| v * f32::powi(2.0, scale))
                .collect();
            let w = if ties { near_ties(&x, k, n, seed) } else { crate::kernels::test_values(n * k, seed + 7) };
            let (exact, _) = run(&s, &x, &w, HeadMode::Exact);
            let want = reference(&s, &x, &w);
            for (g, r) in exact.iter().zip(&want) {
                let tol = 1e-6 * k as f64 * f64::powi(2.0, scale) + 1e-6 * r.abs();
                prop_assert!((*g as f64 - r).abs() <= tol, "{} vs {}", g, r);
            }
            let (fast, stats) = run(&s, &x, &w, HeadMode::Argmax);
            prop_assert!(stats.exact >= m && stats.exact <= m * n);
            // One row with its three near-tied top logits: those alone are summed exactly.
            if ties && m == 1 && n >= 16 && argmax_reads_half() {
                prop_assert!(stats.exact < n, "{:?}", stats);
            }
            for i in 0..m {
                let (e, f) = (&exact[i * n..(i + 1) * n], &fast[i * n..(i + 1) * n]);
                let best = argmax(e);
                prop_assert_eq!(argmax(f), best, "row {}", i);
                prop_assert_eq!(f[best].to_bits(), e[best].to_bits());
                for j in 0..n {
                    prop_assert!(f[j].to_bits() == e[j].to_bits() || f[j] < e[best]);
                }
            }
        }
    }

    #[test]
    fn row_norms_bound_the_hi_rows_from_above() {
        let w = crate::kernels::test_values(7 * 33, 4);
        let planes = split(&w);
        let norms = row_norms(&planes, 33);
        assert_eq!(norms.len(), 7);
        for (j, n) in norms.iter().enumerate() {
            let exact: f64 = (0..33)
                .map(|c| (join(planes[j * 33 + c], 0) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(*n as f64 >= exact && (*n as f64) < exact * (1.0 + 1e-6));
        }
    }

    /// Each row's screen bound covers its integers' distance from the row (a row of values too
    /// small for a normal scale is screened as zeros, covered by its norm), and a row holding a
    /// non-finite value gets an infinite bound.
    #[test]
    fn the_screens_bounds_cover_its_error() {
        let k = 40;
        let mut w: Vec<f32> = crate::kernels::test_values(5 * k, 8);
        w[k..2 * k].iter_mut().for_each(|v| *v *= 1e-37);
        w[2 * k..3 * k].iter_mut().for_each(|v| *v = 0.0);
        w[3 * k + 7] = f32::NAN;
        let (norms, screen) = tables(&split(&w), k);
        let (scales, bounds) = (&norms[5..10], &norms[10..]);
        for j in 0..5 {
            let row = &w[j * k..(j + 1) * k];
            let err = (0..k)
                .map(|c| (row[c] as f64 - scales[j] as f64 * screen[j * k + c] as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            match j {
                3 => assert_eq!(bounds[j], f32::INFINITY),
                _ => assert!(bounds[j] as f64 >= err, "row {j}: {} < {err}", bounds[j]),
            }
        }
        assert_eq!((scales[1], scales[2], bounds[2]), (0.0, 0.0, 0.0));
        assert!(bounds[1] > 0.0 && screen[k..3 * k].iter().all(|&q| q == 0));
        assert!(screen[..k].iter().any(|&q| q.abs() == 127));
    }

    #[test]
    fn wrong_lengths_are_refused_by_name() {
        let s = MatmulShape { m: 1, k: 2, n: 3 };
        let tables = |norms, screen| Tables { norms, screen };
        let run = |t| {
            lm_head(
                &s,
                &[0.0; 2],
                &[0; 12],
                t,
                HeadMode::Exact,
                &mut [0.0; 3],
                &Serial,
            )
        };
        let err = run(tables(&[0.0; 3], &[0; 6])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernelgen_lm_head: norms holds 3 values, [3, 3] needs 9"
        );
        let err = run(tables(&[0.0; 9], &[0; 5])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernelgen_lm_head: screen holds 5 values, [3, 2] needs 6"
        );
    }

    /// A row whose input holds a NaN gets exact mode's sums (all NaN), not estimates.
    #[test]
    fn a_non_finite_row_is_summed_exactly() {
        let s = MatmulShape { m: 2, k: 32, n: 50 };
        let mut x = crate::kernels::test_values(64, 1);
        x[40] = f32::NAN;
        let w = crate::kernels::test_values(50 * 32, 2);
        let (exact, _) = run(&s, &x, &w, HeadMode::Exact);
        let (fast, stats) = run(&s, &x, &w, HeadMode::Argmax);
        assert_eq!(stats.exact, 100);
        assert!(fast[50..].iter().all(|v| v.is_nan()));
        assert_eq!(
            fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            exact.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    /// On model-sized rows, argmax mode reads few exact rows (where this CPU runs it).
    #[test]
    fn argmax_mode_rescores_a_few_rows_of_a_wide_head() {
        if !argmax_reads_half() {
            return;
        }
        let s = MatmulShape {
            m: 1,
            k: 576,
            n: 4096,
        };
        let x = crate::kernels::test_values(576, 11);
        let w = crate::kernels::test_values(4096 * 576, 12);
        let (_, stats) = run(&s, &x, &w, HeadMode::Argmax);
        assert!(stats.exact < 4096 / 8, "{stats:?}");
    }
}
