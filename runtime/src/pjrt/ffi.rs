//! The XLA FFI: registering host kernels with a plugin, and the slice of the XLA FFI C ABI
//! (`xla/ffi/api/c_api.h`) a handler reads.
//!
//! Two ABIs meet here:
//! - **PJRT's FFI extension** (`xla/pjrt/c/pjrt_c_api_ffi_extension.h`, extension version 2+):
//!   an entry of type `PJRT_Extension_Type_FFI` in `PJRT_Api.extension_start`'s list, whose
//!   fourth word is `register_handler`. Its argument struct is 52 bytes: `struct_size`,
//!   `target_name` + size, `handler`, `platform_name` + size, `traits` (u32).
//! - **XLA's FFI handler ABI**: XLA calls `XLA_FFI_Error* handler(XLA_FFI_CallFrame*)`. A call
//!   frame holds the `XLA_FFI_Api` (its function table starts with `Error_Create`), the stage,
//!   and three lists (args, rets, attrs). Buffers are `{struct_size, extension_start, dtype,
//!   data, rank, dims}`; scalar attributes `{dtype, value*}`, sorted by name.
//!   On registration XLA calls the handler once with a *metadata* extension in
//!   `extension_start` (type 1) and no arguments; the handler writes the handler API version it
//!   was built for (0.1 here) and returns. The metadata struct's layout changed between XLA
//!   releases (0.1 has an `extension_start` field before `api_version`, later ones do not); the
//!   two are told apart by `struct_size` (44 vs 36+).
//!
//! Every layout here was checked against the serving plugin (`lammps-jax-pjrt-cpu 0.11.2`):
//! `register_handler` accepts a handler that answers 0.1, and `runtime::kernels`' custom calls
//! run through it (tests/rpa_proptest.rs and tests/engine_vs_dense.rs run them on the plugin;
//! `perf` shows their work items on XLA's `tf_XLAEigen` threads, so `ThreadPool_Schedule` is
//! found at the offset below).

use std::ffi::{c_char, c_void};
use std::mem::offset_of;

use pjrt_sys as sys;

use super::api::Api;
use super::error::{PjrtError, Result};

/// `XLA_FFI_Handler`: what XLA calls for a custom call target.
pub type Handler = unsafe extern "C" fn(*mut CallFrame) -> *mut XlaError;

/// Opaque `XLA_FFI_Error`.
#[repr(C)]
pub struct XlaError {
    _private: [u8; 0],
}

#[repr(C)]
struct RegisterHandlerArgs {
    struct_size: usize,
    target_name: *const c_char,
    target_name_size: usize,
    handler: *mut c_void,
    platform_name: *const c_char,
    platform_name_size: usize,
    traits: u32,
}

#[repr(C)]
struct FfiExtension {
    base: sys::PJRT_Extension_Base,
    type_id_register: *const c_void,
    user_data_add: *const c_void,
    register_handler:
        Option<unsafe extern "C" fn(*mut RegisterHandlerArgs) -> *mut sys::PJRT_Error>,
}

impl Api {
    /// Registers `handler` as the typed-FFI custom call target `target` on `platform`
    /// (`"Host"` for XLA CPU). Fails when the plugin has no FFI extension, when its extension
    /// predates `register_handler`, or when XLA refuses the handler's API version.
    pub fn register_ffi_handler(
        &self,
        target: &str,
        platform: &str,
        handler: Handler,
    ) -> Result<()> {
        let ext = self.ffi_extension()?;
        // SAFETY: `ffi_extension` checked that the struct is large enough to hold the field.
        let register = unsafe { (*ext).register_handler }
            .ok_or(PjrtError::Unimplemented("PJRT_FFI_Register_Handler"))?;
        let mut args = RegisterHandlerArgs {
            struct_size: offset_of!(RegisterHandlerArgs, traits) + 4,
            target_name: target.as_ptr().cast(),
            target_name_size: target.len(),
            handler: handler as *mut c_void,
            platform_name: platform.as_ptr().cast(),
            platform_name_size: platform.len(),
            traits: 0,
        };
        // SAFETY: `args` is fully initialized and its strings outlive the call (the plugin
        // copies them).
        let err = unsafe { register(&mut args) };
        self.check("PJRT_FFI_Register_Handler", err)
    }

