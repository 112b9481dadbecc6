//! The real TPU compiler, driven from Rust: a toolkit-managed Python venv with pinned
//! `jax==0.12.0.1 jaxlib==0.12.0.1 libtpu==0.0.50.1`, running `kernelgen/oracle/tpu_oracle.py`,
//! which compiles kernels for a compile-only TPU device on this CPU machine and reports the
//! real compiler's verdict. `kernelgen build --emit tpu`, `check --oracle` and the calibration
//! sweep (`kernelgen/oracle/sweep.py`, whose output is `kernelgen/data/`) all go through it.
//!
//! The venv lives in the cache folder ([`runtime::cache::cache_dir`]) and is created on first
//! use (about 40 s and 1.2 GB); later runs reuse it.

use crate::config::{Geometry, KernelConfig, KernelParams};
use crate::vmem::KernelModel;
use runtime::dtype::Dtype;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// Pinned versions: the pair the committed calibration data was measured with.
pub const PINNED: &[&str] = &["jax==0.12.0.1", "jaxlib==0.12.0.1", "libtpu==0.0.50.1"];
const DRIVER: &str = include_str!("../../oracle/tpu_oracle.py");
const VENV_NAME: &str = "tpu-oracle";

/// One kernel config to compile for a target at a VMEM limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "WireRequest", try_from = "WireRequest")]
pub struct OracleRequest {
    pub kernel: KernelModel,
    pub target: String,
    /// The config, as the kernel is called (heads per device).
    pub config: KernelConfig,
    /// `None`: the target's default scoped limit.
    pub vmem_limit_bytes: Option<u64>,
    /// An emitted `rpa.pallas.py`, for `kernel = kernelgen`.
    pub module: Option<PathBuf>,
    /// Where to write the lowered StableHLO (`tpu_custom_call`), if wanted.
    pub export_path: Option<PathBuf>,
}

impl OracleRequest {
    pub fn new(kernel: KernelModel, target: &str, config: &KernelConfig) -> OracleRequest {
        OracleRequest {
            kernel,
            target: target.to_string(),
            config: config.clone(),
            vmem_limit_bytes: None,
            module: None,
            export_path: None,
        }
    }
}

/// The driver's JSON protocol (`tpu_oracle.py`'s request fields), one flat object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct WireRequest {
    kernel: KernelModel,
    target: String,
    num_q_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    page_size: u32,
    /// `bfloat16` or `float32`.
    dtype: String,
    q_block: u32,
    kv_pages_block: u32,
    max_num_tokens: u32,
    max_num_seqs: u32,
    pages_per_seq: u32,
    total_pages: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    vmem_limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    export_path: Option<PathBuf>,
}

impl From<OracleRequest> for WireRequest {
    fn from(r: OracleRequest) -> WireRequest {
        let c = &r.config;
        let g = c.geometry();
        WireRequest {
            kernel: r.kernel,
            target: r.target,
            num_q_heads: g.num_q_heads,
            num_kv_heads: g.num_kv_heads,
            head_dim: g.head_dim,
            page_size: c.page_size(),
            dtype: c.dtype().numpy().to_string(),
            q_block: c.q_block(),
            kv_pages_block: c.kv_pages_block(),
            max_num_tokens: c.max_num_tokens(),
            max_num_seqs: c.max_num_seqs(),
            pages_per_seq: c.pages_per_seq(),
            total_pages: c.total_pages(),
            vmem_limit_bytes: r.vmem_limit_bytes,
            module: r.module,
            export_path: r.export_path,
        }
    }
}

