//! The TPU compiler oracle, driven from Rust: a toolkit-managed Python venv with pinned
//! `jax==0.12.0.1 jaxlib==0.12.0.1 libtpu==0.0.50.1`, running `verify/oracle/tpu_oracle.py`,
//! which compiles kernels for a compile-only TPU device on this CPU machine and reports the
//! real compiler's verdict.
//!
//! The venv lives in the cache folder (`$KERNELGEN_CACHE`, default `<repo>/.cache`) and is created
//! on first use (about 40 s and 1.2 GB); later runs reuse it.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// Pinned versions: the pair the committed calibration data was measured with.
pub const PINNED: &[&str] = &["jax==0.12.0.1", "jaxlib==0.12.0.1", "libtpu==0.0.50.1"];
const DRIVER: &str = include_str!("../oracle/tpu_oracle.py");
const VENV_NAME: &str = "tpu-oracle";

/// One kernel config to compile (field names are the driver's JSON protocol).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OracleRequest {
    pub kernel: String,
    pub target: String,
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub page_size: u32,
    /// `bfloat16` or `float32`.
    pub dtype: String,
    pub q_block: u32,
    pub kv_pages_block: u32,
    pub max_num_tokens: u32,
    pub max_num_seqs: u32,
    pub pages_per_seq: u32,
    pub total_pages: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmem_limit_bytes: Option<u64>,
    /// Path of an emitted `rpa.pallas.py` for `kernel = "kernelgen"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Where to write the lowered StableHLO (`tpu_custom_call`), if wanted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OracleResponse {
    /// `fits`, `vmem_oom`, `smem_oom` or `error`.
    pub verdict: String,
    pub size_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub compile_s: f64,
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

pub use runtime::cache::cache_dir;

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

/// One committed calibration point (a line of `verify/data/vmem_oracle_*.jsonl`).
#[derive(Clone, Debug, Deserialize)]
pub struct OraclePoint {
    pub request: OracleRequest,
    pub default_limit_bytes: u64,
    pub response: OracleResponse,
}

/// Reads committed oracle points (JSON lines).
pub fn read_points(path: &Path) -> Result<Vec<OraclePoint>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}
