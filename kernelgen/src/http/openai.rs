//! The OpenAI HTTP API's request and response bodies (`/v1/completions`,
//! `/v1/chat/completions`), and how a request becomes a prompt and [`SamplingParams`].
//!
//! Fields kernelgen does not use (`user`, `logprobs: false`, `presence_penalty: 0`, ...) are
//! ignored, as OpenAI clients send them; a known field of the wrong type or out of range is a
//! 400 that names it.

use runtime::engine::{FinishReason, SamplingParams};
use serde::{Deserialize, Serialize};

/// The most samples one request may ask for (`n`).
pub const MAX_N: usize = 16;

/// `stop`: one string or a list.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// What both endpoints take besides the prompt or messages.
#[derive(Clone, Debug, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    /// The chat API's newer name for `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extension (vLLM's name).
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Extension (vLLM's name): generate past the model's end-of-sequence token.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Features this server does not have: refused by name rather than silently ignored, so a
    /// client never takes an answer for what it did not ask.
    pub tools: Option<serde_json::Value>,
    pub response_format: Option<serde_json::Value>,
    pub logprobs: Option<serde_json::Value>,
}

/// `prompt`: a string, or a list of one string.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub common: Common,
}

/// A message's `content`: text, or a list of parts of which only text parts are supported.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub common: Common,
}

/// `T` from `v`, or the field (`prefix` + the path inside `v`) and what is wrong with it.
fn typed<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
    prefix: &str,
) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let inner = e.path().to_string();
        let param = match (prefix, inner.as_str()) {
            ("", ".") => String::new(),
            ("", p) => p.to_string(),
            (pre, ".") => pre.to_string(),
            (pre, p) if p.starts_with('[') => format!("{pre}{p}"),
            (pre, p) => format!("{pre}.{p}"),
        };
        let msg = e.inner().to_string();
        // serde_json appends a position that means nothing once the body is parsed.
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        Invalid {
            message: if param.is_empty() {
                msg
            } else {
                format!("{param}: {msg}")
            },
            param: (!param.is_empty()).then_some(param),
        }
    })
}

/// The body as a JSON object.
fn object(body: &serde_json::Value) -> Result<(), Invalid> {
    if body.is_object() {
        Ok(())
    } else {
        Err(Invalid {
            param: None,
            message: "the body must be a JSON object".into(),
        })
    }
}

/// Field `name` of the body, which the request needs.
fn required<'a>(body: &'a serde_json::Value, name: &str) -> Result<&'a serde_json::Value, Invalid> {
    body.get(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| Invalid::new(name, format!("{name} is required")))
}

impl CompletionRequest {
    pub fn from_json(body: &serde_json::Value) -> Result<CompletionRequest, Invalid> {
        object(body)?;
        let prompt = typed(required(body, "prompt")?, "prompt").map_err(|_| {
            Invalid::new("prompt", "prompt must be a string or a list of one string")
        })?;
        Ok(CompletionRequest {
            prompt,
            common: typed(body, "")?,
        })
    }
}

impl ChatRequest {
    pub fn from_json(body: &serde_json::Value) -> Result<ChatRequest, Invalid> {
        object(body)?;
        Ok(ChatRequest {
            messages: typed(required(body, "messages")?, "messages")?,
            common: typed(body, "")?,
        })
    }
}

/// A request refused before it reaches the engine: the field and what is wrong (a 400).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub param: Option<String>,
    pub message: String,
}

impl Invalid {
    pub fn new(param: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            param: Some(param.to_string()),
            message: message.into(),
        }
    }
}

impl CompletionRequest {
    /// The prompt text (a list must hold exactly one prompt).
    pub fn text(&self) -> Result<&str, Invalid> {
        match &self.prompt {
            Prompt::Text(t) => Ok(t),
            Prompt::Texts(v) if v.len() == 1 => Ok(&v[0]),
            Prompt::Texts(v) => Err(Invalid::new(
                "prompt",
                format!(
                    "{} prompts in one request; send one prompt per request",
                    v.len()
                ),
            )),
        }
    }
}

