#!/usr/bin/env bash
# Make sure at least MiB (default 2048) of 2 MiB hugepages are reserved and hugetlbfs is
# mounted at /dev/hugepages. Idempotent: only ever raises nr_hugepages, never lowers it.
#
# Usage: deploy/scripts/hugepages.sh [MiB]
set -euo pipefail

MIB=${1:-2048}
if ! [[ "$MIB" =~ ^[0-9]+$ ]]; then
    echo "hugepages.sh: size must be a whole number of MiB, got '$MIB'." >&2
    exit 2
fi
PAGE_KB=2048
SYSFS=/sys/kernel/mm/hugepages/hugepages-${PAGE_KB}kB
MOUNTPOINT=/dev/hugepages
want=$(((MIB * 1024 + PAGE_KB - 1) / PAGE_KB))

if [[ ! -d "$SYSFS" ]]; then
    echo "hugepages.sh: this kernel has no 2 MiB hugepage support ($SYSFS is missing)." >&2
    exit 1
fi

have=$(cat "$SYSFS/nr_hugepages")
before=$have
if ((have < want)); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "hugepages.sh: $have 2 MiB pages reserved, $want wanted; run as root to reserve more." >&2
        exit 1
    fi
    # Compact memory first so the kernel can find contiguous 2 MiB blocks.
    echo 1 >/proc/sys/vm/compact_memory 2>/dev/null || true
    echo "$want" >"$SYSFS/nr_hugepages"
    have=$(cat "$SYSFS/nr_hugepages")
fi

if ! findmnt -n -t hugetlbfs "$MOUNTPOINT" >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "hugepages.sh: hugetlbfs is not mounted at $MOUNTPOINT; run as root to mount it." >&2
        exit 1
    fi
    mkdir -p "$MOUNTPOINT"
    mount -t hugetlbfs -o pagesize=2M nodev "$MOUNTPOINT"
fi

free=$(cat "$SYSFS/free_hugepages")
echo "hugepages.sh: 2 MiB pages reserved=$have ($((have * 2)) MiB) free=$free, hugetlbfs at $MOUNTPOINT."
for node in /sys/devices/system/node/node*/hugepages/hugepages-${PAGE_KB}kB; do
    [[ -d "$node" ]] || continue
    n=${node#/sys/devices/system/node/}
    echo "hugepages.sh:   ${n%%/*}: $(cat "$node/nr_hugepages") pages"
done

if ((have < want)); then
    # Do not leave a partial raise behind (it could pin most of the machine's memory):
    # go back to what was reserved before this run, never below it.
    if ((have > before)); then
        echo "$before" >"$SYSFS/nr_hugepages" || true
    fi
    echo "hugepages.sh: the kernel could reserve only $have of $want 2 MiB pages ($((have * 2)) of $MIB MiB); left the reservation at $(cat "$SYSFS/nr_hugepages") pages. Free memory (or reboot) and retry, or ask for less." >&2
    exit 1
fi
