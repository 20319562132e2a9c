"""`watch` and a lost node: a node that fails SSH (the listing each round makes over it) for the file's
`watch.lost_after` seconds is lost, and so is one whose GPU health verdict is `drain` (looked at every
GPU_EVERY seconds on the nodes the plan gives GPUs to, `lost_after` set or not:
launcher.operations.gpu_health); its group ranks move to a spare (launcher.plan.spares: the plan built
again with the spare in its place) whose own GPUs pass the same look, the groups on it recreated there
whole, each new rank labelled with whom it replaces and the head's audit log saying so. Without a spare
fit to take them (or where the node runs etcd, NATS or the frontend, which cannot move), the loss is
reported once, in one line and as an alert (the audit log; the file's webhook), and everything else
keeps serving. A `restart` verdict (an application's Xid: 13, 31, 43...) is a reason to restart the
groups using that GPU (gpu_restarts, which watch's round adds to its hung ranks), once per kernel log line.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

from launcher.errors import LauncherError
from launcher.operations import alert, gpu_health, locking
from launcher.operations import drain as drains
from launcher.operations.health import PROBE_LIMIT, PROBE_TIMEOUT
from launcher.operations.nodes import list_services, remove, start
from launcher.operations.waiter import Waiter
from launcher.plan import drain as plan_drain
from launcher.plan import readiness, spares
from launcher.plan.state import Container
from launcher.plan.types import Node, Plan, Service
from launcher.runtime import lock as lock_scripts

# `w` below is the caller's launcher.commands.watch.Watcher (not imported: watch imports this module)
Watcher = Any
Found = dict[tuple[int, str], Container]  # this round's listing: (node index, service name) -> container

LIST_TIMEOUT = 30.0  # a listing slower than this counts as the node not seen this round
LIST_FLOOR = 5.0
MIN_ROUNDS = 2  # failed rounds in a row before a node can be lost
GPU_EVERY = 30.0  # seconds between two looks at the nodes' GPU health (a look runs a program on each node)
GPU_TIMEOUT = 20.0  # a look that takes longer holds watch's round up: that node is not judged this time


@dataclass
class GpuRestarts:
    """What `restart` verdicts asked of watch. The look peeks (the kernel log's place stays where `status`
    and `doctor` left it), so a line comes back look after look: each is acted on once (`acted` only grows,
    a cut read that lists nothing forgets none), and the rank it names is restarted until its container is a
    new one. Only a rank whose container this watch already saw at its previous look is restarted for a line
    first seen now: one started since (`dead()` restarted it after the Xid killed it, or an `up`) may be
    younger than the Xid, and the first look only takes note (a watch started again, by systemd say, must
    not restart every group for the Xids of the past)."""

    acted: dict[int, set[str]] = field(default_factory=dict)
    # (node index, rank name) -> (why, the container it named: its id and start): until that one is replaced
    pending: dict[tuple[int, str], tuple[str, str]] = field(default_factory=dict)
    # (node index, rank name) -> its container (id and start) at the previous look; None: no look yet
    containers: dict[tuple[int, str], str] | None = None


ACTED_KEPT = 512  # lines remembered per node (a boot's worth of distinct Xid lines is far fewer)


@dataclass
class Unseen:
    """Since when each node has failed SSH (the start of the first round whose listing it failed), in how
    many rounds running, and the nodes already judged lost. Two failed rounds at least: one slow listing
    on a loaded node is not a lost node."""

    since: dict[int, float] = field(default_factory=dict)
    rounds: dict[int, int] = field(default_factory=dict)
    judged: set[int] = field(default_factory=set)
    gpus_next: float = 0.0  # when the GPUs are looked at next (monotonic)
    said: str = ""  # the last dry-run line about stale ranks (said once)
    # every node this watch saw fail SSH or judged drained: only there are ranks on a replaced node stale
    # (elsewhere the substitution is a spare's label alone, and the node's ranks may be all that serves)
    gone: set[int] = field(default_factory=set)
    told: set[str] = field(default_factory=set)  # the lines about ranks left on a replaced node (said once)
    # nodes failing SSH whose ranks still answered through another node (said once until seen again), and
    # the rounds in a row each such node has not answered: lost after MIN_ROUNDS (one slow answer is not)
    serving: set[int] = field(default_factory=set)
    misses: dict[int, int] = field(default_factory=dict)
    gpus: GpuRestarts = field(default_factory=GpuRestarts)
    gpu_gone: set[int] = field(default_factory=set)  # nodes judged for a GPU that no longer serves (gpu_gone)

    def update(self, unreachable: dict[int, str], started: float) -> None:
        self.gone.update(unreachable)
        for i in [i for i in self.since if i not in unreachable]:
            del self.since[i], self.rounds[i]
            self.judged.discard(i)
            self.serving.discard(i)
            self.misses.pop(i, None)
        for i in unreachable:
            self.since.setdefault(i, started)
            self.rounds[i] = self.rounds.get(i, 0) + 1

    def lost(self, window: float | None, now: float) -> list[tuple[int, float]]:
        """The nodes unseen for WINDOW seconds not judged yet (each judged once while it stays unseen)."""
        if window is None:
            return []
        out = [
            (i, now - t) for i, t in sorted(self.since.items())
            if now - t >= window and self.rounds[i] >= MIN_ROUNDS and i not in self.judged
        ]  # fmt: skip
        self.judged.update(i for i, _ in out)
        return out


def list_timeout(plan: Plan) -> float:
    """How long a round waits for a node's listing: a cut link answers nothing for minutes, so with
    `lost_after` the wait is that window (at least LIST_FLOOR s: a loaded node is slow, not lost)."""
    return LIST_TIMEOUT if plan.lost_after is None else min(LIST_TIMEOUT, max(LIST_FLOOR, plan.lost_after))


def check(w: Watcher, unreachable: dict[int, str], started: float, found: Found | None = None) -> None:
    """This round's unreachable nodes (its listing began at STARTED, FOUND what it listed): each one unseen
    past the window is lost, and acted on, unless its ranks still serve (`answering`); then, every GPU_EVERY
    seconds, the GPUs of the nodes the plan gives GPUs to (look_at_gpus)."""
    plan, now = w.t.plan, time.monotonic()
    w.unseen.update(unreachable, started)
    for index, unseen_for in w.unseen.lost(plan.lost_after, now):  # none without watch.lost_after
        if index in w.t.plan.substitutes:  # already replaced: it runs nothing of the plan
            continue
        window = f"watch.lost_after {plan.lost_after:g}s"
        saw = f"{plan.nodes[index].label}: saw it fail SSH for {unseen_for:.0f}s ({window})"
        serving = answering(w.t, index, unreachable, found or {})
        misses = 0 if serving else w.unseen.misses.get(index, 0) + 1
        w.unseen.misses[index] = misses
        if serving or (index in w.unseen.serving and misses < MIN_ROUNDS):
            w.unseen.judged.discard(index)  # asked again next round: lost once its ranks stop answering too
            if serving:
                still_serving(w, index, f"{saw}, but {serving}")
            continue
        judge(w, index, f"{saw}: lost")
    if now >= w.unseen.gpus_next:
        w.unseen.gpus_next = now + GPU_EVERY
        look_at_gpus(w, unreachable, found or {})


def look_at_gpus(w: Watcher, unreachable: dict[int, str], found: Found) -> None:
    """The GPUs of the nodes the plan gives GPUs to (none in a deployment without GPUs), `lost_after` set
    or not: a `drain` verdict excludes the node like a lost one; a `restart` verdict is noted for the
    groups on that GPU (note_restarts)."""
    plan = w.t.plan
    nodes = [i for i in gpu_health.gpu_nodes(plan) if i not in unreachable and i not in w.unseen.judged]
    # --peek: the kernel log's place stays where `status` and `doctor` left it (a fatal Xid holds anyway)
    seen = gpu_health.look(w.t, nodes, peek=True, timeout=GPU_TIMEOUT) if nodes else {}
    for index, why in drained(seen):
        w.unseen.judged.add(index)  # judged once (until the node is unseen and seen again)
        w.unseen.gone.add(index)
        if gpu_health.gpu_gone(seen[index]):
            w.unseen.gpu_gone.add(index)  # its ranks cannot finish what they hold: moved without a drain
        judge(w, index, f"{plan.nodes[index].label}: saw GPUs drain ({why}): excluded like a lost node")
    note_restarts(w, seen, found)


def note_restarts(w: Watcher, seen: dict, found: Found) -> None:
    """Each `restart` finding not acted on yet -> a reason for the running rank of each group that uses its
    GPU on that node (every GPU group there where the Xid's PCI bus is not one the query lists), if that
    rank's container is the one the previous look saw (see GpuRestarts). A node drained this round is left
    alone: its groups moved, or wait for a spare."""
    plan, noted = w.t.plan, w.unseen.gpus
    before = noted.containers
    for index, node in sorted(seen.items()):
        if isinstance(node, str) or node.verdict == "drain":
            continue
        acted = noted.acted.setdefault(index, set())
        restarts = [f for f in node.findings if f.verdict == "restart" and f.line and f.line not in acted]
        for finding in restarts if before is not None else []:
            for s in ranks_on_gpu(plan, index, finding.gpu):
                c = found.get((index, s.name))
                if c is not None and c.running and before.get((index, s.name)) == c.id + c.started_at:
                    why = f"{s.tag} GPU verdict restart ({finding.text.split(' [')[0]})"
                    noted.pending[(index, s.name)] = (why, c.id + c.started_at)
        acted.update(f.line for f in restarts)
        if len(acted) > ACTED_KEPT:  # bounded: a node logging without end cannot grow watch's memory
            noted.acted[index] = {f.line for f in node.findings if f.line}
    # a node not listed this round keeps its entries (its containers are compared again at the next look)
    listed = {key: c.id + c.started_at for key, c in found.items() if c.group is not None}
    seen_nodes = {key[0] for key in found}
    kept = {key: v for key, v in (before or {}).items() if key[0] not in seen_nodes}
    noted.containers = {**kept, **listed}


def ranks_on_gpu(plan: Plan, index: int, gpu: str | None) -> list[Service]:
    """The group ranks on node INDEX whose group uses GPU (an index as nvidia-smi lists it); every one
    with GPUs there when GPU is None (an Xid whose PCI bus maps to no GPU the query listed)."""
    on_node = [g for g in gpu_health.gpu_groups(plan) if index in g.node_indices]
    groups = {g.name for g in on_node if gpu is None or int(gpu) in g.gpus}
    return [s for s in plan.services if s.group in groups and s.node.index == index]


def gpu_restarts(w: Watcher, found: Found) -> dict[str, str]:
    """For watch's round: the ranks a GPU `restart` verdict asks to restart, rank name -> reason (the round
    turns it into its group's restart, as a hung rank's). Each is asked until its container is replaced
    (a restart under back-off waits, it is not dropped); one the plan no longer has (moved) is dropped."""
    pending, out = w.unseen.gpus.pending, {}
    planned = {(s.node.index, s.name) for s in w.t.plan.services}
    for key, (why, named) in list(pending.items()):
        c = found.get(key)
        if key not in planned or (c is not None and c.id + c.started_at != named):
            del pending[key]  # acted on: a new container, or the group lives elsewhere now
        elif c is not None and c.running:  # gone or stopped: dead() restarts it; unlisted: not seen this round
            out[key[1]] = why
    return out


def answering(t: Any, index: int, unreachable: dict[int, str], found: Found) -> str | None:
    """A second opinion before a node that fails SSH is judged lost: the health checks of its group ranks,
    asked through another reachable node's connection (what the rest of the deployment sees of it, not
    this machine's link to its sshd), a node of the same group first. Serving, said in words, only if every
    one of them passes and every rank of their groups elsewhere runs (a group broken elsewhere can only be
    recreated by moving it). None otherwise, and where nothing can vouch for the node: a rank there without
    an HTTP health check (ranks >= 1 of a multi-node Dynamo group), or an address that is not the node's
    alone (loopback, or shared by inventory nodes on different SSH ports: the witness would reach itself)."""
    plan = t.plan
    node = plan.nodes[index]
    here = [s for s in plan.services if s.node.index == index and s.group is not None]
    if not here or any(s.probe.kind != "http" for s in here) or not own_address(plan, node.address):
        return None
    groups = {s.group for s in here}
    elsewhere = [s for s in plan.services if s.group in groups and s.node.index != index]
    if any(s.node.index in unreachable or not (c := found.get((s.node.index, s.name))) or not c.running
           for s in elsewhere):  # fmt: skip
        return None
    peers = {s.node.index for s in elsewhere}
    candidates = sorted((n for n in plan.nodes if n.index != index and n.index not in unreachable),
                        key=lambda n: (n.index not in peers, n.index))  # fmt: skip
    if not candidates:
        return None
    witness = candidates[0]
    host = t.fleet.host(witness.index)
    for s in here:  # the first that does not pass ends it: one probe's wait per node and round at most
        try:
            probe = readiness.liveness_probe(s)  # plain SGLang's /health generates: slow under load
            status, body = host.http("GET", probe.url, timeout=PROBE_TIMEOUT, limit=PROBE_LIMIT)
        except Exception:  # noqa: BLE001 - no answer, one over the limit, the witness's SSH: never watch's end
            return None
        if not readiness.probe_passes(probe, status, body):
            return None
    said = f"{here[0].name} answers its" if len(here) == 1 else f"{', '.join(s.name for s in here)} answer their"
    return f"{said} health check through {witness.label}"


def own_address(plan: Plan, address: str) -> bool:
    """ADDRESS names one inventory node and is not loopback."""
    try:
        if ipaddress.ip_address(address).is_loopback:
            return False
    except ValueError:
        if address == "localhost":
            return False
    return sum(1 for n in plan.nodes if n.address == address) == 1


def still_serving(w: Watcher, index: int, saw: str) -> None:
    """Not replaced: a node whose ranks serve is not lost, and a spare beside it would run its group twice.
    Said once (until the node is seen again), in the audit log and as an alert: nothing can manage the node
    until its SSH is back."""
    if index in w.unseen.serving:
        return
    w.unseen.serving.add(index)
    if w.dry_run:
        w.progress.log(f"{saw}: not lost, not replaced; dry run: nothing done")
        return
    said = alerted(w, index, "fails SSH, its ranks serve: not replaced",
                   {"event": "node unreachable over SSH, still serving", "reason": saw})  # fmt: skip
    w.progress.log(f"{saw}: not lost, not replaced (fix its SSH); {said}")


def remove_stale(w: Watcher, found: dict[tuple[int, str], Container]) -> None:
    """A replaced node seen again still runs the ranks that moved off it: they would register beside their
    replacements. Removed (under the lock), said in one line."""
    plan = w.t.plan
    planned = {(s.node.index, s.name) for s in plan.services}
    moved = [
        c for key, c in sorted(found.items())
        if c.node_index in plan.substitutes and key not in planned and c.group is not None
    ]  # fmt: skip
    stale = [c for c in moved if c.node_index in w.unseen.gone]
    for i in sorted({c.node_index for c in moved} - w.unseen.gone):
        names = ", ".join(c.name for c in moved if c.node_index == i)
        line = (
            f"{plan.nodes[i].label} is replaced by a spare, as its labels say, but this watch never saw it lost:"
            f" its ranks ({names}) are left running; `launcher up` decides"
        )
        if line not in w.unseen.told:
            w.unseen.told.add(line)
            w.progress.log(line)
    if not stale:
        return
    names = ", ".join(f"{c.name} on {plan.nodes[c.node_index].label}" for c in stale)
    if w.dry_run:
        line = f"saw {names} back, replaced on a spare; would remove them; dry run: nothing done"
        if w.unseen.said != line:  # said once, not every round
            w.unseen.said = line
            w.progress.log(line)
        return
    site = locking.Site.of(w.t)
    try:
        lock = locking.acquire(site, "launcher watch")
    except locking.Locked as exc:
        w.progress.log(f"saw {names} back, replaced on a spare; not removed now: {exc} (tried again next round)")
        return
    try:
        remove(w.t, stale)
        lock.outcome = f"watch: removed {names}: replaced on a spare"
        w.progress.log(f"saw {names} back, replaced on a spare; removed them")
    except LauncherError as exc:
        w.progress.log(f"saw {names} back, replaced on a spare; removing them failed: {str(exc).splitlines()[0]}")
    finally:
        try:
            locking.release(site, lock)
        except Exception:
            pass


def drained(seen: dict) -> list[tuple[int, str]]:
    """The nodes whose GPU verdict says drain and exclude the node (gpu_health.look's answer), and why.
    A node whose tool cannot be read is not drained for that: it is said by `status` and `doctor`."""
    return [(i, n.summary()) for i, n in sorted(seen.items()) if not isinstance(n, str) and n.verdict == "drain"]


def judge(w: Watcher, lost: int, saw: str) -> None:
    """Move LOST's groups to the first spare that can take them (reachable, and with the GPUs the plan
    gives LOST, none of them to drain), or say why none can."""
    plan = w.t.plan
    need, unseen = gpu_health.expected_gpus(plan, lost), set(w.unseen.since) | w.unseen.judged
    # every reachable spare looked at together (one wait, not one per unfit spare), only where GPUs matter
    free = [n.index for n in spares.spare_nodes(plan) if n.index not in unseen] if need else []
    looked = gpu_health.look(w.t, free, peek=True, timeout=GPU_TIMEOUT) if free else {}

    def unfit(spare: Node) -> str | None:
        return gpu_health.spare_fault(looked.get(spare.index, "no answer"), need) if need else None

    try:
        spare = spares.choose(plan, lost, unseen=unseen, unfit=unfit)
        new = spares.substitute(w.t.loaded, plan, lost, spare.index)
    except spares.Refused as exc:
        no_spare(w, lost, saw, str(exc))
        return
    groups = spares.groups_on(plan, lost)
    if w.dry_run:
        w.progress.log(f"{saw}; would move {', '.join(groups)} to {spare.label}; dry run: nothing done")
        return
    replace(w, lost, spare, new, groups, saw)


def no_spare(w: Watcher, lost: int, saw: str, why: str) -> None:
    """Nothing can take the node's place: say so once, alert, and leave the rest serving."""
    plan = w.t.plan
    groups = ", ".join(spares.groups_on(plan, lost)) or "nothing of a group"
    if w.dry_run:
        w.progress.log(f"{saw}; cannot move it ({why}); would alert; dry run: nothing done")
        return
    said = alerted(w, lost, f"lost, not replaced: {why}",
                   {"event": "node lost, not replaced", "reason": why, "groups down": groups})  # fmt: skip
    w.progress.log(f"{saw}; not replaced: {why}; {groups} stay down there, the rest keep serving; {said}")


