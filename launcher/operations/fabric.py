"""The fabric check (`launcher doctor --fabric`, and a step of `up` before any engine starts): on every
node at once, in the group's own image with its container settings, the launcher's own program
(launcher/remote/fabric_check.py) serves and tries every peer port, and each multi-node group's ranks
meet in torch.distributed's rendezvous exactly as the engines will, then all-reduce a known tensor and
measure bandwidth. Figures go to the head node's audit log."""

from __future__ import annotations

import dataclasses
import time

from launcher.errors import Exit, LauncherError
from launcher.operations import locking
from launcher.operations.context import Target
from launcher.operations.fabric_run import FabricRun
from launcher.output import console
from launcher.output.fabric_view import failures_table, summary
from launcher.output.progress import Progress
from launcher.plan import fabric
from launcher.plan.fabric_verdict import Line, Outcome, Report, judge, start_skew
from launcher.plan.types import Group, PeerPort, Service
from launcher.remote import program as remote_program


def check(
    t: Target,
    groups: list[Group] | None = None,
    running: frozenset[str] | None = None,
    peers: list[PeerPort] | None = None,
) -> Report:
    """Run the check on every node concerned; `groups`: the groups whose rendezvous is proven (default:
    every rendezvous group none of whose services runs, as `running` names them); `peers`: the peer ports
    tried (default: all the plan's)."""
    started = time.monotonic()
    plan = t.plan if peers is None else dataclasses.replace(t.plan, peers=peers)
    chosen = fabric.checked_groups(plan, running) if groups is None else groups
    skipped = [
        Line(
            g.leader,
            f"rendezvous:{g.name}",
            "skip",
            "the group runs: its dist-init port is the engine's now",
            "`up` checks it whenever it (re)creates the group; or `launcher down` first",
        )  # fmt: skip
        for g in plan.groups
        if g.rendezvous and g not in chosen
    ]
    jobs = fabric.jobs(plan, chosen)
    outcomes = run_jobs(t, jobs)
    pairs, results = judge(plan, jobs, outcomes, chosen)
    rows = fabric.interface_rows(plan, t.routes)
    return Report(pairs, results, rows, skipped, time.monotonic() - started, start_skew(outcomes))


def run_jobs(t: Target, jobs: dict[int, list[fabric.Job]]) -> dict[tuple[int, int], Outcome]:
    """Every node's jobs at once (whatever --parallel says: the ranks wait for each other), watched as
    they go (see fabric_run): a failing rank stops its group; Ctrl-C removes the run's containers."""
    program = remote_program("fabric_check")
    run = FabricRun(t, jobs, program)
    try:
        run.start()
        run.watch(fabric.budget(t.plan))
    except KeyboardInterrupt:
        run.remove_all()
        raise
    return run.outcomes()


def audit_line(t: Target, report: Report, command: str) -> str:
    """The figures kept in the head node's audit log: per group its rendezvous time and every node's
    bandwidth, and how many peer connections answered."""
    parts = [f"fabric check ({command}) {'ok' if report.ok else 'FAILED'} in {report.seconds:.1f}s"]
    for g in report.groups:
        took = max((r.rendezvous_s or 0) for r in g.ranks) if g.ok else None
        rates = " ".join(f"{t.plan.nodes[r.node].name}={r.ring_gbps}" for r in g.ranks if r.ring_gbps is not None)
        state = (
            f"rendezvous {took:.2f}s" if took is not None else "not finished" if g.cut_short else "rendezvous FAILED"
        )
        parts.append(f"{g.name}: {state}, {g.ranks[0].backend or 'no'} send GB/s per node: {rates or '-'}")
    bad = sum(1 for p in report.pairs if p.ok is False)
    parts.append(f"peers: {len(report.pairs) - bad}/{len(report.pairs)} answered")
    return "; ".join(parts)


def before_start(t: Target, progress: Progress, groups: list[Group]) -> Report | None:
    """`up`'s step, under the lock, once old containers are gone and before anything starts: every
    rendezvous group about to be (re)created meets, every peer port answers, or nothing starts."""
    if not groups:
        return None
    try:
        report = proven(t, progress, groups, "up")
    except KeyboardInterrupt:
        console.say(
            "interrupted during the fabric check: nothing was started; its containers were removed", to_stderr=True
        )
        raise Exit(130) from None
    if not report.ok:
        console.say("nothing was started; fix the above, or `launcher up --skip-fabric`", to_stderr=True)
        raise Exit(1)
    return report


class FabricFailed(LauncherError):
    """A rolled replica's ranks could not meet: its step is rolled back (the previous spec starts again)."""

    exit_code = 1


def before_roll_step(t: Target, progress: Progress, groups: list[Group], services: list[Service]) -> None:
    """A rolling step's multi-node replicas, once their old ranks stopped (their dist-init port free again)
    and before the new spec starts: their ranks meet and the step's peer ports answer (fabric.step_peers),
    or FabricFailed names the first failure (the roll then restores the previous spec, which had met
    there before). Ctrl-C goes to the roll as it comes."""
    peers = fabric.step_peers(t.plan, services)
    if groups and not (report := proven(t, progress, groups, "roll", peers)).ok:
        first = next((ln for ln in report.lines() if ln.status == "fail"), None)  # its detail names the nodes
        raise FabricFailed(f"the fabric check failed: {first.detail if first else 'see above'}")


def proven(
    t: Target, progress: Progress, groups: list[Group], command: str, peers: list[PeerPort] | None = None
) -> Report:
    """The check of GROUPS and PEERS (default: the plan's), its figures audited and logged, its failures shown."""
    names = ", ".join(f"{g.name} ({len(g.node_indices)} nodes)" for g in groups)
    tried = t.plan.peers if peers is None else peers
    progress.log(f"fabric: rendezvous of {names}, and {sum(len(p.users) for p in tried)} peer connection(s)")
    report = check(t, groups, peers=peers)
    locking.audit(locking.Site.of(t), audit_line(t, report, command))
    for line in summary(t.plan, report):
        progress.log("fabric: " + line)
    if not report.ok:
        failures_table(t.plan, report, console.stderr())
    return report
