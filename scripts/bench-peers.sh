#!/usr/bin/env bash
# The peers the LLM, embedding and training figures are measured against, on the same models
# and thread count:
# - llama.cpp through llama-cpp-python, built from PyPI's source package with native CPU flags
#   (the build takes about 11 minutes on 2 cores), on SmolLM2's GGUF;
# - PyTorch with transformers' BertModel, both from PyPI (PyPI's torch wheel pulls CUDA libraries,
#   about 5.6 GB, unused on the CPU), on all-MiniLM-L6-v2;
# - PyTorch training the same byte-level llama with the same step as `bench --sections train`;
# - PyTorch + transformers + peft fine-tuning SmolLM2 (read from its GGUF) on the token batches
#   `bench --sections finetune` wrote, LoRA and full.
# Each is installed once into the git-ignored .cache/peers. Run this right after
# `target/release/bench --sections llm,embed,train,finetune` so both sides' figures come from one
# sitting.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-test-models.sh
threads=${THREADS:-2}

# install_peer NAME REQUIREMENT...: pip-installs the requirements into .cache/peers/NAME once
# (again when the requirements change).
install_peer() {
  local site=.cache/peers/$1
  shift
  local stamp=$site/.lantern-installed-$(printf '%s\n' "$@" | sha256sum | cut -c1-12)
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

install_peer torch 'torch==2.15.0' 'transformers==5.23.0' 'peft==0.21.2' 'gguf==0.19.0'
PYTHONPATH=.cache/peers/torch HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error \
  python3 scripts/peers/minilm_torch_bench.py .cache/models/all-minilm-l6-v2 "$threads"
PYTHONPATH=.cache/peers/torch python3 scripts/peers/train_torch_bench.py "$threads"
# The fine-tuning peer trains on the batches `bench --sections finetune` wrote.
if [ -f target/bench/finetune-batches.json ]; then
  for method in lora full; do
    PYTHONPATH=.cache/peers/torch HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error \
      python3 scripts/peers/finetune_torch_bench.py .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
      target/bench/finetune-batches.json "$threads" "$method"
  done
else
  echo "no target/bench/finetune-batches.json: run target/release/bench --sections finetune first"
fi
