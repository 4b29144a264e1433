#!/usr/bin/env bash
# Build Heddle's image, localhost/heddle:<version>, on this machine with podman and no container
# registry. Idempotent; run as root (rootful podman, debootstrap).
#
#  1. Base image localhost/heddle-debian:bookworm: a Debian 12 minbase root file system made with
#     debootstrap from Debian's package repository ($HEDDLE_DEBIAN_MIRROR), imported into
#     podman. Made once; delete the image to remake it.
#  2. deploy/image/Containerfile on that base. Rust comes from the host (Debian 12's rustc is too
#     old and rustup cannot download inside the build): ~/.rustup and ~/.cargo/bin are mounted
#     read-only; the cargo registry and target dir are caches under .image-cache/ (gitignored)
#     so a rebuild after a source change is incremental.
#  3. The image carries a hash of the sources it was built from (label dev.heddle.source-hash);
#     when the present image has the same hash, nothing is built.
#
# Cargo profile `image` (Cargo.toml): the release profile's fat LTO with one codegen unit runs
# each binary's whole optimisation and codegen on one CPU, and this build runs inside
# deploy/test.sh on a fresh two-CPU machine; the image profile keeps opt-level 3 with per-crate
# (thin-local) LTO and parallel codegen.
#
# Environment: HEDDLE_IMAGE (default localhost/heddle:<Chart appVersion or workspace version>),
# HEDDLE_BASE_IMAGE, HEDDLE_DEBIAN_MIRROR (default http://deb.debian.org/debian),
# CONTAINERS_CONF (default /etc/heddle/podman/containers.conf, from deploy/scripts/podman-setup.sh),
# HEDDLE_IMAGE_FORCE=1 rebuilds even when the hash matches.
set -euo pipefail

