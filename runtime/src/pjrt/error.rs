//! Errors of the PJRT layer.

use std::fmt;
use std::path::PathBuf;

use pjrt_sys as sys;

use super::ElementType;

/// Everything that can go wrong between this crate and a PJRT plugin.
#[derive(Debug, thiserror::Error)]
pub enum PjrtError {
    /// `dlopen` failed or the library does not export `GetPjrtApi`.
    #[error("cannot load PJRT plugin {}: {message}", path.display())]
    Load { path: PathBuf, message: String },

    /// The plugin was built against an incompatible PJRT C API.
    #[error(
        "PJRT plugin {} speaks C API {}.{}, this build needs {}.{} or a newer minor version \
         with the same major version",
        path.display(), plugin.0, plugin.1, required.0, required.1
    )]
    VersionMismatch {
        path: PathBuf,
        plugin: (i32, i32),
        required: (i32, i32),
    },

    /// A PJRT call returned a `PJRT_Error`. `message` is the plugin's own text.
    #[error("{call} failed ({code}): {message}")]
    Plugin {
        call: &'static str,
        code: ErrorCode,
        message: String,
    },

    /// The plugin's function table has no entry for this function (older plugin, or null slot).
    #[error("PJRT plugin does not implement {0}")]
    Unimplemented(&'static str),

    /// A caller-side argument was rejected before reaching the plugin.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Host element type and buffer element type disagree.
    #[error("element type mismatch: buffer holds {actual}, caller asked for {expected}")]
    TypeMismatch {
        expected: ElementType,
        actual: ElementType,
    },
}

/// `PJRT_Error_Code` (absl status codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
    /// `PJRT_Error_Code_OK` on an error object, or a code this header does not know.
    Other(u32),
}

impl ErrorCode {
    pub(crate) fn from_raw(code: sys::PJRT_Error_Code) -> Self {
        match code {
            sys::PJRT_Error_Code_CANCELLED => Self::Cancelled,
            sys::PJRT_Error_Code_UNKNOWN => Self::Unknown,
            sys::PJRT_Error_Code_INVALID_ARGUMENT => Self::InvalidArgument,
            sys::PJRT_Error_Code_DEADLINE_EXCEEDED => Self::DeadlineExceeded,
            sys::PJRT_Error_Code_NOT_FOUND => Self::NotFound,
            sys::PJRT_Error_Code_ALREADY_EXISTS => Self::AlreadyExists,
            sys::PJRT_Error_Code_PERMISSION_DENIED => Self::PermissionDenied,
            sys::PJRT_Error_Code_RESOURCE_EXHAUSTED => Self::ResourceExhausted,
            sys::PJRT_Error_Code_FAILED_PRECONDITION => Self::FailedPrecondition,
            sys::PJRT_Error_Code_ABORTED => Self::Aborted,
            sys::PJRT_Error_Code_OUT_OF_RANGE => Self::OutOfRange,
            sys::PJRT_Error_Code_UNIMPLEMENTED => Self::Unimplemented,
            sys::PJRT_Error_Code_INTERNAL => Self::Internal,
            sys::PJRT_Error_Code_UNAVAILABLE => Self::Unavailable,
            sys::PJRT_Error_Code_DATA_LOSS => Self::DataLoss,
            sys::PJRT_Error_Code_UNAUTHENTICATED => Self::Unauthenticated,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(c) => write!(f, "code {c}"),
            named => write!(f, "{named:?}"),
        }
    }
}

impl PjrtError {
    /// The plugin's status code, for [`PjrtError::Plugin`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Plugin { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = PjrtError> = std::result::Result<T, E>;
