//! `kernelgen serve` as clients use it, on the default SmolLM2-135M-Instruct, over plain HTTP
//! (a minimal HTTP/1.0 client on a TCP socket, so the bytes on the wire are what is checked),
//! and through the real `openai` Python client. Every server binds 127.0.0.1 on a free port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::SMALL_ENGINE as ENGINE;

/// A running server, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kernelgen"))
            .args(["serve", "--port", "0"])
            .args(ENGINE)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kernelgen serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let addr = loop {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => panic!("serve exited before listening:\n{seen}"),
            };
            seen.push_str(&line);
            seen.push('\n');
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, addr }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        http(&self.addr, method, path, headers, body)
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            &body.to_string(),
        )
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self.request("GET", "/metrics", &[], "").body;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until `cond` holds (polling), or fails after `secs`.
    fn wait_for(&self, secs: u64, what: &str, cond: impl Fn(&Server) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
    }

    /// The `data:` payloads of a server-sent event stream.
    fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

/// One HTTP/1.0 exchange: the server closes the connection after the response, so the body
/// is everything up to EOF, never chunked.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// Text of a streamed response: every choice's deltas, by index.
fn streamed_text(events: &[String], chat: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if out.len() <= i {
                out.resize(i + 1, String::new());
            }
            let piece = if chat {
                c["delta"]["content"].as_str()
            } else {
                c["text"].as_str()
            };
            out[i].push_str(piece.unwrap_or(""));
        }
    }
    out
}

#[test]
fn serves_completions_chat_and_streams_the_same_text_over_http() {
    let s = Server::start(&[]);
    assert_eq!(s.request("GET", "/health", &[], "").status, 200);
    let models = s.request("GET", "/v1/models", &[], "").json();
    let model = models["data"][0]["id"].as_str().unwrap().to_string();

    // A greedy completion, whole and streamed: the same text, and the same as `generate`.
    let prompt = "The capital of France is";
    let body = json!({"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0});
    let whole = s.post("/v1/completions", &body);
    assert_eq!(whole.status, 200, "{}", whole.body);
    let v = whole.json();
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        12
    );
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + 12)
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let streamed = s.post("/v1/completions", &stream_body);
    assert!(
        streamed.headers.contains("text/event-stream"),
        "{}",
        streamed.headers
    );
    let events = streamed.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(streamed_text(&events, false), vec![text.clone()]);
    let mut args = vec![
        "generate",
        "--raw",
        "--prompt",
        prompt,
        "--max-new-tokens",
        "12",
    ];
    args.extend_from_slice(ENGINE);
    let generated = crate::common::kernelgen(&args);
    assert!(generated.status.success());
    assert_eq!(
        String::from_utf8_lossy(&generated.stdout).trim_end(),
        text.trim_end(),
        "the server's text is generate's"
    );

    // Streamed chat with usage: role first, one id throughout, finish reason, usage, [DONE].
    let chat = json!({
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let r = s.post("/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.events();
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["id"] == chunks[0]["id"] && c["object"] == "chat.completion.chunk"));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() <= 16);
    let reasons: Vec<&Value> = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().unwrap())
        .map(|c| &c["finish_reason"])
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(reasons.len(), 1);
    let answer = streamed_text(&events, true).remove(0);
    assert!(answer.contains("Paris"), "{answer}");
    let mut whole_chat = chat.clone();
    whole_chat["stream"] = json!(false);
    let v = s.post("/v1/chat/completions", &whole_chat).json();
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str(),
        Some(answer.as_str())
    );
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");

    // n = 2 with a seed: two choices, the same pair again with the same seed.
    let sampled = json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 1.0,
                          "n": 2, "seed": 11});
    let a = s.post("/v1/completions", &sampled).json();
    let b = s.post("/v1/completions", &sampled).json();
    assert_eq!(a["choices"].as_array().unwrap().len(), 2);
    assert_eq!(a["choices"], b["choices"], "same seed, same text");

    // A stop string ends the text before it.
    let stop = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": [" Paris"]});
    let v = s.post("/v1/completions", &stop).json();
    if text.contains(" Paris") {
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["choices"][0]["text"].as_str(),
            text.split(" Paris").next()
        );
    }

    // Errors: OpenAI's shape, the right status, the field named.
    let cases: Vec<(Reply, u16, Option<&str>)> = vec![
        (
            s.request(
                "POST",
                "/v1/completions",
                &[("Content-Type", "application/json")],
                "{\"prompt\"",
            ),
            400,
            None,
        ),
        (
            s.request(
                "POST",
                "/v1/completions",
                &[("Content-Type", "text/plain")],
                "{\"prompt\": \"x\"}",
            ),
            415,
            None,
        ),
        (
            s.post(
                "/v1/completions",
                &json!({"prompt": "x", "max_tokens": "ten"}),
            ),
            400,
            Some("max_tokens"),
        ),
        (
            s.post(
                "/v1/completions",
                &json!({"prompt": "x", "max_tokens": 100000}),
            ),
            400,
            Some("max_tokens"),
        ),
        (
            s.post("/v1/completions", &json!({"prompt": "x", "n": 99})),
            400,
            Some("n"),
        ),
        (
            s.post("/v1/completions", &json!({"prompt": "x", "model": "gpt-4"})),
            404,
            None,
        ),
        (
            s.post("/v1/chat/completions", &json!({"messages": "hi"})),
            400,
            Some("messages"),
        ),
        (s.request("GET", "/v2/nothing", &[], ""), 404, None),
    ];
    for (r, status, param) in cases {
        assert_eq!(r.status, status, "{}", r.body);
        let e = r.json();
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{e}"
        );
        assert!(e["error"]["type"].is_string(), "{e}");
        if let Some(p) = param {
            assert_eq!(e["error"]["param"], p, "{e}");
        }
    }
    let long = s
        .post(
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 100000}),
        )
        .json();
    assert!(
        long["error"]["message"].as_str().unwrap().contains("256"),
        "names the limit: {long}"
    );
    // Nothing above harmed the server.
    assert_eq!(
        s.post("/v1/completions", &body).json()["choices"][0]["text"],
        text
    );
    assert!(s.metric("kernelgen_requests_total{outcome=\"rejected\"}") >= 7.0);
}

