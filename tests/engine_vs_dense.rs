//! The whole serving path (engine scheduling + step program with the linked RPA kernel + PJRT)
//! decodes greedily exactly what a dense reference decoder does (same weights, f32, plain causal
//! attention over contiguous K/V, no pages): 16 prompts of mixed lengths arriving at random
//! steps, page_size 16, a pool small enough to force preemption. Two kernels with different
//! block sizes give identical tokens, and so does the native host kernel (an XLA FFI custom
//! call). A request whose own K/V turn NaN fails alone, and the NaN it leaves in the pages it
//! frees never reaches the requests that reuse them, with either kernel form.

use e2e::{rounded_to_bf16, serving_client, serving_client_with_devices};
use kernelgen::step::executor::ProgramSetup;
use kernelgen::step::program::{BlockSizes, KernelForm};
use kernelgen::step::{default_buckets, DeviceExecutor};
use kernelgen::step::{KernelSource, StepSource};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime::dtype::Dtype;
use runtime::engine::{Engine, EngineConfig, FinishReason, SamplingParams};
use runtime::model::safetensors::load_hf_dir;
use runtime::model::Model;
use std::collections::BTreeMap;
use verify::dense::generate_greedy;
use verify::fixtures::tiny::{write_tiny_llama, TinyConfig};

/// A kernel artifact for the tiny model's geometry, built like `kernelgen build` does.
fn build_artifact(model: &Model, q: u32, kv: u32, seed: u64) -> kernelgen::artifact::Artifact {
    use kernelgen::config::{Dtype, Geometry, KernelConfig, KernelParams};
    let m = &model.config;
    let cfg = KernelConfig::new(KernelParams {
        geometry: Geometry {
            num_q_heads: m.num_q_heads as u32,
            num_kv_heads: m.num_kv_heads as u32,
            head_dim: m.head_dim as u32,
        },
        dtype: Dtype::F32,
        page_size: 16,
        q_block: q,
        kv_pages_block: kv,
        max_num_tokens: 48,
        max_num_seqs: 6,
        pages_per_seq: 6,
        total_pages: 15,
        sm_scale: None,
        sliding_window: None,
        soft_cap: None,
        schedule: Default::default(),
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "kg-evd-art-{}-{seed}-q{q}kv{kv}",
        std::process::id()
    ));
    kernelgen::build::build_stablehlo(&cfg, &dir)
        .unwrap()
        .artifact
}

fn tiny(seed: u64) -> Model {
    tiny_with(seed, &TinyConfig::default())
}

fn tiny_with(seed: u64, cfg: &TinyConfig) -> Model {
    let dir = std::env::temp_dir().join(format!("kg-evd-{}-{seed}", std::process::id()));
    write_tiny_llama(&dir, seed, cfg).unwrap();
    let m = load_hf_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    m
}

/// What [`serve`] returns per prompt index: its tokens and finish reason.
type Served = BTreeMap<usize, (Vec<u32>, FinishReason)>;

/// Tokens only, per prompt index.
fn tokens(served: &Served) -> BTreeMap<usize, Vec<u32>> {
    served.iter().map(|(&i, (t, _))| (i, t.clone())).collect()
}

/// Runs the engine over `prompts` (each submitted at its arrival step); returns tokens and
/// finish reason per prompt index, the preemption count and the engine's non-finite count.
fn serve(
    model: &Model,
    kernel: KernelSource,
    prompts: &[(usize, Vec<u32>, usize)],
) -> (Served, usize, usize) {
    let (served, f) = serve_with(
        model,
        kernel,
        prompts,
        &ProgramSetup::default(),
        1,
        Dtype::F32,
    );
    (served, f.preemptions, f.non_finite)
}

/// What a [`serve_with`] run leaves besides its tokens.
struct RunFigures {
    preemptions: usize,
    non_finite: usize,
    /// Programs loaded again after `setup.max_loaded` unloaded them.
    reloads: u64,
    /// KV pool bytes over every device.
    pool_bytes: u64,
    /// The largest argument bytes one device's program takes (weights, pool, inputs).
    argument_bytes: u64,
}

