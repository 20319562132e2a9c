"""One shell per node for the whole command, fed script after script over one SSH channel.

Why: every new SSH exec channel starts the login user's shell, which reads `~/.bashrc` even for a
non-interactive command (bash does so when sshd starts it); on real servers that costs a tenth of a
second and more, paid again for every round trip. This session pays it once: the login shell (rc files
read once, its exported environment kept: PATH and the like) execs a plain `sh` that reads framed
requests from its stdin. Each request is one line:

    __launcher TOKEN SCRIPT_B64 STDIN_B64

`__launcher` decodes the script and runs it in a fresh `bash --norc --noprofile -c` (so `exit` and
`set -e` stay inside it), with the decoded stdin as its standard input (secrets travel only through
pipes, never argv), then prints `@@end TOKEN CODE` on stdout and `@@end TOKEN` on stderr. `--norc`
matters: `exec sh` resets bash's SHLVL, so a plain `bash -c` in the session would count as a shell
started by sshd and read `~/.bashrc` again for every script (with `pyenv init` and the like, a tenth
of a CPU-second each time). BASH_ENV, which even `--norc` obeys, is dropped for the same reason: the
login shell already read whatever it names. The token is random per request,
so no output can fake the end. A request that times out closes the session (its script with it);
the next request opens a new one.
"""

from __future__ import annotations

import base64
import secrets
import select
import time
from typing import Any

from launcher.transport.host import Completed

# Defined once per session (READY is formatted with the session's token). `printf '%s'` is a builtin:
# the data never appears in a process's argv.
PRELUDE = r"""
unset BASH_ENV
__launcher() {
  printf '%s' "$3" | base64 -d | bash --norc --noprofile -c "$(printf '%s' "$2" | base64 -d)"
  __rc=$?
  printf '\n@@end %s %s\n' "$1" "$__rc"
  printf '\n@@end %s\n' "$1" >&2
}
"""
READY = "printf '@@ready %s\\n' {token}; printf '@@ready %s\\n' {token} >&2\n"
# The login shell runs this once: a shell without rc files that reads requests from stdin.
NO_SESSION = 97
START = f"command -v bash >/dev/null && command -v base64 >/dev/null && exec sh -s || exit {NO_SESSION}"


class SessionError(Exception):
    """The session cannot be used (no bash or base64 on the node): run scripts on their own channels."""


class Timeout(Exception):
    pass


class Session:
    """The first request is sent with the prelude, without waiting for the shell to say it is ready
    (one round trip fewer per node): whatever the login shell printed before the ready line (a motd,
    an rc file's chatter) is dropped from that request's output."""

    def __init__(self, transport: Any, timeout: float):
        self.chan = transport.open_session(timeout=timeout)
        self.chan.exec_command(START)
        self.ready: bytes | None = f"@@ready {secrets.token_hex(8)}\n".encode()
        self.chan.sendall(PRELUDE.encode() + READY.format(token=self.ready.split()[1].decode()).encode())

    def run(self, script: str, stdin: str | None, timeout: float) -> Completed:
        token = secrets.token_hex(8)
        line = " ".join(
            [
                "__launcher",
                token,
                base64.b64encode(script.encode()).decode(),
                base64.b64encode((stdin or "").encode()).decode() or "''",
            ]
        )
        self.chan.sendall(line.encode() + b"\n")
        out_mark = f"\n@@end {token} ".encode()
        err_mark = f"\n@@end {token}\n".encode()
        out, err = self._read_until(out_mark, err_mark, time.monotonic() + timeout)
        if out is None:
            if self.ready is not None and self.chan.exit_status_ready() and self.chan.recv_exit_status() == NO_SESSION:
                raise SessionError("no shell session (bash and base64 are needed)")
            if self.chan.closed or self.chan.exit_status_ready():
                raise EOFError("the node's shell session ended")
            raise Timeout
        if self.ready is not None:  # the session's first answer: what came before the ready lines goes
            out, err = out.partition(self.ready)[2], err.partition(self.ready)[2]
            self.ready = None
        body, _, tail = out.partition(out_mark)
        code = int(tail.split(b"\n", 1)[0] or 255)
        return Completed(code, body.decode(errors="replace"), err.partition(err_mark)[0].decode(errors="replace"))

    def _read_until(
        self, out_mark: bytes, err_mark: bytes | None, deadline: float, whole_line: bool = True
    ) -> tuple[bytes | None, bytes]:
        """Read both streams until stdout holds `out_mark` (and, `whole_line`, the rest of its line)
        and stderr `err_mark`. (None, stderr) when the deadline passes or the session ends first."""
        out, err = bytearray(), bytearray()
        while True:
            if self.chan.recv_ready():
                out += self.chan.recv(65536)
                continue
            if self.chan.recv_stderr_ready():
                err += self.chan.recv_stderr(65536)
                continue
            at = out.find(out_mark)
            line_done = at >= 0 and (not whole_line or out.find(b"\n", at + len(out_mark)) >= 0)
            if line_done and (err_mark is None or err_mark in err):
                return bytes(out), bytes(err)
            if self.chan.closed or self.chan.exit_status_ready() or time.monotonic() > deadline:
                return None, bytes(err)
            select.select([self.chan], [], [], 0.05)

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:
            pass
