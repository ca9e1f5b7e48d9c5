#!/usr/bin/env bash
# mesh-proxy benchmark: direct vs mesh-proxy (splice and buffered) vs HAProxy, in
# network namespaces this script creates and deletes. Needs root, iproute2, iptables,
# haproxy, python3, setpriv.
#
#   bench/proxy/run.sh                 # release build, 3 reps x 2 s per workload
#   BENCH_REPS=5 BENCH_SECONDS=3 bench/proxy/run.sh
#   MESH_PROXY_BIN=/path/to/mesh-proxy bench/proxy/run.sh   # measure another build
#   BENCH_MODES=direct,mesh,mesh-static,mesh-splice,mesh-2t,haproxy  BENCH_JSON=/tmp/r.json
#
# `mesh-static` is the same code linked statically (`-C target-feature=+crt-static`, glibc),
# standing in for the shipped image's static musl build (docker/proxy.Dockerfile); it is
# built only when a mode asks for it (MESH_PROXY_STATIC_BIN overrides). `mesh-base` runs
# MESH_PROXY_BASE_BIN (e.g. a copy of an earlier build) for before/after in one run.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, iptables)" >&2; exit 1; }
for tool in ip iptables-restore haproxy python3 setpriv; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
if [ -z "${MESH_PROXY_BIN:-}" ]; then
    cargo build --release -p mesh-proxy -p mesh-init >&2
    MESH_PROXY_BIN="$CARGO_TARGET_DIR/release/mesh-proxy"
fi
MESH_INIT_BIN="${MESH_INIT_BIN:-$CARGO_TARGET_DIR/release/mesh-init}"
case ",${BENCH_MODES:-direct,mesh,mesh-static,mesh-splice,haproxy}," in
*,mesh-static,*)
    if [ -z "${MESH_PROXY_STATIC_BIN:-}" ]; then
        host="$(rustc -vV | sed -n 's/^host: //p')"
        RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$host" -p mesh-proxy >&2
        MESH_PROXY_STATIC_BIN="$CARGO_TARGET_DIR/$host/release/mesh-proxy"
    fi
    export MESH_PROXY_STATIC_BIN ;;
esac
[ -x "$MESH_INIT_BIN" ] || cargo build --release -p mesh-init >&2
exec python3 bench/proxy/bench.py run "$MESH_PROXY_BIN" "$MESH_INIT_BIN"
