"""`launcher up`: check every node, then start everything in order, wait until the service really
answers, and say so; re-running converges (unchanged services are kept)."""

from __future__ import annotations

import contextlib
import shlex
import sys
import time

from launcher.errors import ConfigError, Exit, LauncherError
from launcher.operations import locking
from launcher.operations import roll as rolling
from launcher.operations.context import Connection, Target, connected, remember, target
from launcher.operations.drain import drain_before_removal
from launcher.operations.nodes import NodeFailures, StartInterrupted, check_nodes, remove, start
from launcher.operations.waiter import ServiceFailed, Waiter
from launcher.output import plan_views
from launcher.output.console import say
from launcher.output.progress import Progress
from launcher.plan import readiness, reconcile
from launcher.plan.reconcile import Changes
from launcher.plan.state import Container
from launcher.plan.types import Group, Plan, Service
from launcher.runtime import lock as lock_scripts
from launcher.runtime.base import LIST_MARK, parse_list
from launcher.runtime.lock import LockInfo
from launcher.transport.host import Completed

SMOKE_ATTEMPTS = 10


class Interrupted(LauncherError):
    """Ctrl-C (or SIGTERM) during `up`: say what already runs and how to remove it."""

    exit_code = 130


def run(
    config,
    config_opt,
    inventory,
    connection: Connection,
    *,
    skip_doctor: bool,
    wait: bool,
    skip_fabric: bool = False,
    profile: str | None = None,
    allow_downtime: bool = False,
    max_unavailable: int = 1,
) -> Target:
    """The verb: refuse stale flags, check the nodes (doctor), prove the fabric, converge, report the endpoint.
    `profile`: the file's profile to apply (None: none, not even the one the last `up` applied: `up` says
    what runs)."""
    t = target(config, config_opt, inventory, profile=profile or "")
    if t.plan.flag_errors:
        raise ConfigError(
            "engine flags that the declared version rejects (nothing was started):\n  "
            + "\n  ".join(t.plan.flag_errors)
            + f"\n`launcher migrate {t.path} --sglang VERSION` rewrites them",
            file=str(t.path),
        )
    remember(t)
    progress = Progress()
    command = "launcher up " + " ".join(sys.argv[2:])
    with connected(t, connection):
        t.fleet.warm(t.fleet.hosts)  # connecting while what comes next is imported
        if not skip_doctor:
            from launcher.operations import checks  # (imported only when it runs: start-up time)

            checks.before_up(t, progress)
        try:
            changes = up(t, progress, command, wait, not skip_fabric, allow_downtime, max_unavailable)
        except KeyboardInterrupt:
            say(
                f"interrupted: containers already started stay up. See them with `launcher status`; remove them all"
                f" with `launcher down -c {t.path}`.",
                to_stderr=True,
            )
            raise Exit(130) from None
    plan = t.plan
    state = "unchanged" if changes.unchanged else f"{len(changes.create)} service(s) (re)created" + rolled(changes)
    say(f"{'ready' if wait else 'running'}: {plan.deployment} on {len(plan.nodes)} node(s), {state}")
    if plan.endpoint and wait:
        say(f"endpoint: {plan.endpoint}  model: {plan.model_name}")
        say(plan_views.curl_command(plan.endpoint, plan.model_name))
    return t


def up(
    target: Target,
    progress: Progress,
    command: str = "launcher up",
    wait: bool = True,
    prove_fabric: bool = True,
    allow_downtime: bool = False,
    max_unavailable: int = 1,
) -> Changes:
    """Converge the nodes on the plan. With wait=False, return once every container runs (no readiness).
    `prove_fabric`: the fabric check runs before anything starts, for every rendezvous group (re)created.
    Replicas whose spec changed roll last, one step at a time (operations.roll), waited for even so."""
    plan = target.plan
    progress.log(f"checking {len(plan.nodes)} node(s)")
    current, held = check_and_lock(target, command)
    with locking.releasing(locking.Site.of(target), held) as lock:
        lock.outcome = "up failed"
        current = settle_held(target, progress, current)
        # a group `watch` moved to a spare stays there (check_nodes read it; held copies settled since)
        for line in dict.fromkeys(target.notes + target.adopt_substitutes(current)):
            progress.log(line)
        plan = target.plan
        changes = reconcile.compute(plan, current)
        roll = rolling.prepare(target, progress, changes, current, allow_downtime, max_unavailable)
        _announce(target, progress, changes)
        groups = to_prove(plan, changes)
        if prove_fabric and groups:
            from launcher.operations import fabric  # (imported only when it runs: start-up time)

            fabric.before_start(target, progress, groups)
        elif groups:
            progress.log(f"fabric: not checked (--skip-fabric): {', '.join(g.name for g in groups)}")
        started: list[Container] = []
        try:
            _run_phases(target, progress, changes, current, started, wait)
        except KeyboardInterrupt as exc:
            raise _interrupted(target, exc, started) from None
        if waits_before_roll(changes, wait):
            progress.log(
                "--no-wait: waiting until every service is ready before rolling (a drain needs the others serving)"
            )
            Waiter(target, progress, plan.services, check_endpoint=plan.has_dynamo_frontend).run()
        roll.prove_fabric = prove_fabric
        rolling.run(target, progress, roll)
        lock.outcome = "up done: " + ("unchanged" if changes.unchanged else f"{len(changes.create)} (re)created")
        lock.outcome += rolled(changes)
    return changes


