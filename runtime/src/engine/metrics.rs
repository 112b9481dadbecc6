//! Serving metrics: step timings, throughput, latency distributions, page-pool snapshots.
//!
//! [`Metrics`] accumulates raw observations as the engine steps; [`Metrics::report`] condenses
//! them into a [`MetricsReport`] (what `--json-metrics` prints via [`Metrics::to_json`]).

use std::time::Duration;

use serde::Serialize;

/// Pages in use / free at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PageSnapshot {
    pub in_use: usize,
    pub free: usize,
}

/// Order statistics of a set of observations (nearest-rank percentiles).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summary of `values` (all zeros when empty). NaNs sort last.
    pub fn of(values: &[f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let r = (q * v.len() as f64).ceil() as usize;
            v[r.clamp(1, v.len()) - 1]
        };
        Summary {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v[0],
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// Steps whose token count falls in `(previous bucket's le, le]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub le: usize,
    pub steps: usize,
}

/// What one step did, as the engine reports it to [`Metrics::record_step`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepRecord {
    pub duration: Duration,
    /// Rows fed to the executor.
    pub tokens: usize,
    /// Rows that were prefill (prompt chunks, recomputation after preemption, fork tails).
    pub prefill_tokens: usize,
    /// Sequences in the step.
    pub seqs: usize,
    /// Tokens sampled this step.
    pub sampled: usize,
}

