//! DenseDecoder and HostExecutor on the tiny random model: determinism, prefill/decode
//! agreement, and paged (shuffled pages, chunked prefill, mixed batches) = dense.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime::engine::{SeqInBatch, StepBatch, StepExecutor};
use runtime::model::gguf::{load_gguf, GgmlType};
use runtime::model::safetensors::load_hf_dir;
use runtime::model::Model;
use std::sync::Arc;
use verify::dense::{argmax, generate_greedy, DenseDecoder};
use verify::fixtures::tiny::{write_tiny_llama, write_tiny_llama_gguf, TinyConfig};
use verify::host_executor::HostExecutor;

fn seeded() -> (u64, ChaCha8Rng) {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    (seed, ChaCha8Rng::seed_from_u64(seed))
}

fn tiny(seed: u64, cfg: &TinyConfig) -> Model {
    let dir = std::env::temp_dir().join(format!(
        "dense-host-{}-{seed}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    write_tiny_llama(&dir, seed, cfg).unwrap();
    let model = load_hf_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    model
}

fn random_tokens(rng: &mut ChaCha8Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

#[test]
fn dense_logits_are_finite_deterministic_and_prefill_matches_decode() {
    let (seed, mut rng) = seeded();
    for tied in [false, true] {
        let cfg = TinyConfig {
            tie_word_embeddings: tied,
            ..TinyConfig::default()
        };
        let model = tiny(seed, &cfg);
        let n = rng.random_range(1..40);
        let prompt = random_tokens(&mut rng, n, cfg.vocab_size);
        let a = DenseDecoder::new(&model).forward(&prompt);
        let b = DenseDecoder::new(&model).forward(&prompt);
        assert_eq!(a.len(), cfg.vocab_size);
        assert!(a.iter().all(|v| v.is_finite()));
        assert_eq!(a, b, "same input, same logits");
        // Logits are not degenerate.
        let spread =
            a.iter().fold(f32::MIN, |m, &v| m.max(v)) - a.iter().fold(f32::MAX, |m, &v| m.min(v));
        assert!(spread > 1.0, "logit spread {spread}");

        // One prefill pass = token-by-token decoding, at every position.
        let all = DenseDecoder::new(&model).forward_all(&prompt);
        let mut dec = DenseDecoder::new(&model);
        for (i, &t) in prompt.iter().enumerate() {
            let step = dec.forward(&[t]);
            assert_close(
                &step,
                &all[i * cfg.vocab_size..][..cfg.vocab_size],
                1e-5,
                "decode vs prefill",
            );
        }
        assert_eq!(dec.len(), prompt.len());
        assert_close(
            &a,
            &all[(prompt.len() - 1) * cfg.vocab_size..],
            1e-5,
            "last row",
        );
    }
}

#[test]
fn greedy_generation_is_deterministic_and_stops() {
    let (seed, mut rng) = seeded();
    let cfg = TinyConfig::default();
    let model = tiny(seed, &cfg);
    let prompt = random_tokens(&mut rng, 5, cfg.vocab_size);
    let out = generate_greedy(&model, &prompt, 32, &[]);
    assert_eq!(out.len(), 32);
    assert_eq!(generate_greedy(&model, &prompt, 32, &[]), out);
    // Each token is the argmax after the prompt plus the tokens before it.
    let mut dec = DenseDecoder::new(&model);
    let mut logits = dec.forward(&prompt);
    for &t in &out {
        assert_eq!(argmax(&logits), t);
        logits = dec.forward(&[t]);
    }
    // Stopping on a generated token ends right after it.
    let stop = out[7];
    let first = out.iter().position(|&t| t == stop).unwrap();
    assert_eq!(
        generate_greedy(&model, &prompt, 32, &[stop]),
        out[..=first].to_vec()
    );
    assert!(generate_greedy(&model, &prompt, 0, &[]).is_empty());
    // Random weights still give some variety (no immediate collapse to one token).
    let distinct: std::collections::HashSet<_> = out.iter().collect();
    assert!(distinct.len() >= 3, "greedy output collapsed: {out:?}");
}

/// A sequence being served: its tokens, how many are in the cache, its page table.
struct Seq {
    tokens: Vec<u32>,
    prompt_len: usize,
    cached: usize,
    pages: Vec<u32>,
    /// Logits the executor returned after each token (index = position).
    logits: Vec<Option<Vec<f32>>>,
}

/// Drives HostExecutor with mixed batches (prefill chunks of random sizes next to decode rows,
/// random page assignment, a padding row writing to the scratch page) and checks every returned
/// logits row against DenseDecoder over the same tokens.
#[test]
fn host_executor_matches_dense_decoder() {
    let (seed, mut rng) = seeded();
    let cfg = TinyConfig {
        tie_word_embeddings: rng.random_bool(0.5),
        ..TinyConfig::default()
    };
    let model = Arc::new(tiny(seed, &cfg));
    let page_size = [1, 3, 4, 8][rng.random_range(0..4)];
    let n_seqs = rng.random_range(1..5);
    let max_len: usize = 40;
    let num_pages = n_seqs * max_len.div_ceil(page_size) + 2;
    let mut free: Vec<u32> = (0..num_pages as u32).collect();
    free.shuffle(&mut rng);
    let mut exec = HostExecutor::new(model.clone(), num_pages, page_size);
    assert_eq!(exec.vocab_size(), cfg.vocab_size);
    let mut seqs: Vec<Seq> = (0..n_seqs)
        .map(|_| {
            let prompt_len = rng.random_range(1..20);
            Seq {
                tokens: random_tokens(&mut rng, prompt_len, cfg.vocab_size),
                prompt_len,
                cached: 0,
                pages: Vec::new(),
                logits: Vec::new(),
            }
        })
        .collect();
    let decode_steps = 8;
    let mut steps = 0;
    while seqs.iter().any(|s| s.cached < s.prompt_len + decode_steps) {
        steps += 1;
        assert!(steps < 200);
        let mut batch = StepBatch {
            token_ids: vec![],
            positions: vec![],
            slot_mapping: vec![],
            seqs: vec![],
            logits_rows: vec![],
            argmax_only: false,
        };
        let mut members = Vec::new();
        let mut order: Vec<usize> = (0..n_seqs).collect();
        order.shuffle(&mut rng);
        for i in order {
            let s = &mut seqs[i];
            if s.cached >= s.prompt_len + decode_steps || rng.random_bool(0.2) {
                continue; // finished, or not scheduled this step
            }
            let q_len = if s.cached < s.prompt_len {
                rng.random_range(1..=s.prompt_len - s.cached) // prefill chunk
            } else {
                1 // decode
            };
            // The next token of a decoding sequence is the greedy pick from its last logits.
            while s.tokens.len() < s.cached + q_len {
                let last = s.logits[s.tokens.len() - 1].as_ref().unwrap();
                s.tokens.push(argmax(last));
            }
            let kv_len = s.cached + q_len;
            while s.pages.len() < kv_len.div_ceil(page_size) {
                s.pages.push(free.pop().unwrap());
            }
            let q_start = batch.token_ids.len();
            for pos in s.cached..kv_len {
                batch.token_ids.push(s.tokens[pos]);
                batch.positions.push(pos as u32);
                batch
                    .slot_mapping
                    .push(s.pages[pos / page_size] * page_size as u32 + (pos % page_size) as u32);
            }
            batch.seqs.push(SeqInBatch {
                q_start,
                q_len,
                kv_len,
                pages: s.pages.clone(),
            });
            // Sample the last row; sometimes ask for an earlier prefill row too.
            if q_len > 1 && rng.random_bool(0.3) {
                batch.logits_rows.push(q_start);
                members.push((i, s.cached));
            }
            batch.logits_rows.push(q_start + q_len - 1);
            members.push((i, kv_len - 1));
            s.cached = kv_len;
        }
        if rng.random_bool(0.3) {
            // A padding row outside every sequence, written to the scratch page.
            batch
                .token_ids
                .push(rng.random_range(0..cfg.vocab_size as u32));
            batch.positions.push(0);
            batch
                .slot_mapping
                .push(exec.scratch_page() * page_size as u32);
        }
        let logits = exec.step(&batch).unwrap();
        assert_eq!(logits.len(), batch.logits_rows.len() * cfg.vocab_size);
        for (k, &(i, pos)) in members.iter().enumerate() {
            let s = &mut seqs[i];
            if s.logits.len() <= pos {
                s.logits.resize(pos + 1, None);
            }
            s.logits[pos] = Some(logits[k * cfg.vocab_size..][..cfg.vocab_size].to_vec());
        }
    }
    for (i, s) in seqs.iter().enumerate() {
        let dense = DenseDecoder::new(&model).forward_all(&s.tokens[..s.cached]);
        let mut checked = 0;
        for (pos, l) in s.logits.iter().enumerate() {
            if let Some(l) = l {
                assert_close(
                    l,
                    &dense[pos * cfg.vocab_size..][..cfg.vocab_size],
                    1e-4,
                    &format!("seq {i} pos {pos}"),
                );
                checked += 1;
            }
        }
        assert!(checked >= decode_steps);
        // The cache holds the dense decoder's keys: spot-check layer 0's key of the last token.
        let last = s.cached - 1;
        let slot = s.pages[last / page_size] as usize * page_size + last % page_size;
        assert!(exec.kv_at(0, slot, 0, false).iter().any(|&v| v != 0.0));
    }
}

#[test]
fn host_executor_rejects_malformed_batches() {
    let (seed, mut rng) = seeded();
    let cfg = TinyConfig::default();
    let model = Arc::new(tiny(seed, &cfg));
    let mut exec = HostExecutor::new(model, 4, 4);
    let good = StepBatch {
        token_ids: random_tokens(&mut rng, 3, cfg.vocab_size),
        positions: vec![0, 1, 2],
        slot_mapping: vec![8, 9, 10],
        seqs: vec![SeqInBatch {
            q_start: 0,
            q_len: 3,
            kv_len: 3,
            pages: vec![2],
        }],
        logits_rows: vec![2],
        argmax_only: false,
    };
    assert_eq!(exec.step(&good).unwrap().len(), cfg.vocab_size);
    let mut cases: Vec<StepBatch> = Vec::new();
    let mut b = good.clone();
    b.token_ids[1] = cfg.vocab_size as u32;
    cases.push(b);
    let mut b = good.clone();
    b.slot_mapping[0] = 5 * 4; // past the scratch page
    cases.push(b);
    let mut b = good.clone();
    b.positions.pop();
    cases.push(b);
    let mut b = good.clone();
    b.seqs[0].pages = vec![];
    cases.push(b);
    let mut b = good.clone();
    b.seqs[0].kv_len = 2;
    cases.push(b);
    let mut b = good.clone();
    b.seqs[0].q_len = 4;
    cases.push(b);
    let mut b = good.clone();
    b.logits_rows = vec![3];
    cases.push(b);
    let mut b = good.clone();
    b.positions[2] = 7;
    cases.push(b);
    let mut b = good;
    b.seqs[0].pages = vec![9];
    cases.push(b);
    for (i, b) in cases.iter().enumerate() {
        let err = exec.step(b).unwrap_err();
        assert!(
            matches!(err, runtime::engine::EngineError::Executor(_)),
            "case {i}: {err}"
        );
    }
}

/// The quantized GGUF of the tiny model decodes close to the f32 model, and its F32 GGUF exactly
/// like the HF directory (Q/K un-permuted correctly, end to end).
#[test]
fn gguf_models_decode_like_the_hf_model() {
    let (seed, mut rng) = seeded();
    let cfg = TinyConfig::default();
    let dir = std::env::temp_dir().join(format!("dense-gguf-{}-{seed}", std::process::id()));
    write_tiny_llama(&dir, seed, &cfg).unwrap();
    let hf = load_hf_dir(&dir).unwrap();
    let prompt = random_tokens(&mut rng, 12, cfg.vocab_size);
    let want = DenseDecoder::new(&hf).forward_all(&prompt);
    for (ty, rel) in [(GgmlType::F32, 0.0), (GgmlType::Q8_0, 0.05)] {
        let path = dir.join(format!("{ty:?}.gguf"));
        write_tiny_llama_gguf(&path, seed, &cfg, ty).unwrap();
        let got = DenseDecoder::new(&load_gguf(&path).unwrap()).forward_all(&prompt);
        if rel == 0.0 {
            assert_eq!(got, want);
        } else {
            assert_close(&got, &want, rel, &format!("{ty:?}"));
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
