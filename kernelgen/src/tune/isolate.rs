//! The two ways a candidate is measured.
//!
//! [`ChildRunner`]: on the live backend, in a child process of this binary
//! (`kernelgen tune-candidate`, the job on its stdin, an [`Outcome`] on its stdout) with a
//! timeout. A panic, a signal, an allocation failure or a hang in one candidate ends that child
//! only; its status (crashed / oom / timeout) is recorded with the last line it printed.
//!
//! [`CompileOnly`]: no device; the real TPU compiler (deviceless, [`crate::tpu::Oracle`])
//! compiles each candidate for the target, and the verdict is the status.

use super::measure::{Job, Outcome};
use super::{Candidate, CandidateRunner, Measurement, Status, TuneKey, Workload};
use crate::target::Target;
use crate::tpu::{self, CompilerVerdict, Oracle};
use crate::vmem::{self, CheckRequest, KernelModel};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs each candidate in a child process: `program args...` with the [`Job`] on stdin.
pub struct ChildRunner {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub plugin: PathBuf,
    pub warmup: u32,
    pub repeats: u32,
    pub seed: u64,
    /// A child with no result after this long is killed (status `timeout`).
    pub timeout: Duration,
}

/// What a finished (or killed) child left behind.
struct ChildExit {
    stdout: String,
    stderr: String,
    /// `None`: killed at the timeout.
    status: Option<std::process::ExitStatus>,
}

impl ChildRunner {
    fn spawn(&self, job: &Job) -> std::io::Result<ChildExit> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let body = serde_json::to_vec(job).map_err(std::io::Error::other)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&body)?;
        }
        let mut out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if start.elapsed() >= self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(ChildExit {
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
            status,
        })
    }
}

/// A child's exit as an outcome: its report if it gave one, else the kind of death.
fn classify(exit: &ChildExit, timeout: Duration) -> Outcome {
    let failed = |status, reason: String| Outcome {
        status,
        median_ms: None,
        range_ms: None,
        error: None,
        reason: Some(reason),
    };
    let Some(status) = exit.status else {
        return failed(
            Status::Timeout,
            format!("no result within {} s: killed", timeout.as_secs_f64()),
        );
    };
    if status.success() {
        if let Some(o) = exit
            .stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Outcome>(l).ok())
        {
            return o;
        }
    }
    let last = exit
        .stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("note: "))
        .unwrap_or("")
        .trim();
    let last: String = last.chars().take(300).collect();
    let oom = [
        "memory allocation of",
        "bad_alloc",
        "Out of memory",
        "RESOURCE_EXHAUSTED",
    ]
    .iter()
    .any(|m| exit.stderr.contains(m));
    if oom {
        failed(Status::Oom, format!("ran out of memory ({status}): {last}"))
    } else {
        failed(Status::Crashed, format!("{status}: {last}"))
    }
}

impl CandidateRunner for ChildRunner {
    fn measure(&mut self, workload: &Workload, key: &TuneKey, c: Candidate) -> Measurement {
        let t0 = Instant::now();
        let job = Job {
            workload: workload.clone(),
            candidate: c,
            plugin: self.plugin.clone(),
            warmup: self.warmup,
            repeats: self.repeats,
            seed: self.seed,
        };
        let outcome = match self.spawn(&job) {
            Ok(exit) => classify(&exit, self.timeout),
            Err(e) => Outcome {
                status: Status::Crashed,
                median_ms: None,
                range_ms: None,
                error: None,
                reason: Some(format!(
                    "starting {} {}: {e}",
                    self.program.display(),
                    self.args.join(" ")
                )),
            },
        };
        Measurement {
            median_ms: outcome.median_ms,
            range_ms: outcome.range_ms,
            error: outcome.error,
            reason: outcome.reason,
            ..Measurement::new(key, c, outcome.status, t0.elapsed().as_secs_f64())
        }
    }
}

/// Compiles each candidate with the real TPU compiler for `target` (no device). Phases whose
/// configs are the same kernel (prefill and mixed at one block size) compile once.
pub struct CompileOnly {
    pub oracle: Oracle,
    pub target: Target,
    pub kernel: KernelModel,
    pub vmem_limit: Option<u64>,
    /// (status, VMEM figure, reason) per config already compiled, by its display form.
    pub compiled: std::collections::HashMap<String, (Status, Option<u64>, Option<String>)>,
}

impl CompileOnly {
    pub fn new(
        oracle: Oracle,
        target: Target,
        kernel: KernelModel,
        vmem_limit: Option<u64>,
    ) -> Self {
        CompileOnly {
            oracle,
            target,
            kernel,
            vmem_limit,
            compiled: Default::default(),
        }
    }

    /// The compiler's status, VMEM figure (its own on an OOM, else the checker's estimate) and
    /// reason for `cfg`.
    fn compile(
        &mut self,
        cfg: &crate::config::KernelConfig,
    ) -> (Status, Option<u64>, Option<String>) {
        let estimate = vmem::check(&CheckRequest {
            cfg,
            target: self.target,
            kernel: self.kernel,
            vmem_limit: self.vmem_limit,
        })
        .ok()
        .map(|r| r.total_bytes);
        let compiled = tpu::checked_config_request(cfg, &self.target, self.kernel, self.vmem_limit)
            .map_err(|e| e.to_string())
            .and_then(|req| self.oracle.compile(&req).map_err(|e| e.to_string()));
        match compiled {
            Err(e) => (Status::Crashed, None, Some(e)),
            Ok(o) => {
                let status = match o.verdict {
                    CompilerVerdict::Fits => Status::Compiles,
                    CompilerVerdict::VmemOom => Status::VmemOom,
                    CompilerVerdict::SmemOom => Status::SmemOom,
                    CompilerVerdict::HbmOom => Status::Oom,
                    CompilerVerdict::Timeout => Status::Timeout,
                    CompilerVerdict::Error => Status::CompileError,
                };
                let reason = (status != Status::Compiles).then(|| {
                    o.message
                        .lines()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(300)
                        .collect()
                });
                (status, o.size_bytes.or(estimate), reason)
            }
        }
    }
}

impl CandidateRunner for CompileOnly {
    fn measure(&mut self, workload: &Workload, key: &TuneKey, c: Candidate) -> Measurement {
        let t0 = Instant::now();
        let cfg = match workload.config(c.phase, c.q_block, c.kv_pages_block) {
            Ok(cfg) => cfg,
            Err(e) => return Measurement::skipped(key, c, format!("invalid config: {e}")),
        };
        let name = cfg.to_string();
        let (status, vmem_bytes, reason) = match self.compiled.get(&name) {
            Some(done) => done.clone(),
            None => {
                let done = self.compile(&cfg);
                self.compiled.insert(name, done.clone());
                done
            }
        };
        Measurement {
            vmem_bytes,
            reason,
            ..Measurement::new(key, c, status, t0.elapsed().as_secs_f64())
        }
    }
}
