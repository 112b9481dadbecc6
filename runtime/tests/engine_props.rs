//! Engine properties over random request streams, against a mock executor that keeps a shadow
//! KV cache and checks every batch it is handed.
//!
//! The mock's logits are a hash of the whole context it reads back through the page table
//! (token and position of every cached slot), so any KV corruption — a page shared or reused
//! wrongly, a slot written twice, a stale page — changes the outputs. The key property: each
//! request's tokens equal those of a run of that request alone on a fresh, roomy engine (with
//! a different page size), whatever the chunking, batching and preemption.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use runtime::engine::{
    Engine, EngineConfig, EngineError, FinishReason, FinishedRequest, SamplingParams, StepBatch,
    StepExecutor,
};
use runtime::plan::EnginePlan;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn mix(h: u64, x: u64) -> u64 {
    splitmix(h ^ splitmix(x))
}

/// Executor with a shadow KV cache of (token, position) per slot.
struct MockExec {
    config: EngineConfig,
    vocab: usize,
    kv: Vec<Option<(u32, u32)>>,
    steps: usize,
    rows: usize,
    max_batch_tokens: usize,
    max_batch_seqs: usize,
    last: Option<StepBatch>,
}

impl MockExec {
    fn new(config: &EngineConfig, vocab: usize) -> Self {
        MockExec {
            config: config.clone(),
            vocab,
            kv: vec![None; config.max_pages * config.page_size],
            steps: 0,
            rows: 0,
            max_batch_tokens: 0,
            max_batch_seqs: 0,
            last: None,
        }
    }

    /// Every structural property of a batch, independently of the engine's code.
    fn check(&self, b: &StepBatch) -> Result<(), String> {
        let ps = self.config.page_size;
        let rows = b.token_ids.len();
        if rows == 0 || b.seqs.is_empty() {
            return Err("empty batch".into());
        }
        if b.positions.len() != rows || b.slot_mapping.len() != rows {
            return Err("row arrays differ in length".into());
        }
        if rows > self.config.max_tokens_per_round || b.seqs.len() > self.config.max_seqs {
            return Err(format!("{rows} rows / {} seqs over budget", b.seqs.len()));
        }
        let mut next = 0;
        let mut last_rows = Vec::new();
        let mut slots = BTreeSet::new();
        for s in &b.seqs {
            if s.q_start != next || s.q_len == 0 || s.kv_len < s.q_len {
                return Err(format!("bad seq {s:?} (expected q_start {next})"));
            }
            next += s.q_len;
            if s.pages.len() < s.kv_len.div_ceil(ps) {
                return Err(format!("{} pages for kv_len {}", s.pages.len(), s.kv_len));
            }
            if s.pages.iter().any(|&p| p as usize >= self.config.max_pages) {
                return Err("page out of range".into());
            }
            let distinct: BTreeSet<_> = s.pages.iter().collect();
            if distinct.len() != s.pages.len() {
                return Err("a page twice in one table".into());
            }
            for (i, r) in (s.q_start..s.q_start + s.q_len).enumerate() {
                let pos = s.kv_len - s.q_len + i;
                if b.positions[r] as usize != pos {
                    return Err(format!("row {r}: position {} != {pos}", b.positions[r]));
                }
                let want = s.pages[pos / ps] as usize * ps + pos % ps;
                if b.slot_mapping[r] as usize != want {
                    return Err(format!("row {r}: slot {} != {want}", b.slot_mapping[r]));
                }
                if !slots.insert(want) {
                    return Err(format!("slot {want} written twice in one step"));
                }
                if b.token_ids[r] as usize >= self.vocab {
                    return Err("token outside vocab".into());
                }
            }
            last_rows.push(s.q_start + s.q_len - 1);
        }
        if next != rows {
            return Err("seqs do not cover the rows".into());
        }
        if b.logits_rows.windows(2).any(|w| w[0] >= w[1])
            || b.logits_rows.iter().any(|r| !last_rows.contains(r))
        {
            return Err(format!("logits rows {:?} not seq ends", b.logits_rows));
        }
        Ok(())
    }
}

