//! `kernelgen tune`: the q_block x kv_pages_block sweep as one command, and the tuned table every
//! serving command reads its block sizes from.
//!
//! - [`space`]: the candidates of each phase at the workload's shapes, and the rules that drop
//!   some before anything compiles (static shape rules, the VMEM/SMEM checker for a TPU target,
//!   dominance by a config that already ran out of memory);
//! - [`measure`]: one candidate compiled, verified against the f64 reference and timed through
//!   PJRT (what a child process runs);
//! - [`isolate`]: each candidate in a child process with a timeout, so a crash, hang or OOM is a
//!   recorded status and the sweep goes on; and the compile-only runner (the real TPU compiler);
//! - [`table`]: every measurement appended to a cache keyed by device, compiler, kernel source
//!   and shapes; the best per key in the tuned table (`tuned_blocks.json`), validated on read.
//!
//! [`run`] ties them together: prune, run in order (smallest first, so dominance can skip),
//! record, and write the table.

pub mod isolate;
pub mod measure;
pub mod space;
pub mod table;

use crate::config::{ConfigError, Dtype, Geometry, KernelConfig, KernelParams, Schedule};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use verify::BatchSpec;

pub use space::Candidate;
pub use table::{Entry, Table, TuneKey};

/// The three batch distributions RPA v3 tunes separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Every sequence has one new token: the engine's decode-only programs (q_block is 1, the
    /// batched schedule; only kv_pages_block is tuned).
    Decode,
    /// One whole prompt chunk of `max_num_tokens` tokens.
    Prefill,
    /// Prefill chunks and decode rows together, as a continuous-batching step has them.
    Mixed,
    /// Not a batch distribution: derived when both prefill and mixed were tuned, the config
    /// whose worse ratio to the two phases' bests is least. An engine's non-decode programs run
    /// both kinds of step, so they use this one ([`general_choice`]).
    General,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Decode, Phase::Prefill, Phase::Mixed];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Decode => "decode",
            Phase::Prefill => "prefill",
            Phase::Mixed => "mixed",
            Phase::General => "general",
        }
    }

    /// One phase by name.
    pub fn parse(s: &str) -> Result<Phase, TuneError> {
        Phase::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                TuneError::Input(format!(
                    "--phase {s}: unknown phase; use decode, prefill or mixed (comma-separated)"
                ))
            })
    }

    /// A comma-separated list of phases, each once, in the given order.
    pub fn parse_list(s: &str) -> Result<Vec<Phase>, TuneError> {
        let mut out = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = Phase::parse(p)?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if out.is_empty() {
            return Err(TuneError::Input(
                "--phase is empty; use decode, prefill or mixed (comma-separated)".into(),
            ));
        }
        Ok(out)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The serving shapes a tune is for: the model's attention geometry (per device) and the
/// engine's shapes. A kernel config per phase and block sizes comes from [`Workload::config`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub geometry: Geometry,
    pub dtype: Dtype,
    pub page_size: u32,
    /// Sequences per step (a decode batch's size).
    pub max_num_seqs: u32,
    /// Token rows of a step (the prefill chunk).
    pub max_num_tokens: u32,
    /// Longest sequence.
    pub max_model_len: u32,
    pub sliding_window: Option<u32>,
    pub soft_cap: Option<f32>,
}

impl Workload {
    /// Columns of the page table.
    pub fn pages_per_seq(&self) -> u32 {
        self.max_model_len.div_ceil(self.page_size.max(1))
    }

    /// The kernel config `phase` runs with these block sizes: decode programs hold one row per
    /// sequence (q_block 1, batched schedule), the others `max_num_tokens` rows.
    pub fn config(&self, phase: Phase, q_block: u32, kv: u32) -> Result<KernelConfig, ConfigError> {
        let decode = phase == Phase::Decode;
        KernelConfig::new(KernelParams {
            geometry: self.geometry,
            dtype: self.dtype,
            page_size: self.page_size,
            q_block: if decode { 1 } else { q_block },
            kv_pages_block: kv,
            max_num_tokens: if decode {
                self.max_num_seqs
            } else {
                self.max_num_tokens
            },
            max_num_seqs: self.max_num_seqs,
            pages_per_seq: self.pages_per_seq(),
            total_pages: self.max_num_seqs * self.pages_per_seq(),
            sm_scale: None,
            sliding_window: self.sliding_window,
            soft_cap: self.soft_cap,
            schedule: if decode {
                Schedule::Batched
            } else {
                Schedule::Sequential
            },
        })
    }

