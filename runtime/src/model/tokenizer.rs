//! Tokenizer: a Hugging Face `tokenizers` tokenizer from `tokenizer.json`, or a byte-level BPE
//! rebuilt from a GGUF file's `tokenizer.ggml.*` vocabulary; chat templates via minijinja.
//!
//! GGUF stores the BPE vocabulary (`tokens`, `token_type`, `merges`) but not the pre-tokenizer;
//! `tokenizer.ggml.pre` names it. Supported tags: the GPT-2 split (`gpt2`, `default`, ...), the
//! GPT-2 split after isolating each digit (`smollm`, `starcoder`, ...) and the Llama 3 split
//! (`llama3`, `llama-bpe`). Control tokens (`token_type` 3) become special tokens, matched whole
//! in the input and dropped by `decode(.., skip_special = true)`.

use super::gguf::{read_metadata, GgufMetadata, MetaValue};
use super::ModelError;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// How text is split before BPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// GPT-2's regex (contractions, letters, numbers, punctuation, spaces).
    Gpt2,
    /// Each digit alone, then GPT-2's regex (SmolLM, StarCoder).
    DigitsThenGpt2,
    /// Llama 3's regex (numbers in groups of up to three, no leading space on punctuation).
    Llama3,
}

impl PreTokenizerKind {
    fn from_gguf_tag(tag: &str) -> Option<PreTokenizerKind> {
        Some(match tag {
            "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => PreTokenizerKind::Gpt2,
            "smollm" | "starcoder" | "refact" | "codeshell" => PreTokenizerKind::DigitsThenGpt2,
            "llama3" | "llama-v3" | "llama-bpe" => PreTokenizerKind::Llama3,
            _ => return None,
        })
    }
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte-level BPE: `tokens[id]` is token `id`'s string in GPT-2's byte-to-character alphabet.
pub struct ByteLevelBpe<'a> {
    pub tokens: &'a [String],
    pub merges: Vec<(String, String)>,
    /// (id, special): tokens matched whole in the input; special ones are skipped on decode.
    pub added: Vec<(u32, bool)>,
    pub pre: PreTokenizerKind,
    /// Prepended by `encode(.., add_special = true)`.
    pub bos: Option<u32>,
}

