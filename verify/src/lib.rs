//! Reference implementations.