impl StepExecutor for MockExec {
    fn step(&mut self, b: &StepBatch) -> Result<Vec<f32>, EngineError> {
        self.check(b).map_err(EngineError::Executor)?;
        self.steps += 1;
        self.rows += b.token_ids.len();
        self.max_batch_tokens = self.max_batch_tokens.max(b.token_ids.len());
        self.max_batch_seqs = self.max_batch_seqs.max(b.seqs.len());
        self.last = Some(b.clone());
        for r in 0..b.token_ids.len() {
            self.kv[b.slot_mapping[r] as usize] = Some((b.token_ids[r], b.positions[r]));
        }
        let ps = self.config.page_size;
        let mut out = Vec::with_capacity(b.logits_rows.len() * self.vocab);
        for &row in &b.logits_rows {
            let s = b
                .seqs
                .iter()
                .find(|s| s.q_start + s.q_len - 1 == row)
                .ok_or_else(|| EngineError::Executor("orphan logits row".into()))?;
            let mut h = 0x5EED;
            for pos in 0..s.kv_len {
                let slot = s.pages[pos / ps] as usize * ps + pos % ps;
                match self.kv[slot] {
                    Some((tok, p)) if p as usize == pos => h = mix(h, tok as u64),
                    other => {
                        return Err(EngineError::Executor(format!(
                            "position {pos} reads slot {slot} holding {other:?}"
                        )))
                    }
                }
            }
            for v in 0..self.vocab {
                let bits = mix(h, v as u64) >> 40;
                out.push(bits as f32 / (1u64 << 24) as f32 * 8.0 - 4.0);
            }
        }
        Ok(out)
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }
}

/// Token t reads as one of four letters, so short stop strings occur often.
fn detok(tokens: &[u32]) -> String {
    tokens
        .iter()
        .map(|&t| (b'a' + (t % 4) as u8) as char)
        .collect()
}

#[derive(Clone, Debug)]
struct Req {
    arrival: usize,
    prompt: Vec<u32>,
    params: SamplingParams,
}

#[derive(Clone, Debug)]
struct Scenario {
    config: EngineConfig,
    vocab: usize,
    alone_page_size: usize,
    reqs: Vec<Req>,
}

fn params(
    max_seq_len: usize,
    prompt_len: usize,
    vocab: usize,
) -> impl Strategy<Value = SamplingParams> {
    let room = max_seq_len - prompt_len;
    (
        1..=room,
        prop_oneof![4 => Just(1usize), 1 => 2usize..=4],
        prop_oneof![2 => Just(0.0f32), 1 => 0.2f32..2.0],
        prop::option::of(1usize..8),
        prop::option::of(0.3f32..=1.0),
        any::<u64>(),
        prop::collection::vec(0..vocab as u32, 0..2),
        prop::collection::vec("[abcd]{2,3}", 0..2),
    )
        .prop_map(
            |(max_new, n, temperature, top_k, top_p, seed, stop_ids, stop_strings)| {
                SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    seed: Some(seed),
                    max_new_tokens: max_new,
                    stop_token_ids: stop_ids,
                    stop_strings,
                    n,
                    ignore_eos: false,
                }
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        1usize..=6,
        6usize..=64,
        1usize..=6,
        1usize..=32,
        8usize..=40,
        0usize..=2,
        1usize..=8,
    )
        .prop_flat_map(|(ps, msl, max_seqs, mtpr, vocab, extra_pages, alone_ps)| {
            let per_seq = msl.div_ceil(ps);
            let config = EngineConfig {
                max_seqs,
                max_pages: per_seq + extra_pages * per_seq / 2,
                page_size: ps,
                max_seq_len: msl,
                max_tokens_per_round: mtpr,
            };
            let req = (1usize..msl, 0usize..24).prop_flat_map(move |(plen, arrival)| {
                (
                    Just(arrival),
                    prop::collection::vec(0..vocab as u32, plen),
                    params(msl, plen, vocab),
                )
                    .prop_map(|(arrival, prompt, params)| Req {
                        arrival,
                        prompt,
                        params,
                    })
            });
            (
                Just(config),
                Just(vocab),
                Just(alone_ps),
                prop::collection::vec(req, 1..12),
            )
        })
        .prop_map(|(config, vocab, alone_page_size, reqs)| Scenario {
            config,
            vocab,
            alone_page_size,
            reqs,
        })
}

fn engine(config: &EngineConfig, vocab: usize) -> Engine<MockExec> {
    let mut e = Engine::new(config.clone(), MockExec::new(config, vocab)).unwrap();
    e.set_detokenizer(Box::new(detok));
    e
}

