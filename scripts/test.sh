#!/usr/bin/env bash
# The test command (README): on a fresh Debian 12 machine, as root.
#
# Installs what the tests need, starts a real kube-apiserver v1.20.2 on loopback
# (shared/kube-local, built once per machine, 5-10 minutes) unless KUBECONFIG already
# points at a test API server, then runs `cargo test --workspace`. Extra arguments go to
# cargo test (e.g. `scripts/test.sh -p mesh-init`).
#
# Nothing is skipped: the network-namespace tests need root and iptables, the cluster
# tests need KUBECONFIG, and each fails with a message naming what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (network namespaces, iptables)" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in iptables iproute2 nftables util-linux curl socat haproxy hey ca-certificates; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "==== installing: ${need[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if [ -z "${KUBECONFIG:-}" ]; then
    kube_local=${KUBE_LOCAL_SCRIPTS:-$repo/../shared/kube-local}
    if [ ! -x "$kube_local/start.sh" ]; then
        echo "scripts/test.sh: no KUBECONFIG and no kube-local scripts at $kube_local" >&2
        echo "  (set KUBE_LOCAL_SCRIPTS, or KUBECONFIG to a throwaway test API server)" >&2
        exit 1
    fi
    echo "==== kube-local: kube-apiserver v1.20.2 + etcd on loopback"
    "$kube_local/setup.sh"
    "$kube_local/start.sh"
    trap '"$kube_local/stop.sh" || true' EXIT
    export KUBECONFIG="$HOME/.kube-local/run/kubeconfig"
    export KUBECTL="${KUBECTL:-$HOME/.kube-local/bin/kubectl}"
fi

# --workspace would override a -p given here, so it is added only without one.
scope=(--workspace)
for arg in "$@"; do
    case "$arg" in -p|-p*|--package|--package=*) scope=() ;; esac
done
echo "==== cargo test ${scope[*]:+${scope[*]} }--no-fail-fast $*"
cargo test "${scope[@]}" --no-fail-fast "$@"
