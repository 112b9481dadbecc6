//! The engine: request intake, one scheduling round per [`Engine::step`], sampling, stop
//! conditions, n > 1 forks, finished-request bookkeeping and metrics.
//!
//! Scheduling policy and preemption live in [`super::scheduler`]. A request starts as one
//! sequence (sample 0). For n > 1, the step that finishes prefilling the prompt samples all n
//! first tokens from that one logits row (sample i with its own RNG stream) and forks samples
//! 1..n: each shares the prompt's *full* pages by refcount and recomputes the prompt's partial
//! last page (together with its first token) into a fresh page of its own, so no device-side
//! page copy is ever needed. From then on samples are independent sequences, scheduled,
//! preempted (recomputing from scratch, without sharing) and finished on their own.
//!
//! A sample stops on a stop token (engine-wide ids from [`Engine::set_stop_token_ids`] or the
//! request's), a stop string in its detokenized text, `max_new_tokens`, or `max_seq_len`, in
//! that precedence; its pages are released in the same step. A sample whose logits row holds a
//! NaN or an infinity stops before sampling, with [`FinishReason::NonFiniteLogits`] (all n
//! samples, if it is the row they would have forked from); the other rows of the step sample as
//! usual.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::metrics::{Metrics, PageSnapshot, StepRecord};
use super::page_allocator::PageAllocator;
use super::sampler::{is_greedy, sample_rng, validate_params, Distribution};
use super::scheduler::{Chunk, Scheduler, SeqId, SeqView, Sequence};
use super::{
    EngineConfig, EngineError, FinishReason, RequestId, SamplingParams, StepExecutor, TokenEvent,
};
use crate::model::tokenizer::{IncrementalDecoder, Piece};
use crate::plan::EnginePlan;

/// Turns generated token ids into text (for stop strings and [`SampleOutput::text`]).
pub type Detokenizer = Box<dyn Fn(&[u32]) -> String + Send>;

/// A sequence's generated text as far as stop strings need it, extended a piece per token
/// (decoding the whole generation again each token costs time in proportion to its length).
#[derive(Default)]
struct StopScan {
    decoder: IncrementalDecoder,
    /// The pieces so far: a prefix of the generation's decode.
    text: String,
}

/// Most samples one request may ask for.
pub const MAX_SAMPLES: usize = 4096;

/// Pool and queue occupancy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Running (admitted) sequences.
    pub active_seqs: usize,
    /// Sequences waiting for admission (new, or preempted).
    pub waiting: usize,
    pub pages_in_use: usize,
    /// Pages a sequence can get: empty ones and cached ones.
    pub pages_free: usize,
    /// Of `pages_free`, those keeping a finished prefix for reuse (prefix cache).
    pub pages_cached: usize,
    /// Largest page refcount (> 1 while samples share prompt pages).
    pub max_refcount: u32,
    /// Prompt tokens looked up in the prefix cache at admission, and those found.
    pub prefix_queried_tokens: u64,
    pub prefix_hit_tokens: u64,
}

/// One finished sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOutput {
    /// Every generated token, including a final stop token or the token that completed a stop
    /// string.
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    /// The detokenized generation when a detokenizer is set, cut before the first stop string
    /// for [`FinishReason::StopString`].
    pub text: Option<String>,
    pub finished_at: Instant,
}

/// A request all of whose samples finished.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedRequest {
    pub id: RequestId,
    pub prompt_len: usize,
    /// Indexed by sample.
    pub samples: Vec<SampleOutput>,
    /// When it was submitted.
    pub arrival: Instant,
    /// When its first token was sampled.
    pub first_token: Instant,
    /// When its last sample finished.
    pub finished: Instant,
}

impl FinishedRequest {
    pub fn time_to_first_token(&self) -> Duration {
        self.first_token.duration_since(self.arrival)
    }

    pub fn latency(&self) -> Duration {
        self.finished.duration_since(self.arrival)
    }
}

struct RequestState {
    params: SamplingParams,
    seed: u64,
    prompt_len: usize,
    arrival: Instant,
    first_token: Option<Instant>,
    /// Samples 1.. exist (forked off sample 0 after its prompt was prefilled).
    forked: bool,
    outputs: Vec<Option<SampleOutput>>,
}

