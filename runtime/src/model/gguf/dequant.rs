//! ggml tensor types and their dequantization to f32.
//!
//! Block formats follow ggml's `ggml-common.h` (struct layouts) and `ggml-quants.c`
//! (`dequantize_row_*`); every block is little-endian and packed. Legacy types hold 32 elements
//! per block, K-quants 256 (`QK_K`) in sub-blocks with their own scales. The tests pack blocks
//! by hand from the formulas; `verify`'s tests compare every type with the PyPI `gguf`
//! package's independent `gguf.quants.dequantize` on random blocks.

use half::{bf16, f16};

/// Elements per block of the legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL).
pub const QK: usize = 32;
/// Elements per block of the K-quants.
pub const QK_K: usize = 256;

/// Tensor element types this loader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_NL,
}

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 14] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
        GgmlType::BF16,
    ];

    /// The type's id in a GGUF file (ggml's `enum ggml_type`).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::IQ4_NL => 20,
            GgmlType::BF16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            // d: f16, qs: 32 x 4 bits
            GgmlType::Q4_0 => (QK, 2 + QK / 2),
            // d, m: f16, qs
            GgmlType::Q4_1 => (QK, 4 + QK / 2),
            // d, qh: 32 high bits, qs
            GgmlType::Q5_0 => (QK, 2 + 4 + QK / 2),
            // d, m, qh, qs
            GgmlType::Q5_1 => (QK, 4 + 4 + QK / 2),
            // d, qs: 32 x i8
            GgmlType::Q8_0 => (QK, 2 + QK),
            // scales: 16 x (4-bit scale, 4-bit min), qs: 256 x 2 bits, d, dmin
            GgmlType::Q2_K => (QK_K, QK_K / 16 + QK_K / 4 + 4),
            // hmask: 256 high bits, qs: 256 x 2 bits, scales: 16 x 6 bits, d
            GgmlType::Q3_K => (QK_K, QK_K / 8 + QK_K / 4 + 12 + 2),
            // d, dmin, scales: 8 x (6-bit scale, 6-bit min), qs: 256 x 4 bits
            GgmlType::Q4_K => (QK_K, 4 + 12 + QK_K / 2),
            // d, dmin, scales, qh: 256 high bits, qs: 256 x 4 bits
            GgmlType::Q5_K => (QK_K, 4 + 12 + QK_K / 8 + QK_K / 2),
            // ql: 256 x 4 bits, qh: 256 x 2 bits, scales: 16 x i8, d
            GgmlType::Q6_K => (QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),
            // d, qs: 32 x 4-bit indices into a fixed non-linear table
            GgmlType::IQ4_NL => (QK, 2 + QK / 2),
        }
    }

    /// Bytes that `n` elements take, or `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (per, bytes) = self.block();
        if !n.is_multiple_of(per) {
            return None;
        }
        (n / per).checked_mul(bytes)
    }
}

/// Name of a ggml type id, for error messages (covers the ones this loader rejects too).
pub fn type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        _ => return format!("ggml type {id}"),
    };
    name.to_string()
}

/// The supported types' names, for "supported: ..." messages.
pub fn supported_names() -> String {
    GgmlType::ALL
        .iter()
        .map(|t| type_name(t.id()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Dequantizes `n` elements of type `ty` from `bytes` (which must hold exactly that many).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let mut out = vec![0f32; n];
    dequantize_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// Dequantizes `bytes` of type `ty` into `out` (whose length is the element count): loaders
/// write each tensor straight into its place in the model's (stacked) weights.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let n = out.len();
    let need = ty
        .bytes_for(n)
        .ok_or_else(|| format!("{n} elements are not a whole number of {ty:?} blocks"))?;
    if bytes.len() != need {
        return Err(format!(
            "{n} {ty:?} elements need {need} bytes, got {}",
            bytes.len()
        ));
    }
    let (per, size) = ty.block();
    let blocks = bytes.chunks_exact(size).zip(out.chunks_exact_mut(per));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = half(b, 0)),
        GgmlType::BF16 => {
            blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q2_K => blocks.for_each(|(b, y)| q2_k(b, y)),
        GgmlType::Q3_K => blocks.for_each(|(b, y)| q3_k(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
        GgmlType::IQ4_NL => blocks.for_each(|(b, y)| iq4_nl(b, y)),
    }
    Ok(())
}

/// The f16 at byte `i`.
fn half(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `y = (q - 8) d`; element `j` in the low nibble of byte `j`, element `j + 16` in its high one.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (j, &q) in b[2..].iter().enumerate() {
        y[j] = (f32::from(q & 0x0f) - 8.0) * d;
        y[j + QK / 2] = (f32::from(q >> 4) - 8.0) * d;
    }
}

/// `y = q d + m`, nibbles as Q4_0.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (j, &q) in b[4..].iter().enumerate() {
        y[j] = f32::from(q & 0x0f) * d + m;
        y[j + QK / 2] = f32::from(q >> 4) * d + m;
    }
}

/// The fifth bit of legacy element `j` (0..32) from the 32-bit `qh`, as 0 or 16.
fn fifth_bit(qh: u32, j: usize) -> u8 {
    (((qh >> j) & 1) << 4) as u8
}

/// `y = (q - 16) d` with 5-bit codes: 4 bits as Q4_0 plus bit `j` of `qh`.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..].iter().enumerate() {
        let lo = (q & 0x0f) | fifth_bit(qh, j);
        let hi = (q >> 4) | fifth_bit(qh, j + QK / 2);
        y[j] = (f32::from(lo) - 16.0) * d;
        y[j + QK / 2] = (f32::from(hi) - 16.0) * d;
    }
}

