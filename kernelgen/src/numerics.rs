//! Runs a ragged paged attention kernel through PJRT and compares it with the f64 reference.
//!
//! `kernelgen verify` and the proptest suite both go through [`KernelRunner`], so what the CLI
//! reports is what the tests assert.

use crate::config::{Dtype, KernelConfig};
use half::bf16;
use runtime::pjrt::{Buffer, Client, CompileOptions, Executable, PjrtError};
use std::time::{Duration, Instant};
use verify::{BatchSpec, ErrorStats, Poison, RaggedBatch};

/// Tolerance on the normwise relative error (max abs err / max |reference|).
///
/// f32 inputs: the kernel accumulates in f32, so errors are a few ulps of f32 times the reduction
/// depth. bf16 inputs: the reference is computed on the same bf16-rounded inputs, so the budget
/// covers the kernel's bf16 output rounding (2^-9 relative) plus f32 accumulation.
pub fn tolerance(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F32 => 1e-5,
        Dtype::Bf16 => 2e-2,
    }
}

/// A compiled kernel and the client it runs on.
pub struct KernelRunner {
    client: Client,
    exe: Executable,
    cfg: KernelConfig,
    pub compile_time: Duration,
}

/// One batch's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BatchOutcome {
    pub seed: u64,
    /// What filled the slots no sequence owns (`None`: the generator's finite garbage).
    pub poison: Option<Poison>,
    /// (q_len, kv_len) per sequence.
    pub seqs: Vec<(usize, usize)>,
    pub stats: ErrorStats,
    /// Padding rows (past cu_q_lens[num_seqs]) were all finite.
    pub padding_finite: bool,
    /// A second run of the same inputs gave bit-identical output, padding included.
    pub deterministic: bool,
    pub run_time_ms: f64,
}

impl BatchOutcome {
    pub fn passed(&self, tol: f64) -> bool {
        self.stats.within(tol) && self.padding_finite && self.deterministic
    }
}

fn upload_values(
    client: &Client,
    dtype: Dtype,
    data: &[f32],
    dims: &[i64],
) -> Result<Buffer, PjrtError> {
    match dtype {
        Dtype::F32 => client.buffer_from_host(data, dims),
        Dtype::Bf16 => {
            let v: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
            client.buffer_from_host(&v, dims)
        }
    }
}

/// Where `page_indices` sits among [`upload_batch`]'s buffers.
pub const PAGE_INDICES_INPUT: usize = 3;

/// The kernel's six inputs for `batch` on `client`, in call order: q, kv_pages, kv_lens,
/// page_indices, cu_q_lens, num_seqs (q and kv_pages in `cfg`'s dtype).
pub fn upload_batch(
    client: &Client,
    cfg: &KernelConfig,
    batch: &RaggedBatch,
) -> Result<Vec<Buffer>, PjrtError> {
    let g = cfg.geometry();
    let (t, s) = (cfg.max_num_tokens() as i64, cfg.max_num_seqs() as i64);
    let q_dims = [t, g.num_q_heads as i64, g.head_dim as i64];
    let kv_dims = [
        cfg.total_pages() as i64,
        cfg.page_size() as i64,
        2 * g.num_kv_heads as i64,
        g.head_dim as i64,
    ];
    Ok(vec![
        upload_values(client, cfg.dtype(), &batch.q, &q_dims)?,
        upload_values(client, cfg.dtype(), &batch.kv_pages, &kv_dims)?,
        client.buffer_from_host(&batch.kv_lens, &[s])?,
        client.buffer_from_host(&batch.page_indices, &[s, cfg.pages_per_seq() as i64])?,
        client.buffer_from_host(&batch.cu_q_lens, &[s + 1])?,
        client.buffer_from_host(&[batch.num_seqs], &[1])?,
    ])
}

