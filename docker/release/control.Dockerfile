# syntax=docker/dockerfile:1
# mesh-control: the control plane. Static binary on an empty base, non-root (uid 65532, as
# deploy/control/ runs it), read-only root filesystem.
# Release build (BuildKit, pulls rust:1-bookworm): from the repository root,
# `docker/build.sh --release [--push]` (names from docker/images.env). The offline build
# CI proves is docker/NAME.Dockerfile.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl -p mesh-control \
 && install -D target/x86_64-unknown-linux-musl/release/mesh-control /out/mesh-control

FROM scratch
COPY --from=build /out/mesh-control /usr/local/bin/mesh-control
USER 65532:65532
EXPOSE 15010 15014
ENTRYPOINT ["/usr/local/bin/mesh-control"]
CMD ["serve"]
