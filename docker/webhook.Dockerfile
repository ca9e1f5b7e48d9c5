# mesh-webhook: the sidecar injector (admission webhook + kube-inject). The static musl
# binary (built on the host by docker/build.sh, alone in the build context) on an empty
# base, non-root (uid 65532, as deploy/ runs it), read-only root filesystem. Classic
# builder, nothing pulled: `docker/build.sh` (the release build is docker/release/).
FROM scratch
COPY mesh-webhook /usr/local/bin/mesh-webhook
ENV PATH=/usr/local/bin
USER 65532:65532
EXPOSE 9443
ENTRYPOINT ["/usr/local/bin/mesh-webhook"]
CMD ["serve"]
