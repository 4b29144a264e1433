#!/usr/bin/env bash
# Prepare podman (Debian 12, 4.3, CNI backend) for Heddle's CNI end-to-end test
# (tests/tests/podman.rs) and for trying heddle-cni by hand. Idempotent; run as root.
#
# - installs, only when missing: podman runc busybox-static iptables containernetworking-plugins jq
#   catatonit (the pause process of a pod's infra container: `podman kube play`, tests/tests/image.rs)
# - writes Heddle's own podman config, $HEDDLE_PODMAN_CONF (default
#   /etc/heddle/podman/containers.conf): CNI backend, runc, cgroupfs, file events, ulimits
#   the runtime can set without CAP_SYS_RESOURCE. /etc/containers is never touched: use it
#   with `CONTAINERS_CONF=/etc/heddle/podman/containers.conf podman ...`.
# - builds the local image $HEDDLE_PODMAN_IMAGE (default localhost/heddle-busybox:latest) from
#   busybox-static, once (no registry needed).
#
# Pitfalls (Debian 12): podman defaults to netavark (we select "cni"); crun fails on this
# host's hybrid cgroups (runc); the rootful default ulimits (nofile=1048576) need
# CAP_SYS_RESOURCE; busybox ping in a container needs --cap-add NET_RAW.
set -euo pipefail

CONF=${HEDDLE_PODMAN_CONF:-/etc/heddle/podman/containers.conf}
IMAGE=${HEDDLE_PODMAN_IMAGE:-localhost/heddle-busybox:latest}
PACKAGES=(podman runc busybox-static iptables containernetworking-plugins jq catatonit)

log() { echo "podman-setup.sh: $*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "podman-setup.sh: run as root (rootful podman, apt-get)." >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "packages already installed: ${PACKAGES[*]}"
fi

want=$(cat <<'CONFEOF'
# Written by Heddle's deploy/scripts/podman-setup.sh; use with CONTAINERS_CONF=<this file>.
[containers]
# the host lacks CAP_SYS_RESOURCE: podman's rootful default (nofile/nproc = 1048576) makes runc fail
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[network]
# podman 4.3 defaults to netavark; heddle-cni is a CNI plugin
network_backend = "cni"
network_config_dir = "/etc/cni/net.d"
cni_plugin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
# crun fails on this host's hybrid cgroup layout
runtime = "runc"
CONFEOF
)
if [[ -f "$CONF" ]] && [[ "$(cat "$CONF")" == "$want" ]]; then
    log "$CONF is up to date"
else
    mkdir -p "$(dirname "$CONF")"
    printf '%s\n' "$want" >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    log "wrote $CONF"
fi
export CONTAINERS_CONF=$CONF

if podman image exists "$IMAGE"; then
    log "image $IMAGE already present"
else
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root/rootfs/bin" "$root/rootfs/etc" "$root/rootfs/tmp"
    cp /bin/busybox "$root/rootfs/bin/"
    for a in $(/bin/busybox --list); do
        [[ "$a" == busybox ]] || ln -sf busybox "$root/rootfs/bin/$a"
    done
    tar -C "$root/rootfs" -cf "$root/rootfs.tar" .
    podman import -q --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' \
        "$root/rootfs.tar" "$IMAGE" >/dev/null
    log "built image $IMAGE from /bin/busybox"
fi

log "ok: $(podman info --format 'podman {{.Version.Version}}, backend={{.Host.NetworkBackend}}, runtime={{.Host.OCIRuntime.Name}}, cgroups={{.Host.CgroupManager}}') (CONTAINERS_CONF=$CONF, image $IMAGE)"
