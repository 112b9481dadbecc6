//! The template set, embedded in the binary so `kernelgen` runs from any directory.

use super::EmitError;
use std::error::Error as _;

/// (name, source) of every template; names match the files in `templates/`.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "macros.tera",
        include_str!("../../../templates/macros.tera"),
    ),
    (
        "rpa.stablehlo.mlir.tera",
        include_str!("../../../templates/rpa.stablehlo.mlir.tera"),
    ),
    (
        "step.stablehlo.mlir.tera",
        include_str!("../../../templates/step.stablehlo.mlir.tera"),
    ),
    (
        "rpa.pallas.py.tera",
        include_str!("../../../templates/rpa.pallas.py.tera"),
    ),
    (
        "rpa_batched.stablehlo.mlir.tera",
        include_str!("../../../templates/rpa_batched.stablehlo.mlir.tera"),
    ),
    (
        "rpa_host.stablehlo.mlir.tera",
        include_str!("../../../templates/rpa_host.stablehlo.mlir.tera"),
    ),
    (
        "step_matmuls.stablehlo.mlir.tera",
        include_str!("../../../templates/step_matmuls.stablehlo.mlir.tera"),
    ),
    (
        "step_all_reduces.stablehlo.mlir.tera",
        include_str!("../../../templates/step_all_reduces.stablehlo.mlir.tera"),
    ),
    (
        "kernel_chain.stablehlo.mlir.tera",
        include_str!("../../../templates/kernel_chain.stablehlo.mlir.tera"),
    ),
    (
        "probe_bandwidth.stablehlo.mlir.tera",
        include_str!("../../../templates/probe_bandwidth.stablehlo.mlir.tera"),
    ),
    (
        "probe_matmul.stablehlo.mlir.tera",
        include_str!("../../../templates/probe_matmul.stablehlo.mlir.tera"),
    ),
];

/// The templates the attention kernel is generated from (StableHLO, both schedules, and
/// Pallas), concatenated: what a tuned block size was measured on.
pub fn kernel_source() -> String {
    const KERNEL: [&str; 5] = [
        "macros.tera",
        "rpa.stablehlo.mlir.tera",
        "rpa_batched.stablehlo.mlir.tera",
        "rpa_host.stablehlo.mlir.tera",
        "rpa.pallas.py.tera",
    ];
    TEMPLATES
        .iter()
        .filter(|(name, _)| KERNEL.contains(name))
        .map(|(_, text)| *text)
        .collect()
}

/// Renders template `name` with `context`.
pub fn render(name: &str, context: &tera::Context) -> Result<String, EmitError> {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    tera.add_raw_templates(TEMPLATES.iter().copied())
        .map_err(|e| EmitError::Template(chain(&e)))?;
    tera.render(name, context)
        .map_err(|e| EmitError::Template(chain(&e)))
}

/// tera puts the useful part (which variable, which line) in the error's sources.
fn chain(e: &tera::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
