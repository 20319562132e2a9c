"""`launcher watch`: keep a deployment alive, like LeaderWorkerSet does on Kubernetes.

A torch.distributed group cannot go on without one of its ranks, so when any rank of a worker group
dies, is hung (requests running, no token progress in its `/metrics` for the file's `watch.hung_after`:
launcher.plan.stall), or is unhealthy (running, but failing its HTTP health probe for the file's
`watch.unhealthy_after`, three probes in a row at least: launcher.plan.liveness; a frozen rank), the whole
group is recreated (every rank together). Single services (etcd, NATS, frontend, router) are restarted
alone. Restarts back off (doubling) and stop at the unit's budget (N restarts, within M minutes when the
file says so: flags given win over the file); past it watch gives up on that unit alone: alerts once (the
audit log; the file's webhook), restarts it no more, and goes on supervising every other unit (a unit given
up on that runs again in containers recreated since, by a `launcher up`, is taken back with a fresh
budget). A unit healthy for `reset_after` seconds since its last restart starts counting afresh. Every
decision is one line (what it saw, what it did, what happened) here, every action a line of the head
node's audit log. The deployment lock is only held while acting, so `down` from another shell is never
blocked for long. `dry_run`: the same decisions said, nothing done (no restart, no lock, no audit line).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from launcher.config.schema import WatchPolicy
from launcher.errors import LauncherError
from launcher.operations import alert, health, locking, lost, rank_progress
from launcher.operations.context import Connection, Target, connected, read_routes, target
from launcher.operations.nodes import list_services, remove, restart_in_place, start
from launcher.operations.waiter import Waiter
from launcher.output import console
from launcher.output.progress import Progress
from launcher.plan.liveness import Liveness
from launcher.plan.stall import Tracker
from launcher.plan.state import Container
from launcher.plan.types import Plan, Service

LIST_TIMEOUT = 30.0  # a listing slower than this counts as the node not seen this round
Found = dict[tuple[int, str], Container]  # a round's listing: (node index, service name) -> container


class GaveUp(LauncherError):
    """A watch of a bounded number of rounds (tests) ended with units it gave up on."""

    exit_code = 1


class Stopped(LauncherError):
    """The deployment was taken down on purpose: watching ends, successfully."""

    exit_code = 0


DEFAULT_MAX_RESTARTS, DEFAULT_BACKOFF, DEFAULT_RESET_AFTER = 5, 5.0, 600.0
# A frozen rank is caught within seconds; a loaded one answering slowly once or twice is not restarted for it.
DEFAULT_UNHEALTHY_AFTER = 10.0


@dataclass(frozen=True)
class Budget:
    """When a unit is restarted: back-off doubling from `backoff`, at most `max_restarts` restarts counted
    (those of the last `within` seconds, when set), the count starting afresh after `reset_after` healthy
    seconds; `hung_after`: the window of the progress rule (None: not judged); `unhealthy_after`: the
    window of the health probe rule (launcher.plan.liveness). Pure: `now` is given."""

    max_restarts: int = DEFAULT_MAX_RESTARTS
    backoff: float = DEFAULT_BACKOFF
    reset_after: float = DEFAULT_RESET_AFTER
    within: float | None = None
    hung_after: float | None = None
    unhealthy_after: float = DEFAULT_UNHEALTHY_AFTER

    def describe(self, probed: bool = False) -> str:
        """In words; PROBED: the unit's ranks have a health probe, so its window is said too."""
        span = f" in {self.within / 60:g} min" if self.within else ""
        hung = f", hung after {self.hung_after:g}s without progress" if self.hung_after else ""
        sick = f", unhealthy after {self.unhealthy_after:g}s failing its health probe" if probed else ""
        sick = ", not judged by its health probe (unhealthy_after 0)" if probed and not self.unhealthy_after else sick
        return f"{self.max_restarts} restart(s){span}, back-off {self.backoff:g}s doubling{hung}{sick}"

    def healthy(self, unit: Unit, now: float) -> str | None:
        """A unit healthy for a long stretch since its last restart starts counting afresh: the maximum
        is for crash loops, not for one fault a week. Returns the line saying so, if it did."""
        if unit.times and now - unit.times[-1] > self.reset_after:
            unit.times, unit.next_allowed = [], 0.0
            return f"healthy for {self.reset_after:.0f}s, restart count reset"
        return None

    def counted(self, unit: Unit, now: float) -> int:
        """The restarts that count against the budget now (those older than `within` drop out)."""
        if self.within is not None:
            unit.times = [t for t in unit.times if now - t < self.within]
        return len(unit.times)

    def exhausted(self, unit: Unit, now: float) -> bool:
        return self.counted(unit, now) >= self.max_restarts

    def count(self, unit: Unit, now: float) -> None:
        unit.times.append(now)
        unit.next_allowed = now + self.delay(len(unit.times))

    def delay(self, restarts: int) -> float:
        """The back-off after the RESTARTS-th restart: doubling, its exponent capped (--max-restarts has no
        bound; 2**1024 is past a float, and 2**40 back-offs are already longer than any watch runs)."""
        return self.backoff * 2 ** min(max(restarts - 1, 0), 40)


