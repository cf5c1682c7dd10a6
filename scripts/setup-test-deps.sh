#!/usr/bin/env bash
# Installs what the tests need beyond cargo, idempotently, into the git-ignored .cache/:
# - .cache/models: the real models (scripts/fetch-test-models.sh);
# - .cache/tools/helm: helm, for the chart test (scripts/fetch-helm.sh);
# - .cache/python/site: the stock clients users already run, so tests prove wire compatibility:
#   tritonclient[grpc] and openai, moto (S3) and azure-storage-blob
#   (scripts/install-python-clients.sh);
# - .cache/node: azurite, the Azure Blob emulator (scripts/install-azurite.sh);
# - docker-registry, Debian's OCI registry (scripts/install-docker-registry.sh, as root);
# - podman, runc, buildah and mmdebstrap, which build and run the images (scripts/install-containers.sh,
#   as root);
# - promtool, Debian's prometheus, which lints the /metrics expositions and unit-tests the chart's
#   alert rules (scripts/install-promtool.sh, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-test-models.sh
scripts/fetch-helm.sh
scripts/install-python-clients.sh
scripts/install-azurite.sh
scripts/install-docker-registry.sh
scripts/install-containers.sh
scripts/install-promtool.sh
