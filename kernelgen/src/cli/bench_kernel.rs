//! `kernelgen bench kernel`: built kernel artifacts timed against each other on one batch, the
//! way a step program calls them (one call per layer, each layer's output feeding the next).

use super::bench::spread;
use super::exit;
use super::generate::PluginArg;
use anyhow::{bail, Context};
use clap::Args;
use kernelgen::artifact::Artifact;
use kernelgen::config::KernelConfig;
use kernelgen::emit::link::link;
use kernelgen::numerics::{upload_batch, PAGE_INDICES_INPUT};
use runtime::pjrt::{Api, Client, CompileOptions};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use verify::{BatchSpec, RaggedBatch};

/// Time kernel artifacts against each other (StableHLO, on a PJRT plugin)
#[derive(Args, Debug)]
#[command(after_help = "\
Each artifact's StableHLO kernel is linked --layers times in a chain (call i's output is call i+1's \
q; each call has its own page table, so it gathers other pages, and cannot start gathering before the \
previous call is done), as a model's step calls it once per layer, and the chains run interleaved on one decode batch drawn from --seed: --seqs sequences of one new token each, KV \
lengths drawn up to the artifact's capacity (or all --kv-len). Every figure is the median of --repeats rounds with \
its min-max, and the ratio is each artifact's median over the first artifact's, measured in the \
same run. The artifacts must share their call shapes (heads, head_dim, page size, dtype, \
max-tokens, max-seqs, pages per sequence, total pages), so that they run the same batch.

Example (two block sizes of one call shape):
  kernelgen build --q 1 --kv 4 --preset smollm2-135m --page-size 16 --dtype f32 --max-tokens 1 \\
                  --max-seqs 1 --pages-per-seq 16 --total-pages 17 --schedule batched --out /tmp/kv4
  kernelgen build --q 1 --kv 2 ... --out /tmp/kv2
  kernelgen bench kernel /tmp/kv4 /tmp/kv2 --kv-len 48")]
pub struct KernelBenchArgs {
    /// Artifact directories from `kernelgen build`; ratios are against the first
    #[arg(required = true, num_args = 1..)]
    pub artifacts: Vec<PathBuf>,
    /// Decode sequences in the batch [default: as many as the artifacts hold]
    #[arg(long)]
    pub seqs: Option<usize>,
    /// KV length of every sequence (the new token included) [default: drawn from --seed, up to
    /// pages-per-seq x page size]
    #[arg(long)]
    pub kv_len: Option<usize>,
    /// Kernel calls chained per run (one per model layer)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub layers: u32,
    /// Measured rounds (after 3 warm-up rounds); each round runs every artifact once
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub repeats: u32,
    /// Seed of the batch
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub plugin: PluginArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    artifact: String,
    config: String,
    /// Median milliseconds of one chain of `layers` calls.
    chain_ms: f64,
    chain_ms_range: (f64, f64),
    /// `chain_ms / layers`, in microseconds.
    per_call_us: f64,
    /// `chain_ms` over the first artifact's.
    ratio: f64,
}

#[derive(Serialize)]
struct Report {
    plugin: String,
    layers: u32,
    repeats: u32,
    seed: u64,
    /// (q_len, kv_len) of each sequence of the batch.
    seqs: Vec<(usize, usize)>,
    rows: Vec<Row>,
}

/// `tensor<AxBx..xT>`
fn tensor(dims: &[u32], elem: &str) -> String {
    let d: Vec<String> = dims.iter().map(u32::to_string).collect();
    format!("tensor<{}x{elem}>", d.join("x"))
}

