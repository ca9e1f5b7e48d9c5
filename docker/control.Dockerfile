# mesh-control: the control plane (watches the cluster, streams config to each mesh-proxy).
# The static musl binary (built on the host by docker/build.sh, alone in the build context)
# on an empty base, non-root (uid 65532, as deploy/control/ runs it), read-only root
# filesystem. In-cluster config from the ServiceAccount token. Classic builder, nothing
# pulled: `docker/build.sh` (the release build is docker/release/).
FROM scratch
COPY mesh-control /usr/local/bin/mesh-control
ENV PATH=/usr/local/bin
USER 65532:65532
EXPOSE 15010 15014
ENTRYPOINT ["/usr/local/bin/mesh-control"]
CMD ["serve"]
