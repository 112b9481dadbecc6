//! Loaders against the tiny random model: HF directory and GGUF (F32, the legacy quants and the
//! K-quants) must give the weights that were generated, in the model's layout; bad files give
//! errors naming the file.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime::model::gguf::{load_gguf, read_metadata, GgmlType};
use runtime::model::safetensors::load_hf_dir;
use runtime::model::{LlamaWeights, Matrix, ModelError, ModelFile, Part, WeightSource};
use std::path::Path;
use verify::fixtures::tiny::{
    tiny_weights, write_tiny_llama, write_tiny_llama_gguf, TinyConfig, TinyDtype,
};

fn fresh_seed() -> u64 {
    let seed = rand::random();
    eprintln!("seed {seed}");
    seed
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "model-loaders-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// All weights of `a` and `b` side by side, with a label.
fn pairs<'a>(a: &'a LlamaWeights, b: &'a LlamaWeights) -> Vec<(String, &'a [f32], &'a [f32])> {
    let m = |x: &'a Matrix| x.data.as_slice();
    let mut out = vec![
        ("embed".to_string(), m(&a.embed), m(&b.embed)),
        (
            "final_norm".to_string(),
            a.final_norm.as_slice(),
            b.final_norm.as_slice(),
        ),
    ];
    for (i, (la, lb)) in a.layers.iter().zip(&b.layers).enumerate() {
        out.push((format!("{i}.attn_norm"), &la.attn_norm, &lb.attn_norm));
        out.push((format!("{i}.ffn_norm"), &la.ffn_norm, &lb.ffn_norm));
        for (n, x, y) in [
            ("wqkv", &la.wqkv, &lb.wqkv),
            ("wo", &la.wo, &lb.wo),
            ("w_gate_up", &la.w_gate_up, &lb.w_gate_up),
            ("w_down", &la.w_down, &lb.w_down),
        ] {
            assert_eq!((x.rows, x.cols), (y.rows, y.cols), "{i}.{n}");
            out.push((format!("{i}.{n}"), m(x), m(y)));
        }
    }
    if let (Some(x), Some(y)) = (&a.lm_head, &b.lm_head) {
        out.push(("lm_head".into(), m(x), m(y)));
    }
    out
}

