//! How VMEM reports, suggestions and the TPU compiler's verdicts print (`check`, `build`,
//! `check --matrix`).

use kernelgen::target::{fmt_bytes, fmt_compiler_bytes, Target};
use kernelgen::tpu::{CompilerVerdict, OracleResponse};
use kernelgen::vmem::matrix::MatrixReport;
use kernelgen::vmem::suggest::Suggestion;
use kernelgen::vmem::{LimitSource, Verdict, VmemReport};

fn dims(v: &[u64]) -> String {
    v.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

pub fn print_report(r: &VmemReport, t: &Target) {
    println!("{} on {}: {}", r.kernel.name(), t.name, r.config);
    for n in &r.notes {
        println!("note: {n}");
    }
    println!(
        "{:<17} {:<22} {:<22} {:>6} {:>12}",
        "buffer", "shape", "padded", "copies", "bytes"
    );
    for b in &r.buffers {
        let bytes = if b.exact {
            fmt_bytes(b.bytes)
        } else {
            format!("~{}", fmt_bytes(b.bytes))
        };
        if b.exact {
            println!(
                "{:<17} {:<22} {:<22} {:>6} {:>12}",
                b.name,
                format!("{} {}", dims(&b.shape), b.dtype),
                dims(&b.padded_shape),
                b.copies,
                bytes
            );
        } else {
            println!(
                "{:<17} {:<53} {:>12}",
                b.name, "(fitted to the TPU compiler)", bytes
            );
        }
    }
    let upper = r
        .upper_bytes
        .map(fmt_bytes)
        .unwrap_or_else(|| "unbounded (no spill calibration)".into());
    println!(
        "{:<17} {} (exact buffers {}; range {} .. {})",
        "total",
        fmt_bytes(r.total_bytes),
        fmt_bytes(r.explicit_bytes),
        fmt_bytes(r.lower_bytes),
        upper
    );
    let source = match r.limit_source {
        LimitSource::TargetDefault => format!("{} default scoped limit", t.name),
        LimitSource::Explicit => "vmem_limit_bytes".to_string(),
    };
    println!(
        "{:<17} {} ({source}; physical VMEM {})",
        "limit",
        fmt_bytes(r.limit_bytes),
        fmt_bytes(t.vmem_bytes)
    );
    let s = &r.scoped;
    let (total, scratch) = (
        fmt_compiler_bytes(s.total_bytes()),
        fmt_compiler_bytes(s.scratch_bytes),
    );
    let sum = format!(
        "{total} = {scratch} scratch + {} internal",
        fmt_compiler_bytes(s.internal_bytes)
    );
    if s.exceeds_limit {
        println!(
            "{:<17} {sum}: over the limit by {}, so the compile stops there whatever the spills;",
            "scoped alloc",
            fmt_compiler_bytes(s.total_bytes() - r.limit_bytes)
        );
        println!(
            "{:<17} the compiler's error: \"Scoped allocation with size {total} and limit {}\" ({scratch} on some targets)",
            "",
            fmt_compiler_bytes(r.limit_bytes)
        );
    } else {
        println!(
            "{:<17} {sum}, under the limit: the verdict rests on the total (windows and spills come next)",
            "scoped alloc"
        );
    }
    let margin = if r.margin_bytes >= 0 {
        fmt_bytes(r.margin_bytes as u64)
    } else {
        format!("-{}", fmt_bytes(r.margin_bytes.unsigned_abs()))
    };
    println!("{:<17} {margin}", "margin");
    println!(
        "{:<17} {} of {} ({})",
        "smem",
        fmt_bytes(r.smem.total_bytes),
        fmt_bytes(r.smem.capacity_bytes),
        r.smem.verdict
    );
    println!(
        "{:<17} {} of {} HBM ({})",
        "operands",
        fmt_bytes(r.hbm.operand_bytes),
        fmt_bytes(r.hbm.capacity_bytes),
        r.hbm.verdict
    );
    let hint = if r.verdict == Verdict::Uncertain {
        "  (within the spill model's error: run with --oracle)"
    } else {
        ""
    };
    println!(
        "{:<17} {}{hint}",
        "verdict",
        r.verdict.to_string().to_uppercase()
    );
}

pub fn print_suggestions(s: &[Suggestion]) {
    if s.is_empty() {
        return;
    }
    println!("nearest configs that fit:");
    for x in s {
        println!(
            "  {:<40} total {} under limit {}",
            x.change,
            fmt_bytes(x.total_bytes),
            fmt_bytes(x.limit_bytes)
        );
    }
}

/// The real compiler's verdict in one phrase: `FITS`, `DOES NOT FIT (scoped VMEM X of limit Y)`
/// or `ERROR: first line`.
pub fn describe_compiler(
    verdict: CompilerVerdict,
    size: Option<u64>,
    limit: Option<u64>,
    message: &str,
) -> String {
    match verdict {
        CompilerVerdict::Fits => "FITS".to_string(),
        CompilerVerdict::VmemOom | CompilerVerdict::SmemOom => format!(
            "DOES NOT FIT ({} {} of limit {})",
            if verdict == CompilerVerdict::SmemOom {
                "SMEM"
            } else {
                "scoped VMEM"
            },
            size.map(fmt_bytes).unwrap_or_default(),
            limit.map(fmt_bytes).unwrap_or_default()
        ),
        CompilerVerdict::HbmOom => "DOES NOT FIT (HBM)".to_string(),
        CompilerVerdict::Timeout => "NO VERDICT (timed out)".to_string(),
        CompilerVerdict::Error => format!("ERROR: {}", message.lines().next().unwrap_or("")),
    }
}

pub fn print_oracle(o: &OracleResponse, r: &VmemReport) {
    let verdict = describe_compiler(o.verdict, o.size_bytes, o.limit_bytes, &o.message);
    println!(
        "{:<17} {verdict} (real TPU compiler, {:.1} s); model said {}",
        "oracle", o.compile_s, r.verdict
    );
}

/// The VMEM gate's table.
pub fn print_matrix(m: &MatrixReport) {
    let w = m
        .rows
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:<w$} {:<5} {:>12} {:>12}  {:<13} {:<13}",
        "check", "tgt", "total", "limit", "verdict", "expected"
    );
    for r in &m.rows {
        println!(
            "{:<w$} {:<5} {:>12} {:>12}  {:<13} {:<13} {}",
            r.name,
            r.target,
            fmt_bytes(r.total_bytes),
            fmt_bytes(r.limit_bytes),
            r.verdict.to_string(),
            r.expect.to_string(),
            if r.ok { "ok" } else { "MISMATCH" }
        );
    }
    println!(
        "{} checks, {} mismatches",
        m.rows.len(),
        m.rows.iter().filter(|r| !r.ok).count()
    );
}
