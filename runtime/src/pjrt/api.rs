//! Loading a PJRT plugin and calling into its function table.

use std::collections::HashMap;
use std::ffi::c_char;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};

use pjrt_sys::{self as sys, PjrtArgs};

use super::error::{ErrorCode, PjrtError, Result};

pub use crate::cache::default_plugin_path;

/// A loaded PJRT plugin: the shared library and its `PJRT_Api` function table.
///
/// Obtained with [`Api::load`], which hands out one shared instance per plugin file for the
/// whole process (plugins are initialized once and never unloaded: XLA plugins keep global
/// state such as thread pools and flag registries that do not survive `dlclose`). Every
/// client, buffer and executable holds an `Arc<Api>`, so the library outlives them all.
///
/// # Version rule
/// The plugin's API major version must equal the header's ([`sys::HEADER_API_VERSION`]) and
/// its minor version must be at least the header's. A newer minor is fine: the C API keeps
/// ABI compatibility within a major version, and plugins use the `struct_size` we pass to see
/// which fields we know. An older minor is refused because it could silently ignore argument
/// fields this wrapper relies on (e.g. `non_donatable_input_indices`). Independently, every
/// function-table access is bounds-checked against the plugin's `PJRT_Api.struct_size`.
pub struct Api {
    table: NonNull<sys::PJRT_Api>,
    /// `PJRT_Api.struct_size` as reported by the plugin.
    table_size: usize,
    version: (i32, i32),
    path: PathBuf,
    /// Whether kernelgen's host kernels ([`crate::kernels`]) were registered, or why not.
    host_kernels: std::result::Result<(), String>,
    /// Held only to keep the code mapped; never read.
    _library: libloading::Library,
}

// SAFETY: the function table is immutable after `GetPjrtApi` returns, and the PJRT C API
// requires its functions to be callable from any thread.
unsafe impl Send for Api {}
// SAFETY: as above; `&Api` exposes no interior mutability.
unsafe impl Sync for Api {}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

