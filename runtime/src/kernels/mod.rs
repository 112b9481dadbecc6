//! Native host kernels, called from StableHLO programs as XLA FFI custom calls.
//!
//! - [`rpa`]: ragged paged attention reading K/V pages in place (custom call target
//!   [`RPA_TARGET`]; kernelgen's `host` schedule emits the call).
//! - [`matmul`]: `x @ w^T` for the step program's projections at decode sizes (custom call
//!   target [`MATMUL_TARGET`]; step programs with host kernels emit it), also after the RMS
//!   norm before it ([`NORM_MATMUL_TARGET`]) or plus the residual after it
//!   ([`MATMUL_ADD_TARGET`]).
//! - [`lm_head`]: the LM head over its weight's two 16-bit planes, whose greedy rows read half
//!   the bytes (custom call target [`LM_HEAD_TARGET`]).
//!
//! [`timeline`] records, when asked, when each call ran.
//!
//! [`register`] installs the handlers with a plugin ([`crate::pjrt::Api::load`] does it for every
//! plugin it loads, so compiled and deserialized executables both find them). Handlers never
//! unwind into XLA: a refused call or a panic becomes an `XLA_FFI_Error` that fails the
//! execution with its message.

pub mod element;
pub mod lm_head;
pub mod matmul;
mod pool;
pub mod rpa;
pub mod timeline;
pub mod workers;

use half::bf16;

use crate::pjrt::ffi::{dtype, AttrValue, BufferRef, Call, CallFrame, Stage, XlaError};
use crate::pjrt::{Api, PjrtError};
use element::Element;
use pool::XlaPool;
use rpa::{RpaMeta, RpaParams, RpaShape};
use workers::Workers;

/// The custom call target of the host RPA kernel.
pub const RPA_TARGET: &str = "kernelgen_rpa";

/// The custom call target of the host matmul (`x @ w^T`, weight `[n, k]`).
pub const MATMUL_TARGET: &str = "kernelgen_matmul";

/// The host matmul after the model's RMS norm of `x` ([`matmul::RmsNorm`]): operands `x f32[m,
/// k]`, `norm f32[k]` and `w [n, k]`, attribute `eps` (f32), result `f32[m, n]`.
pub const NORM_MATMUL_TARGET: &str = "kernelgen_norm_matmul";

/// The host matmul plus a residual: operands `x f32[m, k]`, `w [n, k]` and `residual f32[m,
/// n]`, result `residual + x @ w^T`.
pub const MATMUL_ADD_TARGET: &str = "kernelgen_matmul_add";

/// The custom call target of the host LM head: operands `x f32[m, k]`, `planes u16[2, n, k]`
/// ([`lm_head::split`]), `rows f32[2, n]` and `screen i8[n, k]` ([`lm_head::tables`]) and
/// `argmax_only i32[1]` (non-zero: [`lm_head::HeadMode::Argmax`]), result `f32[m, n]`.
pub const LM_HEAD_TARGET: &str = "kernelgen_lm_head";

/// The XLA platform name of host (CPU) custom calls.
pub const HOST_PLATFORM: &str = "Host";

/// Registers every host kernel with the plugin behind `api`.
pub fn register(api: &Api) -> Result<(), PjrtError> {
    api.register_ffi_handler(RPA_TARGET, HOST_PLATFORM, rpa_handler)?;
    api.register_ffi_handler(MATMUL_TARGET, HOST_PLATFORM, matmul_handler)?;
    api.register_ffi_handler(NORM_MATMUL_TARGET, HOST_PLATFORM, norm_matmul_handler)?;
    api.register_ffi_handler(MATMUL_ADD_TARGET, HOST_PLATFORM, matmul_add_handler)?;
    api.register_ffi_handler(LM_HEAD_TARGET, HOST_PLATFORM, lm_head_handler)
}

/// The FFI entry point of [`rpa::rpa`].
///
/// # Safety
/// Called by XLA with its call frame.
unsafe extern "C" fn rpa_handler(frame: *mut CallFrame) -> *mut XlaError {
    // SAFETY: the caller's contract.
    unsafe { handle(frame, RPA_TARGET, timeline::What::Attention, execute_rpa) }
}

