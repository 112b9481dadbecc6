//! kernelgen: ragged paged attention kernels for XLA devices, generated from one typed config.
//!
//! - [`config`]: the validated [`config::KernelConfig`], presets, Hugging Face config reader;
//! - [`emit`]: StableHLO (and Pallas TPU) emission from the templates in `templates/`;
//! - [`artifact`]: the artifact directory (`manifest.json` + emitted files);
//! - [`numerics`]: runs an artifact through PJRT against the f64 reference.

pub mod config;

/// kernelgen's version, written into every manifest and emitted file header.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub mod emit;
