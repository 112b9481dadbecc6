//! `PJRT_Client`: devices, host-to-device transfers and compilation.

use std::ffi::{c_char, CString};
use std::ptr::NonNull;
use std::sync::Arc;

use pjrt_sys::{self as sys, PjrtArgs};

use super::api::{lossy_string, Api};
use super::buffer::Buffer;
use super::compile_options::{CompileOptions, OptionValue};
use super::element::{Element, ElementType};
use super::error::{PjrtError, Result};
use super::event::Event;
use super::executable::Executable;

/// The owned client; shared by [`Client`] handles, buffers and executables.
pub(crate) struct ClientInner {
    pub(crate) api: Arc<Api>,
    pub(crate) raw: NonNull<sys::PJRT_Client>,
    /// The addressable devices, in the plugin's order (at least one); owned by the client.
    devices: Vec<NonNull<sys::PJRT_Device>>,
}

// SAFETY: PJRT clients are thread-safe (the C API allows concurrent calls on one client);
// the raw pointers are only handed back to the plugin.
unsafe impl Send for ClientInner {}
// SAFETY: as above; `ClientInner` has no interior mutability on the Rust side.
unsafe impl Sync for ClientInner {}

impl Drop for ClientInner {
    fn drop(&mut self) {
        let mut args = sys::PJRT_Client_Destroy_Args::new();
        args.client = self.raw.as_ptr();
        if let Ok(f) = pjrt_fn!(self.api, PJRT_Client_Destroy) {
            // SAFETY: buffers and executables hold `Arc<ClientInner>`, so none of them is
            // alive any more; we destroy the client exactly once.
            let err = unsafe { f(&mut args) };
            let _ = self.api.check("PJRT_Client_Destroy", err);
        }
    }
}

/// A PJRT client: a handle on one plugin's devices. Cloning is cheap and shares the client.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("plugin", &self.inner.api.path())
            .field("addressable_devices", &self.inner.devices.len())
            .finish()
    }
}

impl Client {
    /// Creates a client with the plugin's default options.
    ///
    /// Failure (e.g. a TPU plugin on a machine without TPUs) comes back as
    /// [`PjrtError::Plugin`] carrying the plugin's message.
    pub fn new(api: Arc<Api>) -> Result<Client> {
        Self::with_options(api, &[])
    }

    /// [`Client::new`] on the default plugin ([`super::default_plugin_path`]).
    pub fn from_default_plugin() -> Result<Client> {
        Self::new(Api::load_default()?)
    }

