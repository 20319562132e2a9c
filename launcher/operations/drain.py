"""Drain before a stop: the Dynamo workers are taken out of routing and their in-flight requests are
let finish, bounded by the file's `drain_timeout`, before anything is removed (see `launcher.plan.drain`
for what Dynamo does on SIGTERM and why the wait reads what it reads).

Per phase (prefill workers, then the others), every node at once: read each worker's in-flight count
from its /metrics (through the node's connection, bounded in size and time), SIGTERM its engine (it
deregisters), then poll until the count reads zero or the worker has exited, or the deadline. Last, the
frontend, still up, is given until the same deadline to finish the streams it is relaying.

Plain SGLang workers behind the plan's sglang-router are not signalled: each is removed from the router
through its API (through the router node's connection), then waited for the same way while it still
runs (its count, else the router's count of its requests); the stop that follows the drain ends it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from launcher.errors import LauncherError
from launcher.operations import locking
from launcher.operations.context import Target
from launcher.operations.nodes import by_node
from launcher.plan import drain as plan_drain
from launcher.plan import scale as plan_scale
from launcher.plan.drain import Drain
from launcher.plan.metrics import metrics_url
from launcher.plan.state import Container
from launcher.plan.types import Service
from launcher.runtime.base import parse_list
from launcher.runtime.lock import audit_script
from launcher.transport.errors import NodeError, describe
from launcher.transport.host import Host

POLL_SECONDS = 0.25
SCRAPE_SECONDS = 3.0  # one /metrics read, whole answer included
SCRIPT_SECONDS = 60.0
FRONTEND_TAIL_SECONDS = 5.0  # the frontend's last relayed tokens, after the workers drained
UNREADABLE_GRACE_SECONDS = 2.0  # a worker's count unreadable this long after its signal: ask the frontend


def drain(t: Target, told: Callable[[str], None], services: list[Service] | None = None) -> list[Drain]:
    """Drain every drained worker of the plan (or of `services`), phase by phase, all within drain_timeout;
    `told` hears each drain's line as it ends. A node that cannot be reached is reported in its drains' outcome."""
    deadline = time.monotonic() + t.plan.drain_timeout
    routers = plan_drain.routed(t.plan.services)
    phases = plan_drain.phases(t.plan) if services is None else plan_drain.order(services, set(routers))
    # Every worker's count as the drain begins: a decode worker's requests are waited for (it keeps
    # serving them) while the prefill workers drain, and are counted as waited for.
    everyone = by_node([s for phase in phases for s in phase])
    first = t.fleet.map(lambda h: {s.name: counted(t, h, s, deadline, routers) for s in everyone[h.node.index]},
                        everyone)  # fmt: skip
    counts: dict[str, int | None] = {k: v for r in first.succeeded.values() for k, v in r.items()}
    done: list[Drain] = []
    idle = FrontendIdle(t, deadline)
    stop = threading.Event()  # Ctrl-C: the nodes' drain loops end at their next poll
    for phase in phases:
        on = by_node(phase)
        try:
            results = t.fleet.map(
                lambda h, on=on: drain_node(t, h, on[h.node.index], deadline, counts, idle, routers, stop), on
            )
        except KeyboardInterrupt:
            # the pool's threads are joined when the process exits: left polling, they would hold the
            # interrupted command up to drain_timeout
            stop.set()
            raise
        for i, result in sorted(results.items()):
            if isinstance(result, Exception):
                result = [Drain(s.service, i, outcome=f"node failed: {describe(result)}", name=s.name) for s in on[i]]
            for d in result:
                told(d.describe())
            done += result
    if done:
        wait_for_frontend(t, deadline)
    return done


def drain_node(
    t: Target,
    host: Host,
    services: list[Service],
    deadline: float,
    counts: dict[str, int | None],
    frontend_idle: FrontendIdle | None = None,
    routers: dict[str, tuple[Service, str]] | None = None,
    stop: threading.Event | None = None,
) -> list[Drain]:
    """One node's workers of one phase: count, signal (or take out of its router), wait (see the module's
    docstring). `counts`: each worker's in-flight requests when the drain began (the larger of that and the
    count now is reported). A worker whose count cannot be read is done once `frontend_idle` says the
    frontend relays no request. `routers`: the workers behind an sglang-router (plan.drain.routed)."""
    routers = routers or {}
    running = running_names(t, host)
    drains = {s.name: Drain(s.service, host.node.index, name=s.name) for s in services}
    live = [s for s in services if s.name in running]
    for s in services:
        if s.name not in running:
            drains[s.name].outcome = "not running"
    for s in live:
        known = [c for c in (counts.get(s.name), counted(t, host, s, deadline, routers)) if c is not None]
        drains[s.name].waited_for = max(known) if known else None
    started = time.monotonic()
    for s in [s for s in live if s.name in routers]:
        host_of_router = t.fleet.host(routers[s.name][0].node.index)
        drains[s.name].router = unroute(host_of_router, *routers[s.name], deadline, stop)
    if stopped(stop):  # Ctrl-C came while the workers left the router: none is signalled after it
        for s in live:
            drains[s.name].outcome = "interrupted"
        return list(drains.values())
    signalled = [s.name for s in live if s.name not in routers]
    if signalled:
        host.run(t.runtime.term_script(t.plan, signalled), timeout=SCRIPT_SECONDS)
    pending = list(live)
    while pending:
        for s in list(pending):
            count = counted(t, host, s, deadline, routers, drains[s.name])
            drains[s.name].left = count
            if count == 0:
                finish(drains[s.name], pending, s, "drained", started)
            elif unreadable_but_idle(count, started, frontend_idle):
                finish(drains[s.name], pending, s, "idle", started)
            elif count is None and s.name in routers and router_gone(t, routers[s.name][0], started, deadline):
                finish(drains[s.name], pending, s, "router gone", started)
        if pending:
            running = running_names(t, host)
            for s in [s for s in pending if s.name not in running]:
                finish(drains[s.name], pending, s, "exited", started)
        if not pending or time.monotonic() >= deadline or stopped(stop):
            break
        time.sleep(POLL_SECONDS)
    for s in pending:
        drains[s.name].outcome = "interrupted" if stopped(stop) else "timed out"
        drains[s.name].seconds = time.monotonic() - started
    return list(drains.values())


def stopped(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def unroute(host: Host, router: Service, url: str, deadline: float, stop: threading.Event | None = None) -> str:
    """Take the worker at URL out of the sglang-router's routing (its API, see plan.drain): look its id up,
    DELETE it, then until the router lists it no more (within the deadline). Returns what came of it, one
    line (Drain.out_of_router reads it); a failure is said and the drain goes on (the worker's requests are
    still waited for)."""
    api = plan_drain.router_api(router)
    try:
        worker = router_listed(host, router, url, deadline)
        if worker is None:
            return "not in the router's workers (nothing to remove)"
        status, _ = host.http("DELETE", f"{api}/workers/{worker}", timeout=scrape_seconds(deadline),
                              limit=plan_drain.MAX_ROUTER_ANSWER, headers=plan_drain.router_auth(router))  # fmt: skip
        if status not in (200, 202, 204, 404):  # 404: gone already
            return f"not removed from the router (it answered HTTP {status})"
        while router_listed(host, router, url, deadline) is not None:
            if time.monotonic() >= deadline:
                return "the router still lists it at drain_timeout"
            if stopped(stop):
                return "the router still listed it when the drain was interrupted"
            time.sleep(POLL_SECONDS)
        return "removed from the router"
    except (OSError, ValueError, NodeError) as exc:
        return f"not removed from the router ({describe(exc).splitlines()[0][:200]})"


def reroute(host: Host, router: Service, url: str, deadline: float) -> str:
    """Put the worker at URL back into the sglang-router's routing once its new spec serves (a roll took it
    out first): `POST /workers` with the type and bootstrap port the router was started with, then until the
    router lists it, a failed exchange tried again, all within the deadline. Returns what came of it, one line
    starting "routed" when it is."""
    spec = plan_drain.router_worker_spec(router, url)
    if spec is None:
        return f"not routed again: the router's argv does not name {url}"
    while True:
        try:
            return _add_back(host, router, url, spec, deadline)
        except (OSError, ValueError, NodeError) as exc:  # a busy or restarting router: again, until the deadline
            if time.monotonic() + POLL_SECONDS >= deadline:
                return f"not routed again ({describe(exc).splitlines()[0][:200]})"
            time.sleep(POLL_SECONDS)


def _add_back(host: Host, router: Service, url: str, spec: dict[str, object], deadline: float) -> str:
    if router_listed(host, router, url, deadline) is not None:
        return "routed: the router still lists it"
    api = plan_drain.router_api(router)
    status, _ = host.http("POST", f"{api}/workers", spec, timeout=scrape_seconds(deadline),
                          limit=plan_drain.MAX_ROUTER_ANSWER, headers=plan_drain.router_auth(router))  # fmt: skip
    if status not in (200, 201, 202):
        return f"not routed again (the router answered HTTP {status})"
    while router_listed(host, router, url, deadline) is None:
        if time.monotonic() >= deadline:
            return "not routed again: the router does not list it within the deadline"
        time.sleep(POLL_SECONDS)
    return "routed again (added back to the router)"


def router_listed(host: Host, router: Service, url: str, deadline: float) -> str | None:
    """The router's id of the worker at URL (None: not listed); ValueError when its answer is not a listing."""
    status, body = host.http(
        "GET",
        f"{plan_drain.router_api(router)}/workers",
        timeout=scrape_seconds(deadline),
        limit=plan_drain.MAX_ROUTER_ANSWER,
        headers=plan_drain.router_auth(router),
    )
    if status != 200:
        raise ValueError(f"GET /workers answered HTTP {status}")
    return plan_drain.router_worker_id(body, url)


