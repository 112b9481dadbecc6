//! kernelgen library.
