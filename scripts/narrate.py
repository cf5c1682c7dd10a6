"""Narrates the quickstart: follows TrainingJob NAME and InferenceService NAME with kubectl,
sends requests to the service the whole time (a rollout's steps need live traffic), and prints
what changes, one line each (training progress at most every 10 s). Ends once training has
succeeded and the service has settled (no rollout loading or progressing), or after the time
limit. Usage: narrate.py NAME [LIMIT_SECONDS] [CHAT_MESSAGE]: the requests are completions of
'3+4=', or with CHAT_MESSAGE chat completions of that user message."""

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def kubectl_json(*args):
    run = subprocess.run(["kubectl", *args, "-o", "json"], capture_output=True, text=True)
    return json.loads(run.stdout) if run.returncode == 0 else None


class Traffic(threading.Thread):
    """Asks the service what 3+4 is (or `message`, in a chat), again and again, and remembers the
    last answer."""

    def __init__(self, name, message=None):
        super().__init__(daemon=True)
        self.name_ = name
        self.message = message
        self.address = None
        self.answer = None
        self.sent = 0
        self.failed = 0

    def run(self):
        if self.message:
            path, asked = "/v1/chat/completions", self.message
            request = {"messages": [{"role": "user", "content": self.message}], "max_tokens": 16}
        else:
            path, asked = "/v1/completions", "3+4="
            request = {"prompt": "3+4=", "max_tokens": 3}
        body = json.dumps({"model": self.name_, "temperature": 0, **request}).encode()
        while True:
            if self.address is None:
                service = kubectl_json("get", "service", self.name_)
                if service:
                    self.address = f"{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
                time.sleep(1)
                continue
            request = urllib.request.Request(
                f"http://{self.address}{path}", body, {"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    version = response.headers.get("x-lantern-model-version", "?")
                    choice = json.load(response)["choices"][0]
                    text = choice["message"]["content"] if self.message else choice["text"]
                    self.answer = f"{asked!r} -> {text.strip()!r} from version {version}"
                    self.sent += 1
            except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError, ValueError):
                # No ready pod yet, or a pod restarting: the service is not up; try again.
                self.failed += 1
                time.sleep(0.5)
            time.sleep(0.05)


def describe_job(job):
    status = job.get("status", {})
    progress = status.get("progress") or {}
    line = f"training: {status.get('phase', 'Pending')}"
    if progress:
        line += f", step {progress.get('step')}/{progress.get('totalSteps')}"
        if progress.get("loss") is not None:
            line += f", loss {progress['loss']:.3f}"
        if progress.get("etaSeconds") is not None:
            line += f", eta {progress['etaSeconds']} s"
    baseline = status.get("baseline") or {}
    if baseline.get("eval_accuracy") is not None:
        line += f"; the base's eval_accuracy {baseline['eval_accuracy']:.2f}"
    checkpoints = status.get("checkpoints") or []
    if checkpoints:
        last = checkpoints[-1]
        metrics = ", ".join(f"{k} {v:.2f}" for k, v in sorted(last.get("metrics", {}).items()) if k.startswith("eval_"))
        line += f"; published version {last['version']}" + (f" ({metrics})" if metrics else "")
    return line


def describe_service(service):
    status = service.get("status", {})
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
    line = f"serving: stable {status.get('stableVersion', '-')}"
    if status.get("canaryVersion"):
        line += f", canary {status['canaryVersion']} at {status.get('canaryPercent', 0)}%"
    rollout = status.get("rollout")
    if rollout:
        line += f"; rollout of {rollout['version']}: {rollout['phase']}"
        if rollout.get("message"):
            line += f" ({rollout['message']})"
    if ready:
        line += f"; Ready={ready['status']}" + ("" if ready["status"] == "True" else f" {ready['reason']}")
    return line


def main():
    name = sys.argv[1]
    limit = float(sys.argv[2]) if len(sys.argv) > 2 else 900
    message = sys.argv[3] if len(sys.argv) > 3 else None
    # A few clients at once, so that a canary's small share still sees enough requests.
    clients = [Traffic(name, message) for _ in range(4)]
    for client in clients:
        client.start()
    start = time.time()
    seen = {}
    succeeded_at = None

    def say(key, line, every=0.0):
        now = time.time()
        last_line, last_time = seen.get(key, (None, 0.0))
        if line and line != last_line and now - last_time >= every:
            seen[key] = (line, now)
            print(f"[{now - start:5.0f}s] {line}", flush=True)

    while time.time() - start < limit:
        job = kubectl_json("get", "trainingjob", name) or {}
        service = kubectl_json("get", "inferenceservice", name) or {}
        job_status, service_status = job.get("status", {}), service.get("status", {})
        checkpoints = job_status.get("checkpoints") or []
        changed = (job_status.get("phase"), len(checkpoints)) != seen.get("job-state", (None,))[0]
        if changed:
            seen["job-state"] = ((job_status.get("phase"), len(checkpoints)), 0.0)
        say("job", describe_job(job), every=0.0 if changed else 10.0)
        say("service", describe_service(service))
        say("answer", clients[0].answer)
        if job_status.get("phase") == "Failed":
            print("the TrainingJob failed; see kubectl describe tj", name)
            return 1
        if job_status.get("phase") == "Succeeded" and succeeded_at is None:
            succeeded_at = time.time()
        rollout = service_status.get("rollout") or {}
        settled = service_status.get("stableVersion") and rollout.get("phase") not in ("Loading", "Progressing")
        # Its last version reaches the pods within a few seconds of the job's end.
        if succeeded_at and time.time() - succeeded_at > 10 and settled:
            answered = sum(c.sent for c in clients)
            print(f"training done; serving version {service_status['stableVersion']}; {answered} requests answered",
                  flush=True)
            return 0
        time.sleep(1)
    print(f"stopped after {limit:.0f} s")
    return 1


if __name__ == "__main__":
    sys.exit(main())
