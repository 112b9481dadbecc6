//! The model's step program (`templates/step.stablehlo.mlir.tera`) with the ragged paged attention
//! kernel linked in: one StableHLO module per token-count bucket.
//!
//! The kernel comes from an artifact ([`KernelSource::Artifact`]): its config (block sizes, dtype,
//! page size, geometry, sm_scale) is instantiated at each bucket's call shapes in linkable form
//! (the kernel also returns the kv_pages its loops carried, so the program's updated pool has one
//! consumer and XLA never copies it) and linked in with melior. The runtime refuses an artifact
//! whose geometry, page size or dtype differ from the model's before calling this.

use super::StepShapes;
use crate::artifact::Artifact;
use crate::config::{Geometry, KernelConfig, KernelParams, Schedule};
use crate::emit::link::link;
use crate::emit::mlir::CheckedModule;
use crate::emit::stablehlo::hex_f32;
use crate::emit::{self, stablehlo, templates, EmitError};
use crate::Error;
use runtime::dtype::Dtype;
use runtime::model::LlamaConfig;
use serde::Serialize;

/// Symbol the step program calls the kernel by.
pub const KERNEL_SYMBOL: &str = "rpa_attention";

/// Where the attention kernel comes from.
#[derive(Clone, Debug)]
pub enum KernelSource {
    /// A built artifact directory.
    Artifact(Box<Artifact>),
    /// Block sizes only: a kernel is emitted for each bucket (used when no --kernel is given).
    Blocks(BlockSizes),
}

/// Which form of the attention kernel emitted programs link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelForm {
    /// StableHLO only (the sequential schedule for prefill, batched for decode): any backend.
    #[default]
    Portable,
    /// The native host kernel as an XLA FFI custom call ([`Schedule::Host`]): XLA CPU only.
    Host,
}

impl KernelForm {
    /// The form a kernel of `schedule` takes.
    pub fn of(schedule: Schedule) -> KernelForm {
        match schedule {
            Schedule::Host => KernelForm::Host,
            Schedule::Sequential | Schedule::Batched => KernelForm::Portable,
        }
    }
}

/// What `--attention` asks for; [`AttentionChoice::resolve`] turns it into a [`KernelForm`] for
/// the plugin at hand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionChoice {
    /// The host kernel where the plugin runs it (XLA CPU with the handler registered), else
    /// the portable form.
    #[default]
    Auto,
    Host,
    Portable,
}

/// Why a plugin on `platform`, whose host-kernel registration gave `host_kernels`, cannot run
/// the host kernel; `Ok` when it can.
pub fn host_kernel_available(
    platform: &str,
    host_kernels: std::result::Result<(), &str>,
) -> std::result::Result<(), String> {
    match (platform, host_kernels) {
        ("cpu", Ok(())) => Ok(()),
        ("cpu", Err(why)) => Err(format!("the plugin did not take the host kernel: {why}")),
        (other, _) => Err(format!(
            "the host kernel runs on XLA CPU only, this plugin is {other}"
        )),
    }
}

impl AttentionChoice {
    /// The form for a plugin on `platform` whose host-kernel registration gave `host_kernels`.
    pub fn resolve(
        self,
        platform: &str,
        host_kernels: std::result::Result<(), &str>,
    ) -> std::result::Result<KernelForm, String> {
        let host_ok = host_kernel_available(platform, host_kernels);
        match (self, host_ok) {
            (AttentionChoice::Portable, _) | (AttentionChoice::Auto, Err(_)) => {
                Ok(KernelForm::Portable)
            }
            (_, Ok(())) => Ok(KernelForm::Host),
            (AttentionChoice::Host, Err(why)) => Err(format!(
                "--attention host is unavailable: {why}; use --attention portable (or auto)"
            )),
        }
    }
}

