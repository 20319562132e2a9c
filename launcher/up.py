"""`launcher up`: start everything in order, wait until the service really answers, converge on re-runs."""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field

from launcher import diff, lock, readiness, runtime
from launcher.errors import LauncherError
from launcher.model import Plan, Service
from launcher.progress import Progress, Row
from launcher.runtime import Container
from launcher.transport import Completed, Fleet, MapInterrupted, NodeError

POLL_INTERVAL = 1.0
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LOG_LINES_ON_FAILURE = 40


class NodeFailures(LauncherError):
    """Failures on several nodes, reported together: one line per node."""

    exit_code = 1

    def __init__(self, what: str, failures: dict[int, str], plan: Plan):
        lines = [f"{what} on {len(failures)} of {len(plan.nodes)} node(s):"]
        for index in sorted(failures):
            lines.append(f"  {plan.nodes[index].label}: {failures[index]}")
        super().__init__("\n".join(lines))


class ServiceFailed(LauncherError):
    exit_code = 1


class Interrupted(LauncherError):
    """Ctrl-C (or SIGTERM) during `up`: say what already runs and how to remove it."""

    exit_code = 130


def describe(exc: Exception) -> str:
    if isinstance(exc, NodeError):
        return f"{exc.kind}: {exc.detail}"
    return f"{type(exc).__name__}: {exc}"


def list_services(
    plan: Plan, fleet: Fleet, nodes: list[int] | None = None, timeout: float | None = None
) -> tuple[dict[tuple[int, str], Container], dict[int, str]]:
    """What runs on the nodes (all, or `nodes`), by (node, name); and the nodes that could not be
    listed, with why. One round trip per node."""
    rt = runtime.for_plan(plan)
    found: dict[tuple[int, str], Container] = {}
    unreachable: dict[int, str] = {}
    for i, r in fleet.map(lambda h: h.run(rt.list_script(plan), timeout=timeout), nodes).items():
        try:
            if isinstance(r, Exception) or not r.ok:
                raise LauncherError(describe(r) if isinstance(r, Exception) else r.stderr.strip())
            found.update({(i, c.name): c for c in runtime.parse_list(i, r.stdout)})
        except LauncherError as exc:
            unreachable[i] = str(exc)
    return found, unreachable


def head_index(plan: Plan) -> int:
    """Where the lock and the audit log live: the node running etcd (the head), else node 0."""
    for s in plan.services:
        if s.role == "etcd":
            return s.node.index
    return plan.nodes[0].index


LIST_MARK = runtime.LIST_MARK


def check_nodes(plan: Plan, fleet: Fleet, indices: list[int] | None = None) -> list[Container]:
    """Every node reachable over SSH and its container engine answering, or nothing starts.

    The same round trip lists the deployment's containers, which `up` compares with the plan."""
    rt = runtime.for_plan(plan)
    script = f"echo {LIST_MARK}; {rt.check_and_list_script(plan)}"
    results = fleet.map(lambda h: h.run(script, timeout=60), indices)
    failures, found = {}, []
    for i, r in results.items():
        if isinstance(r, Exception):
            failures[i] = describe(r)
        elif r.exit_code == 97 or LIST_MARK not in r.stdout:
            failures[i] = f"{rt.name} not answering: " + ((r.stderr or r.stdout).strip().splitlines() or ["?"])[-1]
        elif not r.ok:
            failures[i] = "cannot list containers: " + r.stderr.strip()
        else:
            found += runtime.parse_list(i, r.stdout.split(LIST_MARK, 1)[1])
    if failures:
        raise NodeFailures("cannot start: nodes not ready", failures, plan)
    return found


def by_node(services: list[Service]) -> dict[int, list[Service]]:
    out: dict[int, list[Service]] = {}
    for s in services:
        out.setdefault(s.node.index, []).append(s)
    return out


# Seconds a Ctrl-C gives the start scripts already sent (docker run -d returns in about a second).
START_GRACE = 20.0


class StartInterrupted(KeyboardInterrupt):
    def __init__(self, found: list[Container], pending: list[int]):
        super().__init__()
        self.found = found
        self.pending = pending


