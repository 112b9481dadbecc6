//! The emitted step program (model + linked RPA kernel, run by PJRT) computes the same logits as
//! the host reference (verify::HostExecutor: the same model in plain Rust f32 over a paged KV
//! cache), step after step, on random mixed batches: chunked prefill, decode rows, sequences
//! arriving mid-stream, shuffled pages, padding tokens, several buckets.

use e2e::{client, rounded_to_bf16, serving_client, BatchScript};
use kernelgen::step::program::{BlockSizes, KernelForm};
use kernelgen::step::{default_buckets, DeviceExecutor};
use kernelgen::step::{KernelSource, StepShapes, StepSource};
use runtime::dtype::Dtype;
use runtime::engine::{EngineConfig, StepBatch, StepExecutor};
use runtime::model::safetensors::load_hf_dir;
use runtime::model::Model;
use runtime::pjrt::{Client, CompileOptions};
use std::sync::Arc;
use verify::fixtures::tiny::{write_tiny_llama, TinyConfig};
use verify::host_executor::HostExecutor;

fn tiny(seed: u64, tied: bool) -> Model {
    tiny_with(
        seed,
        &TinyConfig {
            tie_word_embeddings: tied,
            ..TinyConfig::default()
        },
    )
}

fn tiny_with(seed: u64, cfg: &TinyConfig) -> Model {
    let tied = cfg.tie_word_embeddings;
    let dir = std::env::temp_dir().join(format!("kg-step-{}-{seed}-{tied}", std::process::id()));
    write_tiny_llama(&dir, seed, cfg).unwrap();
    let m = load_hf_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    m
}

fn run(client: Client, seed: u64, tied: bool, kv: Dtype, blocks: (u32, u32), tol: f32) {
    let model = Arc::new(tiny(seed, tied));
    run_model(client, model, seed, kv, portable(blocks), tol, 1);
}

/// Emitted kernels in the portable StableHLO form.
fn portable(blocks: (u32, u32)) -> BlockSizes {
    BlockSizes::uniform(blocks.0, blocks.1)
}

/// Emitted kernels in the host form: the native attention kernel, and the native matmul for
/// buckets of up to 32 rows (every bucket here).
fn host(blocks: (u32, u32)) -> BlockSizes {
    BlockSizes {
        form: KernelForm::Host,
        ..portable(blocks)
    }
}

/// The engine the step tests serve with: 4 sequences, 32 pages of 4 slots.
fn small_engine() -> EngineConfig {
    EngineConfig {
        max_seqs: 4,
        max_pages: 32,
        page_size: 4,
        max_seq_len: 40,
        max_tokens_per_round: 16,
    }
}

/// [`run`] on `model`, its step program over `tp` devices of `client`.
fn run_model(
    client: Client,
    model: Arc<Model>,
    seed: u64,
    kv: Dtype,
    blocks: BlockSizes,
    tol: f32,
    tp: usize,
) {
    let engine = small_engine();
    let source = StepSource {
        model: model.config.clone(),
        kernel: KernelSource::Blocks(blocks),
        tp,
        weights: Dtype::F32,
    };
    let mut device =
        DeviceExecutor::new(client, &*model, &engine, kv, default_buckets(16), source).unwrap();
    let mut host = HostExecutor::from_engine_config(model.clone(), &engine);
    let mut script = BatchScript::new(
        seed,
        engine.max_pages,
        engine.page_size,
        model.config.vocab_size,
    );
    for len in [13, 7, 30] {
        script.add_seq(len);
    }
    let (mut steps, mut mixed) = (0, 0);
    while let Some(batch) = script.next(16) {
        let decode_rows = batch
            .seqs
            .iter()
            .filter(|q| q.q_len == 1 && q.kv_len > 1)
            .count();
        mixed += usize::from(decode_rows > 0 && decode_rows < batch.seqs.len());
        if steps == 2 {
            script.add_seq(11); // arrives while the others decode
        }
        let want = host.step(&batch).unwrap();
        let got = device.step(&batch).unwrap();
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        assert!(got.iter().all(|x| x.is_finite()));
        assert!(
            err <= tol * scale,
            "step {steps} ({} tokens): max abs err {err} > {tol} x {scale}",
            batch.token_ids.len()
        );
        if device.source().split_head() {
            greedy_rows_keep_the_exact_argmax(&mut device, &batch, &got);
        }
        steps += 1;
    }
    assert!(
        mixed >= 1,
        "no step mixed prefill chunks with decode rows ({steps} steps)"
    );
    assert!(
        device.times.compile.len() >= 2,
        "several buckets were exercised: {:?}",
        device.times.compile
    );
}

