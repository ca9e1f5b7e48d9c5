#!/usr/bin/env bash
# The test command (README): on a fresh Debian 12 machine, as root.
#
# Installs what the tests need, then starts two real clusters and runs `cargo test
# --workspace` against them:
#  - kube-local (../shared/kube-local: kube-apiserver v1.20.2 + etcd on loopback, built
#    once per machine), for the webhook's API server tests through KUBECONFIG, unless
#    KUBECONFIG already points at a test API server;
#  - kube-node (../shared/kube-node: a real single-node Kubernetes v1.20.2 with kubelet,
#    docker and kube-proxy in its own network namespace; setup.sh once per machine, ~4 min),
#    for the node tests (tests/tests/node_*.rs) through KUBE_NODE_KUBECONFIG, after
#    docker/build.sh has built the mesh's images into the node's docker (no registry),
#    unless KUBE_NODE_KUBECONFIG already points at a running kube-node (then
#    KUBE_NODE_DOCKER_HOST must name its docker, and the images are built into it).
# Both are stopped on exit, whether the tests pass or fail (kube-node's stop.sh leaves
# nothing behind). Extra arguments go to cargo test (e.g. `scripts/test.sh -p mesh-init`);
# kube-node is started only when the run includes mesh-tests (no -p, or -p mesh-tests).
#
# Nothing is skipped: the network-namespace tests need root and iptables, the cluster
# tests need KUBECONFIG, the node tests KUBE_NODE_KUBECONFIG, and each fails with a
# message naming what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (network namespaces, iptables)" >&2; exit 1; }

t_start=$(date +%s)
timings=()
timed() { # label command...: runs it and records how long it took
    local label=$1 t0
    shift
    t0=$(date +%s)
    "$@"
    timings+=("$label $(($(date +%s) - t0)) s")
}

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in iptables iproute2 nftables util-linux curl openssl socat haproxy hey ca-certificates musl-tools tcpdump; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "==== installing: ${need[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Stopped in reverse order on exit; INT/TERM exit through the EXIT trap too.
stops=()
cleanup() {
    local rc=$? i
    for ((i = ${#stops[@]} - 1; i >= 0; i--)); do
        echo "==== ${stops[i]}"
        eval "${stops[i]}" || echo "scripts/test.sh: '${stops[i]}' failed" >&2
    done
    if [ -s "${MESH_NODE_REPORT:-}" ]; then
        echo "==== measured on kube-node (tests/tests/node_*.rs)"
        sed 's/^/     /' "$MESH_NODE_REPORT"
    fi
    [ -z "${MESH_NODE_REPORT:-}" ] || rm -f "$MESH_NODE_REPORT"
    if [ ${#timings[@]} -gt 0 ]; then
        echo "==== timings: $(printf '%s; ' "${timings[@]}")total $(($(date +%s) - t_start)) s"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${KUBECONFIG:-}" ]; then
    kube_local=${KUBE_LOCAL_SCRIPTS:-$repo/../shared/kube-local}
    if [ ! -x "$kube_local/start.sh" ]; then
        echo "scripts/test.sh: no KUBECONFIG and no kube-local scripts at $kube_local" >&2
        echo "  (set KUBE_LOCAL_SCRIPTS, or KUBECONFIG to a throwaway test API server)" >&2
        exit 1
    fi
    echo "==== kube-local: kube-apiserver v1.20.2 + etcd on loopback"
    timed "kube-local setup" "$kube_local/setup.sh"
    stops+=("'$kube_local/stop.sh'")
    timed "kube-local start" "$kube_local/start.sh"
    export KUBECONFIG="$HOME/.kube-local/run/kubeconfig"
    export KUBECTL="${KUBECTL:-$HOME/.kube-local/bin/kubectl}"
fi

# --workspace would override a -p given here, so it is added only without one.
scope=(--workspace)
node_tests=1
for arg in "$@"; do
    case "$arg" in -p | -p* | --package | --package=*) scope=() node_tests=0 ;; esac
done
prev=
for arg in "$@"; do
    case "$arg" in -pmesh-tests | --package=mesh-tests) node_tests=1 ;; esac
    if [ "$arg" = mesh-tests ] && { [ "$prev" = -p ] || [ "$prev" = --package ]; }; then node_tests=1; fi
    prev=$arg
done

if [ "$node_tests" = 1 ]; then
    if [ -z "${KUBE_NODE_KUBECONFIG:-}" ]; then
        kube_node=${KUBE_NODE_SCRIPTS:-$repo/../shared/kube-node}
        if [ ! -x "$kube_node/start.sh" ]; then
            echo "scripts/test.sh: no KUBE_NODE_KUBECONFIG and no kube-node scripts at $kube_node" >&2
            echo "  (set KUBE_NODE_SCRIPTS, or KUBE_NODE_KUBECONFIG and KUBE_NODE_DOCKER_HOST to a running kube-node)" >&2
            exit 1
        fi
        kn_dir=${KUBE_NODE_DIR:-$HOME/.kube-node}
        echo "==== kube-node: a real single-node Kubernetes v1.20.2 (kubelet, docker, kube-proxy)"
        timed "kube-node setup" "$kube_node/setup.sh"
        stops+=("'$kube_node/stop.sh'")
        timed "kube-node start" "$kube_node/start.sh"
        # What run/env exports; only the node's own names, so KUBECONFIG (kube-local) stays.
        export KUBE_NODE_KUBECONFIG="$kn_dir/run/kubeconfig"
        export KUBE_NODE_KUBECTL="$kn_dir/bin/kubectl"
        export KUBE_NODE_DOCKER_HOST="unix://$kn_dir/run/docker.sock"
    elif [ -z "${KUBE_NODE_DOCKER_HOST:-}" ]; then
        echo "scripts/test.sh: KUBE_NODE_KUBECONFIG is set but KUBE_NODE_DOCKER_HOST is not (the node's docker, for docker/build.sh)" >&2
        exit 1
    fi
    # The node tests' measurements (apply -> 2/2, memory), printed on exit.
    MESH_NODE_REPORT=$(mktemp /tmp/mesh-node-report.XXXXXX)
    export MESH_NODE_REPORT
    echo "==== docker/build.sh into the node's docker ($KUBE_NODE_DOCKER_HOST)"
    timed "images" env DOCKER_HOST="$KUBE_NODE_DOCKER_HOST" docker/build.sh
fi

echo "==== cargo test ${scope[*]:+${scope[*]} }--no-fail-fast $*"
timed "cargo test" cargo test "${scope[@]}" --no-fail-fast "$@"