#[test]
fn an_api_key_is_required_when_configured() {
    let dir = crate::common::scratch("kg-serve", "key");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.txt");
    std::fs::write(&key, "sk-test-123\n").unwrap();
    let s = Server::start(&["--api-key-file", key.to_str().unwrap()]);
    let body = json!({"prompt": "Hi", "max_tokens": 2}).to_string();
    let ct = ("Content-Type", "application/json");
    for auth in [None, Some("Bearer sk-wrong"), Some("sk-test-123")] {
        let mut h = vec![ct];
        h.extend(auth.map(|a| ("Authorization", a)));
        let r = s.request("POST", "/v1/completions", &h, &body);
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    }
    let r = s.request(
        "POST",
        "/v1/completions",
        &[ct, ("Authorization", "Bearer sk-test-123")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.request("GET", "/health", &[], "").status,
        200,
        "health needs no key"
    );
}

#[test]
fn a_client_that_disconnects_mid_stream_is_cancelled_and_its_pages_freed() {
    let s = Server::start(&[]);
    let body = json!({"prompt": "Tell me a long story.", "max_tokens": 200, "temperature": 0,
                      "stream": true, "ignore_eos": true})
    .to_string();
    let mut c = TcpStream::connect(&s.addr).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    assert!(
        s.metric("kernelgen_kv_pages_in_use") > 0.0,
        "the stream holds pages"
    );
    drop(reader);
    c.shutdown(std::net::Shutdown::Both).unwrap();
    drop(c);
    s.wait_for(30, "the request cancelled and its pages freed", |s| {
        s.metric("kernelgen_requests_total{outcome=\"cancelled\"}") == 1.0
            && s.metric("kernelgen_kv_pages_in_use") == 0.0
    });
    assert_eq!(
        s.metric("kernelgen_requests_total{outcome=\"completed\"}"),
        0.0
    );
    let ok = s.post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 3}));
    assert_eq!(ok.status, 200, "the server serves on");
}