def settle_held(target: Target, progress: Progress, current: list[Container]) -> list[Container]:
    """The held copies an interrupted or failed roll left (`reconcile.held`): restored, removed or kept,
    each said and audited, before anything else; returns what the nodes list after."""
    plan, runtime = target.plan, target.runtime
    actions = reconcile.held(plan, current)
    scripts: dict[int, list[str]] = {}
    for h in actions:
        progress.log(h.describe())
        if h.action == "remove":
            scripts.setdefault(h.copy.node_index, []).append(runtime.discard_held_script(plan, [h.base]))
        elif h.action == "restore":
            scripts.setdefault(h.copy.node_index, []).append(runtime.restore_script(plan, [h.base]))
    if not scripts:
        return current
    site = locking.Site.of(target)
    locking.audit(site, "; ".join(h.describe() for h in actions))
    listing = f"echo {shlex.quote(LIST_MARK)}\n{runtime.list_script(plan)}"
    results = target.fleet.run(lambda h: "\n".join([*scripts[h.node.index], listing]), scripts, timeout=120)
    done, failures = results.scripts()
    if failures:
        raise NodeFailures("cannot restore or remove a held copy (nothing else changed)", failures, plan)
    for i, answer in done.items():
        # the last listing printed: after the restores' own ones
        listed = parse_list(i, answer.stdout.rsplit(LIST_MARK, 1)[1])
        current = [c for c in current if c.node_index != i] + listed
    return current


def waits_before_roll(changes: Changes, wait: bool) -> bool:
    """`--no-wait` returns once containers run, but a roll must not drain a replica while its siblings still
    load: with replicas to roll, `up` waits until everything is ready even so."""
    return bool(changes.rolled) and not wait


def rolled(changes: Changes) -> str:
    return f", {len(changes.rolled)} replica(s) rolled" if changes.rolled else ""


def check_and_lock(target: Target, command: str) -> tuple[list[Container], LockInfo]:
    """Every node checked and the lock taken on the head in the same round trip as its check (with the
    audit line and the `down` mark cleared). Nodes not ready: the lock is released at once and the
    mark put back, so nothing changed but the audit log."""
    plan, site = target.plan, locking.Site.of(target)
    clear_down = lock_scripts.clear_down_script(plan.state_dir, plan.deployment)
    request = locking.attempt(site, command, audit=f"up started ({command})", then=clear_down)
    head = plan.head.index
    answers: dict[int, Completed] = {}
    try:
        current = check_nodes(target, then={head: request.script}, answers=answers)
    except NodeFailures:
        if head in answers:  # an unsafe state_dir on the head is the cause to name, not a failed check
            locking.refuse_unsafe(plan.state_dir, plan.nodes[head].label, answers[head].stdout)
        if head in answers and locking.acquired(answers[head]):
            request.info.outcome = "up failed: nodes not ready"
            restore = lock_scripts.restore_down_script(plan.state_dir, plan.deployment)
            with contextlib.suppress(Exception):  # the nodes' failure is what the user must see
                locking.release(site, request.info, then=restore)
        raise
    answer = answers.get(head, Completed(1, "", "the head's check printed no answer"))
    return current, locking.settle(request, answer)


def to_prove(plan: Plan, changes: Changes) -> list[Group]:
    """The rendezvous groups this `up` (re)creates: the fabric check proves them before they start
    (groups kept running hold their dist-init port; mocker-only files have none)."""
    created = {s.group for s in changes.create if s.group is not None}
    return [g for g in plan.groups if g.rendezvous and g.name in created]