/// The FFI entry point of [`matmul::matmul`].
///
/// # Safety
/// Called by XLA with its call frame.
unsafe extern "C" fn matmul_handler(frame: *mut CallFrame) -> *mut XlaError {
    // SAFETY: the caller's contract.
    unsafe {
        handle(
            frame,
            MATMUL_TARGET,
            timeline::What::Projection,
            execute_matmul,
        )
    }
}

/// The FFI entry point of [`matmul::matmul_fused`] with the norm.
///
/// # Safety
/// Called by XLA with its call frame.
unsafe extern "C" fn norm_matmul_handler(frame: *mut CallFrame) -> *mut XlaError {
    // SAFETY: the caller's contract.
    unsafe {
        handle(
            frame,
            NORM_MATMUL_TARGET,
            timeline::What::Projection,
            execute_norm_matmul,
        )
    }
}

/// The FFI entry point of [`matmul::matmul_fused`] with the residual.
///
/// # Safety
/// Called by XLA with its call frame.
unsafe extern "C" fn matmul_add_handler(frame: *mut CallFrame) -> *mut XlaError {
    // SAFETY: the caller's contract.
    unsafe {
        handle(
            frame,
            MATMUL_ADD_TARGET,
            timeline::What::Projection,
            execute_matmul_add,
        )
    }
}

/// The FFI entry point of [`lm_head::lm_head`].
///
/// # Safety
/// Called by XLA with its call frame.
unsafe extern "C" fn lm_head_handler(frame: *mut CallFrame) -> *mut XlaError {
    // SAFETY: the caller's contract.
    unsafe {
        handle(
            frame,
            LM_HEAD_TARGET,
            timeline::What::LmHead,
            execute_lm_head,
        )
    }
}

/// Decodes XLA's call frame and runs `execute` at the execute stage (timed as `what` while
/// [`timeline`] records); a refusal or a panic becomes an XLA error naming `target`.
///
/// # Safety
/// `frame` is XLA's call frame, valid for this call.
unsafe fn handle(
    frame: *mut CallFrame,
    target: &str,
    what: timeline::What,
    execute: fn(&Call, *mut CallFrame) -> Result<(), String>,
) -> *mut XlaError {
    // SAFETY: `frame` is XLA's call frame, valid for this call.
    let result = std::panic::catch_unwind(|| match unsafe { CallFrame::decode(frame) } {
        Ok(Stage::Execute(call)) => {
            let start = timeline::now();
            let done = execute(&call, frame);
            timeline::record(what, start);
            done
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    });
    match result {
        Ok(Ok(())) => std::ptr::null_mut(),
        // SAFETY: as above.
        Ok(Err(message)) => unsafe { CallFrame::error(frame, &message, false) },
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            // SAFETY: as above.
            unsafe { CallFrame::error(frame, &format!("{target} panicked: {why}"), true) }
        }
    }
}

fn execute_matmul(call: &Call, frame: *mut CallFrame) -> Result<(), String> {
    execute_matmul_as(MatmulCall::Plain, call, frame)
}

fn execute_norm_matmul(call: &Call, frame: *mut CallFrame) -> Result<(), String> {
    execute_matmul_as(MatmulCall::Norm, call, frame)
}

fn execute_matmul_add(call: &Call, frame: *mut CallFrame) -> Result<(), String> {
    execute_matmul_as(MatmulCall::Add, call, frame)
}

/// The three custom calls of the host matmul, by what they fuse around the product.
#[derive(Clone, Copy)]
enum MatmulCall {
    /// [`MATMUL_TARGET`]: `(x, w)`.
    Plain,
    /// [`NORM_MATMUL_TARGET`]: `(x, norm, w)` and attribute `eps`.
    Norm,
    /// [`MATMUL_ADD_TARGET`]: `(x, w, residual)`.
    Add,
}

impl MatmulCall {
    fn target(self) -> &'static str {
        match self {
            MatmulCall::Plain => MATMUL_TARGET,
            MatmulCall::Norm => NORM_MATMUL_TARGET,
            MatmulCall::Add => MATMUL_ADD_TARGET,
        }
    }

    fn operands(self) -> &'static str {
        match self {
            MatmulCall::Plain => "2 operands (x, w)",
            MatmulCall::Norm => "3 operands (x, norm, w)",
            MatmulCall::Add => "3 operands (x, w, residual)",
        }
    }
}