/// Independent checks of the pool against the engine's page tables.
fn check_pool(e: &Engine<MockExec>, finished: &BTreeSet<u64>) -> Result<(), TestCaseError> {
    let c = e.config();
    let st = e.stats();
    prop_assert_eq!(st.pages_in_use + st.pages_free, c.max_pages);
    let seqs = e.sequences();
    prop_assert_eq!(st.active_seqs + st.waiting, seqs.len());
    let mut refs: BTreeMap<u32, Vec<(u64, usize, usize, usize)>> = BTreeMap::new();
    for s in &seqs {
        prop_assert!(
            !finished.contains(&s.request),
            "finished request still has a sequence"
        );
        if s.running {
            prop_assert_eq!(s.pages.len(), s.num_computed.div_ceil(c.page_size));
        } else {
            prop_assert!(s.pages.is_empty(), "waiting sequence holds pages");
            prop_assert_eq!(s.num_computed, 0);
        }
        for (i, &p) in s.pages.iter().enumerate() {
            refs.entry(p)
                .or_default()
                .push((s.request, s.sample, i, s.prompt_len));
        }
    }
    let a = e.page_allocator();
    let mut in_use = 0;
    for p in 0..c.max_pages as u32 {
        let holders = refs.get(&p).map_or(&[][..], |v| &v[..]);
        prop_assert_eq!(a.refcount(p) as usize, holders.len(), "page {}", p);
        in_use += usize::from(!holders.is_empty());
        if holders.len() > 1 {
            // Shared only among samples of one request, as the same full prompt page.
            let (req, _, idx, plen) = holders[0];
            let samples: BTreeSet<usize> = holders.iter().map(|h| h.1).collect();
            prop_assert_eq!(samples.len(), holders.len());
            for h in holders {
                prop_assert_eq!((h.0, h.2), (req, idx));
                prop_assert!((idx + 1) * c.page_size <= plen);
            }
        }
    }
    prop_assert_eq!(in_use, st.pages_in_use);
    prop_assert_eq!(
        st.max_refcount as usize,
        refs.values().map(Vec::len).max().unwrap_or(0)
    );
    prop_assert!(e.check_invariants().is_ok(), "{:?}", e.check_invariants());
    Ok(())
}

/// The reference stop rule: the first generated token that is a stop id or completes a stop
/// string ends the sample; otherwise it runs to max_new_tokens.
fn check_reason(
    tokens: &[u32],
    reason: &FinishReason,
    text: Option<&str>,
    p: &SamplingParams,
) -> Result<(), TestCaseError> {
    let stop_at = (0..tokens.len()).find(|&j| {
        p.stop_token_ids.contains(&tokens[j]) || {
            let t = detok(&tokens[..=j]);
            p.stop_strings.iter().any(|s| t.contains(s.as_str()))
        }
    });
    match stop_at {
        Some(j) => {
            prop_assert_eq!(tokens.len(), j + 1);
            if p.stop_token_ids.contains(&tokens[j]) {
                prop_assert_eq!(reason, &FinishReason::StopToken);
            } else {
                prop_assert_eq!(reason, &FinishReason::StopString);
                let full = detok(tokens);
                let cut = p
                    .stop_strings
                    .iter()
                    .filter_map(|s| full.find(s.as_str()))
                    .min()
                    .unwrap();
                prop_assert_eq!(text, Some(&full[..cut]));
            }
        }
        None => {
            prop_assert_eq!(tokens.len(), p.max_new_tokens);
            prop_assert_eq!(reason, &FinishReason::Length);
            let full = detok(tokens);
            prop_assert_eq!(text, Some(full.as_str()));
        }
    }
    Ok(())
}

type Outputs = Vec<(Vec<u32>, FinishReason)>;

fn outputs(f: &FinishedRequest) -> Outputs {
    f.samples
        .iter()
        .map(|s| (s.tokens.clone(), s.finish_reason.clone()))
        .collect()
}

/// The request on its own: roomy pool, whole prompt in one step, another page size.
fn alone(s: &Scenario, r: &Req) -> Outputs {
    let n = r.params.n;
    let msl = s.config.max_seq_len;
    let config = EngineConfig {
        max_seqs: n,
        max_pages: msl.div_ceil(s.alone_page_size) * n,
        page_size: s.alone_page_size,
        max_seq_len: msl,
        max_tokens_per_round: msl * n,
    };
    let mut e = engine(&config, s.vocab);
    e.submit(r.prompt.clone(), r.params.clone()).unwrap();
    let done = e.run_to_completion().unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(e.metrics().preemptions(), 0);
    outputs(&done[0])
}

