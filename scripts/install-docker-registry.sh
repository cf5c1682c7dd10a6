#!/usr/bin/env bash
# Installs Debian's docker-registry (CNCF distribution 2.8), the OCI registry the storage tests
# serve models from on loopback, idempotently; it needs root and apt. The tests run
# `docker-registry serve CONFIG` themselves and say SKIPPED where it is missing.
set -euo pipefail

if command -v docker-registry >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "docker-registry is not installed and this is not root on Debian: the oci:// storage tests will be skipped" >&2
  exit 0
fi
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null 2>&1; }
if install || { apt-get update -qq >/dev/null 2>&1 && install; }; then
  echo "installed docker-registry"
else
  echo "could not install docker-registry with apt: the oci:// storage tests will be skipped" >&2
fi
