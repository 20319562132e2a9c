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

from launcher.commands import locking
from launcher.commands.context import Connection, Target, connected, read_routes, target
from launcher.commands.nodes import list_services, remove, restart_in_place, start
from launcher.commands.waiter import Waiter
from launcher.errors import LauncherError
from launcher.output import console
from launcher.output.progress import Progress
from launcher.plan.state import Container
from launcher.plan.types import Plan, Service

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


def run(config, config_opt, inventory, connection: Connection, **options) -> None:
    """The verb: supervise until Ctrl-C, a `down` from anywhere (exit 0), or giving up (exit 1)."""
    t = target(config, config_opt, inventory)
    with connected(t, connection):
        read_routes(t)  # network.interface: auto: a group restarted gets the interfaces `up` gave it
        try:
            watch(t, Progress(console.stderr(), live=False), **options)
        except KeyboardInterrupt:
            console.say("watch stopped", to_stderr=True)
        except Stopped as exc:
            console.say(str(exc), to_stderr=True)  # not an error: someone ran `launcher down`


def watch(
    t: Target,
    progress: Progress,
    *,
    interval: float = 2.0,
    max_restarts: int = 5,
    backoff: float = 5.0,
    reset_after: float = 600.0,
    ready_timeout: float | None = None,
    rounds: int | None = None,
) -> None:
    plan = t.plan
    watched = units(plan)
    progress.log(f"watching {plan.deployment}: {len(watched)} unit(s) on {len(plan.nodes)} node(s), every {interval}s")
    policy = Policy(max_restarts, backoff, reset_after)
    done = 0
    while rounds is None or done < rounds:
        done += 1
        tick = time.monotonic()
        found, unreachable = list_services(t, timeout=LIST_TIMEOUT)
        for i, why in unreachable.items():
            progress.log(f"{plan.nodes[i].label}: cannot be seen: {why}")
        for unit in watched:
            reasons = dead(unit, found, unreachable)
            if policy.due(unit, reasons, progress):
                _act(t, progress, unit, policy, ready_timeout)
        time.sleep(max(0.0, interval - (time.monotonic() - tick)))


@dataclass(frozen=True)
class Policy:
    """When a dead unit is restarted: back-off doubling from `backoff`, at most `max_restarts` times,
    the count starting afresh after `reset_after` healthy seconds."""

    max_restarts: int
    backoff: float
    reset_after: float

    def due(self, unit: Unit, reasons: list[str], progress: Progress) -> bool:
        now = time.monotonic()
        if not reasons:
            # A unit healthy for a long stretch since its last restart starts counting afresh: the
            # maximum is for crash loops, not for one fault a week.
            if unit.restarts and now - unit.last_restart > self.reset_after:
                progress.log(f"{unit.name}: healthy for {self.reset_after:.0f}s, restart count reset")
                unit.restarts, unit.next_allowed = 0, 0.0
            return False
        if unit.restarts >= self.max_restarts:
            raise GaveUp(
                f"{unit.name} died again ({'; '.join(reasons)}) after {unit.restarts} restart(s):"
                f" giving up. `launcher logs` shows why; `launcher up` restarts it by hand."
            )
        return now >= unit.next_allowed

    def count(self, unit: Unit) -> None:
        now = time.monotonic()
        unit.restarts += 1
        unit.last_restart = now
        unit.next_allowed = now + self.backoff * 2 ** (unit.restarts - 1)


def _act(t: Target, progress: Progress, unit: Unit, policy: Policy, ready_timeout: float | None) -> None:
    """Under the lock, look again and restart the unit if it is still dead."""
    plan, site = t.plan, locking.Site.of(t)
    try:
        lock = locking.acquire(site, "launcher watch")
    except locking.Locked as exc:
        # An `up` or `down` is at work: its outcome is seen next round, nothing is counted.
        progress.log(f"{unit.name}: not restarted now: {exc}")
        return
    try:
        # Under the lock, look again: a `down` since the listing means stop watching; a unit
        # someone else brought back needs nothing.
        if why := locking.taken_down(site):
            raise Stopped(f"watch ends: {plan.deployment} was taken down ({why})")
        nodes = sorted({s.node.index for s in unit.services})
        found, unreachable = list_services(t, nodes, timeout=LIST_TIMEOUT)
        reasons = dead(unit, found, unreachable)
        if not reasons:
            progress.log(f"{unit.name}: running again, nothing to do")
            return
        policy.count(unit)
        action = f"restarting {unit.name} ({unit.restarts}/{policy.max_restarts}): {'; '.join(reasons)}"
        progress.log(action)
        locking.audit(site, f"watch: {action}")
        lock.outcome = restart(t, progress, unit, found, ready_timeout)
    finally:
        try:
            locking.release(site, lock)
        except Exception:
            pass


def in_place(unit: Unit, old: list[Container]) -> bool:
    """A single service whose container is still there, with its planned spec, restarts in place: its
    data (etcd's keys and leases) survives. A group is recreated whole: torch.distributed cannot take
    back one rank."""
    if len(unit.services) != 1 or unit.services[0].group is not None:
        return False
    return [c.spec for c in old] == [unit.services[0].spec_hash()]


def restart(t: Target, progress: Progress, unit: Unit, found, ready_timeout: float | None) -> str:
    """Recreate the unit (the caller holds the lock); returns the audit line of the outcome."""
    started = time.monotonic()
    outcome = f"watch: {unit.name} restart failed"
    try:
        old = [found[(s.node.index, s.name)] for s in unit.services if (s.node.index, s.name) in found]
        if in_place(unit, old):
            restart_in_place(t, unit.services, progress)
        else:
            if old:
                remove(t, old)
            start(t, unit.services, progress, known=[])
        services = unit.services
        if ready_timeout is not None:
            for s in services:
                s.timeout = ready_timeout
        # A group waits for the frontend to list it only when the frontend runs: a dead frontend is its
        # own unit, restarted in turn, not something to wait the group's whole timeout for.
        entry = t.plan.entry
        frontend_up = entry is not None and (c := found.get((entry.node.index, entry.name))) is not None and c.running
        check_endpoint = t.plan.has_dynamo_frontend and frontend_up and any(s.group for s in services)
        Waiter(t, progress, services, check_endpoint=check_endpoint).run()
        outcome = f"watch: {unit.name} serving again after {time.monotonic() - started:.1f}s"
        progress.log(outcome.removeprefix("watch: "))
    except LauncherError as exc:
        progress.log(f"{unit.name}: restart failed: {str(exc).splitlines()[0]}")
    return outcome
