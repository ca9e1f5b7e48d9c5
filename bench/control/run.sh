#!/usr/bin/env bash
# mesh-control scale benchmark: memory, initial sync, first subscriptions and push latency
# with many Services, endpoints and connected proxies. See bench/control/README.md.
#
#   bench/control/run.sh            # build release, run both scales, print the table
#
# Starts a private kube-local (its own etcd and kube-apiserver on free loopback ports, its
# own data in a temporary folder; the shared instance on :6443 is not touched), installs
# the CRDs (deploy/crds), then per scale: `mesh-control-load run` creates the objects
# (direct API calls), starts a release `mesh-control serve` on loopback, times its sync,
# opens one config stream per simulated proxy, makes EndpointSlice and VirtualService
# edits one at a time and times each affected proxy's arrival, reads VmRSS/VmHWM from
# /proc; then deletes the objects. Prints the scales side by side with the targets
# (memory < 150 MB, push p99 < 1 s); exit status 1 when a target is missed.
#
# Knobs (environment): SCALES (default "10:10 1000:10", Services:endpoints per Service),
# PROXIES (1000), NARROW_ROUNDS (20), HUB_ROUNDS (10), NO_PODS=1 (no Pods: peers unknown,
# Workload keys NotFound), OUT (results JSON, default target/bench-control/results.json),
# KEEP=1 (keep the work folder: kube-local and mesh-control logs), MESH_CONTROL and
# LOAD to use prebuilt binaries, KUBE_LOCAL_DIR (kube-local's setup folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

SCALES=${SCALES:-"10:10 1000:10"}
PROXIES=${PROXIES:-1000}
NARROW_ROUNDS=${NARROW_ROUNDS:-20}
HUB_ROUNDS=${HUB_ROUNDS:-10}
OUT=${OUT:-$repo/target/bench-control/results.json}
KL=${KUBE_LOCAL_DIR:-$HOME/.kube-local}
KL_SCRIPTS=${KL_SCRIPTS:-$repo/../shared/kube-local}
KUBECTL=$KL/bin/kubectl

[ -x "$KUBECTL" ] || { echo "no $KUBECTL: run $KL_SCRIPTS/setup.sh once" >&2; exit 2; }
[ -f "$KL_SCRIPTS/start.sh" ] || { echo "no $KL_SCRIPTS/start.sh" >&2; exit 2; }

if [ -z "${MESH_CONTROL:-}" ]; then
    cargo build --release -q -p mesh-control
    MESH_CONTROL=$repo/target/release/mesh-control
fi
if [ -z "${LOAD:-}" ]; then
    # Built on its own: together with mesh-control, feature unification would change the
    # mesh-control binary being measured.
    cargo build --release -q -p mesh-control-load
    LOAD=$repo/target/release/mesh-control-load
fi

# 1,000 proxy connections on each side, plus the API server's.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -ge 4096 ] || { echo "need ulimit -n >= 4096 (have $(ulimit -n))" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-control.XXXXXX")
export KUBE_LOCAL_DIR=$KL KUBE_LOCAL_RUN=$work/kube/run KUBE_LOCAL_ETCD_DATA=$work/kube/etcd
cleanup() {
    # stop.sh kills only the PIDs this start.sh recorded in our own run folder.
    bash "$KL_SCRIPTS/stop.sh" >/dev/null 2>&1 || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

read -r api etcd peer < <("$LOAD" free-ports 3)
t0=$(date +%s.%N)
KUBE_LOCAL_API_PORT=$api KUBE_LOCAL_ETCD_PORT=$etcd KUBE_LOCAL_ETCD_PEER_PORT=$peer \
    bash "$KL_SCRIPTS/start.sh" > "$work/kube-start.log" 2>&1 \
    || { cat "$work/kube-start.log" >&2; exit 1; }
export KUBECONFIG=$KUBE_LOCAL_RUN/kubeconfig
"$KUBECTL" apply -k deploy/crds > /dev/null
"$KUBECTL" wait --for condition=established --timeout=60s \
    crd/virtualservices.networking.istio.io crd/destinationrules.networking.istio.io > /dev/null
# A created CRD is served a moment after it is Established: wait until it lists.
for _ in $(seq 1 50); do
    "$KUBECTL" get virtualservices.networking.istio.io -A > /dev/null 2>&1 && break
    sleep 0.2
done
printf 'private kube-local %s on 127.0.0.1:%s ready with CRDs after %.1f s\n' \
    "$("$KL/bin/kube-apiserver" --version | awk '{print $2}')" "$api" \
    "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')"

pods=()
[ "${NO_PODS:-0}" = 1 ] && pods=(--no-pods)
files=()
set -- $SCALES
while [ $# -gt 0 ]; do
    s=${1%%:*} e=${1#*:}
    shift
    more=()
    [ $# -gt 0 ] && more=(--cleanup)  # the next scale starts from an empty cluster
    "$LOAD" run --mesh-control "$MESH_CONTROL" --kubeconfig "$KUBECONFIG" \
        --services "$s" --endpoints-per-service "$e" --proxies "$PROXIES" "${pods[@]}" \
        --narrow-rounds "$NARROW_ROUNDS" --hub-rounds "$HUB_ROUNDS" \
        --json "$work/scale-$s.json" --log "$work/mesh-control-$s.log" "${more[@]}" > /dev/null
    files+=("$work/scale-$s.json")
done

mkdir -p "$(dirname "$OUT")"
note="mesh-control $("$MESH_CONTROL" --version | awk '{print $2}'), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
# Exit status 1 when a target is missed.
"$LOAD" report --json "$OUT" --note "$note" "${files[@]}"
