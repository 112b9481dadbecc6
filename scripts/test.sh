#!/usr/bin/env bash
# The test suite, from a fresh machine: install what is missing, then formatting, lints and every
# test of the workspace (unit, property and end-to-end tests against the real PJRT CPU plugin).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh --model
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace
