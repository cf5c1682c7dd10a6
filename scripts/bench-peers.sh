#!/usr/bin/env bash
# The peers the LLM, embedding and training figures are measured against, on the same models
# and thread count:
# - llama.cpp through llama-cpp-python, built from PyPI's source package for this CPU's flags
#   (the build takes about 11 minutes on 2 cores), on SmolLM2's GGUF: prefill, one stream, and
#   batched decode of 1, 4, 8 and 16 sequences;
# - PyTorch with transformers' BertModel, both from PyPI (PyPI's torch wheel pulls CUDA libraries,
#   about 5.6 GB, unused on the CPU), on all-MiniLM-L6-v2;
# - PyTorch training the same byte-level llama with the same step as `bench --sections train`;
# - PyTorch + transformers + peft fine-tuning SmolLM2 (read from its GGUF) on the token batches
#   `bench --sections finetune` wrote, LoRA and full;
# - llama.cpp on the GGUF files `bench --sections compress` wrote (prefill and one stream each).
# Each is installed once into the git-ignored .cache/peers. Ours come first, from a release
# build of `bench` (`SECTIONS`, default llm,embed; train or finetune for those peers, the latter
# writing the batches its peer trains on), so both sides' figures come from one sitting.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-test-models.sh
threads=${THREADS:-2}
cargo build --release --quiet --workspace --bins
target/release/bench --sections "${SECTIONS:-llm,embed}"
echo

# install_peer NAME REQUIREMENT...: pip-installs the requirements into .cache/peers/NAME once
# (again when the requirements or the CMAKE_ARGS they build with change).
install_peer() {
  local site=.cache/peers/$1
  shift
  local stamp=$site/.lantern-installed-$(printf '%s\n' "$@" "${CMAKE_ARGS:-}" | sha256sum | cut -c1-12)
  if [ ! -f "$stamp" ]; then
    rm -rf "$site"
    mkdir -p "$site"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$site" "$@"
    touch "$stamp"
  fi
}

cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
echo "CPU: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); flags:$(
  for f in avx2 fma f16c avx_vnni avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx512vbmi amx_tile amx_int8; do
    [[ $cpu_flags == *" $f "* ]] && printf ' %s' "$f"
  done)"
# has FLAG: ON where this CPU has it.
has() { [[ $cpu_flags == *" $1 "* ]] && echo ON || echo OFF; }
# The CPU's flags named one by one rather than GGML_NATIVE: a native build turns on ggml's AMX
# backend where the CPU lists AMX, and that segfaults in ggml_backend_amx_mul_mat in these VMs
# (the guest gets no AMX tile state; REFERENCE.md), so AMX stays off.
llama_cpu="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c) \
-DGGML_BMI2=$(has bmi2) -DGGML_AVX_VNNI=$(has avx_vnni) -DGGML_AVX512=$(has avx512f) \
-DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX512_BF16=$(has avx512_bf16) \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
CMAKE_ARGS="-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF $llama_cpu" \
  install_peer llama-cpp 'llama-cpp-python==0.3.36'
PYTHONPATH=.cache/peers/llama-cpp python3 scripts/peers/llama_cpp_bench.py \
  .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$threads"
# The compression peer: llama.cpp on the very files `bench --sections compress` wrote.
if [[ ,${SECTIONS:-}, == *,compress,* ]]; then
  for file in target/bench/compress/*.gguf; do
    echo "$file:"
    PYTHONPATH=.cache/peers/llama-cpp python3 scripts/peers/llama_cpp_bench.py "$file" "$threads" single
  done
fi

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
