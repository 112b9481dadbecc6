//! Raw PJRT C API bindings.
//!
//! Generated at build time by bindgen from the `pjrt_c_api.h` that ships inside the pinned
//! PJRT plugin wheel (see `build.rs` for where it is looked up), so the struct layouts match
//! the plugin this workspace loads. Only `PJRT_*` items are exported.
//!
//! C enums are plain integer constants (`PJRT_Buffer_Type_F32: PJRT_Buffer_Type`), because a
//! plugin may return values that this header does not know about.
//!
//! Every argument struct has a `<Name>_STRUCT_SIZE` constant (offset of its last field plus that
//! field's size, i.e. *not* padded to alignment). Callers must put that value into
//! `struct_size`; it is how the plugin detects which fields the caller knows about.
//!
//! The entry point `GetPjrtApi` is not declared by the header; plugins export it as
//! `const PJRT_Api* GetPjrtApi(void)`, see [`GetPjrtApiFn`].

#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case)]
#![allow(clippy::all)]
#![allow(rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// `(major, minor)` of the PJRT C API header these bindings were generated from.
pub const HEADER_API_VERSION: (i32, i32) = (PJRT_API_MAJOR as i32, PJRT_API_MINOR as i32);

/// Absolute path of the header the bindings were generated from (for diagnostics).
pub const HEADER_PATH: &str = env!("PJRT_SYS_HEADER_PATH");

/// A PJRT struct with a `struct_size` field and a matching `<Name>_STRUCT_SIZE` constant.
///
/// Implemented (by `build.rs`) for every such struct in the header.
pub trait PjrtArgs: Default {
    /// The header's `<Name>_STRUCT_SIZE`: offset of the last field plus its size.
    const STRUCT_SIZE: usize;
    /// All-zero struct (null pointers, zero counts) with `struct_size` set.
    fn new() -> Self;
}

include!(concat!(env!("OUT_DIR"), "/pjrt_args_impls.rs"));

/// Signature of the `GetPjrtApi` symbol every PJRT plugin exports.
pub type GetPjrtApiFn = unsafe extern "C" fn() -> *const PJRT_Api;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_version_is_the_pinned_one() {
        assert_eq!(HEADER_API_VERSION.0, 0);
        assert!(HEADER_API_VERSION.1 >= 81);
    }

    #[test]
    fn struct_sizes_are_unpadded_prefix_sizes() {
        // struct_size + extension_start + const PJRT_Error* + PJRT_Error_Code (4 bytes).
        assert_eq!(PJRT_Error_GetCode_Args_STRUCT_SIZE as usize, 28);
        assert_eq!(std::mem::size_of::<PJRT_Error_GetCode_Args>(), 32);
        // The 0.54 header's 72-byte args are what the plugin rejects; 0.81 has 88.
        assert_eq!(PJRT_Client_Create_Args_STRUCT_SIZE as usize, 88);
        assert_eq!(PJRT_Buffer_Type_F32, 11);
        let args = PJRT_Client_Create_Args::new();
        assert_eq!(args.struct_size, 88);
        assert!(args.client.is_null());
        assert_eq!(
            <PJRT_Api as PjrtArgs>::STRUCT_SIZE,
            PJRT_Api_STRUCT_SIZE as usize
        );
        assert_eq!(PJRT_Buffer_Type_BF16, 13);
    }
}