/// With a split LM head, the same step with every row greedy (`argmax_only`) picks each row's
/// exact argmax (the lowest index of the largest logit) and returns that logit bit for bit; the
/// other logits may be estimates, all below it.
fn greedy_rows_keep_the_exact_argmax(
    device: &mut DeviceExecutor,
    batch: &StepBatch,
    exact: &[f32],
) {
    let greedy = device
        .step(&StepBatch {
            argmax_only: true,
            ..batch.clone()
        })
        .unwrap();
    let v = device.vocab_size();
    for (row, (e, g)) in exact.chunks(v).zip(greedy.chunks(v)).enumerate() {
        let best = |l: &[f32]| (0..l.len()).fold(0, |b, j| if l[j] > l[b] { j } else { b });
        let j = best(e);
        assert_eq!(best(g), j, "row {row}");
        assert_eq!(g[j].to_bits(), e[j].to_bits(), "row {row}");
        assert!(g
            .iter()
            .enumerate()
            .all(|(i, x)| i == j || x.to_bits() == e[i].to_bits() || *x < e[j]));
    }
}

#[test]
fn step_program_matches_host_reference_f32() {
    let seed = rand::random::<u64>() % 1000;
    eprintln!("seed {seed}");
    run(client(), seed, false, Dtype::F32, (4, 2), 1e-4);
    run(client(), seed + 1, true, Dtype::F32, (1, 1), 1e-4);
}

#[test]
fn step_program_with_bf16_kv_pool_stays_close() {
    let seed = rand::random::<u64>() % 1000;
    eprintln!("seed {seed}");
    // K/V rounded to bf16 in the pool: logits move by about 2^-8 relative.
    run(client(), seed, true, Dtype::Bf16, (8, 3), 3e-2);
}

/// The same on the serving plugin (newer XLA, PJRT API 0.115): forward compatibility of the
/// bindings and of the emitted program.
#[test]
fn step_program_matches_host_reference_on_the_serving_plugin() {
    let seed = rand::random::<u64>() % 1000;
    eprintln!("seed {seed}");
    run(serving_client(), seed, false, Dtype::F32, (4, 2), 1e-4);
    run(serving_client(), seed + 2, true, Dtype::Bf16, (8, 3), 3e-2);
}

/// The host form (the native attention kernel and the native matmul as XLA FFI custom calls)
/// gives the host reference's logits within the portable form's tolerances, tied and untied,
/// f32 and bf16 KV.
#[test]
fn step_program_with_host_kernels_matches_host_reference() {
    let seed = rand::random::<u64>() % 1000;
    eprintln!("seed {seed}");
    for (tied, kv, tol) in [(false, Dtype::F32, 1e-4), (true, Dtype::Bf16, 3e-2)] {
        let model = Arc::new(tiny(seed, tied));
        run_model(serving_client(), model, seed, kv, host((4, 2)), tol, 1);
    }
}

