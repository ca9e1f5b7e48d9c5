#!/usr/bin/env bash
# mesh-proxy benchmark: direct vs mesh-proxy vs HAProxy, in network namespaces this
# script creates and deletes. Needs root and python3; installs iproute2, iptables, haproxy,
# util-linux (setpriv) and musl-tools with apt when missing.
#
#   bench/proxy/run.sh                 # release builds, 3 reps x 2 s per workload
#   BENCH_REPS=5 BENCH_SECONDS=3 bench/proxy/run.sh
#   MESH_PROXY_BIN=/path/to/mesh-proxy bench/proxy/run.sh   # measure another build as `mesh`
#   BENCH_MODES=direct,mesh,mesh-glibc,mesh-splice,mesh-1t,haproxy  BENCH_JSON=/tmp/r.json
#
# `mesh` (and its flag variants) runs the binary the image ships: the static musl build
# of docker/proxy.Dockerfile (`--target x86_64-unknown-linux-musl`; this script adds the
# target with rustup when it is missing). `mesh-glibc` runs the same code as plain
# `cargo build --release` makes it (dynamically linked, glibc; MESH_PROXY_GLIBC_BIN
# overrides). `mesh-base` runs MESH_PROXY_BASE_BIN (e.g. a copy of an earlier build) for
# before/after in one run. The clients and servers are mesh-loadgen (bench/loadgen).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, iptables)" >&2; exit 1; }
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables-restore >/dev/null || need+=(iptables)
command -v haproxy >/dev/null || need+=(haproxy)
command -v setpriv >/dev/null || need+=(util-linux)
# ring (rustls) compiles C for the musl target with musl-gcc (the `mesh` build below).
[ -n "${MESH_PROXY_BIN:-}" ] || command -v musl-gcc >/dev/null || need+=(musl-tools)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
for tool in ip iptables-restore haproxy python3 setpriv; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
MUSL=x86_64-unknown-linux-musl
modes=",${BENCH_MODES:-direct,mesh,mesh-glibc,mesh-splice,haproxy},"

cargo build --release -p mesh-init -p mesh-loadgen >&2
MESH_INIT_BIN="$CARGO_TARGET_DIR/release/mesh-init"
LOADGEN_BIN="$CARGO_TARGET_DIR/release/mesh-loadgen"
if [ -z "${MESH_PROXY_BIN:-}" ]; then
    if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL"; then
        rustup target add "$MUSL" >&2 || {
            echo "cannot add the $MUSL target (the image's build); set MESH_PROXY_BIN" \
                 "to measure another build" >&2
            exit 1
        }
    fi
    cargo build --release --target "$MUSL" -p mesh-proxy >&2
    MESH_PROXY_BIN="$CARGO_TARGET_DIR/$MUSL/release/mesh-proxy"
fi
case "$modes" in
*,mesh-glibc,*)
    if [ -z "${MESH_PROXY_GLIBC_BIN:-}" ]; then
        cargo build --release -p mesh-proxy >&2
        MESH_PROXY_GLIBC_BIN="$CARGO_TARGET_DIR/release/mesh-proxy"
    fi
    export MESH_PROXY_GLIBC_BIN ;;
esac
exec python3 bench/proxy/bench.py run "$MESH_PROXY_BIN" "$MESH_INIT_BIN" "$LOADGEN_BIN"
