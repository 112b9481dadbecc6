//! `PJRT_Buffer`: an array on a device.

use std::mem::{size_of, MaybeUninit};
use std::ptr::NonNull;
use std::sync::Arc;

use pjrt_sys::{self as sys, PjrtArgs};

use super::api::Api;
use super::client::{element_count, invalid, ClientInner};
use super::element::{Element, ElementType};
use super::error::{PjrtError, Result};
use super::event::wait_raw;

/// A device buffer. Destroyed on drop; keeps its client alive.
pub struct Buffer {
    client: Arc<ClientInner>,
    raw: NonNull<sys::PJRT_Buffer>,
    dims: Vec<i64>,
    element_type: ElementType,
}

// SAFETY: PJRT buffers may be used from any thread; the plugin synchronizes access to the
// device memory behind them. The Rust-side fields are immutable.
unsafe impl Send for Buffer {}
// SAFETY: as above; every `&self` method only reads or asks the plugin to read.
unsafe impl Sync for Buffer {}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("element_type", &self.element_type)
            .field("dims", &self.dims)
            .finish()
    }
}

impl Buffer {
    /// Takes ownership of `raw` (destroyed on drop, even if this returns an error) and caches
    /// its shape and element type.
    pub(crate) fn from_raw(
        client: Arc<ClientInner>,
        raw: NonNull<sys::PJRT_Buffer>,
    ) -> Result<Buffer> {
        let mut buffer = Buffer {
            client,
            raw,
            dims: Vec::new(),
            element_type: ElementType::Other(0),
        };
        let api = &*buffer.client.api;

        let mut ty = sys::PJRT_Buffer_ElementType_Args::new();
        ty.buffer = raw.as_ptr();
        // SAFETY: `raw` is a live buffer; out fields only.
        unsafe { pjrt_call!(api, PJRT_Buffer_ElementType, &mut ty) }?;

        let mut dims = sys::PJRT_Buffer_Dimensions_Args::new();
        dims.buffer = raw.as_ptr();
        // SAFETY: `raw` is a live buffer; out fields only.
        unsafe { pjrt_call!(api, PJRT_Buffer_Dimensions, &mut dims) }?;
        let dims = if dims.num_dims == 0 {
            Vec::new()
        } else {
            // SAFETY: the plugin returned `num_dims` sizes that live as long as the buffer.
            unsafe { std::slice::from_raw_parts(dims.dims, dims.num_dims) }.to_vec()
        };

        buffer.element_type = ElementType::from_raw(ty.type_);
        buffer.dims = dims;
        Ok(buffer)
    }

    pub(crate) fn client_inner(&self) -> &Arc<ClientInner> {
        &self.client
    }

    pub(crate) fn raw(&self) -> *mut sys::PJRT_Buffer {
        self.raw.as_ptr()
    }

    fn api(&self) -> &Api {
        &self.client.api
    }

    /// Shape (row-major dimension sizes).
    pub fn dims(&self) -> &[i64] {
        &self.dims
    }

    /// Number of elements (product of [`Buffer::dims`]).
    pub fn element_count(&self) -> usize {
        // Dimensions came from the plugin, so they are non-negative and fit.
        element_count(&self.dims).unwrap_or(0)
    }

    pub fn element_type(&self) -> ElementType {
        self.element_type
    }

    /// Bytes the buffer occupies on its device (may include padding).
    pub fn on_device_size_in_bytes(&self) -> Result<usize> {
        let mut args = sys::PJRT_Buffer_OnDeviceSizeInBytes_Args::new();
        args.buffer = self.raw();
        // SAFETY: live buffer; out fields only.
        unsafe { pjrt_call!(self.api(), PJRT_Buffer_OnDeviceSizeInBytes, &mut args) }?;
        Ok(args.on_device_size_in_bytes)
    }

    /// Address of the buffer's device memory (`PJRT_Buffer_UnsafePointer`). For identity
    /// checks such as "did donation alias this output onto its input"; on CPU it is a host
    /// address, which only [`Buffer::read_prefix`] reads (after checking the buffer is ready,
    /// on the host and row-major).
    pub fn device_address(&self) -> Result<usize> {
        let mut args = sys::PJRT_Buffer_UnsafePointer_Args::new();
        args.buffer = self.raw();
        // SAFETY: live buffer; out fields only.
        unsafe { pjrt_call!(self.api(), PJRT_Buffer_UnsafePointer, &mut args) }?;
        Ok(args.buffer_pointer)
    }

    /// Blocks until the buffer's contents are computed / transferred.
    pub fn block_until_ready(&self) -> Result<()> {
        let mut args = sys::PJRT_Buffer_ReadyEvent_Args::new();
        args.buffer = self.raw();
        // SAFETY: live buffer; the returned event is owned by us (wrapped right below).
        unsafe { pjrt_call!(self.api(), PJRT_Buffer_ReadyEvent, &mut args) }?;
        wait_raw(self.api(), args.event, "PJRT_Buffer_ReadyEvent")
    }

    /// Copies the buffer to a new host vector. `T` must match [`Buffer::element_type`].
    pub fn to_host<T: Element>(&self) -> Result<Vec<T>> {
        let n = self.element_count();
        let mut out: Vec<T> = Vec::with_capacity(n);
        self.copy_into(&mut out.spare_capacity_mut()[..n])?;
        // SAFETY: `copy_into` succeeded, so the plugin wrote all `n` elements, and every bit
        // pattern is a valid `T` (guaranteed by the sealed `Element` trait).
        unsafe { out.set_len(n) };
        Ok(out)
    }

