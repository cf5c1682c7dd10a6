#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package), idempotently; it needs root and apt. The
# tests run `promtool test rules` on the chart's alert rules and `promtool check metrics` on the
# worker's and operator's /metrics, and say SKIPPED where it is missing.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "promtool is not installed and this is not root on Debian: the alert rule tests will be skipped" >&2
  exit 0
fi
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; }
if install || { apt-get update -qq >/dev/null 2>&1 && install; }; then
  echo "installed promtool (Debian's prometheus)"
else
  echo "could not install prometheus with apt: the alert rule tests will be skipped" >&2
fi