/// [`serve`] with programs from `setup`, over `tp` devices, weight matrices uploaded in
/// `weights`.
fn serve_with(
    model: &Model,
    kernel: KernelSource,
    prompts: &[(usize, Vec<u32>, usize)],
    setup: &ProgramSetup,
    tp: usize,
    weights: Dtype,
) -> (Served, RunFigures) {
    let cfg = EngineConfig {
        max_seqs: 6,
        max_pages: 14,
        page_size: 16,
        max_seq_len: 96,
        max_tokens_per_round: 48,
    };
    let source = StepSource {
        model: model.config.clone(),
        kernel,
        tp,
        weights,
    };
    let client = match tp {
        1 => serving_client(),
        n => serving_client_with_devices(n),
    };
    let exec = DeviceExecutor::with_programs(
        client,
        model,
        &cfg,
        Dtype::F32,
        default_buckets(48),
        source,
        setup,
    )
    .unwrap();
    let mut engine = Engine::new(cfg, exec).unwrap();
    let mut ids = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut step = 0;
    loop {
        for (i, (arrival, prompt, new)) in prompts.iter().enumerate() {
            if *arrival == step {
                let params = SamplingParams {
                    max_new_tokens: *new,
                    ..SamplingParams::default()
                };
                ids.insert(engine.submit(prompt.clone(), params).unwrap(), i);
            }
        }
        let pending = prompts.iter().any(|(a, _, _)| *a > step);
        if !engine.has_work() && !pending {
            break;
        }
        engine.step().unwrap();
        engine.check_invariants().unwrap();
        for f in engine.take_finished() {
            let s = &f.samples[0];
            out.insert(ids[&f.id], (s.tokens.clone(), s.finish_reason.clone()));
        }
        step += 1;
    }
    assert_eq!(
        engine.stats().pages_in_use,
        0,
        "finished requests left pages behind"
    );
    let m = engine.metrics();
    let reloads = engine.executor().times.reloads;
    if let Some(max) = setup.max_loaded {
        assert!(engine.executor().loaded_programs() <= max);
    }
    let exec = engine.executor();
    let figures = RunFigures {
        preemptions: m.preemptions(),
        non_finite: m.non_finite_samples(),
        reloads,
        pool_bytes: exec.pool_bytes(),
        argument_bytes: exec
            .compiled
            .values()
            .map(|c| c.argument_bytes)
            .max()
            .unwrap_or(0),
    };
    (out, figures)
}

/// 16 prompts drawn from `seed`: every fourth is long (33..60 tokens), the rest short; each
/// arrives at a random step in 0..12 and asks for 8..30 new tokens.
fn scenario(seed: u64, vocab: u32) -> Vec<(usize, Vec<u32>, usize)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..16)
        .map(|i| {
            let len = if i % 4 == 0 {
                rng.random_range(33..60)
            } else {
                rng.random_range(1..20)
            };
            let prompt = (0..len).map(|_| rng.random_range(3..vocab)).collect();
            (rng.random_range(0..12), prompt, rng.random_range(8..30))
        })
        .collect()
}

