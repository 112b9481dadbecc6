//! The VMEM checker against the real TPU compiler, on every committed oracle point
//! (`kernelgen/data/vmem_oracle_jax_rpa.jsonl` for JAX's kernel, `vmem_oracle_kernelgen.jsonl`
//! for the Pallas kernel kernelgen emits: configs compiled deviceless with jax 0.12.0.1 + libtpu
//! 0.0.50.1 at the default scoped limit, plus the bisected smallest limit that compiles).
//!
//! Agreement on the points the fit was made from is a weak check; leave-one-out (each point
//! judged by a fit without it) estimates how the checker does on configs it has not seen, and
//! is gated too, at today's figures: it may only get better.

use kernelgen::tpu::oracle::OraclePoint;
use kernelgen::tpu::CompilerVerdict;
use kernelgen::vmem::calibrate::{
    agreement, committed_points, fit_all, leave_one_out, oracle_verdict,
};
use kernelgen::vmem::KernelModel;
use std::collections::BTreeSet;

const KERNELS: [KernelModel; 2] = [KernelModel::JaxRpa, KernelModel::Kernelgen];

/// Every committed line parses: none is skipped.
fn points(kernel: KernelModel) -> Vec<OraclePoint> {
    let (points, unreadable) = committed_points(kernel);
    assert!(
        unreadable.is_empty(),
        "{kernel:?}: unreadable lines {unreadable:?}"
    );
    points
}

/// Model vs compiler on `kernel`'s committed points: at least `min_points` comparable, on at
/// least `min_targets` targets including `required`, zero disagreements where the model commits,
/// and `uncertain` on at most `max_uncertain_pct` percent.
fn assert_agreement(
    kernel: KernelModel,
    min_points: usize,
    min_targets: usize,
    required: &[&str],
    max_uncertain_pct: usize,
) {
    let a = agreement(&points(kernel));
    let targets: BTreeSet<_> = a.targets.keys().map(|t| t.as_str()).collect();
    eprintln!(
        "{}: {} points on {:?}: {} agree, {} uncertain, {} disagree, {} not compared (compiler errors)",
        kernel.name(),
        a.points,
        targets,
        a.agree,
        a.uncertain,
        a.disagree.len(),
        a.compiler_errors
    );
    assert!(
        a.points >= min_points,
        "only {} comparable points",
        a.points
    );
    assert!(targets.len() >= min_targets, "only {targets:?}");
    for t in required {
        assert!(targets.contains(t), "no points on {t}: {targets:?}");
    }
    assert!(a.disagree.is_empty(), "disagreements: {:#?}", a.disagree);
    assert!(
        a.uncertain * 100 <= max_uncertain_pct * a.points,
        "{} of {} uncertain (> {max_uncertain_pct}%)",
        a.uncertain,
        a.points
    );
}

/// Zero disagreements where the model commits to a verdict; `uncertain` on at most 6% (today's
/// share, `kernelgen calibrate --kernel jax-rpa`: 21 of 369, with the tile form, measured with
/// the operands in HBM).
#[test]
fn jax_rpa_verdict_equals_compiler_verdict_on_every_committed_point() {
    assert_agreement(
        KernelModel::JaxRpa,
        300,
        5,
        &["v5e", "v5p", "v6e", "v7x"],
        6,
    );
}

/// The emitted Pallas kernel on v5e, v5p, v6e and v7x: zero disagreements where the model
/// commits; `uncertain` on at most 1% (today's share: 0 of 201, since its KV pool went
/// head-major, it scores a block in chunks of at most 512 keys (fewer at many rows), one KV
/// head at a time, and its band scales with the spill; 47 of 192 before).
#[test]
fn kernelgen_verdict_equals_compiler_verdict_on_every_committed_point() {
    assert_agreement(
        KernelModel::Kernelgen,
        180,
        4,
        &["v5e", "v5p", "v6e", "v7x"],
        1,
    );
}