@dataclass
class Unit:
    """What is restarted as one: a worker group, or one single service; and its budget."""

    name: str
    services: list[Service]
    budget: Budget = field(default_factory=Budget)
    times: list[float] = field(default_factory=list)  # when it was restarted (those still counted)
    next_allowed: float = 0.0
    said: str = ""  # the last waiting decision said: said once, not every round
    # past its budget: the ids of its containers then (None: supervised); it is restarted no more
    # given up on: each rank's container as listed then ((node, name) -> id; None: not listed, its node unseen)
    given_up: dict[tuple[int, str], str | None] | None = None
    gave_up_after: str = ""  # `3 restart(s) in 1 min`, said again when watch stops

    @property
    def restarts(self) -> int:
        return len(self.times)

    @property
    def probed(self) -> list[Service]:
        """Its ranks with an HTTP health probe (a single service's may be readiness only: the router's
        fails while any worker does, so only group ranks are judged by it)."""
        if not self.budget.unhealthy_after:  # `watch.unhealthy_after: 0`: not judged by its probe
            return []
        return [s for s in self.services if s.group is not None and s.probe.kind == "http"]


def budget_of(policy: WatchPolicy, flags: dict[str, float | None]) -> Budget:
    """A flag given on the command line wins; else the file's key (the group's over the deployment's);
    else the default."""

    def pick(flag: float | None, from_file: float | None, default: float) -> float:
        return flag if flag is not None else from_file if from_file is not None else default

    return Budget(
        max_restarts=int(pick(flags.get("max_restarts"), policy.max_restarts, DEFAULT_MAX_RESTARTS)),
        backoff=pick(flags.get("backoff"), policy.backoff, DEFAULT_BACKOFF),
        reset_after=pick(flags.get("reset_after"), None, DEFAULT_RESET_AFTER),
        within=None if policy.within is None else policy.within * 60,
        hung_after=policy.hung_after,
        unhealthy_after=pick(None, policy.unhealthy_after, DEFAULT_UNHEALTHY_AFTER),
    )


def units(plan: Plan, flags: dict[str, float | None] | None = None) -> list[Unit]:
    flags = flags or {}
    out = [Unit(s.service, [s], budget_of(WatchPolicy(), flags)) for s in plan.services if s.group is None]
    for group in plan.groups:
        members = [s for s in plan.services if s.group == group.name]
        out.append(Unit(f"group {group.name}", members, budget_of(group.watch, flags)))
    return out


def dead(unit: Unit, found: Found, unreachable: Collection[int]) -> list[str]:
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
    """The verb: supervise until Ctrl-C (saying which units it gave up on), or a `down` from anywhere (exit 0).
    A unit past its budget is given up on alone: the others are still supervised."""
    t = target(config, config_opt, inventory)
    with connected(t, connection):
        read_routes(t)  # network.interface: auto: a group restarted gets the interfaces `up` gave it
        try:
            watch(t, Progress(live=False), **options)
        except KeyboardInterrupt:
            console.say("watch stopped", to_stderr=True)
        except Stopped as exc:
            console.say(str(exc), to_stderr=True)  # not an error: someone ran `launcher down`


