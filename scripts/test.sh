#!/usr/bin/env bash
# The project's one test command (README "Run the tests"; .ci/run calls exactly this):
# formatting, lints, then every test in the workspace with one debug build.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
