//! `kernelgen tune` on the CPU plugin, as users run it: a small sweep writes the measurement
//! cache and the tuned table, and `generate` and `build` then take their block sizes from it;
//! faults injected into candidates are recorded while the sweep completes; a hand-edited entry
//! that does not fit its TPU target is refused; bad input gets one clear error.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// The tune's workload: the small serving engine's shapes (SMALL_ENGINE), SmolLM2 geometry.
const SHAPES: &[&str] = &[
    "--preset",
    "smollm2-135m",
    "--page-size",
    "16",
    "--dtype",
    "f32",
    "--max-seqs",
    "4",
    "--max-tokens",
    "64",
    "--max-model-len",
    "256",
];

/// `kernelgen args` with the tune folder `dir` and extra environment.
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kernelgen"));
    c.args(args).env("KERNELGEN_TUNE_DIR", dir);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run kernelgen")
}

fn tune(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Output, Value) {
    let mut args = vec!["tune", "--json", "--repeats", "3", "--warmup", "1"];
    args.extend_from_slice(SHAPES);
    args.extend_from_slice(extra);
    let o = run_in(dir, &args, env);
    let v = if o.stdout.is_empty() {
        Value::Null
    } else {
        json(&o)
    };
    (o, v)
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// (q, kv) of the fastest `ok` row of `phase`, from the rows themselves.
fn fastest(report: &Value, phase: &str) -> (u64, u64) {
    let rows = report["rows"].as_array().unwrap();
    let best = rows
        .iter()
        .filter(|r| r["key"]["phase"] == phase && r["status"] == "ok")
        .min_by(|a, b| {
            a["median_ms"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["median_ms"].as_f64().unwrap())
        })
        .unwrap_or_else(|| panic!("no ok {phase} row: {report:#}"));
    (
        best["q_block"].as_u64().unwrap(),
        best["kv_pages_block"].as_u64().unwrap(),
    )
}

/// (q, kv) measured in both prefill and mixed whose worse ratio to its phase's fastest is least.
fn minimax(report: &Value) -> (u64, u64) {
    let time = |phase: &str, q: &Value, kv: &Value| {
        report["rows"].as_array().unwrap().iter().find_map(|r| {
            (r["key"]["phase"] == phase && &r["q_block"] == q && &r["kv_pages_block"] == kv)
                .then(|| r["median_ms"].as_f64())
                .flatten()
        })
    };
    let best = |phase: &str| {
        let (q, kv) = fastest(report, phase);
        time(phase, &q.into(), &kv.into()).unwrap()
    };
    let (bp, bm) = (best("prefill"), best("mixed"));
    let rows = report["rows"].as_array().unwrap();
    let worst = |r: &Value| {
        let (q, kv) = (&r["q_block"], &r["kv_pages_block"]);
        (time("prefill", q, kv).unwrap() / bp).max(time("mixed", q, kv).unwrap() / bm)
    };
    let r = rows
        .iter()
        .filter(|r| r["key"]["phase"] == "mixed")
        .min_by(|a, b| worst(a).total_cmp(&worst(b)))
        .unwrap();
    (
        r["q_block"].as_u64().unwrap(),
        r["kv_pages_block"].as_u64().unwrap(),
    )
}

#[test]
fn a_cpu_tune_fills_the_table_and_generate_and_build_use_it() {
    let dir = scratch("kg-tune", "table");
    let phases = [
        "--phase",
        "decode,prefill,mixed",
        "--q",
        "8,16",
        "--kv",
        "2,4",
    ];
    let (o, r) = tune(&dir, &phases, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        2 + 4 + 4,
        "decode tunes kv only; prefill and mixed q x kv"
    );
    for row in rows {
        assert_eq!(row["status"], "ok", "{row:#}");
        assert!(row["error"].as_f64().unwrap() <= 1e-5, "verified: {row:#}");
        assert!(row["median_ms"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(lines(&dir.join("measurements.jsonl")), 10);
    let table: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tuned_blocks.json")).unwrap())
            .unwrap();
    let entries = table["entries"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        4,
        "one best per phase, and general: {table:#}"
    );
    let (dq, dkv) = fastest(&r, "decode");
    assert_eq!(dq, 1);
    let (gq, gkv) = minimax(&r);
    for e in entries {
        let want = match e["key"]["phase"].as_str().unwrap() {
            "general" => (gq, gkv),
            phase => fastest(&r, phase),
        };
        assert_eq!(
            (
                e["q_block"].as_u64().unwrap(),
                e["kv_pages_block"].as_u64().unwrap()
            ),
            want,
            "the table holds the fastest: {e:#}"
        );
    }

    // --resume takes every candidate from the cache: nothing measured again.
    let mut resume = phases.to_vec();
    resume.push("--resume");
    let (o, again) = tune(&dir, &resume, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(again["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["cached"] == true));
    assert_eq!(lines(&dir.join("measurements.jsonl")), 10);

    // generate (no --q/--kv) on the same shapes: decode programs from the decode entry, the
    // others from the general one.
    let mut args = vec!["generate", "--prompt", "Hi", "--max-new-tokens", "2"];
    args.extend_from_slice(SMALL_ENGINE);
    let o = run_in(&dir, &args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let want = format!("emitted q_block={gq} kv_pages_block={gkv}");
    assert!(err.contains(&want), "{want} in: {err}");
    assert!(err.contains("tuned:"), "{err}");
    assert!(!err.contains("warning"), "{err}");
    if dkv != gkv {
        assert!(
            err.contains(&format!("decode kv_pages_block={dkv}")),
            "{err}"
        );
    }
    // Another folder: a miss, the fallback and the command that fills it.
    let empty = scratch("kg-tune", "empty");
    let o = run_in(&empty, &args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("warning: no tuned block sizes"), "{err}");
    assert!(err.contains("kernelgen tune --num-q-heads 9"), "{err}");

    // build without --q/--kv on the same geometry and length uses the general entry.
    let out = dir.join("artifact");
    let mut args = vec!["build", "--json", "--out", out.to_str().unwrap()];
    args.extend_from_slice(&SHAPES[..6]);
    args.extend_from_slice(&["--max-model-len", "256"]);
    let o = run_in(&dir, &args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = json(&o);
    let cfg = &manifest["config"];
    assert_eq!(
        (cfg["q_block"].as_u64(), cfg["kv_pages_block"].as_u64()),
        (Some(gq), Some(gkv)),
        "{manifest:#}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn a_candidate_that_panics_hangs_or_runs_out_of_memory_is_recorded_and_the_sweep_goes_on() {
    let dir = scratch("kg-tune", "faults");
    let inject = "mixed:q8kv1=panic,mixed:q8kv2=hang,mixed:q16kv2=oom";
    let (o, r) = tune(
        &dir,
        &[
            "--phase",
            "mixed",
            "--q",
            "8,16,32",
            "--kv",
            "1,2",
            "--timeout",
            "4",
        ],
        &[("KERNELGEN_TUNE_INJECT", inject)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let status = |q: u64, kv: u64| {
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["q_block"] == q && x["kv_pages_block"] == kv)
            .map(|x| x["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(status(8, 1), "crashed");
    assert_eq!(status(8, 2), "timeout");
    assert_eq!(status(16, 1), "ok");
    assert_eq!(status(16, 2), "oom");
    assert_eq!(status(32, 1), "ok");
    assert_eq!(status(32, 2), "skipped", "dominated by q16 kv2's OOM");
    // Every measured candidate is in the cache; the skipped one is not.
    assert_eq!(lines(&dir.join("measurements.jsonl")), 5);
    let table = std::fs::read_to_string(dir.join("tuned_blocks.json")).unwrap();
    let (q, kv) = fastest(&r, "mixed");
    assert!(table.contains(&format!("\"q_block\": {q}")), "{table}");
    assert!(
        table.contains(&format!("\"kv_pages_block\": {kv}")),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_hand_edited_entry_that_does_not_fit_its_target_is_refused_with_the_checkers_reason() {
    let dir = scratch("kg-tune", "edited");
    std::fs::create_dir_all(&dir).unwrap();
    let entry = serde_json::json!({"entries": [{
        "key": {
            "device": "v5p", "compiler": "hand", "kernel_source": kernelgen::tune::table::kernel_source_hash(),
            "phase": "mixed", "page_size": 64, "dtype": "bf16", "num_q_heads": 32,
            "num_kv_heads": 8, "head_dim": 128, "max_model_len_bucket": 4096, "sliding_window": null
        },
        "q_block": 2048, "kv_pages_block": 64, "median_ms": 1.0, "measured_at": 1,
        "workload": {
            "geometry": {"num_q_heads": 32, "num_kv_heads": 8, "head_dim": 128},
            "dtype": "bf16", "page_size": 64, "max_num_seqs": 128, "max_num_tokens": 2048,
            "max_model_len": 4096, "sliding_window": null, "soft_cap": null
        }
    }]});
    std::fs::write(dir.join("tuned_blocks.json"), entry.to_string()).unwrap();
    let o = run_in(
        &dir,
        &[
            "build",
            "--target",
            "v5p",
            "--preset",
            "llama3-8b",
            "--page-size",
            "64",
            "--max-model-len",
            "4096",
            "--out",
            dir.join("a").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    for want in [
        "tuned_blocks.json",
        "q_block 2048 kv_pages_block 64 is refused",
        "does not fit v5p",
        "scoped VMEM",
    ] {
        assert!(err.contains(want), "{want:?} in: {err}");
    }
    assert!(!dir.join("a").exists(), "refused before anything was built");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_tune_input_gets_one_clear_error_before_any_measurement() {
    let dir = scratch("kg-tune", "bad");
    let blocker = scratch("kg-tune", "blocker");
    std::fs::write(&blocker, b"a file where the folder would go").unwrap();
    let bad_dir = blocker.join("tune");
    let cases: Vec<(Vec<&str>, &Path, &str)> = vec![
        (
            vec!["--phase", "decodee"],
            &dir,
            "--phase decodee: unknown phase",
        ),
        (
            vec!["--phase", "mixed", "--q", "512", "--kv", "1"],
            &dir,
            "no candidate is left after pruning",
        ),
        (
            vec!["--phase", "decode", "--kv", "2"],
            &bad_dir,
            "tune folder",
        ),
        (vec!["--budget", "ten"], &dir, "--budget ten"),
        (vec!["--q", "0"], &dir, "--q: give positive block sizes"),
        (vec!["--tp", "2"], &dir, "--tp 2: must divide"),
    ];
    for (extra, d, want) in cases {
        let (o, _) = tune(d, &extra, &[]);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(want), "{extra:?}: {want:?} in: {err}");
        assert_eq!(err.matches("error:").count(), 1, "{err}");
    }
    assert!(!dir.join("measurements.jsonl").exists(), "nothing measured");
    let _ = std::fs::remove_file(&blocker);
}