    /// The random ragged batches of `phase` a candidate is timed and verified on.
    pub fn batch_spec(&self, phase: Phase) -> BatchSpec {
        match phase {
            Phase::Decode => BatchSpec::decode_only(self.max_num_seqs as usize),
            Phase::Prefill => BatchSpec {
                num_seqs: Some(1),
                decode_fraction: 0.0,
                full_prefill_fraction: 1.0,
                kv_len: Some(self.max_num_tokens.min(self.max_model_len) as usize),
            },
            Phase::Mixed | Phase::General => BatchSpec::default(),
        }
    }
}

/// How a candidate ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Compiled, verified against the f64 reference, timed.
    Ok,
    /// `--compile-only`: the real TPU compiler compiled it.
    Compiles,
    /// Ran, but its output disagreed with the reference: never a winner.
    Wrong,
    /// The TPU compiler ran out of scoped VMEM.
    VmemOom,
    /// The TPU compiler ran out of SMEM (the page tables).
    SmemOom,
    /// The candidate's process ran out of host (or device) memory.
    Oom,
    CompileError,
    /// The candidate's process died (a panic, a signal).
    Crashed,
    /// No result within `--timeout`: the process was killed.
    Timeout,
    /// Not run; the reason says why.
    Skipped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Compiles => "compiles",
            Status::Wrong => "wrong",
            Status::VmemOom => "vmem_oom",
            Status::SmemOom => "smem_oom",
            Status::Oom => "oom",
            Status::CompileError => "compile_error",
            Status::Crashed => "crashed",
            Status::Timeout => "timeout",
            Status::Skipped => "skipped",
        }
    }

    /// Ran out of some memory: every config at least as large is skipped.
    pub fn is_oom(self) -> bool {
        matches!(self, Status::VmemOom | Status::SmemOom | Status::Oom)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One candidate's outcome: a row of the report and a line of the measurement cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub key: TuneKey,
    pub q_block: u32,
    pub kv_pages_block: u32,
    pub status: Status,
    /// Median milliseconds of one kernel call (`ok` only).
    pub median_ms: Option<f64>,
    /// Fastest and slowest call.
    pub range_ms: Option<(f64, f64)>,
    /// Normwise relative error against the f64 reference (max abs error / max |reference|).
    pub error: Option<f64>,
    /// The checker's (TPU target) or the compiler's scoped VMEM figure.
    pub vmem_bytes: Option<u64>,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    /// Wall seconds the candidate took, child process included.
    pub seconds: f64,
    /// Seconds since the Unix epoch when it was measured.
    pub measured_at: u64,
}

impl Measurement {
    /// A candidate that did not run.
    pub fn skipped(key: &TuneKey, c: Candidate, reason: String) -> Measurement {
        Measurement::failed(key, c, Status::Skipped, reason, 0.0)
    }

    pub fn failed(
        key: &TuneKey,
        c: Candidate,
        status: Status,
        reason: String,
        seconds: f64,
    ) -> Measurement {
        Measurement {
            reason: Some(reason),
            ..Measurement::new(key, c, status, seconds)
        }
    }

    /// `c`'s outcome with `status`, measured now, every figure still empty.
    pub fn new(key: &TuneKey, c: Candidate, status: Status, seconds: f64) -> Measurement {
        Measurement {
            key: key.clone(),
            q_block: c.q_block,
            kv_pages_block: c.kv_pages_block,
            status,
            median_ms: None,
            range_ms: None,
            error: None,
            vmem_bytes: None,
            reason: None,
            seconds,
            measured_at: now(),
        }
    }

