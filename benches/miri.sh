#!/usr/bin/env bash
# Runs the dataplane's unsafe core under Miri (Rust's interpreter that checks every memory
# access for undefined behaviour): `Burst`'s uninitialised packet slots and the guest-memory
# bounds checks, alone and as the split-queue code uses them (dataplane/tests/miri.rs), plus
# `Burst`'s own unit test. Needs the nightly toolchain's miri and rust-src components, which it
# installs when missing. Takes a few minutes (Miri builds its own sysroot the first time).
#
#   benches/miri.sh
#
# What Miri cannot run is left out here rather than skipped inside the tests: mmap of
# memfd/hugetlbfs files (GuestMemory::map), DPDK FFI, sockets and eventfds.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
rustup component add --toolchain nightly miri rust-src
cargo +nightly miri setup

# Miri's own target dir, so its build never invalidates the normal one.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/miri
# Bounds, initialisation, aliasing (Stacked Borrows, the default) and leaks are all checked.
# Isolation off: the ring test reads the committed virtq corpus from disk.
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}"
cargo +nightly miri test -p heddle-dataplane --test miri
cargo +nightly miri test -p heddle-core --lib switch::io::
