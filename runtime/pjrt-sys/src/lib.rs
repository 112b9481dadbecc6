//! Raw PJRT C API bindings.