def start(
    plan: Plan, fleet: Fleet, services: list[Service], progress: Progress, known: list[Container] | None = None
) -> list[Container]:
    """Start services: one script per node, all nodes at once. Returns the state of what was started
    (the same round trip reports it: often no poll is needed afterwards)."""
    if not services:
        return []
    groups = by_node(services)
    rt = runtime.for_plan(plan)
    existing = None if known is None else {c.name for c in known}

    def go(host):
        script, stdin = rt.start_script(plan, groups[host.node.index], existing)
        return host.run(script, stdin=stdin, timeout=300)

    try:
        results = fleet.map(go, groups, finish_on_interrupt=START_GRACE)
    except MapInterrupted as stopped:
        # Report what the start scripts that finished say runs; the rest may still appear.
        found = [
            c
            for i, r in stopped.results.items()
            if isinstance(r, Completed) and LIST_MARK in r.stdout
            for c in runtime.parse_list(i, r.stdout.split(LIST_MARK, 1)[1])
        ]
        raise StartInterrupted(found, stopped.pending) from None
    failures, found = {}, []
    for i, r in results.items():
        if isinstance(r, Exception):
            failures[i] = describe(r)
        elif not r.ok or LIST_MARK not in r.stdout:
            failures[i] = f"{rt.name} run failed: " + (r.stderr.strip() or r.stdout.strip())
        else:
            found += runtime.parse_list(i, r.stdout.split(LIST_MARK, 1)[1])
    if failures:
        raise NodeFailures("failed to start containers", failures, plan)
    progress.log(
        f"started {len(services)} container(s) on {len(groups)} node(s): "
        + ", ".join(sorted({s.service.rsplit("-r", 1)[0] for s in services}))
    )
    return found


def remove(plan: Plan, fleet: Fleet, containers: list[Container]) -> None:
    groups: dict[int, list[str]] = {}
    for c in containers:
        groups.setdefault(c.node_index, []).append(c.name)
    results = fleet.map(lambda h: h.run(runtime.for_plan(plan).remove_script(plan, groups[h.node.index])), groups)
    failures = {
        i: describe(r) if isinstance(r, Exception) else r.stderr.strip()
        for i, r in results.items()
        if isinstance(r, Exception) or not r.ok
    }
    if failures:
        raise NodeFailures("failed to remove old containers", failures, plan)


