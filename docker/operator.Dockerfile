# The operator: one static-enough binary on distroless, as a non-root user.
#   docker build -f docker/operator.Dockerfile -t ghcr.io/lantern-dev/operator:0.1.0 .
# The bases are build arguments, for registries of one's own; scripts/build-images.sh builds the
# same image with no registry at all.
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lantern-operator --bin lantern-operator

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title=lantern-operator org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${REVISION} org.opencontainers.image.licenses=Apache-2.0 \
      org.opencontainers.image.source=https://example.invalid/lantern
COPY --from=build /src/target/release/lantern-operator /usr/local/bin/lantern-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lantern-operator"]
