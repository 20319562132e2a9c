"""Draining before a stop, as data: which services are drained and in which order, the env that sets
Dynamo's grace period from the file, and the in-flight request count read from a /metrics answer.

What the drain relies on (Dynamo 1.6.1, checked on its mocker): SIGTERM makes a Dynamo worker
deregister at once (the frontend routes nothing new to it), then finish its in-flight requests before it
exits. The real engines (dynamo.sglang, dynamo.vllm) keep serving them through the grace period
(DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS, 5 s by default: set here to drain_timeout) and keep their
/metrics up meanwhile; the mocker ignores the grace period, waits for its requests itself and stops
serving /metrics at the signal. So the count is read before the signal, and afterwards the drain ends
when the count reads zero, or when the worker has exited, or at drain_timeout.

Plain SGLang behind its P/D router (sglang-router 0.3.2, checked against the real router): no graceful
deregistration, so `down` takes each worker out of the router first, through the router's API (`GET /workers`
lists {"workers": [{"id": UUID, "url": ...}]}; `DELETE /workers/{id}` queues the removal: 202, then 404 and
no longer listed), then waits for its in-flight count (SGLang's /metrics with --enable-metrics, else the
router's own `smg_worker_requests_active{worker=URL}`), then stops it. Only where the router goes too: a
worker recreated behind a router that stays would stay out of its routing (nothing adds it back).

Nothing a /metrics or router answer says is trusted beyond a bound: its size, the number of series or workers
read, each line's length and each value (finite, whole, 0 to MAX_IN_FLIGHT; a worker id a UUID); anything else
is "unreadable", never a crash.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection
from dataclasses import dataclass

from launcher.plan.engines import args as A
from launcher.plan.state import Container
from launcher.plan.types import Plan, Service

# The engines whose workers deregister on SIGTERM and finish their requests (Dynamo's graceful shutdown).
DYNAMO_ENGINES = ("mocker", "dynamo-sglang", "dynamo-vllm")
GRACE_ENV = "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS"
MAX_METRICS_BYTES = 4 << 20  # a worker's /metrics is tens of KB; more is not read
MAX_SERIES = 4096  # in-flight series read from one answer (one per endpoint and DP rank)
# A gauge's line is ~200 characters. The parser's work on one line grows with its length squared (each
# escaped quote in a label value copies the value up to it), so longer lines are refused, not parsed.
MAX_LINE_CHARS = 2048
MAX_IN_FLIGHT = 1_000_000  # a count above this is not a count
WORKER_IN_FLIGHT = "dynamo_component_inflight_requests"  # per endpoint: the `generate` ones count
ENGINE_IN_FLIGHT = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
)
FRONTEND_IN_FLIGHT = "dynamo_frontend_inflight_requests"
FRONTEND_REQUESTS = "dynamo_frontend_requests_total"
FRONTEND_FAMILY = "\n# TYPE dynamo_frontend_"  # a line of the frontend's own metric families
ROUTER_IN_FLIGHT = "smg_worker_requests_active"  # the router's requests on each worker, by its URL
MAX_ROUTER_ANSWER = 1 << 20  # /workers lists ~300 bytes a worker
MAX_ROUTER_WORKERS = 4096


def worker_env(engine: str, drain_timeout: float) -> dict[str, str]:
    """A Dynamo worker's grace period after SIGTERM: as long as the launcher waits for its requests."""
    if engine not in DYNAMO_ENGINES:
        return {}
    return {GRACE_ENV: f"{drain_timeout:g}"}


def drained(s: Service) -> bool:
    """Is this service drained before it is stopped? The Dynamo worker ranks that register `generate`:
    every rank of the mocker and of dynamo-vllm, the leader (rank 0) of a dynamo-sglang group."""
    if s.group is None or s.engine not in DYNAMO_ENGINES:
        return False
    return s.engine != "dynamo-sglang" or s.rank == 0


def recreated(plan: Plan, removed: list[Container]) -> list[Service]:
    """The drained Dynamo workers among the containers `up` removes (REMOVED) whose names the plan still has,
    as the plan has them (`up` recreates them): only those of a group none of whose removed containers has
    stopped, judged by the group the containers were started in (a group that lost a rank cannot finish what
    it holds, and the drain would wait out drain_timeout for nothing; a group the file now gives more ranks
    still serves as it runs). Plain SGLang workers behind a router are left out: the router finds the new one
    at the same address, where a removal through its API would have to be undone."""
    broken = {c.group for c in removed if c.group is not None and not c.running}
    running = {(c.node_index, c.name): c for c in removed if c.running and c.group not in broken}
    planned = [(s, running.get((s.node.index, s.name))) for s in plan.services]
    return [s for s, c in planned if c is not None and drained(s)]


