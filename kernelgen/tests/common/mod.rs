//! Helpers shared by the CLI integration tests.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Small engine shapes for serving tests: they keep the compiled programs small.
pub const SMALL_ENGINE: &[&str] = &[
    "--max-seqs",
    "4",
    "--max-pages",
    "128",
    "--max-seq-len",
    "256",
    "--max-tokens-per-round",
    "64",
];

/// Runs the built `kernelgen` binary with `args` and collects its output.
pub fn kernelgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kernelgen"))
        .args(args)
        .output()
        .expect("run kernelgen")
}

/// An empty-to-start path in the temp dir, unique to this process: `<prefix>-<pid>-<name>`.
/// Whatever an earlier run left there is removed; the directory itself is not created.
pub fn scratch(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Stdout parsed as JSON; panics showing the text when it is not.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
