# The router the operator puts in front of every InferenceService, on distroless, non-root.
#   docker build -f docker/router.Dockerfile -t ghcr.io/lantern-dev/router:0.1.0 .
# The bases are build arguments, for registries of one's own; scripts/build-images.sh builds the
# same image with no registry at all.
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lantern-router --bin lantern-router

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title=lantern-router org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${REVISION} org.opencontainers.image.licenses=Apache-2.0 \
      org.opencontainers.image.source=https://example.invalid/lantern
COPY --from=build /src/target/release/lantern-router /usr/local/bin/lantern-router
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lantern-router"]