/// The host kernels' timeline takes a host-form step program apart: every decode step run
/// while recording is found with its attention, (on a CPU where the host matmul is vectorized)
/// its projections and (with a split head) its LM head inside it, and its parts sum to the
/// step. (Other tests' programs may run meanwhile and add spans; the checks hold with them.)
#[test]
fn the_kernel_timeline_takes_host_decode_steps_apart() {
    let model = Arc::new(tiny(7, false));
    let engine = small_engine();
    let source = StepSource {
        model: model.config.clone(),
        kernel: KernelSource::Blocks(host((4, 2))),
        tp: 1,
        weights: Dtype::F32,
    };
    let mut device = DeviceExecutor::new(
        serving_client(),
        &*model,
        &engine,
        Dtype::F32,
        default_buckets(16),
        source,
    )
    .unwrap();
    let vocab = model.config.vocab_size;
    let mut script = BatchScript::new(7, engine.max_pages, engine.page_size, vocab);
    script.add_seq(9);
    script.add_seq(13);
    let mut batches = Vec::new();
    while let Some(batch) = script.next(16) {
        batches.push(batch);
    }
    // Compile every bucket first: the recorded steps then time runs alone.
    for batch in &batches {
        device.step(batch).unwrap();
    }
    let decode_steps = batches
        .iter()
        .filter(|b| b.seqs.iter().all(|q| q.q_len == 1))
        .count();
    assert!(decode_steps >= 3, "{decode_steps} decode steps");
    runtime::kernels::timeline::start();
    for batch in &batches {
        device.step(batch).unwrap();
    }
    let spans = runtime::kernels::timeline::stop();
    let got = kernelgen::bench::timeline::take_apart(&spans).expect("decode steps recorded");
    assert!(got.steps >= decode_steps, "{got:?}");
    assert!(got.attention_ms > 0.0, "{got:?}");
    // the projections call the host matmul where it is vectorized; elsewhere XLA's dot
    // (`kernelgen::step::program::host_matmul`)
    assert_eq!(
        got.projections_ms > 0.0,
        runtime::kernels::matmul::vectorized(),
        "{got:?}"
    );
    assert_eq!(
        got.lm_head_ms > 0.0,
        device.source().split_head(),
        "{got:?}"
    );
    assert!(got.start_ms > 0.0 && got.finish_ms > 0.0, "{got:?}");
    assert!(
        (got.parts_ms() - got.step_ms).abs() < 1e-6 * got.step_ms.max(1.0),
        "{got:?}"
    );
    assert!(
        runtime::kernels::timeline::stop().is_empty(),
        "recording stopped"
    );
}

/// Tensor parallelism: the step program of an 8 q / 4 KV head model split over 2 and 4 devices
/// (KV heads split) and 8 (each KV head replicated twice), tied and untied, gives the host
/// reference's logits on the same random ragged batches, within the one-device tolerance: the
/// all-reduces only reorder f32 sums.
#[test]
fn step_program_under_tensor_parallelism_matches_host_reference() {
    let seed = rand::random::<u64>() % 1000;
    eprintln!("seed {seed}");
    for (tp, tied) in [(2, false), (4, true), (8, false)] {
        let cfg = TinyConfig {
            num_q_heads: 8,
            num_kv_heads: 4,
            head_dim: 8,
            tie_word_embeddings: tied,
            ..TinyConfig::default()
        };
        let model = Arc::new(tiny_with(seed + tp as u64, &cfg));
        let client = e2e::serving_client_with_devices(tp);
        run_model(client, model, seed, Dtype::F32, portable((4, 2)), 1e-4, tp);
    }
}

/// `x W^T` for a row-major `[out, in]` matrix, in f64.
fn matvec(x: &[f64], w: &runtime::model::Matrix) -> Vec<f64> {
    (0..w.rows)
        .map(|o| x.iter().zip(w.row(o)).map(|(&a, &b)| a * b as f64).sum())
        .collect()
}

/// `x / sqrt(mean(x^2) + eps) * w`, in f64.
fn rms_norm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let r = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
    x.iter().zip(w).map(|(v, &w)| v / r * w as f64).collect()
}