def scrape_seconds(deadline: float) -> float:
    """One request's time: SCRAPE_SECONDS, never past the deadline (at least a tenth of a second)."""
    return max(0.1, min(SCRAPE_SECONDS, deadline - time.monotonic()))


ROUTER_COUNTED = "; counted by the router (the worker's /metrics is off)"


def router_count(host: Host, router: Service, url: str, deadline: float, d: Drain | None = None) -> int | None:
    """The router's own count of its requests on the worker at URL (HOST: the router's node), for a worker
    whose /metrics is off (no --enable-metrics); the drain's line (D's) says so."""
    count = in_flight(host, router, deadline, lambda text: plan_drain.router_in_flight(text, url))
    if d is not None and count is not None and not (d.router or "").endswith(ROUTER_COUNTED):
        d.router = f"{d.router or ''}{ROUTER_COUNTED}"
    return count


def counted(
    t: Target, host: Host, s: Service, deadline: float, routers: dict[str, tuple[Service, str]], d: Drain | None = None
) -> int | None:
    """The worker's in-flight requests: its own /metrics, else (behind an sglang-router) the router's count
    of them (without it, the count before the removal was never read: "an unknown number" while the router
    counted them)."""
    count = in_flight(host, s, deadline)
    if count is None and s.name in routers:
        router, url = routers[s.name]
        count = router_count(t.fleet.host(router.node.index), router, url, deadline, d)
    return count


