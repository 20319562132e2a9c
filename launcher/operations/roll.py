"""Rolling `up`: the steps `launcher.plan.roll` chose, run one after the other, each on its replicas only.

A step: drain the replicas' workers (`operations.drain`: out of routing, their in-flight requests let
finish), stop them and keep them held (the runtime's `hold_script`: a renamed container, or run
directory), start the new spec, wait until it is ready, then send smoke requests through the frontend
until one has reached each new replica (its own /metrics request counter moved). Only then is the held
one removed and the next step begun. When the new replica fails, or Ctrl-C comes, it is removed and the
held one started again in its place (rollback): every replica runs one spec or the other, never half.
Every step is a line of the head node's audit log.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable

from launcher.errors import LauncherError
from launcher.operations import drain as drains
from launcher.operations import locking
from launcher.operations.context import Target
from launcher.operations.nodes import NodeFailures, by_node, start
from launcher.operations.waiter import ANSI, ServiceFailed, Waiter
from launcher.output.progress import Progress
from launcher.plan import drain as plan_drain
from launcher.plan import readiness
from launcher.plan import roll as plan_roll
from launcher.plan.metrics import metrics_url
from launcher.plan.reconcile import Changes
from launcher.plan.roll import Roll, Step
from launcher.plan.state import Container
from launcher.plan.types import Service
from launcher.runtime.base import held_name
from launcher.transport.errors import NodeError, describe

SMOKE_BYTES = 1 << 20  # a smoke answer is a few tokens: anything longer is not trusted
SMOKE_ATTEMPTS = 30  # requests through the frontend until one reached the new replica (round robin: 2-3)
LOG_LINES = 20
SCRIPT_SECONDS = 120.0


class DowntimeRefused(LauncherError):
    """A change that would leave a role with no running replica, without --allow-downtime."""

    exit_code = 2


class RollFailed(LauncherError):
    """A roll step failed and was rolled back; says which replicas run which spec."""

    exit_code = 1


class RollInterrupted(LauncherError):
    """Ctrl-C during a roll: the replica being replaced was rolled back; say which spec each runs."""

    exit_code = 130


def prepare(
    t: Target, progress: Progress, changes: Changes, current: list[Container], allow_downtime: bool, widest: int
) -> Roll:
    """The roll this `up` makes, taken out of `changes` (said, not yet run); refused (nothing changed)
    when a role would be unavailable and `--allow-downtime` was not given."""
    groups = plan_roll.rollable(t.plan, changes, current)
    roll = Roll(plan_roll.steps(t.plan, groups, widest), widest)
    down = plan_roll.downtime(t.plan, changes, current, groups)
    why = plan_roll.blocked(t.plan, changes, current)
    if down and not allow_downtime:
        raise DowntimeRefused(
            f"up refused, nothing changed: role {', '.join(down)} would be unavailable during its restart ("
            + (
                "; ".join(f"cannot roll: {why[r]}" for r in down if r in why)
                or "its only running replica's spec changed"
            )
            + "); pass --allow-downtime to restart it anyway"
            + ("" if all(r in why for r in down) else ", or give its group `replicas: 2` to roll it")
        )
    for role in down:
        progress.log(
            f"--allow-downtime: role {role} is unavailable during its restart"
            + (f" ({why[role]})" if role in why else "")
        )
    plan_roll.split(t.plan, changes, roll)
    for line in roll.describe():
        progress.log(line)
    return roll


def run(t: Target, progress: Progress, roll: Roll) -> None:
    """Every step in order; stops at the first that fails (rolled back, RollFailed) or at Ctrl-C."""
    done: list[str] = []
    for i, step in enumerate(roll.steps):
        rest = [u for s in roll.steps[i + 1 :] for u in s.units]
        unrouted: set[str] = set()  # the step's workers its drain took out of their router, until back in
        try:
            replace(t, progress, step, done, rest, roll.prove_fabric, unrouted)
        except Replaced as exc:  # Ctrl-C once the new replica had proved itself: the step is done
            raise RollInterrupted(
                f"interrupted: rolling up stopped. {step.label} was replaced ({exc.left}). On the new spec:"
                f" {', '.join([*done, *step.units])}.{specs_left(rest)} `launcher up` again resumes the roll."
            ) from None
        except KeyboardInterrupt:
            back = rollback(t, step, "interrupted (Ctrl-C)", unrouted=unrouted)
            raise RollInterrupted(
                f"interrupted: rolling up stopped. On the new spec: {', '.join(done) or 'none'}. On the previous"
                f" spec: {step.label} ({back}){', ' + ', '.join(rest) + ' (not reached)' if rest else ''}."
                f" `launcher up` again resumes the roll."
            ) from None
        done += step.units


class Replaced(KeyboardInterrupt):
    """Ctrl-C after a step's smoke passed (while its held copy was removed): `left` names what is left."""

    def __init__(self, left: str):
        super().__init__(left)
        self.left = left


