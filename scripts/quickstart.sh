#!/usr/bin/env bash
# Quickstart: publish two versions of an MLP, serve them, and watch version 2 take over from
# version 1 without a restart. Needs only cargo and python3 (for the HTTP calls).
# Until the devcluster and operator land, this runs the worker directly on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

addr=${LANTERN_LISTEN:-127.0.0.1:8500}
state=.cache/quickstart
rm -rf "$state" && mkdir -p "$state"

echo "==> building lantern-worker"
cargo build --quiet -p lantern-worker
worker=target/debug/lantern-worker

echo "==> publishing version 1 of model 'iris' (4 inputs, 3 outputs)"
"$worker" init-mlp --layers 4,16,3 --seed 1 --out "$state/v1" >/dev/null
"$worker" publish --repository "$state/repo" --model iris --source "$state/v1"

echo "==> serving on $addr"
"$worker" serve --repository "$state/repo" --listen "$addr" --poll-interval-ms 500 --log warn &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT

call() {
  python3 - "$addr" "$@" <<'PY'
import json, sys, time, urllib.request, urllib.error
addr, what = sys.argv[1], sys.argv[2]
def infer():
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                    "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
    req = urllib.request.Request(f"http://{addr}/v2/models/iris/infer", body,
                                 {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=5))
deadline = time.time() + 60
while True:
    try:
        if what == "ready":
            urllib.request.urlopen(f"http://{addr}/v2/health/ready", timeout=2); break
        answer = infer()
        if what == "infer" or answer["model_version"] == what:
            print(f"    version {answer['model_version']} answered {answer['outputs'][0]['data']}"); break
    except (urllib.error.URLError, ConnectionError):
        pass
    if time.time() > deadline:
        sys.exit(f"timed out waiting for {what}")
    time.sleep(0.2)
PY
}

call ready
echo "==> inference over HTTP (POST /v2/models/iris/infer)"
call infer

echo "==> publishing version 2; the worker hot-loads it and moves traffic without a restart"
"$worker" init-mlp --layers 4,16,3 --seed 2 --out "$state/v2" >/dev/null
"$worker" publish --repository "$state/repo" --model iris --source "$state/v2"
call 2

echo "==> stopping (SIGTERM drains in-flight requests, exit status 0)"
kill -TERM "$server"
wait "$server"
trap - EXIT
echo "done: the repository is in $state/repo"
