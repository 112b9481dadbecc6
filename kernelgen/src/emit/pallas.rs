//! The ragged paged attention kernel as a Pallas TPU module (Python), rendered from
//! `templates/rpa.pallas.py.tera`.
//!
//! The module defines `ragged_paged_attention(q, kv_pages, kv_lens, page_indices, cu_q_lens,
//! num_seqs, *, vmem_limit_bytes=None)`: a `pallas_call` with a grid over (KV-head blocks, query
//! blocks of `q_block` tokens), the page table and lengths scalar-prefetched, kv_pages left in HBM
//! and copied page by page into a double-buffered VMEM block of `kv_pages_block` pages. Every
//! config-dependent number is a constant at the top of the module; the template's docstring
//! explains the design. [`PallasDims`] holds those numbers and [`PallasDims::vmem_buffers`]
//! mirrors the module's `VMEM_BUFFERS` list, so the VMEM checker can count the same buffers.

use super::{stablehlo, templates, EmitError};
use crate::config::{Dtype, KernelConfig};
use crate::vmem::Dims;
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;

/// File name of the Pallas kernel inside an artifact directory.
pub const FILE_NAME: &str = "rpa.pallas.py";

/// The module's `KV_LAYOUT`: head-major pages (FlashInfer's name), so one head's keys of a page
/// are whole VMEM tiles (see the template's docstring for what token-major cost).
pub const KV_LAYOUT: &str = "HND";

/// The module's KV pool in its header's `inputs:` line.
pub const KV_PAGES_HEAD_MAJOR: &str =
    "kv_pages[total_pages, 2*num_kv_heads, page_size, head_dim] (head-major; K even, V odd heads)";

/// What the template spells out: the config's numbers plus the kernel's own layout decisions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PallasDims {
    /// kernelgen's version, also written into the module as `KERNELGEN_VERSION`.
    pub version: &'static str,
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    /// q heads per KV head.
    pub group: u32,
    pub head_dim: u32,
    /// head_dim as the kernel body sees it. Mosaic compiles 32-, 64- and 96-wide rows directly,
    /// so nothing is padded and this equals `head_dim`.
    pub head_dim_padded: u32,
    /// `float32` or `bfloat16` (a `jax.numpy` name).
    pub dtype: &'static str,
    pub page_size: u32,
    pub q_block: u32,
    pub kv_pages_block: u32,
    pub max_num_tokens: u32,
    pub max_num_seqs: u32,
    pub max_num_seqs_plus_1: u32,
    pub pages_per_seq: u32,
    pub total_pages: u32,
    /// `2 * num_kv_heads`: K and V interleaved on kv_pages' head axis (`[pages, 2 * kv_heads,
    /// page_size, head_dim]`, head-major).
    pub num_combined_heads: u32,
    /// Rendered as Python literals: the exact f32 values (written as f64, which Python parses
    /// exactly), or `None`.
    #[serde(serialize_with = "py_f32")]
    pub sm_scale: f32,
    #[serde(serialize_with = "py_option")]
    pub sliding_window: Option<u32>,
    #[serde(serialize_with = "py_option")]
    pub soft_cap: Option<f32>,
    /// KV heads per grid step (see [`kv_heads_per_block`]).
    pub kv_heads_per_block: u32,
    pub q_heads_per_block: u32,
    pub num_head_blocks: u32,
    /// `ceil(max_num_tokens / q_block)`.
    pub num_q_blocks: u32,
    /// `num_q_blocks * q_block`: q is padded to this many rows.
    pub q_rows_padded: u32,
    /// `q_block * group`: rows of one KV head's query tile (token-major, q head minor).
    pub rows: u32,
    /// Pages scored per step of the rolled loop over a KV block (see [`chunk_pages`]).
    pub chunk_pages: u32,
    /// Steps of that loop: `kv_pages_block / chunk_pages`.
    pub kv_chunks: u32,
}

/// One VMEM buffer of the kernel, per copy: the Rust mirror of an entry of the module's
/// `VMEM_BUFFERS`. Mosaic lays the last two dims out in (8 * 32 / bits, 128) tiles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmemBuffer {
    pub name: Cow<'static, str>,
    pub shape: Dims,
    /// `float32` or `bfloat16`.
    pub dtype: Cow<'static, str>,
    /// 2 for double-buffered buffers (the q/out pipeline windows and the KV page buffer).
    pub copies: u32,
}