    fn ffi_extension(&self) -> Result<*const FfiExtension> {
        let mut ext = self.extension_start();
        while !ext.is_null() {
            // SAFETY: extensions form a null-terminated list of `PJRT_Extension_Base`-prefixed
            // structs owned by the plugin for the life of the process.
            let base = unsafe { &*ext };
            if base.type_ == sys::PJRT_Extension_Type_FFI {
                let needed = offset_of!(FfiExtension, register_handler) + 8;
                if base.struct_size < needed {
                    return Err(PjrtError::Unimplemented("PJRT_FFI_Register_Handler"));
                }
                return Ok(ext.cast());
            }
            ext = base.next.cast_const();
        }
        Err(PjrtError::Unimplemented("the PJRT FFI extension"))
    }
}

/// `XLA_FFI_Api_Version`.
#[repr(C)]
struct ApiVersion {
    struct_size: usize,
    extension_start: *mut c_void,
    major: i32,
    minor: i32,
}

/// The prefix of `XLA_FFI_Api` up to `Error_Create`.
#[repr(C)]
pub struct XlaApi {
    struct_size: usize,
    extension_start: *mut c_void,
    api_version: ApiVersion,
    internal_api: *const c_void,
    error_create: Option<unsafe extern "C" fn(*mut ErrorCreateArgs) -> *mut XlaError>,
}

#[repr(C)]
struct ErrorCreateArgs {
    struct_size: usize,
    extension_start: *mut c_void,
    message: *const c_char,
    errc: i32,
}

/// `XLA_FFI_Extension_Base` (0.1) / `XLA_FFI_InternalExtension`.
#[repr(C)]
struct ExtensionBase {
    struct_size: usize,
    ty: i32,
    next: *mut ExtensionBase,
}

#[repr(C)]
struct MetadataExtension {
    base: ExtensionBase,
    metadata: *mut u8,
}

#[repr(C)]
struct List {
    struct_size: usize,
    extension_start: *mut c_void,
    size: i64,
    types: *const i32,
    items: *const *mut c_void,
}

#[repr(C)]
struct AttrList {
    struct_size: usize,
    extension_start: *mut c_void,
    size: i64,
    types: *const i32,
    names: *const *const ByteSpan,
    attrs: *const *const c_void,
}

#[repr(C)]
struct ByteSpan {
    ptr: *const u8,
    len: usize,
}

#[repr(C)]
struct Scalar {
    dtype: i32,
    value: *const c_void,
}

#[repr(C)]
struct RawBuffer {
    struct_size: usize,
    extension_start: *mut c_void,
    dtype: i32,
    data: *mut c_void,
    rank: i64,
    dims: *const i64,
}

/// `XLA_FFI_CallFrame`, up to `attrs`.
#[repr(C)]
pub struct CallFrame {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    api: *const XlaApi,
    ctx: *mut c_void,
    stage: i32,
    args: List,
    rets: List,
    attrs: AttrList,
}

const METADATA_EXTENSION: i32 = 1;
const ARG_BUFFER: i32 = 1;
const STAGE_EXECUTE: i32 = 3;
const ATTR_SCALAR: i32 = 3;
const ERRC_INVALID_ARGUMENT: i32 = 3;
const ERRC_INTERNAL: i32 = 13;

/// `XLA_FFI_DataType` values this crate reads.
pub mod dtype {
    pub const S8: i32 = 2;
    pub const S32: i32 = 4;
    pub const U16: i32 = 7;
    pub const S64: i32 = 5;
    pub const F32: i32 = 11;
    pub const BF16: i32 = 16;
}

/// One buffer argument or result, as the call frame describes it.
#[derive(Clone, Copy, Debug)]
pub struct BufferRef<'a> {
    pub dtype: i32,
    pub data: *mut c_void,
    pub dims: &'a [i64],
}

impl BufferRef<'_> {
    pub fn elements(&self) -> usize {
        self.dims.iter().map(|&d| d.max(0) as usize).product()
    }
}

/// A scalar attribute's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrValue {
    I32(i32),
    I64(i64),
    F32(f32),
}

