"""A lock on the head node, so two people cannot start or stop the same deployment at once.

`mkdir` is atomic on every filesystem; the directory holds who, when, which command. A lock whose
holder provably died (same machine, by machine id, and its pid is gone: a launcher killed with -9,
or a watch stopped mid-action) is taken over, with a line saying so; any other stale-looking lock is
only reported, and `launcher lock break` removes it explicitly.
"""

from __future__ import annotations

import getpass
import json
import os
import posixpath
import secrets
import shlex
import socket
import sys
import time
from dataclasses import dataclass

from launcher.errors import LauncherError
from launcher.transport import Host

q = shlex.quote


class Locked(LauncherError):
    exit_code = 1


@dataclass
class LockInfo:
    who: str
    host: str
    pid: int
    command: str
    since: float
    token: str
    machine: str = ""  # /etc/machine-id of the holder's machine: hostnames repeat, machine ids do not
    # The holder's PID namespace: containers on one machine share its machine id (or boot id), and
    # a pid means something only inside its own namespace.
    pidns: str = ""

    def describe(self) -> str:
        age = time.time() - self.since
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"{self.who}@{self.host} (pid {self.pid}) since {when} ({age:.0f}s ago), running `{self.command}`"

    def dead(self) -> bool:
        """Is the holder provably gone? Only decidable on its own machine, in its own PID namespace."""
        if not self.machine or self.machine != machine_id() or not self.pidns or self.pidns != pid_namespace():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False

    def stale(self) -> str | None:
        """Why this lock is stale, if we can tell from here."""
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return f"its process {self.pid} on this machine is gone"
            except PermissionError:
                pass
        if time.time() - self.since > 24 * 3600:
            return "it is over a day old"
        return None


def machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            with open(path) as f:
                if value := f.read().strip():
                    return value
        except OSError:
            continue
    return ""


def pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def lock_dir(state_dir: str, deployment: str) -> str:
    return posixpath.join(state_dir, deployment, "lock")


def acquire(
    host: Host, state_dir: str, deployment: str, command: str, audit_action: str | None = None, then: str = ""
) -> LockInfo:
    """Take the lock and, in the same round trip, append `audit_action` to the audit log and run `then`."""
    info = LockInfo(
        who=getpass.getuser(),
        host=socket.gethostname(),
        pid=os.getpid(),
        command=command,
        since=time.time(),
        token=secrets.token_hex(8),
        machine=machine_id(),
        pidns=pid_namespace(),
    )
    d = lock_dir(state_dir, deployment)
    audit_line = _audit_script(state_dir, deployment, audit_action) + "; " if audit_action else ""
    audit_line += f"{then}; " if then else ""
    script = (
        f"mkdir -p {q(posixpath.dirname(d))} && "
        f"if mkdir {q(d)} 2>/dev/null; then printf '%s\\n' {q(json.dumps(info.__dict__))} > {q(d + '/info')}; "
        f"{audit_line}echo ACQUIRED; "
        f"else cat {q(d + '/info')} 2>/dev/null; echo; echo HELD; fi"
    )
    result = host.run(script)
    if result.stdout.strip().endswith("ACQUIRED"):
        return info
    if not result.stdout.strip().endswith("HELD"):
        raise Locked(
            f"{host.node.label}: cannot create the lock in {d}: {result.stderr.strip() or result.stdout.strip()}"
        )
    holder = _parse(result.stdout)
    if holder is None:
        raise Locked(
            f"deployment {deployment} is locked ({d} exists, no holder recorded); `launcher lock break` removes it"
        )
    if holder.dead():
        # The lock directory stays; only its info is replaced, and only by whoever wins the `mkdir` of
        # a takeover directory inside it and still finds the dead holder's token there. A second
        # launcher doing the same at the same moment loses one of the two and reports the lock held.
        audit_takeover = _audit_script(state_dir, deployment, f"took over the lock of dead pid {holder.pid}")
        t, info_file = q(d + "/takeover"), q(d + "/info")
        takeover = (
            f"mkdir {t} 2>/dev/null || exit 0; "
            f"if grep -qF {q(holder.token)} {info_file} 2>/dev/null; then "
            f"printf '%s\\n' {q(json.dumps(info.__dict__))} > {q(d + '/info.new')} && "
            f"mv -f {q(d + '/info.new')} {info_file} && {audit_takeover} && {audit_line}echo ACQUIRED; fi; "
            f"rmdir {t}"
        )
        if host.run(takeover).stdout.strip().endswith("ACQUIRED"):
            sys.stderr.write(f"note: took over the lock of {holder.describe()}: that process is gone\n")
            return info
    stale = holder.stale()
    hint = (
        f" — stale: {stale}; `launcher lock break` removes it"
        if stale
        else "; wait, or `launcher lock break` if you are sure"
    )
    raise Locked(f"deployment {deployment} is locked by {holder.describe()}{hint}")


