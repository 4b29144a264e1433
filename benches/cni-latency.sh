#!/usr/bin/env bash
# heddle-cni ADD/DEL latency against the reference bridge plugin, p50/p99. Argument: runs
# (`--help` for the usage).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release/cni_latency"
case " $* " in
    *" -h "* | *" --help "* | *" -V "* | *" --version "*)
        cargo build --release -q --bin cni_latency
        exec "$bin" "$@"
        ;;
esac
deploy/scripts/install-deps.sh
deploy/scripts/hugepages.sh 1024
cargo build --release --bins -q
HEDDLE_PROFILE=release exec "$bin" "$@"
