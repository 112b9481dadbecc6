//! `kernelgen serve`: an OpenAI-compatible HTTP server (axum) in front of the paged-KV engine.
//!
//! - [`openai`]: request and response bodies, and their validation.
//! - [`engine_loop`]: the one thread that owns the engine; handlers talk to it over channels.
//! - [`metrics`]: the Prometheus registry behind `GET /metrics`.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with `stream`),
//! `GET /v1/models`, `GET /health`, `GET /metrics`. Errors use OpenAI's JSON error shape.

pub mod engine_loop;
pub mod metrics;
pub mod openai;

use crate::serve::Served;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine_loop::{EngineHandle, Event, Refusal};
use metrics::ServerMetrics;
use openai::{
    finish_reason, ChatRequest, Common, CompletionRequest, ErrorBody, ErrorDetail, Invalid, Usage,
};
use runtime::model::tokenizer::Tokenizer;
use runtime::model::LlamaConfig;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How the server listens and what it accepts.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub host: String,
    pub port: u16,
    /// Required as `Authorization: Bearer <key>` on `/v1/*` when set.
    pub api_key: Option<String>,
    /// The model id clients name (`GET /v1/models` lists it).
    pub model_name: String,
    /// Requests waiting for their first step beyond which new ones get 429.
    pub max_queue: usize,
    /// After SIGTERM/SIGINT: how long in-flight requests may run before they are aborted.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source} (is another server on that port? pass --port)")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("the HTTP server stopped: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone)]
struct AppState {
    engine: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    config: Arc<LlamaConfig>,
    model_name: Arc<str>,
    api_key: Option<Arc<str>>,
    metrics: ServerMetrics,
    max_seq_len: usize,
    started: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error response in OpenAI's shape.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<String>,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        ApiError {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    fn invalid(i: Invalid) -> ApiError {
        ApiError {
            param: i.param,
            ..ApiError::new(StatusCode::BAD_REQUEST, i.message)
        }
    }

    fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Serves `served` until `stop` completes (`wait_for_signal`: SIGTERM or SIGINT), then stops
/// accepting, lets in-flight requests finish for `opts.shutdown_timeout`, aborts the rest and
/// returns. `on_listen` gets the bound address (port 0 picks a free one); the server records
/// into `metrics`, of which the caller may keep a clone.
pub async fn serve_until(
    served: Served,
    opts: ServerOptions,
    on_listen: impl FnOnce(SocketAddr),
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    metrics: ServerMetrics,
) -> Result<(), ServerError> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    on_listen(listener.local_addr()?);
    let tokenizer = Arc::new(served.tokenizer.clone());
    let config = Arc::new(served.model.clone());
    let max_seq_len = served.engine.config().max_seq_len;
    let (engine, thread) = EngineHandle::start(served, metrics.clone(), opts.max_queue);
    let state = AppState {
        engine: engine.clone(),
        tokenizer,
        config,
        model_name: opts.model_name.clone().into(),
        api_key: opts.api_key.clone().map(Into::into),
        metrics,
        max_seq_len,
        started: unix_now(),
    };
    let app = router(state);
    let timeout = opts.shutdown_timeout;
    let drain = engine.clone();
    let shutdown = async move {
        stop.await;
        drain.shared.draining.store(true, Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            drain.abort_all("the server is shutting down");
        });
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    engine.stop();
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .route("/memory", get(memory))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such route; see /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics, /memory")
        })
        .with_state(state)
}

/// Constant-time equality, so the key cannot be guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.trim().as_bytes(), key.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send Authorization: Bearer <key>",
            )
            .code("invalid_api_key")
            .into_response();
        }
    }
    next.run(req).await
}

async fn health(State(s): State<AppState>) -> Response {
    match s.engine.unavailable() {
        None => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": why})),
        )
            .into_response(),
    }
}

async fn prometheus(State(s): State<AppState>) -> Response {
    s.metrics.refresh_process_memory();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// Where the memory went, as `generate --json-metrics` reports it under `memory`, with the
/// resident set now and the peak since start.
async fn memory(State(s): State<AppState>) -> Response {
    let report = s.engine.shared.memory.lock().ok().and_then(|m| m.clone());
    let now = runtime::mem::MemSnapshot::now();
    Json(json!({
        "now": now,
        "peak_rss_bytes": now.map(|m| m.peak_rss_bytes),
        "stages": report.as_ref().map(|r| &r.stages),
        "compiled": report.as_ref().map(|r| &r.compiled),
    }))
    .into_response()
}

async fn models(State(s): State<AppState>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": &*s.model_name,
            "object": "model",
            "created": s.started,
            "owned_by": "kernelgen",
            "max_model_len": s.max_seq_len,
        }],
    }))
    .into_response()
}

