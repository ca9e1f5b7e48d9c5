# syntax=docker/dockerfile:1
# mesh-webhook: the sidecar injector (admission webhook + kube-inject). Static binary on
# an empty base, non-root (uid 65532, as deploy/ runs it), read-only root filesystem.
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
    cargo build --release --locked --target x86_64-unknown-linux-musl -p mesh-webhook \
 && install -D target/x86_64-unknown-linux-musl/release/mesh-webhook /out/mesh-webhook

FROM scratch
COPY --from=build /out/mesh-webhook /usr/local/bin/mesh-webhook
USER 65532:65532
EXPOSE 9443
ENTRYPOINT ["/usr/local/bin/mesh-webhook"]
CMD ["serve"]
