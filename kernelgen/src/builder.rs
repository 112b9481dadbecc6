//! `kernelgen build`: validated config -> emitted, checked kernel -> artifact directory.

use crate::artifact::{Artifact, ArtifactWriter};
use crate::config::KernelConfig;
use crate::emit::stablehlo;
use crate::Error;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a build produced and how long each stage took.
pub struct BuildOutput {
    pub artifact: Artifact,
    pub emit_time: Duration,
}

/// Emits the StableHLO kernel for `cfg` and writes the artifact to `dir`.
pub fn build_stablehlo(cfg: &KernelConfig, dir: &Path) -> Result<BuildOutput, Error> {
    let start = Instant::now();
    let kernel = stablehlo::emit(cfg)?;
    let emit_time = start.elapsed();
    let mut writer = ArtifactWriter::create(dir, cfg)?;
    writer.add_file(stablehlo::FILE_NAME, kernel.text.as_bytes())?;
    writer.manifest.extra.insert(
        "stablehlo_ops".into(),
        serde_json::to_value(&kernel.module.op_counts).expect("op counts serialize"),
    );
    Ok(BuildOutput {
        artifact: writer.finish()?,
        emit_time,
    })
}
