"""`launcher watch`: keep a deployment alive, like LeaderWorkerSet does on Kubernetes.

A torch.distributed group cannot go on without one of its ranks, so when any rank of a worker group
dies the whole group is recreated (every rank together). Single services (etcd, NATS, frontend,
router) are restarted alone. Restarts back off (doubling) and stop at a maximum, after which watch
exits 1 with a clear message; a unit healthy for `reset_after` seconds since its last restart starts
counting afresh. Every action is logged here and in the head node's audit log. The deployment lock
is only held while acting, so `down` from another shell is never blocked for long.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

from launcher import lock
from launcher.errors import LauncherError
from launcher.model import Plan, Service
from launcher.progress import Progress
from launcher.runtime import Container
from launcher.transport import Fleet
from launcher.up import Waiter, head_index, list_services, remove, start

LIST_TIMEOUT = 30.0  # a listing slower than this counts as the node not seen this round


class GaveUp(LauncherError):
    exit_code = 1


class Stopped(LauncherError):
    """The deployment was taken down on purpose: watching ends, successfully."""

    exit_code = 0


@dataclass
class Unit:
    """What is restarted as one: a worker group, or one single service."""

    name: str
    services: list[Service]
    restarts: int = 0
    next_allowed: float = 0.0
    last_restart: float = 0.0


def units(plan: Plan) -> list[Unit]:
    out = [Unit(s.service, [s]) for s in plan.services if s.group is None]
    for group in plan.groups:
        out.append(Unit(f"group {group.name}", [s for s in plan.services if s.group == group.name]))
    return out


def dead(unit: Unit, found: dict[tuple[int, str], Container], unreachable: Collection[int]) -> list[str]:
    """Why the unit needs a restart (empty: healthy, or its node cannot be seen right now)."""
    reasons = []
    for s in unit.services:
        if s.node.index in unreachable:
            continue  # cannot tell; reported separately, never restarted blind
        c = found.get((s.node.index, s.name))
        if c is None:
            reasons.append(f"{s.tag} is gone")
        elif not c.running:
            reasons.append(f"{s.tag} {c.state} (exit {c.exit_code})")
    return reasons


def watch(
    plan: Plan,
    fleet: Fleet,
    progress: Progress,
    *,
    interval: float = 2.0,
    max_restarts: int = 5,
    backoff: float = 5.0,
    reset_after: float = 600.0,
    ready_timeout: float | None = None,
    rounds: int | None = None,
) -> None:
    head = fleet.host(head_index(plan))
    watched = units(plan)
    progress.log(f"watching {plan.deployment}: {len(watched)} unit(s) on {len(plan.nodes)} node(s), every {interval}s")
    done = 0
    while rounds is None or done < rounds:
        done += 1
        tick = time.monotonic()
        found, unreachable = list_services(plan, fleet, timeout=LIST_TIMEOUT)
        for i, why in unreachable.items():
            progress.log(f"{plan.nodes[i].label}: cannot be seen: {why}")
        for unit in watched:
            reasons = dead(unit, found, unreachable)
            now = time.monotonic()
            if not reasons:
                # A unit healthy for a long stretch since its last restart starts counting afresh: the
                # maximum is for crash loops, not for one fault a week.
                if unit.restarts and now - unit.last_restart > reset_after:
                    progress.log(f"{unit.name}: healthy for {reset_after:.0f}s, restart count reset")
                    unit.restarts, unit.next_allowed = 0, 0.0
                continue
            if unit.restarts >= max_restarts:
                raise GaveUp(
                    f"{unit.name} died again ({'; '.join(reasons)}) after {unit.restarts} restart(s):"
                    f" giving up. `launcher logs` shows why; `launcher up` restarts it by hand."
                )
            if now < unit.next_allowed:
                continue
            try:
                held = lock.acquire(head, plan.state_dir, plan.deployment, "launcher watch")
            except lock.Locked as exc:
                # An `up` or `down` is at work: its outcome is seen next round, nothing is counted.
                progress.log(f"{unit.name}: not restarted now: {exc}")
                continue
            outcome = None
            try:
                # Under the lock, look again: a `down` since the listing means stop watching; a unit
                # someone else brought back needs nothing.
                if why := lock.taken_down(head, plan.state_dir, plan.deployment):
                    raise Stopped(f"watch ends: {plan.deployment} was taken down ({why})")
                nodes = sorted({s.node.index for s in unit.services})
                found, unreachable = list_services(plan, fleet, nodes, timeout=LIST_TIMEOUT)
                reasons = dead(unit, found, unreachable)
                if not reasons:
                    progress.log(f"{unit.name}: running again, nothing to do")
                    continue
                unit.restarts += 1
                unit.last_restart = now
                unit.next_allowed = now + backoff * 2 ** (unit.restarts - 1)
                action = f"restarting {unit.name} ({unit.restarts}/{max_restarts}): {'; '.join(reasons)}"
                progress.log(action)
                lock.audit(head, plan.state_dir, plan.deployment, f"watch: {action}")
                outcome = restart(plan, fleet, progress, unit, found, ready_timeout)
            finally:
                lock.release(head, plan.state_dir, plan.deployment, held, audit_action=outcome)
        time.sleep(max(0.0, interval - (time.monotonic() - tick)))


def restart(plan: Plan, fleet: Fleet, progress: Progress, unit: Unit, found, ready_timeout: float | None) -> str:
    """Recreate the unit (the caller holds the lock); returns the audit line of the outcome."""
    started = time.monotonic()
    outcome = f"watch: {unit.name} restart failed"
    try:
        old = [found[(s.node.index, s.name)] for s in unit.services if (s.node.index, s.name) in found]
        if old:
            remove(plan, fleet, old)
        start(plan, fleet, unit.services, progress, known=[])
        services = unit.services
        if ready_timeout is not None:
            for s in services:
                s.timeout = ready_timeout
        Waiter(
            plan, fleet, progress, services, check_frontend=plan.has_dynamo_frontend and any(s.group for s in services)
        ).run()
        outcome = f"watch: {unit.name} serving again after {time.monotonic() - started:.1f}s"
        progress.log(outcome.removeprefix("watch: "))
    except LauncherError as exc:
        progress.log(f"{unit.name}: restart failed: {str(exc).splitlines()[0]}")
    return outcome
