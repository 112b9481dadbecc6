//! Code emission: tera templates (in `templates/`) rendered from a validated
//! [`KernelConfig`](crate::config::KernelConfig), then checked before anything is written.
//!
//! - [`stablehlo`]: the ragged paged attention kernel as StableHLO, for any PJRT backend;
//! - [`mlir`]: melior parse, verify and generic-form print, plus the Rust shape checker
//!   ([`typecheck`]) for the unregistered StableHLO ops;
//! - [`step`]: the model's step program, with the kernel linked in by [`link`];
//! - [`templates`]: the embedded template set.

pub mod link;
pub mod mlir;
pub mod pallas;
pub mod stablehlo;
pub mod step;
pub mod templates;
pub mod typecheck;

/// Why emission failed. Every variant points at the template line or op that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("template rendering failed: {0}")]
    Template(String),
    #[error("emitted MLIR does not parse:\n{0}")]
    Parse(String),
    #[error("emitted MLIR does not verify:\n{0}")]
    Verify(String),
    #[error("{location}: '{op}': {message}")]
    Type {
        op: String,
        location: String,
        message: String,
    },
    #[error("printing the module failed: {0}")]
    Print(String),
    #[error("linking the kernel: {0}")]
    Link(String),
}