    /// Creates a client with plugin-specific create options, e.g. the CPU plugin's
    /// `("cpu_device_count", OptionValue::Int(4))`. `Double` is passed as a 32-bit float
    /// (the only float `PJRT_NamedValue` has).
    ///
    /// Options are forwarded verbatim and each plugin decides what they mean. Beware: the
    /// XLA CPU plugin ignores unknown names, but a known name with the wrong type (e.g.
    /// `cpu_device_count` as a string or bool) makes it throw a C++ exception across the C
    /// API, which no Rust code can catch: the process aborts.
    pub fn with_options(api: Arc<Api>, options: &[(&str, OptionValue)]) -> Result<Client> {
        // Keeps the strings referenced by `named` alive until the call returns.
        let strings: Vec<CString> = options
            .iter()
            .filter_map(|(_, v)| match v {
                OptionValue::String(s) => Some(s.as_str()),
                _ => None,
            })
            .map(|s| {
                CString::new(s).map_err(|_| invalid(format!("option value {s:?} contains NUL")))
            })
            .collect::<Result<_>>()?;
        let mut next_string = strings.iter();
        let named: Vec<sys::PJRT_NamedValue> = options
            .iter()
            .map(|(name, value)| {
                let mut nv = sys::PJRT_NamedValue::new();
                nv.name = name.as_ptr().cast::<c_char>();
                nv.name_size = name.len();
                nv.value_size = 1;
                match value {
                    OptionValue::String(_) => {
                        let s = next_string.next().expect("one CString per string option");
                        nv.type_ = sys::PJRT_NamedValue_kString;
                        nv.__bindgen_anon_1.string_value = s.as_ptr();
                        nv.value_size = s.as_bytes().len();
                    }
                    OptionValue::Bool(b) => {
                        nv.type_ = sys::PJRT_NamedValue_kBool;
                        nv.__bindgen_anon_1.bool_value = *b;
                    }
                    OptionValue::Int(i) => {
                        nv.type_ = sys::PJRT_NamedValue_kInt64;
                        nv.__bindgen_anon_1.int64_value = *i;
                    }
                    OptionValue::Double(d) => {
                        nv.type_ = sys::PJRT_NamedValue_kFloat;
                        nv.__bindgen_anon_1.float_value = *d as f32;
                    }
                }
                nv
            })
            .collect();

        let mut args = sys::PJRT_Client_Create_Args::new();
        args.create_options = named.as_ptr();
        args.num_options = named.len();
        // SAFETY: `named` and the strings it points into outlive the call; no callbacks set.
        unsafe { pjrt_call!(api, PJRT_Client_Create, &mut args) }?;
        let raw = NonNull::new(args.client)
            .ok_or_else(|| invalid("PJRT_Client_Create returned no client".into()))?;

        let mut dev_args = sys::PJRT_Client_AddressableDevices_Args::new();
        dev_args.client = raw.as_ptr();
        // Build the owner first so the client is destroyed if anything below fails.
        let mut inner = ClientInner {
            api,
            raw,
            devices: Vec::new(),
        };
        // SAFETY: `raw` is the live client just created.
        unsafe { pjrt_call!(inner.api, PJRT_Client_AddressableDevices, &mut dev_args) }?;
        if dev_args.num_addressable_devices == 0 || dev_args.addressable_devices.is_null() {
            return Err(invalid("PJRT client has no addressable devices".into()));
        }
        // SAFETY: the plugin returned a non-null array of `num_addressable_devices >= 1`
        // device pointers owned by the client.
        let devices = unsafe {
            std::slice::from_raw_parts(
                dev_args.addressable_devices,
                dev_args.num_addressable_devices,
            )
        };
        inner.devices = devices
            .iter()
            .map(|&d| NonNull::new(d).ok_or_else(|| invalid("null addressable device".into())))
            .collect::<Result<_>>()?;
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    pub(crate) fn api(&self) -> &Api {
        &self.inner.api
    }

    /// The loaded plugin this client belongs to.
    pub fn plugin(&self) -> &Arc<Api> {
        &self.inner.api
    }

    /// Platform name, e.g. `"cpu"`.
    pub fn platform_name(&self) -> Result<String> {
        let mut args = sys::PJRT_Client_PlatformName_Args::new();
        args.client = self.inner.raw.as_ptr();
        // SAFETY: live client; out fields only.
        unsafe { pjrt_call!(self.api(), PJRT_Client_PlatformName, &mut args) }?;
        // SAFETY: the string is owned by the client, which is alive.
        Ok(unsafe { lossy_string(args.platform_name, args.platform_name_size) })
    }

    /// Platform version text (plugin-specific).
    pub fn platform_version(&self) -> Result<String> {
        let mut args = sys::PJRT_Client_PlatformVersion_Args::new();
        args.client = self.inner.raw.as_ptr();
        // SAFETY: live client; out fields only.
        unsafe { pjrt_call!(self.api(), PJRT_Client_PlatformVersion, &mut args) }?;
        // SAFETY: the string is owned by the client, which is alive.
        Ok(unsafe { lossy_string(args.platform_version, args.platform_version_size) })
    }

    /// Number of devices this client can address.
    pub fn addressable_device_count(&self) -> usize {
        self.inner.devices.len()
    }

    /// Compiles StableHLO MLIR text (pretty or generic form; entry point `func.func @main`).
    pub fn compile(&self, mlir_text: &str, options: &CompileOptions) -> Result<Executable> {
        const FORMAT: &str = "mlir";
        let compile_options = options.to_proto_bytes();
        let mut program = sys::PJRT_Program::new();
        // The C field is `char*` but for compilation the code is input only.
        program.code = mlir_text.as_ptr().cast::<c_char>().cast_mut();
        program.code_size = mlir_text.len();
        program.format = FORMAT.as_ptr().cast::<c_char>();
        program.format_size = FORMAT.len();

        let mut args = sys::PJRT_Client_Compile_Args::new();
        args.client = self.inner.raw.as_ptr();
        args.program = &program;
        args.compile_options = compile_options.as_ptr().cast::<c_char>();
        args.compile_options_size = compile_options.len();
        // SAFETY: `program`, the MLIR text and the options bytes outlive the call; the plugin
        // does not write through `program.code` when compiling.
        unsafe { pjrt_call!(self.api(), PJRT_Client_Compile, &mut args) }?;
        let raw = NonNull::new(args.executable)
            .ok_or_else(|| invalid("PJRT_Client_Compile returned no executable".into()))?;
        Executable::from_raw(self.inner.clone(), raw)
    }

    /// Loads a program serialized by [`Executable::serialize`] on a client of the same plugin
    /// build (`PJRT_Executable_DeserializeAndLoad`), with the compile options it was built with.
    pub fn deserialize(&self, serialized: &[u8]) -> Result<Executable> {
        let mut args = sys::PJRT_Executable_DeserializeAndLoad_Args::new();
        args.client = self.inner.raw.as_ptr();
        args.serialized_executable = serialized.as_ptr().cast::<c_char>();
        args.serialized_executable_size = serialized.len();
        // SAFETY: `serialized` outlives the call; the options override stays null.
        unsafe { pjrt_call!(self.api(), PJRT_Executable_DeserializeAndLoad, &mut args) }?;
        let raw = NonNull::new(args.loaded_executable).ok_or_else(|| {
            invalid("PJRT_Executable_DeserializeAndLoad returned no executable".into())
        })?;
        Executable::from_raw(self.inner.clone(), raw)
    }

    /// Copies `data` (row-major, shape `dims`) into a new buffer on device 0.
    ///
    /// Returns once the plugin no longer needs `data` (`kImmutableOnlyDuringCall` and the
    /// `done_with_host_buffer` event awaited). Errors if `data.len()` is not the product of
    /// `dims` or a dimension is negative.
    pub fn buffer_from_host<T: Element>(&self, data: &[T], dims: &[i64]) -> Result<Buffer> {
        self.buffer_from_host_on(0, data, dims)
    }

    /// The addressable device `index` (0..[`Client::addressable_device_count`]).
    fn device(&self, index: usize) -> Result<NonNull<sys::PJRT_Device>> {
        self.inner.devices.get(index).copied().ok_or_else(|| {
            invalid(format!(
                "device {index}: the client has {} addressable devices",
                self.inner.devices.len()
            ))
        })
    }

    /// [`Client::buffer_from_host`] onto addressable device `device` (one shard of a
    /// partitioned program's argument, for example).
    pub fn buffer_from_host_on<T: Element>(
        &self,
        device: usize,
        data: &[T],
        dims: &[i64],
    ) -> Result<Buffer> {
        let device = self.device(device)?;
        let expected = element_count(dims)?;
        if data.len() != expected {
            return Err(invalid(format!(
                "buffer_from_host: {} elements given for dims {dims:?} ({expected} elements)",
                data.len()
            )));
        }
        let mut args = sys::PJRT_Client_BufferFromHostBuffer_Args::new();
        args.client = self.inner.raw.as_ptr();
        args.data = data.as_ptr().cast();
        args.type_ = T::TYPE.to_raw();
        args.dims = dims.as_ptr();
        args.num_dims = dims.len();
        args.host_buffer_semantics = sys::PJRT_HostBufferSemantics_kImmutableOnlyDuringCall;
        args.device = device.as_ptr();
        // SAFETY: `data` holds exactly product(dims) elements of the declared type and is
        // borrowed for the whole function, including the wait for `done_with_host_buffer`.
        unsafe { pjrt_call!(self.api(), PJRT_Client_BufferFromHostBuffer, &mut args) }?;
        // Take ownership of both outputs before anything can fail, so neither leaks.
        let done = Event::from_raw(self.api(), args.done_with_host_buffer);
        let raw = NonNull::new(args.buffer)
            .ok_or_else(|| invalid("PJRT_Client_BufferFromHostBuffer returned no buffer".into()))?;
        let buffer = Buffer::from_raw(self.inner.clone(), raw)?;
        if let Some(done) = done {
            done.wait("PJRT_Client_BufferFromHostBuffer")?;
        }
        Ok(buffer)
    }
}

impl Client {
    /// A new buffer of `ty` and shape `dims` on device 0 whose contents are undefined (no host
    /// copy, no fill): for state the device program writes before reading, like a KV pool,
    /// whose kernels ignore every slot they have not written.
    pub fn uninitialized_buffer(&self, ty: ElementType, dims: &[i64]) -> Result<Buffer> {
        self.uninitialized_buffer_on(0, ty, dims)
    }