    /// Copies the first `n` elements (in row-major order) to a new host vector. A buffer in
    /// host memory (`PJRT_Buffer_IsOnCpu`: the CPU plugin's) laid out row-major is read in place
    /// once ready: no transfer through the plugin, whose copy hands off to its own thread (a
    /// batch-1 step's 196 KB of logits took ~80 us that way against a ~15 us memcpy), and
    /// only the rows asked for. Other buffers are copied whole and cut.
    pub fn read_prefix<T: Element>(&self, n: usize) -> Result<Vec<T>> {
        if T::TYPE != self.element_type {
            return Err(PjrtError::TypeMismatch {
                expected: T::TYPE,
                actual: self.element_type,
            });
        }
        if n > self.element_count() {
            return Err(invalid(format!(
                "read_prefix: {n} elements asked of buffer {:?} holding {}",
                self.dims,
                self.element_count()
            )));
        }
        if !self.reads_in_place()? {
            let mut all = self.to_host::<T>()?;
            all.truncate(n);
            return Ok(all);
        }
        self.block_until_ready()?;
        let addr = self.device_address()?;
        if n > 0 && (addr == 0 || addr % align_of::<T>() != 0) {
            return Err(invalid(format!(
                "read_prefix: the plugin gave buffer {:?} the address {addr:#x}",
                self.dims
            )));
        }
        // SAFETY: the buffer is ready and lives in host memory at `addr` (the plugin says
        // so), holding at least `n` elements of `T` (its type and count checked above); it is
        // borrowed for the copy, so the plugin cannot free or donate it meanwhile.
        Ok(unsafe { std::slice::from_raw_parts(addr as *const T, n) }.to_vec())
    }

    /// Whether [`Buffer::read_prefix`] reads the buffer in place: host memory, row-major.
    pub fn reads_in_place(&self) -> Result<bool> {
        Ok(self.is_on_cpu()? && self.is_row_major()?)
    }

    /// Whether the buffer is laid out dense and row-major (`PJRT_Buffer_GetMemoryLayout`: no
    /// tiles, dimensions minor to major from the last), so that its memory reads in the order
    /// [`Buffer::to_host`] copies it.
    fn is_row_major(&self) -> Result<bool> {
        let mut args = sys::PJRT_Buffer_GetMemoryLayout_Args::new();
        args.buffer = self.raw();
        // SAFETY: live buffer; out fields only.
        unsafe { pjrt_call!(self.api(), PJRT_Buffer_GetMemoryLayout, &mut args) }?;
        if args.layout.type_ != sys::PJRT_Buffer_MemoryLayout_Type_Tiled {
            return Ok(false);
        }
        // SAFETY: the plugin filled the tiled member (the type says so); its arrays belong to
        // the buffer, which is borrowed here.
        let tiled = unsafe { args.layout.__bindgen_anon_1.tiled };
        let order: &[i64] = match tiled.minor_to_major_size {
            0 => &[],
            // SAFETY: as above, `minor_to_major_size` values.
            n => unsafe { std::slice::from_raw_parts(tiled.minor_to_major, n) },
        };
        let rank = self.dims.len();
        Ok(tiled.num_tiles == 0
            && order.len() == rank
            && order
                .iter()
                .zip((0..rank as i64).rev())
                .all(|(&d, want)| d == want))
    }

    /// Whether the buffer's memory is host memory (`PJRT_Buffer_IsOnCpu`).
    pub fn is_on_cpu(&self) -> Result<bool> {
        let mut args = sys::PJRT_Buffer_IsOnCpu_Args::new();
        args.buffer = self.raw();
        // SAFETY: live buffer; out fields only.
        unsafe { pjrt_call!(self.api(), PJRT_Buffer_IsOnCpu, &mut args) }?;
        Ok(args.is_on_cpu)
    }

    /// Copies the buffer into `dst`, whose length must be the element count.
    pub fn copy_to_host<T: Element>(&self, dst: &mut [T]) -> Result<()> {
        // SAFETY: `MaybeUninit<T>` has the layout of `T`, and `copy_into` only writes
        // initialized `T` values (never uninit bytes) into the slice.
        let dst = unsafe { &mut *(std::ptr::from_mut(dst) as *mut [MaybeUninit<T>]) };
        self.copy_into(dst)
    }

    fn copy_into<T: Element>(&self, dst: &mut [MaybeUninit<T>]) -> Result<()> {
        if T::TYPE != self.element_type {
            return Err(PjrtError::TypeMismatch {
                expected: T::TYPE,
                actual: self.element_type,
            });
        }
        let n = self.element_count();
        if dst.len() != n {
            return Err(invalid(format!(
                "copy_to_host: destination holds {} elements, buffer {:?} has {n}",
                dst.len(),
                self.dims
            )));
        }
        let mut args = sys::PJRT_Buffer_ToHostBuffer_Args::new();
        args.src = self.raw();
        args.dst = dst.as_mut_ptr().cast();
        args.dst_size = size_of::<T>() * n;
        // SAFETY: `dst` is valid for `dst_size` bytes and stays borrowed until the copy's
        // event has been awaited below (or the call failed and wrote nothing).
        unsafe { pjrt_call!(self.api(), PJRT_Buffer_ToHostBuffer, &mut args) }?;
        wait_raw(self.api(), args.event, "PJRT_Buffer_ToHostBuffer")
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut args = sys::PJRT_Buffer_Destroy_Args::new();
        args.buffer = self.raw();
        if let Ok(f) = pjrt_fn!(self.client.api, PJRT_Buffer_Destroy) {
            // SAFETY: we own the buffer and destroy it exactly once. Pending work that reads
            // it is kept alive by the plugin's own reference counting.
            let err = unsafe { f(&mut args) };
            let _ = self.client.api.check("PJRT_Buffer_Destroy", err);
        }
    }
}
