//! kernelgen's runtime: PJRT (plugin, buffers, execution), Llama models, and a paged-KV serving
//! engine with continuous batching.
//!
//! - [`dtype`]: the element types (f32, bf16) every crate shares;
//! - [`pjrt`]: safe wrapper over the PJRT C API (`pjrt-sys`);
//! - [`model`]: Llama config and weights from GGUF / safetensors, tokenizer;
//! - [`engine`]: page allocator, scheduler, sampler, metrics, and the [`engine::StepExecutor`] seam;
//! - [`kernels`]: native host kernels (ragged paged attention) called as XLA FFI custom calls;
//! - [`plan`]: engine capacity rules shared with `kernelgen plan`;
//! - [`mem`]: the process's resident memory, traced by stage.

pub mod cache;
pub mod dtype;
pub mod engine;
pub mod kernels;
pub mod mem;
pub mod model;
pub mod pjrt;
pub mod plan;