    /// [`Client::uninitialized_buffer`] on addressable device `device`.
    pub fn uninitialized_buffer_on(
        &self,
        device: usize,
        ty: ElementType,
        dims: &[i64],
    ) -> Result<Buffer> {
        let device = self.device(device)?;
        element_count(dims)?;
        let mut args = sys::PJRT_Client_CreateUninitializedBuffer_Args::new();
        args.client = self.inner.raw.as_ptr();
        args.shape_dims = dims.as_ptr();
        args.shape_num_dims = dims.len();
        args.shape_element_type = ty.to_raw();
        args.device = device.as_ptr();
        // SAFETY: `dims` outlives the call; a null layout asks for the default one.
        unsafe { pjrt_call!(self.api(), PJRT_Client_CreateUninitializedBuffer, &mut args) }?;
        let raw = NonNull::new(args.buffer).ok_or_else(|| {
            invalid("PJRT_Client_CreateUninitializedBuffer returned no buffer".into())
        })?;
        Buffer::from_raw(self.inner.clone(), raw)
    }
}

/// Product of `dims`, rejecting negative sizes and overflow.
pub(crate) fn element_count(dims: &[i64]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        let d =
            usize::try_from(d).map_err(|_| invalid(format!("negative dimension in {dims:?}")))?;
        acc.checked_mul(d)
            .ok_or_else(|| invalid(format!("element count of {dims:?} overflows")))
    })
}

pub(crate) fn invalid(message: String) -> PjrtError {
    PjrtError::InvalidArgument(message)
}
