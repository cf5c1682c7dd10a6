#!/usr/bin/env bash
# The peers the LLM, embedding and training figures are measured against, on the same models
# and thread count:
# - llama.cpp through llama-cpp-python, built from PyPI's source package with native CPU flags
#   (the build takes about 11 minutes on 2 cores), on SmolLM2's GGUF;
# - PyTorch with transformers' BertModel, both from PyPI (PyPI's torch wheel pulls CUDA libraries,
#   about 5.6 GB, unused on the CPU), on all-MiniLM-L6-v2;
# - PyTorch training the same byte-level llama with the same step as `bench --sections train`.
# Each is installed once into the git-ignored .cache/peers. Run this right after
# `target/release/bench --sections llm,embed,train` so both sides' figures come from one
# sitting.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-test-models.sh
threads=${THREADS:-2}

# install_peer NAME REQUIREMENT...: pip-installs the requirements into .cache/peers/NAME once.
install_peer() {
  local site=.cache/peers/$1 stamp=.cache/peers/$1/.lantern-installed-v1
  shift
  if [ ! -f "$stamp" ]; then
    rm -rf "$site"
    mkdir -p "$site"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$site" "$@"
    touch "$stamp"
  fi
}

CMAKE_ARGS="-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON" \
  install_peer llama-cpp 'llama-cpp-python==0.3.36'
PYTHONPATH=.cache/peers/llama-cpp python3 scripts/peers/llama_cpp_bench.py \
  .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$threads"

install_peer torch 'torch==2.15.0' 'transformers==5.23.0'
PYTHONPATH=.cache/peers/torch HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error \
  python3 scripts/peers/minilm_torch_bench.py .cache/models/all-minilm-l6-v2 "$threads"
PYTHONPATH=.cache/peers/torch python3 scripts/peers/train_torch_bench.py "$threads"
