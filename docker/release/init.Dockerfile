# syntax=docker/dockerfile:1
# mesh-init: installs the pod's nat rules with one iptables-restore per family. Carries
# Debian's iptables package, which has both backends (iptables-nft-restore and
# iptables-legacy-restore, plus the ip6tables variants). It must run as uid 0 with
# NET_ADMIN and NET_RAW (the injector asks for exactly those), so no USER here.
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
    cargo build --release --locked --target x86_64-unknown-linux-musl -p mesh-init \
 && install -D target/x86_64-unknown-linux-musl/release/mesh-init /out/mesh-init

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/* \
 && iptables-nft-restore --version && iptables-legacy-restore --version \
 && ip6tables-nft-restore --version && ip6tables-legacy-restore --version
COPY --from=build /out/mesh-init /usr/local/bin/mesh-init
ENTRYPOINT ["/usr/local/bin/mesh-init"]
