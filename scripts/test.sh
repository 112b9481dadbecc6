#!/usr/bin/env bash
# The test suite, from a fresh machine: install what is missing, then formatting, lints, every
# test of the workspace (unit, property and end-to-end tests against the real PJRT CPU plugins
# and the deviceless TPU compiler, whose venv the toolkit creates on first use), and the VMEM
# gate over the committed config matrix.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The repository's cache (scripts/setup.sh fills it); cargo's own runs get it from .cargo/config.toml.
export KERNELGEN_CACHE="${KERNELGEN_CACHE:-$PWD/.cache}"
scripts/setup.sh --model
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace
cargo run -q -p kernelgen -- check --matrix ci/vmem.toml