/// Runs a scenario with every per-step check; returns finished requests by submission index.
fn run(s: &Scenario) -> Result<(Engine<MockExec>, Vec<FinishedRequest>), TestCaseError> {
    let mut e = engine(&s.config, s.vocab);
    let mut ids = BTreeMap::new();
    let mut streams: BTreeMap<(u64, usize), Vec<u32>> = BTreeMap::new();
    let mut ended: BTreeMap<(u64, usize), FinishReason> = BTreeMap::new();
    let mut finished = BTreeSet::new();
    let mut done = Vec::new();
    let mut step = 0;
    let mut work_steps = 0;
    while ids.len() < s.reqs.len() || e.has_work() {
        for (i, r) in s.reqs.iter().enumerate() {
            if r.arrival == step {
                let id = e.submit(r.prompt.clone(), r.params.clone()).unwrap();
                ids.insert(id, i);
            }
        }
        work_steps += usize::from(e.has_work());
        let decoders = e
            .sequences()
            .iter()
            .filter(|v| v.running && v.num_tokens - v.num_computed == 1)
            .count();
        let preempted = e.metrics().preemptions();
        let events = e
            .step()
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        if decoders > 0 && e.metrics().preemptions() == preempted {
            // Decodes go first: without preemption they lead the batch, as many as fit.
            let c = &s.config;
            let b = e.executor().last.as_ref().unwrap();
            let lead = decoders.min(c.max_seqs).min(c.max_tokens_per_round);
            prop_assert!(b.seqs.len() >= lead);
            prop_assert!(
                b.seqs[..lead].iter().all(|q| q.q_len == 1),
                "decodes not first"
            );
        }
        for ev in events {
            let key = (ev.request, ev.sample);
            prop_assert!(!ended.contains_key(&key), "token after finish");
            streams.entry(key).or_default().extend(ev.token);
            if let Some(r) = ev.finished {
                ended.insert(key, r);
            }
        }
        for f in e.take_finished() {
            finished.insert(f.id);
            prop_assert!(f.arrival <= f.first_token && f.first_token <= f.finished);
            done.push(f);
        }
        check_pool(&e, &finished)?;
        step += 1;
        prop_assert!(step < 20_000, "no progress");
    }
    prop_assert_eq!(done.len(), s.reqs.len());
    prop_assert_eq!(e.metrics().steps(), work_steps);
    prop_assert_eq!(e.metrics().requests_finished(), s.reqs.len());
    prop_assert_eq!(
        e.metrics().sampled_tokens(),
        streams.values().map(Vec::len).sum::<usize>()
    );
    prop_assert_eq!(e.executor().steps, work_steps);
    prop_assert_eq!(
        e.executor().rows,
        e.metrics().prefill_tokens() + e.metrics().decode_tokens()
    );
    let st = e.stats();
    prop_assert_eq!((st.pages_in_use, st.pages_free), (0, s.config.max_pages));
    let m = e.metrics().report();
    prop_assert_eq!(m.ttft_s.count, s.reqs.len());
    prop_assert_eq!(m.e2e_latency_s.count, s.reqs.len());
    let multi_token = done
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|o| o.tokens.len() >= 2)
        .count();
    prop_assert_eq!(m.tpot_s.count, multi_token);
    prop_assert_eq!(m.tokens_per_step.count, work_steps);
    prop_assert_eq!(
        m.tokens_per_step.max as usize,
        e.executor().max_batch_tokens
    );
    prop_assert!(m.prefill_steps >= 1);
    prop_assert_eq!(m.pages_after_decode.map(|p| p.in_use), Some(0));
    prop_assert!(m.pages_after_first_prefill.is_some());
    prop_assert!(m.peak_pages_in_use <= s.config.max_pages);
    let json: serde_json::Value = serde_json::from_str(&e.metrics().to_json()).unwrap();
    prop_assert_eq!(
        json["preemptions"].as_u64(),
        Some(e.metrics().preemptions() as u64)
    );
    for f in &done {
        let r = &s.reqs[ids[&f.id]];
        prop_assert_eq!(f.samples.len(), r.params.n);
        prop_assert_eq!(f.prompt_len, r.prompt.len());
        for (i, out) in f.samples.iter().enumerate() {
            prop_assert_eq!(
                &streams[&(f.id, i)],
                &out.tokens,
                "events vs finished tokens"
            );
            prop_assert_eq!(&ended[&(f.id, i)], &out.finish_reason);
            check_reason(
                &out.tokens,
                &out.finish_reason,
                out.text.as_deref(),
                &r.params,
            )?;
        }
    }
    done.sort_by_key(|f| ids[&f.id]);
    Ok((e, done))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random request streams: pool invariants after every step, right finish reasons, and
    /// outputs identical to each request run alone.
    #[test]
    fn outputs_do_not_depend_on_scheduling(s in scenario()) {
        let (_, done) = run(&s)?;
        for (f, r) in done.iter().zip(&s.reqs) {
            prop_assert_eq!(outputs(f), alone(&s, r), "request {:?}", r);
        }
    }

    /// Several requests that each need the whole pool: preemption must happen, and still
    /// changes nothing.
    #[test]
    fn tight_pool_preempts_without_changing_outputs(
        ps in 1usize..=4, per_seq in 3usize..=8, nreq in 2usize..=4,
        max_seqs in 2usize..=4, vocab in 8usize..=32, seeds in prop::collection::vec(any::<u64>(), 4),
        temperature in prop_oneof![Just(0.0f32), 0.5f32..1.5],
    ) {
        let msl = ps * per_seq;
        let config = EngineConfig {
            max_seqs, max_pages: per_seq, page_size: ps, max_seq_len: msl,
            max_tokens_per_round: 2 * ps,
        };
        let reqs = (0..nreq).map(|i| Req {
            arrival: 0,
            prompt: (0..ps as u64).map(|j| (mix(seeds[i], j) % vocab as u64) as u32).collect(),
            params: SamplingParams {
                temperature, seed: Some(seeds[i]), max_new_tokens: msl - ps,
                ..SamplingParams::default()
            },
        }).collect();
        let s = Scenario { config, vocab, alone_page_size: ps, reqs };
        let (e, done) = run(&s)?;
        prop_assert!(e.metrics().preemptions() > 0);
        for (f, r) in done.iter().zip(&s.reqs) {
            prop_assert_eq!(outputs(f), alone(&s, r));
        }
    }

    /// Engine::new accepts exactly the configs the plan rules accept, with the plan's words.
    #[test]
    fn config_validation_matches_plan(
        max_seqs in 0usize..4, max_pages in 0usize..20, page_size in 0usize..9,
        max_seq_len in 0usize..80, mtpr in 0usize..4,
    ) {
        let config = EngineConfig { max_seqs, max_pages, page_size, max_seq_len, max_tokens_per_round: mtpr };
        let plan = EnginePlan {
            max_seqs: max_seqs as u64, max_pages: max_pages as u64, page_size: page_size as u64,
            max_prompt_len: max_seq_len.saturating_sub(1) as u64, max_new_tokens: 1,
            num_prompts: 1, max_seq_len: max_seq_len as u64,
            max_tokens_per_round: mtpr as u64,
            kv_bytes_per_token: None, hbm_bytes: None, weight_bytes: None, host_bytes: None, levanter: None,
        };
        let fits = max_seqs > 0 && max_pages > 0 && page_size > 0 && max_seq_len > 0 && mtpr > 0
            && max_seq_len.div_ceil(page_size) <= max_pages;
        match Engine::new(config.clone(), MockExec::new(&config, 8)) {
            Ok(_) => prop_assert!(fits),
            Err(EngineError::Config(msg)) => {
                prop_assert!(!fits);
                prop_assert_eq!(msg, plan.validate().unwrap_err());
            }
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
    }

    /// Bad submissions are refused with a message naming the limit, and leave no trace.
    #[test]
    fn bad_submissions_are_rejected(
        plen in 1usize..30, extra in 1usize..10, vocab in 4usize..20, which in 0usize..9,
    ) {
        let msl = 32;
        let config = EngineConfig { max_seqs: 2, max_pages: 16, page_size: 4, max_seq_len: msl, max_tokens_per_round: 8 };
        let mut e = Engine::new(config.clone(), MockExec::new(&config, vocab)).unwrap();
        let plen = plen.min(msl - 1);
        let mut prompt = vec![0u32; plen];
        let mut p = SamplingParams { max_new_tokens: 1, ..SamplingParams::default() };
        let expect = match which {
            0 => { prompt.clear(); "empty prompt".to_string() }
            1 => {
                p.max_new_tokens = msl - plen + extra;
                format!("prompt of {plen} tokens + max_new_tokens {} exceeds max_seq_len {msl}", p.max_new_tokens)
            }
            2 => { p.n = 0; "n = 0".into() }
            3 => { p.temperature = -(extra as f32); "temperature".into() }
            4 => { p.top_p = Some(1.0 + extra as f32); "top_p".into() }
            5 => { p.top_k = Some(0); "top_k".into() }
            6 => { prompt[plen - 1] = (vocab + extra) as u32; format!("outside the vocabulary of {vocab}") }
            7 => { p.stop_strings = vec!["x".into()]; "detokenizer".into() }
            _ => { p.max_new_tokens = 0; "max_new_tokens 0".into() }
        };
        match e.submit(prompt, p) {
            Err(EngineError::Request(msg)) => prop_assert!(msg.contains(&expect), "{msg} lacks {expect}"),
            other => prop_assert!(false, "expected a rejection, got {other:?}"),
        }
        prop_assert!(!e.has_work());
        prop_assert!(e.step().unwrap().is_empty());
    }
}

