//! `kernelgen check` and `kernelgen plan` as users run them: exit codes (0 fits, 3 does not fit,
//! 4 uncertain, 1 input error), the itemized JSON report, suggestions, and the CI matrix gate.

use crate::common::*;

#[test]
fn reported_oom_does_not_fit_and_suggests_what_fits() {
    // Llama-3-8B, page 128, q16 kv16 on v5p: the compiler's "16.79M > 16.00M".
    let o = kernelgen(&[
        "check",
        "--target",
        "v5p",
        "--preset",
        "llama3-8b",
        "--page-size",
        "128",
        "--q",
        "16",
        "--kv",
        "16",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = json(&o);
    assert_eq!(r["verdict"], "does_not_fit");
    let kv = r["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "kv_bufs")
        .unwrap();
    assert_eq!(kv["shape"], serde_json::json!([2, 16, 128, 16, 128]));
    assert_eq!(kv["bytes"], 16 << 20);
    // kernel scratch + internal scratch = the compiler's stage-1 size, 17,600,512 bytes
    let stage1: u64 = r["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["exact"] == true && !b["name"].as_str().unwrap().ends_with("window"))
        .map(|b| b["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(stage1, 17_600_512);
    assert_eq!(r["scoped"]["exceeds_limit"], true);
    assert_eq!(
        r["scoped"]["scratch_bytes"].as_u64().unwrap()
            + r["scoped"]["internal_bytes"].as_u64().unwrap(),
        stage1
    );
    // The text report speaks the compiler's numbers: the user's "16.79M", "16.00M", "804.0K".
    let text = kernelgen(&[
        "check",
        "--target",
        "v5p",
        "--preset",
        "llama3-8b",
        "--page-size",
        "128",
        "--q",
        "16",
        "--kv",
        "16",
    ]);
    let out = String::from_utf8_lossy(&text.stdout);
    for figure in ["16.79M", "16.00M", "804.0K"] {
        assert!(out.contains(figure), "{figure} missing:\n{out}");
    }
    let suggestions = r["suggestions"].as_array().unwrap();
    assert!(
        suggestions
            .iter()
            .any(|s| s["change"].as_str().unwrap().starts_with("--kv ")),
        "{suggestions:?}"
    );
    assert!(suggestions
        .iter()
        .any(|s| s["change"].as_str().unwrap().starts_with("--vmem-limit ")));
    // every suggestion really fits when checked
    for s in suggestions {
        let change = s["change"]
            .as_str()
            .unwrap()
            .split(" (")
            .next()
            .unwrap()
            .to_string();
        let mut args: Vec<String> = [
            "check",
            "--target",
            "v5p",
            "--preset",
            "llama3-8b",
            "--page-size",
            "128",
            "--q",
            "16",
            "--kv",
            "16",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flag, value) = change.split_once(' ').unwrap();
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            kernelgen(&args).status.code(),
            Some(0),
            "suggestion {change} does not fit"
        );
    }
}

#[test]
fn fitting_config_exits_0_and_table_names_every_buffer() {
    let o = kernelgen(&[
        "check",
        "--target",
        "v5p",
        "--page-size",
        "64",
        "--q",
        "16",
        "--kv",
        "16",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    for item in [
        "kv_bufs",
        "l_ref",
        "m_ref",
        "acc_ref",
        "q window",
        "o window",
        "internal scratch",
        "spills",
        "limit",
        "margin",
        "smem",
        "verdict",
    ] {
        assert!(text.contains(item), "missing {item}:\n{text}");
    }
}

#[test]
fn uncertain_exits_4_and_points_at_the_oracle() {
    // Scan for a config the model cannot decide (within its measured error of the limit).
    for q in [8, 16, 24, 32] {
        for kv in [12, 16, 20, 24] {
            let (q, kv) = (q.to_string(), kv.to_string());
            let o = kernelgen(&[
                "check",
                "--target",
                "v5p",
                "--page-size",
                "64",
                "--q",
                &q,
                "--kv",
                &kv,
            ]);
            if o.status.code() == Some(4) {
                assert!(String::from_utf8_lossy(&o.stdout).contains("--oracle"));
                return;
            }
        }
    }
    panic!("no uncertain config found near the v5p limit");
}

#[test]
fn input_errors_exit_1_with_one_line() {
    for args in [
        vec!["check", "--target", "v9", "--q", "16", "--kv", "16"],
        vec![
            "check",
            "--target",
            "v5p",
            "--q",
            "16",
            "--kv",
            "16",
            "--vmem-limit",
            "100MiB",
        ],
        vec![
            "check", "--target", "v5p", "--q", "16", "--kv", "16", "--tp", "3",
        ],
        vec!["check", "--target", "v5p", "--kv", "16"],
        vec![
            "check",
            "--target",
            "v5p",
            "--q",
            "16",
            "--kv",
            "16",
            "--vmem-limit",
            "lots",
        ],
    ] {
        let o = kernelgen(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        if args.contains(&"--tp") {
            assert!(err.contains("tp = 3"), "the error names the value: {err}");
        }
    }
}

#[test]
fn tensor_parallel_divides_heads() {
    let o = kernelgen(&[
        "check",
        "--target",
        "v5p",
        "--page-size",
        "64",
        "--q",
        "32",
        "--kv",
        "32",
        "--tp",
        "4",
        "--json",
    ]);
    let r = json(&o);
    assert!(
        r["config"].as_str().unwrap().contains("heads=8q/2kv"),
        "{}",
        r["config"]
    );
}

#[test]
fn matrix_gate_fails_on_a_wrong_expectation() {
    let ok = kernelgen(&[
        "check",
        "--matrix",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/vmem.toml"),
    ]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let dir = std::env::temp_dir().join(format!("kg-matrix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.toml");
    std::fs::write(
        &path,
        "[[check]]\nname = \"oom\"\ntargets = [\"v5p\"]\npage-size = 128\nq = 16\nkv = 16\n",
    )
    .unwrap();
    let bad = kernelgen(&["check", "--matrix", path.to_str().unwrap(), "--json"]);
    assert_eq!(bad.status.code(), Some(3));
    assert_eq!(json(&bad)["passed"], false);
    std::fs::write(
        &path,
        "[[check]]\nname = \"typo\"\ntargets = [\"v5p\"]\nq = 16\nkvv = 16\n",
    )
    .unwrap();
    let typo = kernelgen(&["check", "--matrix", path.to_str().unwrap()]);
    assert_eq!(typo.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&typo.stderr).contains("kvv"));
}

#[test]
fn plan_rejects_the_documented_examples() {
    let base = [
        "plan",
        "--target",
        "v5p",
        "--preset",
        "llama3-8b",
        "--page-size",
        "64",
        "--max-prompt-len",
        "64",
        "--max-new-tokens",
        "2048",
        "--q",
        "32",
        "--kv",
        "16",
    ];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        kernelgen(&a)
    };
    let o = run(&["--max-seqs", "16", "--max-pages", "480"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).contains("needs 528 pages"));
    let fit = run(&["--max-seqs", "124", "--max-pages", "4096", "--json"]);
    let r = json(&fit);
    assert!(
        r["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["ok"] == true),
        "{r}"
    );
    let over = run(&["--max-seqs", "125", "--max-pages", "4096"]);
    assert_eq!(over.status.code(), Some(3));
    let text = String::from_utf8_lossy(&over.stdout);
    assert!(text.contains("max_seqs 124"), "{text}");
    assert!(
        text.contains("[levanter]"),
        "Levanter's own rules are marked: {text}"
    );
    // kernelgen's engine has no fused decode loop or whole-prompt prefill: no such rules.
    let ours = json(&run(&[
        "--max-seqs",
        "124",
        "--max-pages",
        "4096",
        "--engine",
        "kernelgen",
        "--json",
    ]));
    let names: Vec<&str> = ours["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"decode token budget") && !names.contains(&"prefill capacity"),
        "{names:?}"
    );
    assert!(ours["plan"]["levanter"].is_null());
}

/// A page table too large for SMEM: `plan` names the most sequences, and the longest sequence,
/// whose page tables fit; each suggestion, planned again, passes the kernel's SMEM check.
#[test]
fn plan_names_the_page_tables_that_fit_smem() {
    let base = [
        "plan",
        "--target",
        "v5p",
        "--preset",
        "llama3-8b",
        "--page-size",
        "16",
        "--q",
        "32",
        "--kv",
        "16",
        "--max-prompt-len",
        "64",
        "--max-pages",
        "400000",
    ];
    let run = |seqs: &str, new_tokens: &str, json: bool| {
        let mut args = base.to_vec();
        args.extend(["--max-seqs", seqs, "--max-new-tokens", new_tokens]);
        if json {
            args.push("--json");
        }
        kernelgen(&args)
    };
    let text = run("1024", "4096", false);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(out.contains("fix: max_seqs "), "{out}");
    let r = json(&run("1024", "4096", true));
    let k = &r["kernel"][0];
    assert_eq!(k["report"]["smem"]["verdict"], "does_not_fit");
    let seqs = k["smem_room"]["max_num_seqs"].as_u64().unwrap();
    let pps = k["smem_room"]["pages_per_seq"].as_u64().unwrap();
    assert!(
        seqs < 1024 && out.contains(&format!("max_seqs {seqs} ")),
        "{out}"
    );
    let smem_ok = |o: &std::process::Output| {
        let r = json(o);
        r["kernel"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["report"]["smem"]["verdict"] == "fits")
    };
    assert!(
        smem_ok(&run(&seqs.to_string(), "4096", true)),
        "max_seqs {seqs} fits"
    );
    assert!(
        !smem_ok(&run(&(seqs + 1).to_string(), "4096", true)),
        "and is the most"
    );
    // max_seq_len = pages_per_seq x 16 = 64 prompt + new tokens
    let new_tokens = pps * 16 - 64;
    assert!(
        smem_ok(&run("1024", &new_tokens.to_string(), true)),
        "max_seq_len {} fits",
        pps * 16
    );
}

/// `kernelgen explain` on three real failures of the deviceless TPU compiler (libtpu 0.0.50.1,
/// `kernelgen/tests/data/explain/`): JAX's kernel and kernelgen's out of scoped VMEM, and JAX's
/// page table out of SMEM. Each is matched to its config and gets the right advice.
#[test]
fn explain_reads_real_compiler_failures() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/explain/");
    let explain = |log: &str, extra: &[&str]| {
        let path = format!("{data}{log}");
        let mut args = vec!["explain", path.as_str(), "--target", "v5p"];
        args.extend_from_slice(extra);
        let o = kernelgen(&args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr(&o),
        )
    };
    // JAX's kernel: the call shapes come from the log; only the blocks are given.
    let (code, out, err) = explain("jax_rpa_vmem_v5p.log", &["--q", "16", "--kv", "16"]);
    assert_eq!(code, Some(3), "{out}{err}");
    for want in [
        "from the log: --page-size 128",
        "from the log: --max-seqs 128",
        "scoped VMEM allocation of 16.79M over the limit 16.00M by 804.0K",
        "= 16.79M: the compiler's figure",
        "--kv 8 ",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    // kernelgen's kernel (its log names it; the flags give the geometry).
    let (code, out, _) = explain(
        "kernelgen_vmem_v5p.log",
        &[
            "--q",
            "16",
            "--kv",
            "16",
            "--page-size",
            "128",
            "--preset",
            "llama3-8b",
        ],
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("the log's kernel is kernelgen"), "{out}");
    assert!(
        out.contains("allocation of 16.75M") && out.contains("the compiler's figure"),
        "{out}"
    );
    // SMEM: the page table, and the knobs that fit; the suggestion checks clean.
    let smem_flags = [
        "--q",
        "32",
        "--kv",
        "16",
        "--page-size",
        "16",
        "--max-seqs",
        "1024",
        "--max-model-len",
        "4160",
        "--max-tokens",
        "1024",
        "--total-pages",
        "65536",
    ];
    let (code, out, _) = explain("jax_rpa_smem_v5p.log", &smem_flags);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("page_indices [1024, 260]: 1.50M"), "{out}");
    let seqs = out
        .split("fix:      --max-seqs ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no max-seqs fix:\n{out}"))
        .to_string();
    let mut again: Vec<&str> = vec!["check", "--target", "v5p", "--json"];
    again.extend_from_slice(&smem_flags);
    let i = again.iter().position(|a| *a == "1024").unwrap();
    again[i] = seqs.as_str();
    let r = json(&kernelgen(&again));
    assert_eq!(r["smem"]["verdict"], "fits", "--max-seqs {seqs}");
    // Not a memory error: refused, naming what was looked for.
    let junk = crate::common::scratch("kg-explain", "junk.log");
    std::fs::write(&junk, "Segmentation fault").unwrap();
    let o = kernelgen(&[
        "explain",
        junk.to_str().unwrap(),
        "--target",
        "v5p",
        "--q",
        "16",
        "--kv",
        "16",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no TPU compiler out-of-memory error"),
        "{}",
        stderr(&o)
    );
}
