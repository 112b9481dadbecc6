//! Glue between kernel generation and the runtime: the step-program source the device executor
//! compiles from, and the check that a kernel artifact fits the model it is asked to serve.

use crate::artifact::Artifact;
use crate::config::Dtype;
use crate::emit::step::{self, KernelSource};
use runtime::model::LlamaConfig;
use runtime::step::layout::{KvDtype, StepShapes};
use runtime::step::ProgramSource;

/// Emits and links the step program for each bucket on demand.
pub struct StepSource {
    pub model: LlamaConfig,
    pub kernel: KernelSource,
}

impl ProgramSource for StepSource {
    fn program(&self, shapes: &StepShapes) -> Result<String, String> {
        step::emit(&self.model, shapes, &self.kernel)
            .map(|p| p.module.generic_text)
            .map_err(|e| e.to_string())
    }
}

/// A kernel artifact that does not fit the model: names the field, both values, and the fix.
#[derive(Debug, thiserror::Error)]
#[error("kernel artifact {artifact} does not match the model: {field} is {kernel} in the kernel but {model} in the model; build one with `{fix}`")]
pub struct KernelMismatch {
    pub artifact: String,
    pub field: &'static str,
    pub kernel: String,
    pub model: String,
    pub fix: String,
}

/// Refuses an artifact whose heads, head_dim, page size or dtype differ from what the engine
/// runs (the call shapes may differ: the kernel is re-instantiated at each bucket's shapes).
pub fn check_artifact(
    a: &Artifact,
    m: &LlamaConfig,
    page_size: usize,
    kv: KvDtype,
) -> Result<(), KernelMismatch> {
    let c = &a.manifest.config;
    let g = c.geometry();
    let model_dtype = match kv {
        KvDtype::F32 => Dtype::F32,
        KvDtype::Bf16 => Dtype::Bf16,
    };
    let checks: [(&'static str, String, String); 5] = [
        (
            "num_q_heads",
            g.num_q_heads.to_string(),
            m.num_q_heads.to_string(),
        ),
        (
            "num_kv_heads",
            g.num_kv_heads.to_string(),
            m.num_kv_heads.to_string(),
        ),
        ("head_dim", g.head_dim.to_string(), m.head_dim.to_string()),
        (
            "page_size",
            c.page_size().to_string(),
            page_size.to_string(),
        ),
        ("dtype", c.dtype().to_string(), model_dtype.to_string()),
    ];
    for (field, kernel, model) in checks {
        if kernel != model {
            return Err(KernelMismatch {
                artifact: a.dir.display().to_string(),
                field,
                kernel,
                model,
                fix: format!(
                    "kernelgen build --q {} --kv {} --num-q-heads {} --num-kv-heads {} --head-dim {} --page-size {page_size} --dtype {}",
                    c.q_block(),
                    c.kv_pages_block(),
                    m.num_q_heads,
                    m.num_kv_heads,
                    m.head_dim,
                    model_dtype.mlir()
                ),
            });
        }
    }
    Ok(())
}
