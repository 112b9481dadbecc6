//! The LM head `logits = x @ w^T` over an f32 weight `[v, k]` stored as two 16-bit planes
//! ([`split`]): `hi`, the top half of every value (a bf16 rounded toward zero), then `lo`, the
//! bottom half. Same bytes as the f32 matrix, plus an 8-bit copy of it (a quarter more) for
//! greedy rows, and two ways to read them:
//!
//! - [`HeadMode::Exact`]: both planes, rejoined into the f32 values: the very sums
//!   [`super::matmul`] computes over the f32 matrix (the same tiles, `super::matmul::WeightRows`).
//!   Calls of `super::matmul::PACKED_MIN_ROWS` rows or more (compute bound) are always exact.
//! - [`HeadMode::Argmax`]: for rows that only need their argmax (greedy decoding), an 8-bit
//!   copy of the matrix (the screen, [`tables`]), a quarter of its bytes: an estimate `a` of
//!   every logit (integer dot products of `x` rounded to 16-bit integers and each row's 8-bit
//!   integers, 32 per instruction, times the two scales) and a bound `e` on how far the exact
//!   sum `c` can lie from it, then [`HeadMode::Exact`]'s sums for the candidates, the logits
//!   with `a + e >= max(a - e)`. Any other logit `j` is below the row's largest exact one:
//!   `c_j <= a_j + e_j < a_m - e_m <= c_m` for the `m` reaching `max(a - e)`, a candidate. So
//!   the argmax, ties included (the lowest index of the largest value), is the one
//!   [`HeadMode::Exact`] gives; the row holds candidates' exact sums and the others' estimates
//!   (each below the row's maximum).
//!
//! The bound is row `j`'s `|x| b_j` ([`tables`]: the screen's own error, `x`'s rounding and
//! the f32 roundings, by Cauchy-Schwarz, [`RowBound::screen`]). A call whose estimates or
//! bounds are not finite gets [`HeadMode::Exact`]'s sums throughout (a NaN there must reach
//! the sampler as it is), and so does a CPU without AVX-512 VNNI ([`argmax_screens`]).

use super::matmul::{self, MatmulError, MatmulShape, WeightRows};
use super::workers::{SharedOut, Workers};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// How the LM head reads its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadMode {
    /// Every logit exact (both planes).
    Exact,
    /// Each row's argmax exact, from the 8-bit screen and the candidates' exact values.
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

/// Whether this CPU runs [`HeadMode::Argmax`]'s estimate ([`screen_estimate_block`]):
/// AVX-512 with VNNI (`vpdpwssd`, 32 products per instruction). Elsewhere
/// [`HeadMode::Argmax`] sums exactly, and step programs keep the plain f32 LM head
/// (`kernelgen::step::StepSource::split_head`).
pub fn argmax_screens() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::avx512() && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows from which calls are always exact (compute bound: every logit in the f32 matmul's
/// packed tiles, where reading fewer bytes would save little).
pub const ARGMAX_MAX_ROWS: usize = matmul::PACKED_MIN_ROWS - 1;

/// What [`HeadMode::Argmax`] reads besides the planes, computed once at upload ([`tables`]):
/// `rows` `[2, n]`, each row's screen scale `s_j` and its bound `b_j`; `screen` `[n, k]`,
/// each row of the matrix as 8-bit integers `q_j` with `w_j ~ s_j q_j`.
#[derive(Clone, Copy, Debug)]
pub struct Tables<'a> {
    pub rows: &'a [f32],
    pub screen: &'a [i8],
}

/// [`Tables`]' contents for the matrix `planes` (`[2, n, k]`, [`split`]): `(rows [2, n],
/// screen [n, k])`. Row `j`'s scale is `s_j = max |w_j| / 127` and `q_j = round(w_j / s_j)`;
/// its bound `b_j` rounds up `|w_j - s_j q_j| + gamma (|w_j| + s_j |q_j|) + r s_j |q_j|`
/// (Euclidean norms, in f64, `gamma` the f32 sums' [`sum_gamma`], `r |x|` the most `x`'s
/// rounding to integers moves it, [`X_STEP`]), so that `|x| b_j` bounds how far the screen's
/// estimate of a logit lies from the exact f32 sum ([`RowBound::screen`]). A row
/// whose scale would be subnormal (values below `127 * 2^-126`, which a thread flushing
/// subnormals would read as zero) gets `s_j = 0` and `q_j = 0`: its estimate is zero, its bound
/// `|w_j|` and more. A row holding a non-finite value gets an infinite bound (its call then
/// sums exactly).
pub fn tables(planes: &[u16], k: usize) -> (Vec<f32>, Vec<i8>) {
    let n = (planes.len() / 2).checked_div(k).unwrap_or(0);
    let (hi, lo) = planes.split_at(n * k);
    let mut rows = vec![0.0f32; 2 * n];
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
            // |x - sx xq| <= sqrt(k) X_STEP sx <= sqrt(k) X_STEP |x| / levels.
            let x_error = (k as f64).sqrt() * X_STEP / x_levels(k) as f64;
            let bound = err.sqrt() + gamma * (wn.sqrt() + qn.sqrt()) + x_error * qn.sqrt();
            (scale, round_up(bound))
        };
        rows[j] = scale;
        rows[n + j] = bound;
    }
    (rows, screen)
}