@dataclass
class Watcher:
    """One watch: its units, the progress of their ranks, and what it may do."""

    t: Target
    progress: Progress
    watched: list[Unit]
    ready_timeout: float | None = None
    dry_run: bool = False
    tracker: Tracker = field(default_factory=Tracker)
    no_data: dict[str, str] = field(default_factory=dict)  # rank -> why its metrics said nothing (said once)
    unseen: lost.Unseen = field(default_factory=lost.Unseen)  # nodes failing SSH: since when (watch.lost_after)
    flags: dict[str, float | None] = field(default_factory=dict)
    liveness: Liveness = field(default_factory=Liveness)  # each rank's failed health probes in a row
    probes: tuple[int, int] = (0, 0)  # this round's rank health probes: (passing, probed)
    looked: bool = False  # the first round's summary said
    unseen_now: Collection[int] = ()  # the nodes this round's listing could not see

    def stop(self, why: str) -> None:
        raise Stopped(f"watch ends: {self.t.plan.deployment} was taken down ({why})")

    def rebuild(self, groups: list[str]) -> None:
        """The units of GROUPS afresh from the plan (their ranks moved to a spare); the others keep their count."""
        fresh = {u.name: u for u in units(self.t.plan, self.flags)}
        self.watched = [fresh.get(u.name, u) if u.name.removeprefix("group ") in groups else u for u in self.watched]

    def running(
        self, found: Found, unreachable: Collection[int], ranks: Callable[[Unit], list[Service]]
    ) -> list[Service]:
        """RANKS of each unit still supervised that run on a node seen this round."""
        return [
            s for u in self.watched if u.given_up is None for s in ranks(u)
            if s.node.index not in unreachable and (c := found.get((s.node.index, s.name))) is not None and c.running
        ]  # fmt: skip

    def hung(self, found: Found, unreachable: Collection[int]) -> dict[str, str]:
        """The ranks judged by the progress rule this round that are hung: service name -> reason."""
        running = self.running(found, unreachable, lambda u: u.services if u.budget.hung_after else [])
        verdicts, failed = rank_progress.judge(
            self.t, self.tracker, rank_progress.judged(self.t, running), time.monotonic()
        )
        for name, why in failed.items():
            if self.no_data.get(name) != why:
                self.progress.log(f"{name}: metrics give no data ({why}): its progress is not judged this round")
        self.no_data = failed
        tags = {s.name: s.tag for s in running}
        return {name: f"{tags[name]} hung ({v.line})" for name, v in verdicts.items() if v.hung}

    def unhealthy(self, found: Found, unreachable: Collection[int]) -> dict[str, str]:
        """The running ranks with a health probe, each probed (all at once, bounded: health.failures), that
        failed it for their unit's `unhealthy_after` (launcher.plan.liveness): service name -> reason."""
        windows = {s.name: u.budget.unhealthy_after for u in self.watched for s in u.probed}
        running = self.running(found, unreachable, lambda u: u.probed)
        failures, now, out = health.failures(self.t, running), time.monotonic(), {}
        self.probes = (sum(1 for s in running if not failures[s.name]), len(running))
        for s in running:
            container = found[(s.node.index, s.name)].id
            grace = self.ready_timeout or s.timeout
            if line := self.liveness.see(s.name, container, now, failures[s.name], windows[s.name], grace):
                out[s.name] = f"{s.tag} {line}"
        return out

    def round(self) -> None:
        plan, started = self.t.plan, time.monotonic()
        found, unreachable = list_services(self.t, timeout=lost.list_timeout(plan))
        self.unseen_now = set(unreachable)
        for i, why in unreachable.items():
            if i not in plan.substitutes:  # a lost node already replaced: said when it was
                self.progress.log(f"{plan.nodes[i].label}: cannot be seen: {why}")
        lost.check(self, unreachable, started, found)
        lost.remove_stale(self, found)
        hung, sick = self.hung(found, unreachable), self.unhealthy(found, unreachable)
        hung = lost.gpu_restarts(self, found) | hung  # GPU `restart` verdicts (Xid 13, 31, 43...): lost.py
        for unit in self.watched:
            if unit.given_up is not None:
                self.taken_back(unit, found)
                continue
            judged = [why for s in unit.services for why in (hung.get(s.name), sick.get(s.name)) if why]
            self.decide(unit, dead(unit, found, unreachable) + judged, judged, found)
        if not self.looked:
            self.first_look(found, unreachable)

    def first_look(self, found: Found, unreachable: Collection[int]) -> None:
        """One line after the first round: what watch found as it began (a rank frozen before it never
        passed a probe under this watch, and is judged only past its group's timeout: see plan.liveness)."""
        self.looked = True
        running = sum(1 for u in self.watched if not dead(u, found, unreachable))
        passing, probed = self.probes
        self.progress.log(
            f"first look: {running}/{len(self.watched)} unit(s) running as planned,"
            f" {passing}/{probed} rank health probe(s) passing"
        )

    def decide(self, unit: Unit, reasons: list[str], judged: list[str], found: Found) -> None:
        """What to do with one unit this round, explained in one line: what it saw, did, and what happened.
        JUDGED: the reasons among REASONS from its ranks' probes (hung, unhealthy), not from the listing."""
        now, budget = time.monotonic(), unit.budget
        if not reasons:
            if line := budget.healthy(unit, now):
                self.progress.log(f"{unit.name}: {line}")
            unit.said = ""
            return
        saw = "; ".join(reasons)
        if budget.exhausted(unit, now):
            self.give_up(unit, saw, found)
        elif now < unit.next_allowed:
            self.say_once(
                unit,
                f"saw {saw}; waits: back-off for {unit.next_allowed - now:.0f}s more"
                f" ({unit.restarts}/{budget.max_restarts} restarts counted)",
            )
        elif self.dry_run:
            self.say_once(
                unit, f"saw {saw}; would restart it ({unit.restarts + 1}/{budget.max_restarts}); dry run: nothing done"
            )
        else:
            _act(self, unit, judged)

    def say_once(self, unit: Unit, line: str) -> None:
        if unit.said != line.split(" for ")[0]:
            unit.said = line.split(" for ")[0]
            self.progress.log(f"{unit.name}: {line}")

    def give_up(self, unit: Unit, saw: str, found: Found) -> None:
        """Past the budget: the unit is restarted no more, the others still are. Alerted once: the audit
        log, and the webhook when the file names one."""
        budget = unit.budget
        counted = f"{unit.restarts} restart(s)" + (f" in {budget.within / 60:g} min" if budget.within else "")
        if self.dry_run:
            self.say_once(unit, f"saw {saw}; would give up ({counted}, the budget) and alert; dry run: nothing done")
            return
        # a rank gone from a node that answered: any container there later is a new one (""); one on a node
        # not seen: decided once the node is seen again (None)
        unit.given_up = {
            (s.node.index, s.name): c.id
            if (c := found.get((s.node.index, s.name)))
            else ("" if s.node.index not in self.unseen_now else None)
            for s in unit.services
        }
        unit.gave_up_after = counted
        plan = self.t.plan
        locking.audit(locking.Site.of(self.t), f"watch: gave up on {unit.name} after {counted}: {saw}")
        document = {
            "deployment": plan.deployment, "unit": unit.name, "event": "gave up", "restarts": unit.restarts,
            "budget": budget.describe(), "reasons": saw.split("; "),
        }  # fmt: skip
        sent = alert.webhook(plan, {k: plan.redactor()(v) if isinstance(v, str) else v for k, v in document.items()})
        self.progress.log(
            f"{unit.name}: saw {saw}; gave up after {counted}; alerted: audit log"
            + (f", {sent}" if sent else "")
            + "; restarted no more (`launcher up` recreates it if it died; a hung or unhealthy one: `launcher down`,"
            " then `up`), the rest still watched"
        )

    def taken_back(self, unit: Unit, found: Found) -> None:
        """A unit given up on whose every rank runs again, each in a container other than the one listed when
        watch gave up (a `launcher up` by hand recreates a group whole): supervised again, its budget fresh.
        Said once. One that merely still runs (given up for a hung or unhealthy rank), or whose rank was not
        listed then (its node unseen: the same container may come back), stays given up."""
        if unit.given_up is None:
            return
        for (
            key,
            old,
        ) in unit.given_up.items():  # a node unseen at the give-up, seen now: what runs there is the baseline
            if old is None and (c := found.get(key)) is not None:
                unit.given_up[key] = c.id
        now = {key: found.get(key) for key in unit.given_up}
        if any(c is None or not c.running for c in now.values()):
            return
        if any(old is None or now[key].id == old for key, old in unit.given_up.items()):  # type: ignore[union-attr]
            return
        unit.given_up, unit.times, unit.next_allowed, unit.said = None, [], 0.0, ""
        self.progress.log(f"{unit.name}: runs again, recreated since watch gave up on it: watched again, budget fresh")

    def gave_up_on(self) -> str:
        """The units given up on, in one line (empty: none)."""
        return ", ".join(f"{u.name} (after {u.gave_up_after})" for u in self.watched if u.given_up is not None)


