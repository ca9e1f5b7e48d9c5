#!/usr/bin/env bash
# L7 benchmark: HTTP/1.1 through two sidecar hops (client pod outbound, server pod
# inbound): direct vs mesh-proxy (config streamed by the real mesh-control from
# kube-local) vs nginx vs HAProxy (mode http), and through mesh-proxy as the ingress
# gateway (--role gateway: modes gateway, gateway-mesh), in network namespaces this
# script creates and deletes. Needs root, iproute2, iptables, setpriv, socat, curl,
# python3; installs nginx (Debian's) if missing; starts kube-local if it is not up (never
# stops it).
#
#   bench/http/run.sh                        # 3 reps x (5 s at 1,000 req/s + 3 s unbounded)
#   BENCH_REPS=5 BENCH_SECONDS=10 bench/http/run.sh
#   BENCH_MODES=direct,mesh BENCH_SERVICES=0 bench/http/run.sh   # no 10 -> 1,000 Services phase
#   BENCH_MODES=direct,gateway bench/http/run.sh   # through the ingress gateway vs direct (#14)
#   BENCH_JSON=/tmp/http.json  MESH_PROXY_BIN=/path/to/mesh-proxy  BENCH_KEEP_LOGS=1
#
# mesh-proxy and mesh-control are the images' builds (static musl,
# --target x86_64-unknown-linux-musl, as docker/*.Dockerfile build them); mesh-init and
# the load generator mesh-loadgen (bench/loadgen, its HTTP mode) are release builds.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, iptables)" >&2; exit 1; }
need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v socat >/dev/null || need+=(socat)
command -v curl >/dev/null || need+=(curl)
# ring (rustls) compiles C for the musl target with musl-gcc.
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v iptables-restore >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
for tool in ip ss iptables-restore python3 setpriv socat curl haproxy; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

# kube-local: the shared API server on 127.0.0.1:6443 (started if down, never stopped).
export KUBECONFIG="${KUBECONFIG:-$HOME/.kube-local/run/kubeconfig}"
export KUBECTL="${KUBECTL:-$HOME/.kube-local/bin/kubectl}"
KUBE_LOCAL="${KUBE_LOCAL:-/work/shared/kube-local}"
if ! curl -sk --max-time 3 https://127.0.0.1:6443/readyz >/dev/null; then
    echo "kube-local is not up: starting it ($KUBE_LOCAL/start.sh)" >&2
    "$KUBE_LOCAL/start.sh" >&2
fi
if [ ! -x "$KUBECTL" ] || [ ! -r "$KUBECONFIG" ]; then
    echo "need kube-local's kubectl ($KUBECTL) and kubeconfig ($KUBECONFIG)" >&2; exit 1
fi
# The VirtualService, DestinationRule and Gateway kinds: deploy/crds (already there when
# the tests ran; applying the same CRDs again changes nothing).
if ! "$KUBECTL" get crd virtualservices.networking.istio.io >/dev/null 2>&1 ||
    ! "$KUBECTL" get crd gateways.networking.istio.io >/dev/null 2>&1; then
    "$KUBECTL" apply -k deploy/crds >&2
    "$KUBECTL" wait --for=condition=established --timeout=30s \
        crd/virtualservices.networking.istio.io crd/destinationrules.networking.istio.io \
        crd/gateways.networking.istio.io >&2
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
MUSL=x86_64-unknown-linux-musl
cargo build --release -p mesh-init -p mesh-loadgen >&2
if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL"; then
    rustup target add "$MUSL" >&2
fi
if [ -z "${MESH_PROXY_BIN:-}" ] || [ -z "${MESH_CONTROL_BIN:-}" ]; then
    # Two commands: built together, mesh-proxy would get mesh-control's features (see
    # docker/build.sh).
    cargo build --release --target "$MUSL" -p mesh-proxy >&2
    cargo build --release --target "$MUSL" -p mesh-control >&2
fi
MESH_PROXY_BIN="${MESH_PROXY_BIN:-$CARGO_TARGET_DIR/$MUSL/release/mesh-proxy}"
MESH_CONTROL_BIN="${MESH_CONTROL_BIN:-$CARGO_TARGET_DIR/$MUSL/release/mesh-control}"
# How much of the code layout's list this binary matches (a stale list shows in RSS).
python3 proxy/link/hot.py --check proxy/link/hot.txt "$MESH_PROXY_BIN" >&2 || true

# BENCH_COMMIT may be given with MESH_PROXY_BIN / MESH_CONTROL_BIN: the commit they were
# built from (e.g. a `git archive` of it, when other sessions edit this working tree).
if [ -z "${BENCH_COMMIT:-}" ]; then
    BENCH_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    git diff --quiet HEAD -- proxy control config common Cargo.toml Cargo.lock 2>/dev/null ||
        BENCH_COMMIT+="+dirty"
fi
export BENCH_COMMIT
export BENCH_TAG="$$"
export BENCH_JSON="${BENCH_JSON:-$CARGO_TARGET_DIR/bench-http.json}"
# The orchestrator cleans up after itself (also on SIGINT/SIGTERM); this trap is the
# safety net if it dies harder: our namespaces are named mh*x<tag> and mhr<tag>, and
# whatever still runs in them was started by this run.
cleanup() {
    set +e
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^mh([0-9]+x|r)${BENCH_TAG}\$"); do
        for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$ns"
    done
}
trap cleanup EXIT
python3 bench/http/bench.py run "$MESH_PROXY_BIN" "$MESH_CONTROL_BIN" \
    "$CARGO_TARGET_DIR/release/mesh-init" "$CARGO_TARGET_DIR/release/mesh-loadgen" &
child=$!
# A signal to this script reaches the orchestrator, which then tears down what it made.
trap 'kill -INT "$child" 2>/dev/null; wait "$child" || true; exit 130' INT
trap 'kill -TERM "$child" 2>/dev/null; wait "$child" || true; exit 143' TERM
wait "$child"
