#!/usr/bin/env bash
# Installs the stock clients users already run into the git-ignored .cache/python/site,
# idempotently: tritonclient[grpc] (Open Inference Protocol, with grpcio and numpy), openai, the
# kserve SDK (its REST client sends binary tensor data; its gRPC client string parameters), the
# official kubernetes client (the devcluster's conformance), and
# moto's S3 server with boto3, and azure-storage-blob (the object stores remote repositories are
# tested against: moto, and azurite from scripts/install-azurite.sh), bcrypt (the password
# file of the registry that tests credentials) and cryptography (the certificate and signed
# tokens of the registry's token service, e2e/oci_token_server.py), llama.cpp's gguf reader
# (the GGUF files quantization writes are read by it: runtime/tests/gguf_check.py), and
# tensorboard (the training curves every version carries are read by its event loader:
# worker/tests/training/tensorboard_check.py).
# The tests prove wire compatibility with them; the quickstart talks to the service with openai.
# Use them with PYTHONPATH=.cache/python/site (moto: python3 -m moto.server -H 127.0.0.1 -p PORT).
set -euo pipefail
cd "$(dirname "$0")/.."

site=.cache/python/site
stamp=$site/.lantern-installed-v9
if [ -f "$stamp" ]; then
  exit 0
fi
python=$(command -v python3 || command -v python)
rm -rf "$site"
mkdir -p "$site"
"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$site" 'tritonclient[grpc]>=2.40' 'openai>=1.40' 'kserve>=0.15' 'kubernetes>=30' \
  'moto[server]>=5.1' 'boto3>=1.34' 'azure-storage-blob>=12.19' 'bcrypt>=4' 'cryptography>=42' 'gguf>=0.10' 'tensorboard>=2.15'
touch "$stamp"
echo "installed tritonclient, openai, kserve, kubernetes, moto, boto3, azure-storage-blob, bcrypt, cryptography, gguf and tensorboard into $site"
