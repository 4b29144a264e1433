#!/usr/bin/env bash
# Install Heddle's CNI plugins into a CNI bin directory, the way a node needs them:
#   heddle-cni   the CNI plugin (a symlink to the built binary)
#   heddle-ipam  Heddle's IPAM plugin: a symlink to heddle-manager, which speaks the CNI IPAM
#                protocol when run under this name (argv[0])
# Usage: install-cni.sh [CNI bin dir, default /opt/cni/bin] [dir of the built binaries,
#        default target/release]. Idempotent; links are replaced atomically.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-/opt/cni/bin}
BIN=$(realpath "${2:-target/release}")

for b in heddle-cni heddle-manager; do
    [ -x "$BIN/$b" ] || { echo "install-cni.sh: $BIN/$b is missing: cargo build --release --bins" >&2; exit 1; }
done
mkdir -p "$DEST"
link() { # target name
    ln -sfn "$1" "$DEST/.$2.tmp"
    mv -Tf "$DEST/.$2.tmp" "$DEST/$2"
}
link "$BIN/heddle-cni" heddle-cni
link "$BIN/heddle-manager" heddle-ipam
echo "install-cni.sh: $DEST/heddle-cni -> $BIN/heddle-cni, $DEST/heddle-ipam -> $BIN/heddle-manager"
