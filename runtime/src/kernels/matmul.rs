//! `x @ w^T` on the host CPU for a weight laid out `[n, k]` (out-major, the step program's
//! layout: `runtime/src/model` stores every projection so), `x[m, k]` in f32, the result
//! `[m, n]` in f32. The weight may be f32 or bf16 (widened exactly on load).
//!
//! Built for the decode step's shapes, where XLA's dot reads weights well below the host's
//! bandwidth: `m` is 1 to a few dozen rows, so the weight is the traffic. Each weight row is
//! read once per call: work items are blocks of weight rows, and each item walks its rows four
//! at a time, scoring them against every row of `x` in tiles of up to 4 x 4 accumulators
//! (16 vector registers; the four weight rows stay in L1 while the tile's `x` rows pass by).
//! Calls of many rows (prefill with bf16 weights, which no XLA dot reads as they are) are
//! compute bound instead: from [`PACKED_MIN_ROWS`] rows each item packs its weight rows 32 at a
//! time into a transposed f32 panel and accumulates 6 x 32 outputs per tile by broadcasting.
//! AVX-512 is used where the CPU has it (picked at run time), plain loops elsewhere.

use super::element::Element;
use super::workers::{SharedOut, Workers};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m512;

/// Where a matmul's weight `[n, k]` comes from, addressed by flat index `row * k + col` and
/// widened to f32: a slice of one [`Element`] type ([`Plain`]), or the LM head's two 16-bit
/// planes (`super::lm_head::Split`). Every tile reads its weights through this, so each source
/// shares the tiles' arithmetic exactly.
pub(crate) trait WeightRows: Copy + Send + Sync {
    /// The source advanced by `n` values.
    ///
    /// # Safety
    /// The result stays within the source.
    unsafe fn offset(self, n: usize) -> Self;
    /// The value at flat index `i`.
    ///
    /// # Safety
    /// `i` within the source.
    unsafe fn get(self, i: usize) -> f32;
    /// 16 values from flat index `i`.
    ///
    /// # Safety
    /// `i..i+16` within the source; AVX-512F, BW and VL available.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(self, i: usize) -> __m512;
    /// The first `n` (< 16) values from `i`, the other lanes zero.
    ///
    /// # Safety
    /// As [`WeightRows::load16`], with `i..i+n` within the source.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16_tail(self, i: usize, n: usize) -> __m512;
    /// Hints that the values from `i` are read soon (any `i`: a prefetch never faults).
    #[cfg(target_arch = "x86_64")]
    fn prefetch(self, i: usize);
}

/// A weight stored as one [`Element`] type.
#[derive(Clone, Copy)]
pub(crate) struct Plain<W>(*const W);

impl<W: Element> Plain<W> {
    pub(crate) fn new(w: &[W]) -> Plain<W> {
        Plain(w.as_ptr())
    }
}

// SAFETY: a read-only view of `Sync` values, shared by work items for the call.
unsafe impl<W: Element> Send for Plain<W> {}
// SAFETY: as above.
unsafe impl<W: Element> Sync for Plain<W> {}

impl<W: Element> WeightRows for Plain<W> {
    #[inline(always)]
    unsafe fn offset(self, n: usize) -> Self {
        // SAFETY: the caller's contract.
        Plain(unsafe { self.0.add(n) })
    }
    #[inline(always)]
    unsafe fn get(self, i: usize) -> f32 {
        // SAFETY: the caller's contract.
        unsafe { *self.0.add(i) }.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(self, i: usize) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe { W::load16(self.0.add(i)) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_tail(self, i: usize, n: usize) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe { W::load16_tail(self.0.add(i), n) }
    }
    /// Non-temporal: a decode step reads each weight once, and a weight brought into every
    /// cache level pushed out what the step's other work keeps there (XLA's ops between the
    /// kernels, the activations). The two hints alternated every 10 steps inside one `bench
    /// decode` process (a temporary harness, not kept; AMD EPYC, 2 vCPUs): batch-1 steps 12.68,
    /// 12.63, 11.88, 8.67 ms (median) with this against 13.21, 13.04, 12.55, 9.05 with
    /// `_MM_HINT_T0`; batch 32 42.57 and 42.84 against 42.44 and 43.42. (The LM head's screen
    /// gained nothing from it: 9.52 and 9.74 against 9.54 and 9.71.)
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch(self, i: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_NTA};
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_NTA>(self.0.wrapping_add(i).cast::<i8>()) }
    }
}

