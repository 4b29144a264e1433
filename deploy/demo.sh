#!/usr/bin/env bash
# Heddle local demo: the switch on its built-in config, heddle-manager in embedded mode
# assigning two networks their VLANs, three "pods" (network namespaces running dpdk-testpmd
# with a virtio-user NIC) attached by heddle-cni as kubelet would, on vhost-user ports, with
# their addresses from heddle-ipam (heddle-manager as a CNI IPAM plugin, embedded mode);
# traffic between the two pods of network red and none into the pod of network blue, live
# stats, then a few seconds of full-rate traffic between the red pods (Mpps and Gbit/s),
# then a clean teardown (CNI DEL releases the addresses, checked; switch stop).
#
# Usage (root, fresh Debian 12): ./deploy/demo.sh [seconds of traffic, default 10]
# [seconds of full-rate traffic, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
FULL_SECS=${2:-5}

deploy/scripts/install-deps.sh
deploy/scripts/hugepages.sh 2048
echo "== building heddle (release)"
cargo build --release --bins -q

BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
RUN=/run/heddle-demo
SOCK=$RUN/switch.sock
LOG=$RUN/logs
PMD_CPU=1; POD_CPU=0
if [ "$(nproc)" -lt 2 ]; then PMD_CPU=0; fi
mkdir -p "$RUN" "$LOG"

pids=()
declare -A POD_PID
PODS=()
ADDED=()
status=0
cleanup() {
    local rc=$?
    set +e
    echo "== teardown"
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; done
    sleep 1
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    for p in "${ADDED[@]}"; do
        set -- $p
        cni DEL "$1" "$2" "$3" "$4" >/dev/null || echo "CNI DEL $1 failed"
    done
    if [ -d "$RUN/manager" ]; then
        left=$(mgr show --json | jq '[.[].leases | length] | add')
        if [ "$left" = 0 ]; then
            echo "== heddle-manager: no leases left (CNI DEL released every address)"
        else
            echo "== FAILED: $left leases left after CNI DEL:"; mgr show
            status=1
        fi
    fi
    if [ -n "${SWITCH_PID:-}" ]; then kill -TERM "$SWITCH_PID" 2>/dev/null; wait "$SWITCH_PID" 2>/dev/null; fi
    for pod in pod-a pod-b pod-c; do ip netns del "heddle-$pod" 2>/dev/null; done
    rm -rf "$RUN"
    echo "== done: switch stopped, namespaces and sockets removed"
    if [ "$status" -ne 0 ]; then exit "$status"; fi
    exit "$rc"
}
trap cleanup EXIT

# The built-in config, with this demo's socket, state directory and cores.
"$BIN/heddle-switch" --print-default-config \
    | sed -e "s#socket: .*#socket: $SOCK#" -e "s#^state_dir: .*#state_dir: $RUN/state#" \
          -e "s#^  pmd: .*#  pmd: [$PMD_CPU]#" -e "s#file_prefix: heddle#file_prefix: heddle-demo#" \
    > "$RUN/switch.yaml"
echo "== starting heddle-switch (PMD on CPU $PMD_CPU)"
"$BIN/heddle-switch" --config "$RUN/switch.yaml" >"$LOG/switch.log" 2>&1 &
SWITCH_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { echo "heddle-switch did not start:"; cat "$LOG/switch.log"; exit 1; }
ctl() { "$BIN/heddlectl" --socket "$SOCK" "$@"; }

# The cluster brain in single-node (embedded) mode: two networks on one provider network;
# heddle-manager assigns each a VLAN from the pool and, as the IPAM plugin heddle-ipam that
# heddle-cni delegates to, addresses to the pods, on a crash-safe local store.
cat > "$RUN/networks.yaml" <<'YAML'
providers:
  physnet: {interface: uplink0, vlanPool: [{start: 100, end: 199}]}
networks:
  red: {kind: vhost-user, provider: physnet, ipv4: {cidr: 10.10.0.0/24, gateway: 10.10.0.1}}
  blue: {kind: vhost-user, provider: physnet, ipv4: {cidr: 10.20.0.0/24, gateway: 10.20.0.1}}
