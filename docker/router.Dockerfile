# The router the operator puts in front of every InferenceService, on distroless, non-root.
#   docker build -f docker/router.Dockerfile -t ghcr.io/lantern-dev/router:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lantern-router --bin lantern-router

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/lantern-router /usr/local/bin/lantern-router
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lantern-router"]
