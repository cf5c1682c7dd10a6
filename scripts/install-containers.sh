#!/usr/bin/env bash
# Installs what builds and runs the project's images here, idempotently, from Debian's packages
# (it needs root and apt): podman with the runc runtime (crun fails on these machines' hybrid
# cgroup layout), buildah and mmdebstrap (the base image is made from Debian's packages, as no
# registry can be pulled from). The container tests say SKIPPED where these are missing.
set -euo pipefail

packages=(podman runc buildah mmdebstrap uidmap fuse-overlayfs)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "${missing[*]} not installed and this is not root on Debian: the container tests will be skipped" >&2
  exit 0
fi
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; }
if install || { apt-get update -qq >/dev/null 2>&1 && install; }; then
  echo "installed ${missing[*]}"
else
  echo "could not install ${missing[*]} with apt: the container tests will be skipped" >&2
fi
