#!/bin/bash
# What the chart's `install-cni` init container runs (image path
# /usr/local/share/heddle/install-cni.sh). Installs Heddle's CNI plugins into the node's CNI bin
# directory, mounted from the host:
#   heddle-cni   the CNI plugin
#   heddle-ipam  Heddle's IPAM plugin: a copy of heddle-manager (which speaks the CNI IPAM
#                protocol under this name); a copy, because a link would point into the image
# Each file is copied next to its destination and renamed over it, so the kubelet never runs
# a half-written plugin. When the pod has a service-account token it also writes a kubeconfig
# for heddle-ipam's cluster mode (docs/cni.md: "kubeconfig": "/etc/cni/net.d/heddle.kubeconfig"),
# naming this node in its context's `heddle.dev/node` extension: heddle-ipam claims address
# blocks for that node, and the runtime that runs it on the host passes no node name.
#
# Usage: install-cni.sh [CNI bin dir]
# Environment (all optional; the chart sets the first five):
#   CNI_BIN_DIR         CNI bin dir when no argument is given (default /host/cni/bin)
#   HEDDLE_KUBECONFIG   kubeconfig to write (default /host/cni/net.d/heddle.kubeconfig)
#   HEDDLE_TOKEN_DIR    holds `token` and `ca.crt` of the node ServiceAccount
#                       (default /var/run/secrets/kubernetes.io/serviceaccount)
#   HEDDLE_API_SERVER   API server URL for the kubeconfig; empty: https://$KUBERNETES_SERVICE_HOST:
#                       $KUBERNETES_SERVICE_PORT, as the kubelet sets them in every pod
#   HEDDLE_NODE_NAME    the Kubernetes node name (the chart: fieldRef spec.nodeName); empty: no
#                       node in the kubeconfig, and heddle-ipam needs ipam.node or NODE_NAME
#   HEDDLE_BIN_DIR      where the binaries are (default /usr/local/bin)
set -euo pipefail

DEST=${1:-${CNI_BIN_DIR:-/host/cni/bin}}
KUBECONFIG_OUT=${HEDDLE_KUBECONFIG:-/host/cni/net.d/heddle.kubeconfig}
SA_DIR=${HEDDLE_TOKEN_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}
BIN=${HEDDLE_BIN_DIR:-/usr/local/bin}

log() { echo "install-cni.sh: $*"; }
die() { echo "install-cni.sh: $*" >&2; exit 1; }

node=${HEDDLE_NODE_NAME:-}
# A node name is a DNS subdomain: nothing in it needs quoting in YAML.
[[ -z "$node" || "$node" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] \
    || die "HEDDLE_NODE_NAME '$node' is not a Kubernetes node name (lowercase DNS subdomain)"
[[ -d "$DEST" ]] || die "CNI bin dir $DEST does not exist: mount the host's CNI bin dir there (hostPath, e.g. /opt/cni/bin) or pass its path as the first argument"
[[ -w "$DEST" ]] || die "CNI bin dir $DEST is not writable: mount it read-write"

install_copy() { # source name
    local tmp="$DEST/.$2.heddle-tmp.$$"
    cp "$1" "$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$DEST/$2"
    log "installed $DEST/$2 (from $1)"
}
for b in heddle-cni heddle-manager; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: this image is incomplete, rebuild it with deploy/image/build.sh"
done
install_copy "$BIN/heddle-cni" heddle-cni
install_copy "$BIN/heddle-manager" heddle-ipam

if [[ ! -s "$SA_DIR/token" ]]; then
    log "no service-account token at $SA_DIR/token (not running in a cluster): no kubeconfig written; heddle-ipam cluster mode needs one at $KUBECONFIG_OUT"
    exit 0
fi
[[ -s "$SA_DIR/ca.crt" ]] || die "$SA_DIR/ca.crt is missing: the kubeconfig needs the cluster's CA"
server=${HEDDLE_API_SERVER:-}
if [[ -z "$server" ]]; then
    [[ -n "${KUBERNETES_SERVICE_HOST:-}" ]] \
        || die "a service-account token is in $SA_DIR but neither HEDDLE_API_SERVER nor KUBERNETES_SERVICE_HOST is set: cannot name the API server in $KUBECONFIG_OUT"
    host=$KUBERNETES_SERVICE_HOST
    [[ "$host" == *:* ]] && host="[$host]"   # IPv6 literal
    server="https://$host:${KUBERNETES_SERVICE_PORT:-443}"
fi
node_extension=""
if [[ -n "$node" ]]; then
    node_extension="
      extensions:
        - name: heddle.dev/node
          extension: {nodeName: $node}"
else
    log "HEDDLE_NODE_NAME is empty: the kubeconfig names no node; heddle-ipam cluster mode refuses ADD until ipam.node or NODE_NAME names the node (set HEDDLE_NODE_NAME from spec.nodeName)"
fi
mkdir -p "$(dirname "$KUBECONFIG_OUT")"
tmp="$KUBECONFIG_OUT.heddle-tmp.$$"
(
    umask 077
    cat >"$tmp" <<KUBECONFIG
# Written by Heddle's install-cni init container for heddle-ipam (cluster mode).
apiVersion: v1
kind: Config
clusters:
  - name: local
    cluster:
      server: $server
      certificate-authority-data: $(base64 -w0 "$SA_DIR/ca.crt")
users:
  - name: heddle-ipam
    user:
      token: $(cat "$SA_DIR/token")
contexts:
  - name: heddle-ipam
    context:
      cluster: local
      user: heddle-ipam$node_extension
current-context: heddle-ipam
KUBECONFIG
)
mv -f "$tmp" "$KUBECONFIG_OUT"
log "wrote $KUBECONFIG_OUT for heddle-ipam (API server $server${node:+, node $node})"
