//! Every ggml type kernelgen reads, dequantized from random raw blocks, equals the PyPI `gguf`
//! package's `gguf.quants.dequantize` (an independent implementation, numpy) bit for bit.
//!
//! Blocks are uniform random bytes, with every f16/bf16/f32 scale or value field redrawn until it
//! is finite (any finite value: subnormals, negatives, up to the format's max), so outputs are
//! finite and comparable bitwise. The `gguf` venv is created in the cache on first use
//! (`pip install --no-deps gguf==0.19.0 numpy pyyaml`, ~20 s). Seed: fresh each run, printed;
//! `GGUF_TEST_SEED` replays it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime::model::gguf::{dequantize, type_name, GgmlType};
use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGES: &[&str] = &["gguf==0.19.0", "numpy==2.4.6", "pyyaml==6.0.3"];

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's python, created with the pinned packages if missing.
fn gguf_python() -> PathBuf {
    let venv = runtime::cache::cache_dir().join("venv/gguf-py");
    let python = venv.join("bin/python");
    let stamp = venv.join(".kernelgen-pinned");
    let wanted = PACKAGES.join(" ");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted) {
        return python;
    }
    eprintln!("creating {} ({wanted})", venv.display());
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--no-deps"])
            .args(PACKAGES),
        "pip install",
    );
    std::fs::write(&stamp, wanted).unwrap();
    python
}

/// Byte offsets of the float fields of one block, and their width (2 = f16/bf16, 4 = f32).
fn float_fields(ty: GgmlType) -> (Vec<usize>, usize) {
    use GgmlType::*;
    let (_, size) = ty.block();
    match ty {
        F32 => (vec![0], 4),
        F16 | BF16 => (vec![0], 2),
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL => (vec![0], 2),
        Q4_1 | Q5_1 | Q4_K | Q5_K => (vec![0, 2], 2),
        Q2_K => (vec![size - 4, size - 2], 2),
        Q3_K | Q6_K => (vec![size - 2], 2),
    }
}

/// Whether the bits at `b` (of `width` bytes, `ty`'s float kind) are NaN or infinite.
fn non_finite(ty: GgmlType, b: &[u8]) -> bool {
    match (ty, b.len()) {
        (GgmlType::F32, 4) => !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite(),
        (GgmlType::BF16, 2) => !half::bf16::from_le_bytes([b[0], b[1]]).is_finite(),
        (_, 2) => !half::f16::from_le_bytes([b[0], b[1]]).is_finite(),
        _ => unreachable!(),
    }
}

/// `blocks` random blocks of `ty` with finite float fields.
fn random_blocks(ty: GgmlType, blocks: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (_, size) = ty.block();
    let (fields, width) = float_fields(ty);
    let mut out = vec![0u8; blocks * size];
    for block in out.chunks_exact_mut(size) {
        rng.fill(block);
        for &at in &fields {
            while non_finite(ty, &block[at..at + width]) {
                rng.fill(&mut block[at..at + width]);
            }
        }
    }
    out
}

#[test]
fn every_type_dequantizes_like_the_gguf_package() {
    let seed = std::env::var("GGUF_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (GGUF_TEST_SEED={seed} replays it)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let python = gguf_python();
    let dir = std::env::temp_dir().join(format!("kg-gguf-py-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cases = Vec::new();
    let mut inputs = Vec::new();
    for ty in GgmlType::ALL {
        let (per, _) = ty.block();
        // 4096 values, at least 64 blocks
        let raw = random_blocks(ty, (4096 / per).max(64), &mut rng);
        let name = type_name(ty.id());
        let input = dir.join(format!("{name}.bin"));
        let output = dir.join(format!("{name}.f32"));
        std::fs::write(&input, &raw).unwrap();
        cases.push(serde_json::json!({"type": name, "input": input, "output": output}));
        inputs.push((ty, raw, output));
    }
    let cases_file = dir.join("cases.json");
    std::fs::write(&cases_file, serde_json::to_string(&cases).unwrap()).unwrap();
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/gguf_dequant.py");
    run(
        Command::new(&python).arg(&harness).arg(&cases_file),
        "gguf_dequant.py",
    );
    for (ty, raw, output) in inputs {
        let theirs: Vec<u32> = std::fs::read(&output)
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (per, size) = ty.block();
        let ours = dequantize(ty, &raw, raw.len() / size * per).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ty:?}: element count");
        for (i, (a, &b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                a.to_bits() == b || (a.is_nan() && f32::from_bits(b).is_nan()),
                "{ty:?} element {i} (block {}): kernelgen {a:e} vs gguf {:e} (seed {seed})",
                i / per,
                f32::from_bits(b)
            );
        }
        eprintln!("{ty:?}: {} values equal", ours.len());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