# `down` leaves this mark on the head node (and `up` removes it) so that a `watch` running elsewhere
# learns, once it holds the lock, that the deployment was taken down on purpose and must not be
# brought back.
def _down_mark(state_dir: str, deployment: str) -> str:
    return posixpath.join(state_dir, deployment, "down")


def mark_down_script(state_dir: str, deployment: str, command: str) -> str:
    line = json.dumps({"who": getpass.getuser(), "from": socket.gethostname(), "time": time.time(), "command": command})
    return f"printf '%s\\n' {q(line)} > {q(_down_mark(state_dir, deployment))}"


def clear_down_script(state_dir: str, deployment: str) -> str:
    return f"rm -f {q(_down_mark(state_dir, deployment))}"


def taken_down(host: Host, state_dir: str, deployment: str) -> str | None:
    """Who took the deployment down and when, if `down` ran since the last `up`."""
    text = host.run(f"cat {q(_down_mark(state_dir, deployment))} 2>/dev/null || true").stdout.strip()
    if not text:
        return None
    try:
        mark = json.loads(text)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(mark["time"])))
        return f"{mark['who']}@{mark['from']} ran `{mark['command']}` at {when}"
    except (ValueError, KeyError, TypeError):
        return "`launcher down` ran"


def _parse(text: str) -> LockInfo | None:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                return LockInfo(**json.loads(line))
            except (ValueError, TypeError):
                return None
    return None


def status(host: Host, state_dir: str, deployment: str) -> LockInfo | None:
    d = lock_dir(state_dir, deployment)
    result = host.run(f"cat {q(d + '/info')} 2>/dev/null || true")
    return _parse(result.stdout)


def release(host: Host, state_dir: str, deployment: str, info: LockInfo, audit_action: str | None = None) -> None:
    """Remove the lock only if it is still ours (the token matches); optionally log an audit line first."""
    d = lock_dir(state_dir, deployment)
    audit_line = _audit_script(state_dir, deployment, audit_action) + "; " if audit_action else ""
    host.run(f"{audit_line}grep -qF {q(info.token)} {q(d + '/info')} 2>/dev/null && rm -rf {q(d)} || true")


def break_lock(host: Host, state_dir: str, deployment: str) -> LockInfo | None:
    held = status(host, state_dir, deployment)
    host.run(f"rm -rf {q(lock_dir(state_dir, deployment))}")
    return held


def audit(host: Host, state_dir: str, deployment: str, action: str) -> None:
    """Append one line to the head node's audit log: when, who, from where, what."""
    host.run(_audit_script(state_dir, deployment, action))


def _audit_script(state_dir: str, deployment: str, action: str) -> str:
    line = json.dumps(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "who": getpass.getuser(),
            "from": socket.gethostname(),
            "action": action,
        }
    )
    path = posixpath.join(state_dir, deployment, "audit.log")
    return f"mkdir -p {q(posixpath.dirname(path))} && printf '%s\\n' {q(line)} >> {q(path)}"
