# The worker for NVIDIA GPU nodes: built with the `cuda` feature, run on CUDA's runtime image
# (cuBLAS, cuRAND, NVRTC; the node's driver provides libcuda) as a non-root user. The operator
# runs it for `device: cuda`, with LANTERN_DEVICE=cuda and one `nvidia.com/gpu`.
#   docker build -f docker/worker-cuda.Dockerfile -t ghcr.io/lantern-dev/worker:0.1.0-cuda .
# CUDA_COMPUTE_CAP is the compute capability the kernels are compiled for: 80 (the default) runs
# on A100 and, through the driver's PTX JIT, on every later GPU; 90 targets H100/H200 directly.
# The driver on the nodes must support CUDA_VERSION (580 and later for 13.0).
ARG CUDA_VERSION=13.0.2
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build
ARG CUDA_COMPUTE_CAP=80
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain 1.95
ENV PATH=/root/.cargo/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lantern-worker --features cuda --bin lantern-worker

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04
COPY --from=build /src/target/release/lantern-worker /usr/local/bin/lantern-worker
USER 65532:65532
EXPOSE 8500 7070 7071
ENTRYPOINT ["/usr/local/bin/lantern-worker"]
