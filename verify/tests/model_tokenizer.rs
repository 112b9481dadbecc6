//! The tiny model's tokenizer: `tokenizer.json` and the GGUF rebuild agree, text round-trips,
//! special tokens are atomic, chat templates render.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime::model::gguf::GgmlType;
use runtime::model::tokenizer::Tokenizer;
use runtime::model::ModelError;
use verify::fixtures::tiny::{
    write_tiny_llama, write_tiny_llama_gguf, TinyConfig, BOS_ID, CHAT_TEMPLATE, EOS_ID, IM_END_ID,
};

fn random_text(rng: &mut ChaCha8Rng) -> String {
    const WORDS: [&str; 16] = [
        "the", "cache", "Hello", "world", "pages", "token", "river", "12", "3.5", "!", ",",
        "qu'il", "naïve", "日本", "\n", "  ",
    ];
    let n = rng.random_range(1..12);
    let mut s = String::new();
    for i in 0..n {
        if i > 0 && rng.random_bool(0.7) {
            s.push(' ');
        }
        if rng.random_bool(0.1) {
            // Any printable ASCII character too.
            s.push(char::from(rng.random_range(32u8..127)));
        } else {
            s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        }
    }
    s
}

#[test]
fn tokenizer_json_and_gguf_agree_and_round_trip() {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = std::env::temp_dir().join(format!("model-tok-{}-{seed}", std::process::id()));
    let cfg = TinyConfig::default();
    write_tiny_llama(&dir, seed, &cfg).unwrap();
    let gguf = dir.join("tiny.gguf");
    write_tiny_llama_gguf(&gguf, seed, &cfg, GgmlType::F32).unwrap();
    let a = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let b = Tokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(a.vocab_size(), cfg.vocab_size);
    assert_eq!(a.bos_token(), Some("<s>"));
    assert_eq!(b.eos_token(), Some("</s>"));
    for _ in 0..200 {
        let text = random_text(&mut rng);
        let ids = a.encode(&text, false).unwrap();
        assert_eq!(b.encode(&text, false).unwrap(), ids, "{text:?}");
        assert!(ids.iter().all(|&i| (i as usize) < cfg.vocab_size));
        assert_eq!(a.decode(&ids, false).unwrap(), text);
        // Merges apply: never more tokens than bytes, fewer on English words.
        assert!(ids.len() <= text.len());
        let with_bos = a.encode(&text, true).unwrap();
        assert_eq!(with_bos[0], BOS_ID);
        assert_eq!(&with_bos[1..], ids.as_slice());
        assert_eq!(b.encode(&text, true).unwrap(), with_bos);
        assert_eq!(a.decode(&with_bos, true).unwrap(), text);
    }
    assert!(a.encode(" the cache", false).unwrap().len() < " the cache".len());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn special_tokens_are_atomic_and_chat_template_renders() {
    let seed: u64 = rand::random();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = std::env::temp_dir().join(format!("model-chat-{}-{seed}", std::process::id()));
    write_tiny_llama(&dir, seed, &TinyConfig::default()).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let im_start = tok.token_id("<|im_start|>").unwrap();
    assert_eq!(tok.token_id("<|im_end|>"), Some(IM_END_ID));
    assert_eq!(tok.token_id("</s>"), Some(EOS_ID));
    let user = random_text(&mut rng);
    let reply = random_text(&mut rng);
    let text = tok
        .apply_chat_template(
            CHAT_TEMPLATE,
            &[("user", user.as_str()), ("assistant", reply.as_str())],
            true,
        )
        .unwrap();
    assert_eq!(
        text,
        format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{reply}<|im_end|>\n<|im_start|>assistant\n")
    );
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == im_start).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == IM_END_ID).count(), 2);
    assert_eq!(ids[0], im_start);
    // Skipping special tokens drops exactly them.
    let plain = tok.decode(&ids, true).unwrap();
    assert_eq!(
        plain,
        format!("user\n{user}\nassistant\n{reply}\nassistant\n")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_tokenizer_file_is_an_io_error() {
    let path = std::env::temp_dir().join("no-such-dir-kernelgen/tokenizer.json");
    let err = Tokenizer::from_file(&path).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }));
    assert!(err.to_string().contains("no-such-dir-kernelgen"));
    assert!(Tokenizer::from_gguf(&path.with_extension("gguf")).is_err());
}