/// The call's dimensions: `x[m, k]`, `w[n, k]`, `out[m, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatmulError {
    #[error("{target}: {name} holds {got} values, [{dims}] needs {want}")]
    Length {
        /// The kernel's custom call target.
        target: &'static str,
        name: &'static str,
        dims: String,
        got: usize,
        want: usize,
    },
}

/// Whether this CPU runs the vector path (AVX-512F, BW and VL). Elsewhere the matmul is plain loops, and
/// step programs keep XLA's dot (`kernelgen::step::program::host_matmul`).
pub fn vectorized() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows up to which step programs call this matmul instead of XLA CPU's dot (decode-sized
/// steps; `kernelgen::step::program::host_matmul`). Measured with `kernelgen bench decode` on
/// SmolLM2-135M (Intel Xeon, 2 vCPUs): the step's matmuls alone took 19.8 / 32.0 / 58.3 ms at
/// 1 / 8 / 32 rows against XLA's 24.1 / 48.1 / 63.8 ms; with every prefill row on it, the
/// 256-token prefill ran at 667 tokens/s against 775 with XLA's blocked GEMM there.
pub const MAX_ROWS: usize = 32;

/// Rows of `x` from which the AVX-512 path packs weight panels and runs outer-product tiles
/// (prefill-sized calls, compute bound) instead of the dot-product tiles that read each weight
/// row once (decode-sized calls, bandwidth bound). Measured on one thread (AMD EPYC, SmolLM2's
/// shapes, a temporary timing test): at 256 rows the packed tiles ran at 213-234 GFLOP/s
/// against 128-199 for the dot-product tiles; at 32 rows at 102-108 against 199-203 (the
/// packing is not paid back). In the 256-token prefill with bf16 weights (`bench decode
/// --weights bf16`, alternated three times) they gave 1324, 1261, 1289 tokens/s against 1293,
/// 1199, 1220; with f32 weights XLA's dot stays faster (1291, 1414 against 1221, 1205).
pub(crate) const PACKED_MIN_ROWS: usize = 64;

/// Weight rows per work item the planner aims at as a floor (a block's rows are read once).
const MIN_BLOCK_ROWS: usize = 16;

/// Items per thread the planner aims for. Few and long: each thread then streams a long run of
/// contiguous weight rows. Chosen on SmolLM2-135M decode steps (2 vCPUs, Xeon, lingering
/// helpers) by alternating the two every 10 steps in one process (a temporary harness): 2 items
/// beat 8 by 3% at batch 1 and 2% at batch 8, equal at 32; 32 items lost 6%.
const ITEMS_PER_THREAD: usize = 2;

/// `out = x @ w^T`, split over `workers`.
pub fn matmul<W: Element>(
    s: &MatmulShape,
    x: &[f32],
    w: &[W],
    out: &mut [f32],
    workers: &dyn Workers,
) -> Result<(), MatmulError> {
    matmul_fused(s, x, w, &Fusion::default(), out, workers)
}

/// What a call does around its product, for the step's ops that sit between two projections:
/// run as separate XLA thunks they cost a decode step a few microseconds each, 30 layers over.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fusion<'a> {
    /// `x` is RMS-normalized and scaled first (the norm before QKV and before gate/up).
    pub norm: Option<RmsNorm<'a>>,
    /// `residual[m, n]` is added to the product (the residual stream after O and down).
    pub residual: Option<&'a [f32]>,
}

impl Fusion<'_> {
    /// The custom call target that runs this fusion, which its refusals name.
    pub fn target(&self) -> &'static str {
        match (self.norm, self.residual) {
            (Some(_), None) => super::NORM_MATMUL_TARGET,
            (None, Some(_)) => super::MATMUL_ADD_TARGET,
            _ => super::MATMUL_TARGET,
        }
    }
}

/// The model's RMS norm of each row of `x[m, k]`: `x / sqrt(mean(x^2) + eps) * weight[k]`.
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm<'a> {
    pub weight: &'a [f32],
    pub eps: f32,
}

