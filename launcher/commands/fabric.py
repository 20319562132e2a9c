"""The fabric check (`launcher doctor --fabric`, and a step of `up` before any engine starts): on every
node at once, in the group's own image with its container settings, the launcher's own program
(launcher/remote/fabric_check.py) serves and tries every peer port, and each multi-node group's ranks
meet in torch.distributed's rendezvous exactly as the engines will, then all-reduce a known tensor and
measure bandwidth. Figures go to the head node's audit log."""

from __future__ import annotations

import json
import time
from importlib import resources

from launcher.commands import locking
from launcher.commands.context import Target
from launcher.errors import Exit
from launcher.output import console
from launcher.output.fabric_view import failures_table, summary
from launcher.output.progress import Progress
from launcher.plan import fabric
from launcher.plan.fabric_verdict import Line, Outcome, Report, judge, start_skew
from launcher.plan.types import Group
from launcher.runtime.fabric import jobs_script, parse_jobs
from launcher.transport.errors import describe


def check(t: Target, groups: list[Group] | None = None, running: set[str] | None = None) -> Report:
    """Run the check on every node concerned; `groups`: the groups whose rendezvous is proven (default:
    every rendezvous group none of whose services runs, as `running` names them)."""
    started = time.monotonic()
    plan = t.plan
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
    """Every node's jobs at once (whatever --parallel says: the ranks wait for each other)."""
    plan = t.plan
    program = resources.files("launcher.remote").joinpath("fabric_check.py").read_text()
    # Every node's peer window starts at the same moment, a little ahead: containers start unevenly.
    start_at = time.time() + fabric.ALIGN
    scripts = {}
    for i, node_jobs in jobs.items():
        commands = []
        for k, job in enumerate(node_jobs):
            spec = {**job.spec, "node": i, "start_at": round(start_at, 3), "margin": fabric.ALIGN}
            argv = [job.python, "-", json.dumps(spec)]
            commands.append(t.runtime.one_off_script(plan, job.service, argv, f"{plan.deployment}-fabric-{i}-{k}"))
        scripts[i] = jobs_script(commands)
    results = t.fleet.run(
        lambda h: scripts[h.node.index], list(scripts), together=True, stdin=program, timeout=fabric.budget(plan)
    )
    outcomes: dict[tuple[int, int], Outcome] = {}
    for i, r in results.items():
        count = len(jobs[i])
        if isinstance(r, Exception):
            outcomes.update({(i, k): describe(r) for k in range(count)})
            continue
        parsed = parse_jobs(r.stdout)
        for k in range(count):
            code, out, err = parsed.get(k, (r.exit_code, "", r.why()))
            outcomes[(i, k)] = _answer(code, out, err)
    return outcomes


def _answer(code: int, out: str, err: str) -> Outcome:
    """The program's JSON line, or why there is none (its last words, or the container engine's)."""
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    last = (err.strip().splitlines() or out.strip().splitlines() or [f"exit {code}"])[-1]
    return f"exit {code}: {last[:300]}"


def audit_line(t: Target, report: Report, command: str) -> str:
    """The figures kept in the head node's audit log: per group its rendezvous time and every node's
    bandwidth, and how many peer connections answered."""
    parts = [f"fabric check ({command}) {'ok' if report.ok else 'FAILED'} in {report.seconds:.1f}s"]
    for g in report.groups:
        took = max((r.rendezvous_s or 0) for r in g.ranks) if g.ok else None
        rates = " ".join(f"{t.plan.nodes[r.node].name}={r.ring_gbps}" for r in g.ranks if r.ring_gbps is not None)
        state = f"rendezvous {took:.2f}s" if took is not None else "rendezvous FAILED"
        parts.append(f"{g.name}: {state}, {g.ranks[0].backend or 'no'} send GB/s per node: {rates or '-'}")
    bad = sum(1 for p in report.pairs if p.ok is False)
    parts.append(f"peers: {len(report.pairs) - bad}/{len(report.pairs)} answered")
    return "; ".join(parts)


def before_start(t: Target, progress: Progress, groups: list[Group]) -> Report | None:
    """`up`'s step, under the lock, once old containers are gone and before anything starts: every
    rendezvous group about to be (re)created meets, every peer port answers, or nothing starts."""
    if not groups:
        return None
    names = ", ".join(f"{g.name} ({len(g.node_indices)} nodes)" for g in groups)
    progress.log(f"fabric: rendezvous of {names}, and {sum(len(p.users) for p in t.plan.peers)} peer connection(s)")
    try:
        report = check(t, groups)
    except KeyboardInterrupt:
        console.say(
            f"interrupted during the fabric check: nothing was started; its programs end by themselves within "
            f"{fabric.budget(t.plan):.0f} s",
            to_stderr=True,
        )
        raise Exit(130) from None
    locking.audit(locking.Site.of(t), audit_line(t, report, "up"))
    for line in summary(t.plan, report):
        progress.log("fabric: " + line)
    if not report.ok:
        failures_table(t.plan, report, console.stderr())
        console.say("nothing was started; fix the above, or `launcher up --skip-fabric`", to_stderr=True)
        raise Exit(1)
    return report
