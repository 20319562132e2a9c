"""The deployment lock, the audit log and the `down` mark, as scripts for the head node.

`mkdir` is atomic on every filesystem; the lock directory holds who, when, which command. A lock whose
holder provably died (same machine, by machine id and PID namespace, and its pid is gone) may be taken
over; `operations.locking` decides that and runs these scripts.
"""

from __future__ import annotations

import getpass
import json
import os
import posixpath
import secrets
import socket
import time
from dataclasses import dataclass, field

from launcher.runtime.shell import q

ACQUIRED, HELD = "ACQUIRED", "HELD"


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
    outcome: str | None = field(default=None, compare=False)  # the audit line written on release

    @classmethod
    def mine(cls, command: str) -> LockInfo:
        return cls(
            who=getpass.getuser(),
            host=socket.gethostname(),
            pid=os.getpid(),
            command=command,
            since=time.time(),
            token=secrets.token_hex(8),
            machine=machine_id(),
            pidns=pid_namespace(),
        )

    def to_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if k != "outcome"}
        return json.dumps(data)

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


def parse_info(text: str) -> LockInfo | None:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                return LockInfo(**json.loads(line))
            except (ValueError, TypeError):
                return None
    return None


STATE_DIR_REFUSED = "LAUNCHER_STATE_DIR_REFUSED"


def guard_script(state_dir: str, create: bool = True) -> str:
    """Create state_dir with mode 0700 if it is missing; refuse it (print STATE_DIR_REFUSED and why, exit 3)
    unless it is a directory this user owns that nobody else may write to.

    Why: it holds the lock, the audit log and the services' env files. In a shared place (the default is
    /var/tmp/launcher, the same for every user) another user could create it first and then forge the
    lock or the audit log, or swap a run directory for one of their own. A link is followed only if this
    user owns it (in a sticky /var/tmp a link's owner may point it elsewhere at any time).

    `create` False (a script that only reads or stops what is there): a missing state_dir is fine."""
    make = '{ mkdir -p "$(dirname "$s")" && mkdir -m 0700 "$s"; } 2>/dev/null' if create else "why=-"
    # ${EUID:-$(id -u)}: bash's own variable, no fork of `id` in every script; sh falls back to `id -u`.
    return (
        f"s={q(state_dir)}; why=; "
        f'[ -e "$s" ] || [ -L "$s" ] || {make}; '
        'if [ "$why" = - ]; then why=; '
        'elif [ -L "$s" ] && [ "$(stat -c %u "$s")" != "${EUID:-$(id -u)}" ]; then '
        'why="a link owned by $(stat -c %U "$s")"; '
        'elif [ ! -e "$s" ]; then why="missing and cannot be created"; '
        'elif [ ! -d "$s" ]; then why="not a directory"; '
        'else read -r uid user mode <<< "$(stat -L -c \'%u %U %a\' "$s")"; '
        'if [ "$uid" != "${EUID:-$(id -u)}" ]; then why="owned by $user (uid $uid), mode $mode, not by $(id -un)"; '
        'elif [ $((8#$mode & 022)) != 0 ]; then why="mode $mode: writable by group or others"; fi; fi; '
        f'if [ -n "$why" ]; then echo "{STATE_DIR_REFUSED} $why"; exit 3; fi'
    )


def refusal(stdout: str) -> str | None:
    """Why guard_script refused the state_dir, from a script's output (None: it did not)."""
    for line in stdout.splitlines():
        if line.startswith(STATE_DIR_REFUSED + " "):
            return line[len(STATE_DIR_REFUSED) + 1 :].strip()
    return None


def lock_dir(state_dir: str, deployment: str) -> str:
    return posixpath.join(state_dir, deployment, "lock")


def acquire_script(state_dir: str, deployment: str, info: LockInfo, then: str = "") -> str:
    """mkdir the lock and write its info, then run `then` (audit lines, marks) in the same round trip.
    Prints ACQUIRED, or the holder's info and HELD."""
    d = lock_dir(state_dir, deployment)
    after = f"{then}; " if then else ""
    return (
        f"mkdir -p {q(posixpath.dirname(d))} && "
        f"if mkdir {q(d)} 2>/dev/null; then printf '%s\\n' {q(info.to_json())} > {q(d + '/info')}; "
        f"{after}echo {ACQUIRED}; "
        f"else cat {q(d + '/info')} 2>/dev/null; echo; echo {HELD}; fi"
    )