/// The largest magnitude the screen's estimate gives `x`'s values as 16-bit integers
/// ([`quantize_x`]) for rows of `k` values: at most 32767, and small enough that no sum of `k`
/// products with the screen's integers (at most 127) leaves i32.
fn x_levels(k: usize) -> i32 {
    (i32::MAX as usize / (127 * k.max(1))).min(i16::MAX as usize) as i32
}

/// How far rounding `x` to integers moves each value, in units of its step `sx`: half a step,
/// and a little more for the division's own rounding and for a subnormal value read as zero
/// (below `2^-126 <= 2^-31 sx`, [`MIN_X`]).
const X_STEP: f64 = 0.52;

/// The smallest largest value of a row of `x` the screen estimates (besides a row of zeros):
/// its step `sx` then stays far above the subnormals. A call with a row below sums exactly.
const MIN_X: f32 = 1e-24;

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
    check("rows", format!("2, {}", s.n), tables.rows.len(), 2 * s.n)?;
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
    if mode == HeadMode::Argmax && s.k > 0 && s.m <= ARGMAX_MAX_ROWS && argmax_screens() {
        #[cfg(target_arch = "x86_64")]
        {
            let (scales, bounds) = tables.rows.split_at(s.n);
            // SAFETY: lengths checked above; the CPU has AVX-512 VNNI.
            return Ok(unsafe { argmax(s, x, w, tables.screen, scales, bounds, out, workers) });
        }
    }
    // SAFETY: lengths checked above.
    unsafe { matmul::matmul_rows(s, x, w, out, true, None, workers) };
    Ok(HeadStats { exact: out.len() })
}

/// One row of `x`'s bound, `e_j = slope b_j + floor` ([`RowBound::screen`]).
#[derive(Clone, Copy)]
struct RowBound {
    slope: f64,
    floor: f64,
}

impl RowBound {
    /// The screen's bound for one row of `x`: `e_j = (1 + 2^-6) |x| b_j` ([`tables`]: the
    /// screen's error, `x`'s rounding to integers, and the f32 roundings of the exact sum and
    /// of the estimate's products; its integer sum is exact), plus what flushing subnormals to
    /// zero may cost in case the calling thread does: each of the exact sum's `k` products
    /// and its lanes' partial sums by `2^-126`, and the estimate's last product by as much
    /// (its first, `sum sx`, is at least `sx`, a normal number: [`MIN_X`]). Values read as
    /// zero move a sum by less than the rest of the bound (`x`'s by [`MIN_X`], `w`'s are in
    /// the screen's error).
    fn screen(x: &[f32]) -> RowBound {
        let x_norm = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        RowBound {
            slope: (1.0 + f64::powi(2.0, -6)) * x_norm,
            floor: (x.len() + 64) as f64 * f64::powi(2.0, -125),
        }
    }

