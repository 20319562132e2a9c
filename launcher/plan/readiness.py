"""What "ready" means, as pure functions over what the nodes answered."""

from __future__ import annotations

from typing import Any

from launcher.plan.types import Plan, Probe, Service


def probe_passes(probe: Probe, status: int, body: Any) -> bool:
    if status != 200:
        return False
    if not probe.expect:
        return True
    return isinstance(body, dict) and all(str(body.get(k)) == str(v) for k, v in probe.expect.items())


def liveness_probe(s: Service) -> Probe:
    """What `watch` asks a running rank each round (is it alive at all?): its readiness probe, except plain
    SGLang's rank 0, whose /health generates a token (SGLang waits up to 20 s for it: a rank busy with long
    prefills would read as frozen). There /get_model_info, which its HTTP server answers without the
    scheduler; a rank frozen outright answers neither. Ranks 1 and up serve a bare /health."""
    probe = s.probe
    if "--api-key" in s.command:  # SGLang then lets only /health and /metrics through without the key
        return probe
    if s.engine == "sglang" and s.rank == 0 and probe.kind == "http" and (probe.url or "").endswith("/health"):
        return Probe(kind="http", url=(probe.url or "").removesuffix("/health") + "/get_model_info")
    return probe


def probe_text(probe: Probe) -> str:
    if probe.kind == "log":
        return f"log line {probe.expect['line']!r}"
    return probe.url or "running"


def describe_answer(status: int, body: Any) -> str:
    """A probe's answer in one short line: `HTTP 503 not ready: insufficient healthy workers`."""
    if isinstance(body, dict):
        words = [str(body[k]) for k in ("status", "reason", "message", "error") if body.get(k)]
        text = ": ".join(words) if words else str(body)
    else:
        text = str(body or "").strip()
    return f"HTTP {status}" + (f" {text[:160]}" if text else "")


def expected_instances(plan: Plan) -> dict[str, int]:
    total: dict[str, int] = {}
    for group in plan.groups:
        for component, count in group.expected_instances.items():
            total[component] = total.get(component, 0) + count
    return total


def count_instances(health: Any) -> dict[str, int]:
    """Dynamo frontend `/health`: count `generate` instances per component.

    Its `status` field says healthy even with no worker at all, so only the instances count."""
    counts: dict[str, int] = {}
    if not isinstance(health, dict):
        return counts
    for item in health.get("instances") or []:
        if isinstance(item, dict) and item.get("endpoint") == "generate":
            component = str(item.get("component"))
            counts[component] = counts.get(component, 0) + 1
    return counts


def missing_instances(expected: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    return {c: n - counts.get(c, 0) for c, n in expected.items() if counts.get(c, 0) < n}


def model_listed(models: Any, name: str | None) -> bool:
    if not isinstance(models, dict):
        return False
    ids = [m.get("id") for m in models.get("data") or [] if isinstance(m, dict)]
    return bool(ids) if name is None else name in ids


def chat_request(model: str | None) -> dict[str, Any]:
    return {
        "model": model or "default",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "stream": False,
    }


def answer_text(body: Any) -> str:
    """The text of a chat completion: the message's content, or its reasoning (R1 behind a reasoning
    parser may spend a short answer in `reasoning_content`); "" when it carries none."""
    try:
        message = body["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return ""
    if not isinstance(message, dict):
        return ""
    return str(message.get("content") or message.get("reasoning_content") or "")