/// Paged-KV serving engine over a [`StepExecutor`].
pub struct Engine<E: StepExecutor> {
    config: EngineConfig,
    executor: E,
    vocab_size: usize,
    sched: Scheduler,
    requests: BTreeMap<RequestId, RequestState>,
    next_request: RequestId,
    detokenizer: Option<Detokenizer>,
    /// Sequences with stop strings: their text so far (dropped when they finish).
    stop_scans: BTreeMap<SeqId, StopScan>,
    stop_token_ids: Vec<u32>,
    finished: Vec<FinishedRequest>,
    metrics: Metrics,
    started: Option<Instant>,
}

fn bug(msg: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(msg.to_string())
}

/// Extends `scan` by the text `generated`'s newest token adds and says whether a stop string
/// may now occur: one overlapping the new text (or the text decoded past it, a character still
/// unfinished), since any earlier occurrence was found a token earlier. Also true whenever the
/// decoder cannot split this token's text off (the caller then searches the whole decode).
fn stop_string_may_end_here(
    scan: &mut StopScan,
    generated: &[u32],
    detok: &Detokenizer,
    stops: &[String],
) -> bool {
    let decode = |ids: &[u32]| Ok::<_, std::convert::Infallible>(detok(ids));
    let Ok(piece) = scan.decoder.next(generated, decode);
    let longest = stops.iter().map(String::len).max().unwrap_or(0);
    let from = scan
        .text
        .floor_char_boundary(scan.text.len().saturating_sub(longest.saturating_sub(1)));
    let found = |window: &str| stops.iter().any(|s| window.contains(s.as_str()));
    match piece {
        Piece::Text(piece) => {
            scan.text += &piece;
            found(&scan.text[from..])
        }
        Piece::Unfinished(held) => found(&format!("{}{held}", &scan.text[from..])),
        Piece::Rewritten => true,
    }
}

/// Checks `config` against the engine's own limits and the `runtime::plan` rules (one
/// sequence of `max_seq_len` tokens must fit the pool, knobs positive). Messages are the
/// plan's, verbatim, so `kernelgen plan` and the engine agree.
pub fn validate_config(config: &EngineConfig) -> Result<(), EngineError> {
    let mut errors = Vec::new();
    let u32_max = u32::MAX as usize;
    for (knob, v) in [
        ("max_seqs", config.max_seqs),
        ("max_seq_len", config.max_seq_len),
        ("max_tokens_per_round", config.max_tokens_per_round),
        ("page_size", config.page_size),
        ("max_pages", config.max_pages),
    ] {
        if v > u32_max {
            errors.push(format!("{knob} {v} exceeds the u32 range ({u32_max})"));
        }
    }
    match config.max_pages.checked_mul(config.page_size) {
        Some(slots) if slots <= u32_max => {}
        _ => errors.push(format!(
            "max_pages {} x page_size {} KV slots exceed the u32 slot range ({u32_max})",
            config.max_pages, config.page_size
        )),
    }
    if !errors.is_empty() {
        return Err(EngineError::Config(errors.join("\n")));
    }
    engine_plan(config).validate().map_err(EngineError::Config)
}

/// The capacity plan of `config` alone: any one sequence up to `max_seq_len`. Callers that know
/// the model and the memory add them (`kv_bytes_per_token`, `weight_bytes`, `host_bytes`).
pub fn engine_plan(config: &EngineConfig) -> EnginePlan {
    EnginePlan {
        max_seqs: config.max_seqs as u64,
        max_pages: config.max_pages as u64,
        page_size: config.page_size as u64,
        max_prompt_len: config.max_seq_len.saturating_sub(1) as u64,
        max_new_tokens: 1,
        num_prompts: 1,
        max_seq_len: config.max_seq_len as u64,
        max_tokens_per_round: config.max_tokens_per_round as u64,
        kv_bytes_per_token: None,
        hbm_bytes: None,
        weight_bytes: None,
        host_bytes: None,
        levanter: None,
    }
}