#[test]
fn engine_greedy_equals_dense_reference_token_for_token() {
    // A drawn scenario usually outgrows the 14-page pool; when one happens not to (arrivals
    // spread out, short answers), it is still checked, and another is drawn, so the check
    // always covers a run that preempted.
    const TRIES: usize = 8;
    let first = rand::random::<u64>() % 10_000;
    let mut preempted = None;
    for seed in first..first + TRIES as u64 {
        eprintln!("seed {seed}");
        let model = tiny(seed);
        let prompts = scenario(seed, model.config.vocab_size as u32);
        let (got, preemptions, _) = serve(
            &model,
            KernelSource::Blocks(BlockSizes::uniform(16, 2)),
            &prompts,
        );
        for (i, (_, prompt, new)) in prompts.iter().enumerate() {
            let want = generate_greedy(&model, prompt, *new, &[]);
            assert_eq!(
                got[&i].0,
                want,
                "seed {seed}, prompt {i} (len {}): engine vs dense",
                prompt.len()
            );
        }
        if preemptions >= 1 {
            preempted = Some((seed, model, prompts, got, preemptions));
            break;
        }
    }
    let Some((seed, model, prompts, got, preemptions)) = preempted else {
        panic!(
            "none of {TRIES} scenarios from seed {first} outgrew the pool to force a preemption"
        );
    };
    // Two kernel artifacts built with different (q_block, kv_pages_block), checked against the
    // model like any --kernel, give identical greedy tokens. The second run keeps at most two
    // programs loaded: the ones it unloads come back from the program cache, unchanged.
    let cache_dir = std::env::temp_dir().join(format!("kg-evd-programs-{}", std::process::id()));
    let bounded = ProgramSetup {
        cache: Some(runtime::cache::executables::ExecutableCache::at(&cache_dir)),
        before_weights: Vec::new(),
        max_loaded: Some(2),
    };
    let mut outputs = Vec::new();
    for ((q, kv), setup) in [((4, 5), ProgramSetup::default()), ((32, 2), bounded)] {
        let artifact = build_artifact(&model, q, kv, seed);
        kernelgen::serve::check_artifact(&artifact, &model.config, 16, Dtype::F32).unwrap();
        let kernel = KernelSource::Artifact(Box::new(artifact));
        let (served, f) = serve_with(&model, kernel, &prompts, &setup, 1, Dtype::F32);
        if setup.max_loaded.is_some() {
            assert!(
                f.reloads > 0,
                "two loaded programs never made a step load one again"
            );
        }
        outputs.push(tokens(&served));
    }
    let _ = std::fs::remove_dir_all(&cache_dir);
    assert_eq!(
        outputs[0], outputs[1],
        "two kernel artifacts gave different greedy tokens"
    );
    let (host, _, _) = serve(&model, host_blocks(16, 2), &prompts);
    assert_eq!(
        tokens(&host),
        tokens(&got),
        "host kernel vs portable kernel"
    );
    assert_eq!(
        tokens(&got),
        outputs[0],
        "artifact kernel vs emitted kernel"
    );
    eprintln!("16 prompts, {preemptions} preemptions, all tokens equal the dense reference");
}

/// `--weights bf16`: the engine uploads each weight matrix rounded to bf16 and computes in f32,
/// so it decodes greedily exactly what the dense reference decodes from the model with those
/// matrices rounded first, with both kernel forms (the host matmul reads the bf16 rows in decode
/// steps; 48-token prefill buckets widen them for XLA's dot). Scenarios are drawn until one
/// where rounding changes the reference's tokens, so an engine that ignored the dtype would
/// fail.
#[test]
fn bf16_weights_decode_what_the_reference_decodes_with_rounded_matrices() {
    const TRIES: u64 = 8;
    let first = rand::random::<u64>() % 10_000;
    for seed in first..first + TRIES {
        let model = tiny(seed);
        let rounded = rounded_to_bf16(&model);
        let prompts = scenario(seed, model.config.vocab_size as u32);
        let mut changed = false;
        for kernel in [
            KernelSource::Blocks(BlockSizes::uniform(16, 2)),
            host_blocks(16, 2),
        ] {
            let setup = ProgramSetup::default();
            let (got, f) = serve_with(&model, kernel, &prompts, &setup, 1, Dtype::Bf16);
            assert_eq!(f.non_finite, 0);
            for (i, (_, prompt, new)) in prompts.iter().enumerate() {
                let want = generate_greedy(&rounded, prompt, *new, &[]);
                assert_eq!(
                    got[&i].0, want,
                    "seed {seed}, prompt {i}: bf16-weight engine vs dense on rounded matrices"
                );
                changed |= want != generate_greedy(&model, prompt, *new, &[]);
            }
        }
        if changed {
            eprintln!("seed {seed}: rounding changed the reference's tokens; engine followed");
            return;
        }
    }
    panic!("in {TRIES} scenarios from seed {first} rounding to bf16 never changed a token");
}

