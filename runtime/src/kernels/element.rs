//! The element types the host kernels read: f32 and bf16, widened to f32 (exactly: bf16 is the
//! top half of an f32), one value at a time or 16 lanes at a time for the AVX-512 paths.

use half::bf16;

/// An element type of q, the pool and the output (and of the host matmul's weights).
pub trait Element: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
    /// 16 values at `p`, widened to f32.
    ///
    /// # Safety
    /// `p..p+16` readable; called only from code compiled with AVX-512F (and BW, VL).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> __m512;
    /// The first `n` (< 16) values at `p`, the other lanes zero.
    ///
    /// # Safety
    /// As [`Element::load16`], with `p..p+n` readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16_tail(p: *const Self, n: usize) -> __m512;
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Lanes `0..n` of a 16-lane mask.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_tail(p: *const f32, n: usize) -> __m512 {
        // SAFETY: masked lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(tail_mask(n), p) }
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // Exact: bf16 is the top half of an f32. Written as a shift so loops vectorize.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> bf16 {
        bf16::from_f32(x)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> __m512 {
        // SAFETY: the caller's contract; widening is exact (bf16 is the top half of an f32).
        unsafe {
            let h = _mm256_loadu_si256(p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_tail(p: *const bf16, n: usize) -> __m512 {
        // SAFETY: masked lanes are not read.
        unsafe {
            let h = _mm256_maskz_loadu_epi16(tail_mask(n), p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        }
    }
}
