# mesh-proxy: the transparent sidecar proxy. The static musl binary (built on the host by
# docker/build.sh, which puts it alone in the build context) on an empty base; runs as uid
# and gid 1337, whose traffic the pod's iptables rules let through uncaptured. Classic
# builder, nothing pulled: `docker/build.sh` (the release build is docker/release/).
FROM scratch
COPY mesh-proxy /usr/local/bin/mesh-proxy
# The injector runs `command: [mesh-proxy]`: found through PATH.
ENV PATH=/usr/local/bin
USER 1337:1337
EXPOSE 15001 15006 15021 15090
ENTRYPOINT ["/usr/local/bin/mesh-proxy"]
