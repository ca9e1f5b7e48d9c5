#!/usr/bin/env bash
# Builds the three images with the names and tags in docker/images.env.
#   docker/build.sh            build all three
#   docker/build.sh push       build, then push
# DOCKER=podman docker/build.sh works too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=images.env
. "$here/images.env"
docker=${DOCKER:-docker}
build() { # image dockerfile
  echo "building $1 from docker/$2"
  DOCKER_BUILDKIT=1 "$docker" build -f "$here/$2" -t "$1" "$root"
}
build "$MESH_WEBHOOK_IMAGE" webhook.Dockerfile
build "$MESH_PROXY_IMAGE" proxy.Dockerfile
build "$MESH_INIT_IMAGE" init.Dockerfile
if [ "${1:-}" = push ]; then
  for image in "$MESH_WEBHOOK_IMAGE" "$MESH_PROXY_IMAGE" "$MESH_INIT_IMAGE"; do
    "$docker" push "$image"
  done
fi