def phases(plan: Plan) -> list[list[Service]]:
    """The drained services in the order they are drained: prefill workers first (a request they hold
    goes on to decode, which must still be there), then decode and aggregated ones. Empty phases dropped.
    The plain SGLang workers behind the plan's router are drained too (see `routed`)."""
    return order(plan.services, set(routed(plan.services)))


def order(services: list[Service], routed_names: Collection[str] = ()) -> list[list[Service]]:
    """`phases` of any services (those a plan no longer has, say); `routed_names`: workers drained
    through their router."""
    workers = [s for s in services if drained(s) or s.name in routed_names]
    prefill = [s for s in workers if s.role == "prefill"]
    rest = [s for s in workers if s.role != "prefill"]
    return [p for p in (prefill, rest) if p]


def not_drained(plan: Plan) -> list[str]:
    """The worker groups that have no drain (not Dynamo engines, nor plain SGLang behind the plan's router):
    stopped without one."""
    behind = {s.group for s in plan.services if s.name in routed(plan.services)}
    return sorted({s.group for s in plan.services if s.group and s.engine not in DYNAMO_ENGINES} - behind)


def router_worker_url(s: Service) -> str | None:
    """The URL a plain SGLang group's rank 0 serves on, as the plan gives it to the router."""
    if s.engine != "sglang" or s.group is None or s.rank != 0:
        return None
    port = A.value(s.command, "--port")
    return f"http://{s.node.address}:{port}" if port else None


def router_api(router: Service) -> str:
    """The sglang-router's own HTTP address (its --port, on its node)."""
    return f"http://{router.node.address}:{A.value(router.command, '--port')}"


def router_auth(router: Service) -> dict[str, str]:
    """The header that opens the router's worker API: its first admin key (`--control-plane-api-keys
    ID:NAME:admin:KEY` in its args; the router's own parsing). With keys set, sglang-router 0.3.2 answers
    `GET /workers` 401 without a key and 403 to a user's (checked): no drain got past that."""
    for entry in A.flags(router.command).get("--control-plane-api-keys", []):
        parts = entry.split(":", 3)
        if len(parts) == 4 and parts[2].lower() == "admin":
            return {"Authorization": f"Bearer {parts[3]}"}
    return {}


def routed(services: list[Service]) -> dict[str, tuple[Service, str]]:
    """The plain SGLang workers an sglang-router of these services was given (--prefill/--decode URL),
    by service name: (that router, the worker's URL). mini_lb has no worker API: none behind it."""
    routers = [r for r in services if r.role == "router" and "--pd-disaggregation" in r.command]
    out = {}
    for s in services:
        url = router_worker_url(s)
        for r in routers:
            given = {r.command[i + 1] for i, a in enumerate(r.command[:-1]) if a in ("--prefill", "--decode")}
            if url and url in given and A.value(r.command, "--port"):
                out[s.name] = (r, url)
    return out


def router_worker_spec(router: Service, url: str) -> dict[str, object] | None:
    """What the router's `POST /workers` takes to route to the worker at URL again, read from the router's
    own argv (`--prefill URL [BOOTSTRAP_PORT]`, `--decode URL`): the same type and bootstrap port it was
    started with (checked on sglang-router 0.3.2: answered 202, then listed as before). None: not given it."""
    argv = router.command
    for i, arg in enumerate(argv[:-1]):
        if arg in ("--prefill", "--decode") and argv[i + 1] == url:
            spec: dict[str, object] = {"url": url, "worker_type": arg[2:]}
            following = argv[i + 2] if i + 2 < len(argv) else ""
            if arg == "--prefill" and following.isdigit():
                spec["bootstrap_port"] = int(following)
            return spec
    return None


def router_worker_id(answer: object, url: str) -> str | None:
    """The id the router gives the worker at URL, from its `GET /workers` answer (parsed JSON); None when
    it lists no such worker. ValueError (the reason, short) when the answer is not that listing."""
    workers = answer.get("workers") if isinstance(answer, dict) else None
    if not isinstance(workers, list):
        raise ValueError("not the router's worker list (no `workers` list in it)")
    if len(workers) > MAX_ROUTER_WORKERS:
        raise ValueError(f"over {MAX_ROUTER_WORKERS} workers listed")
    for w in workers:
        if isinstance(w, dict) and w.get("url") == url:
            try:  # the id goes into a request path: a UUID only, in its own spelling
                return str(uuid.UUID(str(w.get("id"))[:64]))
            except ValueError:
                raise ValueError("the worker's id is not a UUID") from None
    return None


def router_in_flight(text: str, url: str) -> int:
    """The router's requests in flight on the worker at URL, from its /metrics; ValueError as for a worker."""
    values = [v for _, labels, v in _samples(text, (ROUTER_IN_FLIGHT,)) if labels.get("worker") == url]
    if not values:
        raise ValueError("no in-flight count for that worker in it")
    return _count(values)