fn execute_matmul_as(form: MatmulCall, call: &Call, frame: *mut CallFrame) -> Result<(), String> {
    let target = form.target();
    let (x, norm, w, residual, out) = match (form, &call.args[..], &call.rets[..]) {
        (MatmulCall::Plain, [x, w], [out]) => (x, None, w, None, out),
        (MatmulCall::Norm, [x, g, w], [out]) => (x, Some(g), w, None, out),
        (MatmulCall::Add, [x, w, r], [out]) => (x, None, w, Some(r), out),
        _ => {
            return Err(format!(
                "{target} takes {} and returns 1 result, got {} and {}",
                form.operands(),
                call.args.len(),
                call.rets.len()
            ))
        }
    };
    let rank2 = |b: &BufferRef, name: &str| match b.dims[..] {
        [r, c] if r >= 0 && c >= 0 => Ok((r as usize, c as usize)),
        _ => Err(format!(
            "{target}: {name} must have rank 2, got {:?}",
            b.dims
        )),
    };
    let ((m, k), (n, kw), (mo, no)) = (rank2(x, "x")?, rank2(w, "w")?, rank2(out, "the result")?);
    if kw != k || mo != m || no != n {
        return Err(format!(
            "{target}: x {:?}, w {:?} and the result {:?} disagree (x[m, k], w[n, k], \
             result[m, n])",
            x.dims, w.dims, out.dims
        ));
    }
    if x.dtype != dtype::F32 || out.dtype != dtype::F32 {
        return Err(format!("{target}: x and the result must be f32"));
    }
    if let Some(g) = norm {
        if g.dtype != dtype::F32 || g.dims != [k as i64] {
            return Err(format!("{target}: norm must be f32[{k}], got {:?}", g.dims));
        }
    }
    if let Some(r) = residual {
        if r.dtype != dtype::F32 || r.dims != out.dims {
            return Err(format!(
                "{target}: residual must be f32 of the result's shape {:?}, got {:?}",
                out.dims, r.dims
            ));
        }
    }
    let eps = match (norm, call.attr("eps")) {
        (None, _) => 0.0,
        (Some(_), Some(AttrValue::F32(e))) if e.is_finite() && e >= 0.0 => e,
        (Some(_), None) => return Err(format!("{target}: attribute eps is missing")),
        (Some(_), Some(v)) => {
            return Err(format!(
                "{target}: attribute eps = {v:?} must be a finite non-negative f32"
            ))
        }
    };
    let shape = matmul::MatmulShape { m, k, n };
    // Helpers linger after decode-sized calls, those whose step uses this matmul.
    let workers = &XlaPool::new(frame, m <= matmul::MAX_ROWS);
    if out.elements() == 0 {
        return Ok(());
    }
    // SAFETY: dtypes and shapes checked; XLA's buffers hold `elements()` values and live for
    // the call; the (non-empty) result is the handler's alone and aliases no operand.
    unsafe {
        let fusion = matmul::Fusion {
            norm: norm.map(|g| matmul::RmsNorm {
                weight: slice::<f32>(g),
                eps,
            }),
            residual: residual.map(|r| slice::<f32>(r)),
        };
        let xs = slice::<f32>(x);
        let o = std::slice::from_raw_parts_mut(out.data.cast::<f32>(), out.elements());
        match w.dtype {
            dtype::F32 => matmul::matmul_fused(&shape, xs, slice::<f32>(w), &fusion, o, workers),
            dtype::BF16 => matmul::matmul_fused(&shape, xs, slice::<bf16>(w), &fusion, o, workers),
            d => {
                return Err(format!(
                    "{target}: unsupported weight dtype {d} (f32 or bf16)"
                ))
            }
        }
    }
    .map_err(|e| e.to_string())
}

