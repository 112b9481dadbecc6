//! The one thread that owns the engine (and so the device): HTTP handlers submit requests over a
//! channel and receive their text over a channel of their own; requests that arrive while the
//! engine steps join the next step (continuous batching). A request whose receiver is gone (the
//! client disconnected) is cancelled at the next step and its pages freed.

use super::metrics::ServerMetrics;
use crate::serve::{Served, TextStream};
use crate::step::executor::MemoryReport;
use runtime::engine::{FinishReason, RequestId, SamplingParams};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc as tmpsc, oneshot};

/// What a request's handler receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// More text of sample `sample` (held back while it could still become a stop string).
    Delta { sample: usize, text: String },
    /// Sample `sample` ended, with `tokens` generated.
    Finished {
        sample: usize,
        reason: FinishReason,
        tokens: usize,
    },
    /// Every sample ended.
    Done {
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The request was dropped: the engine failed, or the server is shutting down.
    Aborted(String),
}

/// Why a submission was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The engine refused the request (prompt too long, bad parameters): a 400.
    Invalid(String),
    /// The waiting queue is full: a 429.
    QueueFull { max_queue: usize },
    /// The engine failed or the server is draining: a 503.
    Unavailable(String),
}

enum Command {
    Submit {
        prompt: Vec<u32>,
        params: SamplingParams,
        events: tmpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Result<RequestId, Refusal>>,
    },
    /// Abort every request (shutdown deadline passed).
    AbortAll(String),
    /// Abort what is left and end the thread (the HTTP server has stopped).
    Stop,
}

/// State handlers read without asking the engine thread.
#[derive(Debug, Default)]
pub struct Shared {
    /// Requests submitted and not yet scheduled for their first token.
    pub waiting: AtomicUsize,
    /// Set when the engine failed: the message; new requests get 503.
    pub failure: Mutex<Option<String>>,
    /// Set on shutdown: new requests get 503.
    pub draining: AtomicBool,
    /// Where the server's memory went (`GET /memory`): start-up stages and each program's
    /// compiled memory plan, refreshed when a program is first loaded.
    pub memory: Mutex<Option<MemoryReport>>,
}

/// A handle to the engine thread, cloned into every handler.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    pub shared: Arc<Shared>,
    pub max_queue: usize,
}

impl EngineHandle {
    /// Starts the engine thread on `served`. The thread ends when every handle is dropped and
    /// no request is left.
    pub fn start(
        served: Served,
        metrics: ServerMetrics,
        max_queue: usize,
    ) -> (EngineHandle, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kernelgen-engine".into())
            .spawn(move || EngineLoop::new(served, metrics, thread_shared).run(rx))
            .expect("spawning the engine thread");
        (
            EngineHandle {
                tx,
                shared,
                max_queue,
            },
            thread,
        )
    }

    /// Why the engine cannot take requests now, if it cannot.
    pub fn unavailable(&self) -> Option<String> {
        if let Some(f) = self.shared.failure.lock().ok().and_then(|f| f.clone()) {
            return Some(format!("the engine failed: {f}"));
        }
        if self.shared.draining.load(Ordering::SeqCst) {
            return Some("the server is shutting down".into());
        }
        None
    }

    /// Submits a request; its events arrive on the returned receiver.
    pub async fn submit(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<(RequestId, tmpsc::UnboundedReceiver<Event>), Refusal> {
        if let Some(why) = self.unavailable() {
            return Err(Refusal::Unavailable(why));
        }
        let admitted = self
            .shared
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < self.max_queue).then_some(w + 1)
            });
        if admitted.is_err() {
            return Err(Refusal::QueueFull {
                max_queue: self.max_queue,
            });
        }
        let (events, rx) = tmpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.send(Command::Submit {
            prompt,
            params,
            events,
            reply,
        });
        let result = match sent {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err(Refusal::Unavailable("the engine stopped".into()))),
            Err(_) => Err(Refusal::Unavailable("the engine stopped".into())),
        };
        if result.is_err() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        result.map(|id| (id, rx))
    }

    /// Aborts every request (used when the shutdown deadline passes).
    pub fn abort_all(&self, why: &str) {
        let _ = self.tx.send(Command::AbortAll(why.to_string()));
    }

    /// Ends the engine thread once it has read every earlier command, aborting what is left.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }
}

/// One sample's stream.
#[derive(Default)]
struct SampleStream {
    text: TextStream,
    last_token: Option<Instant>,
}

/// A request in flight.
struct Live {
    events: tmpsc::UnboundedSender<Event>,
    stops: Vec<String>,
    samples: Vec<SampleStream>,
    prompt_tokens: usize,
    arrival: Instant,
    /// Still counted in `Shared::waiting`.
    waiting: bool,
}

struct EngineLoop {
    served: Served,
    metrics: ServerMetrics,
    shared: Arc<Shared>,
    live: BTreeMap<RequestId, Live>,
}