/// Stop strings end a sample at the token that completes them, with the text cut before.
#[test]
fn stop_strings_cut_text() {
    let config = EngineConfig {
        max_seqs: 4,
        max_pages: 64,
        page_size: 4,
        max_seq_len: 64,
        max_tokens_per_round: 16,
    };
    let mut stopped = 0;
    for seed in 0..40u64 {
        let mut e = engine(&config, 16);
        let prompt: Vec<u32> = (0..5).map(|j| (mix(seed, j) % 16) as u32).collect();
        let p = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            max_new_tokens: 40,
            stop_strings: vec!["dd".into(), "cab".into()],
            ..SamplingParams::default()
        };
        e.submit(prompt, p.clone()).unwrap();
        let done = e.run_to_completion().unwrap();
        let s = &done[0].samples[0];
        check_reason(&s.tokens, &s.finish_reason, s.text.as_deref(), &p).unwrap();
        if s.finish_reason == FinishReason::StopString {
            stopped += 1;
            let text = s.text.as_deref().unwrap();
            assert!(!text.contains("dd") && !text.contains("cab"));
        }
    }
    // With 4 letters and 40 tokens, most samples hit one of the strings.
    assert!(stopped > 20, "{stopped}");
}

/// n > 1: samples share the prompt's full pages while they run, and differ by RNG stream.
#[test]
fn samples_share_full_prompt_pages() {
    let config = EngineConfig {
        max_seqs: 8,
        max_pages: 64,
        page_size: 4,
        max_seq_len: 64,
        max_tokens_per_round: 64,
    };
    let mut e = engine(&config, 64);
    let p = SamplingParams {
        temperature: 1.0,
        seed: Some(9),
        max_new_tokens: 20,
        n: 4,
        ..SamplingParams::default()
    };
    e.submit((0..10).collect(), p).unwrap();
    e.step().unwrap(); // prefill + fork
    let st = e.stats();
    assert_eq!(
        st.max_refcount, 4,
        "two full prompt pages shared by 4 samples"
    );
    assert_eq!(
        st.pages_in_use, 3,
        "2 shared full pages + sample 0's partial page"
    );
    let done = e.run_to_completion().unwrap();
    let tokens: BTreeSet<Vec<u32>> = done[0].samples.iter().map(|s| s.tokens.clone()).collect();
    assert!(tokens.len() > 1, "independent RNG streams");
    assert_eq!(e.stats().pages_in_use, 0);
    let m = e.metrics().report();
    assert_eq!(m.pages_after_first_prefill.map(|p| p.in_use), Some(3));
    assert_eq!(m.pages_after_decode.map(|p| p.in_use), Some(0));
}

