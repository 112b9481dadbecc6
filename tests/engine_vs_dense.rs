//! The whole serving path (engine scheduling + step program with the linked RPA kernel + PJRT)
//! decodes greedily exactly what a dense reference decoder does (same weights, f32, plain causal
//! attention over contiguous K/V, no pages): 16 prompts of mixed lengths arriving at random
//! steps, page_size 16, a pool small enough to force preemption. Two kernels with different
//! block sizes give identical tokens.

use e2e::serving_client;
use kernelgen::emit::step::KernelSource;
use kernelgen::serve::StepSource;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime::engine::{Engine, EngineConfig, SamplingParams};
use runtime::model::safetensors::load_hf_dir;
use runtime::model::tiny::{write_tiny_llama, TinyConfig};
use runtime::model::Model;
use runtime::step::layout::KvDtype;
use runtime::step::{default_buckets, DeviceExecutor};
use std::collections::BTreeMap;
use verify::dense::generate_greedy;

fn tiny(seed: u64) -> Model {
    let dir = std::env::temp_dir().join(format!("kg-evd-{}-{seed}", std::process::id()));
    write_tiny_llama(&dir, seed, &TinyConfig::default()).unwrap();
    let m = load_hf_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    m
}

/// Runs the engine over `prompts` (each submitted at its arrival step); returns tokens per
/// prompt index and the preemption count.
fn serve(
    model: &Model,
    kernel: KernelSource,
    prompts: &[(usize, Vec<u32>, usize)],
) -> (BTreeMap<usize, Vec<u32>>, usize) {
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
    };
    let exec = DeviceExecutor::new(
        serving_client(),
        model,
        &cfg,
        KvDtype::F32,
        default_buckets(48),
        Box::new(source),
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
            out.insert(ids[&f.id], f.samples[0].tokens.clone());
        }
        step += 1;
    }
    (out, engine.metrics().preemptions())
}

#[test]
fn engine_greedy_equals_dense_reference_token_for_token() {
    let seed = rand::random::<u64>() % 10_000;
    eprintln!("seed {seed}");
    let model = tiny(seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vocab = model.config.vocab_size as u32;
    let prompts: Vec<(usize, Vec<u32>, usize)> = (0..16)
        .map(|i| {
            let len = if i % 4 == 0 {
                rng.random_range(33..60)
            } else {
                rng.random_range(1..20)
            };
            let prompt = (0..len).map(|_| rng.random_range(3..vocab)).collect();
            (rng.random_range(0..12), prompt, rng.random_range(8..30))
        })
        .collect();
    let (got, preemptions) = serve(
        &model,
        KernelSource::Blocks {
            q_block: 16,
            kv_pages_block: 2,
        },
        &prompts,
    );
    assert!(preemptions >= 1, "the pool was meant to force a preemption");
    for (i, (_, prompt, new)) in prompts.iter().enumerate() {
        let want = generate_greedy(&model, prompt, *new, &[]);
        assert_eq!(
            got[&i],
            want,
            "prompt {i} (len {}): engine vs dense",
            prompt.len()
        );
    }
    let (other, _) = serve(
        &model,
        KernelSource::Blocks {
            q_block: 4,
            kv_pages_block: 5,
        },
        &prompts,
    );
    assert_eq!(got, other, "different kernel blocks changed greedy tokens");
    eprintln!("16 prompts, {preemptions} preemptions, all tokens equal the dense reference");
}