/// The body as JSON, or a 415/400 saying what is wrong.
fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<serde_json::Value, ApiError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON: send Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// What a validated request hands the engine.
struct Job {
    prompt: Vec<u32>,
    params: runtime::engine::SamplingParams,
    stream: bool,
    include_usage: bool,
}

impl AppState {
    fn check_model(&self, common: &Common) -> Result<(), ApiError> {
        match &common.model {
            Some(m) if m != &*self.model_name => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "model {m:?} is not served here; this server serves {:?}",
                    &*self.model_name
                ),
            )
            .code("model_not_found")),
            _ => Ok(()),
        }
    }

    /// Tokens of `text`, the sampling parameters, and the context check.
    fn job(&self, prompt: Vec<u32>, common: &Common, chat: bool) -> Result<Job, ApiError> {
        let room = self.max_seq_len.saturating_sub(prompt.len());
        if room == 0 {
            return Err(ApiError::invalid(Invalid::new(
                if chat { "messages" } else { "prompt" },
                format!(
                    "the prompt is {} tokens; this server's context (--max-seq-len) is {} tokens",
                    prompt.len(),
                    self.max_seq_len
                ),
            ))
            .code("context_length_exceeded"));
        }
        let params = common
            .sampling(if chat { room } else { 16.min(room) })
            .map_err(ApiError::invalid)?;
        if params.max_new_tokens > room {
            return Err(ApiError::invalid(Invalid::new(
                "max_tokens",
                format!(
                    "the prompt is {} tokens and max_tokens {}; together they exceed this server's context of {} tokens (--max-seq-len): ask for at most {room}",
                    prompt.len(),
                    params.max_new_tokens,
                    self.max_seq_len
                ),
            ))
            .code("context_length_exceeded"));
        }
        Ok(Job {
            prompt,
            params,
            stream: common.stream,
            include_usage: common.include_usage(),
        })
    }

    fn completion_job(&self, headers: &HeaderMap, body: &Bytes) -> Result<Job, ApiError> {
        let r =
            CompletionRequest::from_json(&parse_body(headers, body)?).map_err(ApiError::invalid)?;
        self.check_model(&r.common)?;
        let text = r.text().map_err(ApiError::invalid)?;
        let prompt = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("prompt: {e}")))?;
        if prompt.is_empty() {
            return Err(ApiError::invalid(Invalid::new(
                "prompt",
                "the prompt is empty",
            )));
        }
        self.job(prompt, &r.common, false)
    }

    fn chat_job(&self, headers: &HeaderMap, body: &Bytes) -> Result<Job, ApiError> {
        let r = ChatRequest::from_json(&parse_body(headers, body)?).map_err(ApiError::invalid)?;
        self.check_model(&r.common)?;
        let turns = r.turns().map_err(ApiError::invalid)?;
        let Some(template) = &self.config.chat_template else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "this model has no chat template: use /v1/completions",
            ));
        };
        let prompt = crate::serve::encode_chat(&self.tokenizer, template, &turns)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("messages: {e}")))?;
        self.job(prompt, &r.common, true)
    }

    /// Submits `job`; a refusal becomes its HTTP error.
    async fn submit(&self, job: &Job) -> Result<(u64, mpsc::UnboundedReceiver<Event>), ApiError> {
        self.engine
            .submit(job.prompt.clone(), job.params.clone())
            .await
            .map_err(|r| match r {
                Refusal::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
                Refusal::QueueFull { max_queue } => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{max_queue} requests are already waiting (--max-queue): retry later"),
                )
                .retry_after(1),
                Refusal::Unavailable(m) => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m).retry_after(5)
                }
            })
    }
}

/// Which endpoint a response is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Completion,
    Chat,
}

async fn completions(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    respond(
        s.clone(),
        s.completion_job(&headers, &body),
        Api::Completion,
    )
    .await
}

async fn chat_completions(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    respond(s.clone(), s.chat_job(&headers, &body), Api::Chat).await
}

async fn respond(s: AppState, job: Result<Job, ApiError>, api: Api) -> Response {
    let job = match job {
        Ok(j) => j,
        Err(e) => {
            s.metrics.count("rejected");
            return e.into_response();
        }
    };
    let (id, rx) = match s.submit(&job).await {
        Ok(x) => x,
        Err(e) => {
            s.metrics.count("rejected");
            return e.into_response();
        }
    };
    let meta = Meta {
        id: match api {
            Api::Completion => format!("cmpl-{:x}-{id}", s.started),
            Api::Chat => format!("chatcmpl-{:x}-{id}", s.started),
        },
        created: unix_now(),
        model: s.model_name.to_string(),
        api,
        n: job.params.n,
    };
    if job.stream {
        stream_response(meta, rx, job.include_usage).into_response()
    } else {
        unary_response(meta, rx).await
    }
}

