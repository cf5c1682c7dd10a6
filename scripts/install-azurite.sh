#!/usr/bin/env bash
# Installs azurite (Microsoft's Azure Storage emulator, from the npm registry) into the
# git-ignored .cache/node, idempotently: the storage tests serve models from az:// against its
# Blob service on loopback (.cache/node/node_modules/.bin/azurite-blob).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=.cache/node
stamp=$prefix/.lantern-installed-v1
if [ -f "$stamp" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is not installed: the az:// storage tests will be skipped (install Node.js and npm to run them)" >&2
  exit 0
fi
mkdir -p "$prefix"
if npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error 'azurite@^3' >/dev/null; then
  touch "$stamp"
  echo "installed azurite into $prefix"
else
  echo "could not install azurite from the npm registry: the az:// storage tests will be skipped" >&2
fi
