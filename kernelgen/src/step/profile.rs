//! The step program taken apart, for `kernelgen bench decode`'s breakdown of where a step's time
//! goes: [`matmul_chain`] is the step's projections alone
//! (`templates/step_matmuls.stablehlo.mlir.tera`), in order and dependent on each other as in
//! the model (QKV, O, gate/up, down per layer, then the LM head, each behind the model's RMS
//! norm), reading the very weight buffers the step reads. Its parameters are `x f32[rows, H]` followed by every weight of
//! [`super::weights::pack_weights_dims`] in order, so it runs against
//! [`super::DeviceExecutor::weights`] without another upload. Under tensor parallelism,
//! [`all_reduce_chain`] is the step's collectives alone.

use super::program::{host_matmul, KernelForm};
use super::weights::weight_params;
use crate::emit::mlir::CheckedModule;
use crate::emit::{self, EmitError};
use runtime::dtype::Dtype;
use runtime::model::LlamaConfig;
use serde::Serialize;

/// Sizes the matmul-chain template spells (names follow the template).
#[derive(Serialize)]
struct MatmulChain {
    rows: usize,
    h: usize,
    qd: usize,
    qkv: usize,
    f: usize,
    f2: usize,
    v: usize,
    layers: usize,
    tied: bool,
    /// The native host matmul instead of XLA's dot.
    host: bool,
    /// The weight matrices' element type.
    w: &'static str,
    /// The LM head is the host LM head over two 16-bit planes, in argmax-only mode.
    split_head: bool,
    /// The RMS norms' epsilon and 1 / H, as the step spells them.
    eps: String,
    inv_h: String,
}

/// The step's matmuls at `rows` token rows, as one checked program returning the logits, in
/// the form a step program with kernels of `form` and weight matrices in `weights` uses at
/// those rows (`split_head`: [`super::StepSource::split_head`], a greedy step's LM head).
pub fn matmul_chain(
    m: &LlamaConfig,
    rows: usize,
    form: KernelForm,
    weights: Dtype,
    split_head: bool,
) -> Result<CheckedModule, EmitError> {
    let p = MatmulChain {
        split_head,
        eps: crate::emit::stablehlo::hex_f32(m.rms_norm_eps),
        inv_h: crate::emit::stablehlo::hex_f32(1.0 / m.hidden_size as f32),
        w: weights.mlir(),
        host: host_matmul(form, rows, weights),
        rows,
        h: m.hidden_size,
        qd: m.q_dim(),
        qkv: m.qkv_dim(),
        f: m.intermediate_size,
        f2: 2 * m.intermediate_size,
        v: m.vocab_size,
        layers: m.num_layers,
        tied: m.tie_word_embeddings,
    };
    let mut ctx = tera::Context::new();
    ctx.insert("p", &p);
    ctx.insert("params", &weight_params(m, weights, split_head));
    ctx.insert(
        "header",
        &emit::header(&format!(
            "the step's matmuls alone: {} layers, {rows} rows",
            m.num_layers
        )),
    );
    emit::render_checked("step_matmuls.stablehlo.mlir.tera", &ctx)
}

/// Sizes the all-reduce chain template spells.
#[derive(Serialize)]
struct AllReduceChain {
    rows: usize,
    h: usize,
    count: usize,
    tp: usize,
    groups: String,
}

