#!/usr/bin/env bash
# The whole data path of one injected pod on one Linux machine, no cluster needed.
#
#   demo/whole-pod.sh            (as root)
#
# What it does, step by step (each printed as it happens):
#  1. two network namespaces, "pod" (198.18.0.2) and "server" (198.18.0.1), joined by a
#     veth pair; only addresses from 198.18.0.0/15, the benchmarking range;
#  2. a small HTTP server (socat) in "server" on 198.18.0.1:8080;
#  3. in "pod": mesh-init with the arguments the injector gives istio-init, then
#     mesh-proxy as uid/gid 1337 (what the istio-proxy container runs);
#  4. the "app": curl as uid 1001 in "pod", a plain request to http://198.18.0.1:8080/ —
#     the nat OUTPUT rule sends it to the proxy on :15001, the proxy (uid 1337, not
#     captured) connects to the original destination;
#  5. the proxy's Prometheus metrics for that connection, and the nat rules' counters;
#  6. cleanup of processes and namespaces, also when a step fails (trap).
#
# Needs: root, iproute2, iptables, curl, socat, setpriv (util-linux); `cargo` unless
# MESH_BIN_DIR names a folder holding mesh-init and mesh-proxy already built.
# Exit status 0 only if the request went through the proxy (its counter moved).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
POD_IP=198.18.0.2
SERVER_IP=198.18.0.1
SERVER_PORT=8080
APP_UID=1001
PROXY_UID=1337
# The istio-init arguments the injector writes into every pod (see design.md).
INIT_ARGS=(-p 15001 -z 15006 -u "$PROXY_UID" -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "whole-pod demo: $*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || die "Linux only (network namespaces, iptables)"
[ "$(id -u)" = 0 ] || die "run as root (network namespaces, iptables): sudo $0"
for tool in ip iptables-restore curl socat setpriv; do
  command -v "$tool" >/dev/null || die "needs $tool: apt-get install -y iproute2 iptables curl socat util-linux"
done

suffix="$$"
POD_NS="mesh-demo-pod-$suffix"
SRV_NS="mesh-demo-srv-$suffix"
work=$(mktemp -d /tmp/mesh-demo.XXXXXX)
pids=()

cleanup() {
  status=$?
  set +e
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  # Anything else still running inside our namespaces was started by this script.
  for ns in "$POD_NS" "$SRV_NS"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "$work"
  if [ "$status" = 0 ]; then
    say "cleaned up: namespaces $POD_NS and $SRV_NS deleted"
  else
    echo "whole-pod demo FAILED (exit $status); cleaned up namespaces and processes" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Binaries: copied to a folder every uid can read, so uid 1337 can run the proxy even
# when the checkout sits under a private home directory.
if [ -n "${MESH_BIN_DIR:-}" ]; then
  bin_dir=$MESH_BIN_DIR
else
  say "building mesh-init and mesh-proxy (cargo build --release)"
  (cd "$root" && cargo build --release -p mesh-init -p mesh-proxy)
  bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
fi
for b in mesh-init mesh-proxy; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing"
  install -m 0755 "$bin_dir/$b" "$work/$b"
done
chmod 0755 "$work"

in_pod() { ip netns exec "$POD_NS" "$@"; }
in_srv() { ip netns exec "$SRV_NS" "$@"; }

say "1. namespaces: pod $POD_IP <-veth-> server $SERVER_IP"
ip netns add "$POD_NS"
ip netns add "$SRV_NS"
ip link add "mdp$suffix" netns "$POD_NS" type veth peer name "mds$suffix" netns "$SRV_NS"
in_pod ip link set lo up
in_srv ip link set lo up
in_pod ip addr add "$POD_IP/24" dev "mdp$suffix"
in_srv ip addr add "$SERVER_IP/24" dev "mds$suffix"
in_pod ip link set "mdp$suffix" up
in_srv ip link set "mds$suffix" up

say "2. server: HTTP on $SERVER_IP:$SERVER_PORT in $SRV_NS"
cat >"$work/respond.sh" <<'RESPOND'
#!/usr/bin/env bash
# Reads one request's head, answers, closes.
while IFS= read -r line; do line=${line%$'\r'}; [ -z "$line" ] && break; done
body="hello from the server namespace; you came from ${SOCAT_PEERADDR}:${SOCAT_PEERPORT}"
printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n' "$(( ${#body} + 1 ))" "$body"
RESPOND
chmod 0755 "$work/respond.sh"
in_srv socat "TCP-LISTEN:$SERVER_PORT,bind=$SERVER_IP,reuseaddr,fork" "EXEC:$work/respond.sh" &
pids+=($!)

say "3a. istio-init: mesh-init ${INIT_ARGS[*]}"
in_pod "$work/mesh-init" "${INIT_ARGS[@]}"
echo "nat rules now in the pod:"
in_pod iptables -t nat -S | grep ISTIO | sed 's/^/   /'

say "3b. istio-proxy: mesh-proxy as uid $PROXY_UID"
in_pod setpriv --reuid="$PROXY_UID" --regid="$PROXY_UID" --clear-groups \
  env POD_NAME=demo-app POD_NAMESPACE=demo ISTIO_META_WORKLOAD_NAME=demo-app \
  "$work/mesh-proxy" --outbound-port 15001 --inbound-port 15006 \
  --admin-addr 127.0.0.1:15021 --metrics-addr 127.0.0.1:15090 \
  >"$work/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  if in_pod curl -fsS --max-time 1 http://127.0.0.1:15021/healthz/ready >/dev/null 2>&1; then break; fi
  sleep 0.1
done
in_pod curl -fsS --max-time 2 http://127.0.0.1:15021/healthz/ready >/dev/null \
  || { cat "$work/proxy.log" >&2; die "mesh-proxy did not become ready"; }
echo "   proxy ready (GET :15021/healthz/ready)"

opened() {
  in_pod curl -fsS --max-time 2 http://127.0.0.1:15090/stats/prometheus |
    awk -v port="destination_port=\"$SERVER_PORT\"" \
      '/^istio_tcp_connections_opened_total\{/ && /direction="outbound"/ && index($0, port) { n += $NF } END { print n + 0 }'
}
before=$(opened)

say "4. app (uid $APP_UID): curl http://$SERVER_IP:$SERVER_PORT/"
reply=$(in_pod setpriv --reuid="$APP_UID" --regid="$APP_UID" --clear-groups \
  curl -sS --max-time 5 "http://$SERVER_IP:$SERVER_PORT/")
echo "   reply: $reply"

say "5. proxy metrics (GET :15090/stats/prometheus), this connection's series"
in_pod curl -fsS --max-time 2 http://127.0.0.1:15090/stats/prometheus |
  grep -E "^istio_tcp_[a-z_]+\{.*direction=\"outbound\".*destination_port=\"$SERVER_PORT\"" | sed 's/^/   /'
after=$(opened)
echo "   nat counters:"
in_pod iptables -t nat -L ISTIO_REDIRECT -n -v -x | sed 's/^/   /'
echo "   outbound connections opened to port $SERVER_PORT: $before -> $after"
[ "$after" -gt "$before" ] || die "the request did not go through the proxy (counter did not move)"
echo "RESULT: the app's request reached the server through mesh-proxy"