    pub fn candidate(&self) -> Candidate {
        Candidate {
            phase: self.key.phase,
            q_block: self.q_block,
            kv_pages_block: self.kv_pages_block,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a tune could not run. Each is raised before any candidate is measured.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// Bad flags or an empty space: the message names the flag and the fix.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The tune folder cannot be written or read.
    #[error("tune folder {path}: {detail}; pass --tune-dir (or set KERNELGEN_TUNE_DIR) to a writable folder")]
    Folder { path: PathBuf, detail: String },
    /// A tuned-table entry that is unreadable or does not fit its target.
    #[error("tuned table {path}: {detail}")]
    Table { path: PathBuf, detail: String },
    #[error("{0}")]
    Runner(String),
}

/// Who measures a candidate: a child process on the live backend ([`isolate::ChildRunner`]) or
/// the real TPU compiler ([`isolate::CompileOnly`]). Never fails: a failure is a status.
pub trait CandidateRunner {
    fn measure(&mut self, workload: &Workload, key: &TuneKey, c: Candidate) -> Measurement;
}

/// What to tune.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    pub workload: Workload,
    pub phases: Vec<Phase>,
    /// q_block values to try (`None`: powers of two up to the step's tokens).
    pub q_blocks: Option<Vec<u32>>,
    /// kv_pages_block values to try (`None`: powers of two up to pages_per_seq).
    pub kv_blocks: Option<Vec<u32>>,
    /// Prune with the VMEM/SMEM checker for this TPU target (and kernel model, limit).
    pub prune: Option<space::Prune>,
    /// Stop starting candidates after this long.
    pub budget: Option<Duration>,
    /// Take candidates measured before under the same key from the cache.
    pub resume: bool,
    /// The device, compiler and kernel the measurements are keyed by.
    pub device: String,
    pub compiler: String,
}

/// Progress, for a bar: the total, then each candidate as it finishes.
#[derive(Debug)]
pub enum Event<'a> {
    Planned { candidates: usize },
    Started { candidate: Candidate },
    Finished { m: &'a Measurement, cached: bool },
}

/// A finished tune.
#[derive(Clone, Debug, Serialize)]
pub struct TuneReport {
    pub workload: Workload,
    pub device: String,
    pub compiler: String,
    pub kernel_source: String,
    /// Every candidate, in the order run, skipped ones included.
    pub rows: Vec<Row>,
    /// The fastest `ok` (or, compile-only, every `compiles`) per phase.
    pub best: Vec<Measurement>,
    /// Whether `--budget` stopped the sweep early.
    pub budget_reached: bool,
    pub wall_seconds: f64,
    pub table: Option<PathBuf>,
    pub cache: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub m: Measurement,
    /// Taken from the cache (`--resume`), not measured in this run.
    pub cached: bool,
    /// `median_ms` over the phase's best.
    pub ratio: Option<f64>,
}

/// The key of `phase`'s measurements in this tune.
pub fn key(opts: &TuneOptions, phase: Phase) -> TuneKey {
    TuneKey::new(&opts.workload, phase, &opts.device, &opts.compiler)
}

/// Prunes, runs every surviving candidate through `runner` (smallest first), appends each
/// measurement to `store`'s cache, writes the best per phase to its table (live runs only) and
/// reports.
pub fn run(
    opts: &TuneOptions,
    runner: &mut dyn CandidateRunner,
    store: &table::Store,
    write_table: bool,
    on_event: &mut dyn FnMut(Event),
) -> Result<TuneReport, TuneError> {
    let t0 = Instant::now();
    store.ensure_writable()?;
    let mut plan = Vec::new();
    for &phase in &opts.phases {
        let k = key(opts, phase);
        let s = space::candidates(
            &opts.workload,
            phase,
            opts.q_blocks.as_deref(),
            opts.kv_blocks.as_deref(),
            opts.prune.as_ref(),
        );
        plan.push((k, s));
    }
    let runnable: usize = plan.iter().map(|(_, s)| s.run.len()).sum();
    if runnable == 0 {
        let reasons: Vec<String> = plan
            .iter()
            .flat_map(|(_, s)| s.skipped.iter().map(|(c, r)| format!("{c}: {r}")))
            .take(6)
            .collect();
        return Err(TuneError::Input(format!(
            "no candidate is left after pruning ({}); widen --q/--kv, raise --vmem-limit, or \
             change the shapes",
            if reasons.is_empty() {
                "the space is empty".to_string()
            } else {
                reasons.join("; ")
            }
        )));
    }
    let previous = if opts.resume {
        store.read_cache()?
    } else {
        Vec::new()
    };
    on_event(Event::Planned {
        candidates: runnable,
    });
    let mut rows: Vec<Row> = Vec::new();
    let mut budget_reached = false;
    for (k, s) in &plan {
        for (c, reason) in &s.skipped {
            rows.push(Row {
                m: Measurement::skipped(k, *c, reason.clone()),
                cached: false,
                ratio: None,
            });
        }
        let mut ooms: Vec<Candidate> = Vec::new();
        for &c in &s.run {
            if let Some(d) = ooms.iter().find(|o| c.dominates(o)) {
                let m = Measurement::skipped(
                    k,
                    c,
                    format!("dominated by {d}, which ran out of memory"),
                );
                on_event(Event::Finished {
                    m: &m,
                    cached: false,
                });
                rows.push(Row {
                    m,
                    cached: false,
                    ratio: None,
                });
                continue;
            }
            if opts.budget.is_some_and(|b| t0.elapsed() >= b) {
                budget_reached = true;
                let m = Measurement::skipped(k, c, "--budget reached".into());
                on_event(Event::Finished {
                    m: &m,
                    cached: false,
                });
                rows.push(Row {
                    m,
                    cached: false,
                    ratio: None,
                });
                continue;
            }
            let earlier = previous
                .iter()
                .rev()
                .find(|m| &m.key == k && m.candidate() == c && m.status != Status::Skipped);
            let (mut m, cached) = match earlier {
                Some(m) => (m.clone(), true),
                None => {
                    on_event(Event::Started { candidate: c });
                    let m = runner.measure(&opts.workload, k, c);
                    store.append(&m)?;
                    (m, false)
                }
            };
            if s.uncertain.contains(&c) {
                let note = "the checker was uncertain; the compiler or device decided";
                m.reason = Some(match m.reason.take() {
                    Some(r) => format!("{note}: {r}"),
                    None => note.to_string(),
                });
            }
            if m.status.is_oom() {
                ooms.push(c);
            }
            on_event(Event::Finished { m: &m, cached });
            rows.push(Row {
                m,
                cached,
                ratio: None,
            });
        }
    }
    let best = best_per_phase(&mut rows);
    let table = if write_table {
        Some(store.write_best(&best, &opts.workload)?)
    } else {
        None
    };
    Ok(TuneReport {
        workload: opts.workload.clone(),
        device: opts.device.clone(),
        compiler: opts.compiler.clone(),
        kernel_source: table::kernel_source_hash(),
        rows,
        best,
        budget_reached,
        wall_seconds: t0.elapsed().as_secs_f64(),
        table,
        cache: store.cache_path(),
    })
}

/// The fastest `ok` row per phase (setting every row's ratio to it), in phase order.
fn best_per_phase(rows: &mut [Row]) -> Vec<Measurement> {
    let mut best: Vec<Measurement> = Vec::new();
    for phase in Phase::ALL {
        let fastest = rows
            .iter()
            .filter(|r| r.m.key.phase == phase && r.m.status == Status::Ok)
            .filter_map(|r| r.m.median_ms.map(|t| (t, &r.m)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(t, m)| (t, m.clone()));
        if let Some((t, m)) = fastest {
            for r in rows.iter_mut().filter(|r| r.m.key.phase == phase) {
                r.ratio = r.m.median_ms.map(|x| x / t);
            }
            best.push(m);
        }
    }
    best.extend(general_choice(rows));
    best
}

/// The [`Phase::General`] choice: among block sizes measured `ok` in both prefill and mixed, the
/// one whose worse ratio to its phase's best is least (ties: the faster mixed time). `None`
/// unless both phases have one.
pub fn general_choice(rows: &[Row]) -> Option<Measurement> {
    let ok = |phase: Phase| {
        rows.iter()
            .filter(move |r| r.m.key.phase == phase && r.m.status == Status::Ok)
            .filter_map(|r| Some((r.m.q_block, r.m.kv_pages_block, r.ratio?, &r.m)))
    };
    let (_, _, m) = ok(Phase::Mixed)
        .filter_map(|(q, kv, mixed, m)| {
            let prefill = ok(Phase::Prefill).find(|p| p.0 == q && p.1 == kv)?.2;
            Some((mixed.max(prefill), m.median_ms?, m))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)))?;
    let (prefill, mixed) = (
        ok(Phase::Prefill)
            .find(|p| p.0 == m.q_block && p.1 == m.kv_pages_block)?
            .2,
        ok(Phase::Mixed)
            .find(|p| p.0 == m.q_block && p.1 == m.kv_pages_block)?
            .2,
    );
    Some(Measurement {
        key: TuneKey {
            phase: Phase::General,
            ..m.key.clone()
        },
        median_ms: None,
        range_ms: None,
        reason: Some(format!(
            "{prefill:.2}x the best prefill, {mixed:.2}x the best mixed"
        )),
        ..m.clone()
    })
}

/// The block sizes a serving command uses when the tuned table has no entry for its shapes:
/// q_block 32, kv_pages_block 4 for every program. They were the fastest of the defaults measured
/// on SmolLM2's shapes on the CPU plugin before `kernelgen tune` existed; on other shapes and
/// devices they are a guess, and the warning says so.
pub const FALLBACK: crate::step::program::BlockSizes = crate::step::program::BlockSizes {
    q_block: 32,
    kv_pages_block: 4,
    decode_kv_pages_block: 4,
    form: crate::step::program::KernelForm::Portable,
};

/// Block sizes chosen for a served model, and what to tell the user about them.
#[derive(Clone, Debug)]
pub struct Chosen {
    pub blocks: crate::step::program::BlockSizes,
    /// "tuned: decode q1 kv8 (0.8 ms) on cpu, mixed q32 kv4 ... (<table>)" or "fallback ...".
    pub desc: String,
    /// One line when a phase missed the table: the fallback used and the command that fills it.
    pub warning: Option<String>,
}

/// The serving commands' block sizes from the tuned table: decode programs from the `decode`
/// entry, the others from `general` (else `mixed`, else `prefill`); [`FALLBACK`] for a phase
/// with no entry.
pub fn serving_blocks(store: &table::Store, q: &table::Query) -> Result<Chosen, TuneError> {
    let path = store.table_path();
    let t = store.read_table()?;
    let decode = t.lookup(q, Phase::Decode, &path)?;
    let general = general_entry(&t, q, &path)?;
    let mut blocks = FALLBACK;
    let mut used = Vec::new();
    let mut missed = Vec::new();
    match &general {
        Some(e) => {
            blocks.q_block = e.q_block;
            blocks.kv_pages_block = e.kv_pages_block;
            used.push(e.describe());
        }
        None => missed.push("mixed"),
    }
    match &decode {
        Some(e) => {
            blocks.decode_kv_pages_block = e.kv_pages_block;
            used.push(e.describe());
        }
        None => missed.push("decode"),
    }
    let desc = if used.is_empty() {
        format!("emitted {blocks} (fallback)")
    } else {
        format!("emitted {blocks} (tuned: {})", used.join(", "))
    };
    let warning = (!missed.is_empty()).then(|| {
        format!(
            "no tuned block sizes for {} ({}q/{}kv heads, head_dim {}, {}, page {}, max len {}) \
             on {} in {}: using {} for those programs; `{}` fills it",
            missed.join(" and "),
            q.geometry.num_q_heads,
            q.geometry.num_kv_heads,
            q.geometry.head_dim,
            q.dtype.mlir(),
            q.page_size,
            q.max_model_len,
            q.device,
            path.display(),
            FALLBACK,
            q.tune_command(&missed.join(","))
        )
    });
    Ok(Chosen {
        blocks,
        desc,
        warning,
    })
}

/// The entry for non-decode programs: `general`, else `mixed`, else `prefill`.
fn general_entry(
    t: &table::Table,
    q: &table::Query,
    path: &std::path::Path,
) -> Result<Option<table::Entry>, TuneError> {
    for phase in [Phase::General, Phase::Mixed, Phase::Prefill] {
        if let Some(e) = t.lookup(q, phase, path)? {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// The block sizes of one general kernel (`kernelgen build` without --q/--kv) for `q`'s shapes:
/// the tuned `general` entry, else `mixed`, else `prefill`, else [`FALLBACK`] with a warning.
pub fn build_blocks(store: &table::Store, q: &table::Query) -> Result<Chosen, TuneError> {
    let path = store.table_path();
    let t = store.read_table()?;
    let found = general_entry(&t, q, &path)?;
    Ok(match found {
        Some(e) => Chosen {
            blocks: crate::step::program::BlockSizes::uniform(e.q_block, e.kv_pages_block),
            desc: format!("tuned entry {} ({})", e.describe(), path.display()),
            warning: None,
        },
        None => Chosen {
            blocks: FALLBACK,
            desc: "fallback".into(),
            warning: Some(format!(
                "no tuned block sizes for these shapes on {} in {}: using q_block {} \
                 kv_pages_block {}; `{}` fills it",
                q.device,
                path.display(),
                FALLBACK.q_block,
                FALLBACK.kv_pages_block,
                q.tune_command("mixed")
            )),
        },
    })
}
