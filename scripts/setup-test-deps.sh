#!/usr/bin/env bash
# Installs what the tests need beyond cargo, idempotently, into the git-ignored .cache/:
# - .cache/models: the real models (scripts/fetch-test-models.sh);
# - .cache/tools/helm: helm, for the chart test (scripts/fetch-helm.sh);
# - .cache/python/site: the stock clients users already run, so tests prove wire compatibility:
#   tritonclient[grpc] (Open Inference Protocol, with grpcio and numpy) and openai.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-test-models.sh
scripts/fetch-helm.sh

site=.cache/python/site
stamp=$site/.lantern-installed-v2
if [ -f "$stamp" ]; then
  exit 0
fi
python=$(command -v python3 || command -v python)
rm -rf "$site"
mkdir -p "$site"
"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$site" 'tritonclient[grpc]>=2.40' 'openai>=1.40'
touch "$stamp"
echo "installed tritonclient and openai into $site"
