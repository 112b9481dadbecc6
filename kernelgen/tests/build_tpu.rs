//! `kernelgen build --target T [--emit tpu]`: the Pallas TPU kernel is emitted only for a config
//! the VMEM checker accepts for T (or with a --vmem-limit that makes it fit, baked into the
//! module), lowered for T deviceless and compiled by the real TPU compiler, whose verdict lands in
//! manifest.json beside the checker's.

use std::path::Path;

use crate::common::*;

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn q16_kv16_for_v5p_is_emitted_lowered_and_compiled() {
    let dir = scratch("kernelgen-build-tpu", "q16kv16");
    let d = dir.to_str().unwrap();
    let o = kernelgen(&[
        "build", "--q", "16", "--kv", "16", "--target", "v5p", "--emit", "tpu", "--out", d,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = manifest(&dir);
    for f in [
        "rpa.stablehlo.mlir",
        "rpa.pallas.py",
        "rpa.v5p.stablehlo.mlir",
    ] {
        assert!(m["files"][f]["sha256"].is_string(), "{f} not in manifest");
    }
    let c = &m["extra"]["tpu_compile"];
    assert_eq!(c["target"], "v5p");
    assert_eq!(c["compiler_verdict"], "fits", "{c}");
    // the checker may be unsure close to the limit (within its fitted error; it estimates
    // ~11 MiB against 16 MiB today); where it commits, it must agree with the compiler
    assert!(
        c["checker_verdict"] == "fits" || c["checker_verdict"] == "uncertain",
        "{c}"
    );
    assert_ne!(c["agree"], false, "{c}");
    assert_eq!(c["lowered_file"], "rpa.v5p.stablehlo.mlir");
    assert_eq!(m["extra"]["vmem_check"]["kernel"], "kernelgen");
    // the lowered module carries the Mosaic kernel in a tpu_custom_call
    let lowered = std::fs::read_to_string(dir.join("rpa.v5p.stablehlo.mlir")).unwrap();
    assert!(lowered.contains("tpu_custom_call"), "no tpu_custom_call");
    // the module's header names the config and the checker's estimate for the target
    let module = std::fs::read_to_string(dir.join("rpa.pallas.py")).unwrap();
    assert!(module.contains("q_block=16 kv_pages_block=16"));
    let total = m["extra"]["vmem_check"]["total_bytes"].as_u64().unwrap();
    assert!(module.contains(&format!("checker: {total} bytes on v5p")));
    assert!(module.contains("\nVMEM_LIMIT_BYTES = None\n"));
    // the module takes its KV pool head-major, and the manifest says so beside the StableHLO
    // kernel's token-major `inputs`
    assert!(module.contains("\nKV_LAYOUT = \"HND\"\n"));
    let p = &m["extra"]["pallas"];
    assert_eq!(p["kv_layout"], "HND", "{p}");
    let pages = m["config"]["total_pages"].as_u64().unwrap();
    assert_eq!(
        p["kv_pages"]["shape"],
        serde_json::json!([pages, 16, 64, 128]),
        "{p}"
    );
    let stablehlo_kv = &m["inputs"][1];
    assert_eq!(
        stablehlo_kv["shape"],
        serde_json::json!([pages, 64, 16, 128])
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_config_that_does_not_fit_is_refused_unless_the_limit_is_raised() {
    // Llama-3-8B, page 64, q128 kv16 on v5p: the exact buffers alone take 18.0 MiB of the
    // 16 MiB limit, so no spill error can make it fit; at 48 MiB the checker's whole range
    // (up to ~24 MiB) fits, and the compiler agrees.
    let dir = scratch("kernelgen-build-tpu", "q128kv16");
    let d = dir.to_str().unwrap();
    let base = [
        "build", "--q", "128", "--kv", "16", "--target", "v5p", "--out", d,
    ];
    let o = kernelgen(&base);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("refusing to build"), "{err}");
    assert!(err.contains("--vmem-limit"), "{err}");
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        report.contains("kv_buf") && report.contains("DOES NOT FIT"),
        "{report}"
    );
    assert!(!dir.exists(), "a refused build wrote {}", dir.display());

    let mut raised = base.to_vec();
    raised.extend(["--vmem-limit", "48MiB", "--emit", "tpu"]);
    let o = kernelgen(&raised);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let c = &manifest(&dir)["extra"]["tpu_compile"];
    assert_eq!(c["vmem_limit_bytes"], 48u64 << 20);
    assert_eq!(c["compiler_verdict"], "fits", "{c}");
    let module = std::fs::read_to_string(dir.join("rpa.pallas.py")).unwrap();
    assert!(module.contains(&format!("\nVMEM_LIMIT_BYTES = {}\n", 48u64 << 20)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_tpu_flags_are_one_line_input_errors() {
    let cases: [&[&str]; 4] = [
        &["build", "--q", "16", "--kv", "8", "--emit", "tpu"],
        &["build", "--q", "16", "--kv", "8", "--target", "v9"],
        &[
            "build",
            "--q",
            "16",
            "--kv",
            "8",
            "--target",
            "v5e",
            "--vmem-limit",
            "1TiB",
        ],
        &[
            "build",
            "--q",
            "16",
            "--kv",
            "8",
            "--target",
            "v5e",
            "--vmem-limit",
            "lots",
        ],
    ];
    for args in cases {
        let o = kernelgen(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            o.stdout.is_empty(),
            "{args:?} printed {:?}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

/// The TPU artifact given to the runtime with libtpu on a machine without a TPU: one clear error
/// at client creation, promptly, no crash.
#[test]
fn verify_with_libtpu_and_no_tpu_fails_at_client_creation() {
    let libtpu =
        kernelgen::tpu::oracle::libtpu_path(&mut |m| eprintln!("{m}")).expect("TPU oracle venv");
    let dir = scratch("kernelgen-build-tpu", "libtpu");
    let d = dir.to_str().unwrap();
    let o = kernelgen(&[
        "build", "--q", "16", "--kv", "8", "--target", "v5e", "--out", d,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let start = std::time::Instant::now();
    let o = kernelgen(&["verify", d, "--plugin", libtpu.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: creating a PJRT client") && last.contains("TPU"),
        "{err}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    std::fs::remove_dir_all(&dir).unwrap();
}
