"""`status`, `logs`, `exec` and `down`: the same view of every node, found by labels, not local files."""

from __future__ import annotations

import re
import shlex
import threading
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape

from launcher import lock, readiness, runtime
from launcher.errors import ConfigError
from launcher.model import Node, Plan
from launcher.runtime import Container
from launcher.transport import Fleet, NodeError
from launcher.up import NodeFailures, describe, head_index, list_services

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
COLOURS = [
    "cyan",
    "magenta",
    "green",
    "yellow",
    "blue",
    "bright_red",
    "bright_cyan",
    "bright_magenta",
    "bright_green",
    "bright_yellow",
    "bright_blue",
]


def select_nodes(plan: Plan, ref: str) -> Node:
    for node in plan.nodes:
        if ref in (str(node.index), node.name, node.address):
            return node
    raise ConfigError(
        f"no node {ref!r}: expected an index 0..{len(plan.nodes) - 1}, a name or an address", key="--node"
    )


# -- status ------------------------------------------------------------------------------------


@dataclass
class StatusRow:
    node: Node
    service: str
    role: str
    group: str | None
    rank: int | None
    state: str
    uptime: float | None
    restarts: int
    health: str
    container: str | None
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "node_index": self.node.index,
            "address": self.node.address,
            "node": self.node.name,
            "service": self.service,
            "role": self.role,
            "group": self.group,
            "rank": self.rank,
            "state": self.state,
            "uptime_s": None if self.uptime is None else round(self.uptime),
            "restarts": self.restarts,
            "health": self.health,
            "container": self.container,
            "id": self.id,
        }


def status(plan: Plan, fleet: Fleet) -> tuple[list[StatusRow], dict[int, str], dict[str, Any]]:
    """Rows for every planned service and every labelled container found; unreachable nodes apart."""
    found, unreachable = list_services(plan, fleet)
    now = datetime.now(UTC)
    planned = {(s.node.index, s.name): s for s in plan.services}
    health = _probe_all(plan, fleet, found, unreachable)
    rows: list[StatusRow] = []
    for key, s in planned.items():
        c = found.get(key)
        state = "unreachable" if s.node.index in unreachable else (c.state if c else "missing")
        if c and c.spec != s.spec_hash():
            state += " (outdated spec)"
        rows.append(
            StatusRow(
                s.node,
                s.service,
                s.role,
                s.group,
                s.rank,
                state,
                c.uptime(now) if c else None,
                c.restarts if c else 0,
                health.get(s.name, "-"),
                c.name if c else None,
                c.id if c else None,
            )
        )
    for key, c in found.items():
        if key not in planned:
            rows.append(
                StatusRow(
                    plan.nodes[c.node_index],
                    c.service,
                    c.role,
                    c.group,
                    c.rank,
                    c.state + " (not in plan)",
                    c.uptime(now),
                    c.restarts,
                    "-",
                    c.name,
                )
            )
    frontend = _frontend_summary(plan, fleet, unreachable)
    return rows, unreachable, frontend


