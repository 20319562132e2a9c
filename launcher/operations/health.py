"""Is it healthy? The HTTP probes of services, and the endpoint's own state (the Dynamo frontend's
registry of workers, or the SGLang router's readiness), asked through each node's connection.
`up`'s waiter and `status` both ask here."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from launcher.errors import one_line
from launcher.operations.context import Target
from launcher.operations.nodes import by_node
from launcher.plan import readiness
from launcher.plan.types import Service
from launcher.transport.errors import NodeError, describe
from launcher.transport.host import Host

PROBE_TIMEOUT = 3.0
PROBE_LIMIT = 65536  # bytes of a health answer read where it is judged unattended: it comes from the network
PROBES_AT_ONCE = 128  # a round of `failures` takes PROBE_TIMEOUT per this many ranks that do not answer


@dataclass(frozen=True)
class Answer:
    """What one HTTP probe got: passed or not, and the answer in one line."""

    passed: bool
    text: str


def probe_http(target: Target, services: list[Service]) -> dict[str, Answer]:
    """Every service's HTTP probe, one batch per node, all nodes at once; keyed by service name. A node
    that cannot be reached gives no answers (its listing reports it)."""
    services = [s for s in services if s.probe.kind == "http"]
    nodes = by_node(services)

    def check(host: Host) -> dict[str, Answer]:
        answers = {}
        for s in nodes[host.node.index]:
            try:
                status, body = host.http("GET", s.probe.url, timeout=PROBE_TIMEOUT)
            except (OSError, ConnectionError) as exc:
                answers[s.name] = Answer(False, f"no answer: {exc}")
                continue
            answers[s.name] = Answer(
                readiness.probe_passes(s.probe, status, body), readiness.describe_answer(status, body)
            )
        return answers

    out: dict[str, Answer] = {}
    for answers in target.fleet.map(check, nodes).succeeded.values():
        out.update(answers)
    return out


def failures(target: Target, services: list[Service]) -> dict[str, str | None]:
    """`watch`'s look at running ranks: each HTTP probe among SERVICES, all at once, each within
    PROBE_TIMEOUT and PROBE_LIMIT bytes -> service name -> why it failed, in one line (None: it passed).
    Whatever a node sends, or fails to, is a failed probe, never an error of the caller."""
    services = [s for s in services if s.probe.kind == "http"]
    if not services:
        return {}
    with ThreadPoolExecutor(max_workers=min(PROBES_AT_ONCE, len(services)), thread_name_prefix="probe") as pool:
        answers = list(pool.map(lambda s: failure(target, s), services))
    return {s.name: why for s, why in zip(services, answers, strict=True)}


def failure(target: Target, service: Service) -> str | None:
    """One bounded probe of SERVICE through its node's connection: why it failed (None: it passed)."""
    try:
        host = target.fleet.host(service.node.index)
        probe = readiness.liveness_probe(service)
        status, body = host.http("GET", probe.url, timeout=PROBE_TIMEOUT, limit=PROBE_LIMIT)
        if readiness.probe_passes(probe, status, body):
            return None
        return one_line(readiness.describe_answer(status, body))[:200]
    except Exception as exc:  # noqa: BLE001 - no answer, one over the limit, a broken channel: a failed probe
        said = describe(exc) if isinstance(exc, NodeError) else str(exc) or type(exc).__name__
        return one_line(said)[:200]


@dataclass
class EndpointState:
    """Whether the endpoint serves, and why not: workers missing from the frontend's registry, the
    model not listed yet, the router not ready, or no answer."""

    ready: bool
    note: str
    expected: dict[str, int] = field(default_factory=dict)
    instances: dict[str, int] | None = None
    answer: str | None = None  # the router's own words
    error: str | None = None

    def to_json(self, endpoint: str | None, model: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {"endpoint": endpoint, "model": model, "expected_instances": self.expected}
        data["ready"] = self.ready
        for key in ("instances", "answer", "error"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data


def endpoint_state(target: Target, unreachable: dict[int, str] | None = None) -> EndpointState:
    plan = target.plan
    entry = plan.entry
    if entry is None or plan.endpoint is None:
        return EndpointState(True, "no endpoint")
    if unreachable and entry.node.index in unreachable:
        return EndpointState(False, f"{entry.role} node unreachable", readiness.expected_instances(plan))
    host = target.fleet.host(entry.node.index)
    if entry.role == "router":
        return _router_state(host, entry)
    return _frontend_state(target, host)


def _router_state(host: Host, router: Service) -> EndpointState:
    """The router's readiness: 503 with a reason until every P and D worker is healthy."""
    try:
        status, body = host.http("GET", router.probe.url, timeout=PROBE_TIMEOUT)
    except (OSError, ConnectionError, NodeError) as exc:
        return EndpointState(False, f"router not answering: {exc}", error=str(exc))
    answer = readiness.describe_answer(status, body)
    return EndpointState(readiness.probe_passes(router.probe, status, body), answer, answer=answer)


def _frontend_state(target: Target, host: Host) -> EndpointState:
    """Dynamo's frontend: every expected `generate` instance registered, and the model listed."""
    plan = target.plan
    expected = readiness.expected_instances(plan)
    try:
        _, health = host.http("GET", plan.endpoint + "/health", timeout=PROBE_TIMEOUT)
        counts = readiness.count_instances(health)
        missing = readiness.missing_instances(expected, counts)
        if missing:
            note = "waiting for " + ", ".join(f"{n} more `{c}` instance(s)" for c, n in missing.items())
            return EndpointState(False, note, expected, counts)
        _, models = host.http("GET", plan.endpoint + "/v1/models", timeout=PROBE_TIMEOUT)
    except (OSError, ConnectionError, NodeError) as exc:
        return EndpointState(False, f"frontend not answering: {exc}", expected, error=str(exc))
    if not readiness.model_listed(models, plan.model_name):
        return EndpointState(False, f"/v1/models does not list {plan.model_name or 'a model'} yet", expected, counts)
    return EndpointState(True, "all workers registered", expected, counts)