impl TryFrom<WireRequest> for OracleRequest {
    type Error = String;
    fn try_from(w: WireRequest) -> Result<OracleRequest, String> {
        let dtype: Dtype = w.dtype.parse().map_err(|e| format!("{e}"))?;
        let config = KernelConfig::new(KernelParams {
            geometry: Geometry {
                num_q_heads: w.num_q_heads,
                num_kv_heads: w.num_kv_heads,
                head_dim: w.head_dim,
            },
            dtype,
            page_size: w.page_size,
            q_block: w.q_block,
            kv_pages_block: w.kv_pages_block,
            max_num_tokens: w.max_num_tokens,
            max_num_seqs: w.max_num_seqs,
            pages_per_seq: w.pages_per_seq,
            total_pages: w.total_pages,
            sm_scale: None,
            sliding_window: None,
            soft_cap: None,
            schedule: Default::default(),
        })
        .map_err(|e| e.to_string())?;
        Ok(OracleRequest {
            kernel: w.kernel,
            target: w.target,
            config,
            vmem_limit_bytes: w.vmem_limit_bytes,
            module: w.module,
            export_path: w.export_path,
        })
    }
}

/// What the real compiler said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompilerVerdict {
    /// It compiled within the limit.
    Fits,
    /// Scoped VMEM ran out (`size_bytes` over `limit_bytes`).
    VmemOom,
    /// SMEM ran out (the scalar-prefetched page tables are too large).
    SmemOom,
    /// The operands do not fit the chip's HBM.
    HbmOom,
    /// No verdict within the sweep's time limit per point (`oracle/sweep.py --timeout`): the
    /// compile ran for minutes and was given up; such points fit nothing and are not fitted.
    Timeout,
    /// Any other failure (lowering, compiler crash); `message` says what.
    Error,
}

impl CompilerVerdict {
    /// Whether the compiler ran out of some memory.
    pub fn is_oom(self) -> bool {
        matches!(
            self,
            CompilerVerdict::VmemOom | CompilerVerdict::SmemOom | CompilerVerdict::HbmOom
        )
    }
}

impl std::fmt::Display for CompilerVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CompilerVerdict::Fits => "fits",
            CompilerVerdict::VmemOom => "vmem_oom",
            CompilerVerdict::SmemOom => "smem_oom",
            CompilerVerdict::HbmOom => "hbm_oom",
            CompilerVerdict::Timeout => "timeout",
            CompilerVerdict::Error => "error",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OracleResponse {
    pub verdict: CompilerVerdict,
    /// For an OOM: the allocation the compiler reports and its limit.
    pub size_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub compile_s: f64,
    /// The smallest limit that compiles, when asked for (`min_limit`).
    #[serde(default)]
    pub min_limit_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum OracleError {
    #[error("no Python >= 3.12 found (jax 0.12 needs it): install one (e.g. `pyenv install 3.12`) or set KERNELGEN_PYTHON to its path")]
    NoPython,
    #[error("creating the oracle venv failed ({step}): {detail}")]
    Setup { step: String, detail: String },
    #[error("oracle process: {0}")]
    Io(#[from] std::io::Error),
    #[error("oracle answered something unreadable: {0}")]
    Protocol(String),
}

use runtime::cache::cache_dir;

/// A Python >= 3.12: `$KERNELGEN_PYTHON`, `python3.12`/`python3.13` on PATH, or pyenv's.
fn find_python() -> Result<PathBuf, OracleError> {
    if let Some(p) = std::env::var_os("KERNELGEN_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    for name in ["python3.12", "python3.13"] {
        if Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(PathBuf::from(name));
        }
    }
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
    if let Some(root) = pyenv {
        if let Ok(entries) = std::fs::read_dir(root.join("versions")) {
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let v = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    v.starts_with("3.12") || v.starts_with("3.13")
                })
                .map(|p| p.join("bin/python3"))
                .filter(|p| p.exists())
                .collect();
            found.sort();
            if let Some(p) = found.into_iter().next() {
                return Ok(p);
            }
        }
    }
    Err(OracleError::NoPython)
}