def alerted(w: Watcher, index: int, audit: str, document: dict[str, str]) -> str:
    """The node's event in the head's audit log (`watch: NODE AUDIT`) and, redacted, to the file's webhook
    (DOCUMENT with the deployment and the node) -> `alerted: audit log[, what the webhook answered]`."""
    plan, node = w.t.plan, w.t.plan.nodes[index].label
    locking.audit(locking.Site.of(w.t), f"watch: {node} {audit}")
    document = {"deployment": plan.deployment, "node": node, **document}
    sent = alert.webhook(plan, {k: plan.redactor()(v) for k, v in document.items()})
    return "alerted: audit log" + (f", {sent}" if sent else "")


def replace(w: Watcher, lost: int, spare: Node, new: Plan, groups: list[str], saw: str) -> None:
    """Under the lock: remove the groups' ranks still reachable, start them on the new node set, wait."""
    site = locking.Site.of(w.t)
    try:
        lock = locking.acquire(site, "launcher watch")
    except locking.Locked as exc:
        w.unseen.judged.discard(lost)  # judged again next round
        w.progress.log(f"{saw}; not replaced now: {exc} (tried again next round)")
        return
    try:
        if why := locking.taken_down(site):
            w.stop(why)
        lock.outcome = moved(w, lost, spare, new, groups)
        w.progress.log(f"{saw}; {lock.outcome.removeprefix('watch: ')}")
    finally:
        try:
            locking.release(site, lock)
        except Exception:
            pass


