//! `kernelgen generate` as users run it, on the embedded SmolLM2-135M-Instruct: streaming text,
//! batch JSONL with continuous batching, and one clear error per kind of bad input.

use std::path::PathBuf;

use crate::common::*;

/// A fresh, existing scratch directory.
/// The JSON lines batch mode wrote to `path`.
fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    let d = scratch("kg-gen", name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

use crate::common::SMALL_ENGINE as ENGINE;

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
    // The plugin's INFO logging (it notes each client's create options) stays out of the user's
    // way; its warnings and errors would still show.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.lines()
            .any(|l| l.starts_with("I0") && l.contains(".cc:")),
        "{err}"
    );

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
    let lines = json_lines(&out);
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

/// A single prompt's programs compile before the weights are uploaded (a compile's transient
/// memory never adds to the weights'), and a second run loads them from the program cache and
/// says the same thing.
#[test]
fn programs_compile_before_the_weights_and_load_from_the_cache_next_time() {
    let dir = tmp("program-cache");
    let cache = dir.join("executables");
    let mut args = vec![
        "generate",
        "--prompt",
        "Name three colors.",
        "--max-new-tokens",
        "6",
        "--json-metrics",
        "--program-cache",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(ENGINE);
    let run = |args: &[&str]| {
        let o = kernelgen(args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let at = out.find("\n{").expect("text, then the metrics JSON") + 1;
        let metrics: serde_json::Value = serde_json::from_str(&out[at..]).unwrap();
        (out[..at].to_string(), metrics)
    };
    let stages = |m: &serde_json::Value| -> Vec<String> {
        m["memory"]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stage"].as_str().unwrap().to_string())
            .collect()
    };
    let origins = |m: &serde_json::Value| -> Vec<String> {
        m["executor"]["origin"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let (text, first) = run(&args);
    let s = stages(&first);
    let upload = s.iter().position(|x| x == "weights uploaded").unwrap();
    let compiled: Vec<usize> = (0..s.len())
        .filter(|&i| s[i].starts_with("compiled"))
        .collect();
    assert!(compiled.len() >= 2, "a prefill and a decode program: {s:?}");
    assert!(
        compiled.iter().all(|&i| i < upload),
        "compiled after the upload: {s:?}"
    );
    assert!(origins(&first).iter().all(|o| o == "compiled"), "{first}");
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries, compiled.len(), "one cache entry per program");

    let (again, second) = run(&args);
    assert_eq!(again, text, "greedy text from loaded programs");
    assert!(origins(&second).iter().all(|o| o == "loaded"), "{second}");

    let off: Vec<&str> = args
        .iter()
        .map(|&a| {
            if a == cache.to_str().unwrap() {
                "off"
            } else {
                a
            }
        })
        .collect();
    let (_, uncached) = run(&off);
    assert!(
        origins(&uncached).iter().all(|o| o == "compiled"),
        "{uncached}"
    );
}

/// One clear error, exit non-zero, for each kind of bad input.
#[test]
fn bad_inputs_fail_with_one_clear_error() {
    let dir = tmp("bad");
    let corrupt = dir.join("corrupt.gguf");
    std::fs::write(&corrupt, b"GGUF\x03\x00\x00\x00 truncated").unwrap();
    let hf = dir.join("hf");
    verify::fixtures::tiny::write_tiny_llama(
        &hf,
        1,
        &verify::fixtures::tiny::TinyConfig::default(),
    )
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
        // 2M pages of 16 tokens x 46 KB: a 1.5 TB pool, refused before the weights are read
        // (0.50 GiB of weights, 0.53 where the LM head's 8-bit screen is held beside them).
        (
            vec!["--max-pages", "2000000"],
            "GiB of weights + 2000000 pages x 16 tokens x 46080 B = 1373.29 GiB of pool",
        ),
        (vec!["--tp", "0"], "--tp 0"),
        // SmolLM2's 9 q heads: the degrees it can use are named.
        (
            vec!["--tp", "2"],
            "9 q heads and 3 KV heads cannot be split over 2 devices",
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
        stderr(&o).contains("page_size = 0; fix: page_size 1 or more"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists(), "a refused emit-step wrote {out_s}");
}

/// A K-quant GGUF (a Q4_K_M-style mix: Q6_K for attn_v, ffn_down and the LM head, Q4_K for the
/// other projections, Q8_0 embeddings) of the tiny random model serves through `generate`, and
/// greedily gives the tokens the dense reference gives on the very weights the loader decoded.
#[test]
fn generate_serves_a_k_quant_gguf() {
    use runtime::model::gguf::load_gguf;
    use verify::fixtures::tiny::{q4_k_m, write_tiny_llama_gguf_typed, TinyConfig};
    let dir = tmp("kquant");
    let path = dir.join("tiny.Q4_K_M.gguf");
    write_tiny_llama_gguf_typed(&path, 11, &TinyConfig::k_quant(), &q4_k_m).unwrap();
    let prompts = dir.join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"The quick brown fox\"}\n").unwrap();
    let mut args = vec![
        "generate",
        "--model",
        path.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--raw",
        "--max-new-tokens",
        "12",
    ];
    args.extend_from_slice(ENGINE);
    let o = kernelgen(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<u32> = serde_json::from_value(line["token_ids"][0].clone()).unwrap();
    let model = load_gguf(&path).unwrap();
    let tok = runtime::model::tokenizer::Tokenizer::from_gguf(&path).unwrap();
    let prompt = tok.encode("The quick brown fox", false).unwrap();
    let want = verify::dense::generate_greedy(&model, &prompt, 12, &model.config.eos_token_ids);
    assert_eq!(
        got, want,
        "engine vs dense reference on the K-quant weights"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An installed binary, run from `/` with no KERNELGEN_CACHE, uses the user's cache
/// (`$XDG_CACHE_HOME/kernelgen`): `setup` finds what is there and says so, and `generate` runs
/// from it. (The cache holds links to the repository's downloads, so nothing is fetched.)
#[test]
fn an_installed_binary_uses_the_users_cache_from_any_directory() {
    let xdg = tmp("xdg");
    let user_cache = xdg.join("kernelgen");
    let repo_cache = runtime::cache::cache_dir();
    for d in runtime::cache::downloads() {
        let link = user_cache.join(&d.dir);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(repo_cache.join(&d.dir), &link).unwrap();
    }
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kernelgen"))
            .args(args)
            .current_dir("/")
            .env_remove("KERNELGEN_CACHE")
            .env_remove("PJRT_PLUGIN")
            .env("XDG_CACHE_HOME", &xdg)
            .output()
            .unwrap()
    };
    let o = run(&["setup", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let done: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(done.len(), 3);
    for d in &done {
        assert_eq!(d["fetched"], false, "{d}");
        assert!(d["path"]
            .as_str()
            .unwrap()
            .starts_with(user_cache.to_str().unwrap()));
    }
    let mut args = vec!["generate", "--prompt", "hi", "--max-new-tokens", "4"];
    args.extend_from_slice(ENGINE);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(user_cache.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&xdg).unwrap();
}

/// `setup` refuses a wheel whose sha256 is not the pinned one (here: pip finds only a fake
/// wheel in a local index), exits 5 naming the package, and leaves nothing half-installed.
#[test]
fn setup_refuses_a_wheel_that_is_not_the_pinned_one() {
    let dir = tmp("fakewheel");
    let index = dir.join("index");
    std::fs::create_dir_all(&index).unwrap();
    // A well-formed wheel of the pinned name and version, with other contents.
    let wheel = std::fs::File::create(index.join("xla_cpu_pjrt-0.0.1-py3-none-any.whl")).unwrap();
    let mut zip = zip::ZipWriter::new(wheel);
    let info = "xla_cpu_pjrt-0.0.1.dist-info";
    for (name, text) in [
        (
            format!("{info}/METADATA"),
            "Metadata-Version: 2.1\nName: xla-cpu-pjrt\nVersion: 0.0.1\n",
        ),
        (
            format!("{info}/WHEEL"),
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        (format!("{info}/RECORD"), ""),
    ] {
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut zip, text.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
    let cache = dir.join("cache");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kernelgen"))
        .args(["setup", "--no-model"])
        .env("KERNELGEN_CACHE", &cache)
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", &index)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("xla-cpu-pjrt==0.0.1") && err.contains("sha256"),
        "{err}"
    );
    let d = &runtime::cache::downloads()[0];
    assert!(!cache.join(&d.dir).join(".complete").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Tensor parallelism on the default model: `--tp 3` (3 q heads and 1 KV head per device, the
/// MLP split three ways, one SPMD program over three CPU devices) generates the greedy text of
/// one device for every prompt of a continuous batch.
#[test]
fn tensor_parallel_generate_matches_one_device() {
    let dir = tmp("tp");
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"Write a haiku about TPUs.\"}\n{\"prompt\": \"What is the capital of France?\"}\n{\"prompt\": \"Name three colors.\", \"max_new_tokens\": 6}\n",
    )
    .unwrap();
    let mut texts = Vec::new();
    for tp in ["1", "3"] {
        let out = dir.join(format!("tp{tp}.jsonl"));
        let mut args = vec![
            "generate",
            "--prompts",
            prompts.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-new-tokens",
            "16",
            "--tp",
            tp,
        ];
        args.extend_from_slice(ENGINE);
        let o = kernelgen(&args);
        assert!(
            o.status.success(),
            "--tp {tp}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 3);
        texts.push(
            lines
                .iter()
                .map(|l| l["token_ids"].clone())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(texts[0], texts[1], "--tp 3 vs --tp 1 greedy tokens");
}
