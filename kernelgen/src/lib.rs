//! kernelgen: ragged paged attention kernels for XLA devices, generated from one typed config.
//!
//! - [`config`]: the validated [`config::KernelConfig`], presets, Hugging Face config reader;
//! - [`emit`]: StableHLO emission from the templates in `templates/`, checked by melior;
//! - [`artifact`]: the artifact directory (`manifest.json` + emitted files);
//! - [`build`]: config -> artifact (`kernelgen build`), and the Pallas kernel for a TPU target;
//! - [`numerics`]: runs a kernel through PJRT against the f64 reference (`kernelgen verify`);
//! - [`target`]: TPU generations (VMEM, SMEM, default scoped limit, tiling);
//! - [`vmem`]: the VMEM/SMEM budget checker (`kernelgen check`, `kernelgen plan`);
//! - [`tpu`]: the real TPU compiler (deviceless) and what a build records of its verdict;
//! - [`tune`]: the block-size sweep (`kernelgen tune`) and the tuned table serving reads;
//! - [`step`]: the model's step program and the device executor that runs it;
//! - [`serve`]: loading a model and starting the engine on it;
//! - [`bench`]: benchmarks that print ratios against bounds measured in the same run;
//! - [`setup`]: fetching the plugins and the default model into the cache.

pub mod artifact;
pub mod bench;
pub mod build;
pub mod config;
pub mod emit;
mod error;
pub mod http;
pub mod numerics;
pub mod serve;
pub mod setup;
pub mod step;
pub mod target;
pub mod tpu;
pub mod tune;
pub mod vmem;

pub use error::Error;

/// kernelgen's version, written into every manifest and emitted file header.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