/// `out = f(x) @ w^T (+ residual)` with `f` the fusion's norm (or none), split over `workers`.
pub fn matmul_fused<W: Element>(
    s: &MatmulShape,
    x: &[f32],
    w: &[W],
    fusion: &Fusion,
    out: &mut [f32],
    workers: &dyn Workers,
) -> Result<(), MatmulError> {
    let target = fusion.target();
    let check = |name, dims: String, got, want| check_len(target, name, dims, got, want);
    check("x", format!("{}, {}", s.m, s.k), x.len(), s.m * s.k)?;
    check("w", format!("{}, {}", s.n, s.k), w.len(), s.n * s.k)?;
    check("out", format!("{}, {}", s.m, s.n), out.len(), s.m * s.n)?;
    if let Some(norm) = fusion.norm {
        check("norm", s.k.to_string(), norm.weight.len(), s.k)?;
    }
    if let Some(r) = fusion.residual {
        check("residual", format!("{}, {}", s.m, s.n), r.len(), s.m * s.n)?;
    }
    if out.is_empty() {
        return Ok(());
    }
    let Some(norm) = fusion.norm else {
        // SAFETY: `w` holds n * k values (checked above), `out` and `residual` m * n.
        unsafe { matmul_rows(s, x, Plain::new(w), out, true, fusion.residual, workers) };
        return Ok(());
    };
    thread_local! {
        /// The normalized rows, kept between calls (as the packed tiles' panel is).
        static NORMED: std::cell::RefCell<Vec<CacheLine>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    NORMED.with_borrow_mut(|lines| {
        lines.resize(x.len().div_ceil(16), CacheLine([0.0; 16]));
        // SAFETY: the lines hold at least x.len() f32 values, contiguous.
        let xn =
            unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<f32>(), x.len()) };
        rms_norm_rows(x, norm, xn);
        // SAFETY: as above; `xn` holds m * k values.
        unsafe { matmul_rows(s, xn, Plain::new(w), out, true, fusion.residual, workers) };
    });
    Ok(())
}

/// 16 values on a cache line of their own: the tiles' 16-lane loads of `x` then never split
/// across two lines, as with XLA's (64-byte aligned) buffers. Normalized rows in a plain `Vec`
/// made the 32-row steps' matmuls 16% slower.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct CacheLine([f32; 16]);

/// [`RmsNorm`] of each row of `x` (rows of `norm.weight.len()` values) into `out`, as the step
/// program's StableHLO spells it: the sum of squares times `1 / k` (an f32 constant), plus
/// `eps`, its reciprocal square root, then `x * r * weight`.
pub fn rms_norm_rows(x: &[f32], norm: RmsNorm, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx512() {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { rms_norm_avx512(x, norm, out) };
        }
    }
    rms_norm_body(x, norm, out)
}

/// [`rms_norm_body`] compiled for AVX-512 (the loops vectorize 16 lanes wide).
///
/// # Safety
/// AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rms_norm_avx512(x: &[f32], norm: RmsNorm, out: &mut [f32]) {
    rms_norm_body(x, norm, out)
}