def router_gone(t: Target, router: Service, started: float, deadline: float) -> bool:
    """Is the router gone (its port refuses), a little after the drain's start? Every request to a worker
    behind it passes through it: none reaches a worker whose router is gone (without this, `down` of a
    deployment whose router died waited out drain_timeout for workers whose own count cannot be read). A
    router slow to answer, or answering garbage, is still there: its streams may still be relaying, so
    it is not taken for gone (the worker's stop would cut them)."""
    if time.monotonic() - started < UNREADABLE_GRACE_SECONDS:
        return False
    host = t.fleet.host(router.node.index)
    try:
        host.http("GET", f"{plan_drain.router_api(router)}/health", timeout=scrape_seconds(deadline), limit=4096)
    except ConnectionRefusedError:  # nothing listens on its port (through SSH too: the channel is refused)
        return True
    except (OSError, ValueError, NodeError):  # slow, garbage, or its node not reached: not known to be gone
        return False
    return False


def unreadable_but_idle(count: int | None, started: float, frontend_idle: FrontendIdle | None) -> bool:
    """A worker whose count has been unreadable since a little after its signal, while the frontend relays
    no request (the frontend is read only then: at most once a second)."""
    if count is not None or frontend_idle is None or time.monotonic() - started < UNREADABLE_GRACE_SECONDS:
        return False
    return frontend_idle()


def finish(d: Drain, pending: list[Service], s: Service, outcome: str, started: float) -> None:
    d.outcome, d.seconds, d.left = outcome, time.monotonic() - started, 0
    pending.remove(s)


def running_names(t: Target, host: Host) -> set[str]:
    result = host.run(t.runtime.list_script(t.plan), timeout=SCRIPT_SECONDS)
    if not result.ok:
        raise RuntimeError(f"cannot list the services: {result.why()}")
    return {c.name for c in parse_list(host.node.index, result.stdout) if c.running}


def in_flight(host: Host, s: Service, deadline: float, read=plan_drain.worker_in_flight) -> int | None:
    """The service's in-flight requests from its /metrics; None when it has none, does not answer, or its
    answer is not a count a worker could hold (too big, garbage, negative, not finite)."""
    url = metrics_url(s)
    seconds = min(SCRAPE_SECONDS, deadline - time.monotonic())
    if url is None or seconds <= 0:
        return None
    try:
        status, body = host.http("GET", url, timeout=seconds, limit=plan_drain.MAX_METRICS_BYTES)
        if status != 200 or not isinstance(body, str):
            return None
        return read(body)
    except (OSError, ValueError, NodeError):  # not answering, or not a count: unknown, never the drain's end
        return None


