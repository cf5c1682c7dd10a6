"""Narrates the quickstart: follows an InferenceService and the TrainingJobs that feed it with
kubectl, sends requests to the service the whole time with the stock OpenAI client (a rollout's
steps need live traffic), and prints what changes, one line each (training progress at most
every 10 s). Ends once every job has succeeded and every served model has settled (no rollout
loading or progressing), or after the time limit.

Usage: narrate.py --service NAME [--job NAME]... [--limit SECONDS] [--ask MODEL=MESSAGE]...
Without --ask the requests are completions of '3+4=' from the service's model; each
--ask MODEL=MESSAGE sends chat completions of MESSAGE to MODEL (an adapter model too)."""

import argparse
import json
import subprocess
import sys
import threading
import time

import openai


def kubectl_json(*args):
    run = subprocess.run(["kubectl", *args, "-o", "json"], capture_output=True, text=True)
    return json.loads(run.stdout) if run.returncode == 0 else None


class Traffic(threading.Thread):
    """Asks `model` what 3+4 is (or `message`, in a chat), again and again, through the
    service's Service, and remembers the last answer and the version that gave it."""

    def __init__(self, service, model, message=None):
        super().__init__(daemon=True)
        self.service = service
        self.model = model
        self.message = message
        self.answer = None
        self.sent = 0
        self.failed = 0

    def connect(self):
        while True:
            service = kubectl_json("get", "service", self.service)
            if service:
                address = f"{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
                return openai.OpenAI(base_url=f"http://{address}/v1", api_key="unused", max_retries=0, timeout=10)
            time.sleep(1)

    def ask(self, client):
        if self.message:
            raw = client.chat.completions.with_raw_response.create(
                model=self.model, messages=[{"role": "user", "content": self.message}], max_tokens=16, temperature=0)
            return raw.headers, raw.parse().choices[0].message.content, self.message
        raw = client.completions.with_raw_response.create(model=self.model, prompt="3+4=", max_tokens=3, temperature=0)
        return raw.headers, raw.parse().choices[0].text, "3+4="

    def run(self):
        client = self.connect()
        while True:
            try:
                headers, text, asked = self.ask(client)
                version = headers.get("x-lantern-model-version", "?")
                self.answer = f"{self.model}: {asked!r} -> {text.strip()!r} from version {version}"
                self.sent += 1
            except openai.OpenAIError:
                # No ready pod yet, a pod restarting, or the model's first version still
                # training: try again.
                self.failed += 1
                time.sleep(0.5)
            time.sleep(0.05)


def describe_job(name, job):
    status = job.get("status", {})
    progress = status.get("progress") or {}
    line = f"training {name}: {status.get('phase', 'Pending')}"
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


def describe_model(model, served):
    """One served model's line: `served` is the service's status or one of its adapters'."""
    line = f"serving {model}: stable {served.get('stableVersion', '-')}"
    if served.get("canaryVersion"):
        line += f", canary {served['canaryVersion']} at {served.get('canaryPercent', 0)}%"
    rollout = served.get("rollout")
    if rollout:
        line += f"; rollout of {rollout['version']}: {rollout['phase']}"
        if rollout.get("message"):
            line += f" ({rollout['message']})"
    if served.get("message"):
        line += f"; {served['message']}"
    return line


def served_models(service):
    """(model, status) of the base and of each adapter."""
    status = service.get("status", {})
    base = service.get("spec", {}).get("model", "?")
    return [(base, status)] + [(a.get("model") or "?", a) for a in status.get("adapters", [])]


def ready_line(service):
    conditions = service.get("status", {}).get("conditions", [])
    parts = []
    for kind in ("Ready", "AdaptersReady"):
        found = next((c for c in conditions if c["type"] == kind), None)
        if found:
            parts.append(f"{kind}={found['status']}" + ("" if found["status"] == "True" else f" {found['reason']}"))
    return "service: " + ", ".join(parts) if parts else None


def settled(served):
    rollout = served.get("rollout") or {}
    return served.get("stableVersion") and rollout.get("phase") not in ("Loading", "Progressing")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", required=True)
    parser.add_argument("--job", action="append", default=[])
    parser.add_argument("--limit", type=float, default=900)
    parser.add_argument("--ask", action="append", default=[], metavar="MODEL=MESSAGE")
    args = parser.parse_args()
    service_object = kubectl_json("get", "inferenceservice", args.service) or {}
    base = service_object.get("spec", {}).get("model", args.service)
    asks = [tuple(ask.split("=", 1)) for ask in args.ask] or [(base, None)]
    # A few clients per model at once, so that a canary's small share still sees enough requests.
    clients = [Traffic(args.service, model, message) for model, message in asks for _ in range(3)]
    for client in clients:
        client.start()
    start = time.time()
    seen = {}
    done_at = None

    def say(key, line, every=0.0):
        now = time.time()
        last_line, last_time = seen.get(key, (None, 0.0))
        if line and line != last_line and now - last_time >= every:
            seen[key] = (line, now)
            print(f"[{now - start:5.0f}s] {line}", flush=True)

    while time.time() - start < args.limit:
        jobs = {name: kubectl_json("get", "trainingjob", name) or {} for name in args.job}
        service = kubectl_json("get", "inferenceservice", args.service) or {}
        for name, job in jobs.items():
            job_status = job.get("status", {})
            state = (job_status.get("phase"), len(job_status.get("checkpoints") or []))
            changed = state != seen.get(f"job-state-{name}", (None,))[0]
            if changed:
                seen[f"job-state-{name}"] = (state, 0.0)
            say(f"job-{name}", describe_job(name, job), every=0.0 if changed else 10.0)
            if job_status.get("phase") == "Failed":
                print(f"TrainingJob {name} failed; see kubectl describe tj {name}")
                return 1
        models = served_models(service)
        for model, served in models:
            say(f"model-{model}", describe_model(model, served))
        say("ready", ready_line(service))
        for client in clients[::3]:
            say(f"answer-{client.model}", client.answer)
        trained = all(job.get("status", {}).get("phase") == "Succeeded" for job in jobs.values())
        if trained and done_at is None:
            done_at = time.time()
        # The last versions reach the pods within a few seconds of the jobs' end.
        if done_at and time.time() - done_at > 10 and all(settled(served) for _, served in models):
            answered = sum(c.sent for c in clients)
            stable = ", ".join(f"{model} version {served['stableVersion']}" for model, served in models)
            print(f"training done; serving {stable}; {answered} requests answered", flush=True)
            return 0
        time.sleep(1)
    print(f"stopped after {args.limit:.0f} s")
    return 1


if __name__ == "__main__":
    sys.exit(main())