/// What a handler sees of one call. Built by [`CallFrame::decode`].
pub struct Call<'a> {
    pub args: Vec<BufferRef<'a>>,
    pub rets: Vec<BufferRef<'a>>,
    pub attrs: Vec<(&'a str, AttrValue)>,
}

impl Call<'_> {
    /// The scalar attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<AttrValue> {
        self.attrs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// What a handler should do with a call frame.
pub enum Stage<'a> {
    /// XLA asked for the handler's API version (answered already): return null.
    Metadata,
    /// A stage this crate's handlers do nothing in (instantiate, prepare, initialize).
    Skip,
    /// Run the kernel.
    Execute(Call<'a>),
}

impl CallFrame {
    /// Answers a metadata query, or decodes the call's buffers and attributes.
    ///
    /// # Safety
    /// `frame` must be the pointer XLA passed to the handler, valid for `'a`.
    pub unsafe fn decode<'a>(frame: *mut CallFrame) -> std::result::Result<Stage<'a>, String> {
        // SAFETY: the caller passes XLA's frame.
        let f = unsafe { &*frame };
        if !f.extension_start.is_null() {
            // SAFETY: a non-null extension list starts with an extension base.
            let ext = unsafe { &*f.extension_start };
            if ext.ty == METADATA_EXTENSION {
                // SAFETY: a metadata extension holds a pointer to the metadata struct.
                let meta = unsafe { (*f.extension_start.cast::<MetadataExtension>()).metadata };
                // SAFETY: `meta` points to XLA's metadata struct, whose first word is its size.
                unsafe { answer_metadata(meta) }?;
                return Ok(Stage::Metadata);
            }
        }
        if f.stage != STAGE_EXECUTE {
            return Ok(Stage::Skip);
        }
        // SAFETY: XLA's lists hold `size` entries of the declared types.
        let args = unsafe { buffers(&f.args) }?;
        // SAFETY: as above.
        let rets = unsafe { buffers(&f.rets) }?;
        // SAFETY: as above.
        let attrs = unsafe { scalar_attrs(&f.attrs) }?;
        Ok(Stage::Execute(Call { args, rets, attrs }))
    }

    /// An `XLA_FFI_Error` carrying `message`, for the handler to return.
    ///
    /// # Safety
    /// `frame` must be the pointer XLA passed to the handler.
    pub unsafe fn error(frame: *mut CallFrame, message: &str, internal: bool) -> *mut XlaError {
        // SAFETY: the caller passes XLA's frame, whose api pointer is valid.
        let create = unsafe { (*(*frame).api).error_create };
        let Some(create) = create else {
            return std::ptr::null_mut();
        };
        let text = std::ffi::CString::new(message.replace('\0', " ")).unwrap_or_default();
        let mut args = ErrorCreateArgs {
            struct_size: offset_of!(ErrorCreateArgs, errc) + 4,
            extension_start: std::ptr::null_mut(),
            message: text.as_ptr(),
            errc: if internal {
                ERRC_INTERNAL
            } else {
                ERRC_INVALID_ARGUMENT
            },
        };
        // SAFETY: `args` is valid; XLA copies the message.
        unsafe { create(&mut args) }
    }
}

/// `XLA_FFI_Task`: what `XLA_FFI_ThreadPool_Schedule` runs.
pub type Task = unsafe extern "C" fn(*mut c_void);

#[repr(C)]
struct ScheduleArgs {
    struct_size: usize,
    extension_start: *mut c_void,
    ctx: *mut c_void,
    task: Task,
    data: *mut c_void,
}

/// Byte offset of `XLA_FFI_ThreadPool_Schedule` in `XLA_FFI_Api`: function index 11, counting
/// `Error_Create` as 0.
const SCHEDULE_OFFSET: usize = offset_of!(XlaApi, error_create) + 11 * 8;

