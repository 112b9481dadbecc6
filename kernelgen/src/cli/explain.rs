//! `kernelgen explain LOG`: a TPU compiler's out-of-memory error beside the checker's account.

use super::args::{CheckOpts, KernelArgs};
use super::check::{exit_code, resolve_request};
use super::print::{print_report, print_suggestions};
use super::ExitCode;
use anyhow::{bail, Context};
use clap::Args;
use kernelgen::vmem::explain::{jax_rpa_call_shapes, parse, reading, Failure};
use kernelgen::vmem::suggest::nearest_fits;
use kernelgen::vmem::{smem, KernelModel, Verdict};
use std::io::Read;
use std::path::PathBuf;

/// Explain a TPU compiler's VMEM/SMEM out-of-memory error for a kernel config
#[derive(Args, Debug)]
#[command(after_help = "\
Reads the compiler's error (a log file, or - for stdin): the scoped-VMEM failure (`Scoped \
allocation with size 16.79M and limit 16.00M ...`), a capacity failure (`Used X of Y vmem|smem`) \
or one allocation over capacity (`Allocation (size=N) would exceed memory ... space=smem`), the \
kernel (JAX's `ragged_paged_attention_kernel` or kernelgen's), and for JAX's kernel the call \
shapes from its operands (sequences, pages per sequence, tokens, heads, head_dim, pages, page \
size), which fill the flags you do not give. The block sizes are not in the log: pass --q and \
--kv as the failing run had them. Prints the compiler's figure beside the checker's (for a \
scoped failure: the kernel's scratch operands with Mosaic's internal scratch), the itemized \
account, the rule broken, and the nearest configs that fit.

Examples:
  kernelgen explain tpu_error.log --target v5p --q 16 --kv 16
  kubectl logs job/serve | kernelgen explain - --target v6e --q 32 --kv 16 --kernel kernelgen")]
pub struct ExplainArgs {
    /// The compiler's error text: a file, or - for stdin
    pub log: PathBuf,
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[command(flatten)]
    pub opts: CheckOpts,
}

pub fn run(mut a: ExplainArgs) -> anyhow::Result<ExitCode> {
    let mut text = String::new();
    if a.log.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
    } else {
        text = std::fs::read_to_string(&a.log)
            .with_context(|| format!("reading {}", a.log.display()))?;
    }
    let log = parse(&text);
    let Some(failure) = &log.failure else {
        bail!(
            "{}: no TPU compiler out-of-memory error found (looked for 'Scoped allocation with size', \
             'Used X of Y vmem|smem' and 'Allocation (size=...) would exceed memory')",
            a.log.display()
        );
    };
    if let Some(k) = log.kernel {
        if k.name() != a.opts.kernel_model {
            println!(
                "note: the log's kernel is {}; checking it (not --kernel {})",
                k.name(),
                a.opts.kernel_model
            );
            a.opts.kernel_model = k.name().to_string();
        }
    }
    if log.kernel == Some(KernelModel::JaxRpa) {
        fill_from_log(&mut a.kernel, &jax_rpa_call_shapes(&log));
    }
    let resolved = resolve_request(&a.kernel.spec(), &a.opts)?;
    let req = resolved.request();
    let report = resolved.check()?;
    let room = smem::room(&resolved.cfg, &resolved.target, report.kernel);
    for line in reading(failure, &report, room, resolved.cfg.page_size() as u64) {
        println!("{line}");
    }
    println!();
    print_report(&report, &resolved.target);
    if report.verdict != Verdict::Fits {
        print_suggestions(&nearest_fits(&req, &report));
    } else if matches!(failure, Failure::Scoped { .. } | Failure::Capacity { .. }) {
        println!(
            "the checker says this config fits: the flags may not be the failing call's (compare \
             the shapes above with the log), or the run used another vmem_limit_bytes"
        );
    }
    Ok(exit_code(report.verdict))
}

/// Sets every call-shape flag the log shows (the failing call's shapes are the log's, whatever
/// the flags say), saying so, and where a flag the user gave differs.
fn fill_from_log(k: &mut KernelArgs, shapes: &[(&'static str, u64)]) {
    for &(flag, v) in shapes {
        let v32 = u32::try_from(v).unwrap_or(u32::MAX);
        let given = match flag {
            "--max-seqs" => k.max_num_seqs.replace(v32),
            "--pages-per-seq" => {
                k.max_model_len = None;
                k.pages_per_seq.replace(v32)
            }
            "--max-tokens" => k.max_num_tokens.replace(v32),
            "--num-q-heads" => k.geometry.num_q_heads.replace(v32),
            "--head-dim" => k.geometry.head_dim.replace(v32),
            "--total-pages" => k.total_pages.replace(v32),
            "--num-kv-heads" => k.geometry.num_kv_heads.replace(v32),
            "--page-size" => Some(std::mem::replace(&mut k.page_size, v32)),
            _ => continue,
        };
        match given {
            Some(g) if g != v32 && flag != "--page-size" => {
                println!("from the log: {flag} {v} (not {g} as given: the log is the failing call)")
            }
            _ => println!("from the log: {flag} {v}"),
        }
    }
}
