//! The ragged paged attention kernel as StableHLO, rendered from `templates/rpa.stablehlo.mlir.tera`.
//!
//! The program is blocked by the config's two parameters: a loop over each sequence's query blocks
//! of `q_block` tokens and, inside, over KV blocks of `kv_pages_block` pages gathered through the
//! page table, carrying online-softmax state (running max `m`, denominator `l`, accumulator `acc`,
//! all f32) across KV blocks.

use super::mlir::{self, CheckedModule};
use super::{templates, EmitError};
use crate::config::KernelConfig;
use serde::Serialize;

/// File name of the StableHLO kernel inside an artifact directory.
pub const FILE_NAME: &str = "rpa.stablehlo.mlir";

/// Logit given to masked positions: finite, so a fully masked block leaves `exp(m_old - m_new)`
/// well defined, and far below any real logit (JAX uses -0.7 * f32::MAX for the same reason).
const MASK_VALUE: &str = "-1.000000e+30";

/// Sizes derived from the config that the template spells into MLIR types.
///
/// Names follow the template: `t` tokens, `hq`/`hkv` heads, `g` group (q heads per KV head),
/// `d` head_dim, `p` page size, `bq` q_block, `bkv` kv_pages_block, `bk` keys per KV block,
/// `s` max_num_seqs, `pps` pages_per_seq, `np` total pages.
#[derive(Clone, Debug, Serialize)]
pub struct KernelDims {
    pub module_name: String,
    pub dtype: &'static str,
    pub t: u64,
    /// `t + q_block`: q and the output are padded so a block at any valid row stays in bounds.
    pub t_pad: u64,
    pub hq: u64,
    pub hkv: u64,
    pub hkv2: u64,
    pub g: u64,
    pub d: u64,
    pub p: u64,
    pub bq: u64,
    pub bkv: u64,
    pub bk: u64,
    /// `max_num_seqs * kv_pages_block`: pages one batched-schedule KV block gathers.
    pub sbkv: u64,
    pub s: u64,
    pub s1: u64,
    pub pps: u64,
    /// `pages_per_seq` rounded up to a multiple of `kv_pages_block`.
    pub pps_pad: u64,
    pub np: u64,
    /// f32 constants as exact hex bit patterns (`0x3DB504F3`).
    pub sm_scale: String,
    pub mask_value: &'static str,
    pub has_window: bool,
    pub window: u64,
    pub window_m1: u64,
    pub has_soft_cap: bool,
    pub soft_cap: String,
    /// Also return the (unchanged) kv_pages the loops carried: set when the kernel is linked
    /// into a program that updates the pool in place, so the pool has a single consumer.
    pub return_pool: bool,
    /// `max_num_tokens <= q_block`: one query block holds every token, so the batched schedule
    /// runs its query-block body once instead of looping.
    pub one_q_block: bool,
}

/// An f32 as an exact MLIR hex literal (`0x3F800000`): templates spell constants this way so
/// nothing is lost to decimal printing.
pub fn hex_f32(x: f32) -> String {
    format!("0x{:08X}", x.to_bits())
}

impl KernelDims {
    pub fn new(cfg: &KernelConfig) -> KernelDims {
        let g = cfg.geometry();
        let bkv = cfg.kv_pages_block() as u64;
        let pps = cfg.pages_per_seq() as u64;
        let window = cfg.sliding_window().unwrap_or(0) as u64;
        KernelDims {
            module_name: format!("rpa_q{}_kv{}", cfg.q_block(), cfg.kv_pages_block()),
            dtype: cfg.dtype().mlir(),
            t: cfg.max_num_tokens() as u64,
            t_pad: (cfg.max_num_tokens() + cfg.q_block()) as u64,
            hq: g.num_q_heads as u64,
            hkv: g.num_kv_heads as u64,
            hkv2: 2 * g.num_kv_heads as u64,
            g: g.group() as u64,
            d: g.head_dim as u64,
            p: cfg.page_size() as u64,
            bq: cfg.q_block() as u64,
            bkv,
            bk: bkv * cfg.page_size() as u64,
            sbkv: cfg.max_num_seqs() as u64 * bkv,
            s: cfg.max_num_seqs() as u64,
            s1: cfg.max_num_seqs() as u64 + 1,
            pps,
            pps_pad: pps.div_ceil(bkv) * bkv,
            np: cfg.total_pages() as u64,
            sm_scale: hex_f32(cfg.sm_scale()),
            mask_value: MASK_VALUE,
            has_window: cfg.sliding_window().is_some(),
            window,
            window_m1: window.saturating_sub(1),
            has_soft_cap: cfg.soft_cap().is_some(),
            soft_cap: hex_f32(cfg.soft_cap().unwrap_or(1.0)),
            return_pool: false,
            one_q_block: cfg.max_num_tokens() <= cfg.q_block(),
        }
    }
}

