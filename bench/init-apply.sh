#!/usr/bin/env bash
# Time to apply the default (injected) ruleset with mesh-init, in a throwaway network
# namespace per run, next to feeding the same text to iptables-restore directly.
#
#   bench/init-apply.sh [RUNS]   (as root)          (default 21 runs per measurement)
#   MESH_INIT=path/to/mesh-init BACKENDS="nft legacy" bench/init-apply.sh
#
# mesh-init does per family: read the nat table (iptables-save), one iptables-restore
# transaction; plus backend detection and `::6` on lo. The baseline is one
# iptables-restore per family with the same input. Reported: median wall time, ms.
set -euo pipefail

RUNS=${1:-21}
BACKENDS=${BACKENDS:-"nft legacy"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MESH_INIT=${MESH_INIT:-$ROOT/target/release/mesh-init}
ARGS=(-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021)

[[ $(id -u) == 0 ]] || { echo "init-apply.sh: needs root (network namespaces)" >&2; exit 1; }
if [[ ! -x $MESH_INIT ]]; then
  echo "building $MESH_INIT" >&2
  (cd "$ROOT" && cargo build --release -p mesh-init >&2)
fi

NS=""
cleanup() { [[ -n $NS ]] && ip netns del "$NS" 2>/dev/null || true; rm -f "$V4" "$V6"; }
V4=$(mktemp) V6=$(mktemp)
trap cleanup EXIT

# The exact restore input mesh-init writes for a fresh pod, per family.
"$MESH_INIT" --dry-run "${ARGS[@]}" | awk -v v4="$V4" -v v6="$V6" '
  /^# IPv4/ {out=v4; next} /^# IPv6/ {out=v6; next} {print > out}'

now_ns() { date +%s%N; }

# time_one CMD... : runs CMD in a fresh namespace, prints elapsed nanoseconds.
time_one() {
  NS="mesh-bench-$$-$RANDOM"
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  local t0 t1
  t0=$(now_ns)
  "$@" >/dev/null
  t1=$(now_ns)
  ip netns del "$NS"
  NS=""
  echo $((t1 - t0))
}

median_ms() { sort -n | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; printf "%.2f", m/1e6}'; }

mesh_run() { ip netns exec "$NS" "$MESH_INIT" "${ARGS[@]}" --backend "$B" --ipv6 on; }
raw_run() {
  ip netns exec "$NS" "iptables-$B-restore" --noflush $W <"$V4"
  ip netns exec "$NS" "ip6tables-$B-restore" --noflush $W <"$V6"
}
nothing_run() { ip netns exec "$NS" true; }

printf '%-8s %6s %22s %26s %18s\n' backend runs "mesh-init median (ms)" "iptables-restore x2 (ms)" "netns exec (ms)"
for B in $BACKENDS; do
  W=""; [[ $B == legacy ]] && W="-w 10"
  mesh=() raw=() base=()
  for ((i = 0; i < RUNS; i++)); do
    mesh+=("$(time_one mesh_run)")
    raw+=("$(time_one raw_run)")
    base+=("$(time_one nothing_run)")
  done
  printf '%-8s %6d %22s %26s %18s\n' "$B" "$RUNS" \
    "$(printf '%s\n' "${mesh[@]}" | median_ms)" \
    "$(printf '%s\n' "${raw[@]}" | median_ms)" \
    "$(printf '%s\n' "${base[@]}" | median_ms)"
done
echo "(mesh-init: one process, both families; baseline: two ip netns exec + restore; last column: one empty ip netns exec)"