# All in one function, read whole before it runs: editing this file during a build is safe.
main() {
cd "$(dirname "$0")/../.."
ROOT=$PWD

log() { echo "build.sh: $*"; }
die() { echo "build.sh: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root: the image is built with rootful podman and debootstrap"

export CONTAINERS_CONF=${CONTAINERS_CONF:-/etc/heddle/podman/containers.conf}
[[ -f "$CONTAINERS_CONF" ]] || die "$CONTAINERS_CONF is missing: run deploy/scripts/podman-setup.sh first"
command -v podman >/dev/null || die "podman is not installed: run deploy/scripts/podman-setup.sh"

version=$(awk -F': *' '$1 == "appVersion" {gsub(/"/, "", $2); print $2}' deploy/helm/heddle/Chart.yaml 2>/dev/null || true)
[[ -n "$version" ]] || version=$(awk -F' *= *' '$1 == "version" {gsub(/"/, "", $2); print $2; exit}' Cargo.toml)
IMAGE=${HEDDLE_IMAGE:-localhost/heddle:$version}
BASE=${HEDDLE_BASE_IMAGE:-localhost/heddle-debian:bookworm}
MIRROR=${HEDDLE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=$ROOT/.image-cache

RUSTUP_DIR=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
[[ -x "$CARGO_BIN/cargo" && -d "$RUSTUP_DIR/toolchains" ]] \
    || die "no rustup toolchain at $RUSTUP_DIR with proxies in $CARGO_BIN: install Rust with rustup (the build mounts the host's toolchain)"
toolchain=$("$CARGO_BIN/rustup" show active-toolchain | awk '{print $1}')
rustc_version=$("$CARGO_BIN/rustc" -V)

# --- 1. base image ------------------------------------------------------------------------
# The recipe's version: a base made by an older recipe is made again.
BASE_RECIPE=2
if podman image exists "$BASE" \
    && [[ "$(podman image inspect --format '{{index .Labels "dev.heddle.base-recipe"}}' "$BASE")" == "$BASE_RECIPE" ]]; then
    log "base image $BASE present"
else
    command -v debootstrap >/dev/null \
        || die "debootstrap is not installed: run deploy/scripts/install-deps.sh debootstrap"
    t0=$SECONDS
    work=$(mktemp -d /var/tmp/heddle-debootstrap.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    log "debootstrap --variant=minbase bookworm from $MIRROR (once)"
    # Two tries: a mirror being updated serves index files that fail validation for a while.
    local try
    for try in 1 2; do
        rm -rf "$work/rootfs"
        debootstrap --variant=minbase --components=main bookworm "$work/rootfs" "$MIRROR" \
            >"$work/debootstrap.log" 2>&1 && break
        tail -20 "$work/debootstrap.log" >&2
        [[ $try == 2 ]] \
            && die "debootstrap failed twice (log above): check that $MIRROR is reachable or set HEDDLE_DEBIAN_MIRROR to another Debian mirror"
        log "debootstrap failed; trying again in 30 s"
        sleep 30
    done
    cat >"$work/rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
SOURCES
    # Like Debian's slim images: no documentation, manual pages or translations (the
    # copyright files stay), now and for every package installed later.
    cat >"$work/rootfs/etc/dpkg/dpkg.cfg.d/heddle-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
SLIM
    find "$work/rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    rm -rf "$work/rootfs/usr/share/man/"* "$work/rootfs/usr/share/info/"* \
        "$work/rootfs/usr/share/locale/"* \
        "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"* \
        "$work/rootfs/var/log/"*.log "$work/rootfs/var/log/apt"
    tar --numeric-owner -C "$work/rootfs" -cf "$work/rootfs.tar" .
    podman import -q \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL dev.heddle.base-recipe=$BASE_RECIPE" \
        "$work/rootfs.tar" "$BASE" >/dev/null
    rm -rf "$work"
    trap - EXIT
    log "base image $BASE made in $((SECONDS - t0)) s"
fi

# --- 2. source hash ------------------------------------------------------------------------
# Everything the binaries are built from (tracked and new files, ignoring .gitignore'd ones;
# not the Markdown), plus the toolchain: the same hash means the same image.
local SOURCES=(Cargo.toml Cargo.lock ffi dataplane cni manager hugepages deploy/image ':(exclude)*.md')
hash=$( {
    echo "$rustc_version $toolchain $BASE $(podman image inspect --format '{{.Id}}' "$BASE")"
    git ls-files -z -co --exclude-standard -- "${SOURCES[@]}" \
        | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)

if [[ "${HEDDLE_IMAGE_FORCE:-0}" != 1 ]] && podman image exists "$IMAGE" \
    && [[ "$(podman image inspect --format '{{index .Labels "dev.heddle.source-hash"}}' "$IMAGE")" == "$hash" ]]; then
    log "$IMAGE is up to date (sources $hash)"
    exit 0
fi

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[[ -z "$(git status --porcelain -- "${SOURCES[@]}" 2>/dev/null)" ]] \
    || revision="$revision-dirty"

# --- 3. build ------------------------------------------------------------------------------
# Crates are downloaded here, on the host (its network and CA trust), into the cache the
# build mounts as CARGO_HOME; the container builds offline. An empty cache is first seeded
# from the host's own registry so little is downloaded.
mkdir -p "$CACHE/cargo" "$CACHE/target"
t0=$SECONDS
host_registry=${CARGO_HOME:-$HOME/.cargo}/registry
if [[ ! -d "$CACHE/cargo/registry" && -d "$host_registry" ]]; then
    cp -a "$host_registry" "$CACHE/cargo/registry"
fi
if ! CARGO_HOME=$CACHE/cargo RUSTUP_TOOLCHAIN=$toolchain "$CARGO_BIN/cargo" fetch --locked --quiet; then
    die "cargo fetch failed (output above): the build needs crates.io (or a registry mirror in $CACHE/cargo/config.toml) reachable from this host once"
fi
log "building $IMAGE (sources $hash, revision $revision, $rustc_version)"
if ! nice -n 10 podman build \
    --pull=never --network=host --layers \
    --file deploy/image/Containerfile \
    --ignorefile deploy/image/containerignore \
    --build-arg BASE="$BASE" \
    --build-arg RUST_TOOLCHAIN="$toolchain" \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.revision="$revision" \
    --label org.opencontainers.image.created="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --label dev.heddle.source-hash="$hash" \
    -v "$RUSTUP_DIR:/opt/rust/rustup:ro" \
    -v "$CARGO_BIN:/opt/rust/cargo-bin:ro" \
    -v "$CACHE/cargo:/cache/cargo" \
    -v "$CACHE/target:/cache/target" \
    --tag "$IMAGE" \
    . ; then
    die "podman build failed (output above); a stale cache can be dropped with rm -rf $CACHE"
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE in $((SECONDS - t0)) s: $((size / 1024 / 1024)) MiB"
}

main "$@"
exit
