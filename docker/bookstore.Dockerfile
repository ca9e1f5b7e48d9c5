# mesh-bookstore: the examples' app (examples/bookstore/), a static musl binary on an
# empty base, non-root. Classic builder, nothing pulled: `docker/build.sh`.
FROM scratch
COPY mesh-bookstore /mesh-bookstore
USER 1000:1000
EXPOSE 9080
ENTRYPOINT ["/mesh-bookstore"]
