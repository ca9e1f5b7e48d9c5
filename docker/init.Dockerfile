# mesh-init: installs the pod's nat rules with one iptables-restore per family. The static
# musl binary (built on the host by docker/build.sh) on a base made locally that carries
# Debian's iptables with both backends (iptables-nft-restore and iptables-legacy-restore,
# the ip6tables variants, the -save tools mesh-init reads the current rules with, and
# `ip` for IPv6's ::6 on lo): by default kube-node's local/iptables:1.8.9 (busybox + the
# host's iptables), or local/debian:bookworm (no `ip`: IPv4 pods only); MESH_INIT_BASE
# picks it. docker/build.sh checks every tool mesh-init calls in the built image and runs
# it with each backend. It must run as uid 0 with NET_ADMIN and NET_RAW (the injector
# asks for exactly those), so no USER here.
# Classic builder, nothing pulled (the release build is docker/release/).
ARG BASE=local/iptables:1.8.9
FROM ${BASE}
COPY mesh-init /usr/local/bin/mesh-init
# iptables-legacy-restore -w (the legacy backend) takes its lock in /run/xtables.lock;
# busybox-based bases have no /run (WORKDIR makes it without running anything).
WORKDIR /run
WORKDIR /
# The injector runs `command: [mesh-init]`; mesh-init finds iptables-*-restore through PATH.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/usr/local/bin/mesh-init"]
