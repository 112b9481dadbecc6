//! `kernelgen bench decode`, `bench kernel` and `bench check` as users run them: every figure is the median of
//! the measured rounds and lies inside the spread printed beside it; bad options are refused
//! before any work.

use crate::common::*;

#[test]
fn decode_figures_are_medians_inside_their_spread() {
    let dir = std::env::temp_dir().join(format!("kg-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    verify::fixtures::tiny::write_tiny_llama(
        &dir,
        7,
        &verify::fixtures::tiny::TinyConfig::default(),
    )
    .unwrap();
    let o = kernelgen(&[
        "bench",
        "decode",
        "--model",
        dir.to_str().unwrap(),
        "--batches",
        "1,2",
        "--prompt-len",
        "8",
        "--new-tokens",
        "4",
        "--prefill-len",
        "16",
        "--pool-pages",
        "64",
        "--repeats",
        "3",
        "--long-prompt",
        "24",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["repeats"], 3);
    // The long prompt's figure beside the short one's, from the same engine's rounds.
    let l = &r["long_context"];
    assert_eq!(
        (l["short_prompt"].as_u64(), l["long_prompt"].as_u64()),
        (Some(8), Some(24))
    );
    let (short, long) = (
        l["short_tokens_per_s"].as_f64().unwrap(),
        l["long_tokens_per_s"].as_f64().unwrap(),
    );
    let ratio = l["ratio"].as_f64().unwrap();
    assert!(short > 0.0 && long > 0.0, "{l}");
    assert!((ratio - long / short).abs() <= 1e-9 * ratio, "{l}");
    let (lo, hi) = (
        l["pair_ratio_range"][0].as_f64().unwrap(),
        l["pair_ratio_range"][1].as_f64().unwrap(),
    );
    assert!(0.0 < lo && lo <= hi, "{l}");
    let mut figures: Vec<&serde_json::Value> = r["decode"].as_array().unwrap().iter().collect();
    assert_eq!(figures.len(), 2);
    figures.push(&r["prefill"]);
    for f in figures {
        let median = f["tokens_per_s"].as_f64().unwrap();
        let lo = f["tokens_per_s_range"][0].as_f64().unwrap();
        let hi = f["tokens_per_s_range"][1].as_f64().unwrap();
        assert!(
            0.0 < lo && lo <= median && median <= hi,
            "median {median} outside [{lo}, {hi}]: {f}"
        );
        let bound = f["bound_tokens_per_s"].as_f64().unwrap();
        let ratio = f["ratio"].as_f64().unwrap();
        assert!((ratio - median / bound).abs() <= 1e-9 * ratio.abs().max(1.0));
    }
    assert_eq!(r["pool_scaling"][0][0], 64);
    let memory = &r["memory"];
    assert!(memory["peak_rss_bytes"].as_u64().unwrap() > 0, "{memory}");
    assert!(
        !memory["compiled"].as_object().unwrap().is_empty(),
        "{memory}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_long_prompt_no_longer_than_the_prompt_is_refused_naming_both_flags() {
    let o = kernelgen(&[
        "bench",
        "decode",
        "--prompt-len",
        "64",
        "--long-prompt",
        "64",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--long-prompt 64") && err.contains("--prompt-len 64"),
        "{err}"
    );
}

#[test]
fn zero_repeats_is_refused_naming_the_flag() {
    let o = kernelgen(&["bench", "decode", "--repeats", "0"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--repeats"), "{err}");
}

/// `bench check` counts the checker's own verdicts: each kernel's counts per pass are what
/// `vmem::check` gives over the grid, every config is counted once (a config the kernel cannot
/// run as unsupported), and the throughput is the configs over the seconds it printed.
#[test]
fn check_bench_counts_the_checkers_verdicts_over_the_grid() {
    use kernelgen::vmem::{check, CheckRequest, KernelModel, Verdict};
    let o = kernelgen(&["bench", "check", "--passes", "2", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let grid = kernelgen::bench::check::grid();
    assert_eq!(r["grid"].as_u64(), Some(grid.len() as u64));
    let kernels = r["kernels"].as_array().unwrap();
    let names: Vec<&str> = kernels
        .iter()
        .map(|k| k["kernel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["jax-rpa", "kernelgen"]);
    for (k, model) in kernels
        .iter()
        .zip([KernelModel::JaxRpa, KernelModel::Kernelgen])
    {
        let mut want = [0u64; 4];
        for (cfg, target) in &grid {
            let req = CheckRequest {
                cfg,
                target: *target,
                kernel: model,
                vmem_limit: None,
            };
            want[match check(&req).map(|r| r.verdict) {
                Ok(Verdict::Fits) => 0,
                Ok(Verdict::DoesNotFit) => 1,
                Ok(Verdict::Uncertain) => 2,
                Err(_) => 3,
            }] += 1;
        }
        let v = &k["verdicts"];
        let got = [
            v[0].as_u64().unwrap(),
            v[1].as_u64().unwrap(),
            v[2].as_u64().unwrap(),
            k["unsupported"].as_u64().unwrap(),
        ];
        assert_eq!(got, want, "{k}");
        assert_eq!(k["configs"].as_u64(), Some(2 * grid.len() as u64));
        let (configs, seconds) = (2.0 * grid.len() as f64, k["seconds"].as_f64().unwrap());
        let rate = k["configs_per_s"].as_f64().unwrap();
        assert!(
            seconds > 0.0 && (rate - configs / seconds).abs() <= 1e-9 * rate,
            "{k}"
        );
    }
    // An unknown kernel is refused naming the ones there are; zero passes naming the flag.
    let o = kernelgen(&[
        "bench",
        "check",
        "--kernel",
        "kernelgen,jax",
        "--passes",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("jax") && err.contains("jax-rpa, kernelgen"),
        "{err}"
    );
    let o = kernelgen(&["bench", "check", "--passes", "0"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--passes"));
}

/// Builds a small SmolLM2-geometry f32 kernel artifact with `kv` pages per block and
/// `max_seqs` sequences, in a directory named for `test` (tests run in parallel); returns it.
fn small_kernel(test: &str, kv: &str, max_seqs: &str) -> std::path::PathBuf {
    let dir = scratch("kg-bench-kernel", &format!("{test}-kv{kv}-s{max_seqs}"));
    let o = kernelgen(&[
        "build",
        "--q",
        "1",
        "--kv",
        kv,
        "--preset",
        "smollm2-135m",
        "--page-size",
        "16",
        "--dtype",
        "f32",
        "--max-tokens",
        "4",
        "--max-seqs",
        max_seqs,
        "--pages-per-seq",
        "4",
        "--total-pages",
        "17",
        "--schedule",
        "batched",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

/// `kernelgen bench kernel ARGS --json`, which must succeed; its report.
fn bench_kernel(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "kernel"];
    all.extend(args);
    all.push("--json");
    let o = kernelgen(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    json(&o)
}

#[test]
fn kernel_bench_times_artifacts_against_the_first_on_one_batch() {
    let a = small_kernel("times", "4", "4");
    let b = small_kernel("times", "2", "4");
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let r = bench_kernel(&[a_s, b_s, "--layers", "2", "--repeats", "5"]);
    // the default batch fills the artifacts: min(max-seqs, max-tokens, total pages) = 4
    let seqs = r["seqs"].as_array().unwrap();
    assert_eq!(seqs.len(), 4);
    for s in seqs {
        assert_eq!(s[0], 1, "a decode row: {s}");
        assert!((1..=64).contains(&s[1].as_u64().unwrap()), "{s}");
    }
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let first = rows[0]["chain_ms"].as_f64().unwrap();
    for (row, dir) in rows.iter().zip([a_s, b_s]) {
        assert_eq!(row["artifact"], dir);
        let ms = row["chain_ms"].as_f64().unwrap();
        let (lo, hi) = (
            row["chain_ms_range"][0].as_f64().unwrap(),
            row["chain_ms_range"][1].as_f64().unwrap(),
        );
        assert!(0.0 < lo && lo <= ms && ms <= hi, "{row}");
        let ratio = row["ratio"].as_f64().unwrap();
        assert!((ratio - ms / first).abs() <= 1e-9 * ratio, "{row}");
        let per_call = row["per_call_us"].as_f64().unwrap();
        assert!(
            (per_call - ms * 1e3 / 2.0).abs() <= 1e-9 * per_call,
            "{row}"
        );
    }

    // The bound: every sequence's K/V bytes at the bandwidth measured in the run, or the
    // flops (each decode row sees kv_len keys: 4 x head_dim x q heads each) at the matmul
    // rate measured in the run, the larger.
    let kv_bytes: u64 = seqs.iter().map(|s| s[1].as_u64().unwrap()).sum::<u64>() * 2 * 3 * 64 * 4; // SmolLM2: 3 KV heads of 64, f32
    let want = 2.0 * kv_bytes as f64 / (r["bandwidth_gbs"].as_f64().unwrap() * 1e9) * 1e3;
    let bandwidth_bound = r["bandwidth_bound_ms"].as_f64().unwrap();
    assert!(
        (bandwidth_bound - want).abs() <= 1e-9 * want,
        "{bandwidth_bound} vs {want}"
    );
    let flops: u64 = seqs.iter().map(|s| s[1].as_u64().unwrap()).sum::<u64>() * 4 * 64 * 9;
    assert_eq!(r["flops"].as_u64().unwrap(), flops);
    let want = 2.0 * flops as f64 / (r["matmul_gflops"].as_f64().unwrap() * 1e9) * 1e3;
    let compute_bound = r["compute_bound_ms"].as_f64().unwrap();
    assert!(
        (compute_bound - want).abs() <= 1e-9 * want,
        "{compute_bound} vs {want}"
    );
    let bound = r["bound_ms"].as_f64().unwrap();
    assert_eq!(bound, bandwidth_bound.max(compute_bound));
    for row in rows {
        let of_bound = row["of_bound"].as_f64().unwrap();
        assert!((of_bound - bound / row["chain_ms"].as_f64().unwrap()).abs() <= 1e-9);
    }

    // --kv-len sets every sequence's length; --peer jax times the JAX peer on that batch
    let r = bench_kernel(&[a_s, "--kv-len", "33", "--repeats", "1", "--peer", "jax"]);
    assert!(r["seqs"].as_array().unwrap().iter().all(|s| s[1] == 33));
    let peer = &r["peer"];
    let peer_ms = peer["chain_ms"].as_f64().unwrap();
    assert!(peer_ms > 0.0, "{peer}");
    let speedup = peer["speedups"][0].as_f64().unwrap();
    let ms = r["rows"][0]["chain_ms"].as_f64().unwrap();
    assert!((speedup - peer_ms / ms).abs() <= 1e-9 * speedup, "{peer}");

    // --mixed: prompt rows beside decode rows in the 4 query rows; the flops count the keys
    // each row sees (causal within its sequence), and the JAX peer runs the same batch
    let r = bench_kernel(&[
        a_s,
        "--mixed",
        "--seqs",
        "2",
        "--layers",
        "1",
        "--repeats",
        "1",
        "--peer",
        "jax",
    ]);
    assert_eq!(r["mixed"], true);
    let seqs: Vec<(u64, u64)> = r["seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_u64().unwrap(), s[1].as_u64().unwrap()))
        .collect();
    assert_eq!(seqs.len(), 2);
    assert!(seqs.iter().map(|s| s.0).sum::<u64>() <= 4, "{seqs:?}");
    let keys: u64 = seqs
        .iter()
        .flat_map(|&(q, kv)| (0..q).map(move |r| kv - q + r + 1))
        .sum();
    assert_eq!(r["flops"].as_u64().unwrap(), keys * 4 * 64 * 9);
    assert!(r["peer"]["chain_ms"].as_f64().unwrap() > 0.0);
    let o = kernelgen(&["bench", "kernel", a_s, "--mixed", "--repeats", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--max-tokens above --max-seqs"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn kernel_bench_refuses_what_it_cannot_compare() {
    let a = small_kernel("refuses", "4", "4");
    let other_shapes = small_kernel("refuses", "4", "2");
    let (a_s, o_s) = (a.to_str().unwrap(), other_shapes.to_str().unwrap());
    let cases: [(&[&str], &str); 4] = [
        (&[a_s, o_s], "--max-seqs"),
        (&[a_s, "--kv-len", "65"], "--kv-len 65"),
        (&[a_s, "--seqs", "5"], "--seqs 5"),
        (&[a_s, "--layers", "0"], "--layers"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["bench", "kernel"];
        args.extend(extra);
        let o = kernelgen(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&o).contains(needle),
            "{needle:?} not in {}",
            stderr(&o)
        );
    }
}

/// `bench memory` on the default model (538 MB of f32 weights): the weights are streamed to the
/// device part by part, so uploading them adds one copy to the resident set, not two; every
/// start-up stage and both waves of requests are reported; each program's memory plan takes the
/// weights as arguments and updates the KV pool in place (its outputs alias the pool).
#[test]
fn memory_bench_reports_one_copy_of_the_weights() {
    let model = verify::fixtures::require_default_model();
    let o = kernelgen(&[
        "bench",
        "memory",
        "--model",
        model.to_str().unwrap(),
        "--requests",
        "3",
        "--max-seqs",
        "2",
        "--prompt-len",
        "4",
        "--new-tokens",
        "6",
        "--warm-steps",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let u = |v: &serde_json::Value| v.as_u64().unwrap();
    let weights = u(&r["weight_bytes"]);
    let stages = r["memory"]["stages"].as_array().unwrap();
    let stage = |name: &str| {
        stages
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap_or_else(|| panic!("no stage '{name}' in {stages:?}"))
    };
    let uploaded = u(&stage("weights uploaded")["anon_bytes"]) as f64
        - u(&stage("plugin loaded")["anon_bytes"]) as f64;
    assert!(
        uploaded > 0.9 * weights as f64 && uploaded < 1.25 * weights as f64,
        "uploading {weights} bytes of weights added {uploaded} anonymous bytes"
    );
    stage("KV pools created");
    stage("first step");
    let peak = u(&r["memory"]["peak_rss_bytes"]);
    assert!(stages.iter().all(|s| u(&s["rss_bytes"]) <= peak));
    let waves: Vec<u64> = r["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| u(&w[0]))
        .collect();
    assert_eq!(waves, vec![2, 3]);
    let compiled = r["memory"]["compiled"].as_object().unwrap();
    assert!(!compiled.is_empty());
    for (name, c) in compiled {
        assert!(u(&c["argument_bytes"]) >= weights, "{name}: {c}");
        assert_eq!(u(&c["alias_bytes"]), u(&r["pool_bytes"]), "{name}: {c}");
        assert!(
            stages
                .iter()
                .any(|s| s["stage"] == format!("compiled {name}")),
            "{name}"
        );
    }
}

#[test]
fn memory_bench_refuses_zero_counts_naming_the_flag() {
    let o = kernelgen(&["bench", "memory", "--warm-steps", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--warm-steps"));
}

/// A small `bench serve`: every level has both modes measured on the same requests, the
/// server's throughput is a ratio of batch mode's, and the prefix-cache run finds the system
/// prompt's pages.
#[test]
fn serve_bench_sets_the_server_beside_batch_mode() {
    let o = kernelgen(&[
        "bench",
        "serve",
        "--clients",
        "1,2",
        "--requests-per-client",
        "1",
        "--new-tokens",
        "4",
        "--prompt-len",
        "16",
        "--system-prompt-len",
        "64",
        "--prefix-requests",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&o);
    let levels = r["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for l in levels {
        let c = l["clients"].as_u64().unwrap();
        for mode in ["batch", "server"] {
            assert_eq!(l[mode]["requests"].as_u64(), Some(c), "{l}");
            assert!(
                l[mode]["output_tokens_per_s"].as_f64().unwrap() > 0.0,
                "{l}"
            );
        }
        let ratio = l["server"]["output_tokens_per_s"].as_f64().unwrap()
            / l["batch"]["output_tokens_per_s"].as_f64().unwrap();
        assert!((l["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);
    }
    assert!(r["http_overhead_per_token"].is_number());
    assert!(
        r["prefix"]["hit_tokens"].as_u64().unwrap() >= 16,
        "{}",
        r["prefix"]
    );
    let o = kernelgen(&["bench", "serve", "--clients", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--clients"), "{}", stderr(&o));
}

/// `bench programs` serves one workload per bound, each in a process of its own: the bounded
/// server never holds more programs than its bound and unloads to stay within it, and the
/// unbounded one keeps every program it met.
#[test]
fn programs_bench_keeps_each_bound() {
    let model = verify::fixtures::require_default_model();
    let o = kernelgen(&[
        "bench",
        "programs",
        "--model",
        model.to_str().unwrap(),
        "--max-programs",
        "0,2",
        "--requests",
        "6",
        "--clients",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bounds = r["bounds"].as_array().unwrap();
    assert_eq!(bounds.len(), 2, "{r}");
    let u = |v: &serde_json::Value| v.as_u64().unwrap();
    let (free, two) = (&bounds[0], &bounds[1]);
    assert_eq!(u(&free["unloads"]), 0, "{free}");
    assert!(
        u(&free["programs_loaded"]) > 2,
        "six prompt lengths meet more than two programs: {free}"
    );
    assert!(u(&two["programs_loaded"]) <= 2, "{two}");
    assert!(
        u(&two["unloads"]) >= 1,
        "it met more programs than two: {two}"
    );
    for b in bounds {
        assert!(u(&b["peak_rss_bytes"]) >= u(&b["rss_bytes"]), "{b}");
        assert!(b["wall_s"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(free["wall_ratio"].as_f64(), Some(1.0));
}