ROUTE_BACK_SECONDS = 60.0  # for the router to list a ready worker it was told to add again
ROUTE_BACK_AFTER_INTERRUPT = 10.0  # the same after Ctrl-C (the user is waiting to get the prompt back)


def specs_left(rest: list[str]) -> str:
    return f" On the previous spec: {', '.join(rest)} (not reached)." if rest else ""


def replace(
    t: Target, progress: Progress, step: Step, done: list[str], rest: list[str], prove: bool, unrouted: set[str]
) -> None:
    """One step, as the module's docstring says: whatever fails before the smoke passed (a node, a listing,
    the audit, the new replica, its router not taking it back) is rolled back (RollFailed naming the cause
    and which replica runs which spec). `unrouted`: filled with the workers the drain took out of their router."""
    site = locking.Site.of(t)
    began = time.monotonic()
    started = False  # the new spec's services (their logs say why they failed; none before they start)
    try:
        progress.log(f"rolling {step.label}: draining")
        lines = drain(t, step.services, lambda line: progress.log(f"drain: {line}"), unrouted)
        locking.audit(site, f"roll {step.label}: " + ("; ".join(lines) or "nothing to drain"))
        hold(t, step)
        if prove:
            prove_fabric(t, progress, step)
        started = True
        start(t, step.services, progress)
        # ready, and registered: the frontend lists every worker again (the drained one had left it)
        Waiter(t, progress, step.services, check_endpoint=t.plan.has_dynamo_frontend).run()
        if missing := route_back(t, step, unrouted, progress.log):
            raise RouteFailed(f"not in its router's routing again: {'; '.join(missing)}")
        proof = smoke(t, step)
    except Exception as exc:  # KeyboardInterrupt is not one: `run` rolls back and says so
        reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        logs = new_logs(t, step) if started else ""
        back = rollback(t, step, reason, progress, unrouted)
        raise RollFailed(
            f"rolling up failed on replica {step.label}: {reason}\n{back}. On the new spec:"
            f" {', '.join(done) or 'none'}.{specs_left(rest)}{logs}"
        ) from None
    finish(t, progress, step, began, proof)


def prove_fabric(t: Target, progress: Progress, step: Step) -> None:
    """The step's multi-node replicas meet in the fabric check before their new spec starts, as `up` proves
    every group it (re)creates: a node that cannot reach its leader now fails the step, not a model load."""
    units = {s.group for s in step.services}
    groups = [g for g in t.plan.groups if g.rendezvous and g.name in units]
    if groups:
        from launcher.operations import fabric  # (imported only when it runs: start-up time)

        fabric.before_roll_step(t, progress, groups, step.services)


def finish(t: Target, progress: Progress, step: Step, began: float, proof: str) -> None:
    """The proven step's held copy removed and audited. The step is done whatever happens here: a failure
    or Ctrl-C leaves the held copy (named), never rolls back a replica that proved itself."""
    took = time.monotonic() - began
    left = ", ".join(f"{held_name(s.name)} on node {s.node.index}" for s in step.services)
    try:
        try:
            discard(t, step)
            left = ""
        except Exception as exc:  # the new replica serves: what is left is said, nothing rolled back
            progress.log(f"rolled {step.label}: its previous copy is left ({left}): {describe(exc)}")
        with contextlib.suppress(Exception):  # the audit line is not worth failing a proven step
            locking.audit(locking.Site.of(t), f"roll {step.label}: replaced in {took:.1f}s ({proof})")
    except KeyboardInterrupt:
        said = f"its previous copy is left: {left}" if left else "its previous copy removed"
        progress.log(f"rolled {step.label}: replaced in {took:.1f}s, {proof}; {said}")
        raise Replaced(said) from None
    progress.log(f"rolled {step.label}: replaced in {took:.1f}s, {proof}")