def moved(w: Watcher, lost: int, spare: Node, new: Plan, groups: list[str]) -> str:
    """Recreate GROUPS on NEW's nodes (the caller holds the lock) -> the audit line of the outcome."""
    t, progress, site = w.t, w.progress, locking.Site.of(w.t)
    old_plan, started = t.plan, time.monotonic()
    who = f"{spare.label} replaces {old_plan.nodes[lost].label} for {', '.join(groups)}"
    locking.audit(site, f"watch: {who}: recreating them there")
    old_members = [s for s in old_plan.services if s.group in groups]
    # a node lost over SSH is not listed again (it would cost the whole listing wait); a drained one is:
    # its old ranks are removed with the others
    reachable = sorted({s.node.index for s in old_members} - ({lost} if lost in w.unseen.since else set()))
    found, _ = list_services(t, reachable, timeout=LIST_TIMEOUT) if reachable else ({}, {})
    if lost not in w.unseen.since and lost not in w.unseen.gpu_gone:  # excluded for its GPUs, still serving
        drain_first(w, old_members, found)
    members = [s for s in new.services if s.group in groups]
    # From here on the spare is the plan's (labels on its ranks record the substitution), and so are the
    # units watch restarts: a failed remove or start below is retried on the spare, never on the lost node.
    t.plan = new
    w.rebuild(groups)
    try:
        # the record that makes the spare's labels count (runtime.lock.MOVES_FILE), before they exist
        record = spares.moves_record(new, new.substitutes)
        locking.on_head(site, lock_scripts.write_moves_script(new.state_dir, new.deployment, record))
        old = [c for s in old_members if (c := found.get((s.node.index, s.name))) is not None]
        if old:
            remove(t, old)
        start(t, members, progress, known=[])
        entry = new.entry
        check_endpoint = new.has_dynamo_frontend and entry is not None and entry.node.index != lost
        Waiter(t, progress, members, check_endpoint=check_endpoint).run()
    except LauncherError as exc:
        return f"watch: {who}: failed: {str(exc).splitlines()[0]}"
    return f"watch: {who}: serving again after {time.monotonic() - started:.1f}s"


def drain_first(w: Watcher, services: list[Service], found: Found) -> None:
    """The running workers of the groups leaving a node its GPU verdict excludes, drained before they are
    removed (as `down` drains, bounded by drain_timeout; each drain said and audited). A node lost over SSH
    is not drained: its groups lost a rank, and migration carries what they held once they are stopped; nor
    is one whose GPU no longer serves (fallen off the bus, missing: gpu_health.gpu_gone)."""
    running = [
        s for s in services
        if (c := found.get((s.node.index, s.name))) is not None and c.running and plan_drain.drained(s)
    ]  # fmt: skip
    if not running:
        return
    timeout = w.t.plan.drain_timeout
    w.progress.log(f"draining {len(running)} worker(s) before moving their group(s), up to {timeout:g}s")
    drains.drain_audited(w.t, running, w.progress.log, lambda d: "watch: moved off", "moving")
