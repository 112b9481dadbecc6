//! `kernelgen build`: validated config -> emitted, checked kernel -> artifact directory; with a
//! TPU target, also the Pallas kernel checked for it ([`tpu`]).

pub mod tpu;

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

/// Emits the StableHLO kernel for `cfg` into a new artifact in `dir`, leaving the writer open
/// so the caller can add files (the Pallas module, a TPU lowering) before the manifest.
pub fn begin_stablehlo(
    cfg: &KernelConfig,
    dir: &Path,
) -> Result<(ArtifactWriter, Duration), Error> {
    let start = Instant::now();
    let kernel = stablehlo::emit(cfg)?;
    let emit_time = start.elapsed();
    let mut writer = ArtifactWriter::create(dir, cfg)?;
    writer.add_file(stablehlo::FILE_NAME, kernel.text.as_bytes())?;
    writer.manifest.extra.insert(
        "stablehlo_ops".into(),
        serde_json::to_value(&kernel.module.op_counts).expect("op counts serialize"),
    );
    Ok((writer, emit_time))
}

/// Emits the StableHLO kernel for `cfg` and writes the artifact to `dir`.
pub fn build_stablehlo(cfg: &KernelConfig, dir: &Path) -> Result<BuildOutput, Error> {
    let (writer, emit_time) = begin_stablehlo(cfg, dir)?;
    Ok(BuildOutput {
        artifact: writer.finish()?,
        emit_time,
    })
}
