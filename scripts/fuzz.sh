#!/usr/bin/env bash
# A bounded fuzz run of every target in fuzz/ (cargo fuzz, coverage-guided libFuzzer):
#   oip_infer       any bytes as an OIP ModelInferRequest, to tensors, FP32 and raw form
#   rest_infer      any bytes as an OIP REST infer body
#   openai_request  any bytes as a completions, chat or embeddings body
#   prompt_text     any UTF-8 through SmolLM2's tokenizer and chat template
# FUZZ_SECONDS per target (default 60); FUZZ_TARGETS to pick some. Installs cargo-fuzz from
# crates.io once into .cache/tools; uses the nightly toolchain when rustup has one (with
# AddressSanitizer), else the stable one without a sanitizer. A crash stops the run, prints the
# input's path under fuzz/artifacts/ and exits 1; each crash found so far has a regression test
# in the worker (tests/serving/hardening.rs and the unit tests of tensor, openai and limits).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-test-models.sh
tools=.cache/tools
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --locked --root "$tools"
fi
export PATH="$PWD/$tools/bin:$PATH"
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly) sanitizer=address
else
  toolchain=() sanitizer=none
fi
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-oip_infer rest_infer openai_request prompt_text}
cd fuzz
for target in $targets; do
  echo "== $target: $seconds s (sanitizer: $sanitizer)"
  # The corpus starts from the committed seed-* inputs and keeps what the run finds (git-ignored).
  cargo "${toolchain[@]}" fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 \
    | grep -E '^(==|#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|artifact_prefix|Test unit written)|panicked|ERROR' || true
  # libFuzzer's exit status is lost in the pipe above: a crash leaves an artifact.
  if ls "artifacts/$target"/crash-* "artifacts/$target"/oom-* "artifacts/$target"/timeout-* >/dev/null 2>&1; then
    echo "fuzz: $target found inputs that fail: $(ls "artifacts/$target")"
    exit 1
  fi
done
echo "fuzz: no crash in $targets ($seconds s each)"