/// The `jax.numpy` name of `dtype`.
/// KV heads per grid step: the fewest whose K/V rows (`2 * heads`) fill whole sublane tiles
/// (8 rows for f32, 16 for bf16) and divide the heads evenly; all heads when no such split exists
/// (e.g. 3 KV heads). In the head-major pool any split could be sliced; this one keeps the grid
/// steps (each starts with a DMA nothing overlaps) as few as the token-major kernel had.
pub fn kv_heads_per_block(num_kv_heads: u32, dtype: Dtype) -> u32 {
    let tile_rows = match dtype {
        Dtype::F32 => 8,
        Dtype::Bf16 => 16,
    };
    (1..=num_kv_heads)
        .find(|&c| num_kv_heads.is_multiple_of(c) && (2 * c).is_multiple_of(tile_rows))
        .unwrap_or(num_kv_heads)
}

/// Keys the kernel scores at once, at most: a KV block's keys are scored in chunks of whole pages,
/// one chunk per step of a rolled loop, so the `[rows, keys]` f32 temporaries the compiler keeps
/// in VMEM are bounded by a chunk, not by `kv_pages_block`.
pub const CHUNK_KEYS: u32 = 512;

/// Score elements (`rows x keys`) a chunk holds, at most, once a KV head's query tile has more
/// than `CHUNK_SCORES / CHUNK_KEYS` = 128 rows: the chunk's keys shrink with the rows (to no
/// fewer than [`MIN_CHUNK_KEYS`]), so one head's f32 score tile stays within 256 KiB up to 512
/// rows. Measured with deviceless compiles (MSA off) on the 70 calibration configs with more
/// than 128 rows (`kernelgen/data/vmem_oracle_kernelgen.jsonl`): against 512-key chunks, the
/// smallest fitting limit fell on 53 (by 0.51 MiB on average, at most 1.56 MiB) and rose on 3
/// (at most 0.44 MiB).
pub const CHUNK_SCORES: u32 = 128 * CHUNK_KEYS;

/// The fewest keys a chunk is cut down to for many rows: one MXU width on v5e (the contraction
/// of the chunk's `p @ v`).
pub const MIN_CHUNK_KEYS: u32 = 128;

/// Keys per chunk for a query tile of `rows` rows: [`CHUNK_KEYS`], or fewer from 128 rows up so
/// that `rows x keys` stays within [`CHUNK_SCORES`], never below [`MIN_CHUNK_KEYS`].
pub fn chunk_keys(rows: u32) -> u32 {
    (CHUNK_SCORES / rows.max(1)).clamp(MIN_CHUNK_KEYS, CHUNK_KEYS)
}

/// Pages per chunk: the largest divisor of `kv_pages_block` whose pages hold at most
/// [`chunk_keys`]`(rows)` keys (one page when a page alone holds more).
pub fn chunk_pages(kv_pages_block: u32, page_size: u32, rows: u32) -> u32 {
    let keys = chunk_keys(rows);
    (1..=kv_pages_block)
        .rev()
        .find(|&c| kv_pages_block.is_multiple_of(c) && c * page_size <= keys)
        .unwrap_or(1)
}

/// A Python literal for an f32: its exact value printed as f64 (round-trips through Python's
/// float and back to the same f32).
fn py_f32<S: Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{:?}", *x as f64))
}

/// A Python literal for an optional number: `None`, or the number (an f32 as [`py_f32`] writes
/// it).
fn py_option<T: PyNumber, S: Serializer>(x: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match x {
        None => s.collect_str("None"),
        Some(v) => v.py(s),
    }
}

/// A number [`py_option`] can write as a Python literal.
trait PyNumber {
    fn py<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error>;
}

impl PyNumber for u32 {
    fn py<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl PyNumber for f32 {
    fn py<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        py_f32(self, s)
    }
}

