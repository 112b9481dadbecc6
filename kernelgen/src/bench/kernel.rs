//! `kernelgen bench kernel`: built kernel artifacts timed against each other on one decode
//! batch, the way a step program calls them: linked into
//! `templates/kernel_chain.stablehlo.mlir.tera`, one call per layer, each layer's output
//! feeding the next, each with a page table of its own.

use super::{pjrt, spread, BenchError};
use crate::artifact::Artifact;
use crate::config::KernelConfig;
use crate::emit::{self, link::link, stablehlo};
use crate::numerics::{upload_batch, PAGE_INDICES_INPUT};
use runtime::dtype::Dtype;
use runtime::pjrt::{Api, Client, CompileOptions};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use verify::{BatchSpec, RaggedBatch};

/// What to time.
#[derive(Clone, Debug)]
pub struct KernelBench {
    /// Artifact directories; ratios are against the first.
    pub artifacts: Vec<PathBuf>,
    /// Decode sequences in the batch (`None`: as many as the artifacts hold).
    pub seqs: Option<usize>,
    /// A mixed prefill+decode batch (half decode rows, the rest prompt chunks and whole
    /// prompts) instead of decode rows alone.
    pub mixed: bool,
    /// KV length of every sequence (`None`: drawn from the seed).
    pub kv_len: Option<usize>,
    /// Kernel calls chained per run (one per model layer).
    pub layers: u32,
    /// Measured rounds, after 3 warm-up rounds.
    pub repeats: u32,
    pub seed: u64,
    pub plugin: PathBuf,
    /// Also time the JAX dense-gather peer (`kernelgen/peers/rpa_dense_jax.py`) on the same
    /// batch, chain and page tables, in the project's JAX venv.
    pub peer_jax: bool,
}

/// The JAX peer's timing, and how many times faster each artifact ran.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRow {
    pub peer: &'static str,
    pub chain_ms: f64,
    pub chain_ms_range: (f64, f64),
    /// The peer's median over each artifact's, in the artifacts' order.
    pub speedups: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub artifact: String,
    pub config: String,
    /// Median milliseconds of one chain of `layers` calls.
    pub chain_ms: f64,
    pub chain_ms_range: (f64, f64),
    /// `chain_ms / layers`, in microseconds.
    pub per_call_us: f64,
    /// `chain_ms` over the first artifact's.
    pub ratio: f64,
    /// The bound (`KernelReport::bound_ms`) over `chain_ms`: for a decode batch, the fraction
    /// of the host's memory bandwidth the chain's K/V reads ran at.
    pub of_bound: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub plugin: String,
    pub layers: u32,
    pub repeats: u32,
    pub seed: u64,
    /// Whether the batch mixed prompt rows with decode rows.
    pub mixed: bool,
    /// (q_len, kv_len) of each sequence of the batch.
    pub seqs: Vec<(usize, usize)>,
    pub rows: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerRow>,
    /// Memory bandwidth measured in the same run ([`super::probes::bandwidth`]), GB/s.
    pub bandwidth_gbs: f64,
    /// Milliseconds the chain's K/V bytes (every sequence's keys and values, each call) take at
    /// that bandwidth.
    pub bandwidth_bound_ms: f64,
    /// Flops of one call (QK and PV over every key each row sees).
    pub flops: u64,
    /// The f32 matmul rate measured in the same run (XLA's dot, 256 x 1024 x 1024), GFLOP/s.
    pub matmul_gflops: f64,
    /// Milliseconds the chain's flops take at that rate.
    pub compute_bound_ms: f64,
    /// The larger of the two bounds: a decode batch is bounded by its K/V reads, a batch of
    /// prompt rows by its arithmetic.
    pub bound_ms: f64,
}

/// Sizes the chain template spells (names follow the template).
#[derive(Serialize)]
struct ChainDims {
    dtype: &'static str,
    t: u32,
    hq: u32,
    d: u32,
    np: u32,
    ps: u32,
    hkv2: u32,
    s: u32,
    s1: u32,
    pps: u32,
    layers: u32,
}