fn execute_lm_head(call: &Call, frame: *mut CallFrame) -> Result<(), String> {
    let ([x, planes, rows, screen, mode], [out]) = (&call.args[..], &call.rets[..]) else {
        return Err(format!(
            "{LM_HEAD_TARGET} takes 5 operands (x, planes, rows, screen, argmax_only) and \
             returns 1 result, got {} and {}",
            call.args.len(),
            call.rets.len()
        ));
    };
    let (m, k, n) = match (x.dims, planes.dims, out.dims) {
        (&[m, k], &[2, n, kw], &[mo, no])
            if kw == k && mo == m && no == n && m >= 0 && k >= 0 && n >= 0 =>
        {
            (m as usize, k as usize, n as usize)
        }
        _ => {
            return Err(format!(
                "{LM_HEAD_TARGET}: x {:?}, planes {:?} and the result {:?} disagree (x[m, k], \
                 planes[2, n, k], result[m, n])",
                x.dims, planes.dims, out.dims
            ))
        }
    };
    if x.dtype != dtype::F32
        || out.dtype != dtype::F32
        || rows.dtype != dtype::F32
        || planes.dtype != dtype::U16
        || screen.dtype != dtype::S8
    {
        return Err(format!(
            "{LM_HEAD_TARGET}: x, rows and the result must be f32, planes u16, screen i8"
        ));
    }
    if mode.dtype != dtype::S32 || mode.elements() != 1 {
        return Err(format!("{LM_HEAD_TARGET}: argmax_only must be one i32"));
    }
    let workers = &XlaPool::new(frame, m <= matmul::MAX_ROWS);
    if out.elements() == 0 {
        return Ok(());
    }
    // SAFETY: dtypes checked; XLA's buffers hold `elements()` values and live for the call;
    // the (non-empty) result is the handler's alone and aliases no operand.
    unsafe {
        let mode = match *mode.data.cast::<i32>() {
            0 => lm_head::HeadMode::Exact,
            _ => lm_head::HeadMode::Argmax,
        };
        let o = std::slice::from_raw_parts_mut(out.data.cast::<f32>(), out.elements());
        let shape = matmul::MatmulShape { m, k, n };
        lm_head::lm_head(
            &shape,
            slice(x),
            slice(planes),
            lm_head::Tables {
                rows: slice(rows),
                screen: slice(screen),
            },
            mode,
            o,
            workers,
        )
    }
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn execute_rpa(call: &Call, frame: *mut CallFrame) -> Result<(), String> {
    let [q, kv, kv_lens, page_indices, cu_q_lens, num_seqs] = call.args[..] else {
        return Err(format!(
            "{RPA_TARGET} takes 6 operands (q, kv_pages, kv_lens, page_indices, cu_q_lens, \
             num_seqs), got {}",
            call.args.len()
        ));
    };
    let [out] = call.rets[..] else {
        return Err(format!(
            "{RPA_TARGET} returns 1 result, got {}",
            call.rets.len()
        ));
    };
    let shape = shape_of(&q, &kv, &page_indices, &out)?;
    let params = params_of(call)?;
    for (name, b) in [
        ("kv_lens", kv_lens),
        ("page_indices", page_indices),
        ("cu_q_lens", cu_q_lens),
        ("num_seqs", num_seqs),
    ] {
        if b.dtype != dtype::S32 {
            return Err(format!("{RPA_TARGET}: {name} must be i32"));
        }
    }
    if num_seqs.elements() != 1 {
        return Err(format!("{RPA_TARGET}: num_seqs must hold one element"));
    }
    // SAFETY: XLA's buffers hold `elements()` values of their declared dtype (checked above
    // for the metadata), and live for the call.
    let meta = unsafe {
        RpaMeta {
            kv_lens: slice(&kv_lens),
            page_indices: slice(&page_indices),
            cu_q_lens: slice(&cu_q_lens),
            num_seqs: *num_seqs.data.cast::<i32>(),
        }
    };
    let workers = XlaPool::new(frame, shape.tokens <= matmul::MAX_ROWS);
    if q.dtype != kv.dtype || q.dtype != out.dtype {
        return Err(format!(
            "{RPA_TARGET}: q, kv_pages and the result must share a dtype"
        ));
    }
    match q.dtype {
        // SAFETY: dtypes checked; the result does not alias the operands (no aliasing is
        // declared on the custom call).
        dtype::F32 => unsafe { run::<f32>(&shape, &params, q, kv, &meta, out, &workers) },
        // SAFETY: as above.
        dtype::BF16 => unsafe { run::<bf16>(&shape, &params, q, kv, &meta, out, &workers) },
        d => Err(format!("{RPA_TARGET}: unsupported dtype {d} (f32 or bf16)")),
    }
}

unsafe fn run<T: Element>(
    shape: &RpaShape,
    params: &RpaParams,
    q: BufferRef,
    kv: BufferRef,
    meta: &RpaMeta,
    out: BufferRef,
    workers: &dyn Workers,
) -> Result<(), String> {
    // SAFETY: the caller checked the dtypes; buffers live for the call.
    let (q, kv) = unsafe { (slice::<T>(&q), slice::<T>(&kv)) };
    if out.elements() == 0 {
        return Ok(());
    }
    // SAFETY: as above; XLA hands the handler exclusive use of its (non-empty) result buffer.
    let out = unsafe { std::slice::from_raw_parts_mut(out.data.cast::<T>(), out.elements()) };
    rpa::rpa(shape, params, q, kv, meta, out, workers).map_err(|e| e.to_string())
}

/// # Safety
/// `b` must hold `b.elements()` values of type `T`, alive for `'a`.
unsafe fn slice<'a, T>(b: &BufferRef) -> &'a [T] {
    let n = b.elements();
    if n == 0 {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(b.data.cast::<T>().cast_const(), n) }
}

fn shape_of(
    q: &BufferRef,
    kv: &BufferRef,
    page_indices: &BufferRef,
    out: &BufferRef,
) -> Result<RpaShape, String> {
    let dims = |b: &BufferRef, name: &str, rank: usize| -> Result<Vec<usize>, String> {
        if b.dims.len() != rank || b.dims.iter().any(|&d| d < 0) {
            return Err(format!(
                "{RPA_TARGET}: {name} must have rank {rank}, got {:?}",
                b.dims
            ));
        }
        Ok(b.dims.iter().map(|&d| d as usize).collect())
    };
    let (qd, kd, pd) = (
        dims(q, "q", 3)?,
        dims(kv, "kv_pages", 4)?,
        dims(page_indices, "page_indices", 2)?,
    );
    if out.dims != q.dims || kd[3] != qd[2] || kd[2] % 2 != 0 {
        return Err(format!(
            "{RPA_TARGET}: q {:?}, kv_pages {:?} and the result {:?} disagree",
            q.dims, kv.dims, out.dims
        ));
    }
    Ok(RpaShape {
        tokens: qd[0],
        q_heads: qd[1],
        kv_heads: kd[2] / 2,
        head_dim: qd[2],
        total_pages: kd[0],
        page_size: kd[1],
        max_seqs: pd[0],
        pages_per_seq: pd[1],
    })
}

fn params_of(call: &Call) -> Result<RpaParams, String> {
    let int = |name: &str| -> Result<usize, String> {
        match call.attr(name) {
            Some(AttrValue::I32(v)) if v >= 0 => Ok(v as usize),
            Some(AttrValue::I64(v)) if v >= 0 => Ok(v as usize),
            None => Err(format!("{RPA_TARGET}: attribute {name} is missing")),
            Some(v) => Err(format!(
                "{RPA_TARGET}: attribute {name} = {v:?} must be a non-negative integer"
            )),
        }
    };
    let float = |name: &str| -> Result<f32, String> {
        match call.attr(name) {
            Some(AttrValue::F32(v)) if v.is_finite() => Ok(v),
            None => Err(format!("{RPA_TARGET}: attribute {name} is missing")),
            Some(v) => Err(format!(
                "{RPA_TARGET}: attribute {name} = {v:?} must be a finite f32"
            )),
        }
    };
    let soft_cap = float("soft_cap")?;
    let window = int("sliding_window")?;
    Ok(RpaParams {
        sm_scale: float("sm_scale")?,
        soft_cap: (soft_cap > 0.0).then_some(soft_cap),
        sliding_window: (window > 0).then_some(window),
        q_block: int("q_block")?.max(1),
        kv_pages_block: int("kv_pages_block")?.max(1),
    })
}

/// Whether this CPU has the AVX-512 subsets the kernels' vector paths are compiled for (F for
/// the arithmetic, BW and VL for bf16's masked 16-bit loads); checked once, then cached by std.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// A deterministic spread of `n` values in [-1, 1) from `seed`, for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
