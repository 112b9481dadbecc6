//! `PJRT_LoadedExecutable`: a compiled program, executed on device 0, or on each of its
//! devices when it was compiled as N partitions.

use std::ptr::NonNull;
use std::sync::Arc;

use pjrt_sys::{self as sys, PjrtArgs};

use super::api::Api;
use super::buffer::Buffer;
use super::client::{invalid, ClientInner};
use super::error::Result;
use super::event::Event;

/// One argument of [`Executable::execute`].
#[derive(Debug)]
pub enum Arg<'a> {
    /// Read-only input: stays valid and unchanged after the call. Listed in
    /// `non_donatable_input_indices`, so the plugin copies it if the program aliases it.
    Borrowed(&'a Buffer),
    /// Input handed over to the program: a parameter marked
    /// `tf.aliasing_output = N : i32` may reuse its memory for output `N` (in-place update).
    /// The buffer is consumed either way.
    Donated(Buffer),
}

impl<'a> From<&'a Buffer> for Arg<'a> {
    fn from(b: &'a Buffer) -> Self {
        Arg::Borrowed(b)
    }
}

impl From<Buffer> for Arg<'_> {
    fn from(b: Buffer) -> Self {
        Arg::Donated(b)
    }
}

impl Arg<'_> {
    fn buffer(&self) -> &Buffer {
        match self {
            Arg::Borrowed(b) => b,
            Arg::Donated(b) => b,
        }
    }
}

/// What the compiler planned for a program's memory on its device, in bytes (XLA's
/// `CompiledMemoryStats`): what a run needs beyond its arguments is `temp_bytes` plus the outputs
/// that do not alias an argument (`output_bytes - alias_bytes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompiledMemoryStats {
    pub generated_code_bytes: u64,
    pub argument_bytes: u64,
    pub output_bytes: u64,
    /// Output bytes that reuse a donated argument's memory.
    pub alias_bytes: u64,
    /// Scratch the program allocates while it runs.
    pub temp_bytes: u64,
    /// Scratch in host memory (for devices with a separate host space).
    pub host_temp_bytes: u64,
}

/// A compiled, loaded program. Destroyed on drop; keeps its client alive.
pub struct Executable {
    client: Arc<ClientInner>,
    raw: NonNull<sys::PJRT_LoadedExecutable>,
    num_outputs: usize,
}

// SAFETY: PJRT loaded executables may be executed concurrently from several threads; the
// Rust-side fields are immutable.
unsafe impl Send for Executable {}
// SAFETY: as above.
unsafe impl Sync for Executable {}

impl std::fmt::Debug for Executable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executable")
            .field("num_outputs", &self.num_outputs)
            .finish()
    }
}

impl Executable {
    /// Takes ownership of `raw` (destroyed on drop, even on error) and reads its output count.
    pub(crate) fn from_raw(
        client: Arc<ClientInner>,
        raw: NonNull<sys::PJRT_LoadedExecutable>,
    ) -> Result<Self> {
        let mut exe = Executable {
            client,
            raw,
            num_outputs: 0,
        };
        exe.num_outputs = exe.with_executable(|api, executable| {
            let mut num = sys::PJRT_Executable_NumOutputs_Args::new();
            num.executable = executable;
            // SAFETY: `executable` is live for this closure; out fields only.
            unsafe { pjrt_call!(api, PJRT_Executable_NumOutputs, &mut num) }?;
            Ok(num.num_outputs)
        })?;
        Ok(exe)
    }

    /// Runs `f` on the `PJRT_Executable` behind this loaded executable, destroyed afterwards.
    fn with_executable<T>(
        &self,
        f: impl FnOnce(&Api, *mut sys::PJRT_Executable) -> Result<T>,
    ) -> Result<T> {
        let api = &*self.client.api;
        let mut get = sys::PJRT_LoadedExecutable_GetExecutable_Args::new();
        get.loaded_executable = self.raw.as_ptr();
        // SAFETY: live loaded executable; the returned `PJRT_Executable` is ours to destroy.
        unsafe { pjrt_call!(api, PJRT_LoadedExecutable_GetExecutable, &mut get) }?;
        let result = f(api, get.executable);
        let mut destroy = sys::PJRT_Executable_Destroy_Args::new();
        destroy.executable = get.executable;
        // SAFETY: we own `get.executable` and free it exactly once, after its last use.
        let destroyed = unsafe { pjrt_call!(api, PJRT_Executable_Destroy, &mut destroy) };
        let result = result?;
        destroyed?;
        Ok(result)
    }