def _probe_all(plan: Plan, fleet: Fleet, found: dict, unreachable: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    targets: dict[int, list] = {}
    for s in plan.services:
        c = found.get((s.node.index, s.name))
        if s.probe.kind == "http" and c is not None and c.running and s.node.index not in unreachable:
            targets.setdefault(s.node.index, []).append(s)
        elif c is not None and c.running:
            out[s.name] = "running"

    def check(host):
        res = {}
        for s in targets[host.node.index]:
            try:
                code, body = host.http("GET", s.probe.url, timeout=3)
                res[s.name] = "healthy" if readiness.probe_passes(s.probe, code, body) else f"unhealthy (HTTP {code})"
            except (OSError, ConnectionError) as exc:
                res[s.name] = f"not answering ({type(exc).__name__})"
        return res

    for r in fleet.map(check, targets).values():
        if isinstance(r, dict):
            out.update(r)
    return out


def _frontend_summary(plan: Plan, fleet: Fleet, unreachable: dict) -> dict[str, Any]:
    frontend = next((s for s in plan.services if s.role == "frontend"), None)
    info: dict[str, Any] = {
        "endpoint": plan.endpoint,
        "model": plan.model_name,
        "expected_instances": readiness.expected_instances(plan),
    }
    router = plan.entry if plan.entry is not None and plan.entry.role == "router" else None
    if router is not None and router.node.index not in unreachable:
        # The router's own readiness: 503 with a reason until every P and D worker is healthy.
        info["expected_instances"] = {}
        try:
            status, body = fleet.host(router.node.index).http("GET", router.probe.url, timeout=3)
            info["ready"] = readiness.probe_passes(router.probe, status, body)
            info["answer"] = readiness.describe_answer(status, body)
        except (OSError, ConnectionError, NodeError) as exc:
            info["ready"] = False
            info["error"] = str(exc)
        return info
    if frontend is None or frontend.node.index in unreachable:
        info["ready"] = False
        return info
    try:
        _, health = fleet.host(frontend.node.index).http("GET", plan.endpoint + "/health", timeout=3)
        info["instances"] = readiness.count_instances(health)
        info["ready"] = not readiness.missing_instances(info["expected_instances"], info["instances"])
    except (OSError, ConnectionError, NodeError) as exc:
        info["ready"] = False
        info["error"] = str(exc)
    return info


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


# -- logs --------------------------------------------------------------------------------------


def select_containers(
    plan: Plan, fleet: Fleet, node: str | None, role: str | None, rank: int | None, indices: list[int] | None = None
) -> tuple[list[Container], dict[int, str]]:
    target = [select_nodes(plan, node).index] if node is not None else indices
    found, failed = list_services(plan, fleet, target)
    chosen = [
        c
        for c in found.values()
        if (role is None or role in (c.role, c.group, c.service)) and (rank is None or c.rank == rank)
    ]
    chosen.sort(key=lambda c: (c.node_index, c.service))
    return chosen, failed


def prefix(plan: Plan, c: Container) -> str:
    node = plan.nodes[c.node_index].name if c.node_index < len(plan.nodes) else f"node{c.node_index}"
    who = c.role if c.rank is None else f"{c.group or c.role} r{c.rank}"
    return f"[{node} {who}]"


def colour(text: str) -> str:
    return COLOURS[zlib.crc32(text.encode()) % len(COLOURS)]


def stream_logs(
    plan: Plan,
    fleet: Fleet,
    containers: list[Container],
    console: Console,
    *,
    follow: bool,
    tail: int | None,
    since: str | None,
    grep: str | None,
    with_prefix: bool,
) -> dict[int, str]:
    """Print logs of the containers, each line prefixed; with follow, all at once until interrupted.

    Returns the nodes that failed (a node lost while following is reported; the others keep flowing)."""
    pattern = re.compile(grep) if grep else None
    lock_out = threading.Lock()
    failed: dict[int, str] = {}

    strip = not console.is_terminal

    def emit(c: Container, line: str) -> None:
        if strip:
            line = ANSI.sub("", line)
        if pattern and not pattern.search(line):
            return
        with lock_out:
            if with_prefix:
                p = prefix(plan, c)
                console.print(f"[{colour(p)}]{escape(p)}[/] ", end="", highlight=False)
            console.print(line, markup=False, highlight=False)

    def one(c: Container) -> None:
        buffer = [""]

        def feed(chunk: str) -> None:
            buffer[0] += chunk
            *lines, buffer[0] = buffer[0].split("\n")
            for line in lines:
                emit(c, line)

        host = fleet.host(c.node_index)
        try:
            result = host.run(
                runtime.for_plan(plan).logs_script(plan, c.name, tail=tail, follow=follow, since=since),
                out=feed,
                timeout=None if follow else 120,
            )
            if buffer[0]:
                emit(c, buffer[0])
            if result.exit_code not in (0, None) and not follow:
                failed[c.node_index] = f"docker logs exited {result.exit_code}"
        except Exception as exc:
            failed[c.node_index] = describe(exc)
            with lock_out:
                console.print(f"[red]{escape(prefix(plan, c))} lost: {escape(describe(exc))}[/]", highlight=False)

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in containers]
    for t in threads:
        t.start()
    stop = threading.Event()
    if follow:
        threading.Thread(
            target=_watchdog,
            args=(fleet, {c.node_index for c in containers}, stop, failed, lock_out, console, plan),
            daemon=True,
        ).start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        stop.set()
    return failed


def _watchdog(fleet: Fleet, nodes: set[int], stop: threading.Event, failed: dict, lock_out, console, plan) -> None:
    """While following: a node that stops answering keepalives is reported and its streams closed,
    so nothing hangs on a cut link past the keepalive timeout; the other nodes keep flowing."""
    interval = fleet.options.keepalive
    live = set(nodes)
    while not stop.wait(interval):
        for i in sorted(live):
            host = fleet.host(i)
            if not host.alive(timeout=2 * interval):
                live.discard(i)
                failed[i] = f"no answer to keepalives for {2 * interval}s (node down or link cut)"
                with lock_out:
                    console.print(f"[red]{escape(plan.nodes[i].label)} lost: {failed[i]}[/]", highlight=False)
                host.close()


# -- exec --------------------------------------------------------------------------------------


def run_everywhere(plan: Plan, fleet: Fleet, indices: list[int], argv: list[str]) -> dict[int, Any]:
    script = shlex.join(argv) if len(argv) > 1 else argv[0]
    return fleet.map(lambda h: h.run(script, timeout=600), indices)


# -- down --------------------------------------------------------------------------------------


def down(plan: Plan, fleet: Fleet, command: str = "launcher down") -> dict[int, int]:
    """Remove every container of the deployment on every node; the reachable ones even if some are not."""
    head = fleet.host(head_index(plan))
    held = None
    try:
        held = lock.acquire(
            head,
            plan.state_dir,
            plan.deployment,
            command,
            audit_action=f"down ({command})",
            then=lock.mark_down_script(plan.state_dir, plan.deployment, command),
        )
    except NodeError:
        pass  # an unreachable head must not stop the others from being cleaned; reported below
    try:
        results = fleet.map(lambda h: h.run(runtime.for_plan(plan).remove_all_script(plan), timeout=300))
    finally:
        if held is not None:
            try:
                lock.release(head, plan.state_dir, plan.deployment, held)
            except Exception:
                pass
    failures, removed = {}, {}
    for i, r in results.items():
        if isinstance(r, Exception):
            failures[i] = describe(r)
        elif not r.ok:
            failures[i] = r.stderr.strip() or f"exit {r.exit_code}"
        else:
            removed[i] = int((r.stdout.strip().splitlines() or ["0"])[-1] or 0)
    if failures:
        raise NodeFailures(f"down removed {sum(removed.values())} container(s), but failed", failures, plan)
    return removed