/// `y = q d + m` with 5-bit codes as Q5_0.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..].iter().enumerate() {
        let lo = (q & 0x0f) | fifth_bit(qh, j);
        let hi = (q >> 4) | fifth_bit(qh, j + QK / 2);
        y[j] = f32::from(lo) * d + m;
        y[j + QK / 2] = f32::from(hi) * d + m;
    }
}

/// `y = q d`, `q` an i8.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..]) {
        *y = f32::from(q as i8) * d;
    }
}

/// ggml's `kvalues_iq4nl`: the 16 levels of IQ4_NL.
const IQ4_NL_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// `y = d * level[q]`, nibbles as Q4_0.
fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (j, &q) in b[2..].iter().enumerate() {
        y[j] = d * f32::from(IQ4_NL_LEVELS[(q & 0x0f) as usize]);
        y[j + QK / 2] = d * f32::from(IQ4_NL_LEVELS[(q >> 4) as usize]);
    }
}

/// Q2_K: 16 sub-blocks of 16 elements, each with a 4-bit scale (low nibble of `scales[i]`)
/// and a 4-bit min (high nibble); `y = d * scale * q - dmin * min` with 2-bit `q`. The 2-bit
/// codes come in two 128-element halves of 32 bytes: element `32 k + l` of a half is bits
/// `2k..2k+2` of byte `l` (`l < 32`), and sub-block `i` covers 16 consecutive elements.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (half(b, 80), half(b, 82));
    for (i, y) in y.chunks_exact_mut(16).enumerate() {
        let (half_idx, k, part) = (i / 8, (i % 8) / 2, i % 2);
        let sc = scales[i];
        let (dl, ml) = (d * f32::from(sc & 0x0f), dmin * f32::from(sc >> 4));
        let q = &qs[32 * half_idx + 16 * part..][..16];
        for (y, &q) in y.iter_mut().zip(q) {
            *y = dl * f32::from((q >> (2 * k)) & 3) - ml;
        }
    }
}

/// Q3_K's sixteen 6-bit scales, unpacked from its 12 bytes: scale `i < 8` has its low 4 bits in
/// the low nibble of byte `i`, scale `i >= 8` in the high nibble of byte `i - 8`; the two high
/// bits of scale `i` are bits `2 (i / 4)..` of byte `8 + i % 4`. Each is stored offset by 32.
fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0f } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = i32::from(low | (high << 4)) - 32;
    }
    out
}

/// Q3_K: 16 sub-blocks of 16, `y = d * (scale - 32) * (q - 4 * !h)`: 2-bit `q` laid out as
/// Q2_K's, and the high bit `h` of element `32 k + l` of half `n` is bit `4 n + k` of
/// `hmask[l]` (`l < 32`); a clear high bit subtracts 4.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, scales) = (&b[..32], &b[32..96], q3_k_scales(&b[96..108]));
    let d = half(b, 108);
    for (i, y) in y.chunks_exact_mut(16).enumerate() {
        let (n, k, part) = (i / 8, (i % 8) / 2, i % 2);
        let dl = d * scales[i] as f32;
        let bit = 4 * n + k;
        for (l, y) in y.iter_mut().enumerate() {
            let at = 16 * part + l;
            let q = (qs[32 * n + at] >> (2 * k)) & 3;
            let sub = if (hmask[at] >> bit) & 1 == 1 { 0 } else { 4 };
            *y = dl * f32::from(q as i8 - sub);
        }
    }
}

/// The 6-bit (scale, min) of sub-block `j` (0..8) of a Q4_K / Q5_K block (ggml's
/// `get_scale_min_k4`): for `j < 4` the low 6 bits of bytes `j` and `j + 4`; for `j >= 4` the low
/// nibble (scale) and high nibble (min) of byte `j + 4`, topped with the two high bits of bytes
/// `j - 4` and `j`.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}

/// Q4_K: 8 sub-blocks of 32, `y = d * scale * q - dmin * min`; sub-blocks `2i` and `2i + 1`
/// are the low and high nibbles of bytes `32 i..32 i + 32`.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin, scales, qs) = (half(b, 0), half(b, 2), &b[4..16], &b[16..144]);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (dl, ml) = (d * sc, dmin * m);
        let shift = 4 * (j % 2);
        for (y, &q) in y.iter_mut().zip(&qs[32 * (j / 2)..][..32]) {
            *y = dl * f32::from((q >> shift) & 0x0f) - ml;
        }
    }
}