/// The block sizes of emitted kernels: prefill and mixed programs use `q_block` and
/// `kv_pages_block`; decode-only programs (one row per sequence: q_block 1, the batched
/// schedule) use `decode_kv_pages_block`. Tuned separately by `kernelgen tune`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BlockSizes {
    pub q_block: u32,
    pub kv_pages_block: u32,
    pub decode_kv_pages_block: u32,
    /// Portable StableHLO or the host kernel.
    pub form: KernelForm,
}

impl BlockSizes {
    /// The same kv_pages_block for every program (`--q Q --kv KV`).
    pub fn uniform(q_block: u32, kv_pages_block: u32) -> BlockSizes {
        BlockSizes {
            q_block,
            kv_pages_block,
            decode_kv_pages_block: kv_pages_block,
            form: KernelForm::Portable,
        }
    }
}

impl std::fmt::Display for BlockSizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "q_block={} kv_pages_block={}",
            self.q_block, self.kv_pages_block
        )?;
        if self.decode_kv_pages_block != self.kv_pages_block {
            write!(f, " (decode kv_pages_block={})", self.decode_kv_pages_block)?;
        }
        if self.form == KernelForm::Host {
            write!(f, ", host kernel")?;
        }
        Ok(())
    }
}

/// Sizes the step template spells into MLIR types (names follow the template).
#[derive(Clone, Debug, Serialize)]
pub struct StepDims {
    pub module_name: String,
    pub t: usize,
    pub s: usize,
    pub s1: usize,
    pub r: usize,
    pub pps: usize,
    pub np: usize,
    pub p: usize,
    pub h: usize,
    pub v: usize,
    pub f: usize,
    pub f2: usize,
    pub hq: usize,
    pub hkv: usize,
    pub hkv2: usize,
    pub hd: usize,
    pub hd2: usize,
    pub qd: usize,
    pub kvd: usize,
    pub qkv: usize,
    pub layers: usize,
    pub kv: &'static str,
    /// The weight matrices' element type (`f32`, `bf16`).
    pub w: &'static str,
    pub tied: bool,
    /// f32 constants as exact hex bit patterns.
    pub eps: String,
    pub inv_h: String,
    /// Devices of tensor parallelism (1: the single-device program); the sizes above are one
    /// device's ([`super::tp::shard_config`]).
    pub tp: usize,
    /// `0, 1, .., tp-1`: the all-reduce's one group.
    pub tp_groups: String,
    /// Which matmuls call the native host matmul instead of XLA's dot ([`host_matmul`]): the
    /// `t`-row projections, and the `r`-row LM head.
    pub host_matmul: bool,
    pub host_matmul_head: bool,
    /// The LM head's matrix is two 16-bit planes, read by the host LM head.
    pub split_head: bool,
}

/// Whether a matmul of `rows` rows over weight matrices in `weights` calls the host matmul in
/// a program whose kernels are `form`: only where this CPU runs its vector path (AVX-512), whose
/// plain loops would lose to XLA's dot; f32 weights up to [`runtime::kernels::matmul::MAX_ROWS`]
/// rows (XLA's blocked GEMM wins above), bf16 ones at every row count, because XLA's dot would
/// need them widened to f32 first, which it does for the whole model in every step. Measured
/// on SmolLM2-135M's 256-token prefill (AMD EPYC, 2 vCPUs, `kernelgen bench decode --weights
/// bf16`): 1195 tokens/s and a 577 MB peak with the host matmul, 1029 tokens/s and 934 MB with
/// XLA's dot on widened weights.
pub fn host_matmul(form: KernelForm, rows: usize, weights: Dtype) -> bool {
    form == KernelForm::Host
        && (weights == Dtype::Bf16 || rows <= runtime::kernels::matmul::MAX_ROWS)
        && runtime::kernels::matmul::vectorized()
}

/// [`StepSource::split_head`] of programs over `tp` devices with weight matrices in `weights`
/// and kernels of `form`.
pub fn splits_head(tp: usize, weights: Dtype, form: KernelForm) -> bool {
    tp == 1
        && weights == Dtype::F32
        && form == KernelForm::Host
        && runtime::kernels::lm_head::argmax_screens()
}