def watch(
    t: Target,
    progress: Progress,
    *,
    interval: float = 2.0,
    max_restarts: int | None = None,
    backoff: float | None = None,
    reset_after: float | None = None,
    ready_timeout: float | None = None,
    rounds: int | None = None,
    dry_run: bool = False,
) -> None:
    plan = t.plan
    flags = {"max_restarts": max_restarts, "backoff": backoff, "reset_after": reset_after}
    found, _ = list_services(t, timeout=LIST_TIMEOUT)
    for line in t.adopt_substitutes(found.values()):  # a group moved to a spare before stays there
        progress.log(line)
    plan = t.plan
    watcher = Watcher(t, progress, units(plan, flags), ready_timeout, dry_run, flags=flags)
    mode = " (dry run: says what it would do, does nothing)" if dry_run else ""
    progress.log(
        f"watching {plan.deployment}: {len(watcher.watched)} unit(s) on {len(plan.nodes)} node(s),"
        f" every {interval}s{mode}"
        + (f"; a node failing SSH for {plan.lost_after:g}s is lost" if plan.lost_after else "")
    )
    for lost_index, spare in sorted(plan.substitutes.items()):
        progress.log(f"{plan.nodes[spare].label} replaces {plan.nodes[lost_index].label} (recorded on its ranks)")
    for unit in watcher.watched:
        if unit.services[0].group is not None:
            probe = any(s.probe.kind == "http" for s in unit.services)
            progress.log(f"{unit.name}: policy {unit.budget.describe(probed=probe)}")
    try:
        supervise(watcher, interval, rounds)
    except KeyboardInterrupt:
        if given_up := watcher.gave_up_on():
            progress.log(f"given up on, not restarted since: {given_up}")
        raise
    if given_up := watcher.gave_up_on():  # a bounded watch (tests): its exit code says so
        raise GaveUp(f"watch ends after {rounds} round(s); it gave up on {given_up}: `launcher up` restarts them")