/// Q5_K: Q4_K plus a fifth bit: element `l` of sub-block `j` adds 16 when bit `j` of `qh[l]`
/// is set.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin, scales) = (half(b, 0), half(b, 2), &b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (dl, ml) = (d * sc, dmin * m);
        let shift = 4 * (j % 2);
        for (l, y) in y.iter_mut().enumerate() {
            let q = (qs[32 * (j / 2) + l] >> shift) & 0x0f;
            let high = ((qh[l] >> j) & 1) << 4;
            *y = dl * f32::from(q | high) - ml;
        }
    }
}

/// Q6_K: 16 sub-blocks of 16 with i8 scales, `y = d * scale * (q - 32)`, 6-bit `q`. Each
/// 128-element half `n` takes 64 bytes of `ql` and 32 of `qh`: element `32 k + l` of it
/// (`l < 32`) has its low 4 bits in byte `ql[64 n + 32 (k % 2) + l]` (low nibble for `k < 2`,
/// high for `k >= 2`) and its two high bits at bits `2k..2k+2` of `qh[32 n + l]`.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for (i, y) in y.chunks_exact_mut(16).enumerate() {
        let (n, k, part) = (i / 8, (i % 8) / 2, i % 2);
        let dl = d * f32::from(scales[i] as i8);
        for (l, y) in y.iter_mut().enumerate() {
            let at = 16 * part + l;
            let low = (ql[64 * n + 32 * (k % 2) + at] >> (4 * (k / 2))) & 0x0f;
            let high = (qh[32 * n + at] >> (2 * k)) & 3;
            *y = dl * f32::from((low | (high << 4)) as i8 - 32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f16_bits(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    /// A normal f16 scale from an exponent and 10-bit mantissa.
    fn scale(e: i32, mant: u16) -> f32 {
        (1.0 + f32::from(mant) / 1024.0) * 2f32.powi(e)
    }

    proptest! {
        /// A hand-packed Q8_0 block dequantizes to exactly `q * d`.
        #[test]
        fn q8_0_block_decodes(qs in prop::collection::vec(-128i8..=127, QK), e in -12i32..4, m in 0u16..1024) {
            let d = f16::from_f32(scale(e, m)).to_f32();
            let mut block = f16_bits(d).to_vec();
            block.extend(qs.iter().map(|&q| q as u8));
            let out = dequantize(GgmlType::Q8_0, &block, QK).unwrap();
            for (o, &q) in out.iter().zip(&qs) {
                prop_assert_eq!(*o, f32::from(q) * d);
            }
        }

        /// Q4_0: low nibbles are elements 0..16, high nibbles 16..32, value `(q - 8) * d`.
        #[test]
        fn q4_0_block_decodes(codes in prop::collection::vec(0u8..16, QK), e in -12i32..4, m in 0u16..1024, neg: bool) {
            let d = f16::from_f32(if neg { -scale(e, m) } else { scale(e, m) }).to_f32();
            let mut block = f16_bits(d).to_vec();
            block.extend((0..16).map(|j| codes[j] | (codes[j + 16] << 4)));
            let out = dequantize(GgmlType::Q4_0, &block, QK).unwrap();
            for (o, &q) in out.iter().zip(&codes) {
                prop_assert_eq!(*o, (f32::from(q) - 8.0) * d);
            }
        }

        /// Q4_1: value `q * d + m` with f16 `d` and `m`.
        #[test]
        fn q4_1_block_decodes(codes in prop::collection::vec(0u8..16, QK), e in -12i32..4, mant in 0u16..1024, min in -4f32..4.0) {
            let d = f16::from_f32(scale(e, mant)).to_f32();
            let m = f16::from_f32(min).to_f32();
            let mut block = f16_bits(d).to_vec();
            block.extend(f16_bits(m));
            block.extend((0..16).map(|j| codes[j] | (codes[j + 16] << 4)));
            let out = dequantize(GgmlType::Q4_1, &block, QK).unwrap();
            for (o, &q) in out.iter().zip(&codes) {
                prop_assert_eq!(*o, f32::from(q) * d + m);
            }
        }

    }

    /// Every type's block size is ggml's, and a buffer of the wrong size is an error.
    #[test]
    fn block_sizes_are_ggmls_and_sizes_are_checked() {
        let sizes: Vec<(GgmlType, usize)> =
            GgmlType::ALL.iter().map(|&t| (t, t.block().1)).collect();
        use GgmlType::*;
        let want = [
            (F32, 4),
            (F16, 2),
            (Q4_0, 18),
            (Q4_1, 20),
            (Q5_0, 22),
            (Q5_1, 24),
            (Q8_0, 34),
            (Q2_K, 84),
            (Q3_K, 110),
            (Q4_K, 144),
            (Q5_K, 176),
            (Q6_K, 210),
            (IQ4_NL, 18),
            (BF16, 2),
        ];
        assert_eq!(sizes, want);
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            let (per, bytes) = t.block();
            assert!(dequantize(t, &vec![0u8; bytes + 1], per).is_err());
            assert!(dequantize(t, &vec![0u8; bytes], per).is_ok());
            if per > 1 {
                assert!(t.bytes_for(per + 1).is_none());
            }
        }
    }
}
