"""`launcher lock status|break`: who holds the deployment lock (a stale one named as such, with why),
and removing it."""

from __future__ import annotations

from launcher.operations import locking
from launcher.operations.context import Connection, connected, target
from launcher.output.console import say

# The files' ssh settings apply, as everywhere; only the head node is reached.
CONNECTION = Connection(parallel=4)


def status(config, config_opt, inventory) -> None:
    t = target(config, config_opt, inventory)
    with connected(t, CONNECTION):
        held = locking.status(locking.Site.of(t))
    if held is None:
        say("not locked")
        return
    stale = held.dead() and "its process on this machine is gone" or held.stale()
    hint = f" — stale: {stale}; `launcher lock break` removes it (the next command takes it over)" if stale else ""
    say(f"locked by {held.describe()}{hint}")


def break_(config, config_opt, inventory) -> None:
    t = target(config, config_opt, inventory)
    with connected(t, CONNECTION):
        site = locking.Site.of(t)
        held = locking.break_lock(site)
        locking.audit(site, "lock broken" + (f" (was {held.describe()})" if held else ""))
    say(f"lock removed (was held by {held.describe()})" if held else "no lock was held")