impl ChatRequest {
    /// `(role, text)` of every message, for the chat template.
    pub fn turns(&self) -> Result<Vec<(String, String)>, Invalid> {
        if self.messages.is_empty() {
            return Err(Invalid::new("messages", "at least one message is required"));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if !["system", "user", "assistant", "developer"].contains(&m.role.as_str()) {
                    return Err(Invalid::new(
                        &format!("messages[{i}].role"),
                        format!(
                            "role {:?} is not one of system, developer, user, assistant",
                            m.role
                        ),
                    ));
                }
                let role = if m.role == "developer" {
                    "system".to_string()
                } else {
                    m.role.clone()
                };
                let text = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for (j, p) in parts.iter().enumerate() {
                            match (&*p.kind, &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                _ => {
                                    return Err(Invalid::new(
                                        &format!("messages[{i}].content[{j}]"),
                                        format!(
                                            "content part of type {:?}: only text parts are \
                                             supported",
                                            p.kind
                                        ),
                                    ))
                                }
                            }
                        }
                        text
                    }
                };
                Ok((role, text))
            })
            .collect()
    }
}

impl Common {
    /// The engine's sampling parameters. `max_tokens` defaults to `default_max_tokens` (what
    /// is left of the context for chat, 16 for completions, as OpenAI's API has it).
    pub fn sampling(&self, default_max_tokens: usize) -> Result<SamplingParams, Invalid> {
        self.refuse_unsupported()?;
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(0) => return Err(Invalid::new("max_tokens", "max_tokens must be >= 1")),
            Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
            None => default_max_tokens.max(1),
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(Invalid::new(
                "temperature",
                format!("temperature {temperature} must be in [0, 2] (0 = greedy)"),
            ));
        }
        if let Some(p) = self.top_p {
            if !(p.is_finite() && p > 0.0 && p <= 1.0) {
                return Err(Invalid::new(
                    "top_p",
                    format!("top_p {p} must be in (0, 1]"),
                ));
            }
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => None,
            Some(k) if k > 0 => Some(k as usize),
            Some(k) => {
                return Err(Invalid::new(
                    "top_k",
                    format!("top_k {k} must be >= 1 (or -1/0: off)"),
                ))
            }
        };
        let n = match self.n {
            None => 1,
            Some(n) if (1..=MAX_N as u64).contains(&n) => n as usize,
            Some(n) => return Err(Invalid::new("n", format!("n {n} must be in 1..={MAX_N}"))),
        };
        let stop = self.stop.clone().map(Stop::into_vec).unwrap_or_default();
        if let Some(i) = stop.iter().position(String::is_empty) {
            return Err(Invalid::new(
                "stop",
                format!("stop[{i}] is empty; give non-empty strings"),
            ));
        }
        Ok(SamplingParams {
            temperature,
            top_k,
            top_p: self.top_p,
            seed: self.seed,
            max_new_tokens: max_tokens,
            stop_token_ids: vec![],
            stop_strings: stop,
            n,
            ignore_eos: self.ignore_eos,
        })
    }

    /// A request for tool calls, structured output or log probabilities (this server has
    /// none of them) is a 400 naming the field; their "off" values pass.
    fn refuse_unsupported(&self) -> Result<(), Invalid> {
        use serde_json::Value;
        let unsupported = |field: &str, what: &str| {
            Err(Invalid::new(
                field,
                format!("{field}: {what} is not supported by this server; remove the field"),
            ))
        };
        if matches!(&self.tools, Some(Value::Array(t)) if !t.is_empty()) {
            return unsupported("tools", "tool calling");
        }
        if let Some(f) = &self.response_format {
            if f.get("type").and_then(Value::as_str) != Some("text") {
                return unsupported("response_format", "structured output (JSON mode, schemas)");
            }
        }
        match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
            Some(_) => unsupported("logprobs", "returning log probabilities"),
        }
    }

    /// Whether a stream ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// OpenAI's `finish_reason` for an engine finish reason.