/// Accumulated observations.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Wall time from the start of the first step to the end of the latest one.
    total: Duration,
    /// Sum of step durations.
    busy: Duration,
    prefill_time: Duration,
    decode_only_time: Duration,
    steps: usize,
    prefill_steps: usize,
    prefill_tokens: usize,
    decode_tokens: usize,
    decode_only_sampled: usize,
    decode_only_steps: usize,
    sampled_tokens: usize,
    preemptions: usize,
    non_finite_samples: usize,
    requests_finished: usize,
    requests_cancelled: usize,
    ttft: Vec<f64>,
    tpot: Vec<f64>,
    e2e: Vec<f64>,
    tokens_per_step: Vec<usize>,
    seqs_per_step: Vec<usize>,
    pages_after_first_prefill: Option<PageSnapshot>,
    pages_after_decode: Option<PageSnapshot>,
    peak_pages_in_use: usize,
    /// One-time setup (program compiles) left out of step times.
    setup: Duration,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::default()
    }

    /// One-time setup the executor did inside a step (excluded from step times).
    pub fn record_setup(&mut self, d: Duration) {
        self.setup += d;
    }

    /// One finished step; `wall` is the time since the first step started.
    pub fn record_step(&mut self, step: StepRecord, wall: Duration) {
        self.total = self.total.max(wall);
        self.busy += step.duration;
        self.steps += 1;
        self.prefill_tokens += step.prefill_tokens;
        self.decode_tokens += step.tokens - step.prefill_tokens.min(step.tokens);
        self.sampled_tokens += step.sampled;
        if step.prefill_tokens > 0 {
            self.prefill_steps += 1;
            self.prefill_time += step.duration;
        } else {
            self.decode_only_time += step.duration;
            self.decode_only_sampled += step.sampled;
            self.decode_only_steps += 1;
        }
        self.tokens_per_step.push(step.tokens);
        self.seqs_per_step.push(step.seqs);
    }

    pub fn record_preemption(&mut self) {
        self.preemptions += 1;
    }

    /// A request was cancelled before it finished (its client went away).
    pub fn record_cancelled(&mut self) {
        self.requests_cancelled += 1;
    }

    pub fn requests_cancelled(&self) -> usize {
        self.requests_cancelled
    }

    /// A sample stopped on a non-finite logits row ([`super::FinishReason::NonFiniteLogits`]).
    pub fn record_non_finite(&mut self) {
        self.non_finite_samples += 1;
    }

    pub fn non_finite_samples(&self) -> usize {
        self.non_finite_samples
    }

    /// Pool occupancy after a step.
    pub fn record_pages(&mut self, pages: PageSnapshot) {
        self.peak_pages_in_use = self.peak_pages_in_use.max(pages.in_use);
    }

    /// Snapshot after the first step in which some prompt finished prefilling (kept once).
    pub fn record_first_prefill(&mut self, pages: PageSnapshot) {
        self.pages_after_first_prefill.get_or_insert(pages);
    }

    /// Snapshot when the engine runs out of work (the latest such moment).
    pub fn record_idle(&mut self, pages: PageSnapshot) {
        self.pages_after_decode = Some(pages);
    }

    /// One request finished: its time to first token, end-to-end latency, and per sample the
    /// time from first token to that sample's finish with its generated token count.
    pub fn record_request(
        &mut self,
        ttft: Duration,
        e2e: Duration,
        samples: impl IntoIterator<Item = (Duration, usize)>,
    ) {
        self.requests_finished += 1;
        self.ttft.push(ttft.as_secs_f64());
        self.e2e.push(e2e.as_secs_f64());
        for (decode, tokens) in samples {
            if tokens >= 2 {
                self.tpot.push(decode.as_secs_f64() / (tokens - 1) as f64);
            }
        }
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    pub fn preemptions(&self) -> usize {
        self.preemptions
    }

    pub fn prefill_tokens(&self) -> usize {
        self.prefill_tokens
    }

    pub fn decode_tokens(&self) -> usize {
        self.decode_tokens
    }

    pub fn sampled_tokens(&self) -> usize {
        self.sampled_tokens
    }

    pub fn requests_finished(&self) -> usize {
        self.requests_finished
    }

    pub fn tokens_per_step(&self) -> &[usize] {
        &self.tokens_per_step
    }

    pub fn pages_after_first_prefill(&self) -> Option<PageSnapshot> {
        self.pages_after_first_prefill
    }

    pub fn pages_after_decode(&self) -> Option<PageSnapshot> {
        self.pages_after_decode
    }

    pub fn peak_pages_in_use(&self) -> usize {
        self.peak_pages_in_use
    }

    /// The condensed, serializable view.
    pub fn report(&self) -> MetricsReport {
        let per_s = |n: usize, d: Duration| {
            let s = d.as_secs_f64();
            if s > 0.0 {
                n as f64 / s
            } else {
                0.0
            }
        };
        let tokens: Vec<f64> = self.tokens_per_step.iter().map(|&t| t as f64).collect();
        let seqs: Vec<f64> = self.seqs_per_step.iter().map(|&t| t as f64).collect();
        let mut buckets: Vec<Bucket> = Vec::new();
        for &t in &self.tokens_per_step {
            let le = t.max(1).next_power_of_two();
            match buckets.iter_mut().find(|b| b.le == le) {
                Some(b) => b.steps += 1,
                None => buckets.push(Bucket { le, steps: 1 }),
            }
        }
        buckets.sort_by_key(|b| b.le);
        MetricsReport {
            total_time_s: self.total.as_secs_f64(),
            setup_time_s: self.setup.as_secs_f64(),
            busy_time_s: self.busy.as_secs_f64(),
            prefill_time_s: self.prefill_time.as_secs_f64(),
            decode_only_time_s: self.decode_only_time.as_secs_f64(),
            decode_only_steps: self.decode_only_steps,
            steps: self.steps,
            prefill_steps: self.prefill_steps,
            prefill_tokens: self.prefill_tokens,
            decode_tokens: self.decode_tokens,
            sampled_tokens: self.sampled_tokens,
            decode_tokens_per_s: per_s(self.decode_only_sampled, self.decode_only_time),
            output_tokens_per_s: per_s(self.sampled_tokens, self.total),
            requests_finished: self.requests_finished,
            requests_cancelled: self.requests_cancelled,
            preemptions: self.preemptions,
            non_finite_samples: self.non_finite_samples,
            ttft_s: Summary::of(&self.ttft),
            tpot_s: Summary::of(&self.tpot),
            e2e_latency_s: Summary::of(&self.e2e),
            tokens_per_step: Summary::of(&tokens),
            tokens_per_step_buckets: buckets,
            seqs_per_step: Summary::of(&seqs),
            pages_after_first_prefill: self.pages_after_first_prefill,
            pages_after_decode: self.pages_after_decode,
            peak_pages_in_use: self.peak_pages_in_use,
        }
    }

    /// [`Metrics::report`] as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain numbers and strings cannot fail; keep a readable fallback anyway.
        serde_json::to_string_pretty(&self.report())
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// What `--json-metrics` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricsReport {
    /// Wall time from the first step's start to the latest step's end.
    pub total_time_s: f64,
    /// One-time setup (compiling step programs on first use), excluded from the step times below.
    pub setup_time_s: f64,
    /// Time inside steps.
    pub busy_time_s: f64,
    /// Time in steps that contained prefill tokens.
    pub prefill_time_s: f64,
    /// Time in steps with only decode tokens.
    pub decode_only_time_s: f64,
    /// Steps with only decode tokens.
    pub decode_only_steps: usize,
    pub steps: usize,
    pub prefill_steps: usize,
    /// Rows that were prefill work (prompt chunks, recomputation, fork tails).
    pub prefill_tokens: usize,
    /// Rows that were single-token decodes.
    pub decode_tokens: usize,
    /// Tokens generated (sampled).
    pub sampled_tokens: usize,
    /// Tokens sampled in decode-only steps per second of those steps.
    pub decode_tokens_per_s: f64,
    /// All tokens sampled per second of total time.
    pub output_tokens_per_s: f64,
    pub requests_finished: usize,
    /// Requests cancelled before they finished (not in `requests_finished`).
    pub requests_cancelled: usize,
    pub preemptions: usize,
    /// Logits rows that held a NaN or an infinity, each stopping its sample with finish reason
    /// `non_finite_logits` (a request's n samples failing together on the row they would have
    /// forked from count once).
    pub non_finite_samples: usize,
    /// Time to first token per request.
    pub ttft_s: Summary,
    /// Time per output token after the first, per sample.
    pub tpot_s: Summary,
    /// Arrival to last sample finished, per request.
    pub e2e_latency_s: Summary,
    pub tokens_per_step: Summary,
    /// Histogram of tokens per step, power-of-two buckets.
    pub tokens_per_step_buckets: Vec<Bucket>,
    pub seqs_per_step: Summary,
    pub pages_after_first_prefill: Option<PageSnapshot>,
    pub pages_after_decode: Option<PageSnapshot>,
    pub peak_pages_in_use: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn summary_order_statistics(v in prop::collection::vec(-1e6f64..1e6, 1..200)) {
            let s = Summary::of(&v);
            let mut sorted = v.clone();
            sorted.sort_by(f64::total_cmp);
            prop_assert_eq!(s.count, v.len());
            prop_assert_eq!(s.min, sorted[0]);
            prop_assert_eq!(s.max, sorted[v.len() - 1]);
            prop_assert!(s.min <= s.p50 && s.p50 <= s.p99 && s.p99 <= s.max);
            // Nearest rank: at least q of the values are <= the q-quantile.
            let below = |x: f64| sorted.iter().filter(|&&y| y <= x).count() as f64;
            prop_assert!(below(s.p50) >= 0.5 * v.len() as f64);
            prop_assert!(below(s.p99) >= 0.99 * v.len() as f64);
            prop_assert!(s.min <= s.mean && s.mean <= s.max);
        }

        #[test]
        fn step_accounting(steps in prop::collection::vec((1usize..64, 0usize..64, 1u64..1000), 0..50)) {
            let mut m = Metrics::new();
            let mut wall = Duration::ZERO;
            let (mut pre, mut all, mut pre_steps) = (0, 0, 0);
            for &(tokens, prefill, micros) in &steps {
                let prefill = prefill.min(tokens);
                let d = Duration::from_micros(micros);
                wall += d;
                m.record_step(StepRecord { duration: d, tokens, prefill_tokens: prefill, seqs: 1, sampled: 1 }, wall);
                pre += prefill;
                all += tokens;
                pre_steps += usize::from(prefill > 0);
            }
            let r = m.report();
            prop_assert_eq!(r.steps, steps.len());
            prop_assert_eq!(r.prefill_tokens, pre);
            prop_assert_eq!(r.decode_tokens, all - pre);
            prop_assert_eq!(r.prefill_steps, pre_steps);
            prop_assert_eq!(r.tokens_per_step_buckets.iter().map(|b| b.steps).sum::<usize>(), steps.len());
            for &(tokens, _, _) in &steps {
                let b = r.tokens_per_step_buckets.iter().find(|b| b.le >= tokens).unwrap();
                prop_assert!(b.le < 2 * tokens || tokens == 1);
            }
            prop_assert!((r.prefill_time_s + r.decode_only_time_s - r.busy_time_s).abs() < 1e-9);
            prop_assert_eq!(r.prefill_steps + r.decode_only_steps, r.steps);
            let json: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
            prop_assert_eq!(json["steps"].as_u64(), Some(steps.len() as u64));
        }
    }
}