/// The chain program for `cfg`'s call shapes, declaring the kernel as `@rpa_attention`.
fn chain_program(cfg: &KernelConfig, layers: u32) -> Result<String, crate::Error> {
    let g = cfg.geometry();
    let dims = ChainDims {
        dtype: cfg.dtype().mlir(),
        t: cfg.max_num_tokens(),
        hq: g.num_q_heads,
        d: g.head_dim,
        np: cfg.total_pages(),
        ps: cfg.page_size(),
        hkv2: 2 * g.num_kv_heads,
        s: cfg.max_num_seqs(),
        s1: cfg.max_num_seqs() + 1,
        pps: cfg.pages_per_seq(),
        layers,
    };
    let mut ctx = tera::Context::new();
    ctx.insert("p", &dims);
    ctx.insert("header", &emit::header("bench kernel chain"));
    Ok(emit::templates::render(
        "kernel_chain.stablehlo.mlir.tera",
        &ctx,
    )?)
}

/// `page_indices` for call `layer` of the chain: every page id moved by `layer` (mod
/// `total_pages`), so each call reads other pages, as each layer of a step reads its own pool.
fn layer_page_table(page_indices: &[i32], layer: u32, total_pages: u32) -> Vec<i32> {
    page_indices
        .iter()
        .map(|&p| ((p as i64 + layer as i64) % total_pages as i64) as i32)
        .collect()
}

