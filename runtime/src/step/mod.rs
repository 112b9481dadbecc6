//! Running the model's step program on a PJRT device: weights uploaded once, KV pools resident
//! and updated in place, one executable per token-count bucket.

pub mod executor;
pub mod layout;
pub mod profile;

pub use executor::{default_buckets, DeviceExecutor, ProgramSource};