impl<E: StepExecutor> Engine<E> {
    /// An idle engine; refuses configs that fail [`validate_config`] or an executor with an
    /// empty (or larger than u32) vocabulary.
    pub fn new(config: EngineConfig, executor: E) -> Result<Self, EngineError> {
        validate_config(&config)?;
        let vocab_size = executor.vocab_size();
        if vocab_size == 0 || vocab_size > u32::MAX as usize {
            return Err(EngineError::Config(format!(
                "executor vocab_size {vocab_size} must be in 1..={}",
                u32::MAX
            )));
        }
        Ok(Engine {
            sched: Scheduler::new(config.clone()),
            config,
            executor,
            vocab_size,
            requests: BTreeMap::new(),
            next_request: 0,
            detokenizer: None,
            stop_scans: BTreeMap::new(),
            stop_token_ids: Vec::new(),
            finished: Vec::new(),
            metrics: Metrics::new(),
            started: None,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn executor(&self) -> &E {
        &self.executor
    }

    pub fn executor_mut(&mut self) -> &mut E {
        &mut self.executor
    }

    /// Enables stop strings and [`SampleOutput::text`].
    pub fn set_detokenizer(&mut self, f: Detokenizer) {
        self.detokenizer = Some(f);
    }

    /// Stop token ids for every request (EOS), on top of each request's own.
    pub fn set_stop_token_ids(&mut self, ids: Vec<u32>) {
        self.stop_token_ids = ids;
    }

    /// Queues a request. Rejected (with the limit named): an empty prompt, a token outside the
    /// vocabulary, `n` outside `1..=MAX_SAMPLES`, `max_new_tokens` 0, prompt plus
    /// `max_new_tokens` over `max_seq_len`, bad temperature / top_k / top_p, an empty stop
    /// string, or stop strings without a detokenizer.
    ///
    /// Without `params.seed` the request id is the seed. Sample `i` draws from
    /// `sample_rng(seed, i)`.
    pub fn submit(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<RequestId, EngineError> {
        let reject = |m: String| Err(EngineError::Request(m));
        if prompt.is_empty() {
            return reject("empty prompt (at least 1 token)".into());
        }
        if let Some((i, t)) = prompt
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.vocab_size)
        {
            return reject(format!(
                "prompt token {t} at position {i} is outside the vocabulary of {}",
                self.vocab_size
            ));
        }
        if params.n == 0 || params.n > MAX_SAMPLES {
            return reject(format!(
                "n = {} samples; must be in 1..={MAX_SAMPLES}",
                params.n
            ));
        }
        if params.max_new_tokens == 0 {
            return reject("max_new_tokens 0; must be >= 1".into());
        }
        let total = prompt.len().saturating_add(params.max_new_tokens);
        if total > self.config.max_seq_len {
            return reject(format!(
                "prompt of {} tokens + max_new_tokens {} exceeds max_seq_len {}",
                prompt.len(),
                params.max_new_tokens,
                self.config.max_seq_len
            ));
        }
        validate_params(&params).map_err(EngineError::Request)?;
        if params.stop_strings.iter().any(String::is_empty) {
            return reject("empty stop string".into());
        }
        if !params.stop_strings.is_empty() && self.detokenizer.is_none() {
            return reject("stop_strings need a detokenizer (Engine::set_detokenizer)".into());
        }

        let id = self.next_request;
        self.next_request += 1;
        let seed = params.seed.unwrap_or(id);
        let prompt_len = prompt.len();
        self.sched
            .add_waiting(Sequence::new(id, 0, prompt, sample_rng(seed, 0)));
        self.requests.insert(
            id,
            RequestState {
                outputs: vec![None; params.n],
                params,
                seed,
                prompt_len,
                arrival: Instant::now(),
                first_token: None,
                forked: false,
            },
        );
        Ok(id)
    }

    /// Drops request `id` wherever it is (waiting, running, some samples finished): its
    /// sequences leave the scheduler and their pages return to the pool now; nothing of it is
    /// reported as finished. Returns whether the request was live.
    pub fn cancel(&mut self, id: RequestId) -> Result<bool, EngineError> {
        if self.requests.remove(&id).is_none() {
            return Ok(false);
        }
        for seq in self.sched.seqs_of(id) {
            self.sched.finish(seq)?;
            self.stop_scans.remove(&seq);
        }
        self.metrics.record_cancelled();
        Ok(true)
    }

    /// Whether any request is unfinished.
    pub fn has_work(&self) -> bool {
        self.sched.has_work()
    }

    pub fn stats(&self) -> DecodeStats {
        let a = self.sched.allocator();
        DecodeStats {
            active_seqs: self.sched.num_running(),
            waiting: self.sched.num_waiting(),
            pages_in_use: a.in_use(),
            pages_free: a.free(),
            pages_cached: a.cached(),
            max_refcount: a.max_refcount(),
            prefix_queried_tokens: self.sched.prefix_stats().queried_tokens,
            prefix_hit_tokens: self.sched.prefix_stats().hit_tokens,
        }
    }

    /// Keeps full KV pages after their last sequence and reuses them for any later sequence
    /// with the same prefix of tokens (keyed by a hash chained over the tokens): such a
    /// sequence prefills only the rest. Call before submitting anything.
    pub fn enable_prefix_caching(&mut self) {
        self.sched.enable_prefix_caching();
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Starts the metrics afresh (e.g. after a warm-up workload); queues and pages are untouched.
    pub fn reset_metrics(&mut self) {
        self.metrics = Metrics::new();
        self.started = None;
    }

    /// The page pool (refcounts), for inspection.
    pub fn page_allocator(&self) -> &PageAllocator {
        self.sched.allocator()
    }

    /// Every live sequence with its page table: running in admission order, then waiting.
    pub fn sequences(&self) -> Vec<SeqView> {
        self.sched.views()
    }

    /// Pool and page-table consistency (see [`Scheduler::check_invariants`]).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.sched.check_invariants()
    }

    /// Requests finished since the last call, in finishing order.
    pub fn take_finished(&mut self) -> Vec<FinishedRequest> {
        std::mem::take(&mut self.finished)
    }

    /// Steps until no work is left; returns the requests finished meanwhile (and any finished
    /// before and not yet taken).
    pub fn run_to_completion(&mut self) -> Result<Vec<FinishedRequest>, EngineError> {
        while self.has_work() {
            self.step()?;
        }
        Ok(self.take_finished())
    }

    fn snapshot(&self) -> PageSnapshot {
        let a = self.sched.allocator();
        PageSnapshot {
            in_use: a.in_use(),
            free: a.free(),
        }
    }

    /// One scheduling round: schedule, run the executor, sample, apply stop conditions, free
    /// finished sequences. Returns the tokens generated in this round. On an executor error
    /// (or an unsampleable logits row) nothing is committed and the same chunks are scheduled
    /// again next time.
    pub fn step(&mut self) -> Result<Vec<TokenEvent>, EngineError> {
        if !self.has_work() {
            return Ok(Vec::new());
        }
        let t0 = Instant::now();
        let started = *self.started.get_or_insert(t0);
        let schedule = self.sched.schedule()?;
        for _ in &schedule.preempted {
            self.metrics.record_preemption();
        }
        if schedule.chunks.is_empty() {
            return Err(bug("work pending but nothing could be scheduled"));
        }
        let (mut batch, sampling) = self.sched.build_batch(&schedule.chunks)?;
        batch.argmax_only = self.all_greedy(&schedule.chunks, &sampling)?;
        // Decode rows: one-token chunks of a sequence's latest generated token. Everything
        // else (prompt chunks, recomputation after preemption, fork tails) is prefill work.
        let mut prefill_tokens = 0;
        for c in &schedule.chunks {
            let s = self.sched.seq(c.seq)?;
            if !(c.len == 1 && c.start >= s.prompt_len && c.start + 1 == s.tokens.len()) {
                prefill_tokens += c.len;
            }
        }
        let logits = self.executor.step(&batch)?;
        let v = self.vocab_size;
        if logits.len() != batch.logits_rows.len() * v {
            return Err(EngineError::Executor(format!(
                "returned {} logits for {} rows x vocab {v}",
                logits.len(),
                batch.logits_rows.len()
            )));
        }

        // Build every distribution before committing anything, so a bad row leaves no trace.
        let sampled: Vec<Chunk> = schedule
            .chunks
            .iter()
            .zip(&sampling)
            .filter(|(_, &s)| s)
            .map(|(c, _)| *c)
            .collect();
        // A row with a non-finite logit gets no distribution: its sample fails alone.
        let mut dists = Vec::with_capacity(sampled.len());
        for (row, chunk) in sampled.iter().enumerate() {
            let (req, params) = self.params_of(chunk.seq)?;
            let row_logits = &logits[row * v..(row + 1) * v];
            if row_logits.iter().any(|x| !x.is_finite()) {
                dists.push(None);
                continue;
            }
            let dist = Distribution::new(row_logits, params).map_err(|e| {
                EngineError::Executor(format!("request {req}, logits row {row}: {e}"))
            })?;
            dists.push(Some(dist));
        }
        self.sched.commit(&schedule.chunks)?;

        let now = Instant::now();
        let mut events = Vec::new();
        let mut prefill_done = false;
        for (chunk, dist) in sampled.iter().zip(&dists) {
            let seq = self.sched.seq(chunk.seq)?;
            let (req_id, sample, first) = (seq.request, seq.sample, seq.generated().is_empty());
            prefill_done |= first && sample == 0;
            let req = self
                .requests
                .get_mut(&req_id)
                .ok_or_else(|| bug(format!("unknown request {req_id}")))?;
            let Some(dist) = dist else {
                self.metrics.record_non_finite();
                let text = self.detokenizer.as_ref().map(|d| d(seq.generated()));
                events.push(TokenEvent {
                    request: req_id,
                    sample,
                    token: None,
                    finished: Some(FinishReason::NonFiniteLogits),
                });
                self.finish_sample(chunk.seq, FinishReason::NonFiniteLogits, text, now)?;
                continue;
            };
            req.first_token.get_or_insert(now);
            let mut targets = vec![chunk.seq];
            if sample == 0 && !req.forked && req.params.n > 1 {
                req.forked = true;
                let (seed, n) = (req.seed, req.params.n);
                for i in 1..n {
                    let child = self.sched.fork(chunk.seq, i, sample_rng(seed, i))?;
                    targets.push(child);
                }
            }
            for id in targets {
                let seq = self.sched.seq_mut(id)?;
                let token = dist.draw(&mut seq.rng);
                seq.tokens.push(token);
                let sample = seq.sample;
                let finished = self.stop_reason(id)?;
                events.push(TokenEvent {
                    request: req_id,
                    sample,
                    token: Some(token),
                    finished: finished.as_ref().map(|(r, _)| r.clone()),
                });
                if let Some((reason, text)) = finished {
                    self.finish_sample(id, reason, text, now)?;
                }
            }
        }

        let end = Instant::now();
        let setup = self.executor.take_setup_time();
        self.metrics.record_setup(setup);
        self.metrics.record_step(
            StepRecord {
                duration: (end - t0).saturating_sub(setup),
                tokens: batch.token_ids.len(),
                prefill_tokens,
                seqs: batch.seqs.len(),
                sampled: events.len(),
            },
            end - started,
        );
        let pages = self.snapshot();
        self.metrics.record_pages(pages);
        if prefill_done {
            self.metrics.record_first_prefill(pages);
        }
        if !self.has_work() {
            self.metrics.record_idle(pages);
        }
        Ok(events)
    }

    /// Why `id` stops after its latest token, with its text (cut before a stop string).
    /// Precedence on one token: stop token, stop string, max_new_tokens, max_seq_len.
    fn stop_reason(
        &mut self,
        id: SeqId,
    ) -> Result<Option<(FinishReason, Option<String>)>, EngineError> {
        let seq = self.sched.seq(id)?;
        let req = self
            .requests
            .get(&seq.request)
            .ok_or_else(|| bug(format!("unknown request {}", seq.request)))?;
        let p = &req.params;
        let generated = seq.generated();
        let Some(&last) = generated.last() else {
            return Ok(None);
        };
        // Detokenize only when a stop string may match or the sample ends (for its text).
        let detok = || self.detokenizer.as_ref().map(|d| d(generated));
        if (!p.ignore_eos && self.stop_token_ids.contains(&last))
            || p.stop_token_ids.contains(&last)
        {
            return Ok(Some((FinishReason::StopToken, detok())));
        }
        if let (false, Some(d)) = (p.stop_strings.is_empty(), self.detokenizer.as_ref()) {
            let scan = self.stop_scans.entry(id).or_default();
            if stop_string_may_end_here(scan, generated, d, &p.stop_strings) {
                // The cut is taken in the whole decode, as the finished text is.
                let t = d(generated);
                let cut = p
                    .stop_strings
                    .iter()
                    .filter_map(|s| t.find(s.as_str()))
                    .min();
                if let Some(cut) = cut {
                    return Ok(Some((FinishReason::StopString, Some(t[..cut].to_string()))));
                }
            }
        }
        let reason = if generated.len() >= p.max_new_tokens {
            FinishReason::Length
        } else if seq.tokens.len() >= self.config.max_seq_len {
            FinishReason::MaxSeqLen
        } else {
            return Ok(None);
        };
        Ok(Some((reason, detok())))
    }

    /// Whether every chunk that samples this step samples greedily (its logits row then needs
    /// only its argmax exact: [`StepBatch::argmax_only`]).
    fn all_greedy(&self, chunks: &[Chunk], sampling: &[bool]) -> Result<bool, EngineError> {
        for (c, _) in chunks.iter().zip(sampling).filter(|(_, &s)| s) {
            if !is_greedy(self.params_of(c.seq)?.1) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The request of sequence `seq`, and its sampling parameters.
    fn params_of(&self, seq: SeqId) -> Result<(RequestId, &SamplingParams), EngineError> {
        let req = self.sched.seq(seq)?.request;
        let r = self
            .requests
            .get(&req)
            .ok_or_else(|| bug(format!("sequence of unknown request {req}")))?;
        Ok((req, &r.params))
    }

    fn finish_sample(
        &mut self,
        id: SeqId,
        reason: FinishReason,
        text: Option<String>,
        now: Instant,
    ) -> Result<(), EngineError> {
        let seq = self.sched.finish(id)?;
        self.stop_scans.remove(&id);
        let req_id = seq.request;
        let req = self
            .requests
            .get_mut(&req_id)
            .ok_or_else(|| bug(format!("unknown request {req_id}")))?;
        if seq.sample >= req.outputs.len() {
            return Err(bug(format!(
                "request {req_id} has no sample {}",
                seq.sample
            )));
        }
        let output = SampleOutput {
            tokens: seq.generated().to_vec(),
            finish_reason: reason,
            text,
            finished_at: now,
        };
        // Samples 1.. fork off sample 0's first token: if sample 0 fails before that, so do they.
        if output.finish_reason.is_error() && seq.sample == 0 && !req.forked {
            req.forked = true;
            for other in req.outputs.iter_mut().skip(1) {
                *other = Some(output.clone());
            }
        }
        req.outputs[seq.sample] = Some(output);
        if req.outputs.iter().all(Option::is_some) {
            let Some(req) = self.requests.remove(&req_id) else {
                return Err(bug(format!("request {req_id} vanished")));
            };
            let samples: Vec<SampleOutput> = req.outputs.into_iter().flatten().collect();
            let first = req.first_token.unwrap_or(now);
            self.metrics.record_request(
                first.duration_since(req.arrival),
                now.duration_since(req.arrival),
                samples
                    .iter()
                    .map(|s| (s.finished_at.duration_since(first), s.tokens.len())),
            );
            self.finished.push(FinishedRequest {
                id: req_id,
                prompt_len: req.prompt_len,
                samples,
                arrival: req.arrival,
                first_token: first,
                finished: now,
            });
        }
        Ok(())
    }
}
