//! `kernelgen generate` as users run it, on the embedded SmolLM2-135M-Instruct: streaming text,
//! batch JSONL with continuous batching, and one clear error per kind of bad input.

use std::path::PathBuf;

mod common;
use common::*;

/// A fresh, existing scratch directory.
fn tmp(name: &str) -> PathBuf {
    let d = scratch("kg-gen", name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Small engine shapes keep the compiled programs small.
const ENGINE: &[&str] = &[
    "--max-seqs",
    "4",
    "--max-pages",
    "128",
    "--max-seq-len",
    "256",
    "--max-tokens-per-round",
    "64",
];

#[test]
fn answers_a_factual_question_in_english() {
    let mut args = vec![
        "generate",
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "16",
    ];
    args.extend_from_slice(ENGINE);
    let o = kernelgen(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Paris"), "greedy answer: {text}");

    // The same greedy run, stopped at " Paris": the stream ends where the result is cut, and
    // the stop string itself is never printed, not even for a moment.
    args.extend_from_slice(&["--stop", " Paris"]);
    let o = kernelgen(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stopped = String::from_utf8_lossy(&o.stdout);
    let cut = &text[..text.find(" Paris").unwrap()];
    assert_eq!(stopped.trim_end(), cut.trim_end(), "stopped stream vs full");
    assert!(String::from_utf8_lossy(&o.stderr).contains("stopped at a stop string"));
}

#[test]
fn batch_mode_writes_one_json_line_per_request() {
    let dir = tmp("batch");
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"Say hello.\", \"id\": \"a\"}\n{\"prompt\": \"Name a color.\", \"max_new_tokens\": 4}\n\n{\"prompt\": \"Count to three.\", \"n\": 2, \"temperature\": 0.8, \"seed\": 7}\n",
    )
    .unwrap();
    let out = dir.join("results.jsonl");
    let mut args = vec![
        "generate",
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "8",
        "--json-metrics",
    ];
    args.extend_from_slice(ENGINE);
    let o = kernelgen(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], "a");
    assert!(lines[1]["token_ids"][0].as_array().unwrap().len() <= 4);
    assert_eq!(
        lines[2]["text"].as_array().unwrap().len(),
        2,
        "n = 2 samples"
    );
    for l in &lines {
        assert!(
            l["ttft_s"].as_f64().unwrap() > 0.0
                && l["latency_s"].as_f64().unwrap() >= l["ttft_s"].as_f64().unwrap()
        );
        assert!(!l["finish_reason"][0].is_null());
    }
    let metrics: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(metrics["engine"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        metrics["engine"]["setup_time_s"].as_f64().unwrap() > 0.0,
        "program compiles reported apart"
    );
}

/// One clear error, exit non-zero, for each kind of bad input.
#[test]
fn bad_inputs_fail_with_one_clear_error() {
    let dir = tmp("bad");
    let corrupt = dir.join("corrupt.gguf");
    std::fs::write(&corrupt, b"GGUF\x03\x00\x00\x00 truncated").unwrap();
    let hf = dir.join("hf");
    runtime::model::tiny::write_tiny_llama(&hf, 1, &runtime::model::tiny::TinyConfig::default())
        .unwrap();
    std::fs::remove_file(hf.join("tokenizer.json")).unwrap();
    let other = dir.join("kernel-llama");
    let b = kernelgen(&[
        "build",
        "--q",
        "8",
        "--kv",
        "2",
        "--preset",
        "llama3-8b",
        "--page-size",
        "16",
        "--dtype",
        "f32",
        "--max-tokens",
        "16",
        "--max-seqs",
        "2",
        "--max-model-len",
        "64",
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(b.status.success());
    let long_prompt = "word ".repeat(400);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--model", "/nonexistent/model.gguf"],
            "/nonexistent/model.gguf",
        ),
        (vec!["--model", corrupt.to_str().unwrap()], "corrupt.gguf"),
        (vec!["--model", hf.to_str().unwrap()], "tokenizer.json"),
        (
            vec![
                "--max-seq-len",
                "128",
                "--max-pages",
                "64",
                "--prompt-override",
                &long_prompt,
            ],
            "exceeds max_seq_len",
        ),
        (
            vec!["--kernel", other.to_str().unwrap()],
            "num_q_heads is 32 in the kernel but 9 in the model",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["generate", "--prompt", "Hi", "--max-new-tokens", "4"];
        // --prompt-override replaces the prompt (the long-prompt case)
        let mut extra = extra.clone();
        if let Some(i) = extra.iter().position(|a| *a == "--prompt-override") {
            args[2] = extra[i + 1];
            extra.drain(i..i + 2);
        }
        args.extend(extra);
        let o = kernelgen(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{needle:?} not in: {err}");
        let error_lines = err.lines().filter(|l| l.starts_with("error")).count();
        assert_eq!(error_lines, 1, "{err}");
    }
}

/// `emit-step` writes the program `generate` would run: the same model, kernel-block and engine
/// flags with the same defaults, and the same refusals before any work.
#[test]
fn emit_step_takes_generate_flags_and_refuses_what_generate_refuses() {
    let dir = tmp("emit-step");
    let out = dir.join("step.mlir");
    let out_s = out.to_str().unwrap();
    let small = [
        "--max-seqs",
        "1",
        "--max-pages",
        "16",
        "--max-seq-len",
        "256",
    ];

    let mut args = vec!["emit-step", "--decode", "--out", out_s];
    args.extend(small);
    let o = kernelgen(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    // generate's defaults (--q 32 --kv 4); a one-row decode step clamps q_block to its one row
    assert!(
        stderr(&o).contains("q_block=1 kv_pages_block=4"),
        "{}",
        stderr(&o)
    );
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("rpa_attention"));
    std::fs::remove_file(&out).unwrap();

    let mut args = vec!["emit-step", "--page-size", "0", "--out", out_s];
    args.extend(small);
    let o = kernelgen(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("page_size = 0; fix: --page-size 1 or more"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists(), "a refused emit-step wrote {out_s}");
}
