#!/usr/bin/env bash
# Webhook latency benchmark: /inject p99 against /healthz p99 under the same load.
#
#   bench/webhook/run.sh            # build release, run, print medians and the ratio
#
# Starts a release `mesh-webhook serve` on 127.0.0.1 (port chosen by the kernel) with a
# throwaway CA and certificate (openssl), then runs `hey` (Debian package `hey`) against
# /healthz and /inject, interleaved, ROUNDS times each, with the same concurrency and
# request count. The /inject body is a real AdmissionReview of a Pod CREATE
# (webhook/testdata/admission/pod-create.json), answered with a full injection patch.
# Prints the median p50/p99 of each endpoint and p99(/inject) / p99(/healthz).
# Target: the ratio stays within 2.0 (exit status 1 when it does not).
#
# Knobs (environment): CONCURRENCY (default 16), REQUESTS per round (default 4000),
# ROUNDS (default 5), KEEPALIVE=0 for a new TLS connection per request (default 1, as the
# API server keeps its connections), RUST_LOG for the server (default info: one log line
# per injection, as in production), BIN to use a prebuilt binary, TARGET_RATIO (2.0).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

CONCURRENCY=${CONCURRENCY:-16}
REQUESTS=${REQUESTS:-4000}
ROUNDS=${ROUNDS:-5}
KEEPALIVE=${KEEPALIVE:-1}
TARGET_RATIO=${TARGET_RATIO:-2.0}
export RUST_LOG=${RUST_LOG:-info}

command -v hey >/dev/null || { echo "hey not found (apt-get install hey)" >&2; exit 2; }
command -v openssl >/dev/null || { echo "openssl not found (apt-get install openssl)" >&2; exit 2; }

if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p mesh-webhook
    BIN=$repo/target/release/mesh-webhook
fi

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
# KEEP_LOG=FILE keeps the server's log.
[ -n "${KEEP_LOG:-}" ] && trap 'cp "$work/server.log" "$KEEP_LOG"; cleanup' EXIT

# A CA and a serving certificate for 127.0.0.1 / localhost (P-256, like rcgen's default).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=bench CA" -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=mesh-webhook bench" -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$work/ext.cnf"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
    -days 1 -extfile "$work/ext.cnf" -out "$work/tls.crt" 2>/dev/null

"$BIN" serve --cert "$work/tls.crt" --key "$work/tls.key" --addr 127.0.0.1:0 \
    --native-sidecars false 2> "$work/server.log" &
server_pid=$!
addr=
for _ in $(seq 1 100); do
    addr=$(grep -o 'addr=[0-9.:]*' "$work/server.log" | head -n1 | cut -d= -f2 || true)
    [ -n "$addr" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "server did not report its address" >&2; cat "$work/server.log" >&2; exit 1; }
base=https://$addr

body=$repo/webhook/testdata/admission/pod-create.json
# Sanity: verified TLS, and a real injection patch in the answer.
curl -sS --cacert "$work/ca.crt" "$base/healthz" | grep -q ok
curl -sS --cacert "$work/ca.crt" -H 'Content-Type: application/json' --data-binary "@$body" \
    "$base/inject" > "$work/answer.json"
jq -e '.response.allowed == true and .response.patchType == "JSONPatch" and (.response.patch | length > 100)' \
    "$work/answer.json" >/dev/null || { echo "unexpected /inject answer:" >&2; cat "$work/answer.json" >&2; exit 1; }
patch_ops=$(jq -r '.response.patch' "$work/answer.json" | base64 -d | jq length)

ka=()
[ "$KEEPALIVE" = 1 ] || ka=(-disable-keepalive)

# run_hey NAME ARGS...: one round; prints "p50 p99" in milliseconds, checks all 200s.
run_hey() {
    local name=$1 out
    shift
    # -host: hey puts the Host header (with the port) into SNI, which is not a legal
    # server name and rustls refuses the handshake; the API server sends a plain name.
    out=$(hey -n "$REQUESTS" -c "$CONCURRENCY" -host localhost "${ka[@]}" "$@")
    if ! grep -Eq "^\s+\[200\]\s+$REQUESTS responses" <<<"$out"; then
        echo "$name: not all responses were 200:" >&2
        echo "$out" >&2
        exit 1
    fi
    awk '/ 50% in / {p50=$3} / 99% in / {p99=$3} END {printf "%.3f %.3f\n", p50*1000, p99*1000}' <<<"$out"
}

# Warm up both paths (connection pools, allocator, page cache).
run_hey healthz "$base/healthz" >/dev/null
run_hey inject -m POST -T application/json -D "$body" "$base/inject" >/dev/null

printf 'mesh-webhook %s on %s: concurrency %s, %s requests per round, %s rounds, keepalive %s\n' \
    "$("$BIN" --version 2>/dev/null | awk '{print $2}')" "$addr" "$CONCURRENCY" "$REQUESTS" "$ROUNDS" "$KEEPALIVE"
printf '/inject answers a %s-operation JSONPatch\n' "$patch_ops"
printf '%-6s %-9s %10s %10s\n' round endpoint p50_ms p99_ms
h99=() i99=() h50=() i50=()
for r in $(seq 1 "$ROUNDS"); do
    read -r a b < <(run_hey healthz "$base/healthz")
    h50+=("$a"); h99+=("$b")
    printf '%-6s %-9s %10s %10s\n' "$r" healthz "$a" "$b"
    read -r a b < <(run_hey inject -m POST -T application/json -D "$body" "$base/inject")
    i50+=("$a"); i99+=("$b")
    printf '%-6s %-9s %10s %10s\n' "$r" inject "$a" "$b"
done

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2]+v[NR/2+1])/2}'; }
mh50=$(median "${h50[@]}"); mh99=$(median "${h99[@]}")
mi50=$(median "${i50[@]}"); mi99=$(median "${i99[@]}")
# Server-side time per /inject (handler only, from its own histogram).
metrics=$(curl -sS --cacert "$work/ca.crt" "$base/metrics")
handler_us=$(awk '/^sidecar_injection_time_seconds_sum/ {s=$2} /^sidecar_injection_time_seconds_count/ {c=$2} END {printf "%.0f", (c > 0 ? s / c * 1e6 : 0)}' <<<"$metrics")
ratio=$(awk -v i="$mi99" -v h="$mh99" 'BEGIN {printf "%.2f", (h > 0 ? i / h : 0)}')
echo
printf 'median /healthz p50 %s ms  p99 %s ms\n' "$mh50" "$mh99"
printf 'median /inject  p50 %s ms  p99 %s ms\n' "$mi50" "$mi99"
printf 'mean /inject handler time %s us (sidecar_injection_time_seconds)\n' "$handler_us"
printf 'p99 ratio /inject / /healthz = %s (target <= %s)\n' "$ratio" "$TARGET_RATIO"
if awk -v r="$ratio" -v t="$TARGET_RATIO" 'BEGIN {exit !(r <= t)}'; then
    echo "PASS"
else
    echo "FAIL: /inject p99 is more than ${TARGET_RATIO}x /healthz p99"
    exit 1
fi