/// What every chunk or response of one request repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    api: Api,
    n: usize,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.api, chunk) {
            (Api::Completion, _) => "text_completion",
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
        }
    }

    fn chunk(&self, choices: serde_json::Value, usage: Option<Usage>, with_usage: bool) -> String {
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if with_usage {
            v["usage"] = json!(usage);
        }
        v.to_string()
    }

    /// A choice of a streamed chunk: a text delta, a role, or the final reason.
    fn choice(
        &self,
        index: usize,
        text: Option<&str>,
        role: bool,
        reason: Option<&str>,
    ) -> serde_json::Value {
        match self.api {
            Api::Completion => json!({
                "index": index,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": reason,
            }),
            Api::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                    delta.insert("content".into(), json!(""));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({
                    "index": index,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": reason,
                })
            }
        }
    }
}

/// Collects every event into one response.
async fn unary_response(meta: Meta, mut rx: mpsc::UnboundedReceiver<Event>) -> Response {
    let mut texts = vec![String::new(); meta.n];
    let mut reasons: Vec<Option<&'static str>> = vec![None; meta.n];
    let usage;
    loop {
        match rx.recv().await {
            Some(Event::Delta { sample, text }) => {
                if let Some(t) = texts.get_mut(sample) {
                    t.push_str(&text)
                }
            }
            Some(Event::Finished { sample, reason, .. }) => {
                if let Some(r) = reasons.get_mut(sample) {
                    *r = Some(finish_reason(&reason));
                }
            }
            Some(Event::Done {
                prompt_tokens,
                completion_tokens,
            }) => {
                usage = Usage::new(prompt_tokens, completion_tokens);
                break;
            }
            Some(Event::Aborted(why)) => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response()
            }
            None => {
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the engine stopped")
                    .into_response()
            }
        }
    }
    let choices: Vec<serde_json::Value> = texts
        .into_iter()
        .zip(reasons)
        .enumerate()
        .map(|(i, (text, reason))| match meta.api {
            Api::Completion => json!({
                "index": i, "text": text, "logprobs": null, "finish_reason": reason,
            }),
            Api::Chat => json!({
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": reason,
            }),
        })
        .collect();
    Json(json!({
        "id": meta.id,
        "object": meta.object(false),
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage,
    }))
    .into_response()
}

/// Server-sent events: a role chunk per sample (chat), text deltas, a final chunk per sample
/// with its finish reason, a usage chunk when asked, then `data: [DONE]`. A forwarding task
/// turns engine events into chunks; when the client goes away, its send fails, it drops the
/// engine's receiver, and the engine cancels the request at its next step.
fn stream_response(
    meta: Meta,
    mut rx: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, out) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        if meta.api == Api::Chat {
            for i in 0..meta.n {
                let c = meta.chunk(
                    json!([meta.choice(i, None, true, None)]),
                    None,
                    include_usage,
                );
                if tx.send(c).await.is_err() {
                    return;
                }
            }
        }
        while let Some(ev) = rx.recv().await {
            let chunk = match ev {
                Event::Delta { sample, text } => meta.chunk(
                    json!([meta.choice(sample, Some(&text), false, None)]),
                    None,
                    include_usage,
                ),
                Event::Finished { sample, reason, .. } => {
                    let reason = finish_reason(&reason);
                    let text = (meta.api == Api::Completion).then_some("");
                    meta.chunk(
                        json!([meta.choice(sample, text, false, Some(reason))]),
                        None,
                        include_usage,
                    )
                }
                Event::Done {
                    prompt_tokens,
                    completion_tokens,
                } => {
                    if include_usage {
                        let usage = Usage::new(prompt_tokens, completion_tokens);
                        let _ = tx.send(meta.chunk(json!([]), Some(usage), true)).await;
                    }
                    let _ = tx.send("[DONE]".to_string()).await;
                    return;
                }
                Event::Aborted(why) => {
                    let e = json!({"error": {"message": why, "type": "server_error", "param": null, "code": null}});
                    let _ = tx.send(e.to_string()).await;
                    return;
                }
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out);
    let stream = futures_util::StreamExt::map(stream, |data| Ok(SseEvent::default().data(data)));
    Sse::new(stream).keep_alive(KeepAlive::default())
}
