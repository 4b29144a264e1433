#!/usr/bin/env bash
# End-to-end loopback of heddle-switch (native vhost-user, net_vhost and net_memif ports)
# against dpdk-testpmd io-forwarding and OVS-DPDK, as paired rounds: every switch once per
# round, ratios within rounds, median and bootstrap 95% interval per cell; writes
# benches/results/loopback.{md,png} and loopback-rounds.tsv (every slot, as it ends).
# `benches/loopback.sh --help` lists the arguments; `--plan` checks them and prints the plan;
# `--from FILE` makes the report from a rounds file without running anything.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release/loopback"
# Only what the run needs (fat LTO makes every release binary slow to link).
build() { cargo build --release -q "$@"; }
for a in "$@"; do
    case "$a" in
        -h | --help | -V | --version | --plan | --from | --from=*)
            # Nothing is installed, reserved or started for these.
            build --bin loopback
            exec "$bin" "$@"
            ;;
    esac
done
deploy/scripts/install-deps.sh
build --bin heddle-switch --bin loopback
# Bad arguments stop here, before anything else is installed or reserved.
"$bin" --plan "$@" >/dev/null
deploy/scripts/install-deps.sh openvswitch-switch-dpdk gnuplot-nox
# Peak at 64 pods: three generators (512 + 512 + 256 MiB) and OVS (1024 MiB), or heddle
# (512 MiB); leave room for other DPDK processes on the machine.
deploy/scripts/hugepages.sh 4096
HEDDLE_PROFILE=release exec "$bin" "$@"
