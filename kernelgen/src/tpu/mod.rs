//! The real TPU compiler, deviceless: jax lowers a kernel for a compile-only device of the
//! target's topology and libtpu compiles it, in the toolkit-managed venv ([`oracle`]); and what
//! a build records of its verdict (`kernelgen build --target T --emit tpu`, `check --oracle`).

pub mod oracle;

pub use oracle::{CompilerVerdict, Oracle, OracleError, OracleRequest, OracleResponse};

use crate::config::KernelConfig;
use crate::emit::pallas::{self, VmemInfo};
use crate::target::Target;
use crate::vmem::{KernelModel, Verdict, VmemReport};
use serde::Serialize;
use std::path::{Path, PathBuf};

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
    OracleRequest {
        vmem_limit_bytes: limit,
        module: module.map(Path::to_path_buf),
        export_path: export.map(Path::to_path_buf),
        ..OracleRequest::new(model, target.name, cfg)
    }
}

/// The request for a checked config: for the kernelgen kernel, its module rendered into the
/// cache first (`check --oracle`, `bench check --oracle`).
pub fn checked_config_request(
    cfg: &KernelConfig,
    target: &Target,
    model: KernelModel,
    limit: Option<u64>,
) -> Result<OracleRequest, crate::Error> {
    let module = match model {
        KernelModel::Kernelgen => Some(cached_module(cfg)?),
        KernelModel::JaxRpa => None,
    };
    Ok(oracle_request(
        cfg,
        target,
        model,
        limit,
        module.as_deref(),
        None,
    ))
}

/// Renders the kernelgen module for `cfg` into the cache (`<cache>/pallas/<sha>.py`) so the
/// oracle can import it outside an artifact (`check --oracle --kernel kernelgen`).
pub fn cached_module(cfg: &KernelConfig) -> Result<PathBuf, crate::Error> {
    let text = pallas::render(cfg, &VmemInfo::default())?;
    let dir = runtime::cache::cache_dir().join("pallas");
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

/// The compiler's verdict on the checker's terms (`None`: no verdict on memory).
pub fn compiler_verdict(o: &OracleResponse) -> Option<Verdict> {
    match o.verdict {
        CompilerVerdict::Fits => Some(Verdict::Fits),
        v if v.is_oom() => Some(Verdict::DoesNotFit),
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
    pub compiler_verdict: CompilerVerdict,
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
            compiler_verdict: o.verdict,
            compiler_size_bytes: o.size_bytes,
            compiler_limit_bytes: o.limit_bytes,
            compiler_message: o.message.clone(),
            compile_seconds: o.compile_s,
            checker_verdict: report.verdict,
            checker_total_bytes: report.total_bytes,
            checker_range_bytes: (report.lower_bytes, report.upper_bytes),
            agree,
            jax_versions: oracle::PINNED,
            lowered_file,
        }
    }
}