def supervise(watcher: Watcher, interval: float, rounds: int | None) -> None:
    """One round every INTERVAL seconds, ROUNDS of them (None: until interrupted)."""
    done = 0
    while rounds is None or done < rounds:
        done += 1
        tick = time.monotonic()
        watcher.round()
        time.sleep(max(0.0, interval - (time.monotonic() - tick)))


def _act(w: Watcher, unit: Unit, judged: list[str]) -> None:
    """Under the lock, look again and restart the unit if it is still dead (or one of its ranks JUDGED hung
    or unhealthy this round)."""
    t, progress, budget = w.t, w.progress, unit.budget
    plan, site = t.plan, locking.Site.of(t)
    try:
        lock = locking.acquire(site, "launcher watch")
    except locking.Locked as exc:
        # An `up` or `down` is at work: its outcome is seen next round, nothing is counted.
        progress.log(f"{unit.name}: not restarted now: {exc} (tried again next round)")
        return
    try:
        # Under the lock, look again: a `down` since the listing means stop watching; a unit
        # someone else brought back needs nothing.
        if why := locking.taken_down(site):
            raise Stopped(f"watch ends: {plan.deployment} was taken down ({why})")
        nodes = sorted({s.node.index for s in unit.services})
        found, unreachable = list_services(t, nodes, timeout=LIST_TIMEOUT)
        reasons = dead(unit, found, unreachable) + judged
        if not reasons:
            progress.log(f"{unit.name}: running again, nothing to do")
            return
        budget.count(unit, time.monotonic())
        action = f"restarting {unit.name} ({unit.restarts}/{budget.max_restarts}): {'; '.join(reasons)}"
        progress.log(action)
        locking.audit(site, f"watch: {action}")
        lock.outcome = restart(t, progress, unit, found, w.ready_timeout)
        w.tracker.forget([s.name for s in unit.services])
        delay = budget.delay(unit.restarts)
        result = lock.outcome.removeprefix("watch: ")
        progress.log(
            f"{unit.name}: saw {'; '.join(reasons)}; restarted it ({unit.restarts}/{budget.max_restarts},"
            f" back-off {delay:g}s before another); {result}"
        )
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
