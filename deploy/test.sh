#!/usr/bin/env bash
# Heddle's whole test suite, from a fresh Debian 12 machine (root): installs what it needs,
# reserves hugepages, then runs format, lint, unit and real-peer integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/scripts/install-deps.sh debootstrap   # debootstrap: the image's Debian 12 base (deploy/image/build.sh)
deploy/scripts/hugepages.sh 3072   # switch and testpmd peers; QEMU guests use memfd RAM, no hugepages
deploy/scripts/install-py.sh       # venv for the chart tests: Helm's engine, kubernetes-validate

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The switching core (dataplane/core) builds and tests without DPDK: dpdk-sys must not be in
# its dependency tree, and it is tested with pkg-config unable to find libdpdk (LIBDIR replaces
# pkg-config's default search path; PKG_CONFIG_PATH alone would only add to it).
if cargo tree -p heddle-core -e normal,build,dev --prefix none | grep -q '^dpdk-sys '; then
    echo "test.sh: dpdk-sys is in heddle-core's dependency tree (cargo tree -p heddle-core -i dpdk-sys shows how): the core must build without DPDK" >&2
    exit 1
fi
PKG_CONFIG_LIBDIR=/nonexistent PKG_CONFIG_PATH= cargo test -p heddle-core
# Unit tests run in parallel; they need no hugepages or peers.
cargo test --workspace --exclude heddle-tests --exclude heddle-core
# loom models of the FDB slot protocol and the vring hand-over (docs/contributing.md, "Model
# checking"): the real code under loom's atomics, in their own target dir (other cfg).
RUSTFLAGS="--cfg heddle_loom" CARGO_TARGET_DIR=target/loom cargo test -p heddle-core -p heddle-dataplane --release --lib loom
# Integration tests start real DPDK processes on the two CPUs: one at a time.
cargo build --workspace --bins
# The Helm chart, rendered by Helm's own engine; heddle-switch --check on its switch configs.
deploy/helm/tests/run.sh
deploy/scripts/podman-setup.sh   # podman + local busybox image for tests/tests/podman.rs
# localhost/heddle:<appVersion> for tests/tests/image.rs (no registry). A failed build does not
# stop the suite: the image tests rerun build.sh and fail with its message.
deploy/image/build.sh || echo "test.sh: deploy/image/build.sh failed (above); the image tests will fail with its message" >&2
cargo test -p heddle-tests -- --test-threads=1