/// Plugins already loaded in this process, by canonical path.
fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Api>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Arc<Api>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl Api {
    /// Loads the plugin at `path`, checks its API version and initializes it.
    ///
    /// Loading the same file again returns the same `Arc` (see the type docs).
    pub fn load(path: &Path) -> Result<Arc<Api>> {
        let load_err = |message: String| PjrtError::Load {
            path: path.to_path_buf(),
            message,
        };
        let canonical = path.canonicalize().map_err(|e| load_err(e.to_string()))?;
        // Held across loading so concurrent first loads initialize the plugin only once.
        let mut loaded = registry()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(api) = loaded.get(&canonical) {
            return Ok(Arc::clone(api));
        }
        prepare_libtpu_env(&canonical);
        let api = Arc::new(Self::load_uncached(&canonical)?);
        loaded.insert(canonical, Arc::clone(&api));
        Ok(api)
    }

    /// [`Api::load`] on [`default_plugin_path`].
    pub fn load_default() -> Result<Arc<Api>> {
        Self::load(&default_plugin_path())
    }

    fn load_uncached(path: &Path) -> Result<Api> {
        let load_err = |message: String| PjrtError::Load {
            path: path.to_path_buf(),
            message,
        };
        let library = open_library(path).map_err(|e| load_err(e.to_string()))?;
        // SAFETY: `GetPjrtApi` is declared by the PJRT plugin ABI as
        // `const PJRT_Api* GetPjrtApi(void)`; the symbol type matches that signature.
        let get_api: libloading::Symbol<'_, sys::GetPjrtApiFn> =
            unsafe { library.get(b"GetPjrtApi\0") }
                .map_err(|e| load_err(format!("not a PJRT plugin (no GetPjrtApi symbol): {e}")))?;
        // SAFETY: calling the plugin's entry point; it takes no arguments and returns a
        // pointer to a static table (or null on failure, handled below).
        let raw = unsafe { get_api() };
        let table = NonNull::new(raw.cast_mut())
            .ok_or_else(|| load_err("GetPjrtApi returned null".into()))?;

        // Read only the prefix every PJRT version has before trusting anything else.
        // SAFETY: `table` points to a `PJRT_Api`, whose first field is `struct_size` in every
        // version of the C API.
        let table_size = unsafe { (*table.as_ptr()).struct_size };
        let version_end =
            offset_of!(sys::PJRT_Api, pjrt_api_version) + size_of::<sys::PJRT_Api_Version>();
        if table_size < version_end {
            return Err(load_err(format!(
                "PJRT_Api.struct_size {table_size} is too small to hold a version"
            )));
        }
        // SAFETY: the plugin's table is at least `version_end` bytes (checked just above).
        let version = unsafe {
            let v = &(*table.as_ptr()).pjrt_api_version;
            (v.major_version, v.minor_version)
        };
        let required = sys::HEADER_API_VERSION;
        if version.0 != required.0 || version.1 < required.1 {
            return Err(PjrtError::VersionMismatch {
                path: path.to_path_buf(),
                plugin: version,
                required,
            });
        }

        let mut api = Api {
            table,
            table_size,
            version,
            path: path.to_path_buf(),
            host_kernels: Err("not registered yet".into()),
            _library: library,
        };
        api.check_required_functions()?;
        // Optional in the C API: some plugins leave the slot null.
        if let Ok(init) = pjrt_fn!(api, PJRT_Plugin_Initialize) {
            let mut args = sys::PJRT_Plugin_Initialize_Args::new();
            // SAFETY: `args` is a valid, fully initialized argument struct.
            unsafe { api.invoke("PJRT_Plugin_Initialize", init, &mut args) }?;
        }
        api.host_kernels = crate::kernels::register(&api).map_err(|e| e.to_string());
        Ok(api)
    }

    /// Refuses plugins missing a function whose absence would leave us unable to free
    /// objects or to wait for asynchronous work (waiting is what keeps host memory alive long
    /// enough). Functions used only on request are checked when called.
    fn check_required_functions(&self) -> Result<()> {
        let missing = |e: PjrtError| PjrtError::Load {
            path: self.path.clone(),
            message: e.to_string(),
        };
        pjrt_fn!(self, PJRT_Error_Destroy).map_err(missing)?;
        pjrt_fn!(self, PJRT_Error_Message).map_err(missing)?;
        pjrt_fn!(self, PJRT_Event_Await).map_err(missing)?;
        pjrt_fn!(self, PJRT_Event_Destroy).map_err(missing)?;
        pjrt_fn!(self, PJRT_Client_Destroy).map_err(missing)?;
        pjrt_fn!(self, PJRT_Buffer_Destroy).map_err(missing)?;
        pjrt_fn!(self, PJRT_LoadedExecutable_Destroy).map_err(missing)?;
        pjrt_fn!(self, PJRT_Executable_Destroy).map_err(missing)?;
        Ok(())
    }

    /// The plugin's `(major, minor)` C API version.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// Whether programs may call kernelgen's host kernels (XLA FFI custom calls on the
    /// plugin's host platform); the error says why not (no FFI extension, handler refused).
    pub fn host_kernels(&self) -> std::result::Result<(), &str> {
        self.host_kernels
            .as_ref()
            .map(|_| ())
            .map_err(String::as_str)
    }

    /// The head of the plugin's extension list (null when it has none).
    pub(crate) fn extension_start(&self) -> *const sys::PJRT_Extension_Base {
        // SAFETY: `extension_start` precedes the version in every C API version, and the table
        // is a static owned by the loaded library.
        unsafe { self.table.as_ref() }.extension_start
    }

    /// Path the plugin was loaded from (canonicalized).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Plugin attributes (`xla_version`, `stablehlo_current_version`, ...) rendered as text.
    pub fn attributes(&self) -> Result<Vec<(String, String)>> {
        let f = pjrt_fn!(self, PJRT_Plugin_Attributes)?;
        let mut args = sys::PJRT_Plugin_Attributes_Args::new();
        // SAFETY: `args` is valid; the plugin fills the out fields.
        unsafe { self.invoke("PJRT_Plugin_Attributes", f, &mut args) }?;
        if args.attributes.is_null() || args.num_attributes == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: the plugin returned `num_attributes` contiguous values that live as long as
        // the process.
        let values = unsafe { std::slice::from_raw_parts(args.attributes, args.num_attributes) };
        Ok(values.iter().map(named_value_to_strings).collect())
    }

    /// Looks up a function-table entry, refusing slots beyond the plugin's `struct_size`.
    /// Use through `pjrt_fn!`, which supplies the offset and name.
    pub(crate) fn function<F: Copy>(
        &self,
        offset: usize,
        name: &'static str,
        get: impl FnOnce(&sys::PJRT_Api) -> Option<F>,
    ) -> Result<F> {
        if offset + size_of::<Option<F>>() > self.table_size {
            return Err(PjrtError::Unimplemented(name));
        }
        // SAFETY: the slot lies inside the plugin's table (checked above), and the table is a
        // static owned by the loaded library, which `self` keeps mapped.
        let table = unsafe { self.table.as_ref() };
        get(table).ok_or(PjrtError::Unimplemented(name))
    }

    /// Calls `f(args)` and converts a returned `PJRT_Error` into [`PjrtError::Plugin`].
    ///
    /// # Safety
    /// `f` must be the table entry named `name`, and `args` must satisfy that function's
    /// contract: `struct_size` set, every input pointer valid for the duration of the call.
    pub(crate) unsafe fn invoke<A>(
        &self,
        name: &'static str,
        f: unsafe extern "C" fn(*mut A) -> *mut sys::PJRT_Error,
        args: &mut A,
    ) -> Result<()> {
        // SAFETY: the caller guarantees `f` and `args` match (see the function contract).
        let err = unsafe { f(args) };
        self.check(name, err)
    }

    /// Turns a possibly-null `PJRT_Error*` (ownership passed to us) into a `Result`, freeing it.
    pub(crate) fn check(&self, call: &'static str, err: *mut sys::PJRT_Error) -> Result<()> {
        if err.is_null() {
            return Ok(());
        }
        let message = self.error_message(err);
        let code = self.error_code(err);
        self.destroy_error(err);
        Err(PjrtError::Plugin {
            call,
            code,
            message,
        })
    }

    fn error_message(&self, err: *mut sys::PJRT_Error) -> String {
        let Ok(f) = pjrt_fn!(self, PJRT_Error_Message) else {
            return "<plugin has no PJRT_Error_Message>".into();
        };
        let mut args = sys::PJRT_Error_Message_Args::new();
        args.error = err;
        // SAFETY: `err` is a live error object owned by us; the function only fills the out
        // fields and returns nothing.
        unsafe { f(&mut args) };
        // SAFETY: `message`/`message_size` describe bytes owned by `err`, which is still alive.
        unsafe { lossy_string(args.message, args.message_size) }
    }

    fn error_code(&self, err: *mut sys::PJRT_Error) -> ErrorCode {
        let Ok(f) = pjrt_fn!(self, PJRT_Error_GetCode) else {
            return ErrorCode::Unknown;
        };
        let mut args = sys::PJRT_Error_GetCode_Args::new();
        args.error = err;
        // SAFETY: `err` is a live error object; `args` is valid.
        let nested = unsafe { f(&mut args) };
        if nested.is_null() {
            ErrorCode::from_raw(args.code)
        } else {
            // Failing to read the code of an error: free that one too, report Unknown.
            self.destroy_error(nested);
            ErrorCode::Unknown
        }
    }

    fn destroy_error(&self, err: *mut sys::PJRT_Error) {
        if let Ok(f) = pjrt_fn!(self, PJRT_Error_Destroy) {
            let mut args = sys::PJRT_Error_Destroy_Args::new();
            args.error = err;
            // SAFETY: we own `err` and free it exactly once.
            unsafe { f(&mut args) };
        }
    }
}