pub fn finish_reason(r: &FinishReason) -> &'static str {
    match r {
        FinishReason::StopToken | FinishReason::StopString => "stop",
        FinishReason::Length | FinishReason::MaxSeqLen => "length",
        FinishReason::NonFiniteLogits => "error",
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(json: &str) -> Result<CompletionRequest, Invalid> {
        CompletionRequest::from_json(&serde_json::from_str(json).unwrap())
    }

    fn common(json: &str) -> Common {
        completion(json).unwrap().common
    }

    fn chat(json: &str) -> ChatRequest {
        ChatRequest::from_json(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn defaults_and_ranges() {
        let c = common(r#"{"prompt": "hi"}"#);
        let p = c.sampling(16).unwrap();
        assert_eq!((p.max_new_tokens, p.n, p.temperature), (16, 1, 1.0));
        assert!(!c.stream && !c.include_usage());
        let c = common(r#"{"prompt": "hi", "max_tokens": 0}"#);
        assert_eq!(
            c.sampling(16).unwrap_err().param.as_deref(),
            Some("max_tokens")
        );
        let c = common(r#"{"prompt": "hi", "n": 17}"#);
        assert_eq!(c.sampling(16).unwrap_err().param.as_deref(), Some("n"));
        let c = common(r#"{"prompt": "hi", "temperature": 2.5}"#);
        assert_eq!(
            c.sampling(16).unwrap_err().param.as_deref(),
            Some("temperature")
        );
        let c = common(r#"{"prompt": "hi", "top_p": 0}"#);
        assert_eq!(c.sampling(16).unwrap_err().param.as_deref(), Some("top_p"));
        let c = common(r#"{"prompt": "hi", "stop": ["a", ""]}"#);
        assert_eq!(c.sampling(16).unwrap_err().param.as_deref(), Some("stop"));
        for (field, json) in [
            (
                "tools",
                r#"{"prompt": "hi", "tools": [{"type": "function"}]}"#,
            ),
            (
                "response_format",
                r#"{"prompt": "hi", "response_format": {"type": "json_object"}}"#,
            ),
            ("logprobs", r#"{"prompt": "hi", "logprobs": 2}"#),
        ] {
            let e = common(json).sampling(16).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{json}");
        }
        let off = r#"{"prompt": "hi", "tools": [], "response_format": {"type": "text"}, "logprobs": false}"#;
        assert!(common(off).sampling(16).is_ok());
        let c = common(r#"{"prompt": "hi", "stop": "x", "top_k": -1, "seed": 3}"#);
        let p = c.sampling(16).unwrap();
        assert_eq!(
            (p.stop_strings, p.top_k, p.seed),
            (vec!["x".into()], None, Some(3))
        );
    }

    #[test]
    fn wrong_types_are_refused_naming_the_field_and_unknown_fields_ignored() {
        for (bad, field) in [
            (r#"{"prompt": 3}"#, "prompt"),
            (r#"{"max_tokens": 3}"#, "prompt"),
            (r#"{"prompt": "hi", "max_tokens": "ten"}"#, "max_tokens"),
            (r#"{"prompt": "hi", "stream": "yes"}"#, "stream"),
            (r#"{"prompt": "hi", "n": -1}"#, "n"),
            (
                r#"{"prompt": "hi", "stream_options": {"include_usage": 1}}"#,
                "stream_options.include_usage",
            ),
        ] {
            let e = completion(bad).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{bad}: {e:?}");
            assert!(e.message.contains(field), "{bad}: {e:?}");
        }
        assert!(completion("[1]")
            .unwrap_err()
            .message
            .contains("JSON object"));
        let ok = r#"{"prompt": ["hi"], "user": "u", "logprobs": null, "frequency_penalty": 0}"#;
        assert_eq!(completion(ok).unwrap().text().unwrap(), "hi");
        let e =
            ChatRequest::from_json(&serde_json::json!({"messages": [{"role": 1}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"), "{e:?}");
    }

    #[test]
    fn chat_turns_take_text_parts_and_refuse_others() {
        let r = chat(
            r#"{"messages": [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        );
        assert_eq!(
            r.turns().unwrap(),
            vec![
                ("system".into(), "be brief".into()),
                ("user".into(), "ab".into())
            ]
        );
        let r = chat(
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}"#,
        );
        assert_eq!(
            r.turns().unwrap_err().param.as_deref(),
            Some("messages[0].content[0]")
        );
        let r = chat(r#"{"messages": [{"role": "tool", "content": "x"}]}"#);
        assert!(r.turns().is_err());
    }
}
