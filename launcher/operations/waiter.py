"""Waiting until services are ready: poll every node once a second, fail fast when one exits (with
its last log lines), probe what runs, and check the endpoint's registry; give up past each timeout."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from launcher.errors import LauncherError
from launcher.operations.context import Target
from launcher.operations.health import EndpointState, endpoint_state, probe_http
from launcher.operations.nodes import NodeFailures, by_node
from launcher.output.progress import Progress, Row
from launcher.plan import readiness
from launcher.plan.state import Container
from launcher.plan.types import Service
from launcher.runtime.base import parse_poll
from launcher.runtime.shell import q
from launcher.transport.errors import describe

POLL_INTERVAL = 1.0
POLL_TIMEOUT = 20.0  # a node whose link is cut must fail the wait, not hang it
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LOG_LINES_ON_FAILURE = 40


class ServiceFailed(LauncherError):
    exit_code = 1


@dataclass
class Waiter:
    """Polls the nodes until the given services are ready; fails fast when one exits."""

    target: Target
    progress: Progress
    services: list[Service]
    check_endpoint: bool = False  # also wait for the frontend to list every worker
    running_only: bool = False  # ready = the container runs (up --no-wait)
    started: float = field(default_factory=time.monotonic)
    passed: set[str] = field(default_factory=set)  # service names whose probe passed
    answers: dict[str, str] = field(default_factory=dict)  # service name -> what its probe last answered
    last_lines: dict[str, str] = field(default_factory=dict)
    endpoint: EndpointState | None = None  # the endpoint's state at the last check

    def run(self) -> None:
        self.progress.start()
        try:
            while not self._tick():
                time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - self._tick_started)))
        finally:
            self.progress.stop()

    def _tick(self) -> bool:
        self._tick_started = time.monotonic()
        containers = self._poll()
        for s in self.services:
            c = containers.get((s.node.index, s.name))
            if c is None or c.state in ("exited", "dead") or (c.state != "running" and c.restarts):
                self._fail(s, c)
        self._probe()
        endpoint_ok = self._endpoint_ready() if self.check_endpoint else True
        elapsed = time.monotonic() - self.started
        self.progress.update(self._rows(containers, elapsed))
        if endpoint_ok and all(s.name in self.passed for s in self.services):
            return True
        self._give_up_after_timeouts(elapsed, endpoint_ok)
        return False

    def _poll(self) -> dict[tuple[int, str], Container]:
        """One round trip per node: its services' state (and the last log line of each, live view)."""
        plan = self.target.plan
        nodes = by_node(self.services)
        names = {i: [s.name for s in ss] for i, ss in nodes.items()} if self.progress.wants_last_lines else {}
        results = self.target.fleet.run(
            lambda h: self.target.runtime.poll_script(plan, names.get(h.node.index, [])), nodes, timeout=POLL_TIMEOUT
        )
        done, failures = results.scripts()
        if failures:
            raise NodeFailures("lost contact while waiting", failures, plan)
        containers: dict[tuple[int, str], Container] = {}
        for i, r in done.items():
            found, last = parse_poll(i, r.stdout)
            containers.update({(c.node_index, c.name): c for c in found})
            self.last_lines.update(last)
        return containers

    def _give_up_after_timeouts(self, elapsed: float, endpoint_ok: bool) -> None:
        for s in self.services:
            if s.name not in self.passed and elapsed > s.timeout:
                answer = f" (last answer: {self.answers[s.name]})" if s.name in self.answers else ""
                raise ServiceFailed(
                    f"{s.tag} ({s.node.address}) not ready after {s.timeout:.0f}s: its probe"
                    f" {readiness.probe_text(s.probe)} has not passed{answer}. Look with `launcher logs --node"
                    f" {s.node.index}`; raise its timeout if it is just slow; `launcher down` removes everything."
                )
        if self.check_endpoint and not endpoint_ok:
            limit = max((s.timeout for s in self.services if s.group), default=300)
            if elapsed > limit:
                note = self.endpoint.note if self.endpoint else "no answer"
                raise ServiceFailed(f"the frontend never saw every worker after {limit:.0f}s: {note}")

    def _probe(self) -> None:
        todo = [s for s in self.services if s.name not in self.passed]
        for s in todo:
            if s.probe.kind == "running" or self.running_only:
                self.passed.add(s.name)
        if self.running_only:
            return
        self._probe_logs([s for s in todo if s.probe.kind == "log"])
        for name, answer in probe_http(self.target, [s for s in todo if s.probe.kind == "http"]).items():
            if answer.passed:
                self.passed.add(name)
            else:
                self.answers[name] = answer.text

    def _probe_logs(self, services: list[Service]) -> None:
        """Log-line probes (SGLang before 0.5.1 has no trustworthy /health): grep each log, one script per node."""
        if not services:
            return
        nodes = by_node(services)
        plan, rt = self.target.plan, self.target.runtime

        def script(index: int) -> str:
            return "; ".join(
                f"if {{ {rt.logs_script(plan, s.name)} ; }} | grep -qF -- {q(s.probe.expect['line'])};"
                f" then echo {q(s.name)}; fi"
                for s in nodes[index]
            )

        done, _ = self.target.fleet.run(lambda h: script(h.node.index), nodes, timeout=30).scripts()
        for i, r in done.items():  # a lost node is reported by the next poll
            self.passed.update(name for name in r.stdout.split() if name in {s.name for s in nodes[i]})

    def _endpoint_ready(self) -> bool:
        self.endpoint = endpoint_state(self.target)
        return self.endpoint.ready

    def _rows(self, containers: dict[tuple[int, str], Container], elapsed: float) -> list[Row]:
        rows = []
        for s in self.services:
            c = containers.get((s.node.index, s.name))
            state = "ready" if s.name in self.passed else (c.state if c else "missing")
            if state == "running" and self.answers.get(s.name, "").startswith("HTTP"):
                state += f", probe: {self.answers[s.name]}"  # e.g. the router's "not ready" and why
            rows.append(Row(s.node.name, s.service, state, elapsed, self.last_lines.get(s.name, "")))
        if self.check_endpoint:
            state = "waiting" if self.endpoint is None else "ready" if self.endpoint.ready else self.endpoint.note
            rows.append(Row("-", "frontend registry", state, elapsed))
        return rows

    def _fail(self, s: Service, c: Container | None) -> None:
        host = self.target.fleet.host(s.node.index)
        try:
            script = self.target.runtime.logs_script(self.target.plan, s.name, tail=LOG_LINES_ON_FAILURE)
            logs = host.run(script, timeout=30).stdout
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