/// Where the server's memory goes, as Prometheus gauges and as `generate --json-metrics`'
/// `memory` object at `/memory`: the resident set, the start-up stages, and each program's
/// compiled memory plan (its arguments hold the weights).
#[test]
fn the_server_reports_its_memory() {
    let s = Server::start(&[]);
    let r = s.post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 3}));
    assert_eq!(r.status, 200, "{}", r.body);
    let (rss, peak) = (
        s.metric("process_resident_memory_bytes"),
        s.metric("kernelgen_peak_resident_memory_bytes"),
    );
    // SmolLM2-135M's f32 weights alone are 538 MB.
    assert!(rss > 500e6 && peak >= rss, "rss {rss}, peak {peak}");
    let m = s.request("GET", "/memory", &[], "").json();
    assert_eq!(
        m["peak_rss_bytes"].as_f64(),
        Some(m["now"]["peak_rss_bytes"].as_f64().unwrap())
    );
    let stages: Vec<&str> = m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    for want in ["plugin loaded", "weights uploaded", "first step"] {
        assert!(stages.contains(&want), "{want} in {stages:?}");
    }
    let compiled = m["compiled"].as_object().unwrap();
    assert!(!compiled.is_empty(), "{m}");
    for (name, plan) in compiled {
        let args = plan["argument_bytes"].as_f64().unwrap();
        assert!(args > 500e6, "{name}: the weights are arguments: {plan}");
        let metric =
            format!("kernelgen_program_memory_bytes{{program=\"{name}\",kind=\"argument\"}}");
        assert_eq!(s.metric(&metric), args, "{metric}");
    }
    assert!(s.metric("kernelgen_programs_loaded") >= 1.0);
}

#[test]
fn under_load_every_request_completes_as_alone_or_is_cleanly_refused() {
    // At most three programs loaded: under this load the server unloads some and loads them
    // again, and every text must still equal the request's text alone.
    let s = Server::start(&["--max-queue", "6", "--max-programs", "3"]);
    let prompts = [
        "Hi",
        "Name three colors.",
        "Write one sentence about the sea and the wind over it.",
        "List the first five prime numbers, separated by commas, and say which is even.",
    ];
    let body = |p: &str, stream: bool| json!({"prompt": p, "max_tokens": 10, "temperature": 0, "stream": stream});
    // Each prompt alone first.
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            s.post("/v1/completions", &body(p, false)).json()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let before = ["completed", "rejected", "cancelled"]
        .map(|o| s.metric(&format!("kernelgen_requests_total{{outcome=\"{o}\"}}")));
    let clients = 64;
    let results: Vec<(usize, Reply)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let s = &s;
                let p = prompts[i % prompts.len()];
                let b = body(p, true);
                scope.spawn(move || (i, s.post("/v1/completions", &b)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (mut done, mut refused) = (0, 0);
    for (i, r) in &results {
        match r.status {
            200 => {
                let events = r.events();
                assert_eq!(
                    events.last().map(String::as_str),
                    Some("[DONE]"),
                    "{}",
                    r.body
                );
                let text = streamed_text(&events, false).remove(0);
                assert_eq!(text, alone[i % prompts.len()], "client {i}: same as alone");
                done += 1;
            }
            429 | 503 => {
                assert!(r.headers.contains("retry-after"), "{}", r.headers);
                assert!(r.json()["error"]["message"].is_string());
                refused += 1;
            }
            other => panic!("client {i}: status {other}: {}", r.body),
        }
    }
    assert_eq!(done + refused, clients);
    assert!(refused > 0, "a queue of 6 refuses some of 64 at once");
    assert!(done > 0);
    s.wait_for(10, "every page back", |s| {
        s.metric("kernelgen_kv_pages_in_use") == 0.0
    });
    let after = ["completed", "rejected", "cancelled"]
        .map(|o| s.metric(&format!("kernelgen_requests_total{{outcome=\"{o}\"}}")));
    assert_eq!(after[0] - before[0], done as f64, "completed counted");
    assert_eq!(after[1] - before[1], refused as f64, "rejected counted");
    assert_eq!(after[2] - before[2], 0.0);
    assert_eq!(s.metric("vllm:num_requests_waiting"), 0.0);
    assert_eq!(s.metric("kernelgen_requests_running"), 0.0);
    let loaded = s.metric("kernelgen_programs_loaded");
    assert!((1.0..=3.0).contains(&loaded), "{loaded} programs loaded");
    eprintln!(
        "programs: {loaded} loaded, {} unloads, {} reloads",
        s.metric("kernelgen_program_unloads_total"),
        s.metric("kernelgen_program_reloads_total")
    );
}

#[test]
fn sigterm_during_load_exits_zero_and_leaves_no_request_hanging() {
    let mut s = Server::start(&["--shutdown-timeout", "3"]);
    let body = json!({"prompt": "Tell me a long story.", "max_tokens": 200, "temperature": 0,
                      "stream": true, "ignore_eos": true});
    let results: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (addr, b) = (s.addr.clone(), body.to_string());
                scope.spawn(move || {
                    http(
                        &addr,
                        "POST",
                        "/v1/completions",
                        &[("Content-Type", "application/json")],
                        &b,
                    )
                })
            })
            .collect();
        s.wait_for(60, "tokens flowing", |s| {
            s.metric("kernelgen_generation_tokens_total") > 0.0
        });
        let pid = s.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status:?}");
    for r in &results {
        // Each stream either finished or was told it was aborted: none was cut silently.
        let events = r.events();
        let last = events.last().map(String::as_str).unwrap_or("");
        assert!(
            last == "[DONE]" || last.contains("shutting down") || r.status == 503,
            "status {}: {}",
            r.status,
            r.body
        );
    }
}