def _samples(text: str, names: tuple[str, ...]) -> list[tuple[str, dict[str, str], float]]:
    """The samples of these names in a Prometheus text answer; ValueError when it is too big or not that."""
    if len(text) > MAX_METRICS_BYTES:
        raise ValueError(f"answer over {MAX_METRICS_BYTES} bytes")
    # Only the wanted lines are parsed: the work is bounded by them, whatever else the answer holds.
    starts = tuple(n + c for n in names for c in ("{", " "))
    lines = [line for line in text.splitlines() if line.startswith(starts)]
    if len(lines) > MAX_SERIES:
        raise ValueError(f"over {MAX_SERIES} in-flight series")
    if any(len(line) > MAX_LINE_CHARS for line in lines):
        raise ValueError(f"an in-flight line over {MAX_LINE_CHARS} characters")
    from prometheus_client.parser import text_string_to_metric_families  # here: 0.08 CPU-s for every command

    try:
        families = list(text_string_to_metric_families("\n".join(lines) + "\n"))
        return [(x.name, dict(x.labels), float(x.value)) for f in families for x in f.samples]
    except Exception as exc:  # the parser's errors are not all ValueError: none may escape as a crash
        raise ValueError(f"not Prometheus text ({type(exc).__name__})") from None


samples = _samples  # (plan.roll reads the request counters within the same bounds)


def _count(values: list[float]) -> int:
    """A sum of gauges that must be request counts: finite, whole, 0 to MAX_IN_FLIGHT each and in all."""
    for v in values:
        if not math.isfinite(v) or v < 0 or v > MAX_IN_FLIGHT or v != int(v):
            raise ValueError(f"in-flight value {v!r} is not a request count")
    total = int(sum(values))
    if total > MAX_IN_FLIGHT:
        raise ValueError(f"in-flight total {total} is not a request count")
    return total


def worker_in_flight(text: str) -> int:
    """A Dynamo worker's in-flight requests: its `generate` endpoints' gauge, else its engine's running
    and waiting requests. ValueError (the reason, short) when the answer holds no readable count."""
    samples = _samples(text, (WORKER_IN_FLIGHT, *ENGINE_IN_FLIGHT))
    generate = [v for n, labels, v in samples if n == WORKER_IN_FLIGHT and labels.get("dynamo_endpoint") == "generate"]
    if generate:
        return _count(generate)
    engine = [v for n, _, v in samples if n in ENGINE_IN_FLIGHT]
    if engine:
        return _count(engine)
    raise ValueError("no in-flight request count in it")


def frontend_in_flight(text: str) -> int:
    """The Dynamo frontend's in-flight requests (all models); ValueError as for a worker. Its gauges are per
    model and appear with the first request: a frontend's answer (its own metric families are there) with no
    in-flight and no request sample at all has never relayed a request, so none is in flight."""
    samples = _samples(text, (FRONTEND_IN_FLIGHT, FRONTEND_REQUESTS))
    values = [v for name, _, v in samples if name == FRONTEND_IN_FLIGHT]
    if values:
        return _count(values)
    if not samples and (FRONTEND_FAMILY in text or text.startswith(FRONTEND_FAMILY[1:])):
        return 0
    raise ValueError("no in-flight request count in it")


@dataclass
class Drain:
    """One service's drain: the requests it held at the signal, how long until it held none, how it ended."""

    service: str
    node: int
    waited_for: int | None = None  # in flight when it was signalled (None: its /metrics could not say)
    seconds: float = 0.0
    outcome: str = "drained"  # drained | exited | idle | router gone | timed out | not running
    left: int | None = None  # still in flight when the wait ended (timed out)
    router: str | None = None  # behind an sglang-router: what its removal from the router came to
    name: str = ""  # the service's full (container) name, as the plan's `routed` keys it

    @property
    def out_of_router(self) -> bool:
        """Did the router take its removal (whether or not it still listed it when the drain ended)? A roll
        then puts it back."""
        return (self.router or "").startswith(("removed from the router", "the router still list"))

    def describe(self) -> str:
        """One line: `decode-r0 on node 3: 6 request(s) in flight, drained in 4.2s (exited)`."""
        where = f"{self.service} on node {self.node}"
        if self.outcome == "not running":
            return f"{where}: not running, nothing to drain"
        if self.outcome.startswith("node failed"):
            return f"{where}: not drained, {self.outcome}"
        count = "an unknown number of" if self.waited_for is None else str(self.waited_for)
        text = f"{where}: {self.router + '; ' if self.router else ''}{count} request(s) in flight"
        if self.outcome == "timed out":
            still = "an unknown number" if self.left is None else str(self.left)
            return text + f", drain_timeout reached after {self.seconds:.1f}s with {still} still in flight"
        how = {
            "exited": " (exited)",
            "idle": " (its own count unreadable; the frontend relays no request)",
            "router gone": " (its own count unreadable; its router does not answer: no request reaches it)",
        }
        return text + f", drained in {self.seconds:.1f}s" + how.get(self.outcome, "")
