"""The deployment lock on the head node, so two people cannot start or stop one deployment at once.

`held(...)` is the lock as a context manager (Kamal's `with_lock`): taken on entry (with an audit line
and any extra script in the same round trip), released on exit if it is still ours, with the outcome
the body set as the closing audit line. A lock whose holder provably died is taken over, with a note;
any other stale-looking lock is only reported, and `launcher lock break` removes it explicitly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from launcher.errors import LauncherError, one_line
from launcher.operations.context import Target
from launcher.runtime import lock as scripts
from launcher.runtime.lock import LockInfo
from launcher.transport.host import Completed, Host


class Locked(LauncherError):
    exit_code = 1


class UnsafeStateDir(LauncherError):
    """state_dir is another user's, or others may write to it: bad input, nothing was started."""

    exit_code = 2


@dataclass(frozen=True)
class Site:
    """Where a deployment's lock lives: the head node's host, its state_dir, the deployment's name."""

    head: Host
    state_dir: str
    deployment: str
    # The plan's redactor: the audit log and the lock's record of the command line hold no secret.
    redact: Callable[[str], str] = str

    @classmethod
    def of(cls, target: Target) -> Site:
        return cls(target.head, target.plan.state_dir, target.plan.deployment, target.plan.redactor())


def on_head(site: Site, script: str) -> Completed:
    """Run a lock/audit script on the head node after the state_dir check (created 0700, else refused)."""
    result = site.head.run(scripts.guard_script(site.state_dir) + "\n" + script)
    refuse_unsafe(site.state_dir, site.head.node.label, result.stdout)
    return result


def refuse_unsafe(state_dir: str, label: str, stdout: str) -> None:
    """Raise UnsafeStateDir if a node script's guard refused its state_dir (any node's, not only the head's)."""
    why = scripts.refusal(stdout)
    if why is not None:
        raise UnsafeStateDir(  # what the node said, on one line and bounded: its stat output is not ours
            f"state_dir {one_line(state_dir)} on {label}: {one_line(why[:200])}; another user"
            " could forge the lock or swap what runs from it: make it yours alone (chown, chmod 0700), or set"
            " state_dir to a directory of your own (e.g. /var/tmp/launcher-$USER; it is created 0700)"
        )


@dataclass(frozen=True)
class Attempt:
    """A request for the lock, sent on its own (`acquire`) or inside another script on the head (`up`
    sends it with the head's check: one round trip fewer); `settle` reads the head's answer."""

    site: Site
    info: LockInfo
    after: str  # the audit line and the caller's script, run once the lock is taken

    @property
    def script(self) -> str:
        """The state_dir check (created 0700, else refused: `settle` says so), then the lock."""
        lock = scripts.acquire_script(self.site.state_dir, self.site.deployment, self.info, self.after)
        return scripts.guard_script(self.site.state_dir) + "\n" + lock


def attempt(site: Site, command: str, audit: str | None = None, then: str = "") -> Attempt:
    audit_line = scripts.audit_script(site.state_dir, site.deployment, site.redact(audit)) if audit else ""
    return Attempt(site, LockInfo.mine(site.redact(command)), "; ".join(x for x in (audit_line, then) if x))


def acquire(site: Site, command: str, audit: str | None = None, then: str = "") -> LockInfo:
    """Take the lock and, in the same round trip, append `audit` to the audit log and run `then`."""
    request = attempt(site, command, audit, then)
    return settle(request, site.head.run(request.script))


def acquired(result: Completed) -> bool:
    """Did the head's answer to `Attempt.script` say the lock is ours now?"""
    return result.stdout.strip().endswith(scripts.ACQUIRED)


def settle(request: Attempt, result: Completed) -> LockInfo:
    """The lock, from the head's answer to `request.script`: ours, taken over from a dead holder, or
    `Locked` naming who holds it (`UnsafeStateDir` when the head refused its state_dir)."""
    site, info, answer = request.site, request.info, result.stdout.strip()
    refuse_unsafe(site.state_dir, site.head.node.label, result.stdout)
    if acquired(result):
        return info
    where = scripts.lock_dir(site.state_dir, site.deployment)
    if not answer.endswith(scripts.HELD):
        raise Locked(f"{site.head.node.label}: cannot create the lock in {where}: {result.stderr.strip() or answer}")
    holder = scripts.parse_info(result.stdout)
    if holder is None:
        raise Locked(
            f"deployment {site.deployment} is locked ({where} exists, no holder recorded);"
            " `launcher lock break` removes it"
        )
    if holder.dead() and _take_over(site, holder, info, request.after):
        sys.stderr.write(f"note: took over the lock of {holder.describe()}: that process is gone\n")
        return info
    stale = holder.stale()
    hint = (
        f" — stale: {stale}; `launcher lock break` removes it"
        if stale
        else "; wait, or `launcher lock break` if you are sure"
    )
    raise Locked(f"deployment {site.deployment} is locked by {holder.describe()}{hint}")


def _take_over(site: Site, dead: LockInfo, info: LockInfo, after: str) -> bool:
    script = scripts.takeover_script(site.state_dir, site.deployment, dead, info, after)
    return on_head(site, script).stdout.strip().endswith(scripts.ACQUIRED)


def release(site: Site, info: LockInfo, then: str = "") -> None:
    """Remove the lock if it is still ours; `then` and the closing audit line (`info.outcome`) first."""
    outcome = site.redact(info.outcome) if info.outcome else ""
    audit_line = scripts.audit_script(site.state_dir, site.deployment, outcome) if outcome else ""
    before = "; ".join(x for x in (then, audit_line) if x)
    on_head(site, scripts.release_script(site.state_dir, site.deployment, info, before))


@contextmanager
def held(site: Site, command: str, audit: str | None = None, then: str = "") -> Iterator[LockInfo]:
    """The lock for the body's duration. Set `.outcome` on what it yields to close with an audit line.
    A failed release is never allowed to hide the body's own outcome."""
    with releasing(site, acquire(site, command, audit, then)) as info:
        yield info


@contextmanager
def releasing(site: Site, info: LockInfo) -> Iterator[LockInfo]:
    """A lock already taken (see `held`), released when the body ends, however it ends."""
    try:
        yield info
    finally:
        try:
            release(site, info)
        except Exception:
            pass


def status(site: Site) -> LockInfo | None:
    return scripts.parse_info(on_head(site, scripts.status_script(site.state_dir, site.deployment)).stdout)


def break_lock(site: Site) -> LockInfo | None:
    was = status(site)
    on_head(site, scripts.break_script(site.state_dir, site.deployment))
    return was


def audit(site: Site, action: str) -> None:
    on_head(site, scripts.audit_script(site.state_dir, site.deployment, site.redact(action)))


def taken_down(site: Site) -> str | None:
    """Who took the deployment down and when, if `down` ran since the last `up`."""
    return scripts.parse_down_mark(on_head(site, scripts.read_down_script(site.state_dir, site.deployment)).stdout)