#[inline(always)]
fn rms_norm_body(x: &[f32], norm: RmsNorm, out: &mut [f32]) {
    const L: usize = 16;
    let k = norm.weight.len();
    if k == 0 {
        return;
    }
    let inv_k = 1.0 / k as f32;
    for (xr, or) in x.chunks_exact(k).zip(out.chunks_exact_mut(k)) {
        let mut acc = [0.0f32; L];
        let lanes = xr.chunks_exact(L);
        let tail: f32 = lanes.remainder().iter().map(|v| v * v).sum();
        for c in lanes {
            for l in 0..L {
                acc[l] += c[l] * c[l];
            }
        }
        let mean = (acc.iter().sum::<f32>() + tail) * inv_k;
        let r = 1.0 / (mean + norm.eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(norm.weight) {
            *o = v * r * g;
        }
    }
}

/// Refuses `name` of `target`'s call unless it holds `want` values (`dims` says its shape).
pub(crate) fn check_len(
    target: &'static str,
    name: &'static str,
    dims: String,
    got: usize,
    want: usize,
) -> Result<(), MatmulError> {
    if got == want {
        Ok(())
    } else {
        Err(MatmulError::Length {
            target,
            name,
            dims,
            got,
            want,
        })
    }
}

/// [`matmul`] from any weight source, without the length checks; `packed` allows the packed
/// tiles from [`PACKED_MIN_ROWS`] rows (their sums run in another order); each item adds its
/// columns of `residual` to its products.
///
/// # Safety
/// `w` holds `n * k` values, `x` `m * k`, `out` and `residual` `m * n`.
pub(crate) unsafe fn matmul_rows<P: WeightRows>(
    s: &MatmulShape,
    x: &[f32],
    w: P,
    out: &mut [f32],
    packed: bool,
    residual: Option<&[f32]>,
    workers: &dyn Workers,
) {
    let block = block_rows(s.n, workers.threads());
    let items = s.n.div_ceil(block);
    let ptr = SharedOut(out.as_mut_ptr());
    let job = |i: usize| {
        let rows = i * block..((i + 1) * block).min(s.n);
        // SAFETY: items write disjoint columns `rows` of `out`; the caller's contract.
        unsafe { rows_block(s, x, w, rows.clone(), &ptr, packed) };
        if let Some(r) = residual {
            for i in 0..s.m {
                let at = i * s.n;
                // SAFETY: columns `rows` of row i are this item's (written just above).
                let o = unsafe {
                    std::slice::from_raw_parts_mut(ptr.0.add(at + rows.start), rows.len())
                };
                for (o, r) in o.iter_mut().zip(&r[at + rows.start..at + rows.end]) {
                    *o += r;
                }
            }
        }
    };
    workers.run(items, &job);
}

/// Weight rows per item: a multiple of 4, at least [`MIN_BLOCK_ROWS`], about
/// [`ITEMS_PER_THREAD`] items per thread.
pub(crate) fn block_rows(n: usize, threads: usize) -> usize {
    let per = n.div_ceil(threads.max(1) * ITEMS_PER_THREAD);
    per.max(MIN_BLOCK_ROWS).next_multiple_of(4)
}

/// Columns `rows` of `out` (weight rows `rows`), in packed tiles from [`PACKED_MIN_ROWS`] rows
/// of `x` if `packed`.
///
/// # Safety
/// `w` holds `n * k` values; `out` points to `m * n` values; no other thread writes columns
/// `rows`.
pub(crate) unsafe fn rows_block<P: WeightRows>(
    s: &MatmulShape,
    x: &[f32],
    w: P,
    rows: std::ops::Range<usize>,
    out: &SharedOut<f32>,
    packed: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx512() {
            // SAFETY: the CPU has AVX-512F, BW and VL (checked just above); the caller's
            // contract.
            return unsafe {
                if packed && s.m >= PACKED_MIN_ROWS {
                    avx512::packed_rows_block(s, x, w, rows, out.0)
                } else {
                    avx512::rows_block(s, x, w, rows, out.0)
                }
            };
        }
    }
    // SAFETY: the caller's contract.
    unsafe { portable_rows_block(s, x, w, rows, out.0) }
}

