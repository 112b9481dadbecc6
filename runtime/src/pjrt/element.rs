//! Element types of device buffers and the host types that map onto them.

use std::fmt;

use pjrt_sys as sys;

/// `PJRT_Buffer_Type`: the element type of a device buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    Pred,
    S8,
    S16,
    S32,
    S64,
    U8,
    U16,
    U32,
    U64,
    F16,
    F32,
    F64,
    Bf16,
    C64,
    C128,
    /// Any other `PJRT_Buffer_Type` value (fp8, int4, token, ...), kept verbatim.
    Other(u32),
}

impl ElementType {
    pub(crate) fn from_raw(raw: sys::PJRT_Buffer_Type) -> Self {
        match raw {
            sys::PJRT_Buffer_Type_PRED => Self::Pred,
            sys::PJRT_Buffer_Type_S8 => Self::S8,
            sys::PJRT_Buffer_Type_S16 => Self::S16,
            sys::PJRT_Buffer_Type_S32 => Self::S32,
            sys::PJRT_Buffer_Type_S64 => Self::S64,
            sys::PJRT_Buffer_Type_U8 => Self::U8,
            sys::PJRT_Buffer_Type_U16 => Self::U16,
            sys::PJRT_Buffer_Type_U32 => Self::U32,
            sys::PJRT_Buffer_Type_U64 => Self::U64,
            sys::PJRT_Buffer_Type_F16 => Self::F16,
            sys::PJRT_Buffer_Type_F32 => Self::F32,
            sys::PJRT_Buffer_Type_F64 => Self::F64,
            sys::PJRT_Buffer_Type_BF16 => Self::Bf16,
            sys::PJRT_Buffer_Type_C64 => Self::C64,
            sys::PJRT_Buffer_Type_C128 => Self::C128,
            other => Self::Other(other),
        }
    }

    pub(crate) fn to_raw(self) -> sys::PJRT_Buffer_Type {
        match self {
            Self::Pred => sys::PJRT_Buffer_Type_PRED,
            Self::S8 => sys::PJRT_Buffer_Type_S8,
            Self::S16 => sys::PJRT_Buffer_Type_S16,
            Self::S32 => sys::PJRT_Buffer_Type_S32,
            Self::S64 => sys::PJRT_Buffer_Type_S64,
            Self::U8 => sys::PJRT_Buffer_Type_U8,
            Self::U16 => sys::PJRT_Buffer_Type_U16,
            Self::U32 => sys::PJRT_Buffer_Type_U32,
            Self::U64 => sys::PJRT_Buffer_Type_U64,
            Self::F16 => sys::PJRT_Buffer_Type_F16,
            Self::F32 => sys::PJRT_Buffer_Type_F32,
            Self::F64 => sys::PJRT_Buffer_Type_F64,
            Self::Bf16 => sys::PJRT_Buffer_Type_BF16,
            Self::C64 => sys::PJRT_Buffer_Type_C64,
            Self::C128 => sys::PJRT_Buffer_Type_C128,
            Self::Other(raw) => raw,
        }
    }

    /// Bytes per element for the dense host layout, `None` for sub-byte or opaque types.
    pub fn byte_size(self) -> Option<usize> {
        Some(match self {
            Self::Pred | Self::S8 | Self::U8 => 1,
            Self::S16 | Self::U16 | Self::F16 | Self::Bf16 => 2,
            Self::S32 | Self::U32 | Self::F32 => 4,
            Self::S64 | Self::U64 | Self::F64 | Self::C64 => 8,
            Self::C128 => 16,
            Self::Other(_) => return None,
        })
    }

    /// StableHLO spelling (`f32`, `bf16`, `i32`, ...), for building MLIR types.
    pub fn mlir_name(self) -> Option<&'static str> {
        Some(match self {
            Self::Pred => "i1",
            Self::S8 => "i8",
            Self::S16 => "i16",
            Self::S32 => "i32",
            Self::S64 => "i64",
            Self::U8 => "ui8",
            Self::U16 => "ui16",
            Self::U32 => "ui32",
            Self::U64 => "ui64",
            Self::F16 => "f16",
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::Bf16 => "bf16",
            Self::C64 => "complex<f32>",
            Self::C128 => "complex<f64>",
            Self::Other(_) => return None,
        })
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mlir_name() {
            Some(name) => f.write_str(name),
            None => write!(f, "PJRT_Buffer_Type({})", self.to_raw()),
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A host type whose values can be copied to and from device buffers of [`Element::TYPE`].
///
/// Sealed: device bytes are reinterpreted as `Self`, so only plain-old-data types for which
/// every bit pattern is a valid value may implement it.
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    const TYPE: ElementType;
}

macro_rules! element {
    ($($t:ty => $e:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const TYPE: ElementType = ElementType::$e;
        }
    )*};
}

element! {
    f32 => F32,
    f64 => F64,
    half::bf16 => Bf16,
    half::f16 => F16,
    i8 => S8,
    i16 => S16,
    i32 => S32,
    i64 => S64,
    u8 => U8,
    u16 => U16,
    u32 => U32,
    u64 => U64,
}