/// The pinned `openai` client (and its dependencies), in a venv of the cache made on first use.
const OPENAI: &str = "openai==3.63.0";

fn openai_python() -> std::path::PathBuf {
    let venv = runtime::cache::cache_dir().join("venv/openai-client");
    let python = venv.join("bin/python");
    let stamp = venv.join(".kernelgen-pinned");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == OPENAI) {
        return python;
    }
    let run = |c: &mut Command, what: &str| {
        let o = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    run(
        Command::new(&python).args(["-m", "pip", "install", "-q", OPENAI]),
        "pip install openai",
    );
    std::fs::write(&stamp, OPENAI).unwrap();
    python
}

#[test]
fn the_openai_python_client_works_against_the_server() {
    let python = openai_python();
    let s = Server::start(&[]);
    let model = s.request("GET", "/v1/models", &[], "").json()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/openai_client.py");
    let o = Command::new(python)
        .arg(script)
        .arg(format!("http://{}/v1", s.addr))
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn prefix_caching_reuses_a_shared_system_prompt_without_changing_greedy_text() {
    let system = "You are a careful assistant for a shipping company. Answer in one short \
                  sentence, name the port when there is one, never invent tracking numbers, and \
                  say when you do not know. Ports we serve: Rotterdam, Hamburg, Antwerp, \
                  Le Havre, Felixstowe, Valencia, Genoa, Piraeus and Gdansk.";
    let questions = [
        "Which ports do you serve in Italy?",
        "Is Hamburg a port you serve?",
        "Hi",
    ];
    let texts = |extra: &[&str]| -> (Vec<String>, f64, f64) {
        let s = Server::start(extra);
        let texts = questions
            .iter()
            .map(|q| {
                let body = json!({
                    "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}],
                    "max_tokens": 12, "temperature": 0,
                });
                let r = s.post("/v1/chat/completions", &body);
                assert_eq!(r.status, 200, "{}", r.body);
                r.json()["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        (
            texts,
            s.metric("kernelgen_prefix_cache_hits_total"),
            s.metric("kernelgen_prefix_cache_queries_total"),
        )
    };
    let (cached, hits, queries) = texts(&[]);
    let (uncached, no_hits, _) = texts(&["--no-prefix-caching"]);
    assert_eq!(cached, uncached, "greedy text with the cache on equals off");
    // Page size 16: the system prompt's full pages are found by the second and third requests.
    assert!(
        hits >= 2.0 * 16.0 * 3.0,
        "hits {hits} of {queries} queried tokens"
    );
    assert_eq!(no_hits, 0.0);
}