/// The committed spill constants are what the committed data fits to: they cannot drift from
/// the measurements (regenerate with `kernelgen calibrate --write kernelgen/src/vmem/spill_fitted.rs`).
#[test]
fn spill_constants_match_a_refit_of_the_data() {
    use kernelgen::target::Target;
    use kernelgen::vmem::spill;
    let all: Vec<_> = KERNELS.iter().flat_map(|&k| points(k)).collect();
    let refit = fit_all(&all);
    assert!(
        refit.models.len() >= 9,
        "one model per kernel and target: {}",
        refit.models.len()
    );
    // Points without a measured minimum limit (errors, timeouts) are the only ones not fitted.
    for why in refit.skipped.keys() {
        assert!(
            why.starts_with("no measured minimum limit"),
            "skipped: {why}"
        );
    }
    for (kernel, target, m) in refit.models {
        let committed = spill::model(kernel, &Target::find(target).unwrap()).unwrap_or_else(|| {
            panic!("no committed model for {target}: run `kernelgen calibrate --write kernelgen/src/vmem/spill_fitted.rs`")
        });
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
        assert!(
            committed.coef.iter().zip(m.coef).all(|(a, b)| close(*a, b))
                && close(committed.under, m.under)
                && close(committed.over, m.over)
                && close(committed.under_abs, m.under_abs)
                && close(committed.over_abs, m.over_abs)
                && committed.points == m.points
                && (committed.max_rows, committed.max_keys) == (m.max_rows, m.max_keys),
            "{target}: committed {committed:?} != refit {m:?}; run `kernelgen calibrate --write kernelgen/src/vmem/spill_fitted.rs`"
        );
    }
}

/// Each kernel's verdict band, relative to the estimated total at its fit points with an
/// estimate of at least a quarter of the default limit (`kernelgen calibrate --kernel K`), no
/// wider than today's on any target: kernelgen's within 5% at the median and 10% at the widest
/// on v5e-v7x, issue 18's targets (today 4.4-5.5% above / 7.2-8.7% below at the widest, the
/// median at most 3.9%), and within 7% and 13% on v4 (today 6.3% / 4.7% at the median, 12% /
/// 9% at the widest, 97 points: its spills scatter more); JAX's within 20% and 21% (today 11-19%
/// above / 13-20% below at the median, 11-20% / 13-21% at the widest), where issue 18 asks for
/// +-10%. A wider band sends more configs to `uncertain`.
#[test]
fn bands_are_no_wider_than_today() {
    for kernel in KERNELS {
        let fit = fit_all(&points(kernel));
        let mut targets = 0;
        for (k, target, w) in &fit.widths {
            assert_eq!(*k, kernel);
            eprintln!("{} {target}: {w:?}", kernel.name());
            assert!(
                w.points >= 20,
                "{target}: {} points above the floor",
                w.points
            );
            let (median, widest) = match (kernel, *target) {
                (KernelModel::Kernelgen, "v4") => (0.07, 0.13),
                (KernelModel::Kernelgen, _) => (0.05, 0.10),
                (KernelModel::JaxRpa, _) => (0.20, 0.21),
            };
            for (what, up, down, most) in [
                ("median", w.median_up, w.median_down, median),
                ("widest", w.max_up, w.max_down, widest),
            ] {
                assert!(
                    up <= most && down <= most,
                    "{} {target}: {what} band +{:.1}% / -{:.1}%",
                    kernel.name(),
                    up * 100.0,
                    down * 100.0
                );
            }
            targets += 1;
        }
        assert!(
            targets >= 4,
            "{}: only {targets} targets fitted",
            kernel.name()
        );
    }
}

/// Every point the compiler rejected for a reason other than memory is one the model refuses
/// too (unsupported heads/block shapes), so users hear about it before compiling.
#[test]
fn compiler_errors_are_configs_the_model_refuses() {
    use kernelgen::target::Target;
    use kernelgen::vmem::{check, CheckRequest};
    for p in KERNELS.iter().flat_map(|&k| points(k)) {
        if oracle_verdict(&p).is_some() || p.response.verdict == CompilerVerdict::Timeout {
            continue;
        }
        let cfg = &p.request.config;
        let t = Target::find(&p.request.target).unwrap();
        let r = check(&CheckRequest {
            cfg,
            target: t,
            kernel: p.request.kernel,
            vmem_limit: None,
        });
        assert!(
            r.is_err(),
            "compiler error '{}' on {cfg} ({}), but the model accepts it",
            p.response.message.lines().next().unwrap_or(""),
            t.name
        );
    }
}

/// Leave-one-out on each kernel's points: disagreements and uncertain verdicts no worse than
/// today's (`kernelgen calibrate --kernel K --cross-validate`: jax-rpa 350 agree, 17 uncertain,
/// 2 disagree; kernelgen 199, 1, 1: its uncertain one, 24 q / 8 KV heads, bf16, page 128, q 128,
/// kv 8 on v5p, needs 16.44 MiB against the 16 MiB limit, and came with the band made narrowest
/// at its widest near a limit instead of on average, which took kernelgen's widest band above on
/// v5e from 10.3% to 5.5%).
#[test]
fn leave_one_out_is_no_worse_than_today() {
    for (kernel, max_disagree, max_uncertain) in
        [(KernelModel::JaxRpa, 2, 17), (KernelModel::Kernelgen, 1, 1)]
    {
        let l = leave_one_out(&points(kernel));
        eprintln!("{}: leave-one-out {l:?}", kernel.name());
        assert!(
            l.disagree <= max_disagree && l.uncertain <= max_uncertain,
            "{}: leave-one-out {l:?}, at most {max_disagree} disagree and {max_uncertain} uncertain",
            kernel.name()
        );
    }
}