    #[inline(always)]
    fn at(self, norm: f32) -> f64 {
        self.slope * norm as f64 + self.floor
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
fn scan(a: &[f32], row_bounds: &[f32], first: usize, bound: RowBound) -> BlockScan {
    let mut low = f64::NEG_INFINITY;
    let mut finite = true;
    for (&aj, &nj) in a.iter().zip(row_bounds) {
        let (aj, ej) = (aj as f64, bound.at(nj));
        // False for NaN too.
        finite &= aj.abs() + ej < f32::MAX as f64;
        let lo = aj - ej;
        low = if lo > low { lo } else { low };
    }
    let candidates = a
        .iter()
        .zip(row_bounds)
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
/// `w` holds `n * k` values, `screen` too, `scales` and `bounds` `n`, `x` `m * k`, `out`
/// `m * n`; the CPU has AVX-512 VNNI.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn argmax(
    s: &MatmulShape,
    x: &[f32],
    w: Split,
    screen: &[i8],
    scales: &[f32],
    row_bounds: &[f32],
    out: &mut [f32],
    workers: &dyn Workers,
) -> HeadStats {
    let Some(xq) = quantize_x(x, s.k) else {
        // SAFETY: the caller's contract.
        unsafe { matmul::matmul_rows(s, x, w, out, false, None, workers) };
        return HeadStats { exact: out.len() };
    };
    let bounds: Vec<RowBound> = x.chunks(s.k).map(RowBound::screen).collect();
    let block = matmul::block_rows(s.n, workers.threads());
    let items = s.n.div_ceil(block);
    let scans: Vec<std::sync::Mutex<Vec<BlockScan>>> =
        (0..items).map(|_| Default::default()).collect();
    let o = SharedOut(out.as_mut_ptr());
    let job = |item: usize| {
        let rows = item * block..((item + 1) * block).min(s.n);
        // SAFETY: the caller's contract; items write disjoint columns `rows` of `out`.
        unsafe { screen_estimate_block(s, &xq, screen, scales, rows.clone(), &o) };
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
                scan(a, &row_bounds[rows.clone()], rows.start, bound)
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
                .filter(|&&j| out[i * s.n + j] as f64 + bound.at(row_bounds[j]) >= low),
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

/// Rows of `x` as 16-bit integers for the screen's estimate: row `i` is `sx[i]` times
/// `values[i * kp..(i + 1) * kp]`, each row zero-padded to `kp`, a multiple of 32.
#[derive(Default)]
struct QuantizedX {
    values: Vec<i16>,
    sx: Vec<f32>,
    kp: usize,
}

/// `x`'s rows (`k` values each) as integers up to [`x_levels`] in magnitude and a step per
/// row, or `None` where a row's largest value is not finite or below [`MIN_X`] but not zero
/// (the call then sums exactly).
fn quantize_x(x: &[f32], k: usize) -> Option<QuantizedX> {
    let kp = k.next_multiple_of(32);
    let levels = x_levels(k) as f32;
    let mut q = QuantizedX {
        values: vec![0; x.len() / k.max(1) * kp],
        sx: Vec::new(),
        kp,
    };
    for (row, out) in x.chunks(k).zip(q.values.chunks_mut(kp)) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if !max.is_finite() || (max > 0.0 && max < MIN_X) {
            return None;
        }
        let sx = max / levels;
        if sx > 0.0 {
            for (o, v) in out.iter_mut().zip(row) {
                *o = (v / sx).round().clamp(-levels, levels) as i16;
            }
        }
        q.sx.push(sx);
    }
    Some(q)
}

/// Columns `rows` of [`HeadMode::Argmax`]'s estimates: `out` gets `sx_i s_j` times the exact
/// integer sums of `x`'s row `i` as integers and the screen's row `j` (each 8-bit value
/// widened to 16 bits; `vpdpwssd`, 32 products an instruction into 16 i32 lanes).
///
/// # Safety
/// AVX-512F, BW, VL and VNNI available; `out` points to `m * n` values, columns `rows` this
/// thread's alone; `xq` holds `m` rows, `screen` `n * k` values, `scales` `n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn screen_estimate_block(
    s: &MatmulShape,
    xq: &QuantizedX,
    screen: &[i8],
    scales: &[f32],
    rows: std::ops::Range<usize>,
    out: &SharedOut<f32>,
) {
    use matmul::avx512::{for_each_tile, TileKernel};

    struct Tile {
        x: *const i16,
        kp: usize,
        sx: *const f32,
        q: *const i8,
        scales: *const f32,
        k: usize,
        out: *mut f32,
        ldo: usize,
    }

    /// How many tiles ahead each tile prefetches the screen's rows. The f32 matmul's tiles
    /// prefetch the next tile, 4 rows of `k` f32 values (9 KB at SmolLM2's `k` = 576); a
    /// screen row is a quarter of those bytes, so the next tile alone was too close (perf: the
    /// screen's loads were the hot spots). Measured with a temporary harness (not kept; AMD
    /// EPYC, 2 threads, SmolLM2's 49152 x 576 head at one row, 128 MB read between calls so
    /// that each starts from memory as in a step, best of 20 calls, alternated builds): one
    /// tile ahead 0.60-0.72 ms, four 0.54-0.60, beside a two-thread sum of the screen's bytes
    /// in the same processes at 0.37-0.41. (With the screen left in cache between calls: one
    /// tile 0.43-0.60, two 0.41-0.46, three 0.33-0.36, four, six and eight 0.31-0.43.)
    const PREFETCH_TILES: usize = 4;

    impl TileKernel for Tile {
        #[inline(always)]
        unsafe fn tile<const MT: usize, const NT: usize>(&self, i: usize, j: usize) {
            let k = self.k;
            // SAFETY: the caller's contract; every screen offset stays below k in its row,
            // every x offset below kp (c < k <= kp, both multiples of 32 apart from k).
            unsafe {
                let (x, q) = (self.x.add(i * self.kp), self.q.add(j * k));
                let out = self.out.add(i * self.ldo + j);
                let mut acc = [[_mm512_setzero_si512(); NT]; MT];
                let mut c = 0;
                while c < k {
                    let n = (k - c).min(32);
                    let mut wv = [_mm512_setzero_si512(); NT];
                    for (jj, v) in wv.iter_mut().enumerate() {
                        let p = q.add(jj * k + c);
                        if c % 64 == 0 {
                            let ahead = (jj + PREFETCH_TILES * NT) * k + c;
                            _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(ahead).cast());
                        }
                        let bytes = if n == 32 {
                            _mm256_loadu_si256(p.cast())
                        } else {
                            _mm256_maskz_loadu_epi8(((1u64 << n) - 1) as __mmask32, p.cast())
                        };
                        *v = _mm512_cvtepi8_epi16(bytes);
                    }
                    for (ii, row) in acc.iter_mut().enumerate() {
                        let xv = _mm512_loadu_si512(x.add(ii * self.kp + c).cast());
                        for (a, v) in row.iter_mut().zip(&wv) {
                            *a = _mm512_dpwssd_epi32(*a, xv, *v);
                        }
                    }
                    c += n;
                }
                for (ii, row) in acc.iter().enumerate() {
                    for (jj, a) in row.iter().enumerate() {
                        let sum = _mm512_reduce_add_epi32(*a) as f32;
                        *out.add(ii * self.ldo + jj) =
                            sum * *self.sx.add(i + ii) * *self.scales.add(j + jj);
                    }
                }
            }
        }
    }

    let t = Tile {
        x: xq.values.as_ptr(),
        kp: xq.kp,
        sx: xq.sx.as_ptr(),
        q: screen.as_ptr(),
        scales: scales.as_ptr(),
        k: s.k,
        out: out.0,
        ldo: s.n,
    };
    // SAFETY: rows `rows` of the screen and every row of `xq` exist; the cells are this item's.
    unsafe { for_each_tile(s.m, rows, &t) }
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
        let (rows, screen) = tables(&planes, s.k);
        let t = Tables {
            rows: &rows,
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
            if ties && m == 1 && n >= 16 && argmax_screens() {
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every estimate of the screen lies within its bound of the exact f32 sum: on random
        /// rows, rows with one large value (a coarse scale), and with `x` the error of row 0's
        /// integers, where Cauchy-Schwarz is tight.
        #[test]
        fn screen_estimates_lie_within_their_bounds(
            m in 1usize..6, k in 1usize..150, n in 1usize..40, seed in 0u64..1000,
            scale in -8i32..8, outliers in any::<bool>(), aligned in any::<bool>(),
        ) {
            if !argmax_screens() {
                return Ok(());
            }
            let s = MatmulShape { m, k, n };
            let mut w = crate::kernels::test_values(n * k, seed + 3);
            if outliers {
                for j in (0..n).step_by(2) {
                    w[j * k + (j * 7) % k] = 20.0;
                }
            }
            let planes = split(&w);
            let (rows, screen) = tables(&planes, k);
            let (scales, bounds) = rows.split_at(n);
            let mut x: Vec<f32> = crate::kernels::test_values(m * k, seed)
                .iter()
                .map(|v| v * f32::powi(2.0, scale))
                .collect();
            if aligned {
                for c in 0..k {
                    x[c] = (w[c] - scales[0] * screen[c] as f32) * f32::powi(2.0, scale + 10);
                }
            }
            let mut exact = vec![0.0; m * n];
            matmul::matmul(&s, &x, &w, &mut exact, &Serial).unwrap();
            let xq = quantize_x(&x, k).unwrap();
            let mut estimate = vec![f32::NAN; m * n];
            let o = SharedOut(estimate.as_mut_ptr());
            // SAFETY: the CPU runs the screen (checked above); every length as the kernel needs.
            unsafe { screen_estimate_block(&s, &xq, &screen, scales, 0..n, &o) };
            for i in 0..m {
                let bound = RowBound::screen(&x[i * k..(i + 1) * k]);
                for j in 0..n {
                    let (a, c) = (estimate[i * n + j] as f64, exact[i * n + j] as f64);
                    prop_assert!((a - c).abs() <= bound.at(bounds[j]), "row {} logit {}: {} vs {} (bound {})", i, j, a, c, bound.at(bounds[j]));
                }
            }
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
        let (rows, screen) = tables(&split(&w), k);
        let (scales, bounds) = rows.split_at(5);
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
        let tables = |rows, screen| Tables { rows, screen };
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
            "kernelgen_lm_head: rows holds 3 values, [2, 3] needs 6"
        );
        let err = run(tables(&[0.0; 6], &[0; 5])).unwrap_err();
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
        if !argmax_screens() {
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
