# The operator: one static-enough binary on distroless, as a non-root user.
#   docker build -f docker/operator.Dockerfile -t ghcr.io/lantern-dev/operator:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lantern-operator --bin lantern-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/lantern-operator /usr/local/bin/lantern-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lantern-operator"]