@dataclass
class Waiter:
    """Polls the nodes until the given services are ready; fails fast when one exits."""

    plan: Plan
    fleet: Fleet
    progress: Progress
    services: list[Service]
    check_frontend: bool = False
    started: float = field(default_factory=time.monotonic)
    passed: set[str] = field(default_factory=set)
    last_lines: dict[str, str] = field(default_factory=dict)
    frontend_note: str = ""
    answers: dict[str, str] = field(default_factory=dict)  # service -> what its probe last answered
    running_only: bool = False  # ready = the container runs (up --no-wait)

    def run(self) -> None:
        self.progress.start()
        try:
            while True:
                tick = time.monotonic()
                if self._tick():
                    return
                time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - tick)))
        finally:
            self.progress.stop()

    def _tick(self) -> bool:
        plan, fleet = self.plan, self.fleet
        nodes = by_node(self.services)
        names = {i: [s.name for s in ss] for i, ss in nodes.items()} if self.progress.wants_last_lines else {}
        # Bounded: a node whose link is cut must fail the wait, not hang it.
        results = fleet.map(
            lambda h: h.run(runtime.for_plan(plan).poll_script(plan, names.get(h.node.index, [])), timeout=20), nodes
        )
        containers: dict[tuple[int, str], Container] = {}
        failures = {}
        for i, r in results.items():
            if isinstance(r, Exception) or not r.ok:
                failures[i] = describe(r) if isinstance(r, Exception) else r.stderr.strip()
                continue
            found, last = runtime.parse_poll(i, r.stdout)
            containers.update({(c.node_index, c.name): c for c in found})
            self.last_lines.update(last)
        if failures:
            raise NodeFailures("lost contact while waiting", failures, plan)
        for s in self.services:
            c = containers.get((s.node.index, s.name))
            if c is None or c.state in ("exited", "dead") or (c.state != "running" and c.restarts):
                self._fail(s, c)
        self._probe()
        frontend_ok = self._frontend() if self.check_frontend else True
        elapsed = time.monotonic() - self.started
        self.progress.update(self._rows(containers, elapsed))
        if frontend_ok and all(s.service in self.passed for s in self.services):
            return True
        for s in self.services:
            if s.service not in self.passed and elapsed > s.timeout:
                answer = f" (last answer: {self.answers[s.service]})" if s.service in self.answers else ""
                probe = readiness.probe_text(s.probe)
                raise ServiceFailed(
                    f"{s.tag} ({s.node.address}) not ready after {s.timeout:.0f}s: its probe {probe}"
                    f" has not passed{answer}. Look with `launcher logs --node {s.node.index}`; raise its timeout"
                    f" if it is just slow; `launcher down` removes everything."
                )
        if self.check_frontend and not frontend_ok:
            limit = max((s.timeout for s in self.services if s.group), default=300)
            if elapsed > limit:
                raise ServiceFailed(f"the frontend never saw every worker after {limit:.0f}s: {self.frontend_note}")
        return False

    def _probe(self) -> None:
        todo = [s for s in self.services if s.service not in self.passed]
        for s in todo:
            if s.probe.kind == "running" or self.running_only:
                self.passed.add(s.service)
        self._probe_logs([s for s in todo if s.probe.kind == "log" and not self.running_only])
        http = [s for s in todo if s.probe.kind == "http"]
        if not http:
            return
        nodes = by_node(http)

        def check(host):
            ok, answers = [], {}
            for s in nodes[host.node.index]:
                try:
                    status, body = host.http("GET", s.probe.url, timeout=3)
                except (OSError, ConnectionError) as exc:
                    answers[s.service] = f"no answer: {exc}"
                    continue
                if readiness.probe_passes(s.probe, status, body):
                    ok.append(s.service)
                else:
                    answers[s.service] = readiness.describe_answer(status, body)
            return ok, answers

        for r in self.fleet.map(check, nodes).values():
            if isinstance(r, tuple):
                self.passed.update(r[0])
                self.answers.update(r[1])

    def _probe_logs(self, services: list[Service]) -> None:
        """Log-line probes (SGLang before 0.5.1 has no trustworthy /health): grep each log, one script per node."""
        if not services:
            return
        nodes = by_node(services)
        rt = runtime.for_plan(self.plan)

        def script(index: int) -> str:
            return "; ".join(
                f"if {{ {rt.logs_script(self.plan, s.name)} ; }} | grep -qF -- {shlex.quote(s.probe.expect['line'])};"
                f" then echo {shlex.quote(s.service)}; fi"
                for s in nodes[index]
            )

        results = self.fleet.map(lambda h: h.run(script(h.node.index), timeout=30), nodes)
        for i, r in results.items():
            if isinstance(r, Exception) or not r.ok:
                continue  # a lost node is reported by the next poll
            self.passed.update(name for name in r.stdout.split() if name in {s.service for s in nodes[i]})

    def _frontend(self) -> bool:
        plan = self.plan
        frontend = next((s for s in plan.services if s.role == "frontend"), None)
        if frontend is None or plan.endpoint is None:
            return True
        host = self.fleet.host(frontend.node.index)
        try:
            status, health = host.http("GET", plan.endpoint + "/health", timeout=3)
            counts = readiness.count_instances(health)
            missing = readiness.missing_instances(readiness.expected_instances(plan), counts)
            if missing:
                self.frontend_note = "waiting for " + ", ".join(
                    f"{n} more `{c}` instance(s)" for c, n in missing.items()
                )
                return False
            status, models = host.http("GET", plan.endpoint + "/v1/models", timeout=3)
            if not readiness.model_listed(models, plan.model_name):
                self.frontend_note = f"/v1/models does not list {plan.model_name or 'a model'} yet"
                return False
        except (OSError, ConnectionError) as exc:
            self.frontend_note = f"frontend not answering: {exc}"
            return False
        self.frontend_note = "all workers registered"
        return True

    def _rows(self, containers: dict[tuple[int, str], Container], elapsed: float) -> list[Row]:
        rows = []
        for s in self.services:
            c = containers.get((s.node.index, s.name))
            state = "ready" if s.service in self.passed else (c.state if c else "missing")
            if state == "running" and self.answers.get(s.service, "").startswith("HTTP"):
                state += f", probe: {self.answers[s.service]}"  # e.g. the router's "not ready" and why
            rows.append(Row(s.node.name, s.service, state, elapsed, self.last_lines.get(s.name, "")))
        if self.check_frontend:
            rows.append(
                Row(
                    "-",
                    "frontend registry",
                    "ready" if self.frontend_note == "all workers registered" else self.frontend_note or "waiting",
                    elapsed,
                )
            )
        return rows

    def _fail(self, s: Service, c: Container | None) -> None:
        host = self.fleet.host(s.node.index)
        try:
            logs = host.run(
                runtime.for_plan(self.plan).logs_script(self.plan, s.name, tail=LOG_LINES_ON_FAILURE), timeout=30
            ).stdout
        except Exception as exc:  # the node itself may be the problem
            logs = f"(no logs: {describe(exc)})"
        logs = ANSI.sub("", logs)
        what = "disappeared" if c is None else f"{c.state} with exit code {c.exit_code}"
        rank = f" rank {s.rank} of group {s.group}" if s.rank is not None else ""
        raise ServiceFailed(
            f"{s.role}{rank} on {s.node.label} {what} (container {s.name}).\n"
            f"--- last {LOG_LINES_ON_FAILURE} log lines of {s.name} ---\n{logs.rstrip()}\n---\n"
            f"The other containers are left running for inspection: `launcher logs --node {s.node.index}`,"
            f" `launcher status`. Remove everything with `launcher down`."
        )


