//! PJRT runtime.

pub mod pjrt;
pub mod plan;