fn run(step: &str, cmd: &mut Command) -> Result<(), OracleError> {
    let out = cmd.output().map_err(|e| OracleError::Setup {
        step: step.into(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(OracleError::Setup {
            step: step.into(),
            detail: err.lines().rev().take(5).collect::<Vec<_>>().join(" | "),
        });
    }
    Ok(())
}

/// The venv's python, creating the venv with the pinned packages if it is missing.
/// `on_setup` is told before a (slow) first-time install starts.
pub fn ensure_venv(on_setup: &mut dyn FnMut(&str)) -> Result<PathBuf, OracleError> {
    let venv = cache_dir().join("venv").join(VENV_NAME);
    let python = venv.join("bin/python");
    let stamp = venv.join(".kernelgen-pinned");
    let wanted = PINNED.join(" ");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted) {
        return Ok(python);
    }
    let base = find_python()?;
    on_setup(&format!(
        "creating the TPU oracle venv at {} ({wanted}; first use only, ~1 min)",
        venv.display()
    ));
    run(
        "python -m venv",
        Command::new(&base).args(["-m", "venv"]).arg(&venv),
    )?;
    run(
        "pip install",
        Command::new(&python)
            .args(["-m", "pip", "install", "-q"])
            .args(PINNED),
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// libtpu's PJRT plugin inside the oracle venv (creating the venv if needed): a TPU plugin to hand
/// the runtime, which on a machine without a TPU must fail at client creation.
pub fn libtpu_path(on_setup: &mut dyn FnMut(&str)) -> Result<PathBuf, OracleError> {
    let python = ensure_venv(on_setup)?;
    let lib = python
        .parent()
        .and_then(Path::parent)
        .expect("the venv's python is <venv>/bin/python")
        .join("lib");
    // lib/python3.<minor>/site-packages: the minor version is whichever Python made the venv
    let site = std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.path().join("site-packages/libtpu/libtpu.so"))
        .find(|p| p.is_file());
    site.ok_or_else(|| OracleError::Setup {
        step: "find libtpu".into(),
        detail: format!(
            "no python3.*/site-packages/libtpu/libtpu.so under {}",
            lib.display()
        ),
    })
}

/// A running oracle process; requests are answered in order.
pub struct Oracle {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Oracle {
    /// Starts the driver in the venv (creating it if needed).
    pub fn start(on_setup: &mut dyn FnMut(&str)) -> Result<Oracle, OracleError> {
        let python = ensure_venv(on_setup)?;
        let script = cache_dir().join("venv").join("tpu_oracle.py");
        if std::fs::read_to_string(&script).ok().as_deref() != Some(DRIVER) {
            std::fs::write(&script, DRIVER)?;
        }
        let mut child = Command::new(python)
            .arg(&script)
            .env("JAX_PLATFORMS", "cpu")
            .env("TPU_SKIP_MDS_QUERY", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Oracle {
            child,
            stdin,
            stdout,
        })
    }

    /// Compiles one config with the real TPU compiler (1-8 s).
    pub fn compile(&mut self, req: &OracleRequest) -> Result<OracleResponse, OracleError> {
        let line = serde_json::to_string(req).map_err(|e| OracleError::Protocol(e.to_string()))?;
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut answer = String::new();
        if self.stdout.read_line(&mut answer)? == 0 {
            return Err(OracleError::Protocol(
                "the oracle exited (jax import failed?)".into(),
            ));
        }
        serde_json::from_str(&answer).map_err(|e| OracleError::Protocol(format!("{e}: {answer}")))
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One committed calibration point (a line of `kernelgen/data/vmem_oracle_*.jsonl`).
#[derive(Clone, Debug, Deserialize)]
pub struct OraclePoint {
    pub request: OracleRequest,
    pub default_limit_bytes: u64,
    pub response: OracleResponse,
}

/// Points that could not be read, with why: each is a line number and a reason.
pub type Unreadable = Vec<(usize, String)>;

/// Parses committed oracle points (JSON lines); lines that do not parse are returned apart
/// (line number, reason) so the caller can say how many and why rather than drop them.
pub fn parse_points(text: &str) -> (Vec<OraclePoint>, Unreadable) {
    let mut points = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(p) => points.push(p),
            Err(e) => bad.push((i + 1, e.to_string())),
        }
    }
    (points, bad)
}