#[test]
fn hf_dir_round_trips_the_generated_weights() {
    let seed = fresh_seed();
    for (tied, dtype) in [
        (false, TinyDtype::F32),
        (true, TinyDtype::F32),
        (false, TinyDtype::F16),
        (true, TinyDtype::BF16),
    ] {
        let cfg = TinyConfig {
            tie_word_embeddings: tied,
            dtype,
            ..TinyConfig::default()
        };
        let dir = tmp("hf");
        write_tiny_llama(&dir, seed, &cfg).unwrap();
        let model = load_hf_dir(&dir).unwrap();
        assert_eq!(model.config, cfg.llama_config());
        assert_eq!(model.weights.lm_head.is_none(), tied);
        let want = tiny_weights(seed, &cfg);
        let rel = match dtype {
            TinyDtype::F32 => 0.0,
            TinyDtype::F16 => 1.0 / 2048.0,
            TinyDtype::BF16 => 1.0 / 256.0,
        };
        for (name, got, exp) in pairs(&model.weights, &want) {
            assert_eq!(got.len(), exp.len(), "{name}");
            for (g, e) in got.iter().zip(exp) {
                assert!(
                    (g - e).abs() <= rel * e.abs() + 1e-7,
                    "{dtype:?} {name}: {g} vs {e}"
                );
            }
        }
        // Same seed, same files.
        let again = tmp("hf2");
        write_tiny_llama(&again, seed, &cfg).unwrap();
        for f in ["model.safetensors", "config.json", "tokenizer.json"] {
            assert_eq!(
                std::fs::read(dir.join(f)).unwrap(),
                std::fs::read(again.join(f)).unwrap(),
                "{f}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(again).unwrap();
    }
}

/// The GGUF writer stores Q/K rows permuted as llama.cpp's converter does; an exact match with
/// the HF directory proves the loader un-permutes and stacks correctly.
#[test]
fn gguf_f32_equals_hf_dir_exactly() {
    let seed = fresh_seed();
    for tied in [false, true] {
        let cfg = TinyConfig {
            tie_word_embeddings: tied,
            ..TinyConfig::default()
        };
        let dir = tmp("gguf");
        write_tiny_llama(&dir, seed, &cfg).unwrap();
        let path = dir.join("tiny.gguf");
        write_tiny_llama_gguf(&path, seed, &cfg, GgmlType::F32).unwrap();
        let hf = load_hf_dir(&dir).unwrap();
        let gg = load_gguf(&path).unwrap();
        assert_eq!(gg.config, hf.config);
        assert_eq!(gg.weights, hf.weights);
        assert_eq!(gg.source, path);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Largest |a - b| over a tensor.
fn worst_error(g: &[f32], e: &[f32]) -> f32 {
    g.iter()
        .zip(e)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn quantized_gguf_is_close_to_f32() {
    let seed = fresh_seed();
    let dir = tmp("quant");
    // (type, config, code steps across a block's range: the error bound is range / steps)
    let legacy = TinyConfig::default();
    let k = TinyConfig::k_quant();
    for (ty, cfg, steps) in [
        (GgmlType::Q8_0, &legacy, 127.0),
        (GgmlType::Q4_0, &legacy, 8.0),
        (GgmlType::Q4_1, &legacy, 7.5),
        (GgmlType::Q5_0, &legacy, 16.0),
        (GgmlType::Q5_1, &legacy, 15.5),
        (GgmlType::IQ4_NL, &legacy, 4.0),
        (GgmlType::F16, &legacy, 1024.0),
        (GgmlType::BF16, &legacy, 128.0),
        (GgmlType::Q2_K, &k, 1.0),
        (GgmlType::Q3_K, &k, 2.0),
        (GgmlType::Q4_K, &k, 4.0),
        (GgmlType::Q5_K, &k, 8.0),
        (GgmlType::Q6_K, &k, 16.0),
    ] {
        let want = tiny_weights(seed, cfg);
        let path = dir.join(format!("{ty:?}.gguf"));
        write_tiny_llama_gguf(&path, seed, cfg, ty).unwrap();
        let got = load_gguf(&path).unwrap();
        assert_eq!(got.config.hidden_size, cfg.hidden_size);
        let meta = read_metadata(&path).unwrap();
        assert!(
            meta.tensors.iter().any(|t| t.type_id == ty.id()),
            "{ty:?} stored"
        );
        for (name, g, e) in pairs(&got.weights, &want) {
            let tol = e.iter().fold(0f32, |m, v| m.max(v.abs())) / steps * 1.1;
            let worst = worst_error(g, e);
            assert!(worst <= tol, "{ty:?} {name}: error {worst} > {tol}");
            if name.ends_with("norm") {
                assert_eq!(g, e, "norms stay F32");
            }
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A Q4_K_M-style mix (Q6_K for attn_v, ffn_down and the LM head, Q4_K elsewhere, Q8_0
/// embeddings), as llama.cpp writes it, loads with each tensor decoded by its own type.
#[test]
fn a_k_quant_mix_loads_tensor_by_tensor() {
    use verify::fixtures::tiny::{q4_k_m, write_tiny_llama_gguf_typed};
    let seed = fresh_seed();
    let cfg = TinyConfig::k_quant();
    let dir = tmp("kmix");
    let path = dir.join("tiny.Q4_K_M.gguf");
    let mix = q4_k_m;
    write_tiny_llama_gguf_typed(&path, seed, &cfg, &mix).unwrap();
    let meta = read_metadata(&path).unwrap();
    for t in &meta.tensors {
        if !t.name.ends_with("norm.weight") {
            assert_eq!(t.type_id, mix(&t.name).id(), "{}", t.name);
        }
    }
    let got = load_gguf(&path).unwrap();
    let want = tiny_weights(seed, &cfg);
    for (name, g, e) in pairs(&got.weights, &want) {
        let tol = e.iter().fold(0f32, |m, v| m.max(v.abs())) / 4.0 * 1.1;
        assert!(worst_error(g, e) <= tol, "{name}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// An opened file hands out each part exactly as loading the whole model gives it, for every
/// loader and type: streaming the weights to a device changes no value.
#[test]
fn parts_read_on_demand_equal_the_loaded_weights() {
    use verify::fixtures::tiny::{q4_k_m, write_tiny_llama_gguf_typed};
    let seed = fresh_seed();
    let dir = tmp("parts");
    let tied = TinyConfig {
        tie_word_embeddings: true,
        dtype: TinyDtype::BF16,
        ..TinyConfig::default()
    };
    write_tiny_llama(&dir, seed, &tied).unwrap();
    let q8 = dir.join("q8.gguf");
    write_tiny_llama_gguf(&q8, seed, &TinyConfig::default(), GgmlType::Q8_0).unwrap();
    let kq = dir.join("kq.gguf");
    write_tiny_llama_gguf_typed(&kq, seed, &TinyConfig::k_quant(), &q4_k_m).unwrap();
    for path in [dir.clone(), q8, kq] {
        let file = ModelFile::open(&path).unwrap();
        let loaded = ModelFile::open(&path).unwrap().load().unwrap();
        let parts = Part::all(&file.config);
        assert_eq!(
            parts.contains(&Part::LmHead),
            !file.config.tie_word_embeddings
        );
        // One scratch for every part, as the uploader reads them.
        let mut scratch = Vec::new();
        for p in parts {
            let streamed = file.part(p, &mut scratch).unwrap();
            assert_eq!(streamed, loaded.part(p, &mut Vec::new()).unwrap(), "{p:?}");
            let n: usize = p.dims(&file.config).iter().product();
            assert_eq!(streamed.len(), n, "{p:?} holds what its dims say");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn assert_names(err: &ModelError, path: &Path) {
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "error does not name {}: {err}",
        path.display()
    );
}

#[test]
fn missing_files_are_io_errors_naming_the_path() {
    let dir = tmp("missing");
    let gguf = dir.join("nope.gguf");
    let err = load_gguf(&gguf).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
    assert_names(&err, &gguf);
    let err = load_hf_dir(&dir.join("nodir")).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
    assert_names(&err, &dir.join("nodir"));
    // A directory without config.json.
    let err = load_hf_dir(&dir).unwrap_err();
    assert_names(&err, &dir.join("config.json"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_and_corrupt_gguf_are_errors_naming_the_path() {
    let seed = fresh_seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tmp("trunc");
    let good = dir.join("good.gguf");
    write_tiny_llama_gguf(&good, seed, &TinyConfig::default(), GgmlType::Q8_0).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let header_end = read_metadata(&good).unwrap().data_offset as usize;
    let bad = dir.join("bad.gguf");
    // Cuts in the header, at its end and in the tensor data.
    let mut cuts = vec![0, 3, 4, 8, header_end, bytes.len() - 1];
    cuts.extend((0..12).map(|_| rng.random_range(0..bytes.len())));
    for cut in cuts {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        // Refused when opened, before any tensor is read or uploaded.
        let err = ModelFile::open(&bad).unwrap_err();
        assert!(
            matches!(err, ModelError::Format { .. } | ModelError::Tensor { .. }),
            "cut {cut}: {err}"
        );
        assert_names(&err, &bad);
    }
    // Wrong magic.
    let mut wrong = bytes.clone();
    wrong[..4].copy_from_slice(b"GGML");
    std::fs::write(&bad, &wrong).unwrap();
    let err = load_gguf(&bad).unwrap_err();
    assert!(
        matches!(err, ModelError::Format { .. }) && err.to_string().contains("magic"),
        "{err}"
    );
    assert_names(&err, &bad);
    // Random garbage of random length never panics.
    for _ in 0..20 {
        let n = rng.random_range(0..4096);
        let mut junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        if rng.random_bool(0.5) && n >= 8 {
            junk[..4].copy_from_slice(b"GGUF");
            junk[4..8].copy_from_slice(&3u32.to_le_bytes());
        }
        std::fs::write(&bad, &junk).unwrap();
        assert_names(&load_gguf(&bad).unwrap_err(), &bad);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Rewrites the ggml type of tensor `name` in a GGUF image (tensor infos follow the metadata:
/// name, n_dims u32, dims u64 each, type u32).
fn set_tensor_type(bytes: &mut [u8], name: &str, type_id: u32) {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend(name.as_bytes());
    let at = bytes
        .windows(key.len())
        .rposition(|w| w == key.as_slice())
        .unwrap()
        + key.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let t = at + 4 + 8 * n_dims;
    bytes[t..t + 4].copy_from_slice(&type_id.to_le_bytes());
}

#[test]
fn unsupported_type_and_architecture_are_named() {
    let seed = fresh_seed();
    let dir = tmp("unsup");
    let good = dir.join("good.gguf");
    write_tiny_llama_gguf(&good, seed, &TinyConfig::default(), GgmlType::Q8_0).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.join("iq2.gguf");
    let mut b = bytes.clone();
    set_tensor_type(&mut b, "blk.1.ffn_up.weight", 16);
    std::fs::write(&bad, &b).unwrap();
    let err = ModelFile::open(&bad).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Unsupported { .. }), "{err}");
    assert!(
        msg.contains("blk.1.ffn_up.weight") && msg.contains("IQ2_XXS") && msg.contains("Q4_K"),
        "names the tensor, its type and the supported ones: {msg}"
    );
    assert_names(&err, &bad);
    // A K-quant on rows that are not whole 256-element blocks (the default tiny model's 64-wide
    // rows): an error naming the tensor, not a panic.
    let mut b = bytes.clone();
    set_tensor_type(&mut b, "blk.0.attn_norm.weight", 12);
    std::fs::write(&bad, &b).unwrap();
    let err = load_gguf(&bad).unwrap_err();
    assert!(
        err.to_string().contains("blk.0.attn_norm.weight") && err.to_string().contains("Q4_K"),
        "{err}"
    );

    // Architecture: same-length replacement keeps the file valid.
    let arch = b"\x05\x00\x00\x00\x00\x00\x00\x00llama";
    let at = bytes.windows(arch.len()).position(|w| w == arch).unwrap();
    let mut b = bytes.clone();
    b[at + 8..at + 13].copy_from_slice(b"gemma");
    let bad = dir.join("gemma.gguf");
    std::fs::write(&bad, &b).unwrap();
    let err = load_gguf(&bad).unwrap_err();
    assert!(
        matches!(err, ModelError::Unsupported { .. }) && err.to_string().contains("gemma"),
        "{err}"
    );
    assert_names(&err, &bad);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hf_dir_rejects_bad_configs() {
    let seed = fresh_seed();
    let dir = tmp("badcfg");
    write_tiny_llama(&dir, seed, &TinyConfig::default()).unwrap();
    let cfg_path = dir.join("config.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let cases: [(&str, serde_json::Value); 4] = [
        ("model_type", "gpt2".into()),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0}),
        ),
        ("hidden_size", 63.into()),
        ("num_key_value_heads", 3.into()),
    ];
    for (key, value) in cases {
        let mut cfg = original.clone();
        cfg[key] = value;
        if key == "model_type" {
            cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        }
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let err = load_hf_dir(&dir).unwrap_err();
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{key}: {err}"
        );
    }
    std::fs::write(&cfg_path, "{ not json").unwrap();
    assert!(matches!(
        load_hf_dir(&dir).unwrap_err(),
        ModelError::Format { .. }
    ));
    std::fs::remove_dir_all(dir).unwrap();
}
