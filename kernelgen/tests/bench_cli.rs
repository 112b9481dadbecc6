//! `kernelgen bench decode` as users run it: every figure is the median of the measured rounds
//! and lies inside the spread printed beside it; bad options are refused before any work.

mod common;
use common::*;

#[test]
fn decode_figures_are_medians_inside_their_spread() {
    let dir = std::env::temp_dir().join(format!("kg-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    runtime::model::tiny::write_tiny_llama(&dir, 7, &runtime::model::tiny::TinyConfig::default())
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
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["repeats"], 3);
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
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zero_repeats_is_refused_naming_the_flag() {
    let o = kernelgen(&["bench", "decode", "--repeats", "0"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--repeats"), "{err}");
}
