//! Shared helpers for the end-to-end tests: one PJRT client per test process, small configs.

use kernelgen::config::{Dtype, Geometry, KernelConfig, KernelParams};
use runtime::pjrt::Client;
use std::sync::OnceLock;

/// The CPU plugin's client, created once per test binary (loading the plugin takes ~20 ms,
/// compiling dominates anyway).
pub fn client() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            Client::from_default_plugin().expect("PJRT CPU plugin (run scripts/setup.sh)")
        })
        .clone()
}

/// A small config, cheap enough to compile and run dozens of times.
#[allow(clippy::too_many_arguments)]
pub fn small_config(
    heads: (u32, u32),
    head_dim: u32,
    page_size: u32,
    dtype: Dtype,
    blocks: (u32, u32),
    max_num_tokens: u32,
    max_num_seqs: u32,
    pages_per_seq: u32,
) -> KernelConfig {
    KernelConfig::new(KernelParams {
        geometry: Geometry {
            num_q_heads: heads.0,
            num_kv_heads: heads.1,
            head_dim,
        },
        dtype,
        page_size,
        q_block: blocks.0,
        kv_pages_block: blocks.1,
        max_num_tokens,
        max_num_seqs,
        pages_per_seq,
        total_pages: max_num_seqs * pages_per_seq,
        sm_scale: None,
        sliding_window: None,
        soft_cap: None,
    })
    .expect("valid test config")
}
