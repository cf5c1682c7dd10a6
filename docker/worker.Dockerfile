# The worker (train and serve) for CPU nodes, as a non-root user. The operator mounts the model
# repository at /var/lib/lantern/models and scratch space (an emptyDir) at /tmp; nothing else is
# written, so the root filesystem can be read-only.
#   docker build -f docker/worker.Dockerfile -t ghcr.io/lantern-dev/worker:0.1.0 .
# The bases are build arguments, for registries of one's own; scripts/build-images.sh builds the
# same image with no registry at all.
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lantern-worker --bin lantern-worker

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title=lantern-worker org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${REVISION} org.opencontainers.image.licenses=Apache-2.0 \
      org.opencontainers.image.source=https://example.invalid/lantern
COPY --from=build /src/target/release/lantern-worker /usr/local/bin/lantern-worker
USER 65532:65532
EXPOSE 8500 7070 7071
ENTRYPOINT ["/usr/local/bin/lantern-worker"]
