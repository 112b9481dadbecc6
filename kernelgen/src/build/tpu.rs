//! The TPU side of `kernelgen build --target T`: the checker's verdict on the Pallas kernel for
//! the target at the requested limit, why a config that does not fit is refused, the module
//! written into the artifact with its limit baked in, and (with `--emit tpu`) its lowering and
//! compile by the real TPU compiler, recorded in the manifest.

use crate::artifact::ArtifactWriter;
use crate::config::KernelConfig;
use crate::emit::pallas::{self, VmemInfo};
use crate::target::{fmt_bytes, Target};
use crate::tpu::{self, Oracle, TpuCompileRecord};
use crate::vmem::{check, limit_that_fits, CheckRequest, KernelModel, Verdict, VmemReport};
use crate::Error;
use std::path::Path;

/// The Pallas kernel for one target: the checker's report at the requested limit.
#[derive(Clone, Debug)]
pub struct TpuBuild {
    pub target: Target,
    /// `None`: the target's default scoped limit.
    pub limit: Option<u64>,
    pub report: VmemReport,
}

/// Why a config cannot be built for a target.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The scalar-prefetched arrays overflow SMEM.
    Smem { need: u64, have: u64 },
    /// The operands overflow HBM.
    Hbm { need: u64, have: u64 },
    /// VMEM at this limit is too small; `raise_to` is the smallest limit that fits, if any does
    /// below the chip's physical VMEM.
    Vmem {
        limit: u64,
        needs_at_least: u64,
        raise_to: Option<u64>,
        physical: u64,
    },
}

impl Refusal {
    /// The refusal as one sentence, with the fix.
    pub fn describe(&self, cfg: &KernelConfig, target: &str) -> String {
        match self {
            Refusal::Smem { need, have } => format!(
                "{cfg} cannot run on {target}: its scalar-prefetched arrays need {} of SMEM ({} available): lower --max-seqs or --max-model-len",
                fmt_bytes(*need),
                fmt_bytes(*have)
            ),
            Refusal::Hbm { need, have } => format!(
                "{cfg} cannot run on {target}: its operands need {} of HBM ({} available): lower --total-pages or --max-tokens",
                fmt_bytes(*need),
                fmt_bytes(*have)
            ),
            Refusal::Vmem {
                limit,
                needs_at_least,
                raise_to,
                physical,
            } => {
                let raise = match raise_to {
                    Some(l) => format!("raise --vmem-limit to {} or", fmt_bytes(*l)),
                    None => format!(
                        "no vmem_limit up to {target}'s physical {} fits it;",
                        fmt_bytes(*physical)
                    ),
                };
                format!(
                    "{cfg} does not fit {target}'s VMEM at a {} limit (needs at least {}); {raise} pick a config above",
                    fmt_bytes(*limit),
                    fmt_bytes(*needs_at_least)
                )
            }
        }
    }
}

impl TpuBuild {
    /// Checks `cfg`'s Pallas kernel for `target` at `limit`.
    pub fn plan(cfg: &KernelConfig, target: Target, limit: Option<u64>) -> Result<TpuBuild, Error> {
        let report = check(&CheckRequest {
            cfg,
            target,
            kernel: KernelModel::Kernelgen,
            vmem_limit: limit,
        })?;
        Ok(TpuBuild {
            target,
            limit,
            report,
        })
    }

    pub fn request<'a>(&self, cfg: &'a KernelConfig) -> CheckRequest<'a> {
        CheckRequest {
            cfg,
            target: self.target,
            kernel: KernelModel::Kernelgen,
            vmem_limit: self.limit,
        }
    }

    /// Why the build must stop, when the checker says the config does not fit.
    pub fn refusal(&self) -> Option<Refusal> {
        let r = &self.report;
        if r.verdict != Verdict::DoesNotFit {
            return None;
        }
        Some(if r.vmem_verdict == Verdict::DoesNotFit {
            Refusal::Vmem {
                limit: r.limit_bytes,
                needs_at_least: r.lower_bytes,
                raise_to: limit_that_fits(r, &self.target),
                physical: self.target.vmem_bytes,
            }
        } else if r.smem.verdict == Verdict::DoesNotFit {
            Refusal::Smem {
                need: r.smem.total_bytes,
                have: r.smem.capacity_bytes,
            }
        } else {
            Refusal::Hbm {
                need: r.hbm.operand_bytes,
                have: r.hbm.capacity_bytes,
            }
        })
    }

    fn vmem_info(&self) -> VmemInfo {
        VmemInfo {
            target: Some(self.target.name.to_string()),
            estimate_bytes: Some(self.report.total_bytes),
            limit_bytes: self.limit,
        }
    }

    /// Writes `rpa.pallas.py` for `cfg` into the artifact, with the checker's report and the
    /// module's KV pool operand (head-major, unlike the StableHLO kernel's `inputs`) in the
    /// manifest.
    pub fn write_module(&self, cfg: &KernelConfig, w: &mut ArtifactWriter) -> Result<(), Error> {
        let text = pallas::render(cfg, &self.vmem_info())?;
        w.add_file(pallas::FILE_NAME, text.as_bytes())?;
        let report = serde_json::to_value(&self.report).expect("reports serialize");
        w.manifest.extra.insert("vmem_check".into(), report);
        let kv_pages = pallas::kv_pages(cfg);
        let value = serde_json::json!({ "kv_layout": pallas::KV_LAYOUT, "kv_pages": kv_pages });
        w.manifest.extra.insert("pallas".into(), value);
        Ok(())
    }

    /// Lowers and compiles the module written into `dir` with the real TPU compiler (deviceless),
    /// adds the lowered module to the artifact and records the verdict in the manifest.
    /// `on_setup` hears about a first-time venv install.
    pub fn compile(
        &self,
        cfg: &KernelConfig,
        dir: &Path,
        w: &mut ArtifactWriter,
        on_setup: &mut dyn FnMut(&str),
    ) -> Result<TpuCompileRecord, Error> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| crate::artifact::ArtifactError::Io { path, source }
        };
        let module_path = dir.join(pallas::FILE_NAME);
        let module = std::fs::canonicalize(&module_path).map_err(io(&module_path))?;
        let lowered_name = tpu::lowered_file_name(&self.target);
        let export = module.with_file_name(format!(".{lowered_name}.tmp"));
        let _ = std::fs::remove_file(&export);
        let mut oracle = Oracle::start(on_setup)?;
        let req = tpu::oracle_request(
            cfg,
            &self.target,
            KernelModel::Kernelgen,
            self.limit,
            Some(&module),
            Some(&export),
        );
        let resp = oracle.compile(&req)?;
        let lowered = match std::fs::read(&export) {
            Ok(bytes) => {
                w.add_file(&lowered_name, &bytes)?;
                let _ = std::fs::remove_file(&export);
                Some(lowered_name)
            }
            Err(_) => None,
        };
        let record = TpuCompileRecord::new(&self.target, self.limit, &self.report, &resp, lowered);
        let value = serde_json::to_value(&record).expect("records serialize");
        w.manifest.extra.insert("tpu_compile".into(), value);
        Ok(record)
    }
}
