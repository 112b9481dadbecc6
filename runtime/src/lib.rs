//! PJRT runtime.

pub mod pjrt;
