"""`launcher down`: remove every container of the deployment on every node, found by label (so it
works after the file was edited), in parallel; idempotent; the reachable nodes are cleaned even when
some are not (those are named, exit 1).

First the Dynamo workers are drained (`operations.drain`: out of routing, their in-flight requests let
finish, up to the file's drain_timeout) while the frontend, etcd and NATS still run, so that every
stream in flight completes; `--now` skips that. Each drain is a line of the head node's audit log."""

from __future__ import annotations

import sys
import time

from launcher.operations import locking
from launcher.operations.context import Connection, Target, connected, target
from launcher.operations.drain import drain, listing, strays
from launcher.operations.nodes import NodeFailures
from launcher.output.console import say
from launcher.plan import drain as plan_drain
from launcher.runtime import lock as lock_scripts
from launcher.transport.errors import NodeError, describe


def run(config, config_opt, inventory, connection: Connection, now: bool = False) -> None:
    t = target(config, config_opt, inventory)
    with connected(t, connection):
        removed = down(t, command="launcher down " + " ".join(sys.argv[2:]), now=now)
    say(f"down: removed {sum(removed.values())} container(s) of {t.plan.deployment} on {len(removed)} node(s)")


OUT_OF_ROUTER = (
    "down: the SGLang workers it took out of the router stay out (nothing adds them back): finish with"
    " `launcher down`, or restart the router"
)


def drain_first(t: Target, now: bool) -> list[str]:
    """Drain the workers (not with `now`), each drain said as it ends; returns the audit lines."""
    if now:
        say("down --now: drain skipped, in-flight requests are cut")
        return ["drain skipped (--now)"]
    for group in plan_drain.not_drained(t.plan):
        why = "neither a Dynamo engine nor behind an sglang-router"
        say(f"down: group {group} has no drain ({why}): its requests in flight are cut")
    if not drainable(t):  # nothing the file runs can be drained: no listing to look for strays either
        return []
    # Replicas the file no longer has (`replicas:` lowered since `up`) are drained with the others.
    listed = listing(t)
    for line in t.adopt_substitutes(listed):  # a group `watch` moved to a spare is drained there
        say(f"down: {line}")
    workers = [s for p in plan_drain.phases(t.plan) for s in p] + strays(t, listed)
    if not workers:
        return []
    timeout = t.plan.drain_timeout
    say(f"down: draining {len(workers)} worker(s) first, up to {timeout:g}s (drain_timeout; --now skips it)")
    started = time.monotonic()
    try:
        drains = drain(t, lambda line: say(f"drain: {line}"), workers)
    except KeyboardInterrupt:
        say("down: interrupted during the drain, nothing removed; `launcher down --now` stops at once", to_stderr=True)
        if plan_drain.routed(t.plan.services):  # its removal from the router is not undone by the interrupt
            say(OUT_OF_ROUTER, to_stderr=True)
        raise
    except Exception as exc:  # the drain is a courtesy to the requests: its failure never keeps anything running
        say(f"down: the drain failed ({describe(exc)}); stopping anyway", to_stderr=True)
        return [f"drain failed: {describe(exc)}"]
    say(f"down: drained in {time.monotonic() - started:.1f}s")
    timeout = t.plan.drain_timeout
    return [f"drain {d.describe()} (drain_timeout {timeout:g}s)" for d in drains if d.outcome != "not running"]


def drainable(t: Target) -> bool:
    """Does any group of the file have a drain (a Dynamo engine, or workers behind the sglang-router)? A stray
    replica is drained as its group's engine is, so without one there is nothing to look for on the nodes
    (one round trip to every node fewer: `down` of a `command` or plain vLLM deployment)."""
    return any(plan_drain.drained(s) for s in t.plan.services) or bool(plan_drain.routed(t.plan.services))


def down(t: Target, command: str = "launcher down", now: bool = False) -> dict[int, int]:
    """Drain the workers (unless `now`), then remove everything, under the lock when the head answers (an
    unreachable head must not stop the others from being cleaned; it is reported with them). Leaves the
    `down` mark a `watch` obeys."""
    plan = t.plan
    mark = lock_scripts.mark_down_script(plan.state_dir, plan.deployment, command)
    # watch's record of its moves goes with the deployment: a later `up` starts from the file's placement
    mark += "; " + lock_scripts.clear_moves_script(plan.state_dir, plan.deployment)
    # The other nodes are connected to while the head takes the lock: nothing is removed before it is held.
    t.fleet.warm(i for i in t.fleet.hosts if i != plan.head.index)
    try:
        held = locking.acquire(locking.Site.of(t), command, audit=f"down ({command})", then=mark)
    except NodeError:
        held = None
    audit: list[str] = []
    try:
        audit = drain_first(t, now)
        results = t.fleet.run(t.runtime.remove_all_script(plan, now=now), timeout=300)
    finally:
        if held is not None:
            site = locking.Site.of(t)
            lines = "; ".join(lock_scripts.audit_script(site.state_dir, site.deployment, site.redact(a)) for a in audit)
            try:
                locking.release(site, held, then=lines)
            except Exception:
                pass
    done, failures = results.scripts()
    removed = {i: int((r.stdout.strip().splitlines() or ["0"])[-1] or 0) for i, r in done.items()}
    if failures:
        raise NodeFailures(f"down removed {sum(removed.values())} container(s), but failed", failures, plan)
    return removed
