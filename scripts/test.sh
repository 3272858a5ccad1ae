#!/usr/bin/env bash
# The whole gate: formatting, lints, and every test (unit, model, crash, merge, end-to-end FUSE
# mounts). Needs root for the end-to-end tests (FUSE mounts, loop devices).
# Longer randomized runs: SNAPFS_SEEDS=200 SNAPFS_CRASH_SEEDS=20 SNAPFS_MERGE_SEEDS=20 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test (release: the I/O-heavy tests run ~10x faster optimised)"
cargo test --workspace --release -- --test-threads="${SNAPFS_TEST_THREADS:-2}"
