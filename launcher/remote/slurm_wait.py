#!/usr/bin/env python3
"""Wait, inside a Slurm batch job, until the services just started are ready, as `launcher up` waits.

Usage (run by the batch script `launcher export --to slurm` writes; standard library only):

    python3 - SPEC_JSON LOG_DIR STEPS_FILE ADDRESS... < slurm_wait.py

SPEC_JSON: {"services": [{"name", "probe": {"kind", "url", "expect"}, "timeout"}], "endpoint": null or
{"kind": "frontend"|"router", "url", "probe", "expected": {component: count}, "model", "timeout"},
"smoke": bool}. Node addresses in it are placeholders `launcher-node-I.invalid`, replaced by ADDRESS I.
STEPS_FILE has one `NAME PID` line per `srun` step started so far; a step that is gone fails the wait at
once with the last lines of LOG_DIR/NAME.log. Probes: `http` (200, and the JSON keys in `expect`), `log`
(a line in the service's log), `running` (its step lives). The endpoint: Dynamo's frontend lists every
expected `generate` instance and the model, or the router's readiness answers 200. Then one chat
completion that must carry text. Exit 0 when ready, 1 when a service died or a timeout passed.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PLACEHOLDER = re.compile(r"launcher-node-(\d+)\.invalid")
INTERVAL = 1.0
LOG_LINES = 40


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def get(url: str, body: dict | None = None, timeout: float = 3.0) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def passes(probe: dict, status: int, body: object) -> bool:
    expect = probe.get("expect") or {}
    if status != 200:
        return False
    return all(isinstance(body, dict) and str(body.get(k)) == str(v) for k, v in expect.items())


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def tail(log: Path, lines: int = LOG_LINES) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Wait:
    def __init__(self, spec: dict, log_dir: Path, steps_file: Path):
        self.spec, self.log_dir, self.steps_file = spec, log_dir, steps_file
        self.started = time.monotonic()
        self.ready: set[str] = set()
        self.answers: dict[str, str] = {}

    def steps(self) -> dict[str, int]:
        out = {}
        for line in self.steps_file.read_text().splitlines():
            name, _, pid = line.partition(" ")
            if pid.strip().isdigit():
                out[name] = int(pid)
        return out

    def check_steps(self) -> None:
        for name, pid in self.steps().items():
            if not alive(pid):
                log = self.log_dir / f"{name}.log"
                say(f"{name} exited while waiting; last lines of {log}:\n{tail(log)}")
                sys.exit(1)

    def probe(self, service: dict) -> bool:
        probe = service["probe"]
        if probe["kind"] == "log":
            return probe["expect"]["line"] in tail(self.log_dir / f"{service['name']}.log", 10**6)
        if probe["kind"] != "http":
            return True  # running: its step lives (checked every round)
        try:
            status, body = get(probe["url"])
        except OSError as exc:
            self.answers[service["name"]] = f"no answer: {exc}"
            return False
        self.answers[service["name"]] = f"HTTP {status}"
        return passes(probe, status, body)

    def endpoint(self) -> tuple[bool, str]:
        e = self.spec.get("endpoint")
        if not e:
            return True, "no endpoint"
        try:
            if e["kind"] == "router":
                status, body = get(e["probe"]["url"])
                return passes(e["probe"], status, body), f"router: HTTP {status}"
            _, health = get(e["url"] + "/health")
            counts: dict[str, int] = {}
            for item in (health.get("instances") or []) if isinstance(health, dict) else []:
                if isinstance(item, dict) and item.get("endpoint") == "generate":
                    counts[str(item.get("component"))] = counts.get(str(item.get("component")), 0) + 1
            missing = {c: n - counts.get(c, 0) for c, n in e["expected"].items() if counts.get(c, 0) < n}
            if missing:
                return False, "waiting for " + ", ".join(f"{n} more `{c}` instance(s)" for c, n in missing.items())
            _, models = get(e["url"] + "/v1/models")
            ids = [m.get("id") for m in (models.get("data") or [])] if isinstance(models, dict) else []
            listed = bool(ids) if not e.get("model") else e["model"] in ids
            return listed, "all workers registered" if listed else "the model is not listed yet"
        except OSError as exc:
            return False, f"no answer: {exc}"

    def run(self) -> None:
        services = self.spec["services"]
        endpoint = self.spec.get("endpoint")
        noted = ""
        while True:
            self.check_steps()
            elapsed = time.monotonic() - self.started
            for s in services:
                if s["name"] not in self.ready and self.probe(s):
                    self.ready.add(s["name"])
                    say(f"{s['name']}: ready ({elapsed:.0f}s)")
                elif s["name"] not in self.ready and elapsed > s["timeout"]:
                    say(f"{s['name']} not ready after {s['timeout']:.0f}s: {self.answers.get(s['name'], '')}")
                    sys.exit(1)
            if len(self.ready) == len(services):
                done, note = self.endpoint()
                if done:
                    if endpoint:
                        say(f"endpoint: {note} ({elapsed:.0f}s)")
                    return
                if note != noted:
                    say(f"endpoint: {note}")
                    noted = note
                if elapsed > endpoint["timeout"]:
                    say(f"endpoint not ready after {endpoint['timeout']:.0f}s: {note}")
                    sys.exit(1)
            time.sleep(INTERVAL)


def smoke(endpoint: dict) -> None:
    url = endpoint["url"] + "/v1/chat/completions"
    body = {"model": endpoint.get("model") or "default", "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8, "stream": False}  # fmt: skip
    last = ""
    for _ in range(10):
        try:
            status, answer = get(url, body, timeout=60)
        except OSError as exc:
            status, answer = 0, str(exc)
        text = ""
        if status == 200 and isinstance(answer, dict):
            message = (answer.get("choices") or [{}])[0].get("message") or {}
            text = message.get("content") or message.get("reasoning_content") or ""
        if text.strip():
            say(f"smoke test: {status} OK: {text.strip()[:60]!r}")
            return
        last = f"HTTP {status}: {str(answer)[:200]}"
        time.sleep(2)
    say(f"smoke test failed: {last}")
    sys.exit(1)


def main(argv: list[str]) -> None:
    spec_text, log_dir, steps_file, *addresses = argv
    spec = json.loads(PLACEHOLDER.sub(lambda m: addresses[int(m.group(1))], spec_text))
    Wait(spec, Path(log_dir), Path(steps_file)).run()
    if spec.get("smoke") and spec.get("endpoint"):
        smoke(spec["endpoint"])


if __name__ == "__main__":
    main(sys.argv[1:])
