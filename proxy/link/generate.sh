#!/usr/bin/env bash
# Regenerates proxy/link/hot.txt: the functions mesh-proxy runs, which proxy/build.rs
# packs together in the image's build. Runs bench/http/run.sh once, short, with every
# proxy under valgrind's callgrind (plaintext sidecars with and without resilience policy,
# mTLS sidecars, the gateway, the
# TCP path), then proxy/link/hot.py over what callgrind saw run. The proxy it runs is built
# with MESH_PROXY_LAYOUT=plain: the names do not depend on the layout, and a broken
# hot.txt cannot stop its own regeneration. As root; installs
# valgrind with apt when missing; ~5 min. The numbers bench/http prints meanwhile are
# callgrind's, not the proxy's: measure afterwards with a normal run.
#
#   proxy/link/generate.sh && git diff --stat proxy/link/hot.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "run as root (bench/http/run.sh)" >&2; exit 1; }
if ! command -v valgrind >/dev/null; then
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind >&2
fi
out=$(mktemp -d /tmp/mesh-hot-text.XXXXXX)
[ -n "${HOT_KEEP:-}" ] || trap 'rm -rf "$out"' EXIT   # HOT_KEEP=1: keep the callgrind outputs
chmod 0777 "$out"   # the proxies run as uid 1337
MESH_PROXY_LAYOUT=plain MESH_PROXY_WRAP="valgrind --tool=callgrind --demangle=no --callgrind-out-file=$out/{name}.%p.cg" \
BENCH_MODES="${HOT_MODES:-direct,mesh,mesh-policy,mesh-mtls,gateway,gateway-mesh}" BENCH_SERVICES=0 \
BENCH_REPS=1 BENCH_SECONDS=2 BENCH_UNBOUNDED_SECONDS=1 BENCH_TCP_SECONDS=1 \
BENCH_JSON="$out/bench.json" bench/http/run.sh > "$out/bench.log" 2>&1 || {
    tail -30 "$out/bench.log" >&2
    echo "bench/http/run.sh failed under callgrind (log above)" >&2
    exit 1
}
ls "$out"/*.cg* >/dev/null
# The binary the runs ran (run.sh's build): its aliases (folded functions) by address.
python3 proxy/link/hot.py proxy/link/hot.txt "$out" \
    "${CARGO_TARGET_DIR:-$(pwd)/target}/x86_64-unknown-linux-musl/release/mesh-proxy"
