//! What this machine's device can do, measured in the same run as the figures they bound: the
//! rate a device-side reduction reads memory at, and the f32 matmul rate. Both programs are
//! templates (`templates/probe_*.stablehlo.mlir.tera`) checked like every other.

use super::{pjrt, run_times, BenchError};
use crate::emit;
use runtime::pjrt::{Client, CompileOptions};
use serde::Serialize;

#[derive(Serialize)]
struct BandwidthProbe {
    n: usize,
}

#[derive(Serialize)]
struct MatmulProbe {
    m: usize,
    k: usize,
    n: usize,
}

fn compile(
    client: &Client,
    template: &str,
    p: &impl Serialize,
    what: &str,
) -> Result<runtime::pjrt::Executable, BenchError> {
    let mut ctx = tera::Context::new();
    ctx.insert("p", p);
    ctx.insert("header", &emit::header(what));
    let module = emit::render_checked(template, &ctx).map_err(crate::Error::from)?;
    client
        .compile(&module.generic_text, &CompileOptions::new())
        .map_err(pjrt(format!("compiling the {what}")))
}

/// GB/s of a device-side sum over 256 MiB (a read-only stream, like a decode step's weight
/// reads), best of 15 after 2 warm-ups. A best-of-5 with no warm-up read 33.5-41.0 GB/s over
/// five runs where this reads 40.1-48.9 on the same host: it caught the memory at its fastest
/// less often, so the batch-1 bound came out low.
pub fn bandwidth(client: &Client) -> Result<f64, BenchError> {
    let n = 64 << 20; // f32 elements
    let exe = compile(
        client,
        "probe_bandwidth.stablehlo.mlir.tera",
        &BandwidthProbe { n },
        "bandwidth probe",
    )?;
    let x = client
        .buffer_from_host(&vec![0f32; n], &[n as i64])
        .map_err(pjrt("uploading the bandwidth probe"))?;
    let best = run_times(&exe, &[&x], 2, 15).map_err(pjrt("running the bandwidth probe"))?[0];
    Ok((n * 4) as f64 / best / 1e9)
}

/// GFLOP/s of an f32 `[m, k] x [k, n]` on the device, best of 30 after 3 warm-ups (a best-of-5
/// with no warm-up measured 208-438 GFLOP/s over five runs, this 402-434).
pub fn matmul(client: &Client, m: usize, k: usize, n: usize) -> Result<f64, BenchError> {
    let exe = compile(
        client,
        "probe_matmul.stablehlo.mlir.tera",
        &MatmulProbe { m, k, n },
        "matmul probe",
    )?;
    let up = |v: f32, r: usize, c: usize| {
        client
            .buffer_from_host(&vec![v; r * c], &[r as i64, c as i64])
            .map_err(pjrt("uploading the matmul probe"))
    };
    let (a, b) = (up(0.5, m, k)?, up(0.25, k, n)?);
    let best = run_times(&exe, &[&a, &b], 3, 30).map_err(pjrt("running the matmul probe"))?[0];
    Ok((2 * m * k * n) as f64 / best / 1e9)
}
