//! The VMEM gate (`kernelgen check --matrix ci/vmem.toml`): many configs x targets, each with
//! the verdict it must get. The file:
//!
//! ```toml
//! [defaults]                    # keys for every entry, named as the command-line flags
//! preset = "llama3-8b"
//!
//! [[check]]
//! name = "llama3-8b serving, page 64"
//! targets = ["v5e", "v5p", "v6e"]
//! q = 16
//! kv = 16
//! page-size = 64
//! expect = "fits"               # fits (default) | does-not-fit | uncertain (a known limit of
//!                                # the model, recorded so the gate notices when it changes)
//! ```
//!
//! Entries (and `[defaults]`) take every [`KernelSpec`] key plus `kernel`, `vmem-limit` and `tp`;
//! an unknown key is an error naming it. Call shapes default to the TPU serving shapes.

use super::request::resolve;
use super::{check, KernelModel, Verdict, VmemError};
use crate::config::{ConfigError, KernelSpec, TPU_DEFAULTS};
use crate::target::{parse_bytes, Target};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The check options an entry may set beside its kernel config.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckOptions {
    pub kernel: Option<KernelModel>,
    /// A byte size such as `32MiB`.
    pub vmem_limit: Option<String>,
    pub tp: Option<u32>,
}

/// What an entry expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    #[default]
    Fits,
    DoesNotFit,
    Uncertain,
}

impl Expect {
    pub fn verdict(self) -> Verdict {
        match self {
            Expect::Fits => Verdict::Fits,
            Expect::DoesNotFit => Verdict::DoesNotFit,
            Expect::Uncertain => Verdict::Uncertain,
        }
    }
}

/// Keys of an entry or of `[defaults]`: a kernel spec and check options.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Keys {
    #[serde(flatten)]
    pub kernel: KernelSpec,
    #[serde(flatten)]
    pub options: CheckOptions,
    /// Anything else: refused, by name.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Entry {
    pub name: String,
    pub targets: Vec<String>,
    #[serde(default)]
    pub expect: Expect,
    #[serde(flatten)]
    pub keys: Keys,
}

/// A whole matrix file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixFile {
    #[serde(default)]
    pub defaults: Keys,
    pub check: Vec<Entry>,
}

/// Why a matrix could not be run; each names the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: check '{entry}': {message}")]
    Entry {
        path: String,
        entry: String,
        message: String,
    },
}

/// One config on one target: its verdict beside the expected one.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub target: String,
    pub verdict: Verdict,
    pub expect: Verdict,
    pub total_bytes: u64,
    pub limit_bytes: u64,
    pub ok: bool,
}

/// The gate's outcome: every row, and whether any mismatched (a wrong verdict, or an
/// `uncertain` where a verdict was expected).
#[derive(Clone, Debug, Serialize)]
pub struct MatrixReport {
    pub rows: Vec<Row>,
    pub passed: bool,
}

impl MatrixReport {
    /// A row whose verdict is definite and wrong.
    pub fn failed(&self) -> bool {
        self.rows
            .iter()
            .any(|r| !r.ok && r.verdict != Verdict::Uncertain)
    }

    pub fn uncertain(&self) -> bool {
        self.rows
            .iter()
            .any(|r| !r.ok && r.verdict == Verdict::Uncertain)
    }
}

/// Parses a matrix file's text (`path` names it in errors).
pub fn parse(path: &str, text: &str) -> Result<MatrixFile, MatrixError> {
    let file: MatrixFile = toml::from_str(text).map_err(|e| MatrixError::Parse {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    if let Some(k) = file.defaults.unknown.keys().next() {
        return Err(MatrixError::Parse {
            path: path.to_string(),
            message: format!("[defaults]: unknown key '{k}'"),
        });
    }
    Ok(file)
}

fn entry_rows(path: &str, defaults: &Keys, e: &Entry) -> Result<Vec<Row>, MatrixError> {
    let fail = |message: String| MatrixError::Entry {
        path: path.to_string(),
        entry: e.name.clone(),
        message,
    };
    if let Some(k) = e.keys.unknown.keys().next() {
        return Err(fail(format!("unknown key '{k}'")));
    }
    let spec = e.keys.kernel.clone().or(&defaults.kernel);
    let o = &e.keys.options;
    let d = &defaults.options;
    let model = o.kernel.or(d.kernel).unwrap_or(KernelModel::JaxRpa);
    let limit = o
        .vmem_limit
        .as_ref()
        .or(d.vmem_limit.as_ref())
        .map(|s| parse_bytes(s))
        .transpose()
        .map_err(|e: ConfigError| fail(e.to_string()))?;
    let tp = o.tp.or(d.tp).unwrap_or(1);
    let params = spec
        .params(&TPU_DEFAULTS)
        .map_err(|e| fail(e.to_string()))?;
    let mut rows = Vec::new();
    for name in &e.targets {
        let target = Target::find(name).map_err(|e| fail(e.to_string()))?;
        let resolved =
            resolve(params.clone(), target, model, limit, tp).map_err(|e| fail(e.to_string()))?;
        let r = check(&resolved.request()).map_err(|e: VmemError| fail(e.to_string()))?;
        let expect = e.expect.verdict();
        rows.push(Row {
            name: e.name.clone(),
            target: name.clone(),
            verdict: r.verdict,
            expect,
            total_bytes: r.total_bytes,
            limit_bytes: r.limit_bytes,
            ok: r.verdict == expect,
        });
    }
    Ok(rows)
}

/// Runs every entry of `file` on every one of its targets.
pub fn run(path: &str, file: &MatrixFile) -> Result<MatrixReport, MatrixError> {
    let mut rows = Vec::new();
    for e in &file.check {
        rows.extend(entry_rows(path, &file.defaults, e)?);
    }
    let passed = rows.iter().all(|r| r.ok);
    Ok(MatrixReport { rows, passed })
}

/// Reads and runs the matrix file at `path`.
pub fn run_file(path: &Path) -> Result<MatrixReport, MatrixError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| MatrixError::Io {
        path: shown.clone(),
        source,
    })?;
    run(&shown, &parse(&shown, &text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_merge_defaults_and_unknown_keys_are_named() {
        let text = r#"
[defaults]
preset = "llama3-8b"
max-model-len = 4096

[[check]]
name = "ok"
targets = ["v5p"]
page-size = 64
q = 16
kv = 16

[[check]]
name = "typo"
targets = ["v5p"]
page_sise = 64
q = 16
kv = 16
"#;
        let file = parse("m.toml", text).unwrap();
        let rows = entry_rows("m.toml", &file.defaults, &file.check[0]).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].verdict, Verdict::Fits);
        let e = entry_rows("m.toml", &file.defaults, &file.check[1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("check 'typo'") && e.contains("page_sise"), "{e}");
        let e = parse(
            "m.toml",
            "[defaults]\nbogus = 1\n[[check]]\nname='x'\ntargets=[]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
