//! The emitted Pallas TPU kernel, run in Pallas' TPU interpret mode on this CPU machine (which
//! simulates VMEM, the kernel's DMAs and semaphores), equals the f64 reference on fresh random
//! ragged batches, across block sizes, page sizes, GQA ratios, dtypes, head dims, sliding window
//! and soft cap; with the race detector on, no DMA races with a read. Batches cycle through
//! clean, NaN, +Inf and -Inf in every KV slot no sequence owns, the padding query rows and (as
//! out-of-range ids) the unused page-table entries, compared with the reference on the clean batch.
//!
//! Inputs are drawn from a new base seed each run (printed; set `PALLAS_TEST_SEED` to replay).
//! All cases go to one harness process, so jax is imported once.

use e2e::small_config;
use kernelgen::config::{Dtype, KernelConfig, KernelParams};
use kernelgen::emit::pallas::{self, PallasDims, VmemBuffer};
use kernelgen::numerics::poison_of;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use verify::npy::NpyArray;
use verify::{BatchSpec, ErrorStats, RaggedBatch};

/// One kernel config and the batches it runs.
struct Kernel {
    name: &'static str,
    cfg: KernelConfig,
    batches: Vec<(&'static str, BatchSpec)>,
    detect_races: bool,
}

fn with(cfg: KernelConfig, window: Option<u32>, cap: Option<f32>) -> KernelConfig {
    KernelConfig::new(KernelParams {
        sliding_window: window,
        soft_cap: cap,
        ..cfg.params().clone()
    })
    .unwrap()
}

fn mixed() -> (&'static str, BatchSpec) {
    ("mixed", BatchSpec::default())
}

fn decode(n: usize) -> (&'static str, BatchSpec) {
    ("decode", BatchSpec::decode_only(n))
}

/// One sequence whose whole prompt is the query (q_len = kv_len when max_num_tokens allows).
fn prompt() -> (&'static str, BatchSpec) {
    (
        "prompt",
        BatchSpec {
            num_seqs: Some(1),
            decode_fraction: 0.0,
            full_prefill_fraction: 1.0,
            kv_len: None,
        },
    )
}

fn kernels() -> Vec<Kernel> {
    use Dtype::{Bf16, F32};
    vec![
        Kernel {
            name: "f32-gqa4-d64-p8-q8-kv2",
            cfg: small_config((8, 2), 64, 8, F32, (8, 2), 32, 3, 4),
            batches: vec![mixed(), mixed(), decode(3)],
            detect_races: false,
        },
        Kernel {
            name: "f32-mha-d128-p16-q16-kv1-window",
            cfg: with(
                small_config((4, 4), 128, 16, F32, (16, 1), 32, 4, 4),
                Some(10),
                None,
            ),
            batches: vec![mixed(), prompt()],
            detect_races: true,
        },
        Kernel {
            name: "f32-gqa3-d64-p8-q5-kv3-softcap",
            cfg: with(
                small_config((9, 3), 64, 8, F32, (5, 3), 48, 3, 6),
                None,
                Some(5.0),
            ),
            batches: vec![mixed(), mixed(), prompt()],
            detect_races: false,
        },
        Kernel {
            // 8 KV heads in f32: two head blocks of 4
            name: "f32-mha8-d64-p4-q4-kv4-window-softcap",
            cfg: with(
                small_config((8, 8), 64, 4, F32, (4, 4), 32, 4, 8),
                Some(7),
                Some(20.0),
            ),
            batches: vec![mixed(), mixed()],
            detect_races: true,
        },
        Kernel {
            // one-token query blocks, one-token pages
            name: "f32-gqa2-d32-p1-q1-kv8",
            cfg: small_config((2, 1), 32, 1, F32, (1, 8), 16, 3, 24),
            batches: vec![mixed(), decode(3)],
            detect_races: false,
        },
        Kernel {
            // SmolLM2's attention geometry
            name: "bf16-gqa3-d64-p16-q16-kv2",
            cfg: small_config((9, 3), 64, 16, Bf16, (16, 2), 48, 4, 6),
            batches: vec![mixed(), mixed(), decode(4), prompt()],
            detect_races: false,
        },
        Kernel {
            name: "bf16-gqa4-d128-p32-q8-kv2-softcap",
            cfg: with(
                small_config((8, 2), 128, 32, Bf16, (8, 2), 64, 3, 4),
                None,
                Some(30.0),
            ),
            batches: vec![mixed(), prompt()],
            detect_races: false,
        },
        Kernel {
            // 16 KV heads in bf16: two head blocks of 8
            name: "bf16-mha16-d64-p8-q8-kv3-window",
            cfg: with(
                small_config((16, 16), 64, 8, Bf16, (8, 3), 32, 3, 6),
                Some(12),
                None,
            ),
            batches: vec![mixed()],
            detect_races: true,
        },
        Kernel {
            // a single query block and a single KV block per sequence
            name: "bf16-gqa4-d64-p16-q48-kv4-window-softcap",
            cfg: with(
                small_config((4, 1), 64, 16, Bf16, (48, 4), 48, 3, 4),
                Some(20),
                Some(10.0),
            ),
            batches: vec![mixed(), prompt()],
            detect_races: false,
        },
        Kernel {
            // 1024-key KV blocks scored in two 512-key chunks (the rolled chunk loop), with a
            // window that ends inside a chunk
            name: "bf16-gqa2-d64-p128-q8-kv8-window-chunks",
            cfg: with(
                small_config((4, 2), 64, 128, Bf16, (8, 8), 32, 3, 16),
                Some(700),
                None,
            ),
            batches: vec![mixed(), decode(3)],
            detect_races: true,
        },
        Kernel {
            // 256 folded rows per KV head: 256-key chunks (`pallas::chunk_keys`), two per block
            name: "f32-gqa8-d32-p32-q32-kv16-rows256-chunks",
            cfg: small_config((8, 1), 32, 32, F32, (32, 16), 64, 2, 32),
            batches: vec![mixed(), decode(2)],
            detect_races: false,
        },
        Kernel {
            name: "f32-mha2-d32-p64-q4-kv16-chunks",
            cfg: small_config((2, 2), 32, 64, F32, (4, 16), 16, 2, 32),
            batches: vec![mixed(), prompt()],
            detect_races: false,
        },
    ]
}

fn base_seed() -> u64 {
    std::env::var("PALLAS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        })
}

fn write_inputs(dir: &Path, cfg: &KernelConfig, b: &RaggedBatch) {
    std::fs::create_dir_all(dir).unwrap();
    let g = cfg.geometry();
    let (t, hq, hkv, d) = (
        cfg.max_num_tokens() as usize,
        g.num_q_heads as usize,
        g.num_kv_heads as usize,
        g.head_dim as usize,
    );
    let (s, pps) = (cfg.max_num_seqs() as usize, cfg.pages_per_seq() as usize);
    let arrays = [
        ("q", NpyArray::f32(&[t, hq, d], b.q.clone())),
        (
            "kv_pages",
            NpyArray::f32(
                &[
                    cfg.total_pages() as usize,
                    cfg.page_size() as usize,
                    2 * hkv,
                    d,
                ],
                b.kv_pages.clone(),
            ),
        ),
        ("kv_lens", NpyArray::i32(&[s], b.kv_lens.clone())),
        (
            "page_indices",
            NpyArray::i32(&[s, pps], b.page_indices.clone()),
        ),
        ("cu_q_lens", NpyArray::i32(&[s + 1], b.cu_q_lens.clone())),
        ("num_seqs", NpyArray::i32(&[1], vec![b.num_seqs])),
    ];
    for (name, a) in arrays {
        a.write(&dir.join(format!("{name}.npy"))).unwrap();
    }
}

struct Case {
    label: String,
    cfg: KernelConfig,
    /// The batch before poisoning: the reference's input.
    batch: RaggedBatch,
    outdir: PathBuf,
    detect_races: bool,
}

#[test]
fn emitted_pallas_kernel_matches_the_reference_in_interpret_mode() {
    let python =
        kernelgen::tpu::oracle::ensure_venv(&mut |m| eprintln!("{m}")).expect("TPU oracle venv");
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("../verify/harness/pallas_harness.py");
    let root =
        std::env::temp_dir().join(format!("kernelgen-pallas-interpret-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let seed0 = base_seed();
    eprintln!("base seed {seed0} (PALLAS_TEST_SEED={seed0} replays this run)");

    let chunked = kernels()
        .iter()
        .filter(|k| PallasDims::new(&k.cfg).kv_chunks > 1)
        .count();
    assert!(
        chunked >= 2,
        "the rolled chunk loop runs in {chunked} kernels"
    );
    let shortened = kernels()
        .iter()
        .filter(|k| {
            let d = PallasDims::new(&k.cfg);
            d.kv_chunks > 1 && d.chunk_pages < pallas::chunk_pages(d.kv_pages_block, d.page_size, 1)
        })
        .count();
    assert!(
        shortened >= 1,
        "no kernel scores chunks shortened for many rows"
    );
    let mut cases = Vec::new();
    let mut json_cases = Vec::new();
    for (ki, k) in kernels().into_iter().enumerate() {
        let kdir = root.join(k.name);
        std::fs::create_dir_all(&kdir).unwrap();
        let module = kdir.join(pallas::FILE_NAME);
        std::fs::write(
            &module,
            pallas::render(&k.cfg, &Default::default()).unwrap(),
        )
        .unwrap();
        for (bi, (what, spec)) in k.batches.iter().enumerate() {
            let seed = seed0.wrapping_add(1000 * ki as u64 + bi as u64);
            let clean =
                RaggedBatch::generate(&k.cfg.problem(), spec, seed, k.cfg.dtype() == Dtype::Bf16);
            let poison = poison_of((ki + bi) as u64);
            let mut poisoned = clean.clone();
            if let Some(poison) = poison {
                poisoned.poison(&k.cfg.problem(), poison);
            }
            let indir = kdir.join(format!("{bi}-{what}-in"));
            let outdir = kdir.join(format!("{bi}-{what}-out"));
            write_inputs(&indir, &k.cfg, &poisoned);
            json_cases.push(serde_json::json!({
                "module": module, "indir": indir, "outdir": outdir, "detect_races": k.detect_races,
            }));
            cases.push(Case {
                label: format!(
                    "{} / {what} (seed {seed}, poison {poison:?}, seqs (q_len, kv_len) {:?})",
                    k.name,
                    clean.seq_lens()
                ),
                cfg: k.cfg.clone(),
                batch: clean,
                outdir,
                detect_races: k.detect_races,
            });
        }
    }
    let cases_file = root.join("cases.json");
    std::fs::write(&cases_file, serde_json::to_string(&json_cases).unwrap()).unwrap();

    let start = Instant::now();
    let out = Command::new(&python)
        .arg(&harness)
        .arg("--cases")
        .arg(&cases_file)
        .env("JAX_PLATFORMS", "cpu")
        .env("TPU_SKIP_MDS_QUERY", "1")
        .output()
        .expect("run the Pallas harness");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        results.len(),
        cases.len(),
        "harness answered {} of {} cases (status {:?}); stderr tail:\n{}",
        results.len(),
        cases.len(),
        out.status,
        stderr
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "harness: {} cases in {:.1} s",
        cases.len(),
        start.elapsed().as_secs_f64()
    );

    let mut raced = 0;
    for (case, res) in cases.iter().zip(&results) {
        assert_eq!(res["ok"], true, "{}: {}", case.label, res);
        assert_eq!(res["detect_races"], case.detect_races, "{}", case.label);
        if case.detect_races {
            assert_eq!(
                res["races"], false,
                "{}: the race detector found a race",
                case.label
            );
            raced += 1;
        }
        // the module's VMEM_BUFFERS (computed in Python) equals the Rust mirror
        let py_buffers: Vec<VmemBuffer> =
            serde_json::from_value(res["vmem_buffers"].clone()).unwrap();
        let dims = PallasDims::new(&case.cfg);
        assert_eq!(py_buffers, dims.vmem_buffers(), "{}", case.label);
        assert_eq!(
            res["grid"],
            serde_json::json!([dims.num_head_blocks, dims.num_q_blocks]),
            "{}",
            case.label
        );
        assert_eq!(
            res["head_dim_padded"], dims.head_dim_padded,
            "{}",
            case.label
        );

        let p = case.cfg.problem();
        let got = NpyArray::read(&case.outdir.join("out.npy")).unwrap();
        assert_eq!(got.shape, vec![p.max_num_tokens, p.num_q_heads, p.head_dim]);
        let got = got.into_f32().unwrap();
        let expected = verify::reference(&p, &case.batch);
        let valid = verify::valid_rows(&case.batch) * p.num_q_heads * p.head_dim;
        let stats = ErrorStats::measure(&got, &expected, valid);
        let tol = match case.cfg.dtype() {
            Dtype::F32 => 1e-5,
            Dtype::Bf16 => 2e-2,
        };
        eprintln!("{}: {stats}, {} s", case.label, res["seconds"]);
        assert!(stats.within(tol), "{}: {stats} > {tol:e}", case.label);
        // padding rows: finite and deterministic (the kernel writes zeros there)
        assert!(
            got[valid..].iter().all(|&x| x == 0.0),
            "{}: padding rows are not zero",
            case.label
        );
    }
    assert!(raced >= 1, "no case ran with the race detector");
    std::fs::remove_dir_all(&root).unwrap();
}
