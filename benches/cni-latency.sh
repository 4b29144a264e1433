#!/usr/bin/env bash
# heddle-cni ADD/DEL latency against the reference bridge plugin, p50/p99. Argument: runs.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/scripts/install-deps.sh
deploy/scripts/hugepages.sh 1024
cargo build --release --bins -q
HEDDLE_PROFILE=release exec target/release/cni_latency "$@"