/// A module declaring the kernel as `@rpa_attention` and calling it `layers` times in a chain.
///
/// Two things keep the chain honest to a step, where each layer reads its own pool once the
/// previous layer is done: call `i` takes page table `i` (`%pages<i>`, an input of its own), so
/// XLA cannot gather the pages once for all calls; and that table gets `0 * q_{i-1}[0, 0, 0]`
/// added, so no call's page gather can be scheduled before the previous call finishes (XLA does
/// not fold a float multiply by zero).
fn chain_program(cfg: &KernelConfig, layers: u32) -> String {
    let g = cfg.geometry();
    let (t, s) = (cfg.max_num_tokens(), cfg.max_num_seqs());
    let dt = cfg.dtype().mlir();
    let q = tensor(&[t, g.num_q_heads, g.head_dim], dt);
    let kv = tensor(
        &[
            cfg.total_pages(),
            cfg.page_size(),
            2 * g.num_kv_heads,
            g.head_dim,
        ],
        dt,
    );
    let [lens, pages, cu, n] = [
        tensor(&[s], "i32"),
        tensor(&[s, cfg.pages_per_seq()], "i32"),
        tensor(&[s + 1], "i32"),
        tensor(&[1], "i32"),
    ];
    let args = format!("{q}, {kv}, {lens}, {pages}, {cu}, {n}");
    let tables: Vec<String> = (1..=layers)
        .map(|i| format!(", %pages{i}: {pages}"))
        .collect();
    let mut text = format!(
        "module {{\n  func.func private @rpa_attention({args}) -> {q}\n  \
         func.func @main(%q0: {q}, %kv: {kv}, %lens: {lens}, %cu: {cu}, %n: {n}{}) -> {q} {{\n    \
         %zero = \"stablehlo.constant\"() {{value = dense<0.0> : tensor<f32>}} : () -> tensor<f32>\n",
        tables.concat()
    );
    let one = "array<i64: 1, 1, 1>";
    for i in 1..=layers {
        let p = i - 1;
        text.push_str(&format!(
            "    %x{i} = \"stablehlo.slice\"(%q{p}) {{start_indices = array<i64: 0, 0, 0>, limit_indices = {one}, strides = {one}}} : ({q}) -> tensor<1x1x1x{dt}>\n    \
             %xs{i} = \"stablehlo.reshape\"(%x{i}) : (tensor<1x1x1x{dt}>) -> tensor<{dt}>\n    \
             %xf{i} = \"stablehlo.convert\"(%xs{i}) : (tensor<{dt}>) -> tensor<f32>\n    \
             %x0{i} = \"stablehlo.multiply\"(%xf{i}, %zero) : (tensor<f32>, tensor<f32>) -> tensor<f32>\n    \
             %xi{i} = \"stablehlo.convert\"(%x0{i}) : (tensor<f32>) -> tensor<i32>\n    \
             %xb{i} = \"stablehlo.broadcast_in_dim\"(%xi{i}) {{broadcast_dimensions = array<i64>}} : (tensor<i32>) -> {pages}\n    \
             %pt{i} = \"stablehlo.add\"(%pages{i}, %xb{i}) : ({pages}, {pages}) -> {pages}\n    \
             %q{i} = func.call @rpa_attention(%q{p}, %kv, %lens, %pt{i}, %cu, %n) : ({args}) -> {q}\n"
        ));
    }
    text.push_str(&format!("    return %q{layers} : {q}\n  }}\n}}\n"));
    text
}

/// `page_indices` for call `layer` of the chain: every page id moved by `layer` (mod
/// `total_pages`), so each call reads other pages, as each layer of a step reads its own pool.
fn layer_page_table(page_indices: &[i32], layer: u32, total_pages: u32) -> Vec<i32> {
    page_indices
        .iter()
        .map(|&p| ((p as i64 + layer as i64) % total_pages as i64) as i32)
        .collect()
}