/// The StableHLO kernels' KV pool: token-major pages, as JAX's kernel takes them.
pub const KV_PAGES_TOKEN_MAJOR: &str =
    "kv_pages[total_pages, page_size, 2*num_kv_heads, head_dim] (token-major; K even, V odd heads)";

/// The header comment every emitted kernel file starts with: kernelgen's version, the config and
/// the inputs, with the KV pool as this kernel takes it (`kv_pages`).
pub fn header(cfg: &KernelConfig, what: &str, kv_pages: &str) -> Vec<String> {
    let mut lines = super::header(what);
    lines.push(format!("config: {cfg}"));
    lines.push(format!("inputs: q[max_num_tokens, num_q_heads, head_dim], {kv_pages}, kv_lens i32[max_num_seqs], page_indices i32[max_num_seqs, pages_per_seq], cu_q_lens i32[max_num_seqs+1], num_seqs i32[1]"));
    lines
}

/// Renders the template for `cfg` without checking it (tests use this to corrupt text).
pub fn render(cfg: &KernelConfig) -> Result<String, EmitError> {
    render_with(cfg, false)
}

fn render_with(cfg: &KernelConfig, return_pool: bool) -> Result<String, EmitError> {
    let mut ctx = tera::Context::new();
    ctx.insert("cfg", cfg.params());
    ctx.insert(
        "dims",
        &KernelDims {
            return_pool,
            ..KernelDims::new(cfg)
        },
    );
    ctx.insert(
        "header",
        &header(
            cfg,
            "ragged paged attention, StableHLO",
            KV_PAGES_TOKEN_MAJOR,
        ),
    );
    let template = match cfg.schedule() {
        crate::config::Schedule::Sequential => "rpa.stablehlo.mlir.tera",
        crate::config::Schedule::Batched => "rpa_batched.stablehlo.mlir.tera",
        crate::config::Schedule::Host => "rpa_host.stablehlo.mlir.tera",
    };
    templates::render(template, &ctx)
}

/// An emitted, checked StableHLO kernel.
#[derive(Clone, Debug)]
pub struct StablehloKernel {
    /// Header comment + the module in generic op form: what goes into `rpa.stablehlo.mlir`.
    pub text: String,
    pub module: CheckedModule,
}

/// Renders, parses, verifies and shape-checks the kernel for `cfg`.
pub fn emit(cfg: &KernelConfig) -> Result<StablehloKernel, EmitError> {
    emit_with(cfg, false)
}

/// The kernel for linking into a program that updates kv_pages in place: it also returns the
/// kv_pages its loops carried (unchanged), which the program passes on as the updated pool.
pub fn emit_linkable(cfg: &KernelConfig) -> Result<StablehloKernel, EmitError> {
    emit_with(cfg, true)
}

