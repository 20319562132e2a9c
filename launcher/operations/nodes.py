"""Operations on the nodes that several verbs share: list what runs, check that every node answers,
start services, remove containers. Each is one script per node, all nodes at once."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from launcher.errors import LauncherError
from launcher.operations.context import Target
from launcher.operations.locking import refuse_unsafe
from launcher.plan.state import Container
from launcher.plan.types import Plan, Service
from launcher.runtime.base import ENGINE_UNAVAILABLE, LIST_MARK, ListingError, parse_after_mark, parse_list
from launcher.transport.errors import describe
from launcher.transport.fleet import MapInterrupted
from launcher.transport.host import Completed, Host

if TYPE_CHECKING:  # rich's live display costs a `launcher` process 34 ms to import: only `up` draws it
    from launcher.output.progress import Progress

# Seconds a Ctrl-C gives the start scripts already sent (docker run -d returns in about a second).
START_GRACE = 20.0


class NodeFailures(LauncherError):
    """Failures on several nodes, reported together: one line per node."""

    exit_code = 1

    def __init__(self, what: str, failures: dict[int, str], plan: Plan):
        lines = [f"{what} on {len(failures)} of {len(plan.nodes)} node(s):"]
        for index in sorted(failures):
            lines.append(f"  {plan.nodes[index].label}: {failures[index]}")
        super().__init__("\n".join(lines))


class StartInterrupted(KeyboardInterrupt):
    """Ctrl-C while start scripts ran: what the finished ones reported, and the nodes that had not answered."""

    def __init__(self, found: list[Container], pending: list[int]):
        super().__init__()
        self.found = found
        self.pending = pending


def by_node(services: list[Service]) -> dict[int, list[Service]]:
    out: dict[int, list[Service]] = {}
    for s in services:
        out.setdefault(s.node.index, []).append(s)
    return out


def list_services(
    target: Target, nodes: list[int] | None = None, timeout: float | None = None
) -> tuple[dict[tuple[int, str], Container], dict[int, str]]:
    """What runs on the nodes (all, or `nodes`), by (node, name); and the nodes that could not be
    listed, with why. One round trip per node."""
    done, unreachable = target.fleet.run(target.runtime.list_script(target.plan), nodes, timeout=timeout).scripts()
    found: dict[tuple[int, str], Container] = {}
    for i, r in done.items():
        try:
            found.update({(i, c.name): c for c in parse_list(i, r.stdout)})
        except ListingError as exc:
            unreachable[i] = str(exc)
    return found, unreachable


def check_nodes(
    target: Target,
    indices: list[int] | None = None,
    then: dict[int, str] | None = None,
    answers: dict[int, Completed] | None = None,
) -> list[Container]:
    """Every node reachable over SSH and its container engine answering, or nothing starts.

    The same round trip lists the deployment's containers, which `up` compares with the plan, and
    reads the routes to the groups' leaders (for `network.interface: auto` and the fabric check).
    `then`: per node, a script run in that round trip after the check, whatever its outcome (`up` takes
    the lock on the head so); what each printed (stdout and stderr) lands in `answers` before any
    failure is raised, so that the caller can undo it."""
    rt = target.runtime
    listing = f"echo {LIST_MARK}; {rt.check_and_list_script(target.plan)}"
    then = then or {}
    split = f"@@then-{secrets.token_hex(8)}"  # random: no listing can end the check's output early

    def script(h: Host) -> str:
        check = target.route_prefix(h) + listing
        if h.node.index not in then:
            return check
        return f"( {check}\n); __rc=$?; echo; echo {split}; {{ {then[h.node.index]}\n}} 2>&1; exit $__rc"

    results = target.fleet.run(script, indices, timeout=60)
    for i, r in results.succeeded.items():
        if i in then and split in r.stdout:
            r.stdout, _, extra = r.stdout.rpartition(f"\n{split}\n")
            if answers is not None:
                answers[i] = Completed(0, extra, "")
    target.learn_routes({i: r.stdout.split(LIST_MARK)[0] for i, r in results.succeeded.items()})
    failures, found = {}, []
    for i, r in results.items():
        if not isinstance(r, Exception):
            refuse_unsafe(target.plan.state_dir, target.plan.nodes[i].label, r.stdout)
        if isinstance(r, Exception):
            failures[i] = describe(r)
        elif r.exit_code == ENGINE_UNAVAILABLE or LIST_MARK not in r.stdout:
            failures[i] = f"{rt.name} not answering: " + ((r.stderr or r.stdout).strip().splitlines() or ["?"])[-1]
        elif not r.ok:
            failures[i] = "cannot list containers: " + r.stderr.strip()
        else:
            found += parse_after_mark(i, r.stdout)
    for i, why in target.unresolved_interfaces().items():
        failures.setdefault(i, why + " (network.interface: auto); name the interface instead")
    # A group moved to a spare by `watch` stays there (the record: its ranks' labels); the lost node it
    # replaced runs nothing of the plan now, so its silence does not stop `up`.
    target.notes += target.adopt_substitutes(found)
    for i in [i for i in failures if i in target.plan.substitutes and not target.plan.by_node(i)]:
        target.notes.append(f"{target.plan.nodes[i].label}: not reachable ({failures.pop(i)}); replaced by a spare")
    if failures:
        raise NodeFailures("cannot start: nodes not ready", failures, target.plan)
    return found


def start(
    target: Target, services: list[Service], progress: Progress, known: list[Container] | None = None
) -> list[Container]:
    """Start services: one script per node, all nodes at once. Returns the state of what was started
    (the same round trip reports it: often no poll is needed afterwards)."""
    if not services:
        return []
    plan, rt = target.plan, target.runtime
    groups = by_node(services)
    existing = None if known is None else {c.name for c in known}

    def go(host: Host) -> Completed:
        script, stdin = rt.start_script(plan, groups[host.node.index], existing)
        return host.run(script, stdin=stdin, timeout=300)

    try:
        results = target.fleet.map(go, groups, finish_on_interrupt=START_GRACE)
    except MapInterrupted as stopped:
        # Report what the start scripts that finished say runs; the rest may still appear.
        found = [c for i, r in stopped.results.succeeded.items() for c in parse_after_mark(i, r.stdout)]
        raise StartInterrupted(found, stopped.pending) from None
    failures, found = {}, []
    for i, r in results.items():
        if not isinstance(r, Exception):
            refuse_unsafe(plan.state_dir, plan.nodes[i].label, r.stdout)
        if isinstance(r, Exception):
            failures[i] = describe(r)
        elif not r.ok or LIST_MARK not in r.stdout:
            failures[i] = f"{rt.name} run failed: " + (r.stderr.strip() or r.stdout.strip())
        else:
            found += parse_after_mark(i, r.stdout)
    if failures:
        raise NodeFailures("failed to start containers", failures, plan)
    names = ", ".join(sorted({s.service.rsplit("-r", 1)[0] for s in services}))
    progress.log(f"started {len(services)} container(s) on {len(groups)} node(s): {names}")
    return found


def restart_in_place(target: Target, services: list[Service], progress: Progress) -> list[Container]:
    """Start existing services again where they are, their data kept (`watch` on a dead etcd: a new,
    empty one would cost every worker its lease). One script per node."""
    groups = by_node(services)
    results = target.fleet.run(lambda h: target.runtime.restart_script(target.plan, groups[h.node.index]), groups)
    done, failures = results.scripts()
    if failures:
        raise NodeFailures("failed to restart", failures, target.plan)
    progress.log(f"restarted {', '.join(s.service for s in services)} in place")
    return [c for i, r in done.items() for c in parse_after_mark(i, r.stdout)]


def remove(target: Target, containers: list[Container]) -> None:
    names: dict[int, list[str]] = {}
    for c in containers:
        names.setdefault(c.node_index, []).append(c.name)
    _, failures = target.fleet.run(
        lambda h: target.runtime.remove_script(target.plan, names[h.node.index]), names
    ).scripts()
    if failures:
        raise NodeFailures("failed to remove old containers", failures, target.plan)
