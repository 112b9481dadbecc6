//! A decode step program taken apart from the inside, from the host kernels' own timeline
//! ([`runtime::kernels::timeline`]): `bench decode` records one round per batch and splits each
//! decode step into the time before the first kernel, the kernels by kind, the time between
//! them (XLA's own ops: RoPE, KV writes, SiLU, the embedding; and each call's overhead), and the
//! time after the last kernel until the logits are on the host.

use runtime::kernels::timeline::{Span, What};
use serde::Serialize;

/// Means over the recorded decode steps, in milliseconds; the parts sum to `step_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct InsideStep {
    /// Decode steps recorded (those with at least one host kernel call).
    pub steps: usize,
    /// From `execute` until the first kernel starts: the PJRT call with its arguments, XLA's
    /// set-up of the run, the ops before the first kernel.
    pub start_ms: f64,
    /// The projections (QKV, O, gate/up, down, with their fused norms and residual adds).
    pub projections_ms: f64,
    /// The attention kernel.
    pub attention_ms: f64,
    /// The LM head.
    pub lm_head_ms: f64,
    /// Between one kernel's end and the next one's start.
    pub between_ms: f64,
    /// From the last kernel's end until the logits are on the host.
    pub finish_ms: f64,
    /// From `execute` until the logits are on the host.
    pub step_ms: f64,
}

impl InsideStep {
    /// The parts' sum: `step_ms` up to rounding.
    pub fn parts_ms(&self) -> f64 {
        self.start_ms
            + self.projections_ms
            + self.attention_ms
            + self.lm_head_ms
            + self.between_ms
            + self.finish_ms
    }
}

/// Takes apart every decode step of `spans` that holds kernel calls; `None` if none does (a
/// program without host kernels, or nothing recorded).
pub fn take_apart(spans: &[Span]) -> Option<InsideStep> {
    let mut kernels: Vec<&Span> = spans
        .iter()
        .filter(|s| !matches!(s.what, What::Step { .. }))
        .collect();
    kernels.sort_by_key(|s| s.start);
    let mut sum = InsideStep::default();
    let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1e3;
    for step in spans
        .iter()
        .filter(|s| s.what == What::Step { decode: true })
    {
        let first = kernels.partition_point(|k| k.start < step.start);
        let inside: Vec<&Span> = kernels[first..]
            .iter()
            .take_while(|k| k.start < step.end)
            .filter(|k| k.end <= step.end)
            .copied()
            .collect();
        let (Some(head), Some(last_end)) = (inside.first(), inside.iter().map(|k| k.end).max())
        else {
            continue;
        };
        let mut busy = 0.0;
        for k in &inside {
            let d = ms(k.start, k.end);
            busy += d;
            match k.what {
                What::Attention => sum.attention_ms += d,
                What::Projection => sum.projections_ms += d,
                What::LmHead => sum.lm_head_ms += d,
                What::Step { .. } => {}
            }
        }
        sum.steps += 1;
        sum.start_ms += ms(step.start, head.start);
        sum.between_ms += ms(head.start, last_end) - busy;
        sum.finish_ms += ms(last_end, step.end);
        sum.step_ms += ms(step.start, step.end);
    }
    if sum.steps == 0 {
        return None;
    }
    let n = sum.steps as f64;
    let parts = [
        &mut sum.start_ms,
        &mut sum.projections_ms,
        &mut sum.attention_ms,
        &mut sum.lm_head_ms,
        &mut sum.between_ms,
        &mut sum.finish_ms,
        &mut sum.step_ms,
    ];
    parts.into_iter().for_each(|ms| *ms /= n);
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Spans at microsecond offsets from one instant.
    fn span(t0: Instant, what: What, start_us: u64, end_us: u64) -> Span {
        Span {
            what,
            start: t0 + Duration::from_micros(start_us),
            end: t0 + Duration::from_micros(end_us),
        }
    }

    #[test]
    fn a_step_splits_into_parts_that_sum_to_it() {
        let t0 = Instant::now();
        let decode = What::Step { decode: true };
        let spans = [
            // A kernel before any step (another program's) is not counted.
            span(t0, What::Projection, 0, 50),
            span(t0, What::Projection, 1200, 1300),
            span(t0, What::Attention, 1310, 1330),
            span(t0, What::Projection, 1340, 1400),
            span(t0, What::LmHead, 1405, 1500),
            span(t0, decode, 1000, 1700),
            // A mixed (prefill) step and its kernel are left out.
            span(t0, What::Projection, 2100, 2200),
            span(t0, What::Step { decode: false }, 2000, 2300),
            // A decode step without host kernels (a portable program) is skipped.
            span(t0, decode, 3000, 3100),
            span(t0, What::Projection, 4100, 4200),
            span(t0, What::LmHead, 4300, 4400),
            span(t0, decode, 4000, 4500),
        ];
        let got = take_apart(&spans).unwrap();
        assert_eq!(got.steps, 2);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // Step 1: start 0.2, projections 0.16, attention 0.02, head 0.095, between 0.025,
        // finish 0.2 of 0.7 ms; step 2: 0.1, 0.1, 0, 0.1, 0.1, 0.1 of 0.5 ms.
        assert!(close(got.start_ms, 0.15), "{got:?}");
        assert!(close(got.projections_ms, 0.13), "{got:?}");
        assert!(close(got.attention_ms, 0.01), "{got:?}");
        assert!(close(got.lm_head_ms, 0.0975), "{got:?}");
        assert!(close(got.between_ms, 0.0625), "{got:?}");
        assert!(close(got.finish_ms, 0.15), "{got:?}");
        assert!(close(got.step_ms, 0.6), "{got:?}");
        assert!(close(got.parts_ms(), got.step_ms));
    }

    #[test]
    fn nothing_recorded_gives_none() {
        let t0 = Instant::now();
        assert_eq!(take_apart(&[]), None);
        let only_steps = [span(t0, What::Step { decode: true }, 0, 10)];
        assert_eq!(take_apart(&only_steps), None);
    }
}