impl EngineLoop {
    fn new(served: Served, metrics: ServerMetrics, shared: Arc<Shared>) -> EngineLoop {
        EngineLoop {
            served,
            metrics,
            shared,
            live: BTreeMap::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        self.publish();
        loop {
            if !self.served.engine.has_work() {
                // Idle: wait for work; every handle gone means the server has stopped.
                match rx.recv() {
                    Ok(Command::Stop) | Err(_) => return self.abort_all("the server stopped"),
                    Ok(c) => self.command(c),
                }
            }
            while let Ok(c) = rx.try_recv() {
                if matches!(c, Command::Stop) {
                    return self.abort_all("the server stopped");
                }
                self.command(c);
            }
            if !self.served.engine.has_work() {
                continue;
            }
            if self.shared.failure.lock().is_ok_and(|f| f.is_some()) {
                self.abort_all("the engine failed");
                continue;
            }
            self.step();
            self.publish();
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit {
                prompt,
                params,
                events,
                reply,
            } => {
                let failed = self.shared.failure.lock().ok().and_then(|f| f.clone());
                if let Some(f) = failed {
                    let _ =
                        reply.send(Err(Refusal::Unavailable(format!("the engine failed: {f}"))));
                    return;
                }
                let (n, stops, prompt_tokens) =
                    (params.n, params.stop_strings.clone(), prompt.len());
                match self.served.engine.submit(prompt, params) {
                    Ok(id) => {
                        self.live.insert(
                            id,
                            Live {
                                events,
                                stops,
                                samples: (0..n).map(|_| SampleStream::default()).collect(),
                                prompt_tokens,
                                arrival: Instant::now(),
                                waiting: true,
                            },
                        );
                        if reply.send(Ok(id)).is_err() {
                            self.cancel(id);
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Refusal::Invalid(e.to_string())));
                    }
                }
                self.publish();
            }
            Command::AbortAll(why) => self.abort_all(&why),
            Command::Stop => self.abort_all("the server stopped"),
        }
    }

    /// One engine step; its tokens become text deltas on each request's channel.
    fn step(&mut self) {
        let events = match self.served.engine.step() {
            Ok(events) => events,
            Err(e) => {
                let msg = e.to_string();
                if let Ok(mut f) = self.shared.failure.lock() {
                    *f = Some(msg.clone());
                }
                self.abort_all(&format!("the engine failed: {msg}"));
                return;
            }
        };
        let now = Instant::now();
        let mut gone = Vec::new();
        for ev in events {
            let Some(live) = self.live.get_mut(&ev.request) else {
                continue;
            };
            if live.waiting {
                live.waiting = false;
                self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                self.metrics
                    .ttft
                    .observe(now.duration_since(live.arrival).as_secs_f64());
            }
            let Some(token) = ev.token else { continue };
            let Some(s) = live.samples.get_mut(ev.sample) else {
                continue;
            };
            if let Some(prev) = s.last_token {
                self.metrics
                    .itl
                    .observe(now.duration_since(prev).as_secs_f64());
            }
            s.last_token = Some(now);
            self.metrics.generation_tokens.inc();
            let delta = s
                .text
                .push(&self.served.tokenizer, token, &live.stops)
                .unwrap_or_default();
            if !delta.is_empty() {
                let sent = live.events.send(Event::Delta {
                    sample: ev.sample,
                    text: delta,
                });
                if sent.is_err() {
                    gone.push(ev.request);
                }
            }
        }
        for f in self.served.engine.take_finished() {
            let Some(live) = self.live.remove(&f.id) else {
                continue;
            };
            let mut completion = 0;
            for (i, (out, s)) in f.samples.iter().zip(&live.samples).enumerate() {
                completion += out.tokens.len();
                let rest = s.text.rest(out.text.as_deref().unwrap_or_default());
                if !rest.is_empty() {
                    let _ = live.events.send(Event::Delta {
                        sample: i,
                        text: rest.to_string(),
                    });
                }
                let _ = live.events.send(Event::Finished {
                    sample: i,
                    reason: out.finish_reason.clone(),
                    tokens: out.tokens.len(),
                });
            }
            // Counted before the client hears it is done, so its next /metrics agrees.
            let outcome = if f.samples.iter().any(|s| s.finish_reason.is_error()) {
                "failed"
            } else {
                "completed"
            };
            self.metrics
                .finish(outcome, live.prompt_tokens, f.latency());
            let _ = live.events.send(Event::Done {
                prompt_tokens: live.prompt_tokens,
                completion_tokens: completion,
            });
        }
        for id in gone {
            self.cancel(id);
        }
    }

    /// Cancels request `id` (its client is gone): pages freed now.
    fn cancel(&mut self, id: RequestId) {
        if let Some(live) = self.live.remove(&id) {
            if live.waiting {
                self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            }
            let _ = self.served.engine.cancel(id);
            self.metrics
                .finish("cancelled", live.prompt_tokens, live.arrival.elapsed());
        }
    }

    fn abort_all(&mut self, why: &str) {
        let ids: Vec<RequestId> = self.live.keys().copied().collect();
        for id in ids {
            if let Some(live) = self.live.get(&id) {
                let _ = live.events.send(Event::Aborted(why.to_string()));
            }
            self.cancel(id);
        }
    }

    /// Gauges from the engine's state.
    fn publish(&self) {
        let st = self.served.engine.stats();
        let total = self.served.engine.config().max_pages;
        let waiting = self.shared.waiting.load(Ordering::SeqCst);
        let running = self.live.len().saturating_sub(waiting);
        self.metrics
            .set_state(running, waiting, st.pages_in_use, total);
        self.metrics.set_cached(st.pages_cached);
        self.metrics.totals_seen(
            self.served.engine.metrics().preemptions(),
            st.prefix_queried_tokens,
            st.prefix_hit_tokens,
        );
        let exec = self.served.engine.executor();
        let (unloads, reloads) = (exec.times.unloads, exec.times.reloads);
        self.metrics
            .set_programs(exec.loaded_programs(), unloads, reloads);
        if let Ok(mut m) = self.shared.memory.lock() {
            let stale = m
                .as_ref()
                .is_none_or(|r| r.stages.len() != exec.memory.stages.len());
            if stale {
                self.metrics.set_program_plans(&exec.compiled);
                *m = Some(exec.memory_report());
            }
        }
    }
}