/// Where the compiler ran out in its first scoped-allocation check (the checker's scratch plus
/// internal scratch over the limit), the size it printed is the checker's scratch figure, with
/// or without the internal scratch, in the compiler's own `16.79M` form: a user finds the number
/// of their error in `kernelgen check`. Points that ran out later (windows, spills) print larger
/// sizes and are not this check's.
#[test]
fn the_compilers_scoped_size_is_the_scratch_figure() {
    use kernelgen::target::{fmt_compiler_bytes, Target};
    use kernelgen::vmem::{check, CheckRequest};
    for kernel in KERNELS {
        let (mut checked, mut with_internal) = (0, 0);
        for p in points(kernel) {
            let msg = &p.response.message;
            let Some(printed) = msg
                .split("Scoped allocation with size ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
            else {
                continue;
            };
            let t = Target::find(&p.request.target).unwrap();
            let limit = p.response.limit_bytes.filter(|&l| l <= t.vmem_bytes);
            let Ok(rep) = check(&CheckRequest {
                cfg: &p.request.config,
                target: t,
                kernel,
                vmem_limit: limit,
            }) else {
                continue;
            };
            if !rep.scoped.exceeds_limit {
                continue;
            }
            let s = rep.scoped;
            let (alone, total) = (
                fmt_compiler_bytes(s.scratch_bytes),
                fmt_compiler_bytes(s.total_bytes()),
            );
            assert!(
                printed == alone || printed == total,
                "{} on {}: compiler printed {printed}, checker {alone} scratch / {total} with internal ({})",
                kernel.name(),
                t.name,
                p.request.config
            );
            assert_eq!(rep.verdict, kernelgen::vmem::Verdict::DoesNotFit);
            checked += 1;
            with_internal += usize::from(printed == total);
        }
        eprintln!(
            "{}: {checked} points failed the first scoped check; {with_internal} printed scratch + internal",
            kernel.name()
        );
        assert!(checked >= 5, "{}: only {checked} points", kernel.name());
    }
}

/// Issue 18's target for `uncertain` on the held-out split (`kernelgen calibrate --heldout`
/// today: 9 of 192, 4.7%: jax-rpa 9 of 77, kernelgen 0 of 115; 7 of 170 before the v4 points).
const HELDOUT_MAX_UNCERTAIN_PCT: usize = 5;

/// The held-out split (`kernelgen/data/vmem_oracle_heldout.jsonl`: both kernels on v4, v5e, v5p,
/// v6e and v7x, GQA groups 1-16, head_dim 64-256, a third at raised limits, another seed),
/// whose configs no fit reads: how the checker does on configs it was not fitted to. Zero
/// wrong verdicts; `uncertain` may not exceed today's share (HELDOUT_MAX_UNCERTAIN_PCT).
#[test]
fn the_held_out_split_gets_no_wrong_verdict() {
    use kernelgen::tpu::oracle::parse_points;
    use kernelgen::vmem::calibrate::HELDOUT;
    let (points, bad) = parse_points(HELDOUT.1);
    assert!(bad.is_empty(), "unreadable lines {bad:?}");
    let a = agreement(&points);
    eprintln!("held-out: {:#?}", a.groups);
    assert!(a.points >= 150, "only {} comparable points", a.points);
    for kernel in KERNELS {
        for t in ["v5e", "v5p", "v6e", "v7x"] {
            let g = format!("{} {t}", kernel.name());
            assert!(
                a.groups.get(&g).is_some_and(|n| n[0] >= 10),
                "few points for {g}"
            );
        }
    }
    assert!(
        points
            .iter()
            .filter(|p| p.request.vmem_limit_bytes.is_some())
            .count()
            >= 30,
        "raised limits are part of the split"
    );
    assert!(a.disagree.is_empty(), "wrong verdicts: {:#?}", a.disagree);
    assert!(
        a.uncertain * 100 <= HELDOUT_MAX_UNCERTAIN_PCT * a.points,
        "{} of {} uncertain (> {HELDOUT_MAX_UNCERTAIN_PCT}%)",
        a.uncertain,
        a.points
    );
}
