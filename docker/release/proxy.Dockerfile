# syntax=docker/dockerfile:1
# mesh-proxy: the transparent sidecar proxy. Static binary on an empty base; runs as uid
# and gid 1337, whose traffic the pod's iptables rules let through uncaptured.
# Release build (BuildKit, pulls rust:1-bookworm and its runtime base): from the repository
# root, `docker/build.sh --release [--push]` (names from docker/images.env). The offline
# build CI proves is docker/NAME.Dockerfile.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl -p mesh-proxy \
 && install -D target/x86_64-unknown-linux-musl/release/mesh-proxy /out/mesh-proxy

FROM scratch
COPY --from=build /out/mesh-proxy /usr/local/bin/mesh-proxy
USER 1337:1337
EXPOSE 15001 15006 15021 15090
ENTRYPOINT ["/usr/local/bin/mesh-proxy"]
