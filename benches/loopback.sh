#!/usr/bin/env bash
# End-to-end loopback of heddle-switch (native vhost-user, net_vhost and net_memif ports)
# against dpdk-testpmd io-forwarding and OVS-DPDK: same generator, same cores, interleaved
# rounds; writes benches/results/loopback.{md,png}.
# Arguments go to the harness: --rounds N --seconds S --sizes 64,512,1518 --scale 2,16,64
# --only vhost|memif|none --skip heddle-native,ovs-vhost,... --out DIR
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/scripts/install-deps.sh openvswitch-switch-dpdk gnuplot-nox
# Peak at --scale 64: three generators (512 + 512 + 256 MiB) and OVS (1024 MiB), or heddle
# (512 MiB); leave room for other DPDK processes on the machine.
deploy/scripts/hugepages.sh 4096
# Only what the run needs (fat LTO makes every release binary slow to link).
cargo build --release --bin heddle-switch --bin loopback -q
HEDDLE_PROFILE=release exec "${CARGO_TARGET_DIR:-target}/release/loopback" "$@"
