//! Reference implementations and random input generators for checking generated kernels.
//!
//! - [`rpa`]: ragged paged attention in f64, written from the semantics alone;
//! - [`batch`]: random ragged batches (decode rows, prefill chunks, shuffled pages, padding);
//! - [`compare`]: error metrics against the reference;
//! - [`oracle`]: the real TPU compiler (deviceless, via a managed Python venv) and its committed data.

pub mod batch;
pub mod compare;
pub mod oracle;
pub mod rpa;

pub use batch::{BatchSpec, RaggedBatch};
pub use compare::ErrorStats;
pub use rpa::{reference, valid_rows, RpaProblem};