def _announce(target: Target, progress: Progress, changes: Changes) -> None:
    """Say what will change, and remove what must go before anything starts."""
    if changes.unchanged:
        progress.log(f"unchanged: all {len(changes.keep)} service(s) already run as planned")
        return
    if not changes.create and not changes.remove:  # only a roll
        return
    for s in changes.create:
        progress.log(f"will (re)create {s.tag}: {changes.reasons.get(s.service)}")
    if changes.remove:
        drain_before_removal(target, changes.remove, progress.log)  # scaled in or recreated: requests finish first
        progress.log(f"removing {len(changes.remove)} old container(s)")
        remove(target, changes.remove)


def _interrupted(target: Target, exc: KeyboardInterrupt, started: list[Container]) -> Interrupted:
    unsure = ""
    if isinstance(exc, StartInterrupted):
        started += exc.found
        if exc.pending:
            nodes = ", ".join(str(i) for i in exc.pending)
            unsure = f" Start scripts on node(s) {nodes} had not answered: services there may start still."
    running = sorted({(c.node_index, c.name) for c in started})
    where = ", ".join(f"{name} on node {i}" for i, name in running) or "nothing yet"
    return Interrupted(
        f"interrupted: up stopped. Started so far and left running: {where}.{unsure} "
        f"`launcher status` shows them; `launcher down -c {target.plan.file}` removes everything."
    )


def phases(services: list[Service]) -> list[list[Service]]:
    """Start order: etcd and NATS, then the frontend, then every group with the router (which is
    ready only once the workers are) and the metrics stack (which scrapes whatever answers)."""
    return [
        [s for s in services if s.role in ("etcd", "nats")],
        [s for s in services if s.role == "frontend"],
        [s for s in services if s.group is not None or s.role in ("router", "prometheus", "grafana")],
    ]


def _run_phases(
    target: Target, progress: Progress, changes: Changes, current: list[Container], started: list[Container], wait: bool
) -> None:
    """Each phase started, and (waiting) ready before the next; `started` grows as containers start."""
    plan = target.plan
    create = {s.service for s in changes.create}
    # Old containers were removed already: only names still on a node need a `docker rm` first.
    kept = [c for c in current if c not in changes.remove]
    if wait:
        for i, phase in enumerate(phases(plan.services)):
            started += start(target, [s for s in phase if s.service in create], progress, known=kept)
            if i < 2 and phase:
                Waiter(target, progress, phase).run()
    else:
        # Nothing is waited for between phases: one script per node, its services in phase order (etcd and
        # NATS, then the frontend, then the ranks), not one round trip per phase on the head.
        in_order = [s for phase in phases(plan.services) for s in phase if s.service in create]
        started += start(target, in_order, progress, known=kept)
    if wait:
        Waiter(target, progress, plan.services, check_endpoint=plan.has_dynamo_frontend).run()
        if plan.endpoint:
            progress.log("smoke test: " + smoke_test(target))
    elif not all_running(plan.services, current, started):
        Waiter(target, progress, plan.services, running_only=True).run()


def all_running(services: list[Service], before: list[Container], started: list[Container]) -> bool:
    """Does every planned service run, judging by what the nodes last reported (no extra round trip)?"""
    latest = {(c.node_index, c.name): c for c in before}
    latest.update({(c.node_index, c.name): c for c in started})
    return all((c := latest.get((s.node.index, s.name))) is not None and c.running for s in services)


def smoke_test(target: Target, attempts: int = SMOKE_ATTEMPTS) -> str:
    """One short chat completion through the endpoint, whose answer must carry text; retried briefly
    (routing may lag registration)."""
    plan = target.plan
    host = target.fleet.host(plan.entry.node.index)
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            request = readiness.chat_request(plan.model_name)
            url = plan.endpoint + "/v1/chat/completions"
            status, body = host.http("POST", url, request, timeout=60, limit=rolling.SMOKE_BYTES)
        except (OSError, ValueError) as exc:  # ValueError: an answer over SMOKE_BYTES
            last = str(exc)
        else:
            if status == 200:
                text = readiness.answer_text(body).strip()
                if not text:
                    # A 200 with no text is what clients count as a failed request (AIPerf does).
                    raise ServiceFailed(
                        f"smoke test failed: {plan.endpoint} answered 200 but with no text: {body}"[:400]
                    )
                return f"200 OK: {text[:60]!r}"
            last = f"HTTP {status}: {str(body)[:300]}"
        if attempt < attempts:
            time.sleep(1)
    raise ServiceFailed(f"smoke test failed: a chat completion through {plan.endpoint} answered {last}")
