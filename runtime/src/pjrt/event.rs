//! `PJRT_Event`: completion signals for asynchronous plugin work.

use std::ptr::NonNull;

use pjrt_sys::{self as sys, PjrtArgs};

use super::api::Api;
use super::error::Result;

/// An owned `PJRT_Event`; destroyed on drop.
pub(crate) struct Event<'a> {
    api: &'a Api,
    raw: NonNull<sys::PJRT_Event>,
}

impl<'a> Event<'a> {
    /// Takes ownership of `raw` (may be null: then there is nothing to wait for).
    pub(crate) fn from_raw(api: &'a Api, raw: *mut sys::PJRT_Event) -> Option<Self> {
        NonNull::new(raw).map(|raw| Self { api, raw })
    }

    /// Blocks until the event is ready; returns the error it carries, if any.
    /// `call` names the operation the event belongs to, for the error message.
    pub(crate) fn wait(self, call: &'static str) -> Result<()> {
        let mut args = sys::PJRT_Event_Await_Args::new();
        args.event = self.raw.as_ptr();
        let f = pjrt_fn!(self.api, PJRT_Event_Await)?;
        // SAFETY: `args.event` is a live event we own.
        let err = unsafe { f(&mut args) };
        self.api.check(call, err)
    }
}

impl Drop for Event<'_> {
    fn drop(&mut self) {
        let mut args = sys::PJRT_Event_Destroy_Args::new();
        args.event = self.raw.as_ptr();
        if let Ok(f) = pjrt_fn!(self.api, PJRT_Event_Destroy) {
            // SAFETY: we own the event and free it exactly once.
            let err = unsafe { f(&mut args) };
            // Nothing useful to do with a failure in drop; `check` still frees the error.
            let _ = self.api.check("PJRT_Event_Destroy", err);
        }
    }
}

/// Waits for an optional event returned by `call` (null events mean "already done").
pub(crate) fn wait_raw(api: &Api, raw: *mut sys::PJRT_Event, call: &'static str) -> Result<()> {
    match Event::from_raw(api, raw) {
        Some(event) => event.wait(call),
        None => Ok(()),
    }
}