#[cfg(unix)]
fn open_library(path: &Path) -> std::result::Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // RTLD_NOW: report unresolved symbols here, not as a crash at first use.
    // SAFETY: loading a library runs its initializers; PJRT plugins are ordinary shared
    // objects whose initializers only set up their own global state.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map(Into::into)
}

#[cfg(not(unix))]
fn open_library(path: &Path) -> std::result::Result<libloading::Library, libloading::Error> {
    // SAFETY: as on unix, library initializers only set up the plugin's own state.
    unsafe { libloading::Library::new(path) }
}

/// Copies `len` bytes at `ptr` into a `String` (lossy UTF-8). Null yields "".
///
/// # Safety
/// `ptr` must be null or valid for reads of `len` bytes.
pub(crate) unsafe fn lossy_string(ptr: *const c_char, len: usize) -> String {
    if ptr.is_null() || len == 0 {
        return String::new();
    }
    // SAFETY: guaranteed by the caller.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    String::from_utf8_lossy(bytes).into_owned()
}

fn named_value_to_strings(v: &sys::PJRT_NamedValue) -> (String, String) {
    // SAFETY: `name`/`name_size` describe the attribute name owned by the plugin.
    let name = unsafe { lossy_string(v.name, v.name_size) };
    // SAFETY: the union member read is the one `type_` says is active; array and string
    // members point at `value_size` elements owned by the plugin.
    let value = unsafe {
        let u = &v.__bindgen_anon_1;
        match v.type_ {
            sys::PJRT_NamedValue_kString => lossy_string(u.string_value, v.value_size),
            sys::PJRT_NamedValue_kInt64 => u.int64_value.to_string(),
            sys::PJRT_NamedValue_kInt64List if !u.int64_array_value.is_null() => {
                format!(
                    "{:?}",
                    std::slice::from_raw_parts(u.int64_array_value, v.value_size)
                )
            }
            sys::PJRT_NamedValue_kInt64List => "[]".into(),
            sys::PJRT_NamedValue_kFloat => u.float_value.to_string(),
            sys::PJRT_NamedValue_kBool => u.bool_value.to_string(),
            other => format!("<value of unknown type {other}>"),
        }
    };
    (name, value)
}

/// libtpu asks the cloud metadata server for its topology before anything else, retrying for
/// minutes when there is none. On a machine with no TPU device nodes, skip that query (unless
/// the user set `TPU_SKIP_MDS_QUERY` either way) so client creation fails at once with libtpu's
/// own message ("No jellyfish device found") instead of appearing to hang. TPU VMs expose
/// `/dev/accel*` (v4 and earlier) or `/dev/vfio/<n>` (v5e and later) and are left alone.
fn prepare_libtpu_env(plugin: &Path) {
    let is_libtpu = plugin
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libtpu"));
    if !is_libtpu || std::env::var_os("TPU_SKIP_MDS_QUERY").is_some() {
        return;
    }
    let has_tpu = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(prefix) && n != "vfio")
            })
        })
    };
    if !has_tpu("/dev", "accel") && !has_tpu("/dev/vfio", "") {
        // SAFETY (set_var): called while loading a plugin, before the plugin starts threads that
        // could read the environment concurrently.
        std::env::set_var("TPU_SKIP_MDS_QUERY", "1");
    }
}