    /// The memory the compiler planned for the program (`PJRT_Executable_GetCompiledMemoryStats`).
    /// An error where the plugin does not report it.
    pub fn compiled_memory_stats(&self) -> Result<CompiledMemoryStats> {
        self.with_executable(|api, executable| {
            let mut a = sys::PJRT_Executable_GetCompiledMemoryStats_Args::new();
            a.executable = executable;
            // SAFETY: `executable` is live for this closure; out fields only.
            unsafe { pjrt_call!(api, PJRT_Executable_GetCompiledMemoryStats, &mut a) }?;
            let b = |v: i64| v.max(0) as u64;
            Ok(CompiledMemoryStats {
                generated_code_bytes: b(a.generated_code_size_in_bytes),
                argument_bytes: b(a.argument_size_in_bytes),
                output_bytes: b(a.output_size_in_bytes),
                alias_bytes: b(a.alias_size_in_bytes),
                temp_bytes: b(a.temp_size_in_bytes),
                host_temp_bytes: b(a.host_temp_size_in_bytes),
            })
        })
    }

    /// The plugin's serialization of this program (`PJRT_Executable_Serialize`): bytes that
    /// [`super::Client::deserialize`] turns back into an executable on a client of the same
    /// plugin build, without compiling. Not stable across plugin versions.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        self.with_executable(|api, executable| {
            let mut a = sys::PJRT_Executable_Serialize_Args::new();
            a.executable = executable;
            // SAFETY: `executable` is live for this closure; out fields only.
            unsafe { pjrt_call!(api, PJRT_Executable_Serialize, &mut a) }?;
            let bytes = if a.serialized_bytes.is_null() {
                Vec::new()
            } else {
                // SAFETY: the plugin guarantees `serialized_bytes_size` bytes at
                // `serialized_bytes`, alive until the deleter runs below.
                unsafe {
                    std::slice::from_raw_parts(
                        a.serialized_bytes.cast::<u8>(),
                        a.serialized_bytes_size,
                    )
                }
                .to_vec()
            };
            if let (Some(delete), false) = (
                a.serialized_executable_deleter,
                a.serialized_executable.is_null(),
            ) {
                // SAFETY: called once, on the object the plugin returned, after the copy.
                unsafe { delete(a.serialized_executable) };
            }
            if bytes.is_empty() {
                return Err(invalid(
                    "PJRT_Executable_Serialize returned no bytes".into(),
                ));
            }
            Ok(bytes)
        })
    }

    /// Number of outputs the program returns (tuple elements flattened).
    pub fn num_outputs(&self) -> usize {
        self.num_outputs
    }

    /// Runs the program on device 0 and waits for it to finish.
    ///
    /// [`Arg::Borrowed`] inputs remain usable afterwards; [`Arg::Donated`] inputs are
    /// destroyed after the run (their memory may now back an aliased output). On error,
    /// donated inputs are destroyed too.
    pub fn execute(&self, args: Vec<Arg<'_>>) -> Result<Vec<Buffer>> {
        let mut out = self.execute_partitioned(vec![args])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Runs a partitioned program (compiled with
    /// [`CompileOptions::with_partitions`](super::CompileOptions::with_partitions)) on its
    /// devices at once: `args[i]` holds partition i's arguments (each on device i, in the
    /// shard shapes the partitioner gave that device), and the result holds each partition's
    /// outputs. Waits for every device to finish. Borrowed and donated arguments behave as in
    /// [`Executable::execute`]; a position is donated on every device or on none.
    pub fn execute_partitioned(&self, args: Vec<Vec<Arg<'_>>>) -> Result<Vec<Vec<Buffer>>> {
        let api = &*self.client.api;
        let devices = args.len();
        let num_args = args.first().map_or(0, Vec::len);
        if devices == 0 || args.iter().any(|a| a.len() != num_args) {
            return Err(invalid(format!(
                "execute: one argument list per device, all of one length (got lengths {:?})",
                args.iter().map(Vec::len).collect::<Vec<_>>()
            )));
        }
        let inputs: Vec<Vec<*mut sys::PJRT_Buffer>> = args
            .iter()
            .map(|list| list.iter().map(|a| a.buffer().raw()).collect())
            .collect();
        let donated = |a: &Arg| matches!(a, Arg::Donated(_));
        if args
            .iter()
            .any(|l| l.iter().map(donated).ne(args[0].iter().map(donated)))
        {
            return Err(invalid(
                "execute: an argument position is donated on some devices only".into(),
            ));
        }
        let non_donatable: Vec<i64> = args[0]
            .iter()
            .enumerate()
            .filter(|(_, a)| !donated(a))
            .map(|(i, _)| i as i64)
            .collect();
        if args
            .iter()
            .flatten()
            .any(|a| !Arc::ptr_eq(a.buffer().client_inner(), &self.client))
        {
            return Err(invalid(
                "execute: argument buffer belongs to a different client".into(),
            ));
        }

        let mut options = sys::PJRT_ExecuteOptions::new();
        options.non_donatable_input_indices = non_donatable.as_ptr();
        options.num_non_donatable_input_indices = non_donatable.len();

        let argument_lists: Vec<*const *mut sys::PJRT_Buffer> =
            inputs.iter().map(|l| l.as_ptr()).collect();
        let mut outputs: Vec<Vec<*mut sys::PJRT_Buffer>> =
            vec![vec![std::ptr::null_mut(); self.num_outputs]; devices];
        let output_lists: Vec<*mut *mut sys::PJRT_Buffer> =
            outputs.iter_mut().map(|l| l.as_mut_ptr()).collect();
        let mut complete: Vec<*mut sys::PJRT_Event> = vec![std::ptr::null_mut(); devices];

        let mut exec = sys::PJRT_LoadedExecutable_Execute_Args::new();
        exec.executable = self.raw.as_ptr();
        exec.options = &mut options;
        exec.argument_lists = argument_lists.as_ptr();
        exec.num_devices = devices;
        exec.num_args = num_args;
        exec.output_lists = output_lists.as_ptr();
        exec.device_complete_events = complete.as_mut_ptr();
        // SAFETY: all arrays above outlive the call; `inputs` are live buffers of this client
        // (kept alive by `args` until after completion), `devices` lists of `num_args` each;
        // `outputs` has `num_outputs` slots per device; `complete` has one slot per device.
        unsafe { pjrt_call!(api, PJRT_LoadedExecutable_Execute, &mut exec) }?;

        // Own everything the call returned before anything else can fail.
        let done: Vec<Option<Event>> = complete.iter().map(|&e| Event::from_raw(api, e)).collect();
        let mut results = Vec::with_capacity(devices);
        let mut first_err = None;
        for list in outputs {
            let mut device_results = Vec::with_capacity(list.len());
            for raw in list {
                match NonNull::new(raw) {
                    Some(raw) => match Buffer::from_raw(self.client.clone(), raw) {
                        Ok(b) => device_results.push(b),
                        Err(e) => first_err = first_err.or(Some(e)),
                    },
                    None => {
                        first_err = first_err.or(Some(invalid(
                            "execute: plugin returned a null output".into(),
                        )))
                    }
                }
            }
            results.push(device_results);
        }
        // Wait even if collecting outputs failed: inputs must not be freed while running.
        let mut waited = Ok(());
        for d in done.into_iter().flatten() {
            let w = d.wait("PJRT_LoadedExecutable_Execute");
            if waited.is_ok() {
                waited = w;
            }
        }
        drop(args);
        waited?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(results),
        }
    }

    /// [`Executable::execute`] with every argument borrowed.
    pub fn execute_borrowed(&self, args: &[&Buffer]) -> Result<Vec<Buffer>> {
        self.execute(args.iter().map(|b| Arg::Borrowed(b)).collect())
    }
}

impl Drop for Executable {
    fn drop(&mut self) {
        let mut args = sys::PJRT_LoadedExecutable_Destroy_Args::new();
        args.executable = self.raw.as_ptr();
        if let Ok(f) = pjrt_fn!(self.client.api, PJRT_LoadedExecutable_Destroy) {
            // SAFETY: we own the executable and destroy it exactly once; `execute` waits for
            // completion, so no run of ours is in flight.
            let err = unsafe { f(&mut args) };
            let _ = self.client.api.check("PJRT_LoadedExecutable_Destroy", err);
        }
    }
}