impl StepDims {
    /// The dims of `m` (one device's model when `tp` > 1) at shapes `s`.
    pub fn new(m: &LlamaConfig, s: &StepShapes, tp: usize, form: KernelForm) -> StepDims {
        StepDims {
            tp,
            host_matmul: host_matmul(form, s.tokens, s.weights_dtype),
            host_matmul_head: host_matmul(form, s.logits_rows, s.weights_dtype),
            split_head: s.split_head,
            tp_groups: (0..tp)
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            module_name: format!("step_t{}", s.tokens),
            t: s.tokens,
            s: s.seqs,
            s1: s.seqs + 1,
            r: s.logits_rows,
            pps: s.pages_per_seq,
            np: s.pool_pages,
            p: s.page_size,
            h: m.hidden_size,
            v: m.vocab_size,
            f: m.intermediate_size,
            f2: 2 * m.intermediate_size,
            hq: m.num_q_heads,
            hkv: m.num_kv_heads,
            hkv2: 2 * m.num_kv_heads,
            hd: m.head_dim,
            hd2: m.head_dim / 2,
            qd: m.num_q_heads * m.head_dim,
            kvd: m.num_kv_heads * m.head_dim,
            qkv: (m.num_q_heads + 2 * m.num_kv_heads) * m.head_dim,
            layers: m.num_layers,
            kv: s.kv_dtype.mlir(),
            w: s.weights_dtype.mlir(),
            tied: m.tie_word_embeddings,
            eps: hex_f32(m.rms_norm_eps),
            inv_h: hex_f32(1.0 / m.hidden_size as f32),
        }
    }
}

/// A checked, linked step program and where its kernel came from.
pub struct StepProgram {
    pub module: CheckedModule,
    /// The kernel config linked in (at the bucket's shapes).
    pub kernel: KernelConfig,
}

/// The kernel config for a bucket: the source's block sizes, dtype and geometry at the bucket's
/// shapes (q_block and kv_pages_block clamped to what the shapes allow).
pub fn bucket_kernel(
    m: &LlamaConfig,
    s: &StepShapes,
    source: &KernelSource,
) -> Result<KernelConfig, Error> {
    let (q, kv, dtype, schedule) = match source {
        KernelSource::Artifact(a) => {
            let c = &a.manifest.config;
            (c.q_block(), c.kv_pages_block(), c.dtype(), c.schedule())
        }
        KernelSource::Blocks(b) => {
            let schedule = match (b.form, s.decode) {
                (KernelForm::Host, _) => Schedule::Host,
                (KernelForm::Portable, true) => Schedule::Batched,
                (KernelForm::Portable, false) => Schedule::Sequential,
            };
            let kv = if s.decode {
                b.decode_kv_pages_block
            } else {
                b.kv_pages_block
            };
            (b.q_block, kv, s.kv_dtype, schedule)
        }
    };
    Ok(KernelConfig::new(KernelParams {
        geometry: Geometry {
            num_q_heads: m.num_q_heads as u32,
            num_kv_heads: m.num_kv_heads as u32,
            head_dim: m.head_dim as u32,
        },
        dtype,
        page_size: s.page_size as u32,
        // Decode programs hold one row per sequence: the batched schedule with q_block 1.
        q_block: if s.decode { 1 } else { q.min(s.tokens as u32) },
        kv_pages_block: kv.min(s.pages_per_seq as u32),
        max_num_tokens: s.tokens as u32,
        max_num_seqs: s.seqs as u32,
        pages_per_seq: s.pages_per_seq as u32,
        total_pages: s.pool_pages as u32,
        sm_scale: None,
        sliding_window: None,
        soft_cap: None,
        // The host kernel serves every bucket; the portable decode form is the batched schedule.
        schedule: match schedule {
            Schedule::Host => Schedule::Host,
            _ if s.decode => Schedule::Batched,
            other => other,
        },
    })?)
}

