//! The end-to-end tests, one binary: CLI -> artifact -> runtime, across the crates.

mod block_sizes;
mod engine_vs_dense;
mod pallas_interpret;
mod rpa_proptest;
mod step_program;
mod tpu_plugin;