YAML
mgr() { "$BIN/heddle-manager" embedded --store "$RUN/manager" --config "$RUN/networks.yaml" "$@"; }
NETS=$(mgr show --json)
vlan_of() { echo "$NETS" | jq -r --arg n "$1" '.[$n].vlan'; }
RED=$(vlan_of red); BLUE=$(vlan_of blue)
echo "heddle-manager (embedded): network red on VLAN $RED, network blue on VLAN $BLUE"

# The node's CNI bin directory: heddle-cni, and heddle-ipam (a symlink to heddle-manager).
CNI_BIN=$RUN/cni-bin
deploy/scripts/install-cni.sh "$CNI_BIN" "$BIN" >/dev/null

# What kubelet (through Multus) does for a pod: CNI ADD with the network's config; heddle-cni
# runs the IPAM plugin of the config's `ipam` object from CNI_PATH.
cni() { # command pod vlan network mac
    printf '{"cniVersion":"1.1.0","name":"%s","type":"heddle-cni","network":"%s","kind":"vhost-user","vlan":%s,"mac":"%s","socketDir":"%s","switchSocket":"%s","stateDir":"%s","ipam":{"type":"heddle-ipam","network":"%s","store":"%s","config":"%s"}}' \
        "$4" "$4" "$3" "$5" "$RUN/pods" "$SOCK" "$RUN/cni" "$4" "$RUN/manager" "$RUN/networks.yaml" |
        CNI_COMMAND=$1 CNI_CONTAINERID=$2 CNI_NETNS=/run/netns/heddle-$2 CNI_IFNAME=net1 \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=$2" CNI_PATH=$CNI_BIN:/usr/lib/cni "$CNI_BIN/heddle-cni"
}
declare -A SOCKS
# pod name, network, VLAN, MAC
PODS=("pod-a $RED 02:00:00:00:01:0a red" "pod-b $RED 02:00:00:00:01:0b red" "pod-c $BLUE 02:00:00:00:02:0c blue")
for p in "${PODS[@]}"; do
    set -- $p
    ip netns add "heddle-$1"
    ADDED+=("$1 $2 $4 $3")
    result=$(cni ADD "$1" "$2" "$4" "$3")
    SOCKS[$1]=$(echo "$result" | jq -r '.interfaces[] | select(.socketPath) | .socketPath')
    echo "CNI ADD $1 (network $4, VLAN $2, $(echo "$result" | jq -r '.ips[0].address')): vhost-user socket ${SOCKS[$1]}"
done
ctl ports

pod() { # name mac prefix args...
    local name=$1 mac=$2; shift 2
    ip netns exec "heddle-$name" dpdk-testpmd --lcores "0@$POD_CPU,1@$POD_CPU" --main-lcore 0 -m 128 \
        --no-pci --single-file-segments --file-prefix "demo-$name" \
        --vdev "net_virtio_user0,path=${SOCKS[$name]},mac=$mac" -- \
        --nb-cores 1 --total-num-mbufs 8192 --stats-period 5 "$@" >>"$LOG/$name.log" 2>&1 &
    pids+=($!)
    POD_PID[$name]=$!
}
echo "== starting pods: pod-a and pod-b (red, VLAN $RED) bounce frames to each other, pod-c (blue, VLAN $BLUE) listens"
pod pod-b 02:00:00:00:01:0b --forward-mode=mac --eth-peer=0,02:00:00:00:01:0a
pod pod-c 02:00:00:00:02:0c --forward-mode=rxonly
# pod-a seeds one burst that the two pods then bounce; sent before pod-b's queue is up, it
# is dropped and nothing flows. Wait for pod-b's link first.
link_up() { ctl --json ports | jq -e --arg p "cni/$1/net1" '.[] | select(.spec.name==$p) | .link_up' >/dev/null; }
for _ in $(seq 100); do link_up pod-b && break; sleep 0.1; done
pod pod-a 02:00:00:00:01:0a --forward-mode=mac --eth-peer=0,02:00:00:00:01:0b --tx-first