/// Renders the step template for `m` (one device's model when `tp` > 1) at `shapes` (unlinked:
/// it declares `@rpa_attention`); `form` [`KernelForm::Host`] also calls the host matmul where
/// [`host_matmul`] says so.
pub fn render(
    m: &LlamaConfig,
    shapes: &StepShapes,
    tp: usize,
    form: KernelForm,
) -> Result<String, EmitError> {
    let mut ctx = tera::Context::new();
    ctx.insert("d", &StepDims::new(m, shapes, tp, form));
    let mut header = emit::header("Llama step program");
    header.push(format!(
        "bucket: {} tokens, {} seqs, {} logits rows, {} pool pages of {} tokens",
        shapes.tokens, shapes.seqs, shapes.logits_rows, shapes.pool_pages, shapes.page_size
    ));
    ctx.insert("header", &header);
    templates::render("step.stablehlo.mlir.tera", &ctx)
}

/// What the executor compiles its programs from: the model's config, where the kernel comes
/// from and over how many devices; [`StepSource::program`] emits and links one bucket's program
/// on demand.
#[derive(Clone, Debug)]
pub struct StepSource {
    /// The whole model (each device runs [`StepSource::shard`] of it).
    pub model: LlamaConfig,
    pub kernel: KernelSource,
    /// Devices of tensor parallelism (1: one device), valid for `model`
    /// ([`super::tp::shard_config`]).
    pub tp: usize,
    /// The weight matrices' dtype on the device ([`super::weights::weight_params`]).
    pub weights: Dtype,
}

impl StepSource {
    /// The form of the kernels its programs link: the host kernels where the source's
    /// schedule is [`Schedule::Host`].
    pub fn form(&self) -> KernelForm {
        match &self.kernel {
            KernelSource::Artifact(a) => KernelForm::of(a.manifest.config.schedule()),
            KernelSource::Blocks(b) => b.form,
        }
    }

    /// Whether its programs hold the LM head's f32 matrix as two 16-bit planes (and an 8-bit
    /// copy) and read it with the host LM head ([`runtime::kernels::lm_head`]), whose greedy
    /// steps read a quarter of its bytes: with f32 weights on one device, with the host
    /// kernels, where the CPU runs the head's estimate (AVX-512 VNNI,
    /// [`runtime::kernels::lm_head::argmax_screens`]). On SmolLM2-135M (tied, a fifth of the
    /// weights) a greedy decode step then reads 453 MB instead of 538.
    pub fn split_head(&self) -> bool {
        splits_head(self.tp, self.weights, self.form())
    }

    /// One device's model.
    pub fn shard(&self) -> Result<LlamaConfig, super::tp::TpError> {
        super::tp::shard_config(&self.model, self.tp)
    }

    /// The checked, linked program text for `shapes`.
    pub fn program(&self, shapes: &StepShapes) -> Result<String, Error> {
        let shard = self.shard()?;
        emit_tp(&shard, shapes, &self.kernel, self.tp).map(|p| p.module.generic_text)
    }
}

/// Emits the step program for one bucket with the kernel linked in.
pub fn emit(
    m: &LlamaConfig,
    shapes: &StepShapes,
    source: &KernelSource,
) -> Result<StepProgram, Error> {
    emit_tp(m, shapes, source, 1)
}