/// The token whose embedding the NaN test poisons: scenario() draws prompt tokens from 3.., so
/// only injected ones hit it.
const POISON: u32 = 2;

/// Emitted kernels in the native host form ([`KernelForm::Host`]).
fn host_blocks(q: u32, kv: u32) -> KernelSource {
    KernelSource::Blocks(BlockSizes {
        form: KernelForm::Host,
        ..BlockSizes::uniform(q, kv)
    })
}

/// A token whose embedding is NaN turns the K/V of every request that contains it NaN (from that
/// position on, in every layer past the first): such a request must finish with
/// `non_finite_logits` and no tokens, and release its pages, NaN and all. The pool is small, so
/// those pages go to later requests, whose slots past their own lengths then hold NaN: every
/// other request must still decode exactly the dense reference's tokens, with both kernel loop
/// nests (the decode steps run the batched one, prefill steps the sequential one).
#[test]
fn a_request_with_nan_kv_fails_alone_and_its_pages_poison_no_one() {
    let seed = std::env::var("KG_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() % 10_000);
    eprintln!("seed {seed} (KG_TEST_SEED={seed} replays it)");
    let mut model = tiny(seed);
    let w = &mut model.weights;
    // Untie the LM head first, so token 2's logit stays finite for everyone else.
    w.lm_head.get_or_insert_with(|| w.embed.clone());
    let cols = w.embed.cols;
    w.embed.data[POISON as usize * cols..][..cols].fill(f32::NAN);

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut prompts = scenario(seed, model.config.vocab_size as u32);
    let mut poisoned = Vec::new();
    // Every third request is poisoned and arrives first, so its pages are freed early and
    // reused by the requests after it.
    for (i, (arrival, prompt, _)) in prompts.iter_mut().enumerate() {
        if i % 3 == 1 {
            let at = rng.random_range(0..=prompt.len());
            prompt.insert(at, POISON);
            poisoned.push(i);
            *arrival = 0;
        }
    }
    for kernel in [
        KernelSource::Blocks(BlockSizes::uniform(16, 2)),
        host_blocks(16, 2),
    ] {
        check_poisoned_run(&model, kernel, &prompts, &poisoned, seed);
    }
}

fn check_poisoned_run(
    model: &Model,
    kernel: KernelSource,
    prompts: &[(usize, Vec<u32>, usize)],
    poisoned: &[usize],
    seed: u64,
) {
    let (got, _, non_finite) = serve(model, kernel, prompts);
    let mut self_poisoned = 0;
    for (i, (_, prompt, new)) in prompts.iter().enumerate() {
        let (tokens, reason) = &got[&i];
        if poisoned.contains(&i) {
            assert_eq!(
                reason,
                &FinishReason::NonFiniteLogits,
                "prompt {i}: {tokens:?}"
            );
            assert!(
                tokens.is_empty(),
                "prompt {i} sampled {tokens:?} from NaN logits"
            );
        } else {
            let mut want = generate_greedy(model, prompt, *new, &[]);
            // A clean request may generate the poison token itself: its next step, if it has
            // one, then fails.
            let mut want_reason = reason.clone();
            let k = want.iter().position(|&t| t == POISON);
            if let Some(k) = k.filter(|&k| k + 1 < want.len()) {
                want.truncate(k + 1);
                want_reason = FinishReason::NonFiniteLogits;
                self_poisoned += 1;
            }
            assert_eq!(tokens, &want, "seed {seed}, clean prompt {i} vs dense");
            assert_eq!(reason, &want_reason, "seed {seed}, clean prompt {i}");
        }
    }
    assert_eq!(
        non_finite,
        poisoned.len() + self_poisoned,
        "metrics count each failed request"
    );
}

/// Tensor parallelism: the 8 q / 4 KV head tiny model served as one SPMD program over 2 and 4
/// devices (KV heads split) and over 8 (each KV head replicated on two devices) decodes exactly
/// the tokens one device does, which equal the dense reference's, on the mixed-arrival scenario
/// whose pool forces preemption. Each device holds its share: its program's arguments shrink
/// with the degree, and the pools over all devices are the one-device pool's size until KV heads
/// are replicated.
#[test]
fn tensor_parallel_greedy_equals_one_device() {
    let seed = rand::random::<u64>() % 10_000;
    eprintln!("seed {seed}");
    let cfg = TinyConfig {
        num_q_heads: 8,
        num_kv_heads: 4,
        head_dim: 8,
        ..TinyConfig::default()
    };
    let model = tiny_with(seed, &cfg);
    let prompts = scenario(seed, model.config.vocab_size as u32);
    let kernel = || KernelSource::Blocks(BlockSizes::uniform(16, 2));
    let (one, one_f) = serve_with(
        &model,
        kernel(),
        &prompts,
        &ProgramSetup::default(),
        1,
        Dtype::F32,
    );
    for (i, (_, prompt, new)) in prompts.iter().enumerate() {
        let want = generate_greedy(&model, prompt, *new, &[]);
        assert_eq!(one[&i].0, want, "seed {seed}, prompt {i}: tp 1 vs dense");
    }
    for tp in [2, 4, 8] {
        let (got, f) = serve_with(
            &model,
            kernel(),
            &prompts,
            &ProgramSetup::default(),
            tp,
            Dtype::F32,
        );
        assert_eq!(f.non_finite, 0);
        assert_eq!(tokens(&got), tokens(&one), "seed {seed}: tp {tp} vs tp 1");
        let replicas = (tp / cfg.num_kv_heads).max(1) as u64;
        assert_eq!(f.pool_bytes, one_f.pool_bytes * replicas, "tp {tp}");
        assert!(
            f.argument_bytes < one_f.argument_bytes,
            "tp {tp}: {} argument bytes per device vs {} on one",
            f.argument_bytes,
            one_f.argument_bytes
        );
    }
    // The host kernel in each device's partition of the SPMD program.
    let (host, f) = serve_with(
        &model,
        host_blocks(16, 2),
        &prompts,
        &ProgramSetup::default(),
        2,
        Dtype::F32,
    );
    assert_eq!(f.non_finite, 0);
    assert_eq!(
        tokens(&host),
        tokens(&one),
        "seed {seed}: host kernel at tp 2 vs tp 1"
    );
}

/// Tensor parallelism on the default model: SmolLM2-135M (9 q / 3 KV heads) over three devices
/// decodes exactly the tokens one device does on the 16-prompt mixed-arrival scenario, drawn
/// until its small pool forces preemption.
#[test]
fn smollm2_at_tp_3_decodes_the_tokens_of_one_device() {
    let path = verify::fixtures::require_default_model();
    let model = runtime::model::gguf::load_gguf(&path).unwrap();
    let dir = std::env::temp_dir().join(format!("kg-evd-tp-programs-{}", std::process::id()));
    let setup = ProgramSetup {
        cache: Some(runtime::cache::executables::ExecutableCache::at(&dir)),
        ..ProgramSetup::default()
    };
    let kernel = || KernelSource::Blocks(BlockSizes::uniform(16, 2));
    let first = rand::random::<u64>() % 10_000;
    let (seed, prompts, one, one_f) = (first..first + 6)
        .map(|seed| {
            let prompts = scenario(seed, model.config.vocab_size as u32);
            let (one, f) = serve_with(&model, kernel(), &prompts, &setup, 1, Dtype::F32);
            (seed, prompts, one, f)
        })
        .find(|r| r.3.preemptions >= 1)
        .expect("no scenario of six outgrew the pool");
    eprintln!("seed {seed}: {} preemptions", one_f.preemptions);
    let (three, f) = serve_with(&model, kernel(), &prompts, &setup, 3, Dtype::F32);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(f.non_finite, 0);
    assert_eq!(tokens(&three), tokens(&one), "seed {seed}: tp 3 vs tp 1");
    assert_eq!(
        f.pool_bytes, one_f.pool_bytes,
        "three pools of one KV head each"
    );
}
