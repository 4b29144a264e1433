#!/usr/bin/env bash
# The churn soak: traffic through native vhost-user (dpdk-testpmd virtio-user), memif
# (testpmd net_memif) and kernel pods (veths in network namespaces, flood ping) of a real
# heddle-switch while pods are added and removed every 100 ms through the real heddle-cni
# (ADD/DEL as a runtime calls it), and connected pods are crashed (SIGKILL) and deleted.
# Then prints the baseline and final figures (mbufs in use, open fds, threads, RSS,
# hugepages mapped, FDB entries, ports, sockets and directories on disk, heddle-cni state,
# IPAM leases) and the switch's totals, and exits 1 unless all are back to baseline and
# every frame received was sent or dropped with a reason.
#
#   benches/churn.sh [SECONDS] [--crash-memif]    # default 600 (ten minutes)
#
# --crash-memif also kills connected memif pods under traffic: DPDK 22.11's net_memif then
# crashes the switch (SIGSEGV in librte_net_memif, the ring unmapped under the PMD worker)
# after about a hundred such kills; without it, connected pods are vhost-user pods.
#
# HEDDLE_PROFILE=debug uses debug builds (faster to build, slower switch). The test suite
# runs the same soak for 60 s: tests/tests/soak.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/scripts/install-deps.sh
deploy/scripts/hugepages.sh 2048
profile=${HEDDLE_PROFILE:-release}
flag=--release
[ "$profile" = debug ] && flag=
cargo build $flag -q -p heddle-dataplane -p heddle-cni -p heddle-tests --bins
HEDDLE_PROFILE=$profile exec "${CARGO_TARGET_DIR:-target}/$profile/heddle-churn" "$@"
