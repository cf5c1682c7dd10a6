#!/usr/bin/env bash
# Quickstart: the whole story on the devcluster. A TrainingJob trains a small model on two
# ranks and publishes every checkpoint as a version; an InferenceService serves them, and the
# operator rolls each new version out as a canary under live traffic, promoting it or rolling
# it back on what the workers measure. Needs cargo, kubectl and python3.
#
# Everything runs on this machine: the devcluster's API on a loopback port, pods as local
# processes. State, logs and the model repository stay in .cache/quickstart afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

state=.cache/quickstart
image=ghcr.io/lantern-dev/worker:0.1.0
rm -rf "$state" && mkdir -p "$state"

echo "==> building the devcluster, the operator and the worker (cargo build --workspace --bins)"
cargo build --quiet --workspace --bins
bin=$PWD/target/debug

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> starting the devcluster (logs: $state/devcluster.log; pods' logs under $state/cluster/pods)"
"$bin/lantern-devcluster" up --state-dir "$state/cluster" --listen 127.0.0.1:0 \
  --image "$image=$bin/lantern-worker" --back-off-seconds 2 >/dev/null 2>"$state/devcluster.log" &
pids+=($!)
export KUBECONFIG=$PWD/$state/cluster/kubeconfig
for _ in $(seq 100); do [ -s "$KUBECONFIG" ] && break; sleep 0.1; done
[ -s "$KUBECONFIG" ] || { cat "$state/devcluster.log"; exit 1; }

echo "==> kubectl apply -f crds/"
kubectl apply -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=30s >/dev/null

echo "==> starting lantern-operator (logs: $state/operator.log)"
"$bin/lantern-operator" --worker-image "$image" --metrics-address 127.0.0.1:0 >"$state/operator.log" 2>&1 &
pids+=($!)

echo "==> kubectl apply -f examples/training/adder-job.yaml -f examples/serving/adder.yaml"
kubectl apply -f examples/training/adder-job.yaml -f examples/serving/adder.yaml

echo "==> narrating (training progress, the rollout, and what the model answers; Ctrl-C stops)"
python3 scripts/narrate.py adder

echo "==> kubectl get trainingjobs,inferenceservices"
kubectl get tj,isvc
echo "==> kubectl get events --field-selector involvedObject.kind=InferenceService"
kubectl get events --field-selector involvedObject.kind=InferenceService
echo "done: state, logs and the model repository are in $state"