struct BadExec;

impl StepExecutor for BadExec {
    fn step(&mut self, b: &StepBatch) -> Result<Vec<f32>, EngineError> {
        Ok(vec![0.0; b.logits_rows.len() * 4 + 1])
    }
    fn vocab_size(&self) -> usize {
        4
    }
}

/// Malformed executor output (a logits buffer of the wrong size) is an error, never a panic,
/// and commits nothing.
#[test]
fn executor_garbage_is_an_error() {
    let config = EngineConfig {
        max_seqs: 2,
        max_pages: 8,
        page_size: 4,
        max_seq_len: 16,
        max_tokens_per_round: 8,
    };
    let mut e = Engine::new(config, BadExec).unwrap();
    let p = SamplingParams {
        max_new_tokens: 4,
        ..SamplingParams::default()
    };
    e.submit(vec![1, 2, 3], p).unwrap();
    for _ in 0..2 {
        assert!(matches!(e.step(), Err(EngineError::Executor(_))));
        assert!(e.check_invariants().is_ok());
        assert_eq!(e.sequences()[0].num_computed, 0);
    }
}

/// [`MockExec`]'s logits, except that a row whose context holds `poison` gets `value` in one
/// entry (NaN, +Inf or -Inf), as a model does once a NaN reached its K/V.
struct PoisonExec {
    inner: MockExec,
    poison: u32,
    value: f32,
}