/// The artifacts, opened and checked to share their call shapes.
fn open_artifacts(b: &KernelBench) -> Result<Vec<Artifact>, BenchError> {
    let artifacts = b
        .artifacts
        .iter()
        .map(|d| Artifact::open(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(crate::Error::from)?;
    let first = &artifacts[0].manifest.config;
    for (art, dir) in artifacts.iter().zip(&b.artifacts).skip(1) {
        if art.manifest.config.problem() != first.problem() {
            return Err(BenchError::Options(format!(
                "{} has other call shapes than {} ({} vs {}): build both with the same heads, \
                 head_dim, --page-size, --dtype, --max-tokens, --max-seqs, --pages-per-seq and \
                 --total-pages",
                dir.display(),
                b.artifacts[0].display(),
                art.manifest.config,
                first
            )));
        }
    }
    Ok(artifacts)
}

/// The decode batch every artifact runs, after checking `--seqs` and `--kv-len` against the
/// artifacts' shapes.
fn draw_batch(b: &KernelBench, cfg: &KernelConfig) -> Result<RaggedBatch, BenchError> {
    let problem = cfg.problem();
    let capacity = problem.max_batch_seqs();
    let seqs = b.seqs.unwrap_or(capacity);
    if seqs == 0 || seqs > capacity {
        return Err(BenchError::Options(format!(
            "--seqs {seqs}: the artifacts hold 1 to {capacity} decode sequences (min of max-seqs, \
             max-tokens and total pages); pass --seqs in that range or rebuild with more"
        )));
    }
    if let Some(len) = b.kv_len {
        let max = problem
            .max_kv_len()
            .min(problem.total_pages / seqs * problem.page_size);
        if len == 0 || len > max {
            return Err(BenchError::Options(format!(
                "--kv-len {len}: {seqs} sequences hold 1 to {max} tokens each here (pages-per-seq \
                 x page size, and total pages shared out); pass --kv-len in that range, fewer \
                 --seqs, or rebuild with more pages"
            )));
        }
    }
    let spec = if b.mixed {
        if problem.max_num_tokens <= seqs {
            return Err(BenchError::Options(format!(
                "--mixed: {seqs} sequences fill all {} query rows with decode rows; rebuild with \
                 --max-tokens above --max-seqs (e.g. 256 for 16 sequences) or pass fewer --seqs",
                problem.max_num_tokens
            )));
        }
        BatchSpec {
            num_seqs: Some(seqs),
            decode_fraction: 0.5,
            full_prefill_fraction: 0.25,
            kv_len: b.kv_len,
        }
    } else {
        BatchSpec {
            kv_len: b.kv_len,
            ..BatchSpec::decode_only(seqs)
        }
    };
    Ok(RaggedBatch::generate(
        &problem,
        &spec,
        b.seed,
        cfg.dtype() == Dtype::Bf16,
    ))
}

/// Times every artifact's chain, interleaved round by round.
pub fn run(b: &KernelBench) -> Result<KernelReport, BenchError> {
    if b.artifacts.is_empty() || b.layers == 0 || b.repeats == 0 {
        return Err(BenchError::Options(
            "give at least one artifact, --layers >= 1 and --repeats >= 1".into(),
        ));
    }
    let artifacts = open_artifacts(b)?;
    let first = &artifacts[0].manifest.config;
    let batch = draw_batch(b, first)?;
    let plugin_err = pjrt(format!(
        "loading the PJRT plugin {} (run scripts/setup.sh, or pass --plugin)",
        b.plugin.display()
    ));
    let client = Client::new(Api::load(&b.plugin).map_err(plugin_err)?)
        .map_err(pjrt("creating a PJRT client"))?;
    // The kernel's inputs minus its page table, in the chain's order: q, kv, lens, cu, n; then
    // one page table per call.
    let mut buffers = upload_batch(&client, first, &batch).map_err(pjrt("uploading the batch"))?;
    buffers.remove(PAGE_INDICES_INPUT);
    let tables: Vec<Vec<i32>> = (0..b.layers)
        .map(|layer| layer_page_table(&batch.page_indices, layer, first.total_pages()))
        .collect();
    for table in &tables {
        let dims = [first.max_num_seqs() as i64, first.pages_per_seq() as i64];
        let buffer = client
            .buffer_from_host(table, &dims)
            .map_err(pjrt("uploading a page table"))?;
        buffers.push(buffer);
    }
    let inputs: Vec<_> = buffers.iter().collect();
    let program = chain_program(first, b.layers)?;
    let mut exes = Vec::new();
    for (art, dir) in artifacts.iter().zip(&b.artifacts) {
        let kernel = art
            .read_text(stablehlo::FILE_NAME)
            .map_err(crate::Error::from)?;
        let linked = link(&program, &kernel, "rpa_attention").map_err(crate::Error::from)?;
        let exe = client
            .compile(&linked.generic_text, &CompileOptions::new())
            .map_err(pjrt(format!("compiling {}", dir.display())))?;
        exes.push(exe);
    }
    let warmup = 3;
    let mut times = vec![Vec::with_capacity(b.repeats as usize); exes.len()];
    for round in 0..warmup + b.repeats {
        for (exe, t) in exes.iter().zip(&mut times) {
            let start = Instant::now();
            let out = exe
                .execute_borrowed(&inputs)
                .map_err(pjrt("running a chain"))?;
            out[0]
                .block_until_ready()
                .map_err(pjrt("running a chain"))?;
            if round >= warmup {
                t.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let medians: Vec<_> = times.into_iter().map(spread).collect();
    let base = medians[0].0;
    let bandwidth_gbs = super::probes::bandwidth(&client)?;
    let g = first.geometry();
    let kv_bytes: usize = batch.seq_lens().iter().map(|s| s.1).sum::<usize>()
        * 2
        * (g.num_kv_heads * g.head_dim) as usize
        * first.dtype().bytes() as usize;
    let bandwidth_bound_ms = (kv_bytes as f64 * b.layers as f64) / (bandwidth_gbs * 1e9) * 1e3;
    let flops = attention_flops(first, &batch.seq_lens());
    let matmul_gflops = super::probes::matmul(&client, 256, 1024, 1024)?;
    let compute_bound_ms = flops as f64 * b.layers as f64 / (matmul_gflops * 1e9) * 1e3;
    let bound_ms = bandwidth_bound_ms.max(compute_bound_ms);
    let rows = medians
        .iter()
        .zip(artifacts.iter().zip(&b.artifacts))
        .map(|(&(ms, range), (art, dir))| Row {
            artifact: dir.display().to_string(),
            config: art.manifest.config.to_string(),
            chain_ms: ms,
            chain_ms_range: range,
            per_call_us: ms * 1e3 / b.layers as f64,
            ratio: ms / base,
            of_bound: bound_ms / ms,
        })
        .collect();
    let peer = if b.peer_jax {
        let (ms, range) = jax_peer(b, first, &batch, &tables)?;
        Some(PeerRow {
            peer: "jax dense-gather",
            chain_ms: ms,
            chain_ms_range: range,
            speedups: medians.iter().map(|m| ms / m.0).collect(),
        })
    } else {
        None
    };
    Ok(KernelReport {
        plugin: b.plugin.display().to_string(),
        layers: b.layers,
        repeats: b.repeats,
        seed: b.seed,
        mixed: b.mixed,
        seqs: batch.seq_lens(),
        rows,
        peer,
        bandwidth_gbs,
        bandwidth_bound_ms,
        flops,
        matmul_gflops,
        compute_bound_ms,
        bound_ms,
    })
}

/// Multiply-adds of one call on a batch of `(q_len, kv_len)` sequences, as flops: each query
/// row and head scores every key it sees (causal, within the sliding window) and weighs its
/// value, 2 x head_dim each.
fn attention_flops(cfg: &KernelConfig, seqs: &[(usize, usize)]) -> u64 {
    let g = cfg.geometry();
    let window = cfg.sliding_window().map(|w| w as usize);
    let keys: u64 = seqs
        .iter()
        .flat_map(|&(q_len, kv_len)| {
            (0..q_len).map(move |r| {
                let seen = kv_len - q_len + r + 1;
                window.map_or(seen, |w| seen.min(w)) as u64
            })
        })
        .sum();
    keys * 4 * g.head_dim as u64 * g.num_q_heads as u64
}

/// The JAX peer script, written next to the project's JAX venv when first used.
const JAX_PEER: &str = include_str!("../../peers/rpa_dense_jax.py");

/// Runs the JAX peer on `batch` with the chain's page tables; its median and range in ms.
fn jax_peer(
    b: &KernelBench,
    cfg: &KernelConfig,
    batch: &RaggedBatch,
    tables: &[Vec<i32>],
) -> Result<(f64, (f64, f64)), BenchError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let peer_err = |e: String| BenchError::Peer(e);
    let python = crate::tpu::oracle::ensure_venv(&mut |m| eprintln!("{m}"))
        .map_err(|e| peer_err(format!("{e} (the venv scripts/setup.sh makes)")))?;
    let script = runtime::cache::cache_dir()
        .join("venv")
        .join("rpa_dense_jax.py");
    if std::fs::read_to_string(&script).ok().as_deref() != Some(JAX_PEER) {
        std::fs::write(&script, JAX_PEER).map_err(|e| peer_err(e.to_string()))?;
    }
    let g = cfg.geometry();
    let (s, pps) = (cfg.max_num_seqs() as usize, cfg.pages_per_seq() as usize);
    let request = serde_json::json!({
        "q_shape": [cfg.max_num_tokens(), g.num_q_heads, g.head_dim],
        "kv_shape": [cfg.total_pages(), cfg.page_size(), 2 * g.num_kv_heads, g.head_dim],
        "dtype": cfg.dtype().numpy(),
        "kv_lens": batch.kv_lens,
        "cu_q_lens": batch.cu_q_lens,
        "tables": tables.iter().map(|t| t.chunks(pps).take(s).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "sm_scale": cfg.sm_scale(),
        "max_q": batch.seq_lens().iter().map(|s| s.0).max().unwrap_or(1).max(1),
        "warmup": 3,
        "repeats": b.repeats,
    });
    let mut child = Command::new(&python)
        .arg(&script)
        .env("JAX_PLATFORMS", "cpu")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| peer_err(format!("cannot start {}: {e}", python.display())))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(request.to_string().as_bytes())
        .map_err(|e| peer_err(e.to_string()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| peer_err(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("no message");
        return Err(peer_err(format!("the script failed: {last}")));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| peer_err(format!("unreadable answer: {e}")))?;
    let num = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| peer_err(format!("answer has no {k}")))
    };
    Ok((num("median_ms")?, (num("min_ms")?, num("max_ms")?)))
}
