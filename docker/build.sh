#!/usr/bin/env bash
# Builds every image docker/images.env names (MESH_<NAME>_IMAGE, from docker/<name>.Dockerfile
# and the binary of crate mesh-<name>), with those names and tags, into the engine that
# DOCKER_HOST names (e.g. kube-node's: `. $HOME/.kube-node/run/env` first).
#
#   docker/build.sh                  offline build (default; what CI proves)
#   docker/build.sh --release        registry build for releases (see below)
#   docker/build.sh --release --push ... then push to the registry images.env names
#
# Offline: no registry, no BuildKit, nothing pulled. The binaries are built here, static
# (cargo --release --target x86_64-unknown-linux-musl; installs Debian's musl-tools and the
# rustup target when missing), each is put alone into a build context with its Dockerfile,
# and docker's classic builder makes `FROM scratch` images for the webhook, the proxy and
# mesh-control and, for the init image, one on a base that must already be in the engine:
# MESH_INIT_BASE (default local/iptables:1.8.9, which kube-node's start.sh imports; its
# local/debian:bookworm works too, for IPv4 pods: it has no `ip`). Each image is then checked: it runs as the user the
# manifests expect and the binary starts in it; for the init image, every iptables tool
# mesh-init calls (both backends, both families) is there, and mesh-init installs the
# pod's rules with each backend (in a `--network none` container: its own namespace).
#
# Release (--release): docker/release/*.Dockerfile, multi-stage, BuildKit (docker buildx),
# pulling rust:1-bookworm and debian:bookworm-slim from Docker Hub.
#
# Knobs: DOCKER (default docker; podman works for --release), MESH_INIT_BASE, CARGO (cargo),
# CARGO_TARGET_DIR. Prints each image's size at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
docker=${DOCKER:-docker}
cargo=${CARGO:-cargo}
musl=x86_64-unknown-linux-musl
init_base=${MESH_INIT_BASE:-local/iptables:1.8.9}

die() { echo "docker/build.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

release=0 push=0
for arg in "$@"; do
    case "$arg" in
        --release) release=1 ;;
        --push) push=1 ;;
        push) release=1 push=1 ;; # the old spelling: `docker/build.sh push`
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
done
[ "$push" = 0 ] || [ "$release" = 1 ] || die "--push only with --release (offline images stay local)"

command -v "$docker" >/dev/null || die "no '$docker' command (install docker.io, or set DOCKER)"
"$docker" version >/dev/null 2>&1 || die "cannot reach the engine at DOCKER_HOST=${DOCKER_HOST:-<default socket>}: $("$docker" version 2>&1 | tail -1)"

