//! The emitted Pallas kernel compiled deviceless by the real TPU compiler (jax 0.12.0.1 + libtpu
//! 0.0.50.1, compile-only v5e/v5p/v6e devices) over a sweep of configs, fitting and not: wherever
//! the VMEM checker's `--kernel kernelgen` model commits to a verdict, the compiler agrees.
//!
//! The committed calibration data (`vmem_agreement.rs`) covers ~120 points; this test re-runs a
//! spread of them live so a change to the template that shifts VMEM use is caught here.

use kernelgen::config::{Dtype, Geometry, KernelConfig, KernelParams};
use kernelgen::target::Target;
use kernelgen::tpu::Oracle;
use kernelgen::tpu::{cached_module, compiler_verdict, oracle_request};
use kernelgen::vmem::{check, CheckRequest, KernelModel, Verdict};

fn config(heads: (u32, u32, u32), dtype: Dtype, page: u32, q: u32, kv: u32) -> KernelConfig {
    let mut p = KernelParams::with_defaults(
        Geometry {
            num_q_heads: heads.0,
            num_kv_heads: heads.1,
            head_dim: heads.2,
        },
        q,
        kv,
    );
    p.dtype = dtype;
    p.page_size = page;
    p.pages_per_seq = 64;
    p.total_pages = 1024;
    KernelConfig::new(p).unwrap()
}

#[test]
fn compiler_agrees_with_the_checker_on_v5e_v5p_v6e() {
    const LLAMA: (u32, u32, u32) = (32, 8, 128);
    const SMOL: (u32, u32, u32) = (9, 3, 64);
    let configs = [
        config(LLAMA, Dtype::Bf16, 64, 16, 16),
        config(LLAMA, Dtype::Bf16, 64, 32, 16),
        config(LLAMA, Dtype::Bf16, 128, 16, 16),
        config(LLAMA, Dtype::Bf16, 128, 32, 32),
        config(SMOL, Dtype::Bf16, 16, 32, 4),
        config((16, 16, 128), Dtype::F32, 32, 16, 8),
    ];
    let mut oracle = Oracle::start(&mut |m| eprintln!("{m}")).expect("TPU oracle");
    let (mut agree, mut uncertain) = (0, 0);
    let mut seen = std::collections::BTreeSet::new();
    for target in ["v5e", "v5p", "v6e"] {
        let t = Target::find(target).unwrap();
        for cfg in &configs {
            let report = check(&CheckRequest {
                cfg,
                target: t,
                kernel: KernelModel::Kernelgen,
                vmem_limit: None,
            })
            .unwrap();
            let module = cached_module(cfg).unwrap();
            let req = oracle_request(cfg, &t, KernelModel::Kernelgen, None, Some(&module), None);
            let o = oracle.compile(&req).unwrap();
            let compiler = compiler_verdict(&o)
                .unwrap_or_else(|| panic!("{target} {cfg}: compiler error {}", o.message));
            eprintln!(
                "{target} {cfg}: checker {} ({} B, range {}..{:?}), compiler {} {:?} ({:.1} s)",
                report.verdict,
                report.total_bytes,
                report.lower_bytes,
                report.upper_bytes,
                o.verdict,
                o.size_bytes,
                o.compile_s
            );
            match report.verdict {
                Verdict::Uncertain => uncertain += 1,
                v => {
                    assert_eq!(v, compiler, "{target} {cfg}: {}", o.message);
                    agree += 1;
                    seen.insert(format!("{v}"));
                }
            }
        }
    }
    eprintln!("{agree} agree, {uncertain} uncertain");
    assert!(
        seen.contains("fits") && seen.contains("does not fit"),
        "the sweep must exercise both verdicts: {seen:?}"
    );
    // the sweep sits near the limits on purpose; still, most verdicts must be committed ones
    assert!(
        uncertain * 3 <= agree + uncertain,
        "{uncertain} uncertain of {}",
        agree + uncertain
    );
}
