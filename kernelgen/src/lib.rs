//! kernelgen: ragged paged attention kernels for XLA devices, generated from one typed config.
//!
//! - [`config`]: the validated [`config::KernelConfig`], presets, Hugging Face config reader;
//! - [`emit`]: StableHLO emission from the templates in `templates/`, checked by melior;
//! - [`artifact`]: the artifact directory (`manifest.json` + emitted files);
//! - [`builder`]: config -> artifact (`kernelgen build`);
//! - [`numerics`]: runs a kernel through PJRT against the f64 reference (`kernelgen verify`);
//! - [`target`]: TPU generations (VMEM, SMEM, default scoped limit, tiling);
//! - [`vmem`]: the VMEM/SMEM budget checker (`kernelgen check`, `kernelgen plan`);
//! - [`tpu`]: the Pallas TPU module's build for a target and the real TPU compiler's verdict.

pub mod artifact;
pub mod builder;
pub mod config;
pub mod emit;
mod error;
pub mod numerics;
pub mod serve;
pub mod target;
pub mod tpu;
pub mod vmem;

pub use error::Error;

/// kernelgen's version, written into every manifest and emitted file header.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
