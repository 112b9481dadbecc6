//! Reference implementations and random input generators for checking generated kernels.
//!
//! - [`rpa`]: ragged paged attention in f64, written from the semantics alone;
//! - [`batch`]: random ragged batches (decode rows, prefill chunks, shuffled pages, padding);
//! - [`compare`]: error metrics against the reference;
//! - [`dense`]: dense f32 Llama decoder (greedy generation) and the layer math it shares;
//! - [`host_executor`]: the engine's `StepExecutor` on the host, with a paged KV cache;
//! - [`fixtures`]: test model files (a tiny random Llama as HF directory or GGUF, any quant).
//!
//! `harness/pallas_harness.py` runs emitted Pallas modules in interpret mode for the tests.

pub mod batch;
pub mod compare;
pub mod dense;
pub mod fixtures;
pub mod host_executor;
pub mod npy;
pub mod rpa;

pub use batch::{BatchSpec, Poison, RaggedBatch};
pub use compare::ErrorStats;
pub use rpa::{reference, valid_rows, RpaProblem};