def takeover_script(state_dir: str, deployment: str, dead: LockInfo, info: LockInfo, then: str = "") -> str:
    """Replace a dead holder's info with ours. The lock directory stays; only whoever wins the `mkdir`
    of a takeover directory inside it, and still finds the dead holder's token there, writes: a second
    launcher doing the same at the same moment loses and reports the lock held."""
    d = lock_dir(state_dir, deployment)
    t, info_file = q(d + "/takeover"), q(d + "/info")
    audit = audit_script(state_dir, deployment, f"took over the lock of dead pid {dead.pid}")
    after = f"{then}; " if then else ""
    return (
        f"mkdir {t} 2>/dev/null || exit 0; "
        f"if grep -qF {q(dead.token)} {info_file} 2>/dev/null; then "
        f"printf '%s\\n' {q(info.to_json())} > {q(d + '/info.new')} && "
        f"mv -f {q(d + '/info.new')} {info_file} && {audit} && {after}echo {ACQUIRED}; fi; "
        f"rmdir {t}"
    )


def release_script(state_dir: str, deployment: str, info: LockInfo, then: str = "") -> str:
    """Run `then`, then remove the lock only if it is still ours (the token matches)."""
    d = lock_dir(state_dir, deployment)
    before = f"{then}; " if then else ""
    return f"{before}grep -qF {q(info.token)} {q(d + '/info')} 2>/dev/null && rm -rf {q(d)} || true"


def status_script(state_dir: str, deployment: str) -> str:
    return f"cat {q(lock_dir(state_dir, deployment) + '/info')} 2>/dev/null || true"


def break_script(state_dir: str, deployment: str) -> str:
    return f"rm -rf {q(lock_dir(state_dir, deployment))}"


def audit_script(state_dir: str, deployment: str, action: str) -> str:
    """Append one line to the head node's audit log: when, who, from where, what."""
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


# `down` leaves this mark on the head node (and `up` removes it) so that a `watch` running elsewhere
# learns, once it holds the lock, that the deployment was taken down on purpose and must not be
# brought back.
def _down_mark(state_dir: str, deployment: str) -> str:
    return posixpath.join(state_dir, deployment, "down")


def mark_down_script(state_dir: str, deployment: str, command: str) -> str:
    line = json.dumps({"who": getpass.getuser(), "from": socket.gethostname(), "time": time.time(), "command": command})
    return f"printf '%s\\n' {q(line)} > {q(_down_mark(state_dir, deployment))}"


def clear_down_script(state_dir: str, deployment: str) -> str:
    """Remove the mark, kept aside (`.cleared`) so that `restore_down_script` can put it back if this
    `up` stops before it changed anything (it takes the lock in the same round trip as its checks)."""
    mark = _down_mark(state_dir, deployment)
    return f"{{ mv -f {q(mark)} {q(mark + '.cleared')} 2>/dev/null || rm -f {q(mark + '.cleared')}; }}"


def restore_down_script(state_dir: str, deployment: str) -> str:
    mark = _down_mark(state_dir, deployment)
    return f"{{ mv -f {q(mark + '.cleared')} {q(mark)} 2>/dev/null || true; }}"


def read_down_script(state_dir: str, deployment: str) -> str:
    return f"cat {q(_down_mark(state_dir, deployment))} 2>/dev/null || true"


def parse_down_mark(text: str) -> str | None:
    """Who took the deployment down and when, from the mark's text (None: no mark)."""
    text = text.strip()
    if not text:
        return None
    try:
        mark = json.loads(text)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(mark["time"])))
        return f"{mark['who']}@{mark['from']} ran `{mark['command']}` at {when}"
    except (ValueError, KeyError, TypeError):
        return "`launcher down` ran"


# The moves `watch` made (lost node -> spare), written on the head node under the lock when it moves a
# group: the labels on the spare's ranks say which node they replace, but a label is the word of whoever
# can run a container on that node; a substitution is taken only where this record, which only the
# launcher writes (over SSH, under the lock), says the same (launcher.plan.spares). `down` removes it.
MOVES_FILE = "moves.json"
MOVES_BYTES = 64 << 10  # a few lines per lost node: anything longer is not the launcher's


def _moves(state_dir: str, deployment: str) -> str:
    return posixpath.join(state_dir, deployment, MOVES_FILE)


def write_moves_script(state_dir: str, deployment: str, moves: dict[str, dict[str, object]]) -> str:
    """Replace the record with MOVES (lost index -> {spare, lost_address, spare_address}), atomically."""
    path = _moves(state_dir, deployment)
    text = json.dumps(moves, sort_keys=True)
    return (
        f"mkdir -p {q(posixpath.dirname(path))} && printf '%s\\n' {q(text)} > {q(path + '.new')}"
        f" && mv -f {q(path + '.new')} {q(path)}"
    )


def read_moves_script(state_dir: str, deployment: str) -> str:
    return f"head -c {MOVES_BYTES + 1} {q(_moves(state_dir, deployment))} 2>/dev/null || true"


def clear_moves_script(state_dir: str, deployment: str) -> str:
    return f"rm -f {q(_moves(state_dir, deployment))}"