def drain(t: Target, services: list[Service], told: Callable[[str], None], unrouted: set[str]) -> list[str]:
    """The step's workers drained (prefill first), within drain_timeout; the lines said and audited. The
    plain SGLang workers behind the plan's router are drained through it (taken out first): those it took
    out go into `unrouted`."""
    deadline = time.monotonic() + t.plan.drain_timeout
    routers = routed(t, services)
    out = []
    for phase in plan_drain.order(services, set(routers)):
        on = by_node(phase)
        results = t.fleet.map(
            lambda h, on=on: drains.drain_node(t, h, on[h.node.index], deadline, {}, routers=routers), on
        )
        for _, result in sorted(results.items()):
            for d in [] if isinstance(result, Exception) else result:
                if d.out_of_router:
                    unrouted.add(d.name)
                if d.outcome != "not running":
                    told(d.describe())
                    out.append(f"drain {d.describe()}")
            if isinstance(result, Exception):
                out.append(f"drain failed: {describe(result)}")  # a courtesy: the stop goes on
                told(out[-1])
    return out


def routed(t: Target, services: list[Service]) -> dict[str, tuple[Service, str]]:
    """The step's plain SGLang workers behind the plan's sglang-router: its drain takes them out of the
    router first (the router would go on sending them requests while they stop), and route_back puts
    the new spec back in."""
    names = {s.name for s in services}
    return {name: r for name, r in plan_drain.routed(t.plan.services).items() if name in names}


def route_back(
    t: Target, step: Step, unrouted: set[str], told: Callable[[str], None], seconds: float = ROUTE_BACK_SECONDS
) -> list[str]:
    """The step's workers that its drain took out of their router, back in (the router would otherwise never
    send them a request again), each within its own `seconds`; those put back leave `unrouted`. Returns one
    line per worker still out (the caller decides what that fails)."""
    missing = []
    for name, (router, url) in routed(t, step.services).items():
        if name not in unrouted:
            continue
        deadline = time.monotonic() + seconds
        said = drains.reroute(t.fleet.host(router.node.index), router, url, deadline)
        told(f"router: {name}: {said}")
        if said.startswith("routed"):
            unrouted.discard(name)
        else:
            missing.append(f"{name}: {said}")
    return missing


class RouteFailed(LauncherError):
    exit_code = 1


def _on_nodes(t: Target, services: list[Service], script: Callable[[list[str]], str], what: str) -> None:
    names = {i: [s.name for s in ss] for i, ss in by_node(services).items()}
    _, failures = t.fleet.run(lambda h: script(names[h.node.index]), names, timeout=SCRIPT_SECONDS).scripts()
    if failures:
        raise NodeFailures(what, failures, t.plan)


def hold(t: Target, step: Step) -> None:
    _on_nodes(t, step.services, lambda n: t.runtime.hold_script(t.plan, n), f"cannot stop {step.label}")


def discard(t: Target, step: Step) -> None:
    _on_nodes(t, step.services, lambda n: t.runtime.discard_held_script(t.plan, n), "cannot remove the old replica")


def rollback(
    t: Target, step: Step, reason: str, progress: Progress | None = None, unrouted: set[str] | None = None
) -> str:
    """The new replica removed, the held one started again in its place (held first if the step had not
    got that far) and, given `progress`, waited for until ready; the workers out of their router put back
    (after Ctrl-C too, briefly: sglang-router checks a worker's health before it routes to it); audited.
    Returns what the user is told."""
    site = locking.Site.of(t)
    unrouted = unrouted if unrouted is not None else set()
    try:
        hold(t, step)
        _on_nodes(t, step.services, lambda n: t.runtime.restore_script(t.plan, n), "rollback failed")
        if progress is not None:
            Waiter(t, progress, step.services, check_endpoint=t.plan.has_dynamo_frontend).run()
    except Exception as exc:  # whatever it is (a node, a listing, the new replica), the user must hear it
        text = f"rollback of {step.label} FAILED ({str(exc).splitlines()[0]}): `launcher status` shows what runs"
    else:
        text = f"rolled back: {step.label} runs the previous spec again"
    text += routed_back(t, step, unrouted, progress)
    try:
        locking.audit(site, f"roll {step.label}: {reason}; {text}")
    except Exception:  # the audit line is not worth hiding the rollback's outcome
        pass
    return text