impl CallFrame {
    /// Schedules `task(data)` on XLA's intra-op thread pool; false when the plugin has no pool
    /// (the task will not run).
    ///
    /// # Safety
    /// `frame` must be the pointer XLA passed to the running handler; `task` must accept `data`.
    pub unsafe fn schedule(frame: *mut CallFrame, task: Task, data: *mut c_void) -> bool {
        // SAFETY: the caller passes XLA's frame; the api table is at least `struct_size` bytes.
        unsafe {
            let api = (*frame).api;
            if (*api).struct_size < SCHEDULE_OFFSET + 8 {
                return false;
            }
            type Schedule = unsafe extern "C" fn(*mut ScheduleArgs) -> *mut XlaError;
            let slot = api
                .cast::<u8>()
                .add(SCHEDULE_OFFSET)
                .cast::<Option<Schedule>>();
            let Some(schedule) = *slot else {
                return false;
            };
            let mut args = ScheduleArgs {
                struct_size: offset_of!(ScheduleArgs, data) + 8,
                extension_start: std::ptr::null_mut(),
                ctx: (*frame).ctx,
                task,
                data,
            };
            // An error here means no pool; the message is not needed (and would leak).
            schedule(&mut args).is_null()
        }
    }
}

/// Writes handler API version 0.1 into XLA's metadata struct, in whichever layout it has.
///
/// # Safety
/// `meta` must point to XLA's `XLA_FFI_Metadata`.
unsafe fn answer_metadata(meta: *mut u8) -> std::result::Result<(), String> {
    // SAFETY: the first word of the struct is its size.
    let size = unsafe { *meta.cast::<usize>() };
    // 0.1: {struct_size, extension_start, api_version, traits}: 8 + 8 + 24 + 4 = 44.
    // Later: {struct_size, api_version, traits, state_type_id}: api_version at 8.
    let version_at = match size {
        44 => 16,
        s if s >= 36 => 8,
        s => return Err(format!("unknown XLA_FFI_Metadata layout ({s} bytes)")),
    };
    // SAFETY: `version_at` lies inside the struct for either layout; the version struct's
    // major and minor fields follow its struct_size and extension_start.
    unsafe {
        let v = meta.add(version_at).cast::<ApiVersion>();
        (*v).major = 0;
        (*v).minor = 1;
    }
    Ok(())
}

unsafe fn buffers<'a>(list: &List) -> std::result::Result<Vec<BufferRef<'a>>, String> {
    let n = list.size.max(0) as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: the list holds `n` types and items (caller's contract).
        let (ty, item) = unsafe { (*list.types.add(i), *list.items.add(i)) };
        if ty != ARG_BUFFER {
            return Err(format!("operand {i} is not a buffer (type {ty})"));
        }
        // SAFETY: items of type BUFFER point to `XLA_FFI_Buffer`s.
        let b = unsafe { &*item.cast::<RawBuffer>() };
        let dims = if b.rank <= 0 {
            &[][..]
        } else {
            // SAFETY: `dims` holds `rank` entries.
            unsafe { std::slice::from_raw_parts(b.dims, b.rank as usize) }
        };
        out.push(BufferRef {
            dtype: b.dtype,
            data: b.data,
            dims,
        });
    }
    Ok(out)
}

unsafe fn scalar_attrs<'a>(
    list: &AttrList,
) -> std::result::Result<Vec<(&'a str, AttrValue)>, String> {
    let n = list.size.max(0) as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: the list holds `n` types, names and attributes (caller's contract).
        let (ty, name, attr) =
            unsafe { (*list.types.add(i), *list.names.add(i), *list.attrs.add(i)) };
        // SAFETY: names are byte spans that live as long as the call.
        let name = unsafe { std::slice::from_raw_parts((*name).ptr, (*name).len) };
        let name = std::str::from_utf8(name).map_err(|_| "attribute name is not UTF-8")?;
        if ty != ATTR_SCALAR {
            return Err(format!("attribute {name} is not a scalar"));
        }
        // SAFETY: scalar attributes point to `XLA_FFI_Scalar`, whose value has its dtype.
        let value = unsafe {
            let s = &*attr.cast::<Scalar>();
            match s.dtype {
                dtype::S32 => AttrValue::I32(*s.value.cast::<i32>()),
                dtype::S64 => AttrValue::I64(*s.value.cast::<i64>()),
                dtype::F32 => AttrValue::F32(*s.value.cast::<f32>()),
                d => return Err(format!("attribute {name} has unsupported dtype {d}")),
            }
        };
        out.push((name, value));
    }
    Ok(out)
}