impl PallasDims {
    pub fn new(cfg: &KernelConfig) -> PallasDims {
        let g = cfg.geometry();
        let kv_heads_per_block = kv_heads_per_block(g.num_kv_heads, cfg.dtype());
        let num_q_blocks = cfg.max_num_tokens().div_ceil(cfg.q_block());
        let rows = cfg.q_block() * g.group();
        let chunk_pages = chunk_pages(cfg.kv_pages_block(), cfg.page_size(), rows);
        PallasDims {
            version: crate::VERSION,
            num_q_heads: g.num_q_heads,
            num_kv_heads: g.num_kv_heads,
            group: g.group(),
            head_dim: g.head_dim,
            head_dim_padded: g.head_dim,
            dtype: cfg.dtype().numpy(),
            page_size: cfg.page_size(),
            q_block: cfg.q_block(),
            kv_pages_block: cfg.kv_pages_block(),
            max_num_tokens: cfg.max_num_tokens(),
            max_num_seqs: cfg.max_num_seqs(),
            max_num_seqs_plus_1: cfg.max_num_seqs() + 1,
            pages_per_seq: cfg.pages_per_seq(),
            total_pages: cfg.total_pages(),
            num_combined_heads: 2 * g.num_kv_heads,
            sm_scale: cfg.sm_scale(),
            sliding_window: cfg.sliding_window(),
            soft_cap: cfg.soft_cap(),
            kv_heads_per_block,
            q_heads_per_block: kv_heads_per_block * g.group(),
            num_head_blocks: g.num_kv_heads / kv_heads_per_block,
            num_q_blocks,
            q_rows_padded: num_q_blocks * cfg.q_block(),
            rows,
            chunk_pages,
            kv_chunks: cfg.kv_pages_block() / chunk_pages,
        }
    }

    /// The kernel's VMEM buffers, in the order and with the values of the module's `VMEM_BUFFERS`.
    pub fn vmem_buffers(&self) -> Vec<VmemBuffer> {
        let (h, rows, d) = (
            self.kv_heads_per_block as u64,
            self.rows as u64,
            self.head_dim_padded as u64,
        );
        let buf =
            |name: &'static str, shape: &[u64], dtype: &'static str, copies: u32| VmemBuffer {
                name: Cow::Borrowed(name),
                shape: Dims::from_slice(shape),
                dtype: Cow::Borrowed(dtype),
                copies,
            };
        vec![
            buf("q_window", &[h, rows, d], self.dtype, 2),
            buf("out_window", &[h, rows, d], self.dtype, 2),
            buf(
                "kv_buf",
                &[self.kv_pages_block as u64, 2 * h, self.page_size as u64, d],
                self.dtype,
                2,
            ),
            buf("m", &[h, rows, 128], "float32", 1),
            buf("l", &[h, rows, 128], "float32", 1),
            buf("acc", &[h, rows, d], "float32", 1),
        ]
    }
}

/// What the build knows about VMEM when it renders the module: the checker's estimate (for the
/// header and `VMEM_ESTIMATE_BYTES`) and the `vmem_limit_bytes` baked in as the default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VmemInfo {
    /// Target the estimate is for.
    pub target: Option<String>,
    pub estimate_bytes: Option<u64>,
    /// `None`: the target's default scoped limit.
    pub limit_bytes: Option<u64>,
}

/// The module's `kv_pages` operand (its `KV_PAGES_SHAPE`): head-major pages, named as
/// [`crate::artifact::io_specs`] names the StableHLO kernel's token-major one.
pub fn kv_pages(cfg: &KernelConfig) -> crate::artifact::TensorSpec {
    let g = cfg.geometry();
    crate::artifact::TensorSpec {
        name: "kv_pages".to_string(),
        shape: [
            cfg.total_pages(),
            2 * g.num_kv_heads,
            cfg.page_size(),
            g.head_dim,
        ]
        .map(u64::from)
        .to_vec(),
        dtype: cfg.dtype().mlir().to_string(),
    }
}

