//! Different (q_block, kv_pages_block) give different programs that compute the same attention.

use e2e::{client, small_config};
use kernelgen::config::Dtype;
use kernelgen::emit::stablehlo;
use kernelgen::numerics::KernelRunner;
use verify::{BatchSpec, RaggedBatch};

#[test]
fn block_sizes_change_the_program_not_the_result() {
    let blocks = [(1, 1), (4, 2), (16, 3), (40, 7), (48, 8)];
    let mut programs = Vec::new();
    let mut outputs = Vec::new();
    let base = small_config((8, 2), 64, 16, Dtype::F32, (1, 1), 48, 4, 8);
    let batch = RaggedBatch::generate(&base.problem(), &BatchSpec::default(), 42, false);
    for (q, kv) in blocks {
        let mut p = base.with_blocks(q, kv).unwrap().params().clone();
        // alternate the loop nest too: it must not change the result either ((48, 8) is the
        // batched form with one query block for all 48 tokens, and no query-block loop)
        if q % 2 == 0 {
            p.schedule = kernelgen::config::Schedule::Batched;
        }
        let cfg = kernelgen::config::KernelConfig::new(p).unwrap();
        let kernel = stablehlo::emit(&cfg).unwrap();
        let runner = KernelRunner::compile(client(), &cfg, &kernel.text).unwrap();
        programs.push(kernel.module.generic_text);
        outputs.push(runner.run(&batch).unwrap());
    }
    for i in 1..programs.len() {
        assert_ne!(
            programs[0], programs[i],
            "blocks {:?} emitted the same program",
            blocks[i]
        );
    }
    // Same math, different blocking: only the online-softmax summation order differs.
    let valid = verify::valid_rows(&batch) * 8 * 64;
    let expected = verify::reference(&base.problem(), &batch);
    for (out, (q, kv)) in outputs.iter().zip(blocks) {
        let vs_first = verify::ErrorStats::measure(
            &out[..valid],
            &outputs[0][..valid]
                .iter()
                .map(|&x| x as f64)
                .collect::<Vec<_>>(),
            valid,
        );
        assert!(vs_first.max_rel < 2e-6, "({q},{kv}) vs (1,1): {vs_first}");
        let vs_ref = verify::ErrorStats::measure(out, &expected, valid);
        assert!(vs_ref.within(1e-5), "({q},{kv}): {vs_ref}");
    }
}
