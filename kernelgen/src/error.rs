//! The library's error type: one variant per stage, each carrying that stage's own enum.

/// Any kernelgen library failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Emit(#[from] crate::emit::EmitError),
    #[error(transparent)]
    Artifact(#[from] crate::artifact::ArtifactError),
    #[error(transparent)]
    Vmem(#[from] crate::vmem::VmemError),
    #[error("the TPU compiler: {0}")]
    Oracle(#[from] crate::tpu::OracleError),
    #[error(transparent)]
    Pjrt(#[from] runtime::pjrt::PjrtError),
    #[error(transparent)]
    Tp(#[from] crate::step::tp::TpError),
}