# Images: every MESH_<NAME>_IMAGE=ref in images.env, in file order.
images=()
while IFS='=' read -r key value; do
    case "$key" in MESH_*_IMAGE) ;; *) continue ;; esac
    [ -n "$value" ] || die "docker/images.env: $key is empty"
    case "$value" in *:latest | *@*) die "docker/images.env: $key=$value: use a fixed tag (not latest), so pods find it without pulling" ;; *:*) ;; *) die "docker/images.env: $key=$value has no tag" ;; esac
    name=${key#MESH_}
    name=${name%_IMAGE}
    name=$(echo "$name" | tr 'A-Z_' 'a-z-')
    images+=("$name=$value")
done < <(grep -E '^[A-Z0-9_]+=' "$here/images.env")
[ ${#images[@]} -gt 0 ] || die "docker/images.env names no MESH_*_IMAGE"

if [ "$release" = 1 ]; then
    for entry in "${images[@]}"; do
        name=${entry%%=*} image=${entry#*=}
        [ -f "$here/release/$name.Dockerfile" ] || die "no docker/release/$name.Dockerfile for $image"
        echo "==== $image (release build, BuildKit, docker/release/$name.Dockerfile)"
        DOCKER_BUILDKIT=1 "$docker" build -f "$here/release/$name.Dockerfile" -t "$image" "$root"
    done
    if [ "$push" = 1 ]; then
        for entry in "${images[@]}"; do "$docker" push "${entry#*=}"; done
    fi
    exit 0
fi

# ---- offline: static binaries built here --------------------------------------------------
for entry in "${images[@]}"; do
    name=${entry%%=*}
    [ -f "$here/$name.Dockerfile" ] || die "no docker/$name.Dockerfile for ${entry#*=}"
done
if ! command -v musl-gcc >/dev/null; then
    # ring (rustls) compiles C for the musl target with musl-gcc.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==== installing musl-tools (musl-gcc, for the static binaries)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends musl-tools >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends musl-tools >/dev/null; } \
            || die "cannot install musl-tools"
    else
        die "musl-gcc not found: apt-get install musl-tools (as root)"
    fi
fi
if command -v rustup >/dev/null; then
    rustup target list --installed | grep -qx "$musl" || rustup target add "$musl" \
        || die "cannot add the rust target $musl"
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
# mesh-proxy is built on its own: cargo unifies the features of the packages one command
# builds, and built with mesh-control it would link tokio's multi-thread scheduler,
# regex's DFAs and literal search, rustls's TLS 1.2 and logging... (a 9.2 instead of a
# 7.6 MB binary, 0.7 MB more idle RSS in every pod). The other images share one command.
pkgs=()
proxy=0
for entry in "${images[@]}"; do
    if [ "${entry%%=*}" = proxy ]; then proxy=1; else pkgs+=(-p "mesh-${entry%%=*}"); fi
done
t0=$(date +%s)
if [ "$proxy" = 1 ]; then
    echo "==== cargo build --release --locked --target $musl -p mesh-proxy (alone: its own features)"
    (cd "$root" && "$cargo" build --release --locked --target "$musl" -p mesh-proxy)
    # proxy/build.rs lays the sidecar's code out for a small resident set
    # (proxy/link/README.md): the image must not ship without it unnoticed.
    if [ "${MESH_PROXY_LAYOUT:-}" != plain ]; then
        hot=$(readelf -SW "$target_dir/$musl/release/mesh-proxy" | sed 's/^ *\[ *[0-9]*\] *//' | awk '$1 == ".text.hot" {print $5}')
        [ -n "$hot" ] || die "mesh-proxy has no .text.hot section: proxy/link/hot.txt was not applied"
        echo "     mesh-proxy .text.hot: $((16#$hot / 1024)) KiB"
        # A list made for other symbol hashes (a dependency added to mesh-proxy renames
        # its functions; an edit renumbers a function's closures) still links, but places
        # less: 2 % of its lines missing cost a sidecar 0.5 MB once. Say so, with the fix.
        if command -v python3 >/dev/null && ! python3 "$root/proxy/link/hot.py" --check "$root/proxy/link/hot.txt" \
                "$target_dir/$musl/release/mesh-proxy" 100 | sed 's/^/     /'; then
            echo "     WARNING: proxy/link/hot.txt is stale for this build: the sidecar's idle RSS" \
                 "is higher than it should be; regenerate it (proxy/link/generate.sh)" >&2
        fi
    fi
fi
if [ ${#pkgs[@]} -gt 0 ]; then
    echo "==== cargo build --release --locked --target $musl ${pkgs[*]}"
    (cd "$root" && "$cargo" build --release --locked --target "$musl" "${pkgs[@]}")
fi
echo "     binaries in $(($(date +%s) - t0)) s"

if [ -n "${init_base:-}" ] && printf '%s\n' "${images[@]}" | grep -q '^init='; then
    "$docker" image inspect "$init_base" >/dev/null 2>&1 || die "the init image's base $init_base is not in the engine at" \
        "DOCKER_HOST=${DOCKER_HOST:-<default socket>} (kube-node's start.sh imports local/iptables:1.8.9;" \
        "or set MESH_INIT_BASE to a local image with Debian's iptables, nft and legacy)"
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
for entry in "${images[@]}"; do
    name=${entry%%=*} image=${entry#*=}
    bin="$target_dir/$musl/release/mesh-$name"
    [ -x "$bin" ] || die "cargo built no $bin"
    rm -rf "${ctx:?}"/*
    cp "$bin" "$ctx/"
    cp "$here/$name.Dockerfile" "$ctx/Dockerfile"
    build_args=()
    [ "$name" != init ] || build_args=(--build-arg "BASE=$init_base")
    echo "==== $image (offline, classic builder, docker/$name.Dockerfile)"
    # --pull=false: never ask a registry, whatever the engine's defaults.
    DOCKER_BUILDKIT=0 "$docker" build -q --pull=false "${build_args[@]}" -t "$image" "$ctx" >/dev/null 2> "$ctx.err" \
        || { cat "$ctx.err" >&2; rm -f "$ctx.err"; die "building $image failed"; }
    rm -f "$ctx.err"
done

# ---- check what was built -------------------------------------------------------------------
for entry in "${images[@]}"; do
    name=${entry%%=*} image=${entry#*=}
    user=$("$docker" image inspect -f '{{.Config.User}}' "$image")
    case "$name" in
        webhook | control) [ "$user" = 65532:65532 ] || die "$image runs as '$user', deploy/ expects 65532:65532" ;;
        proxy) [ "$user" = 1337:1337 ] || die "$image runs as '$user', the injector expects 1337:1337" ;;
    esac
    if [ "$name" = init ]; then
        # `ip` only for IPv6 pods (mesh-init adds ::6 to lo): a warning, not an error.
        "$docker" run --rm --network none --entrypoint /bin/sh "$image" -c 'command -v ip' >/dev/null 2>&1 \
            || echo "docker/build.sh: warning: $image has no \`ip\`: mesh-init cannot set up IPv6 pods" >&2
        tools="iptables ip6tables"
        for backend in nft legacy; do
            for fam in iptables ip6tables; do tools="$tools $fam-$backend-restore $fam-$backend-save"; done
        done
        out=$("$docker" run --rm --network none --entrypoint /bin/sh "$image" -c \
            "set -e; for t in $tools; do command -v \$t >/dev/null || { echo missing \$t; exit 1; }; done
             iptables-nft-restore --version; iptables-legacy-restore --version
             mesh-init --version; mesh-init -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021 --dry-run >/dev/null" 2>&1) \
            || die "$image: $out"
        # And for real, with each backend, in a container's own empty network namespace
        # (--network none: nothing outside it is touched), as istio-init runs in a pod.
        for backend in nft legacy; do
            out=$("$docker" run --rm --network none --cap-add NET_ADMIN --cap-add NET_RAW --entrypoint /bin/sh "$image" -c \
                "set -e; mesh-init --backend $backend -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021
                 iptables-$backend-save -t nat | grep -q -- '-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001'" 2>&1) \
                || die "$image: mesh-init with the $backend backend failed: $out"
        done
    else
        out=$("$docker" run --rm --network none "$image" --version 2>&1) || die "$image: --version failed: $out"
    fi
done

echo "==== images (in the engine at ${DOCKER_HOST:-<default socket>})"
for entry in "${images[@]}"; do
    image=${entry#*=}
    bytes=$("$docker" image inspect -f '{{.Size}}' "$image")
    printf '%-45s %6.1f MB  user %s\n' "$image" "$(awk -v b="$bytes" 'BEGIN { print b / 1000000 }')" \
        "$("$docker" image inspect -f '{{if .Config.User}}{{.Config.User}}{{else}}0 (root){{end}}' "$image")"
done
