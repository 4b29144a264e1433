#!/usr/bin/env bash
# Install the Debian packages Heddle needs to build and to run its real-peer tests.
# Idempotent and fast when everything is present: only missing packages are installed,
# and `apt-get update` runs only when something is missing.
#
# Usage: deploy/scripts/install-deps.sh [extra-package ...]
set -euo pipefail

PACKAGES=(
    libdpdk-dev     # DPDK 22.11 headers + libs (pkg-config libdpdk)
    dpdk-dev        # dpdk-testpmd, the real peer in tests
    libclang-dev    # bindgen for ffi/
    pkg-config
    iproute2        # ip netns / ip link for namespaces and veth pairs
    ethtool
    jq
    procps          # pgrep/ps used by scripts
    util-linux      # mount, findmnt, setpriv
    coreutils       # stdbuf -oL, which the test harness wraps dpdk-testpmd in
    containernetworking-plugins  # host-local IPAM and the reference bridge plugin (CNI tests)
    iputils-ping    # ping between pods in the CNI tests
    openssl curl    # the manager's webhook TLS test makes a certificate and posts a review
    qemu-system-x86 # qemu-system-x86_64: Linux guests on vhost-user ports (tests/tests/qemu.rs)
    xz-utils        # unpacks the guests' kernel (vmlinuz -> vmlinux) for the QEMU tests
    "$@"
)

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps.sh: missing ${missing[*]}; run as root to install them." >&2
        exit 1
    fi
    echo "install-deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "install-deps.sh: all ${#PACKAGES[@]} packages already installed."
fi

if ! command -v dpdk-testpmd >/dev/null 2>&1; then
    echo "install-deps.sh: dpdk-testpmd is not on PATH although dpdk-dev is installed." >&2
    exit 1
fi
if ! pkg-config --exists libdpdk; then
    echo "install-deps.sh: pkg-config cannot find libdpdk although libdpdk-dev is installed." >&2
    exit 1
fi

if ! command -v cargo >/dev/null 2>&1 && [[ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
    echo "install-deps.sh: no Rust toolchain found (cargo is not on PATH); install one with rustup first." >&2
    exit 1
fi

echo "install-deps.sh: ok (DPDK $(pkg-config --modversion libdpdk), $(cargo --version 2>/dev/null || "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" --version))."