/// # Safety
/// As [`rows_block`].
unsafe fn portable_rows_block<P: WeightRows>(
    s: &MatmulShape,
    x: &[f32],
    w: P,
    rows: std::ops::Range<usize>,
    out: *mut f32,
) {
    const L: usize = 8;
    let k = s.k;
    let kv = k - k % L;
    for j in rows {
        // SAFETY: row j < n of the weight (the caller's contract).
        let wr = |c: usize| unsafe { w.get(j * k + c) };
        for i in 0..s.m {
            let xr = &x[i * k..(i + 1) * k];
            let mut acc = [0.0f32; L];
            for (b, cx) in xr[..kv].chunks_exact(L).enumerate() {
                for l in 0..L {
                    acc[l] += cx[l] * wr(b * L + l);
                }
            }
            let mut sum: f32 = acc.iter().sum();
            for (c, a) in xr.iter().enumerate().skip(kv) {
                sum += a * wr(c);
            }
            // SAFETY: i < m, j < n; the caller's contract.
            unsafe { *out.add(i * s.n + j) = sum };
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{Element, MatmulShape, WeightRows};
    use std::arch::x86_64::*;

    /// See [`super::rows_block`].
    ///
    /// # Safety
    /// As there; AVX-512F available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn rows_block<P: WeightRows>(
        s: &MatmulShape,
        x: &[f32],
        w: P,
        rows: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        let t = Tile {
            x: x.as_ptr(),
            w,
            k: s.k,
            out,
            ldo: s.n,
        };
        // SAFETY: rows `rows` of w and every row of x exist (slices checked by the caller);
        // out cells (.., rows) are this item's.
        unsafe { for_each_tile(s.m, rows, &t) }
    }

    /// A register tile's work: `MT` rows of `x` from row `i` against `NT` weight rows from row
    /// `j` (each at most 4).
    pub(crate) trait TileKernel {
        /// # Safety
        /// The rows exist and the tile's out cells are the caller's; the CPU features the
        /// kernel was compiled for are available.
        unsafe fn tile<const MT: usize, const NT: usize>(&self, i: usize, j: usize);
    }

    /// Runs `kernel` over `m` rows of `x` and weight rows `rows` in tiles of up to 4 x 4: for
    /// each 4 weight rows, every 4 rows of `x` and then the last 1-3 (the weight rows stay in
    /// L1 while they pass by). The tile shapes are settled once per call (`m % 4` picks the
    /// instantiation), not tile by tile: with a `match` on each tile's (rows, weight rows), the
    /// same inner loops streamed weights ~10% slower at one row of `x`. Measured on AMD EPYC
    /// (2 threads) with temporary harnesses, not kept: SmolLM2-135M's 120 projection weights
    /// at one row of `x`, each build beside a hand-written one-row loop in the same process,
    /// ran at 0.87-0.88 of that loop's rate with the per-tile `match` against 0.97-1.03 with
    /// this; at 4 rows 0.78 against 0.81-0.83; at 8 and 32 rows unchanged. Inside `bench
    /// decode`, the two alternated every 10 steps in one process: batch-1 steps 8.66 and 8.31
    /// ms (median) per tile against 8.18 and 7.63 per call; batch 8 15.38 and 15.49 against
    /// 15.00 and 15.66.
    ///
    /// # Safety
    /// As [`TileKernel::tile`], for every tile.
    #[inline(always)]
    pub(crate) unsafe fn for_each_tile<K: TileKernel>(
        m: usize,
        rows: std::ops::Range<usize>,
        kernel: &K,
    ) {
        // SAFETY (each arm): the caller's contract.
        unsafe {
            match m % 4 {
                0 => weight_tiles::<K, 0>(m, rows, kernel),
                1 => weight_tiles::<K, 1>(m, rows, kernel),
                2 => weight_tiles::<K, 2>(m, rows, kernel),
                _ => weight_tiles::<K, 3>(m, rows, kernel),
            }
        }
    }

    /// [`for_each_tile`] for `m % 4 == TAIL`: each 4 weight rows, then the last 1-3.
    ///
    /// # Safety
    /// As [`for_each_tile`].
    #[inline(always)]
    unsafe fn weight_tiles<K: TileKernel, const TAIL: usize>(
        m: usize,
        rows: std::ops::Range<usize>,
        kernel: &K,
    ) {
        let mut j = rows.start;
        // SAFETY (each call): the caller's contract.
        unsafe {
            while j + 4 <= rows.end {
                x_tiles::<K, 4, TAIL>(m, j, kernel);
                j += 4;
            }
            match rows.end - j {
                3 => x_tiles::<K, 3, TAIL>(m, j, kernel),
                2 => x_tiles::<K, 2, TAIL>(m, j, kernel),
                1 => x_tiles::<K, 1, TAIL>(m, j, kernel),
                _ => {}
            }
        }
    }

    /// Every row of `x` against the `NT` weight rows from `j`: 4 rows of `x` at a time, then
    /// the last `TAIL` (`m % 4`).
    ///
    /// # Safety
    /// As [`for_each_tile`].
    #[inline(always)]
    unsafe fn x_tiles<K: TileKernel, const NT: usize, const TAIL: usize>(
        m: usize,
        j: usize,
        kernel: &K,
    ) {
        let full = m - TAIL;
        let mut i = 0;
        // SAFETY (each call): the caller's contract.
        unsafe {
            while i < full {
                kernel.tile::<4, NT>(i, j);
                i += 4;
            }
            match TAIL {
                1 => kernel.tile::<1, NT>(full, j),
                2 => kernel.tile::<2, NT>(full, j),
                3 => kernel.tile::<3, NT>(full, j),
                _ => {}
            }
        }
    }

    /// Output columns per packed panel: two vectors of 16.
    const PANEL: usize = 32;
    /// Rows of `x` per outer-product tile: 6 x 2 accumulators, 2 panel loads and 6 broadcasts
    /// per step of k.
    const TILE_ROWS: usize = 6;

    /// [`super::rows_block`] for many rows of `x`: the item's weight rows go 32 at a time into
    /// a panel transposed to `[k][32]` and widened to f32 (once per call, not once per tile of
    /// x rows), and every 6 rows of `x` accumulate their 6 x 32 outputs in registers by
    /// broadcasting one x value against the panel's two vectors at each step of k: no
    /// horizontal sums, one FMA per multiply.
    ///
    /// # Safety
    /// As [`super::rows_block`]; AVX-512F available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn packed_rows_block<P: WeightRows>(
        s: &MatmulShape,
        x: &[f32],
        w: P,
        rows: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        thread_local! {
            /// Each thread's panel, kept between calls: a fresh allocation this size is a
            /// fresh mapping, faulted in page by page on every call.
            static PANEL_BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        PANEL_BUF.with_borrow_mut(|panel| {
            panel.resize(s.k * PANEL, 0.0);
            // SAFETY: the caller's contract.
            unsafe { packed_with(s, x, w, rows, out, panel) }
        })
    }

    /// [`packed_rows_block`] with `panel` (`k * PANEL` values) as the panel.
    ///
    /// # Safety
    /// As [`packed_rows_block`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn packed_with<P: WeightRows>(
        s: &MatmulShape,
        x: &[f32],
        w: P,
        rows: std::ops::Range<usize>,
        out: *mut f32,
        panel: &mut [f32],
    ) {
        let k = s.k;
        let mut j = rows.start;
        while j < rows.end {
            let nr = (rows.end - j).min(PANEL);
            // Columns past `nr` keep whatever an earlier panel left: each lane sums alone, and
            // theirs are masked off at the store.
            for r in 0..nr {
                for c in 0..k {
                    // SAFETY: row j + r < n of the weight (the caller's contract).
                    panel[c * PANEL + r] = unsafe { w.get((j + r) * k + c) };
                }
            }
            let mask = if nr == PANEL {
                u32::MAX
            } else {
                (1u32 << nr) - 1
            };
            let mut i = 0;
            while i < s.m {
                let mr = (s.m - i).min(TILE_ROWS);
                // SAFETY: rows i..i+mr of x exist; out cells (i.., j..j+nr) are this item's.
                unsafe {
                    let t = Outer {
                        x: x.as_ptr().add(i * k),
                        panel: panel.as_ptr(),
                        k,
                        out: out.add(i * s.n + j),
                        ldo: s.n,
                        mask,
                    };
                    match mr {
                        6 => t.run::<6>(),
                        5 => t.run::<5>(),
                        4 => t.run::<4>(),
                        3 => t.run::<3>(),
                        2 => t.run::<2>(),
                        _ => t.run::<1>(),
                    }
                }
                i += mr;
            }
            j += nr;
        }
    }

    /// One outer-product tile: `MR` rows of `x` (row stride `k`) against a packed panel, into
    /// `out` (row stride `ldo`), the panel's columns where `mask` has a bit.
    struct Outer {
        x: *const f32,
        panel: *const f32,
        k: usize,
        out: *mut f32,
        ldo: usize,
        mask: u32,
    }

    impl Outer {
        /// # Safety
        /// The rows and the panel (`k` x 32) are readable, the masked out cells writable;
        /// AVX-512F available.
        #[inline(always)]
        unsafe fn run<const MR: usize>(&self) {
            // SAFETY: the caller's contract; offsets stay below k in each row and the panel.
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); 2]; MR];
                for c in 0..self.k {
                    let b0 = _mm512_loadu_ps(self.panel.add(c * PANEL));
                    let b1 = _mm512_loadu_ps(self.panel.add(c * PANEL + 16));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_set1_ps(*self.x.add(r * self.k + c));
                        a[0] = _mm512_fmadd_ps(xv, b0, a[0]);
                        a[1] = _mm512_fmadd_ps(xv, b1, a[1]);
                    }
                }
                let (m0, m1) = (self.mask as __mmask16, (self.mask >> 16) as __mmask16);
                for (r, a) in acc.iter().enumerate() {
                    let o = self.out.add(r * self.ldo);
                    _mm512_mask_storeu_ps(o, m0, a[0]);
                    _mm512_mask_storeu_ps(o.add(16), m1, a[1]);
                }
            }
        }
    }

    /// Dot-product tiles: rows of `x` (row stride `k`) against rows of `w` (row stride `k`),
    /// into `out` (row stride `ldo`).
    struct Tile<P> {
        x: *const f32,
        w: P,
        k: usize,
        out: *mut f32,
        ldo: usize,
    }

    impl<P: WeightRows> TileKernel for Tile<P> {
        /// `MT` x `NT` dot products over `k`, 16 lanes at a time: at each step the `MT`
        /// vectors of `x` first, then each weight row's vector (its next tile's line
        /// prefetched) against all of them. (Loading the weight vectors first, as before, read
        /// 2-3% slower at one row in the harness of [`for_each_tile`]; more rows, no change.)
        #[inline(always)]
        unsafe fn tile<const MT: usize, const NT: usize>(&self, i: usize, j: usize) {
            let k = self.k;
            let kv = k - k % 16;
            // SAFETY: the caller's contract; every offset stays below k in its row.
            unsafe {
                let (x, w) = (self.x.add(i * k), self.w.offset(j * k));
                let out = self.out.add(i * self.ldo + j);
                let mut acc = [[_mm512_setzero_ps(); NT]; MT];
                let mut c = 0;
                while c < kv {
                    let mut xv = [_mm512_setzero_ps(); MT];
                    for (ii, v) in xv.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(x.add(ii * k + c));
                    }
                    for jj in 0..NT {
                        // The next tile's rows (contiguous after these): hardware prefetch
                        // alone left b8's matmuls at 33.5 ms against 26.4 with this.
                        w.prefetch((jj + NT) * k + c);
                        let wv = w.load16(jj * k + c);
                        for (row, xv) in acc.iter_mut().zip(&xv) {
                            row[jj] = _mm512_fmadd_ps(*xv, wv, row[jj]);
                        }
                    }
                    c += 16;
                }
                if kv < k {
                    let n = k - kv;
                    let mut wv = [_mm512_setzero_ps(); NT];
                    for (jj, v) in wv.iter_mut().enumerate() {
                        *v = w.load16_tail(jj * k + kv, n);
                    }
                    for (ii, row) in acc.iter_mut().enumerate() {
                        let xv = f32::load16_tail(x.add(ii * k + kv), n);
                        for (a, v) in row.iter_mut().zip(&wv) {
                            *a = _mm512_fmadd_ps(xv, *v, *a);
                        }
                    }
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
    use crate::kernels::test_values as values;
    use crate::kernels::workers::Serial;
    use half::bf16;

    fn reference(s: &MatmulShape, x: &[f32], w: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; s.m * s.n];
        for i in 0..s.m {
            for j in 0..s.n {
                out[i * s.n + j] = (0..s.k)
                    .map(|c| x[i * s.k + c] as f64 * w[j * s.k + c])
                    .sum();
            }
        }
        out
    }

    fn check<W: Element>(s: MatmulShape, to_w: impl Fn(f32) -> W, workers: &dyn Workers) {
        let x = values(s.m * s.k, 1 + s.m as u64);
        let w: Vec<W> = values(s.n * s.k, 7 + s.n as u64)
            .into_iter()
            .map(to_w)
            .collect();
        let wf: Vec<f64> = w.iter().map(|v| v.to_f32() as f64).collect();
        let want = reference(&s, &x, &wf);
        let mut out = vec![f32::NAN; s.m * s.n];
        matmul(&s, &x, &w, &mut out, workers).unwrap();
        for (idx, (g, r)) in out.iter().zip(&want).enumerate() {
            // f32 accumulation of k products of magnitude <= 1.
            let tol = 1e-6 * s.k as f64 + 1e-6 * r.abs();
            assert!(
                (*g as f64 - r).abs() <= tol,
                "{s:?} at {idx}: {g} vs {r} (tolerance {tol})"
            );
        }
    }

    /// Runs items on two threads in turn, out of order, like a pool would.
    struct Shuffled;
    impl Workers for Shuffled {
        fn threads(&self) -> usize {
            3
        }
        fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
            std::thread::scope(|sc| {
                sc.spawn(|| (0..n).rev().step_by(2).for_each(f));
                sc.spawn(|| (0..n).rev().skip(1).step_by(2).for_each(f));
            });
        }
    }

    #[test]
    fn every_tile_shape_and_k_tail_matches_the_f64_reference() {
        for m in [1, 2, 3, 4, 5, 7, 8, 9, 64, 65, 71] {
            for k in [1, 15, 16, 17, 64, 100] {
                for n in [1, 3, 4, 5, 17, 33, 70] {
                    let s = MatmulShape { m, k, n };
                    check::<f32>(s, |v| v, &Serial);
                    check::<bf16>(s, bf16::from_f32, &Serial);
                }
            }
        }
    }

    #[test]
    fn items_on_several_threads_fill_every_column() {
        for (m, k, n) in [
            (1, 576, 960),
            (8, 576, 3072),
            (32, 1536, 576),
            (3, 64, 1000),
            (256, 576, 1000),
        ] {
            let s = MatmulShape { m, k, n };
            check::<f32>(s, |v| v, &Shuffled);
            check::<bf16>(s, bf16::from_f32, &Shuffled);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// The fused forms compute the step's ops around the product: the RMS norm of each row
        /// of `x` (scaled by the norm's weight) before it, the residual after it; within f32
        /// rounding of an f64 reference of those ops, at decode sizes and at the packed tiles'.
        #[test]
        fn fused_norm_and_residual_match_the_f64_reference(
            m in proptest::prop_oneof![1usize..10, 64usize..70], k in 1usize..130, n in 1usize..40,
            seed in 0u64..1000, scale in -6i32..6, eps_exp in -9i32..-3,
            norm in proptest::prelude::any::<bool>(), residual in proptest::prelude::any::<bool>(),
        ) {
            let s = MatmulShape { m, k, n };
            let x: Vec<f32> = values(m * k, seed).iter().map(|v| v * f32::powi(2.0, scale)).collect();
            let w = values(n * k, seed + 1);
            let g = values(k, seed + 2);
            let r = values(m * n, seed + 3);
            let eps = f32::powi(10.0, eps_exp);
            let fusion = Fusion {
                norm: norm.then_some(RmsNorm { weight: &g, eps }),
                residual: residual.then_some(&r[..]),
            };
            let mut out = vec![f32::NAN; m * n];
            matmul_fused(&s, &x, &w, &fusion, &mut out, &Serial).unwrap();
            for i in 0..m {
                let row = &x[i * k..(i + 1) * k];
                let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / k as f64;
                let xn: Vec<f64> = (0..k)
                    .map(|c| match norm {
                        true => row[c] as f64 / (ms + eps as f64).sqrt() * g[c] as f64,
                        false => row[c] as f64,
                    })
                    .collect();
                for j in 0..n {
                    let terms = (0..k).map(|c| xn[c] * w[j * k + c] as f64);
                    let magnitude: f64 = terms.clone().map(f64::abs).sum();
                    let res = if residual { r[i * n + j] as f64 } else { 0.0 };
                    let want = terms.sum::<f64>() + res;
                    // The norm's and the sum's f32 rounding, relative to the terms' magnitude.
                    let tol = 1e-6 * (k as f64 + 8.0) * magnitude + 1e-6 * res.abs();
                    let got = out[i * n + j] as f64;
                    proptest::prop_assert!((got - want).abs() <= tol, "{:?} ({}, {}): {} vs {}", s, i, j, got, want);
                }
            }
        }
    }

    #[test]
    fn fused_operands_of_the_wrong_length_are_refused_by_name() {
        let s = MatmulShape { m: 2, k: 3, n: 4 };
        let (x, w, mut out) = ([0.0f32; 6], [0.0f32; 12], [0.0f32; 8]);
        let fusion = Fusion {
            norm: Some(RmsNorm {
                weight: &[1.0; 2],
                eps: 1e-5,
            }),
            residual: None,
        };
        let err = matmul_fused(&s, &x, &w, &fusion, &mut out, &Serial).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernelgen_norm_matmul: norm holds 2 values, [3] needs 3"
        );
        let fusion = Fusion {
            norm: None,
            residual: Some(&[0.0; 7]),
        };
        let err = matmul_fused(&s, &x, &w, &fusion, &mut out, &Serial).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernelgen_matmul_add: residual holds 7 values, [2, 4] needs 8"
        );
    }

    #[test]
    fn wrong_lengths_are_refused_by_name() {
        let s = MatmulShape { m: 2, k: 3, n: 4 };
        let err = matmul::<f32>(&s, &[0.0; 6], &[0.0; 11], &mut [0.0; 8], &Serial).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernelgen_matmul: w holds 11 values, [4, 3] needs 12"
        );
    }

    #[test]
    fn blocks_are_multiples_of_four_and_cover_the_rows() {
        for n in [1, 4, 576, 960, 49_152] {
            for threads in [1, 2, 16] {
                let b = block_rows(n, threads);
                assert!(b.is_multiple_of(4) && b >= MIN_BLOCK_ROWS);
                assert!(n.div_ceil(b) <= n.div_ceil(MIN_BLOCK_ROWS));
            }
        }
    }
}