/// The profile program `kernelgen bench decode` times as "the step's matmuls" really runs the
/// model's projections and RMS norms in order on the executor's weight buffers: its logits equal an f64 host
/// chain over the model's weights (so the packing and the parameter order are right too), tied
/// and untied, with XLA's dot and with the native host matmul, on f32 weights and on bf16 ones (the
/// reference then reads the matrices rounded to bf16, as the device holds them).
#[test]
fn matmul_chain_profile_program_runs_the_models_projections() {
    let seed = rand::random::<u64>() % 1000;
    eprintln!("seed {seed}");
    for (tied, form, weights) in [
        (false, KernelForm::Portable, Dtype::F32),
        (true, KernelForm::Portable, Dtype::F32),
        (false, KernelForm::Host, Dtype::F32),
        (true, KernelForm::Host, Dtype::F32),
        (true, KernelForm::Portable, Dtype::Bf16),
        (false, KernelForm::Host, Dtype::Bf16),
    ] {
        let model = Arc::new(tiny(seed, tied));
        // bf16 weights: the reference reads the matrices the device holds, rounded.
        let reference = match weights {
            Dtype::F32 => (*model).clone(),
            Dtype::Bf16 => rounded_to_bf16(&model),
        };
        let (c, w) = (&model.config, &reference.weights);
        let engine = EngineConfig {
            max_seqs: 2,
            max_pages: 8,
            page_size: 4,
            max_seq_len: 16,
            max_tokens_per_round: 4,
        };
        let source = StepSource {
            model: c.clone(),
            kernel: KernelSource::Blocks(BlockSizes::uniform(1, 1)),
            tp: 1,
            weights,
        };
        let client = match form {
            KernelForm::Host => serving_client(),
            KernelForm::Portable => client(),
        };
        let device = DeviceExecutor::new(
            client,
            &*model,
            &engine,
            Dtype::F32,
            default_buckets(4),
            source,
        )
        .unwrap();
        let rows = 3;
        let mut rng = rand::rng();
        let x: Vec<f32> = (0..rows * c.hidden_size)
            .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
            .collect();
        // A split LM head runs in argmax-only mode here (a greedy step's): its rows' largest
        // logits are exact, the others estimates below them.
        let split = device.source().split_head();
        let text = kernelgen::step::profile::matmul_chain(c, rows, form, weights, split)
            .unwrap()
            .generic_text;
        let exe = device
            .client()
            .compile(&text, &runtime::pjrt::CompileOptions::new())
            .unwrap();
        let xb = device
            .client()
            .buffer_from_host(&x, &[rows as i64, c.hidden_size as i64])
            .unwrap();
        let mut args = vec![&xb];
        args.extend(device.weights());
        let got: Vec<f32> = exe.execute_borrowed(&args).unwrap()[0].to_host().unwrap();
        let head = w.head();
        let (qd, f, eps) = (c.q_dim(), c.intermediate_size, c.rms_norm_eps as f64);
        for r in 0..rows {
            let mut h: Vec<f64> = x[r * c.hidden_size..(r + 1) * c.hidden_size]
                .iter()
                .map(|&v| v as f64)
                .collect();
            for l in &w.layers {
                let qkv = matvec(&rms_norm(&h, &l.attn_norm, eps), &l.wqkv);
                let o = matvec(&qkv[..qd], &l.wo);
                let x1: Vec<f64> = h.iter().zip(&o).map(|(a, b)| a + b).collect();
                let gu = matvec(&rms_norm(&x1, &l.ffn_norm, eps), &l.w_gate_up);
                let m: Vec<f64> = gu[..f].iter().zip(&gu[f..]).map(|(a, b)| a * b).collect();
                let d = matvec(&m, &l.w_down);
                h = x1.iter().zip(&d).map(|(a, b)| a + b).collect();
            }
            let want = matvec(&rms_norm(&h, &w.final_norm, eps), head);
            let row = &got[r * c.vocab_size..(r + 1) * c.vocab_size];
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            if split {
                let top = |v: &[f64]| v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                let got_top = top(&row.iter().map(|&g| g as f64).collect::<Vec<_>>());
                assert!(
                    (got_top - top(&want)).abs() <= 1e-4 * scale,
                    "tied {tied}, row {r}: largest logit {got_top} vs {}",
                    top(&want)
                );
                continue;
            }
            let err = row
                .iter()
                .zip(&want)
                .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
            assert!(
                err <= 1e-4 * scale,
                "tied {tied}, {weights:?} weights, row {r}: max abs err {err} vs scale {scale}"
            );
        }
    }
}

