//! Shared helpers for the end-to-end tests: one PJRT client per test process, small configs.

use kernelgen::config::{Dtype, Geometry, KernelConfig, KernelParams};
use runtime::pjrt::Client;
use std::sync::OnceLock;

/// The CPU plugin's client, created once per test binary (loading the plugin takes ~20 ms,
/// compiling dominates anyway).
pub fn client() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            Client::from_default_plugin().expect("PJRT CPU plugin (run scripts/setup.sh)")
        })
        .clone()
}

/// The serving plugin's client (the newer XLA CPU plugin the engine runs on by default).
pub fn serving_client() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let api = runtime::pjrt::Api::load(&runtime::cache::serving_plugin_path())
                .expect("serving PJRT plugin (run scripts/setup.sh)");
            Client::new(api).expect("serving client")
        })
        .clone()
}

/// A client on the serving plugin with `devices` CPU devices (tensor parallelism).
pub fn serving_client_with_devices(devices: usize) -> Client {
    let api = runtime::pjrt::Api::load(&runtime::cache::serving_plugin_path())
        .expect("serving PJRT plugin (run scripts/setup.sh)");
    let n = runtime::pjrt::OptionValue::Int(devices as i64);
    Client::with_options(api, &[("cpu_device_count", n)]).expect("serving client")
}

/// `model` with every weight matrix (embedding, projections, LM head) rounded to bf16, norms
/// left f32: what the engine computes with under `--weights bf16`.
pub fn rounded_to_bf16(model: &runtime::model::Model) -> runtime::model::Model {
    let mut m = model.clone();
    let round = |v: &mut [f32]| {
        for x in v.iter_mut() {
            *x = half::bf16::from_f32(*x).to_f32();
        }
    };
    let w = &mut m.weights;
    round(&mut w.embed.data);
    if let Some(head) = &mut w.lm_head {
        round(&mut head.data);
    }
    for l in &mut w.layers {
        for mat in [&mut l.wqkv, &mut l.wo, &mut l.w_gate_up, &mut l.w_down] {
            round(&mut mat.data);
        }
    }
    m
}

/// A small config, cheap enough to compile and run dozens of times.
#[allow(clippy::too_many_arguments)]
pub fn small_config(
    heads: (u32, u32),
    head_dim: u32,
    page_size: u32,
    dtype: Dtype,
    blocks: (u32, u32),
    max_num_tokens: u32,
    max_num_seqs: u32,
    pages_per_seq: u32,
) -> KernelConfig {
    KernelConfig::new(KernelParams {
        geometry: Geometry {
            num_q_heads: heads.0,
            num_kv_heads: heads.1,
            head_dim,
        },
        dtype,
        page_size,
        q_block: blocks.0,
        kv_pages_block: blocks.1,
        max_num_tokens,
        max_num_seqs,
        pages_per_seq,
        total_pages: max_num_seqs * pages_per_seq,
        sm_scale: None,
        sliding_window: None,
        soft_cap: None,
        schedule: Default::default(),
    })
    .expect("valid test config")
}

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime::engine::{SeqInBatch, StepBatch};

/// Random step sequences for driving executors directly: sequences arrive, prefill in random
/// chunks, then decode, on shuffled non-contiguous pages; one StepBatch per step.
pub struct BatchScript {
    rng: ChaCha8Rng,
    page_size: usize,
    free: Vec<u32>,
    /// (tokens so far, target length, pages)
    seqs: Vec<(Vec<u32>, usize, Vec<u32>)>,
    vocab: u32,
}

impl BatchScript {
    pub fn new(seed: u64, num_pages: usize, page_size: usize, vocab: usize) -> BatchScript {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut free: Vec<u32> = (0..num_pages as u32).collect();
        free.shuffle(&mut rng);
        BatchScript {
            rng,
            page_size,
            free,
            seqs: Vec::new(),
            vocab: vocab as u32,
        }
    }

    /// Adds a sequence that will grow to `len` tokens.
    pub fn add_seq(&mut self, len: usize) {
        self.seqs.push((Vec::new(), len, Vec::new()));
    }

    /// The next step: every unfinished sequence advances by a random chunk (1 once it has
    /// started decoding), within `budget` tokens. None when all are done.
    pub fn next(&mut self, budget: usize) -> Option<StepBatch> {
        let mut b = StepBatch {
            token_ids: vec![],
            positions: vec![],
            slot_mapping: vec![],
            seqs: vec![],
            logits_rows: vec![],
            argmax_only: false,
        };
        for (tokens, target, pages) in self.seqs.iter_mut() {
            let left = *target - tokens.len();
            let room = budget - b.token_ids.len();
            if left == 0 || room == 0 {
                continue;
            }
            let chunk = if tokens.len() >= *target / 2 {
                1
            } else {
                self.rng.random_range(1..=left.min(room))
            };
            let start = tokens.len();
            let q_start = b.token_ids.len();
            for pos in start..start + chunk {
                if pos % self.page_size == 0 {
                    pages.push(self.free.pop().expect("enough pages"));
                }
                let tok = self.rng.random_range(0..self.vocab);
                tokens.push(tok);
                b.token_ids.push(tok);
                b.positions.push(pos as u32);
                b.slot_mapping.push(
                    pages[pos / self.page_size] * self.page_size as u32
                        + (pos % self.page_size) as u32,
                );
            }
            b.seqs.push(SeqInBatch {
                q_start,
                q_len: chunk,
                kv_len: tokens.len(),
                pages: pages.clone(),
            });
            b.logits_rows.push(b.token_ids.len() - 1);
        }
        (!b.seqs.is_empty()).then_some(b)
    }
}