impl ByteLevelBpe<'_> {
    pub fn build(&self) -> Result<tokenizers::Tokenizer, ModelError> {
        let mut vocab = Vocab::default();
        for (id, t) in self.tokens.iter().enumerate() {
            // Duplicate strings (padding entries in some vocabularies) keep their first id.
            vocab.entry(t.clone()).or_insert(id as u32);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, self.merges.clone())
            .ignore_merges(self.pre == PreTokenizerKind::Llama3)
            .build()
            .map_err(tok_err)?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        let byte_level = |use_regex: bool| -> PreTokenizerWrapper {
            ByteLevel::default()
                .add_prefix_space(false)
                .trim_offsets(true)
                .use_regex(use_regex)
                .into()
        };
        let pre: PreTokenizerWrapper = match self.pre {
            PreTokenizerKind::Gpt2 => byte_level(true),
            PreTokenizerKind::DigitsThenGpt2 => {
                Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into()
            }
            PreTokenizerKind::Llama3 => {
                let split = Split::new(
                    SplitPattern::Regex(LLAMA3_SPLIT.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(tok_err)?;
                Sequence::new(vec![split.into(), byte_level(false)]).into()
            }
        };
        tok.with_pre_tokenizer(Some(pre));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        let token = |id: u32| {
            self.tokens.get(id as usize).cloned().ok_or_else(|| {
                tok_err(format!(
                    "token id {id} outside the {}-token vocabulary",
                    self.tokens.len()
                ))
            })
        };
        if let Some(bos) = self.bos {
            let bos_str = token(bos)?;
            let post = TemplateProcessing::builder()
                .try_single(format!("{bos_str} $A"))
                .map_err(tok_err)?
                .special_tokens(vec![(bos_str.as_str(), bos)])
                .build()
                .map_err(tok_err)?;
            tok.with_post_processor(Some(post));
        }
        let mut special = Vec::new();
        let mut plain = Vec::new();
        for &(id, is_special) in &self.added {
            let t = AddedToken::from(token(id)?, is_special).normalized(false);
            if is_special {
                special.push(t);
            } else {
                plain.push(t);
            }
        }
        tok.add_special_tokens(&special);
        tok.add_tokens(&plain);
        Ok(tok)
    }
}

/// GPT-2's reversible map from bytes to printable characters (printable Latin-1 bytes map to
/// themselves, the rest to code points from U+0100 upward, in byte order).
pub fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

/// A text tokenizer with its special-token strings (for chat templates).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`; BOS/EOS strings come from a sibling `tokenizer_config.json` if any.
    pub fn from_file(path: &Path) -> Result<Tokenizer, ModelError> {
        if !path.is_file() {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "tokenizer file not found",
                ),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
        let mut tok = Tokenizer {
            inner,
            bos_token: None,
            eos_token: None,
        };
        let cfg_path = path.with_file_name("tokenizer_config.json");
        if let Ok(text) = std::fs::read_to_string(&cfg_path) {
            let cfg: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Format {
                    path: cfg_path.clone(),
                    reason: format!("invalid JSON: {e}"),
                })?;
            // A special token is either a string or an object with "content".
            let special = |key: &str| {
                let v = cfg.get(key)?;
                v.as_str()
                    .or_else(|| v.get("content").and_then(|c| c.as_str()))
                    .map(str::to_string)
            };
            tok.bos_token = special("bos_token");
            tok.eos_token = special("eos_token");
        }
        Ok(tok)
    }

    /// Rebuilds the tokenizer stored in a GGUF file (`tokenizer.ggml.model` "gpt2").
    pub fn from_gguf(path: &Path) -> Result<Tokenizer, ModelError> {
        Tokenizer::from_gguf_metadata(&read_metadata(path)?)
    }

    pub fn from_gguf_metadata(meta: &GgufMetadata) -> Result<Tokenizer, ModelError> {
        let format = |reason: String| ModelError::Format {
            path: meta.path.clone(),
            reason,
        };
        let unsupported = |reason: String| ModelError::Unsupported {
            path: meta.path.clone(),
            reason,
        };
        match meta.get_str("tokenizer.ggml.model") {
            Some("gpt2") => {}
            Some(m) => {
                return Err(unsupported(format!(
                    "tokenizer model '{m}' (only byte-level BPE 'gpt2')"
                )))
            }
            None => return Err(format("no tokenizer.ggml.model".into())),
        }
        let tag = meta.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let pre = PreTokenizerKind::from_gguf_tag(tag)
            .ok_or_else(|| unsupported(format!("pre-tokenizer '{tag}'")))?;
        let tokens: Vec<String> = meta
            .get_str_array("tokenizer.ggml.tokens")
            .ok_or_else(|| format("tokenizer.ggml.tokens missing or not strings".into()))?
            .into_iter()
            .map(str::to_string)
            .collect();
        let merges = meta
            .get_str_array("tokenizer.ggml.merges")
            .ok_or_else(|| format("tokenizer.ggml.merges missing or not strings".into()))?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| format(format!("merge '{m}' is not two space-separated tokens")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        let types: Vec<u64> = meta
            .get("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let added = types
            .iter()
            .enumerate()
            .filter_map(|(id, &t)| match t {
                3 => Some((id as u32, true)),
                4 => Some((id as u32, false)),
                _ => None,
            })
            .collect();
        let id = |key: &str| {
            meta.get(key)
                .and_then(MetaValue::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokens.len())
        };
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        // llama.cpp adds BOS unless the file says not to.
        let add_bos = meta
            .get("tokenizer.ggml.add_bos_token")
            .and_then(MetaValue::as_bool)
            .unwrap_or(true);
        let inner = ByteLevelBpe {
            tokens: &tokens,
            merges,
            added,
            pre,
            bos: bos.filter(|_| add_bos),
        }
        .build()?;
        Ok(Tokenizer {
            inner,
            bos_token: bos.map(|i| tokens[i as usize].clone()),
            eos_token: eos.map(|i| tokens[i as usize].clone()),
        })
    }

    /// Token ids of `text`; `add_special` adds what the tokenizer's post-processor adds (BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, ModelError> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special` drops special tokens. Ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Renders a Jinja chat template over `(role, content)` messages, with `bos_token` and
    /// `eos_token` set from this tokenizer.
    pub fn apply_chat_template<R: AsRef<str>, C: AsRef<str>>(
        &self,
        template: &str,
        messages: &[(R, C)],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        render_chat_template(
            template,
            messages,
            add_generation_prompt,
            self.bos_token.as_deref().unwrap_or(""),
            self.eos_token.as_deref().unwrap_or(""),
        )
    }
}

/// Renders a Hugging Face style chat template (Jinja, `trim_blocks` and `lstrip_blocks` on, as
/// `transformers` does). Variables: `messages` (list of `{role, content}`),
/// `add_generation_prompt`, `bos_token`, `eos_token`; function `raise_exception(msg)`.
pub fn render_chat_template<R: AsRef<str>, C: AsRef<str>>(
    template: &str,
    messages: &[(R, C)],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, ModelError> {
    use minijinja::{context, Environment, Error, ErrorKind};
    let err = |e: Error| ModelError::Tokenizer(format!("chat template: {e}"));
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    let msgs: Vec<std::collections::BTreeMap<&str, &str>> = messages
        .iter()
        .map(|(r, c)| {
            [("role", r.as_ref()), ("content", c.as_ref())]
                .into_iter()
                .collect()
        })
        .collect();
    let tmpl = env.template_from_str(template).map_err(err)?;
    tmpl.render(context! {
        messages => msgs,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(err)
}

/// Text of a growing token list, a piece at a time, for streaming: each call decodes only the
/// tokens since the last piece it returned (and the tokens of that piece, as context), where
/// decoding the whole list again for every new token costs time in proportion to the text so
/// far. Both decodes of a call start at the same token, so decoders that treat the first token
/// specially (a SentencePiece leading space) do so in both, and the piece is their difference.
/// A piece is returned only once the tokens end on a whole character (a multi-byte character
/// split across tokens decodes to U+FFFD until its last byte arrives): the pieces concatenated
/// are a prefix of [`Tokenizer::decode`] of the whole list, all of it unless the list ends
/// inside a character.
#[derive(Clone, Debug, Default)]
pub struct IncrementalDecoder {
    /// First token of the current window.
    prefix: usize,
    /// Tokens already turned into returned text.
    read: usize,
}

/// What the newest tokens add, by [`IncrementalDecoder::next`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text that follows every earlier piece (empty when the tokens added none).
    Text(String),
    /// The tokens end inside a character: nothing is returned yet; this is the text decoded
    /// past the earlier pieces so far, ending in U+FFFD.
    Unfinished(String),
    /// The window's decode does not extend its earlier decode (a decoder that rewrites earlier
    /// text; none of the byte-level or SentencePiece decoders here): nothing is returned, and
    /// a caller that needs the text now decodes the whole list.
    Rewritten,
}

impl IncrementalDecoder {
    /// What `tokens` (every token so far, the earlier calls' ones first) add to the pieces
    /// earlier calls returned, with `decode` the tokenizer's decode of a token list.
    pub fn next<E>(
        &mut self,
        tokens: &[u32],
        decode: impl Fn(&[u32]) -> Result<String, E>,
    ) -> Result<Piece, E> {
        if tokens.len() <= self.read {
            return Ok(Piece::Text(String::new()));
        }
        let before = decode(&tokens[self.prefix..self.read])?;
        let now = decode(&tokens[self.prefix..])?;
        let Some(added) = now.strip_prefix(before.as_str()) else {
            return Ok(Piece::Rewritten);
        };
        if added.ends_with('\u{FFFD}') {
            return Ok(Piece::Unfinished(added.to_string()));
        }
        self.prefix = self.read;
        self.read = tokens.len();
        Ok(Piece::Text(added.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SmolLM2 tokenizer from the cache (byte-level BPE: single-byte tokens split
    /// multi-byte characters, and special tokens decode to nothing when skipped).
    fn smollm2() -> &'static Tokenizer {
        static TOK: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
        TOK.get_or_init(|| {
            Tokenizer::from_gguf(&crate::cache::default_model_path())
                .expect("the cached SmolLM2 model (run scripts/setup.sh --model)")
        })
    }

    /// Feeds `ids` one at a time; returns the pieces concatenated.
    fn streamed(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
        let mut dec = IncrementalDecoder::default();
        let mut out = String::new();
        for n in 1..=ids.len() {
            if let Piece::Text(piece) = dec
                .next(&ids[..n], |t| tok.decode(t, skip_special))
                .unwrap()
            {
                out += &piece;
            }
        }
        out
    }

    /// What streaming promises: the pieces are the whole decode, less at most a tail that ends
    /// inside a character.
    fn assert_streams_the_decode(tok: &Tokenizer, ids: &[u32], skip_special: bool) {
        let whole = tok.decode(ids, skip_special).unwrap();
        let got = streamed(tok, ids, skip_special);
        assert!(
            whole.starts_with(&got),
            "pieces {got:?} are not a prefix of the decode {whole:?} (ids {ids:?})"
        );
        if !whole.ends_with('\u{FFFD}') {
            assert_eq!(got, whole, "ids {ids:?}");
        }
    }

    #[test]
    fn incremental_decoding_streams_text_split_inside_characters() {
        let tok = smollm2();
        let text = "Grüße, naïve café: 3€ → 日本語 🙂🙂 ok\n\tend";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(streamed(tok, &ids, true), text);
        // Every prefix, including those that end inside a character.
        for n in 0..=ids.len() {
            assert_streams_the_decode(tok, &ids[..n], true);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Random ids: half from the first 300 (special tokens and single bytes, which split
        /// and break characters), half from the whole vocabulary; special tokens kept or
        /// skipped.
        #[test]
        fn incremental_decoding_equals_decoding_the_whole_list(
            picks in proptest::collection::vec((proptest::bool::ANY, 0u32..49152), 1..80),
            skip_special in proptest::bool::ANY,
        ) {
            let tok = smollm2();
            let ids: Vec<u32> = picks
                .iter()
                .map(|&(low, id)| if low { id % 300 } else { id % tok.vocab_size() as u32 })
                .collect();
            assert_streams_the_decode(tok, &ids, skip_special);
        }
    }

    #[test]
    fn byte_alphabet_is_a_bijection_onto_printable_chars() {
        let chars: std::collections::HashSet<char> = (0..=255u8).map(byte_to_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert!(chars.iter().all(|c| !c.is_whitespace() && !c.is_control()));
    }

    #[test]
    fn chat_template_variables_and_errors() {
        let t =
            "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m['content'] }}\n{% endfor %}\
                 {% if add_generation_prompt %}[assistant]{% endif %}{{ eos_token }}";
        let out = render_chat_template(
            t,
            &[("user", "hi"), ("assistant", "yo")],
            true,
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(out, "<s>[user]hi\n[assistant]yo\n[assistant]</s>");
        let bad = render_chat_template("{{ raise_exception('no') }}", &[("u", "c")], false, "", "");
        assert!(matches!(bad, Err(ModelError::Tokenizer(m)) if m.contains("no")));
        assert!(render_chat_template("{% for %}", &[("u", "c")], false, "", "").is_err());
    }
}
