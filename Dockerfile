# codex CPU image (default) or CUDA image (--build-arg CUDA=1).
#   docker build -t codex .
#   docker run --rm -v "$PWD/runs:/work/runs" codex train
# The CUDA variant compiles candle's kernels with nvcc (CUDA 13, Hopper by default) and needs the
# NVIDIA container runtime at run time; NVML is loaded at run time in both variants.
ARG CUDA=0
ARG CUDA_COMPUTE_CAP=90

FROM rust:1.95-bookworm AS build-0
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin codex

FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS build-1
ARG CUDA_COMPUTE_CAP
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin codex --features cuda

FROM build-${CUDA} AS build

FROM debian:bookworm-slim AS runtime-0
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04 AS runtime-1
FROM runtime-${CUDA}
COPY --from=build /src/target/release/codex /usr/local/bin/codex
WORKDIR /work
ENTRYPOINT ["codex"]
CMD ["--help"]
