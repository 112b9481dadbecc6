//! VMEM model of the Pallas TPU kernel kernelgen emits (`templates/rpa.pallas.py.tera`).
//! Filled in with that kernel (issue: Pallas-style TPU kernel emission).

use super::{ModelAccount, VmemError};
use crate::config::KernelConfig;
use crate::target::Target;

pub fn account(_cfg: &KernelConfig, _t: &Target) -> Result<ModelAccount, VmemError> {
    Err(VmemError::Unsupported {
        kernel: "kernelgen",
        reason: "the Pallas TPU kernel is not emitted yet; use --kernel jax-rpa".into(),
    })
}