/// Renders the Pallas module for `cfg`.
pub fn render(cfg: &KernelConfig, vmem: &VmemInfo) -> Result<String, EmitError> {
    let dims = PallasDims::new(cfg);
    let mut ctx = tera::Context::new();
    ctx.insert("buffers", &dims.vmem_buffers());
    ctx.insert("dims", &dims);
    ctx.insert(
        "header",
        &stablehlo::header(
            cfg,
            "ragged paged attention, Pallas TPU",
            KV_PAGES_HEAD_MAJOR,
        ),
    );
    ctx.insert("vmem_estimate_bytes", &vmem.estimate_bytes);
    ctx.insert("vmem_limit_bytes", &vmem.limit_bytes);
    ctx.insert("vmem_target", &vmem.target);
    // the template opens with a comment block; the module starts at its header
    let text = templates::render("rpa.pallas.py.tera", &ctx)?;
    Ok(text.trim_start().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Geometry, KernelParams};

    fn cfg(
        heads: (u32, u32),
        head_dim: u32,
        dtype: Dtype,
        blocks: (u32, u32),
        window: Option<u32>,
        cap: Option<f32>,
    ) -> KernelConfig {
        let mut p = KernelParams::with_defaults(
            Geometry {
                num_q_heads: heads.0,
                num_kv_heads: heads.1,
                head_dim,
            },
            blocks.0,
            blocks.1,
        );
        p.dtype = dtype;
        p.sliding_window = window;
        p.soft_cap = cap;
        KernelConfig::new(p).unwrap()
    }

    /// The Python constant `name = value` line of a rendered module (the last such line: the
    /// docstring above the constants mentions some of them).
    fn constant<'a>(text: &'a str, name: &str) -> &'a str {
        let prefix = format!("{name} = ");
        text.lines()
            .rev()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no constant {name}"))
    }

    #[test]
    fn renders_header_constants_and_entry_point() {
        let cases = [
            cfg((32, 8), 128, Dtype::Bf16, (16, 16), None, None),
            cfg((9, 3), 64, Dtype::Bf16, (32, 4), Some(4096), None),
            cfg((8, 8), 64, Dtype::F32, (5, 3), Some(7), Some(30.0)),
            cfg((4, 4), 128, Dtype::F32, (1, 1), None, Some(2.5)),
        ];
        for c in &cases {
            let info = VmemInfo {
                target: Some("v5p".into()),
                estimate_bytes: Some(12_345_678),
                limit_bytes: Some(33_554_432),
            };
            let text = render(c, &info).unwrap();
            for line in
                stablehlo::header(c, "ragged paged attention, Pallas TPU", KV_PAGES_HEAD_MAJOR)
            {
                assert!(text.contains(&format!("# {line}\n")), "header line {line}");
            }
            assert!(
                text.starts_with("# Generated by kernelgen"),
                "{:?}",
                &text[..80]
            );
            assert!(text.contains("\ndef ragged_paged_attention(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, *, vmem_limit_bytes=VMEM_LIMIT_BYTES):"));
            assert!(
                text.contains("# VMEM estimate from kernelgen's checker: 12345678 bytes on v5p\n")
            );
            assert!(text.contains("# vmem_limit_bytes: 33554432\n"));
            assert_eq!(constant(&text, "VMEM_LIMIT_BYTES"), "33554432");
            assert_eq!(constant(&text, "VMEM_ESTIMATE_BYTES"), "12345678");
            assert!(
                !text.contains("{{") && !text.contains("{%"),
                "unrendered tera"
            );
            let g = c.geometry();
            assert_eq!(constant(&text, "NUM_Q_HEADS"), g.num_q_heads.to_string());
            assert_eq!(constant(&text, "Q_BLOCK"), c.q_block().to_string());
            assert_eq!(
                constant(&text, "KV_PAGES_BLOCK"),
                c.kv_pages_block().to_string()
            );
            assert_eq!(constant(&text, "HEAD_DIM_PADDED"), g.head_dim.to_string());
            // the f32 scale round-trips exactly through the Python literal
            let scale: f64 = constant(&text, "SM_SCALE").parse().unwrap();
            assert_eq!(scale as f32, c.sm_scale());
            assert_eq!(
                constant(&text, "SLIDING_WINDOW"),
                c.sliding_window().map_or("None".into(), |w| w.to_string())
            );
            match c.soft_cap() {
                Some(cap) => {
                    assert_eq!(
                        constant(&text, "SOFT_CAP").parse::<f64>().unwrap() as f32,
                        cap
                    )
                }
                None => assert_eq!(constant(&text, "SOFT_CAP"), "None"),
            }
            // the docstring lists every buffer with its shape
            for b in PallasDims::new(c).vmem_buffers() {
                let shape: Vec<String> = b.shape.iter().map(|x| x.to_string()).collect();
                let line = format!(
                    "    {}: {}[{}] x {}",
                    b.name,
                    b.dtype,
                    shape.join(","),
                    b.copies
                );
                assert!(text.contains(&line), "missing docstring line {line:?}");
            }
        }
        let text = render(&cases[0], &VmemInfo::default()).unwrap();
        assert_eq!(constant(&text, "KV_LAYOUT"), format!("{KV_LAYOUT:?}"));
        assert!(text.contains("# VMEM estimate from kernelgen's checker: not given"));
        assert_eq!(constant(&text, "VMEM_ESTIMATE_BYTES"), "None");
        assert_eq!(constant(&text, "VMEM_LIMIT_BYTES"), "None");
    }

    #[test]
    fn head_blocks_fill_whole_tiles() {
        // Llama-3-8B: 8 KV heads = 16 K/V rows, one bf16 tile; f32 tiles are 8 rows.
        assert_eq!(kv_heads_per_block(8, Dtype::Bf16), 8);
        assert_eq!(kv_heads_per_block(8, Dtype::F32), 4);
        assert_eq!(kv_heads_per_block(16, Dtype::Bf16), 8);
        // SmolLM2's 3 KV heads (6 rows) cannot be split at a tile boundary
        assert_eq!(kv_heads_per_block(3, Dtype::Bf16), 3);
        assert_eq!(kv_heads_per_block(3, Dtype::F32), 3);
        assert_eq!(kv_heads_per_block(1, Dtype::F32), 1);
        assert_eq!(kv_heads_per_block(12, Dtype::F32), 4);
        for h in 1..=64 {
            for dt in [Dtype::F32, Dtype::Bf16] {
                let c = kv_heads_per_block(h, dt);
                assert!(h.is_multiple_of(c), "{h} {dt:?} -> {c}");
            }
        }
        let d = PallasDims::new(&cfg((32, 8), 128, Dtype::F32, (16, 16), None, None));
        assert_eq!(
            (d.num_head_blocks, d.q_heads_per_block, d.rows),
            (2, 16, 64)
        );
    }

    #[test]
    fn chunks_are_the_most_whole_pages_within_their_keys() {
        assert_eq!(chunk_pages(16, 64, 64), 8);
        assert_eq!(chunk_pages(32, 16, 128), 32);
        assert_eq!(chunk_pages(6, 128, 8), 3);
        assert_eq!(chunk_pages(3, 256, 8), 1);
        assert_eq!(chunk_pages(4, 1024, 8), 1);
        // many rows: 256 keys at 256 rows, 128 from 512 rows on
        assert_eq!(chunk_pages(16, 64, 256), 4);
        assert_eq!(chunk_pages(16, 64, 384), 2);
        assert_eq!(chunk_pages(16, 64, 512), 2);
        assert_eq!(chunk_pages(16, 64, 2048), 2);
        for rows in [1, 8, 128, 129, 192, 256, 384, 512, 1024] {
            let keys = chunk_keys(rows);
            assert!(
                (MIN_CHUNK_KEYS..=CHUNK_KEYS).contains(&keys),
                "{rows} -> {keys}"
            );
            assert!(
                keys == MIN_CHUNK_KEYS || rows * keys <= CHUNK_SCORES,
                "{rows} -> {keys}"
            );
            for kv in 1..=64 {
                for page in [1, 3, 8, 16, 100, 128, 256, 600] {
                    let c = chunk_pages(kv, page, rows);
                    assert!(kv.is_multiple_of(c), "{kv} x {page} -> {c}");
                    assert!(c == 1 || c * page <= keys, "{kv} x {page} -> {c}");
                    let larger = (c + 1..=kv).find(|&d| kv.is_multiple_of(d) && d * page <= keys);
                    assert_eq!(larger, None, "{kv} x {page}: {c} is not the largest");
                }
            }
        }
    }

    #[test]
    fn vmem_buffers_follow_the_blocks() {
        let d = PallasDims::new(&cfg((32, 8), 128, Dtype::Bf16, (16, 16), None, None));
        let bufs = d.vmem_buffers();
        let kv = bufs.iter().find(|b| b.name == "kv_buf").unwrap();
        // [kv_pages_block, 2 * heads, page_size, head_dim]: head-major pages
        assert_eq!((&kv.shape[..], kv.copies), (&[16, 16, 64, 128][..], 2));
        let acc = bufs.iter().find(|b| b.name == "acc").unwrap();
        assert_eq!(
            (&acc.shape[..], &*acc.dtype),
            (&[8, 64, 128][..], "float32")
        );
        let d2 = PallasDims::new(&cfg((32, 8), 128, Dtype::Bf16, (32, 8), None, None));
        let kv2 = d2
            .vmem_buffers()
            .into_iter()
            .find(|b| b.name == "kv_buf")
            .unwrap();
        assert_eq!(kv2.shape[..], [8, 16, 64, 128]);
    }
}
