#!/usr/bin/env bash
# End-to-end loopback of heddle-switch against dpdk-testpmd io-forwarding and OVS-DPDK:
# same generator, same cores, interleaved rounds; writes benches/results/loopback.{md,png}.
# Arguments go to the harness: --rounds N --seconds S --sizes 64,512,1518 --scale 2,8,16
# --only vhost|memif|none
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/scripts/install-deps.sh openvswitch-switch-dpdk gnuplot-nox
deploy/scripts/hugepages.sh 3072
cargo build --release --bins -q
HEDDLE_PROFILE=release exec target/release/loopback "$@"
