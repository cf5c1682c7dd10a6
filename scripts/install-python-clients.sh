#!/usr/bin/env bash
# Installs the stock clients users already run into the git-ignored .cache/python/site,
# idempotently: tritonclient[grpc] (Open Inference Protocol, with grpcio and numpy) and openai.
# The tests prove wire compatibility with them; the quickstart talks to the service with openai.
# Use them with PYTHONPATH=.cache/python/site.
set -euo pipefail
cd "$(dirname "$0")/.."

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
