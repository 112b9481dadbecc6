//! A TPU PJRT plugin on a machine without TPU hardware: client creation fails promptly with the
//! plugin's message (no crash, no minutes-long metadata retries), and the CLI says so in one line.

use std::time::{Duration, Instant};

fn libtpu() -> std::path::PathBuf {
    kernelgen::tpu::oracle::libtpu_path(&mut |m| eprintln!("{m}")).expect("TPU oracle venv")
}

#[test]
fn libtpu_without_a_tpu_fails_cleanly_at_client_creation() {
    let path = libtpu();
    assert!(path.is_file(), "{} missing", path.display());
    let start = Instant::now();
    let api = runtime::pjrt::Api::load(&path).expect("libtpu loads as a PJRT plugin");
    let err = runtime::pjrt::Client::new(api)
        .err()
        .unwrap_or_else(|| panic!("no TPU on this machine: client creation must fail"));
    let msg = err.to_string();
    assert!(
        msg.contains("PJRT_Client_Create") && msg.contains("TPU"),
        "{msg}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
}