def smoke_test(plan: Plan, fleet: Fleet, attempts: int = 10) -> str:
    """One short chat completion through the endpoint; retried briefly (routing may lag registration)."""
    frontend = plan.entry
    host = fleet.host(frontend.node.index)
    last = ""
    for _ in range(attempts):
        try:
            status, body = host.http(
                "POST", plan.endpoint + "/v1/chat/completions", readiness.chat_request(plan.model_name), timeout=60
            )
            if status == 200:
                text = readiness.answer_text(body)
                if not text.strip():
                    # A 200 with no text is what clients count as a failed request (AIPerf does).
                    raise ServiceFailed(
                        f"smoke test failed: {plan.endpoint} answered 200 but with no text: {str(body)[:300]}"
                    )
                return f"200 OK: {text.strip()[:60]!r}"
            last = f"HTTP {status}: {str(body)[:300]}"
        except (OSError, ConnectionError) as exc:
            last = str(exc)
        time.sleep(1)
    raise ServiceFailed(f"smoke test failed: a chat completion through {plan.endpoint} answered {last}")


def up(plan: Plan, fleet: Fleet, progress: Progress, command: str = "launcher up", wait: bool = True) -> Changes:
    """Converge the nodes on the plan. With wait=False, return once every container runs (no readiness)."""
    progress.log(f"checking {len(plan.nodes)} node(s)")
    current = check_nodes(plan, fleet)
    head = fleet.host(head_index(plan))
    held = lock.acquire(
        head,
        plan.state_dir,
        plan.deployment,
        command,
        audit_action=f"up started ({command})",
        then=lock.clear_down_script(plan.state_dir, plan.deployment),
    )
    outcome = "up failed"
    try:
        changes = diff.compute(plan, current)
        if changes.unchanged:
            progress.log(f"unchanged: all {len(changes.keep)} service(s) already run as planned")
        else:
            for s in changes.create:
                progress.log(f"will (re)create {s.tag}: {changes.reasons.get(s.service)}")
            if changes.remove:
                progress.log(f"removing {len(changes.remove)} old container(s)")
                remove(plan, fleet, changes.remove)
        create = {s.service for s in changes.create}
        phases = [
            [s for s in plan.services if s.role in ("etcd", "nats")],
            [s for s in plan.services if s.role == "frontend"],
            # The router last, with the workers: it is ready only once they are.
            [s for s in plan.services if s.group is not None or s.role == "router"],
        ]
        started: list[Container] = []
        try:
            _run_phases(plan, fleet, progress, phases, create, current, changes, started, wait)
        except KeyboardInterrupt as exc:
            unsure = ""
            if isinstance(exc, StartInterrupted):
                started += exc.found
                if exc.pending:
                    nodes = ", ".join(str(i) for i in exc.pending)
                    unsure = f" Start scripts on node(s) {nodes} had not answered: services there may start still."
            running = sorted({(c.node_index, c.name) for c in started})
            where = ", ".join(f"{name} on node {i}" for i, name in running) or "nothing yet"
            raise Interrupted(
                f"interrupted: up stopped. Started so far and left running: {where}.{unsure} "
                f"`launcher status` shows them; `launcher down -c {plan.file}` removes everything."
            ) from None
        outcome = "up done: " + ("unchanged" if changes.unchanged else f"{len(changes.create)} (re)created")
        return changes
    finally:
        try:
            lock.release(head, plan.state_dir, plan.deployment, held, audit_action=outcome)
        except Exception:
            pass


def _run_phases(plan, fleet, progress, phases, create, current, changes, started, wait) -> None:
    """etcd+NATS, then the frontend, then every group; `started` grows as containers start."""
    for i, phase in enumerate(phases):
        # Old containers were removed above: only names still on a node need a `docker rm` first.
        kept = [c for c in current if c not in changes.remove]
        started += start(plan, fleet, [s for s in phase if s.service in create], progress, known=kept)
        if i < 2 and phase and wait:
            Waiter(plan, fleet, progress, phase).run()
    if wait:
        Waiter(plan, fleet, progress, plan.services, check_frontend=plan.has_dynamo_frontend).run()
        if plan.endpoint:
            progress.log("smoke test: " + smoke_test(plan, fleet))
    elif not all_running(plan, current, started):
        Waiter(plan, fleet, progress, plan.services, running_only=True).run()


def all_running(plan: Plan, before: list[Container], started: list[Container]) -> bool:
    """Does every planned service run, judging by what the nodes last reported (no extra round trip)?"""
    latest = {(c.node_index, c.name): c for c in before}
    latest.update({(c.node_index, c.name): c for c in started})
    return all((c := latest.get((s.node.index, s.name))) is not None and c.running for s in plan.services)


Changes = diff.Changes