pub fn run(a: KernelBenchArgs) -> anyhow::Result<i32> {
    let artifacts = a
        .artifacts
        .iter()
        .map(|d| Artifact::open(d).with_context(|| d.display().to_string()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = &artifacts[0].manifest.config;
    for (art, dir) in artifacts.iter().zip(&a.artifacts).skip(1) {
        if art.manifest.config.problem() != first.problem() {
            bail!(
                "{} has other call shapes than {} ({} vs {}): build both with the same heads, \
                 head_dim, --page-size, --dtype, --max-tokens, --max-seqs, --pages-per-seq and \
                 --total-pages",
                dir.display(),
                a.artifacts[0].display(),
                art.manifest.config,
                first
            );
        }
    }
    let problem = first.problem();
    let capacity = problem.max_batch_seqs();
    let seqs = a.seqs.unwrap_or(capacity);
    if seqs == 0 || seqs > capacity {
        bail!(
            "--seqs {seqs}: the artifacts hold 1 to {capacity} decode sequences (min of max-seqs, \
             max-tokens and total pages); pass --seqs in that range or rebuild with more"
        );
    }
    if let Some(len) = a.kv_len {
        let max = problem
            .max_kv_len()
            .min(problem.total_pages / seqs * problem.page_size);
        if len == 0 || len > max {
            bail!(
                "--kv-len {len}: {seqs} sequences hold 1 to {max} tokens each here (pages-per-seq \
                 x page size, and total pages shared out); pass --kv-len in that range, fewer \
                 --seqs, or rebuild with more pages"
            );
        }
    }
    let spec = BatchSpec {
        kv_len: a.kv_len,
        ..BatchSpec::decode_only(seqs)
    };
    let batch = RaggedBatch::generate(
        &problem,
        &spec,
        a.seed,
        first.dtype() == kernelgen::config::Dtype::Bf16,
    );

    let plugin = a.plugin.path();
    let client = Client::new(Api::load(&plugin).with_context(|| {
        format!(
            "loading the PJRT plugin {} (run scripts/setup.sh, or pass --plugin)",
            plugin.display()
        )
    })?)?;
    // The kernel's inputs minus its page table, in the chain's order: q, kv, lens, cu, n; then
    // one page table per call.
    let mut buffers = upload_batch(&client, first, &batch)?;
    buffers.remove(PAGE_INDICES_INPUT);
    for layer in 0..a.layers {
        let table = layer_page_table(&batch.page_indices, layer, first.total_pages());
        buffers.push(client.buffer_from_host(
            &table,
            &[first.max_num_seqs() as i64, first.pages_per_seq() as i64],
        )?);
    }
    let inputs: Vec<_> = buffers.iter().collect();
    let program = chain_program(first, a.layers);
    let mut exes = Vec::new();
    for (art, dir) in artifacts.iter().zip(&a.artifacts) {
        let kernel = art.read_text(kernelgen::emit::stablehlo::FILE_NAME)?;
        let linked = link(&program, &kernel, "rpa_attention")
            .with_context(|| format!("linking {}", dir.display()))?;
        exes.push(
            client
                .compile(&linked.generic_text, &CompileOptions::new())
                .with_context(|| format!("compiling {}", dir.display()))?,
        );
    }

    let warmup = 3;
    let mut times = vec![Vec::with_capacity(a.repeats as usize); exes.len()];
    for round in 0..warmup + a.repeats {
        for (exe, t) in exes.iter().zip(&mut times) {
            let start = Instant::now();
            let out = exe.execute_borrowed(&inputs)?;
            out[0].block_until_ready()?;
            if round >= warmup {
                t.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let medians: Vec<_> = times.into_iter().map(spread).collect();
    let base = medians[0].0;
    let rows: Vec<Row> = medians
        .iter()
        .zip(artifacts.iter().zip(&a.artifacts))
        .map(|(&(ms, range), (art, dir))| Row {
            artifact: dir.display().to_string(),
            config: art.manifest.config.to_string(),
            chain_ms: ms,
            chain_ms_range: range,
            per_call_us: ms * 1e3 / a.layers as f64,
            ratio: ms / base,
        })
        .collect();
    let report = Report {
        plugin: plugin.display().to_string(),
        layers: a.layers,
        repeats: a.repeats,
        seed: a.seed,
        seqs: batch.seq_lens(),
        rows,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(exit::OK);
    }
    let max_kv = report.seqs.iter().map(|s| s.1).max().unwrap_or(0);
    println!("plugin {}", report.plugin);
    println!(
        "{} chained calls per run on one decode batch ({} seqs, kv_len <= {max_kv}, seed {}); median of {} rounds",
        a.layers,
        report.seqs.len(),
        a.seed,
        a.repeats
    );
    println!(
        "{:<28} {:>10} {:>18} {:>10} {:>7}",
        "artifact", "ms/run", "min-max", "us/call", "ratio"
    );
    for r in &report.rows {
        println!(
            "{:<28} {:>10.3} {:>18} {:>10.1} {:>7.2}",
            r.artifact,
            r.chain_ms,
            format!("{:.3}-{:.3}", r.chain_ms_range.0, r.chain_ms_range.1),
            r.per_call_us,
            r.ratio
        );
    }
    for r in &report.rows {
        println!("  {}: {}", r.artifact, r.config);
    }
    Ok(exit::OK)
}
