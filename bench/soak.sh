#!/usr/bin/env bash
# A long soak under faults (the soak test of tests/tests/soak.rs, run for
# longer): three nodes per lock backend, a few hundred clients, a node
# killed and restarted, the lock service restarted, S3 answering 503 and
# hanging. Prints one SOAK line per backend (BENCHMARKS.md records them).
#   SOAK_SECONDS=600 bench/soak.sh
# Needs what the tests need (Redis, PostgreSQL, MariaDB, s3s-fs, nix).
set -euo pipefail
cd "$(dirname "$0")/.."
export NCPS_SOAK_SECONDS="${SOAK_SECONDS:-600}"
cargo build -p ncps-edge >/dev/null 2>&1
cargo test -p ncps-edge-tests --test soak -- --nocapture --test-threads=1 2>&1 | grep -E '^SOAK|test result|panicked'
