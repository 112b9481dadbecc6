//! Safe wrapper over the PJRT C API (`pjrt-sys`).
//!
//! ```no_run
//! use runtime::pjrt::{Api, Arg, Client, CompileOptions};
//! # fn main() -> Result<(), runtime::pjrt::PjrtError> {
//! let client = Client::new(Api::load_default()?)?;
//! let exe = client.compile(
//!     "func.func @main(%a: tensor<4xf32>, %b: tensor<4xf32>) -> tensor<4xf32> {
//!        %0 = stablehlo.add %a, %b : tensor<4xf32>
//!        return %0 : tensor<4xf32>
//!      }",
//!     &CompileOptions::new(),
//! )?;
//! let a = client.buffer_from_host(&[1.0f32, 2.0, 3.0, 4.0], &[4])?;
//! let out = exe.execute(vec![Arg::Borrowed(&a), Arg::Borrowed(&a)])?;
//! assert_eq!(out[0].to_host::<f32>()?, vec![2.0, 4.0, 6.0, 8.0]);
//! # Ok(()) }
//! ```
//!
//! Ownership: [`Client`] is a cheap handle (`Arc` inside); every [`Buffer`] and
//! [`Executable`] keeps its client alive, and every client keeps its [`Api`] (the loaded
//! library) alive. All types are `Send + Sync`, as PJRT objects are thread-safe.

/// Looks up a `PJRT_Api` function-table entry by field name, bounds-checked against the
/// plugin's table size: `pjrt_fn!(api, PJRT_Client_Create) -> Result<unsafe extern fn>`.
macro_rules! pjrt_fn {
    ($api:expr, $name:ident) => {
        $api.function(
            ::std::mem::offset_of!(::pjrt_sys::PJRT_Api, $name),
            stringify!($name),
            |table| table.$name,
        )
    };
}

/// Calls a PJRT function by name with `&mut args`, converting its error. Must be used inside
/// `unsafe`: the caller vouches for every pointer in `args`.
macro_rules! pjrt_call {
    ($api:expr, $name:ident, $args:expr) => {
        $api.invoke(stringify!($name), pjrt_fn!($api, $name)?, $args)
    };
}

mod api;
mod buffer;
mod client;
mod compile_options;
mod element;
mod error;
mod event;
mod executable;
pub mod ffi;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;

pub use api::{default_plugin_path, Api};
pub use buffer::Buffer;
pub use client::Client;
pub use compile_options::{CompileOptions, OptionValue};
pub use element::{Element, ElementType};
pub use error::{ErrorCode, PjrtError, Result};
pub use executable::{Arg, CompiledMemoryStats, Executable};