impl StepExecutor for PoisonExec {
    fn step(&mut self, b: &StepBatch) -> Result<Vec<f32>, EngineError> {
        let mut out = self.inner.step(b)?;
        let v = self.inner.vocab;
        for (i, &row) in b.logits_rows.iter().enumerate() {
            let s = b
                .seqs
                .iter()
                .find(|s| s.q_start + s.q_len - 1 == row)
                .unwrap();
            let ps = self.inner.config.page_size;
            let poisoned = (0..s.kv_len).any(|pos| {
                let slot = s.pages[pos / ps] as usize * ps + pos % ps;
                self.inner.kv[slot].is_some_and(|(t, _)| t == self.poison)
            });
            if poisoned {
                out[i * v + (row % v)] = self.value;
            }
        }
        Ok(out)
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Requests whose logits turn non-finite (a poison token in the prompt, or sampled later)
    /// finish with `non_finite_logits`, with the tokens they had, all their samples included;
    /// every other request's output is exactly what it is in a run without the poisoned ones;
    /// the engine keeps stepping, frees every page, and counts each failure once.
    #[test]
    fn non_finite_logits_fail_only_their_request(
        s in scenario(),
        value in prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY]),
        poison_every in 2usize..4,
    ) {
        let poison = s.vocab as u32 - 1;
        let inner = MockExec::new(&s.config, s.vocab);
        let mut e = Engine::new(s.config.clone(), PoisonExec { inner, poison, value }).unwrap();
        e.set_detokenizer(Box::new(detok));
        let mut poisoned = BTreeSet::new();
        let mut ids = Vec::new();
        for (i, r) in s.reqs.iter().enumerate() {
            let mut prompt = r.prompt.clone();
            if i % poison_every == 0 {
                let at = i % prompt.len();
                prompt[at] = poison;
            } else {
                prompt.retain(|&t| t != poison);
                if prompt.is_empty() {
                    prompt.push(0);
                }
            }
            if prompt.contains(&poison) {
                poisoned.insert(i);
            }
            ids.push((e.submit(prompt.clone(), r.params.clone()).unwrap(), prompt));
        }
        let done = e.run_to_completion().map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(done.len(), s.reqs.len());
        prop_assert_eq!(e.stats().pages_in_use, 0);
        prop_assert!(e.check_invariants().is_ok());
        let mut failed_rows = 0;
        for f in &done {
            let i = ids.iter().position(|(id, _)| *id == f.id).unwrap();
            let failed: Vec<_> = f.samples.iter().filter(|o| o.finish_reason == FinishReason::NonFiniteLogits).collect();
            if poisoned.contains(&i) {
                // the very first logits row reads the poison: all n samples fail with no tokens
                prop_assert_eq!(failed.len(), f.samples.len());
                prop_assert!(f.samples.iter().all(|o| o.tokens.is_empty()));
                failed_rows += 1;
                continue;
            }
            // Not poisoned by its prompt: same as alone, up to a sampled poison token.
            let alone = alone(&s, &Req { prompt: ids[i].1.clone(), ..s.reqs[i].clone() });
            for (o, (tokens, reason)) in f.samples.iter().zip(&alone) {
                match tokens.iter().position(|&t| t == poison) {
                    // It reads its own sampled poison token on the next step, if it has one.
                    Some(k) if k + 1 < tokens.len() => {
                        prop_assert_eq!(&o.tokens[..], &tokens[..=k]);
                        prop_assert_eq!(&o.finish_reason, &FinishReason::NonFiniteLogits);
                        failed_rows += 1;
                    }
                    _ => {
                        prop_assert_eq!(&o.tokens, tokens);
                        prop_assert_eq!(&o.finish_reason, reason);
                    }
                }
            }
        }
        prop_assert_eq!(e.metrics().non_finite_samples(), failed_rows);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Cancelling requests at random steps (waiting, mid-prefill, mid-decode, some samples
    /// done) frees their pages at once, keeps every pool invariant, never reports them as
    /// finished, and leaves every other request's output exactly as it is alone.
    #[test]
    fn cancelled_requests_free_their_pages_and_change_no_other_output(
        s in scenario(),
        cancel_at in prop::collection::vec(prop::option::of(0usize..12), 8),
    ) {
        let mut e = engine(&s.config, s.vocab);
        let mut ids = Vec::new();
        for r in &s.reqs {
            ids.push(e.submit(r.prompt.clone(), r.params.clone()).unwrap());
        }
        let mut cancelled = BTreeSet::new();
        let mut finished = BTreeSet::new();
        let mut done = Vec::new();
        let mut step = 0;
        while e.has_work() {
            for (i, id) in ids.iter().enumerate() {
                if cancel_at.get(i).copied().flatten() == Some(step) && !finished.contains(id) {
                    prop_assert!(e.cancel(*id).unwrap(), "live request {}", id);
                    prop_assert!(!e.cancel(*id).unwrap(), "cancelled twice");
                    cancelled.insert(*id);
                    prop_assert!(e.sequences().iter().all(|v| v.request != *id));
                }
            }
            check_pool(&e, &finished.union(&cancelled).copied().collect())?;
            if !e.has_work() {
                break;
            }
            for ev in e.step().map_err(|err| TestCaseError::fail(err.to_string()))? {
                prop_assert!(!cancelled.contains(&ev.request), "event after cancel");
            }
            for f in e.take_finished() {
                finished.insert(f.id);
                done.push(f);
            }
            step += 1;
            prop_assert!(step < 20_000, "no progress");
        }
        let st = e.stats();
        prop_assert_eq!((st.pages_in_use, st.pages_free), (0, s.config.max_pages));
        prop_assert_eq!(e.metrics().requests_cancelled(), cancelled.len());
        prop_assert_eq!(done.len() + cancelled.len(), s.reqs.len());
        for f in &done {
            prop_assert!(!cancelled.contains(&f.id));
            let i = ids.iter().position(|id| *id == f.id).unwrap();
            prop_assert_eq!(outputs(f), alone(&s, &s.reqs[i]));
        }
    }
}

/// `s` run with the prefix cache on, with every pool check after every step; finished requests
/// by submission index, and the engine.
fn run_cached(s: &Scenario) -> Result<(Engine<MockExec>, Vec<FinishedRequest>), TestCaseError> {
    let mut e = engine(&s.config, s.vocab);
    e.enable_prefix_caching();
    let mut ids = BTreeMap::new();
    let mut done = Vec::new();
    let mut step = 0;
    while ids.len() < s.reqs.len() || e.has_work() {
        for (i, r) in s.reqs.iter().enumerate() {
            if r.arrival == step {
                ids.insert(e.submit(r.prompt.clone(), r.params.clone()).unwrap(), i);
            }
        }
        e.step()
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        done.extend(e.take_finished());
        prop_assert!(e.check_invariants().is_ok(), "{:?}", e.check_invariants());
        let st = e.stats();
        prop_assert_eq!(st.pages_in_use + st.pages_free, s.config.max_pages);
        prop_assert!(st.pages_cached <= st.pages_free);
        prop_assert!(st.prefix_hit_tokens <= st.prefix_queried_tokens);
        step += 1;
        prop_assert!(step < 20_000, "no progress");
    }
    prop_assert_eq!(done.len(), s.reqs.len());
    prop_assert_eq!(e.stats().pages_in_use, 0);
    done.sort_by_key(|f| ids[&f.id]);
    Ok((e, done))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// With the prefix cache on and prompts that share prefixes (some whole), every request's
    /// output is what it is alone without the cache: a reused page always holds exactly the
    /// K/V its prefix would have written (the mock's logits hash everything read back).
    #[test]
    fn the_prefix_cache_changes_no_output(
        s in scenario(),
        share in prop::collection::vec((any::<bool>(), any::<usize>()), 12),
    ) {
        let mut s = s;
        let base = s.reqs[0].prompt.clone();
        for (r, &(shared, cut)) in s.reqs.iter_mut().zip(&share).skip(1) {
            if shared {
                let k = cut % (r.prompt.len().min(base.len()) + 1);
                r.prompt[..k].copy_from_slice(&base[..k]);
            }
        }
        let (_, done) = run_cached(&s)?;
        for (f, r) in done.iter().zip(&s.reqs) {
            prop_assert_eq!(outputs(f), alone(&s, r), "request {:?}", r);
        }
    }
}

/// A system prompt of three pages shared by requests that arrive one after another: each
/// later request finds the three pages and prefills only its own tail, with the same output.
#[test]
fn a_shared_system_prompt_is_prefilled_once() {
    let ps = 4;
    let config = EngineConfig {
        max_seqs: 2,
        max_pages: 40,
        page_size: ps,
        max_seq_len: 32,
        max_tokens_per_round: 64,
    };
    let system: Vec<u32> = (0..3 * ps as u32).map(|t| t % 20).collect();
    let reqs: Vec<Req> = (0..4u32)
        .map(|i| Req {
            arrival: 0,
            prompt: system.iter().copied().chain([i, i + 1, 7]).collect(),
            params: SamplingParams {
                max_new_tokens: 5,
                ..SamplingParams::default()
            },
        })
        .collect();
    let s = Scenario {
        config: config.clone(),
        vocab: 24,
        alone_page_size: 3,
        reqs: reqs.clone(),
    };
    let mut e = engine(&config, 24);
    e.enable_prefix_caching();
    let mut prefilled = Vec::new();
    for r in &reqs {
        let before = e.metrics().prefill_tokens();
        e.submit(r.prompt.clone(), r.params.clone()).unwrap();
        let done = e.run_to_completion().unwrap();
        assert_eq!(outputs(&done[0]), alone(&s, r));
        prefilled.push(e.metrics().prefill_tokens() - before);
    }
    let st = e.stats();
    assert_eq!(
        st.prefix_hit_tokens,
        3 * 3 * ps as u64,
        "three later requests, three pages each"
    );
    assert_eq!(prefilled[0], reqs[0].prompt.len());
    assert!(prefilled[1..]
        .iter()
        .all(|&p| p == reqs[0].prompt.len() - 3 * ps));
    assert!(st.pages_cached > 0 && st.pages_in_use == 0);
    assert!(e.check_invariants().is_ok());
}
