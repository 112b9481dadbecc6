//! The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF from `scripts/setup.sh --model`):
//! header, config and tokenizer. Fails naming `scripts/setup.sh --model` when the file is missing.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime::model::gguf::{llama_config, read_metadata, GgmlType};
use runtime::model::tokenizer::Tokenizer;

#[test]
fn header_and_config() {
    let path = verify::fixtures::require_default_model();
    let meta = read_metadata(&path).unwrap();
    assert_eq!(meta.version, 3);
    let c = llama_config(&meta).unwrap();
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.num_q_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
            c.vocab_size
        ),
        (30, 576, 9, 3, 64, 1536, 49152)
    );
    assert_eq!(c.rope_theta, 100000.0);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.max_position_embeddings, 8192);
    let tokens = meta.get_str_array("tokenizer.ggml.tokens").unwrap();
    // BOS and EOS ids name the ChatML markers; <|im_end|> is EOS itself, so it is listed once.
    assert_eq!(tokens[c.bos_token_id.unwrap() as usize], "<|im_start|>");
    assert_eq!(
        c.eos_token_ids,
        vec![tokens.iter().position(|&t| t == "<|im_end|>").unwrap() as u32]
    );
    assert!(c.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    // Every tensor's type is one the loader reads, and the data lies inside the file.
    let len = std::fs::metadata(&path).unwrap().len();
    for t in &meta.tensors {
        let ty = GgmlType::from_id(t.type_id).unwrap();
        let n = t.num_elements().unwrap();
        assert!(
            meta.data_offset + t.offset + ty.bytes_for(n).unwrap() as u64 <= len,
            "{}",
            t.name
        );
    }
}

#[test]
fn tokenizer_round_trips_english_and_merges() {
    let path = verify::fixtures::require_default_model();
    let tok = Tokenizer::from_gguf(&path).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    // "Hello" and " world" are single vocabulary entries, so BPE must reach them.
    let hello = tok.token_id("Hello").expect("'Hello' in the vocabulary");
    let world = tok.token_id("Ġworld").expect("' world' in the vocabulary");
    assert_eq!(
        tok.encode("Hello world", false).unwrap(),
        vec![hello, world]
    );
    // SmolLM splits digits one by one.
    let digits = tok.encode("2024", false).unwrap();
    assert_eq!(digits.len(), 4);
    assert_eq!(tok.decode(&digits, false).unwrap(), "2024");
    // add_bos_token is false in this file.
    assert_eq!(tok.encode("Hello", true).unwrap(), vec![hello]);

    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    const WORDS: [&str; 20] = [
        "the",
        "capital",
        "of",
        "France",
        "is",
        "Paris",
        "model",
        "reads",
        "tokens",
        "quickly",
        "and",
        "writes",
        "them",
        "again",
        "weather",
        "isn't",
        "2025",
        "café",
        "attention,",
        "pages.",
    ];
    for _ in 0..100 {
        let n = rng.random_range(1..15);
        let mut words: Vec<&str> = (0..n)
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        let first = words[0].to_string();
        let cap = first[..1].to_uppercase() + &first[1..];
        words[0] = &cap;
        let sentence = words.join(" ") + ".";
        let ids = tok.encode(&sentence, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), sentence);
        // Whole common words are merged: far fewer tokens than bytes (digits stay single).
        let digits = sentence.chars().filter(char::is_ascii_digit).count();
        let bound = (sentence.len() - digits) / 2 + digits + 2;
        assert!(ids.len() <= bound, "{sentence:?} -> {} tokens", ids.len());
    }
}

#[test]
fn chat_template_from_the_file() {
    let path = verify::fixtures::require_default_model();
    let meta = read_metadata(&path).unwrap();
    let template = llama_config(&meta).unwrap().chat_template.unwrap();
    let tok = Tokenizer::from_gguf_metadata(&meta).unwrap();
    let text = tok
        .apply_chat_template(
            &template,
            &[("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    // No system message given: the template adds its default one first.
    assert!(text.starts_with("<|im_start|>system\n"), "{text}");
    assert!(
        text.ends_with(
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        ),
        "{text}"
    );
    let ids = tok.encode(&text, false).unwrap();
    let im_start = tok.token_id("<|im_start|>").unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == im_start).count(), 3);
    let with_system = tok
        .apply_chat_template(&template, &[("system", "Be brief."), ("user", "Hi")], false)
        .unwrap();
    assert_eq!(
        with_system,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}