/// [`emit`] for one device of `tp` (`m` is that device's model): the kernel at its heads.
pub fn emit_tp(
    m: &LlamaConfig,
    shapes: &StepShapes,
    source: &KernelSource,
    tp: usize,
) -> Result<StepProgram, Error> {
    let kernel = bucket_kernel(m, shapes, source)?;
    let kernel_text = stablehlo::emit_linkable(&kernel)?.text;
    let program = render(m, shapes, tp, KernelForm::of(kernel.schedule()))?;
    let module = link(&program, &kernel_text, KERNEL_SYMBOL)?;
    Ok(StepProgram { module, kernel })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::dtype::Dtype;
    use runtime::engine::EngineConfig;

    fn small_engine() -> EngineConfig {
        EngineConfig {
            max_seqs: 4,
            max_pages: 16,
            page_size: 4,
            max_seq_len: 32,
            max_tokens_per_round: 8,
        }
    }

    fn tiny_config() -> LlamaConfig {
        verify::fixtures::tiny::TinyConfig {
            tie_word_embeddings: true,
            ..Default::default()
        }
        .llama_config()
    }

    #[test]
    fn attention_choice_takes_the_host_kernel_only_where_it_runs() {
        use AttentionChoice::*;
        assert_eq!(Auto.resolve("cpu", Ok(())), Ok(KernelForm::Host));
        assert_eq!(Auto.resolve("cpu", Err("no FFI")), Ok(KernelForm::Portable));
        assert_eq!(Auto.resolve("cuda", Ok(())), Ok(KernelForm::Portable));
        assert_eq!(Portable.resolve("cpu", Ok(())), Ok(KernelForm::Portable));
        let refused = Host.resolve("tpu", Ok(())).unwrap_err();
        assert!(refused.contains("XLA CPU only") && refused.contains("--attention portable"));
        assert!(Host
            .resolve("cpu", Err("no FFI"))
            .unwrap_err()
            .contains("no FFI"));
    }

    #[test]
    fn step_program_links_the_kernel_once_and_calls_it_per_layer() {
        let engine = small_engine();
        for (tokens, dtype) in [(1, Dtype::F32), (8, Dtype::Bf16)] {
            let shapes = StepShapes::new(&engine, tokens, dtype);
            let p = emit(
                &tiny_config(),
                &shapes,
                &KernelSource::Blocks(BlockSizes::uniform(4, 2)),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let c = &p.module.op_counts;
            assert_eq!(c["func.call"], 2, "{c:?}");
            assert_eq!(c["func.func"], 2);
            assert_eq!(c["stablehlo.scatter"], 2);
            assert_eq!(
                c["stablehlo.while"], 3,
                "one kernel body with its three loops"
            );
            assert_eq!(p.kernel.max_num_tokens(), tokens as u32);
            assert_eq!(p.kernel.q_block(), 4.min(tokens as u32));
            assert!(p
                .module
                .generic_text
                .contains("tf.aliasing_output = 1 : i32"));
            assert!(!c.contains_key("stablehlo.all_reduce"), "one device: {c:?}");
        }
    }

    /// Over two devices each layer sums the partial outputs of `wo` and `w_down` across them,
    /// every parameter and result is manual, and the kernel runs at one device's heads.
    #[test]
    fn a_tensor_parallel_step_all_reduces_twice_per_layer() {
        let engine = small_engine();
        let m = tiny_config();
        let shard = crate::step::tp::shard_config(&m, 2).unwrap();
        let shapes = StepShapes::new(&engine, 8, runtime::dtype::Dtype::F32);
        let source = KernelSource::Blocks(BlockSizes::uniform(4, 2));
        let p = emit_tp(&shard, &shapes, &source, 2).unwrap_or_else(|e| panic!("{e}"));
        let c = &p.module.op_counts;
        assert_eq!(c["stablehlo.all_reduce"], 2 * m.num_layers, "{c:?}");
        assert_eq!(p.kernel.geometry().num_q_heads as usize, m.num_q_heads / 2);
        let text = &p.module.generic_text;
        // Inputs, pools, rope, embed, six per layer, final norm (tied: no LM head); the logits
        // and the pools out.
        let (layers, head) = (m.num_layers, usize::from(!m.tie_word_embeddings));
        let params = crate::step::NUM_STEP_INPUTS + layers + 2 + 6 * layers + 1 + head;
        let results = 1 + layers;
        assert_eq!(
            text.matches("{manual}").count(),
            params + results,
            "every parameter and result manual"
        );
    }
}