/// The tensor-parallel step's all-reduces alone (two per layer, each over `tp` devices, of a
/// `[rows, H]` hidden state, each reading the last), as one checked per-device program.
pub fn all_reduce_chain(
    m: &LlamaConfig,
    rows: usize,
    tp: usize,
) -> Result<CheckedModule, EmitError> {
    let p = AllReduceChain {
        rows,
        h: m.hidden_size,
        count: 2 * m.num_layers,
        tp,
        groups: (0..tp)
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut ctx = tera::Context::new();
    ctx.insert("p", &p);
    ctx.insert(
        "header",
        &emit::header(&format!(
            "the step's all-reduces alone: {} over {tp} devices, {rows} rows",
            p.count
        )),
    );
    emit::render_checked("step_all_reduces.stablehlo.mlir.tera", &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::weights::pack_weights_dims;
    use verify::fixtures::tiny::TinyConfig;

    /// One dot per projection per layer, plus the LM head; every weight is a parameter, its
    /// matrices in the served dtype (widened to f32 before XLA's dot, read as they are by the
    /// host matmul).
    #[test]
    fn the_chain_has_the_steps_matmuls() {
        for (tied, weights) in [(true, Dtype::F32), (false, Dtype::F32), (true, Dtype::Bf16)] {
            let m = TinyConfig {
                tie_word_embeddings: tied,
                ..Default::default()
            }
            .llama_config();
            let matmuls = 4 * m.num_layers + 1;
            let widened = if weights == Dtype::Bf16 { matmuls } else { 0 };
            let c = matmul_chain(&m, 3, KernelForm::Portable, weights, false)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.op_counts["stablehlo.dot_general"], matmuls);
            assert_eq!(
                c.op_counts.get("stablehlo.convert").copied().unwrap_or(0),
                widened
            );
            // The host form calls the host matmul where this CPU runs its vector path.
            let c = matmul_chain(&m, 3, KernelForm::Host, weights, false)
                .unwrap_or_else(|e| panic!("{e}"));
            let op = if runtime::kernels::matmul::vectorized() {
                "stablehlo.custom_call"
            } else {
                "stablehlo.dot_general"
            };
            assert_eq!(c.op_counts[op], matmuls);
            // There the norms before QKV and gate/up and the residual adds after O and down are
            // the calls' own: only the final norm is left to XLA.
            let (layers, text) = (m.num_layers, &c.generic_text);
            let fused = runtime::kernels::matmul::vectorized();
            let norms_in_xla = if fused { 1 } else { 2 * layers + 1 };
            assert_eq!(c.op_counts["stablehlo.rsqrt"], norms_in_xla);
            let calls = |t: &str| text.matches(&format!("\"{t}\"")).count();
            assert_eq!(
                calls("kernelgen_norm_matmul"),
                if fused { 2 * layers } else { 0 }
            );
            assert_eq!(
                calls("kernelgen_matmul_add"),
                if fused { 2 * layers } else { 0 }
            );
            let params = pack_weights_dims(&m).len() + 1;
            assert!(c.generic_text.matches("tensor<").count() > params);
            assert_eq!(
                c.generic_text.contains("bf16>"),
                weights == Dtype::Bf16,
                "the matrices are parameters in the served dtype"
            );
        }
    }

    /// With the LM head split, its matrix is a `ui16 [2, V, H]` parameter, its tables (rows'
    /// norms and 8-bit screen) the last, and the head one call of the host LM head in
    /// argmax-only mode.
    #[test]
    fn a_split_head_chain_calls_the_host_lm_head_on_the_planes() {
        for tied in [true, false] {
            let m = TinyConfig {
                tie_word_embeddings: tied,
                ..Default::default()
            }
            .llama_config();
            let c = matmul_chain(&m, 1, KernelForm::Host, Dtype::F32, true)
                .unwrap_or_else(|e| panic!("{e}"));
            let (v, h) = (m.vocab_size, m.hidden_size);
            let text = &c.generic_text;
            assert!(text.contains(&format!("tensor<2x{v}x{h}xui16>")), "{text}");
            assert!(text.contains(&format!(
                "tensor<2x{v}xf32>, tensor<{v}x{h}xi8>, tensor<1xi32>) -> tensor<1x{v}xf32>"
            )));
            assert_eq!(text.matches("kernelgen_lm_head").count(), 1);
        }
    }

    /// Two all-reduces per layer, chained.
    #[test]
    fn the_all_reduce_chain_has_the_steps_collectives() {
        let m = TinyConfig::default().llama_config();
        let c = all_reduce_chain(&m, 4, 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.op_counts["stablehlo.all_reduce"], 2 * m.num_layers);
    }
}
