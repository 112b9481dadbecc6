//! Property: the emitted StableHLO kernel, compiled and run by the real PJRT CPU plugin, matches
//! the f64 reference on random geometries, block sizes and ragged batches, in each of its three
//! forms (sequential and batched StableHLO, and the host kernel's FFI custom call); the host
//! kernel also on page sizes from 1 to 128.
//!
//! Tolerances (normwise: max |out - ref| / max |ref| over valid rows): f32 1e-5; bf16 inputs with
//! f32 accumulation 2e-2 against the reference on the same bf16-rounded inputs. Padding rows must
//! be finite and repeated runs bit-identical. `PROPTEST_CASES` overrides the 64 cases.
//!
//! Each case runs one clean batch and one whose unowned KV slots, padding query rows and unused
//! page-table entries are poisoned (NaN, +Inf or -Inf; page ids out of range), compared with the
//! reference on the clean batch: the kernel must ignore whatever it does not own.

use e2e::client;
use kernelgen::config::{Dtype, Geometry, KernelConfig, KernelParams, Schedule};
use kernelgen::emit::stablehlo;
use kernelgen::numerics::{tolerance, KernelRunner};
use proptest::prelude::*;
use verify::{BatchSpec, Poison};

#[derive(Debug, Clone)]
struct Case {
    cfg: KernelConfig,
    spec: BatchSpec,
    seed: u64,
    poison: Poison,
}

/// The three forms on the page sizes every form is tuned for.
fn case() -> impl Strategy<Value = Case> {
    case_with(
        vec![8, 16, 32, 64],
        vec![Schedule::Sequential, Schedule::Batched, Schedule::Host],
    )
}

/// Cases of `schedules` drawn with page sizes from `pages`.
fn case_with(pages: Vec<u32>, schedules: Vec<Schedule>) -> impl Strategy<Value = Case> {
    let heads = (0u32..4, 0u32..4).prop_map(|(a, b)| {
        let (q, kv) = (1 << a.max(b), 1 << a.min(b));
        (q, kv)
    });
    let shapes = (
        heads,
        prop_oneof![Just(64u32), Just(128)],
        prop::sample::select(pages),
        prop_oneof![Just(Dtype::F32), Just(Dtype::Bf16)],
        1u32..=48, // max_num_tokens
        1u32..=6,  // max_num_seqs
        1u32..=8,  // pages_per_seq
        0u32..=4,  // extra pages in the pool
    );
    let attention = (
        prop::option::weighted(0.3, 1u32..=80),
        prop::option::weighted(0.3, 1.0f32..30.0),
        0.0f64..=1.0,
        0.0f64..=1.0,
        any::<u64>(),
        prop::sample::select(schedules),
        prop::sample::select(Poison::ALL.to_vec()),
    );
    (shapes, attention)
        .prop_flat_map(|(s, a)| {
            let (_, _, _, _, tokens, _, pps, _) = s;
            (Just(s), Just(a), 1u32..=tokens, 1u32..=pps)
        })
        .prop_map(
            |(
                (heads, d, p, dtype, t, seqs, pps, extra),
                (w, cap, dec, full, seed, schedule, poison),
                q,
                kv,
            )| {
                let (decode_fraction, rest) = (dec * 0.8, 1.0 - dec * 0.8);
                let cfg = KernelConfig::new(KernelParams {
                    geometry: Geometry {
                        num_q_heads: heads.0,
                        num_kv_heads: heads.1,
                        head_dim: d,
                    },
                    dtype,
                    page_size: p,
                    q_block: q,
                    kv_pages_block: kv,
                    max_num_tokens: t,
                    max_num_seqs: seqs,
                    pages_per_seq: pps,
                    total_pages: seqs * pps + extra,
                    sm_scale: None,
                    sliding_window: w,
                    soft_cap: cap,
                    schedule,
                })
                .expect("strategy draws valid configs");
                let spec = BatchSpec {
                    num_seqs: None,
                    decode_fraction,
                    full_prefill_fraction: rest * full,
                    kv_len: None,
                };
                Case {
                    cfg,
                    spec,
                    seed,
                    poison,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        max_shrink_iters: 16,
        ..ProptestConfig::default()
    })]

    #[test]
    fn emitted_kernel_matches_f64_reference(c in case()) {
        check_case(&c)?;
    }

    /// The host kernel on every page size from 1 to 128 (the portable forms' page sizes are
    /// bounded by their gathers' cost, the host kernel's are not).
    #[test]
    fn host_kernel_matches_f64_reference_on_pages_of_1_to_128(
        c in case_with(vec![1, 2, 4, 8, 16, 32, 64, 128], vec![Schedule::Host])
    ) {
        check_case(&c)?;
    }
}

/// Runs `c` clean and poisoned on the CPU plugin and holds it to the reference.
fn check_case(c: &Case) -> Result<(), TestCaseError> {
    let kernel = stablehlo::emit(&c.cfg).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let runner = KernelRunner::compile(client(), &c.cfg, &kernel.text)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let tol = tolerance(c.cfg.dtype());
    for (i, poison) in [None, Some(c.poison)].into_iter().enumerate() {
        let o = runner
            .check_batch(&c.spec, c.seed.wrapping_add(i as u64), poison)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(
            o.stats.non_finite == 0,
            "{}: non-finite output {:?}",
            c.cfg,
            o.stats
        );
        prop_assert!(o.padding_finite, "{}: padding rows not finite", c.cfg);
        prop_assert!(o.deterministic, "{}: two runs differ", c.cfg);
        prop_assert!(
            o.stats.max_rel <= tol,
            "{}: seqs {:?}: {} > tol {tol}",
            c.cfg,
            o.seqs,
            o.stats
        );
        eprintln!(
            "case {} {:?} {:?} {:?}: {}",
            c.cfg.dtype(),
            c.cfg.schedule(),
            poison,
            o.seqs.len(),
            o.stats
        );
    }
    Ok(())
}

/// The host kernel with a sliding window shorter than a KV chunk, inside query blocks longer
/// than the chunk: rows whose window starts past a chunk see none of it (a case random draws
/// rarely reach). Every dtype, against the f64 reference.
#[test]
fn host_kernel_window_shorter_than_a_chunk_inside_long_query_blocks() {
    for (dtype, window) in [(Dtype::F32, 4), (Dtype::Bf16, 3), (Dtype::F32, 9)] {
        let cfg = KernelConfig::new(KernelParams {
            geometry: Geometry {
                num_q_heads: 4,
                num_kv_heads: 2,
                head_dim: 64,
            },
            dtype,
            page_size: 8,
            q_block: 32,
            kv_pages_block: 1,
            max_num_tokens: 48,
            max_num_seqs: 2,
            pages_per_seq: 6,
            total_pages: 12,
            sm_scale: None,
            sliding_window: Some(window),
            soft_cap: None,
            schedule: Schedule::Host,
        })
        .unwrap();
        let kernel = stablehlo::emit(&cfg).unwrap();
        let runner = KernelRunner::compile(client(), &cfg, &kernel.text).unwrap();
        let spec = BatchSpec {
            num_seqs: Some(1),
            decode_fraction: 0.0,
            full_prefill_fraction: 1.0,
            kv_len: Some(40),
        };
        let o = runner.check_batch(&spec, 3, Some(Poison::Nan)).unwrap();
        assert_eq!(o.seqs, vec![(40, 40)], "{cfg}");
        assert!(o.stats.max_rel <= tolerance(dtype), "{cfg}: {}", o.stats);
    }
}
