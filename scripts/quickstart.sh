#!/usr/bin/env bash
# Quickstart: the whole story on the devcluster. A TrainingJob trains a small model on two
# ranks and publishes every checkpoint as a version; an InferenceService serves them, and the
# operator rolls each new version out as a canary under live traffic, promoting it or rolling
# it back on what the workers measure. Needs cargo, kubectl and python3.
#
# scripts/quickstart.sh --finetune runs a longer variant (about 25 minutes on two cores): the
# TrainingJob LoRA-tunes SmolLM2-135M-Instruct on the tickets conversations, and the
# InferenceService rolls its versions out as canaries gated on their held-out eval_accuracy.
#
# scripts/quickstart.sh --adapters: two TrainingJobs LoRA-tune SmolLM2-135M-Instruct for two
# tasks (tickets, SKU codes) and publish adapter versions; one InferenceService serves the base
# and both adapters from one pod, and rolls each adapter's versions out as its own canary.
#
# scripts/quickstart.sh --compress: the --finetune variant, then the tickets model made smaller
# (examples/training/compress-tickets-jobs.yaml): quantized to Q8_0, then to Q4_0, then distilled
# into 10 of its 30 layers, each a new version of `tickets` that the InferenceService
# (examples/serving/tickets-compressed.yaml) keeps or rolls back on its held-out eval_accuracy,
# within a tolerance of 0.05 (over an hour on two cores).
#
# Everything runs on this machine: the devcluster's API on a loopback port, pods as local
# processes. With --containers (before or after the variant), the pods run in containers
# instead: scripts/build-images.sh builds the worker and router images from the same binaries,
# and the devcluster runs them with podman under the pod security the operator writes
# (`lantern-devcluster up --runtime podman`; needs root and scripts/install-containers.sh).
# State, logs and the model repository stay in .cache/quickstart afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

containers=false
variant_flag=""
for arg in "$@"; do
  case "$arg" in
    --containers) containers=true ;;
    *) variant_flag="$arg" ;;
  esac
done
case "$variant_flag" in
  "")
    variant=adder job=examples/training/adder-job.yaml service=examples/serving/adder.yaml
    narrate=(--service adder --job adder)
    tasks=() ;;
  --finetune)
    variant=finetune job=examples/training/finetune-tickets-job.yaml service=examples/serving/tickets.yaml
    narrate=(--service tickets --job tickets --limit 3000 --ask "tickets=Order 8123 came in pieces.")
    tasks=(tickets) ;;
  --compress)
    variant=compress job=examples/training/finetune-tickets-job.yaml service=examples/serving/tickets-compressed.yaml
    narrate=(--service tickets --job tickets --limit 3000 --ask "tickets=Order 8123 came in pieces.")
    tasks=(tickets) ;;
  --adapters)
    variant=adapters job=examples/training/finetune-adapters-jobs.yaml service=examples/serving/adapters.yaml
    narrate=(--service smollm2 --job tickets-lora --job sku-lora --limit 3600
      --ask "tickets-lora=Order 8123 came in pieces." --ask "sku-lora=What is the SKU of the blue desk in size 2?")
    tasks=(tickets sku) ;;
  *) echo "usage: scripts/quickstart.sh [--finetune | --compress | --adapters] [--containers]" >&2; exit 2 ;;
esac
state=.cache/quickstart
image=ghcr.io/lantern-dev/worker:0.1.0
router_image=ghcr.io/lantern-dev/router:0.1.0
rm -rf "$state" && mkdir -p "$state"

# The narration talks to the service with the stock OpenAI client.
scripts/install-python-clients.sh
export PYTHONPATH=$PWD/.cache/python/site

