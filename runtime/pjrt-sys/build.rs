//! Generates Rust bindings for `pjrt_c_api.h`.
//!
//! The header is not vendored: it comes from the pinned PJRT CPU plugin wheel that
//! `scripts/setup.sh` unpacks, so the bindings always match the plugin we load at run time.
//! Lookup order:
//!   1. `$PJRT_C_API_HEADER` (explicit path to a `pjrt_c_api.h`),
//!   2. `$KERNELGEN_CACHE/<PLUGIN_REL_DIR>/include/pjrt_c_api.h`,
//!   3. `<workspace>/.cache/<PLUGIN_REL_DIR>/include/pjrt_c_api.h`.

use std::env;
use std::path::PathBuf;

/// Where `scripts/setup.sh` unpacks the plugin wheel, relative to the cache root.
const PLUGIN_REL_DIR: &str = "pjrt/xla-cpu-pjrt-0.0.1/xla_plugins/xla_cpu_pjrt";

fn header_path() -> PathBuf {
    if let Some(p) = env::var_os("PJRT_C_API_HEADER") {
        return PathBuf::from(p);
    }
    let cache = match env::var_os("KERNELGEN_CACHE") {
        Some(c) => PathBuf::from(c),
        None => {
            let manifest = PathBuf::from(
                env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
            );
            manifest.join("../../.cache")
        }
    };
    cache.join(PLUGIN_REL_DIR).join("include/pjrt_c_api.h")
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PJRT_C_API_HEADER");
    println!("cargo:rerun-if-env-changed=KERNELGEN_CACHE");

    let header = header_path();
    // Watch the path even when it is missing: cargo reruns the script until it appears.
    println!("cargo:rerun-if-changed={}", header.display());
    if !header.is_file() {
        // Cargo prints the script's stderr when it fails; a plain exit avoids a backtrace.
        eprintln!(
            "pjrt-sys: PJRT C API header not found at {}\n\
             Run `scripts/setup.sh` from the repository root to download the PJRT CPU plugin \
             (it ships the header), or point $PJRT_C_API_HEADER at a pjrt_c_api.h.",
            header.display()
        );
        std::process::exit(1);
    }
    let header = header.canonicalize().unwrap_or(header);

    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .allowlist_type("PJRT_.*")
        .allowlist_var("PJRT_.*")
        // Plain integer constants for C enums: the plugin may hand back values this header
        // does not know, which would be UB for a Rust enum.
        .default_enum_style(bindgen::EnumVariation::Consts)
        // `PJRT_Buffer_Type_F32`, not `PJRT_Buffer_Type_PJRT_Buffer_Type_F32`.
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(true)
        .impl_debug(false)
        .layout_tests(true)
        .generate_comments(true)
        .generate()
        .unwrap_or_else(|e| panic!("pjrt-sys: bindgen failed on {}: {e}", header.display()));

    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("bindings.rs");
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| panic!("pjrt-sys: cannot write {}: {e}", out.display()));
    println!("cargo:rustc-env=PJRT_SYS_HEADER_PATH={}", header.display());
}
