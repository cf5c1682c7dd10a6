# The worker (train and serve) for CPU nodes, as a non-root user. The operator mounts the model
# repository at /var/lib/lantern/models; nothing else is written, so the root filesystem can be
# read-only.
#   docker build -f docker/worker.Dockerfile -t ghcr.io/lantern-dev/worker:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lantern-worker --bin lantern-worker

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/lantern-worker /usr/local/bin/lantern-worker
USER 65532:65532
EXPOSE 8500 7070 7071
ENTRYPOINT ["/usr/local/bin/lantern-worker"]
