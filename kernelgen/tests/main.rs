//! kernelgen's integration tests, one binary (each links MLIR statically: one link instead of
//! one per file, and the long tests run side by side). Each module is one area; run one with
//! `cargo test -p kernelgen --test kernelgen MODULE::`.

mod bench_cli;
mod build_tpu;
mod check_cli;
mod cli;
mod common;
mod generate_cli;
mod oracle_live;
mod serve_cli;
mod tpu_compile;
mod tune_cli;
mod vmem_agreement;
