//! The TPU side of a build: the Pallas module with its VMEM limit, and the real TPU compiler's
//! verdict on it (`kernelgen build --target T --emit tpu`, `kernelgen check --oracle`).
//!
//! The compiler runs in the toolkit-managed venv (`verify::oracle`), deviceless: jax lowers the
//! module for a compile-only device of the target's topology and libtpu compiles it.

use crate::config::KernelConfig;
use crate::emit::pallas::{self, VmemInfo};
use crate::target::Target;
use crate::vmem::{KernelModel, Verdict, VmemReport};
use serde::Serialize;
use std::path::{Path, PathBuf};
use verify::oracle::{OracleRequest, OracleResponse};

/// The lowered kernel's file name in an artifact: `rpa.<target>.stablehlo.mlir`.
pub fn lowered_file_name(target: &Target) -> String {
    format!("rpa.{}.stablehlo.mlir", target.name)
}

/// The oracle request that compiles `model` for `cfg` on `target` at `limit` (`None`: the
/// target's default). For the kernelgen kernel `module` is the emitted `rpa.pallas.py`.
pub fn oracle_request(
    cfg: &KernelConfig,
    target: &Target,
    model: KernelModel,
    limit: Option<u64>,
    module: Option<&Path>,
    export: Option<&Path>,
) -> OracleRequest {
    let g = cfg.geometry();
    OracleRequest {
        kernel: model.name().into(),
        target: target.name.into(),
        num_q_heads: g.num_q_heads,
        num_kv_heads: g.num_kv_heads,
        head_dim: g.head_dim,
        page_size: cfg.page_size(),
        dtype: pallas::jnp_dtype(cfg.dtype()).into(),
        q_block: cfg.q_block(),
        kv_pages_block: cfg.kv_pages_block(),
        max_num_tokens: cfg.max_num_tokens(),
        max_num_seqs: cfg.max_num_seqs(),
        pages_per_seq: cfg.pages_per_seq(),
        total_pages: cfg.total_pages(),
        vmem_limit_bytes: limit,
        module: module.map(|p| p.display().to_string()),
        export_path: export.map(|p| p.display().to_string()),
    }
}

/// Renders the kernelgen module for `cfg` into the cache (`<cache>/pallas/<sha>.py`) so the
/// oracle can import it outside an artifact (`check --oracle --kernel kernelgen`).
pub fn cached_module(cfg: &KernelConfig) -> Result<PathBuf, crate::Error> {
    let text = pallas::render(cfg, &VmemInfo::default())?;
    let dir = verify::oracle::cache_dir().join("pallas");
    let path = dir.join(format!(
        "{}.py",
        &crate::artifact::sha256_hex(text.as_bytes())[..16]
    ));
    let io = |e: std::io::Error| crate::artifact::ArtifactError::Io {
        path: path.clone(),
        source: e,
    };
    if !path.exists() {
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::write(&path, text).map_err(io)?;
    }
    Ok(path)
}

/// The compiler's verdict on the checker's terms.
pub fn compiler_verdict(o: &OracleResponse) -> Option<Verdict> {
    match o.verdict.as_str() {
        "fits" => Some(Verdict::Fits),
        "vmem_oom" | "smem_oom" | "hbm_oom" => Some(Verdict::DoesNotFit),
        _ => None,
    }
}

/// What `manifest.json` records under `tpu_compile`: the real compiler's verdict beside the
/// checker's prediction for the same target and limit.
#[derive(Clone, Debug, Serialize)]
pub struct TpuCompileRecord {
    pub target: String,
    /// The limit compiled with; `None` is the target's default (`default_limit_bytes`).
    pub vmem_limit_bytes: Option<u64>,
    pub default_limit_bytes: u64,
    /// `fits`, `vmem_oom`, `smem_oom`, `hbm_oom` or `error`.
    pub compiler_verdict: String,
    /// For an OOM: the compiler's reported allocation size and limit.
    pub compiler_size_bytes: Option<u64>,
    pub compiler_limit_bytes: Option<u64>,
    pub compiler_message: String,
    pub compile_seconds: f64,
    pub checker_verdict: Verdict,
    pub checker_total_bytes: u64,
    pub checker_range_bytes: (u64, Option<u64>),
    /// Whether the two verdicts agree (`None` when the checker said uncertain or the compiler
    /// failed for another reason).
    pub agree: Option<bool>,
    pub jax_versions: &'static [&'static str],
    /// The lowered module (a `tpu_custom_call` carrying the Mosaic kernel), when lowering worked.
    pub lowered_file: Option<String>,
}

impl TpuCompileRecord {
    pub fn new(
        target: &Target,
        limit: Option<u64>,
        report: &VmemReport,
        o: &OracleResponse,
        lowered_file: Option<String>,
    ) -> TpuCompileRecord {
        let compiler = compiler_verdict(o);
        let agree = match (report.verdict, compiler) {
            (Verdict::Uncertain, _) | (_, None) => None,
            (a, Some(b)) => Some(a == b),
        };
        TpuCompileRecord {
            target: target.name.into(),
            vmem_limit_bytes: limit,
            default_limit_bytes: target.default_scoped_vmem_bytes,
            compiler_verdict: o.verdict.clone(),
            compiler_size_bytes: o.size_bytes,
            compiler_limit_bytes: o.limit_bytes,
            compiler_message: o.message.clone(),
            compile_seconds: o.compile_s,
            checker_verdict: report.verdict,
            checker_total_bytes: report.total_bytes,
            checker_range_bytes: (report.lower_bytes, report.upper_bytes),
            agree,
            jax_versions: verify::oracle::PINNED,
            lowered_file,
        }
    }
}
