#!/usr/bin/env bash
# End-to-end loopback of heddle-switch against dpdk-testpmd io-forwarding, same generator,
# same cores, interleaved rounds. Arguments go to the harness: --rounds N --seconds S --sizes 64,1518
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/scripts/install-deps.sh
deploy/scripts/hugepages.sh 3072
cargo build --release --bins -q
HEDDLE_PROFILE=release exec target/release/loopback "$@"