echo "== live stats for ${SECS}s"
ctl stats --watch 2 --count $(( (SECS + 1) / 2 ))
echo "== forwarding database"
ctl fdb

stats=$(ctl --json stats)
rx() { echo "$stats" | jq -r --arg p "cni/$1/net1" '.ports[] | select(.name==$p) | .tx_packets'; }
b=$(rx pod-b); c=$(rx pod-c); a=$(rx pod-a)
echo "== result: switch sent $b frames to pod-b and $a to pod-a (red), $c to pod-c (blue)"
if [ "$b" -gt 0 ] && [ "$a" -gt 0 ] && [ "$c" -eq 0 ]; then
    echo "== OK: traffic flows inside VLAN $RED and nothing crosses into VLAN $BLUE"
else
    echo "== FAILED: expected frames to pod-a and pod-b, none to pod-c; logs in $LOG"
    status=1
fi

# Full rate: the bouncing burst above is one burst of frames going back and forth (a few
# thousand frames a second). Now pod-a sends 64-byte frames to pod-b as fast as its share of
# CPU $POD_CPU lets it (testpmd's txonly engine), pod-b receives them (rxonly), and the
# switch forwards them on its PMD core; pod-c keeps listening on the other VLAN.
echo "== full rate for ${FULL_SECS}s: pod-a sends 64-byte frames to pod-b as fast as it can"
for p in pod-a pod-b; do
    kill -INT "${POD_PID[$p]}" 2>/dev/null
    wait "${POD_PID[$p]}" 2>/dev/null || true
    keep=()
    for q in "${pids[@]}"; do [ "$q" = "${POD_PID[$p]}" ] || keep+=("$q"); done
    pids=("${keep[@]}")
done
pod pod-b 02:00:00:00:01:0b --forward-mode=rxonly
for _ in $(seq 100); do link_up pod-b && break; sleep 0.1; done
pod pod-a 02:00:00:00:01:0a --forward-mode=txonly --eth-peer=0,02:00:00:00:01:0b
for _ in $(seq 100); do link_up pod-a && link_up pod-b && break; sleep 0.1; done
sleep 1
before=$(ctl --json stats); t0=$(date +%s.%N)
ctl stats --watch 1 --count "$FULL_SECS" | grep -E '^(--- |switch:|cni/)'
after=$(ctl --json stats); t1=$(date +%s.%N)
# Received (and switched) by the switch, and delivered to pod-b: pod-b shares its CPU with
# pod-a, so on a busy machine it reads fewer than pod-a sends; the rest is counted as
# tx_full drops.
read -r mpps gbps out_mpps c_full < <(jq -nr --argjson a "$before" --argjson b "$after" --arg t0 "$t0" --arg t1 "$t1" \
    --arg c "cni/pod-c/net1" '
    (($t1 | tonumber) - ($t0 | tonumber)) as $s
    | [ (($b.totals.rx_packets - $a.totals.rx_packets) / $s / 1e6),
        (($b.totals.rx_bytes - $a.totals.rx_bytes) * 8 / $s / 1e9),
        (($b.totals.tx_packets - $a.totals.tx_packets) / $s / 1e6),
        ($b.ports[] | select(.name == $c) | .tx_packets) ]
    | "\(.[0] * 100 | round / 100) \(.[1] * 100 | round / 100) \(.[2] * 100 | round / 100) \(.[3])"')
echo "== full rate: the switch took $mpps Mpps ($gbps Gbit/s of 64-byte frames) from pod-a and delivered $out_mpps Mpps to pod-b (the rest: tx_full, pod-b reads no faster on its shared CPU); pod-c (blue) received $c_full frames"
if [ "$c_full" -ne 0 ] || ! awk -v m="$mpps" 'BEGIN { exit !(m > 0.1) }'; then
    echo "== FAILED: expected full-rate traffic on VLAN $RED and still nothing into VLAN $BLUE; logs in $LOG"
    status=1
fi