fn emit_with(cfg: &KernelConfig, return_pool: bool) -> Result<StablehloKernel, EmitError> {
    let rendered = render_with(cfg, return_pool)?;
    let module = mlir::check(&rendered)?;
    let mut text: String = header(
        cfg,
        "ragged paged attention, StableHLO",
        KV_PAGES_TOKEN_MAJOR,
    )
    .iter()
    .map(|l| format!("// {l}\n"))
    .collect();
    text.push_str(&module.generic_text);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(StablehloKernel { text, module })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dtype, Geometry, KernelParams};

    fn cfg(q: u32, kv: u32, window: Option<u32>, cap: Option<f32>) -> KernelConfig {
        let mut p = KernelParams::with_defaults(
            Geometry {
                num_q_heads: 8,
                num_kv_heads: 2,
                head_dim: 64,
            },
            q,
            kv,
        );
        p.page_size = 16;
        p.pages_per_seq = 10;
        p.total_pages = 40;
        p.max_num_tokens = 64;
        p.max_num_seqs = 4;
        p.dtype = Dtype::F32;
        p.sliding_window = window;
        p.soft_cap = cap;
        KernelConfig::new(p).unwrap()
    }

    #[test]
    fn emits_a_blocked_kernel_for_every_variant() {
        for (w, c) in [
            (None, None),
            (Some(7), None),
            (None, Some(30.0)),
            (Some(5), Some(2.5)),
        ] {
            let k = emit(&cfg(8, 3, w, c)).unwrap_or_else(|e| panic!("{w:?} {c:?}: {e}"));
            // three nested loops: sequences, query blocks, KV blocks
            assert_eq!(k.module.op_counts["stablehlo.while"], 3);
            assert_eq!(k.module.op_counts["stablehlo.gather"], 1);
            assert_eq!(
                k.module.op_counts.contains_key("stablehlo.tanh"),
                c.is_some()
            );
            assert!(k.text.starts_with("// Generated by kernelgen"));
        }
    }

    #[test]
    fn batched_schedule_drops_the_query_loop_only_when_one_block_holds_every_token() {
        let batched = |q: u32, tokens: u32| {
            let mut p = cfg(q, 3, None, None).params().clone();
            p.schedule = crate::config::Schedule::Batched;
            p.max_num_tokens = tokens;
            emit(&KernelConfig::new(p).unwrap())
                .unwrap()
                .module
                .op_counts["stablehlo.while"]
        };
        // query blocks, then KV blocks; a batch-1 decode (1 token, q_block 1) keeps only the latter
        assert_eq!(batched(8, 64), 2);
        assert_eq!(batched(8, 9), 2);
        assert_eq!(batched(8, 8), 1);
        assert_eq!(batched(1, 1), 1);
    }

    #[test]
    fn host_schedule_is_one_custom_call_carrying_the_parameters() {
        let mut p = cfg(8, 3, Some(7), Some(2.5)).params().clone();
        p.schedule = crate::config::Schedule::Host;
        let k = emit(&KernelConfig::new(p).unwrap()).unwrap();
        assert_eq!(k.module.op_counts["stablehlo.custom_call"], 1);
        assert!(!k.module.op_counts.contains_key("stablehlo.while"));
        for attr in [
            "q_block = 8",
            "kv_pages_block = 3",
            "sliding_window = 7",
            "kernelgen_rpa",
        ] {
            assert!(k.text.contains(attr), "{attr} missing from\n{}", k.text);
        }
    }

    #[test]
    fn block_sizes_change_the_program() {
        let a = emit(&cfg(8, 3, None, None)).unwrap().module.generic_text;
        let b = emit(&cfg(16, 2, None, None)).unwrap().module.generic_text;
        assert_ne!(a, b);
        // the KV block of 3 pages x 16 tokens and the q block of 8 rows appear in the types
        assert!(a.contains("tensor<3x16x4x64xf32>") && a.contains("tensor<8x2x4x64xf32>"));
        assert!(b.contains("tensor<2x16x4x64xf32>") && b.contains("tensor<16x2x4x64xf32>"));
    }

    #[test]
    fn shape_checker_catches_a_corrupted_template() {
        let good = render(&cfg(8, 3, None, None)).unwrap();
        // MLIR cannot see this: a wrong contraction dimension in an opaque StableHLO attribute
        let bad = good.replacen(
            "lhs_contracting_dimensions = [3], rhs_contracting_dimensions = [2]",
            "lhs_contracting_dimensions = [3], rhs_contracting_dimensions = [0]",
            1,
        );
        assert_ne!(good, bad);
        let err = mlir::check(&bad).unwrap_err().to_string();
        assert!(
            err.contains("stablehlo.dot_general")
                && err.contains("lhs dim 3 (64) != rhs dim 0 (48)"),
            "{err}"
        );
        // a result shape that disagrees with the operands, used consistently, is caught too
        let bad = good.replace("tensor<2x8x4x48xf32>", "tensor<2x4x8x48xf32>");
        assert!(mlir::check(&bad)
            .unwrap_err()
            .to_string()
            .contains("declared tensor<2x4x8x48xf32>"));
        // a misspelled op is rejected too
        let bad = good.replacen("stablehlo.exponential", "stablehlo.exponentail", 1);
        assert!(mlir::check(&bad)
            .unwrap_err()
            .to_string()
            .contains("no shape rule"));
    }
}
