#!/usr/bin/env bash
# The peers the LLM figures are measured against, on the same model files and thread count:
# llama.cpp through llama-cpp-python (built from PyPI's source package with native CPU flags, once,
# into the git-ignored .cache/peers; the build takes about 11 minutes on 2 cores). Run it right
# after `cargo run --release -p lantern-worker --bin bench -- --sections llm` so both figures come
# from one sitting.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-test-models.sh
threads=${THREADS:-2}
site=.cache/peers/llama-cpp
stamp=$site/.lantern-installed-v1
if [ ! -f "$stamp" ]; then
  rm -rf "$site"
  mkdir -p "$site"
  CMAKE_ARGS="-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON" \
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$site" \
    'llama-cpp-python==0.3.36'
  touch "$stamp"
fi
PYTHONPATH=$site python3 scripts/peers/llama_cpp_bench.py .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$threads"