impl KernelRunner {
    /// Compiles `mlir` (the artifact's StableHLO) for `cfg` on `client`.
    pub fn compile(
        client: Client,
        cfg: &KernelConfig,
        mlir: &str,
    ) -> Result<KernelRunner, PjrtError> {
        let start = Instant::now();
        let exe = client.compile(mlir, &CompileOptions::new())?;
        Ok(KernelRunner {
            client,
            exe,
            cfg: cfg.clone(),
            compile_time: start.elapsed(),
        })
    }

    /// Runs the kernel on `batch`; returns the output as f32 (bf16 outputs widened exactly).
    pub fn run(&self, batch: &RaggedBatch) -> Result<Vec<f32>, PjrtError> {
        let c = &self.cfg;
        let inputs = upload_batch(&self.client, c, batch)?;
        let out = self
            .exe
            .execute_borrowed(&inputs.iter().collect::<Vec<_>>())?;
        let out = out
            .into_iter()
            .next()
            .ok_or_else(|| PjrtError::InvalidArgument("the kernel returned no output".into()))?;
        match c.dtype() {
            Dtype::F32 => out.to_host::<f32>(),
            Dtype::Bf16 => Ok(out.to_host::<bf16>()?.into_iter().map(f32::from).collect()),
        }
    }

    /// Draws the batch for `seed`, fills what no sequence owns with `poison` (see
    /// [`RaggedBatch::poison`]), runs it twice, and compares with the reference on the clean
    /// batch: a kernel that reads, or multiplies by zero, a slot it must ignore fails.
    pub fn check_batch(
        &self,
        spec: &BatchSpec,
        seed: u64,
        poison: Option<Poison>,
    ) -> Result<BatchOutcome, PjrtError> {
        let problem = self.cfg.problem();
        let clean = RaggedBatch::generate(&problem, spec, seed, self.cfg.dtype() == Dtype::Bf16);
        let mut batch = clean.clone();
        if let Some(poison) = poison {
            batch.poison(&problem, poison);
        }
        let start = Instant::now();
        let out = self.run(&batch)?;
        let run_time_ms = start.elapsed().as_secs_f64() * 1e3;
        let again = self.run(&batch)?;
        let expected = verify::reference(&problem, &clean);
        let row = problem.num_q_heads * problem.head_dim;
        let valid = verify::valid_rows(&batch) * row;
        Ok(BatchOutcome {
            seed,
            poison,
            seqs: batch.seq_lens(),
            stats: ErrorStats::measure(&out, &expected, valid),
            padding_finite: out[valid..].iter().all(|x| x.is_finite()),
            deterministic: out
                .iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            run_time_ms,
        })
    }

    /// Seconds of `runs` calls on the batch `spec` draws for `seed` (inputs uploaded once),
    /// after `warmup` untimed calls.
    pub fn time(
        &self,
        spec: &BatchSpec,
        seed: u64,
        warmup: usize,
        runs: usize,
    ) -> Result<Vec<f64>, PjrtError> {
        let problem = self.cfg.problem();
        let batch = RaggedBatch::generate(&problem, spec, seed, self.cfg.dtype() == Dtype::Bf16);
        let inputs = upload_batch(&self.client, &self.cfg, &batch)?;
        let args: Vec<&Buffer> = inputs.iter().collect();
        crate::bench::run_times(&self.exe, &args, warmup, runs)
    }

    pub fn config(&self) -> &KernelConfig {
        &self.cfg
    }
}

/// What `verify`'s batch `i` fills the unowned slots with: clean, NaN, +Inf, -Inf in turn.
pub fn poison_of(i: u64) -> Option<Poison> {
    match i % 4 {
        0 => None,
        k => Some(Poison::ALL[k as usize - 1]),
    }
}

/// The batch mixes `verify` cycles through: mixed, decode only, and a single whole prompt.
pub fn batch_specs(cfg: &KernelConfig) -> Vec<BatchSpec> {
    vec![
        BatchSpec::default(),
        BatchSpec::decode_only(cfg.max_num_seqs() as usize),
        BatchSpec {
            num_seqs: Some(1),
            decode_fraction: 0.0,
            full_prefill_fraction: 1.0,
            kv_len: None,
        },
    ]
}
