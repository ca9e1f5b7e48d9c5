# syntax=docker/dockerfile:1
# mesh-bookstore: the examples' app. Static binary on an empty base, non-root.
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
    cargo build --release --locked --target x86_64-unknown-linux-musl -p mesh-bookstore \
 && install -D target/x86_64-unknown-linux-musl/release/mesh-bookstore /out/mesh-bookstore

FROM scratch
COPY --from=build /out/mesh-bookstore /mesh-bookstore
USER 1000:1000
EXPOSE 9080
ENTRYPOINT ["/mesh-bookstore"]
