"""`launcher down`: remove every container of the deployment on every node, found by label (so it
works after the file was edited), in parallel; idempotent; the reachable nodes are cleaned even when
some are not (those are named, exit 1)."""

from __future__ import annotations

import sys

from launcher.commands import locking
from launcher.commands.context import Connection, Target, connected, target
from launcher.commands.nodes import NodeFailures
from launcher.output.console import say
from launcher.runtime import lock as lock_scripts
from launcher.transport.errors import NodeError


def run(config, config_opt, inventory, connection: Connection) -> None:
    t = target(config, config_opt, inventory)
    with connected(t, connection):
        removed = down(t, command="launcher down " + " ".join(sys.argv[2:]))
    say(f"down: removed {sum(removed.values())} container(s) of {t.plan.deployment} on {len(removed)} node(s)")


def down(t: Target, command: str = "launcher down") -> dict[int, int]:
    """Remove everything, under the lock when the head answers (an unreachable head must not stop the
    others from being cleaned; it is reported with them). Leaves the `down` mark a `watch` obeys."""
    plan = t.plan
    mark = lock_scripts.mark_down_script(plan.state_dir, plan.deployment, command)
    # The other nodes are connected to while the head takes the lock: nothing is removed before it is held.
    t.fleet.warm(i for i in t.fleet.hosts if i != plan.head.index)
    try:
        held = locking.acquire(locking.Site.of(t), command, audit=f"down ({command})", then=mark)
    except NodeError:
        held = None
    try:
        results = t.fleet.run(t.runtime.remove_all_script(plan), timeout=300)
    finally:
        if held is not None:
            try:
                locking.release(locking.Site.of(t), held)
            except Exception:
                pass
    done, failures = results.scripts()
    removed = {i: int((r.stdout.strip().splitlines() or ["0"])[-1] or 0) for i, r in done.items()}
    if failures:
        raise NodeFailures(f"down removed {sum(removed.values())} container(s), but failed", failures, plan)
    return removed