class FrontendIdle:
    """Does the Dynamo frontend relay no request (its in-flight gauge reads zero)? Read at most once a
    second, whichever node's drain asks. Every request of a Dynamo deployment passes through the frontend,
    so a worker whose own count cannot be read (its /metrics closed at the signal, or never answered: one
    that never registered, or whose group lost a rank and that ignores SIGTERM) holds none once the
    frontend relays none; without this, `down` of a half-broken deployment waited out drain_timeout."""

    def __init__(self, t: Target, deadline: float):
        frontend = next((s for s in t.plan.services if s.role == "frontend"), None)
        self.frontend = frontend if t.plan.has_dynamo_frontend else None
        self.host = t.fleet.host(frontend.node.index) if self.frontend else None
        self.deadline = deadline
        self.lock = threading.Lock()
        self.read_at: float | None = None
        self.idle = False

    def __call__(self) -> bool:
        if self.frontend is None or self.host is None:
            return False
        with self.lock:
            if self.read_at is None or time.monotonic() - self.read_at >= 1.0:
                self.idle = in_flight(self.host, self.frontend, self.deadline, plan_drain.frontend_in_flight) == 0
                self.read_at = time.monotonic()
            return self.idle


def wait_for_frontend(t: Target, deadline: float) -> None:
    """Until the frontend relays no request (its in-flight gauge reads zero), or it does not answer, for
    FRONTEND_TAIL_SECONDS at most (and never past the deadline): a worker that has sent its last token may
    not have reached the client through it yet. (Under constant load new requests keep arriving and fail
    at once, no worker being left: the gauge may never read zero, hence the short bound.)"""
    frontend = next((s for s in t.plan.services if s.role == "frontend"), None)
    if frontend is None:
        return
    host = t.fleet.host(frontend.node.index)
    deadline = min(deadline, time.monotonic() + FRONTEND_TAIL_SECONDS)
    while time.monotonic() < deadline:
        if in_flight(host, frontend, deadline, plan_drain.frontend_in_flight) in (0, None):
            return
        time.sleep(POLL_SECONDS)


def listing(t: Target) -> list[Container]:
    """What the nodes that answer list (a node whose list is unreadable: its workers are not drained)."""
    done, _ = t.fleet.run(t.runtime.list_script(t.plan), timeout=SCRIPT_SECONDS).scripts()
    containers = []
    for i, r in sorted(done.items()):
        with contextlib.suppress(LauncherError):
            containers += parse_list(i, r.stdout)
    return containers


def strays(t: Target, containers: list[Container] | None = None) -> list[Service]:
    """The Dynamo workers running that the plan no longer has (a replica scaled in: `replicas:` lowered),
    as the services they were started as; `containers`: what the nodes listed (None: list them now)."""
    if containers is None:
        containers = listing(t)
    return plan_scale.strays(t.loaded, t.plan, [c for c in containers if c.running])


def drain_before_removal(t: Target, containers: list[Container], told: Callable[[str], None]) -> None:
    """Before `up` removes containers, the Dynamo workers among them drained first (as `down` drains, bounded
    by drain_timeout), each drain said and written to the audit log with why: those the plan no longer has
    (a replica scaled in) and those it recreates whose group still serves (a role of one replica changed
    with --allow-downtime, etcd or NATS recreated). A recreated worker behind an sglang-router is not
    taken out of it (the router finds the new one at the same address). A failed drain is said and the
    removal goes on (the drain is a courtesy to the requests, never what keeps a worker)."""
    gone = strays(t, containers)
    recreated = plan_drain.recreated(t.plan, containers)
    if not gone and not recreated:
        return
    timeout = t.plan.drain_timeout
    if gone:
        told(f"draining {len(gone)} worker(s) the file no longer has before removing them, up to {timeout:g}s")
    if recreated:
        told(f"draining {len(recreated)} worker(s) before recreating them, up to {timeout:g}s")
    why = {s.name: "recreate" for s in recreated} | {s.name: "scale-in" for s in gone}
    drain_audited(t, gone + recreated, told, lambda d: why.get(d.name, "recreate"), "removing")


def drain_audited(
    t: Target, services: list[Service], told: Callable[[str], None], why: Callable[[Drain], str], then: str
) -> None:
    """Drain SERVICES before a stop other than `down`'s, each drain said and written to the audit log with
    WHY it was drained; a failed drain is said, and what comes THEN (`removing`, `moving`) goes on: the drain
    is a courtesy to the requests, never what keeps a worker."""
    timeout = t.plan.drain_timeout
    try:
        drains = drain(t, lambda line: told(f"drain: {line}"), services)
    except Exception as exc:
        told(f"the drain failed ({describe(exc)}); {then} anyway")
        return
    audit(t, [f"drain {d.describe()} ({why(d)}, drain_timeout {timeout:g}s)" for d in drains])


def audit(t: Target, lines: list[str]) -> None:
    """Lines of the head node's audit log, in one round trip (a failure to write them is not the drain's)."""
    site = locking.Site.of(t)
    script = "; ".join(audit_script(site.state_dir, site.deployment, site.redact(line)) for line in lines)
    if script:
        with contextlib.suppress(Exception):
            locking.on_head(site, script)