/// The shapes of every `copy` in XLA's optimized program text, as element counts.
fn copied_elements(hlo: &str) -> Vec<(usize, String)> {
    hlo.lines()
        .filter(|l| l.contains(" copy("))
        .filter_map(|l| {
            let shape = l.split('=').nth(1)?.trim();
            let dims = shape.split('[').nth(1)?.split(']').next()?;
            let n = dims
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.trim().parse::<usize>().ok())
                .product::<Option<usize>>()?;
            Some((n, l.trim().chars().take(120).collect()))
        })
        .collect()
}

/// Each layer writes its new K/V into its pool in place: on the serving plugin (the XLA the
/// engine runs on), the optimized step program never copies a pool-sized buffer, in either
/// kernel form, for one-token decode programs (where a scatter into a reshaped pool once made
/// XLA copy the pool in every layer: ~60 us a layer at a 1k-token pool), batched decode and
/// mixed buckets. XLA writes the optimized program out when asked through the compile options
/// (`xla_dump_to`). (The older default plugin's XLA still copies the pool in the portable
/// form's one-token decode program: it fuses the row's update into the kernel's page gather.)
#[test]
fn step_programs_never_copy_the_kv_pool() {
    let model = tiny(rand::random::<u64>() % 1000, false);
    let engine = EngineConfig {
        max_seqs: 8,
        max_pages: 64,
        page_size: 4,
        max_seq_len: 64,
        max_tokens_per_round: 16,
    };
    let client = serving_client();
    for blocks in [host((4, 2)), portable((4, 2))] {
        let source = StepSource {
            model: model.config.clone(),
            kernel: KernelSource::Blocks(blocks),
            tp: 1,
            weights: Dtype::F32,
        };
        let shapes = [
            StepShapes::decode(&engine, 1, Dtype::F32),
            StepShapes::decode(&engine, 8, Dtype::F32),
            StepShapes::new(&engine, 1, Dtype::F32),
            StepShapes::new(&engine, 16, Dtype::Bf16),
        ];
        for s in shapes {
            let pool: usize = s.pool_dims(&model.config).iter().product::<i64>() as usize;
            let dir = std::env::temp_dir().join(format!(
                "kg-nocopy-{}-{:?}-{}-{}",
                std::process::id(),
                blocks.form,
                s.tokens,
                s.decode
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let opts = CompileOptions::new()
                .with_option("xla_dump_to", dir.to_string_lossy().into_owned())
                .with_option("xla_dump_hlo_as_text", true);
            client.compile(&source.program(&s).unwrap(), &opts).unwrap();
            let optimized: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().ends_with("after_optimizations.txt"))
                .collect();
            assert_eq!(
                optimized.len(),
                1,
                "XLA wrote its optimized program: {optimized:?}"
            );
            let hlo = std::fs::read_to_string(&optimized[0]).unwrap();
            let copies: Vec<_> = copied_elements(&hlo)
                .into_iter()
                .filter(|(n, _)| *n >= pool)
                .collect();
            assert!(
                copies.is_empty(),
                "{:?} program of {} tokens (decode: {}) copies a {pool}-element pool: {copies:?}",
                blocks.form,
                s.tokens,
                s.decode
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
