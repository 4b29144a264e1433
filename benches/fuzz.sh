#!/usr/bin/env bash
# Runs Heddle's cargo-fuzz targets with libFuzzer, each for a fixed time, one after another
# (or N at a time with -j), at the lowest CPU priority; safe to start in the background:
#   nohup benches/fuzz.sh -t 3600 > /tmp/fuzz.log 2>&1 &
#
#   benches/fuzz.sh [-t SECONDS] [-j JOBS] [TARGET...]
#
# TARGET is <crate dir>/<target> (dataplane/vhost_protocol, cni/call, manager/ipam_stdin) or
# a bare target name; default: every target of dataplane/fuzz, cni/fuzz and manager/fuzz.
# HEDDLE_FUZZ_NICE sets the CPU priority (default 19, the lowest; on a busy machine a
# niceness of 19 gets almost no CPU, so give 0 when the fuzz hours matter).
# Every run has -timeout=5 (an input that takes over 5 s is a finding: a hang). New inputs go
# to a scratch corpus under $HEDDLE_FUZZ_WORK (default /var/tmp/heddle-fuzz), seeded from the
# committed one (fuzz/corpus/<target>, read only); findings go to
# $HEDDLE_FUZZ_WORK/<crate>/<target>/artifacts/. Prints per target: executions, seconds,
# findings. Exits 1 when a target found something. docs/contributing.md ("Fuzzing") tells
# how to replay a finding and fold new inputs into the committed corpus.
#
# libFuzzer needs nightly compiler flags; the stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1, which this script sets (no nightly toolchain is needed).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=600
jobs=1
while getopts "t:j:" opt; do
    case $opt in
    t) seconds=$OPTARG ;;
    j) jobs=$OPTARG ;;
    *) echo "usage: $0 [-t SECONDS] [-j JOBS] [TARGET...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

crates=(dataplane cni manager)
all=()
for c in "${crates[@]}"; do
    for f in "$c"/fuzz/fuzz_targets/*.rs; do
        all+=("$c/$(basename "$f" .rs)")
    done
done
targets=()
if [ $# -eq 0 ]; then
    targets=("${all[@]}")
else
    for want in "$@"; do
        found=
        for t in "${all[@]}"; do
            if [ "$t" = "$want" ] || [ "${t#*/}" = "$want" ]; then targets+=("$t"); found=1; fi
        done
        if [ -z "$found" ]; then
            echo "unknown fuzz target $want: targets are ${all[*]}" >&2
            exit 2
        fi
    done
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
nice=${HEDDLE_FUZZ_NICE:-19}
work=${HEDDLE_FUZZ_WORK:-/var/tmp/heddle-fuzz}
mkdir -p "$work"

# Build every crate's targets first (one cargo at a time), so the runs time only fuzzing.
for c in $(printf '%s\n' "${targets[@]}" | cut -d/ -f1 | sort -u); do
    (cd "$c" && nice -n "$nice" cargo fuzz build -O)
done

run() {
    local crate=${1%%/*} name=${1#*/}
    local dir=$work/$crate/$name
    mkdir -p "$dir/corpus" "$dir/artifacts"
    local started=$SECONDS
    set +e
    (cd "$root/$crate" && nice -n "$nice" cargo fuzz run -O "$name" "$dir/corpus" "fuzz/corpus/$name" -- \
        -max_total_time="$seconds" -timeout=5 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$dir/artifacts/") >"$dir/run.log" 2>&1
    local rc=$?
    set -e
    local execs findings
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/run.log" | tail -n1)
    findings=$(find "$dir/artifacts" -type f | wc -l)
    printf '%-32s executions=%s seconds=%s findings=%s exit=%s log=%s\n' \
        "$1" "${execs:-?}" $((SECONDS - started)) "$findings" "$rc" "$dir/run.log"
    [ "$rc" -eq 0 ] && [ "$findings" -eq 0 ]
}

failed=0
pids=()
for t in "${targets[@]}"; do
    run "$t" &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$jobs" ]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do
    wait "$p" || failed=1
done
exit $failed
