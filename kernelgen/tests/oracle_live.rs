//! `kernelgen check --oracle` end to end: the toolkit creates its pinned jax/libtpu venv on first
//! use, compiles with the real TPU compiler (deviceless), and agrees with the model on a config
//! that fits and on the user-reported out-of-memory config.

use std::process::Command;

fn check_with_oracle(args: &[&str]) -> serde_json::Value {
    let mut all = vec![
        "check",
        "--oracle",
        "--json",
        "--target",
        "v5p",
        "--preset",
        "llama3-8b",
    ];
    all.extend_from_slice(args);
    let o = Command::new(env!("CARGO_BIN_EXE_kernelgen"))
        .args(&all)
        .output()
        .unwrap();
    assert!(
        matches!(o.status.code(), Some(0 | 3 | 4)),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn live_oracle_agrees_with_the_model() {
    let fits = check_with_oracle(&["--page-size", "64", "--q", "16", "--kv", "16"]);
    assert_eq!(fits["verdict"], "fits");
    assert_eq!(fits["oracle"]["verdict"], "fits", "{}", fits["oracle"]);
    let oom = check_with_oracle(&["--page-size", "128", "--q", "16", "--kv", "16"]);
    assert_eq!(oom["verdict"], "does_not_fit");
    assert_eq!(oom["oracle"]["verdict"], "vmem_oom", "{}", oom["oracle"]);
    // the compiler's own figure: "Scoped allocation with size 16.79M and limit 16.00M"
    let size = oom["oracle"]["size_bytes"].as_u64().unwrap();
    assert!((17_550_000..17_650_000).contains(&size), "{size}");
    assert!(oom["oracle"]["message"]
        .as_str()
        .unwrap()
        .contains("16.79M"));
}