if [ "$variant" != adder ]; then
  # Fine-tuning a 135M model wants the optimized build.
  echo "==> building the devcluster, the operator and the worker (cargo build --release --workspace --bins)"
  cargo build --quiet --release --workspace --bins
  bin=$PWD/target/release
  scripts/fetch-test-models.sh
  # The claim `models` (the devcluster keeps a claim's files under its state directory) holds
  # the base as version 1 of smollm2, and the conversations beside the versions.
  claim=$state/cluster/claims/default/models
  echo "==> lantern-worker publish --model smollm2 --version 1 (the base) and the ${tasks[*]} data into the claim"
  "$bin/lantern-worker" publish --repository "$claim" --model smollm2 --version 1 \
    --source .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  for task in "${tasks[@]}"; do
    mkdir -p "$claim/.datasets/$task"
    cp "examples/training/$task/train.jsonl" "examples/training/$task/eval.jsonl" "$claim/.datasets/$task/"
  done
else
  echo "==> building the devcluster, the operator and the worker (cargo build --workspace --bins)"
  cargo build --quiet --workspace --bins
  bin=$PWD/target/debug
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if $containers; then
  scripts/install-containers.sh
  echo "==> scripts/build-images.sh --binaries $bin (the images the pods run)"
  scripts/build-images.sh --binaries "$bin"
  pods=(--runtime podman)
else
  pods=(--image "$image=$bin/lantern-worker" --image "$router_image=$bin/lantern-router")
fi
echo "==> starting the devcluster (logs: $state/devcluster.log; pods' logs under $state/cluster/pods)"
"$bin/lantern-devcluster" up --state-dir "$state/cluster" --listen 127.0.0.1:0 \
  "${pods[@]}" --back-off-seconds 2 >/dev/null 2>"$state/devcluster.log" &
pids+=($!)
export KUBECONFIG=$PWD/$state/cluster/kubeconfig
for _ in $(seq 100); do [ -s "$KUBECONFIG" ] && break; sleep 0.1; done
[ -s "$KUBECONFIG" ] || { cat "$state/devcluster.log"; exit 1; }

echo "==> kubectl apply -f crds/"
kubectl apply -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=30s >/dev/null

echo "==> starting lantern-operator (logs: $state/operator.log)"
"$bin/lantern-operator" --worker-image "$image" --router-image "$router_image" --metrics-address 127.0.0.1:0 >"$state/operator.log" 2>&1 &
pids+=($!)

echo "==> kubectl apply -f $job -f $service"
kubectl apply -f "$job" -f "$service"

echo "==> narrating (training progress, the rollouts, and what the models answer; Ctrl-C stops)"
python3 scripts/narrate.py "${narrate[@]}"

if [ "$variant" = compress ]; then
  for part in q8 q4 student; do
    echo "==> kubectl apply -f examples/training/compress-tickets-jobs.yaml -l example.lantern.dev/part=$part"
    kubectl apply -f examples/training/compress-tickets-jobs.yaml -l "example.lantern.dev/part=$part"
    python3 scripts/narrate.py --service tickets --job "tickets-$part" --limit 3000 --ask "tickets=Order 8123 came in pieces."
  done
  echo "==> each version's held-out metrics (kubectl get tj -o custom-columns)"
  kubectl get tj -o custom-columns='JOB:.metadata.name,VERSION:.status.checkpoints[-1:].version,ACCURACY:.status.checkpoints[-1:].metrics.eval_accuracy,LOSS:.status.checkpoints[-1:].metrics.eval_loss,SIZE:.status.checkpoints[-1:].metrics.size_ratio,PARAMETERS:.status.checkpoints[-1:].metrics.parameter_ratio'
  echo "==> the service's versions (stable, rejected)"
  kubectl get isvc tickets -o jsonpath='stable {.status.stableVersion}, rejected {.status.rejectedVersions}{"\n"}'
fi

echo "==> kubectl get trainingjobs,inferenceservices"
kubectl get tj,isvc
echo "==> kubectl get events --field-selector involvedObject.kind=InferenceService"
kubectl get events --field-selector involvedObject.kind=InferenceService
echo "done: state, logs and the model repository are in $state"