def routed_back(t: Target, step: Step, unrouted: set[str], progress: Progress | None) -> str:
    """route_back for a rollback: what is still out of its router, said (never raised: the rollback's own
    outcome is told first). After Ctrl-C, ROUTE_BACK_AFTER_INTERRUPT seconds a worker."""
    if not unrouted:
        return ""
    told = progress.log if progress is not None else (lambda line: None)
    try:
        seconds = ROUTE_BACK_SECONDS if progress is not None else ROUTE_BACK_AFTER_INTERRUPT
        missing = route_back(t, step, unrouted, told, seconds)
    except Exception as exc:  # (KeyboardInterrupt, a second Ctrl-C, is not caught: it leaves at once)
        missing = [f"{', '.join(sorted(unrouted))}: {describe(exc)}"]
    if not missing:
        return "; back in its router's routing"
    return f"; OUT of its router's routing ({'; '.join(missing)}): `launcher up` again routes it back"


def smoke(t: Target, step: Step) -> str:
    """Chat completions through the frontend until each new replica's own request counter has moved
    (the frontend routes round robin among the replicas): proof that it serves, not only that it runs."""
    plan = t.plan
    if not plan.endpoint:
        return "no endpoint to send a smoke request through"
    watched = [s for s in step.services if plan_drain.drained(s) and metrics_url(s)]
    before = {s.name: requests(t, s) for s in watched}
    entry = t.fleet.host(plan.entry.node.index)
    last = "no answer"
    for attempt in range(1, SMOKE_ATTEMPTS + 1):
        body = readiness.chat_request(plan.model_name)
        body["messages"][0]["content"] = f"Say hello ({secrets.token_hex(4)})."  # no prefix cache to stick to
        try:
            url = plan.endpoint + "/v1/chat/completions"
            status, answer = entry.http("POST", url, body, timeout=60, limit=SMOKE_BYTES)
            last = f"HTTP {status}" if status != 200 else "200 with no text"
            ok = status == 200 and readiness.answer_text(answer).strip()
        except ValueError as exc:  # an answer over SMOKE_BYTES
            last, ok = str(exc), False
        except (OSError, NodeError) as exc:
            last, ok = describe(exc), False
        moved = [s for s in watched if (requests(t, s) or 0) > (before[s.name] or 0)]
        if ok and not watched:  # no request counter of its own to watch (not a Dynamo worker)
            return f"{attempt} smoke request(s) until one answered (not attributable to the replica)"
        if ok and len(moved) == len(watched):
            return f"{attempt} smoke request(s) until one reached it"
        if not ok and attempt < SMOKE_ATTEMPTS:
            time.sleep(1)
    raise ServiceFailed(f"no smoke request reached {step.label} in {SMOKE_ATTEMPTS} tries (last: {last})")


def requests(t: Target, s: Service) -> float | None:
    url = metrics_url(s)
    try:
        status, body = t.fleet.host(s.node.index).http("GET", url, timeout=5, limit=plan_drain.MAX_METRICS_BYTES)
        return plan_roll.worker_requests(body) if status == 200 and isinstance(body, str) else None
    except (OSError, ValueError, NodeError):
        return None


def new_logs(t: Target, step: Step) -> str:
    return f"\n--- last {LOG_LINES} log lines of the new {step.label} ---\n{last_logs(t, step.services)}\n---"


def last_logs(t: Target, services: list[Service]) -> str:
    out = []
    for s in services:
        try:
            script = t.runtime.logs_script(t.plan, s.name, tail=LOG_LINES)
            text = t.fleet.host(s.node.index).run(script, timeout=30).stdout
        except Exception as exc:  # the node itself may be the cause
            text = f"(no logs: {describe(exc)})"
        out.append(ANSI.sub("", text).rstrip())
    return "\n".join(out)
