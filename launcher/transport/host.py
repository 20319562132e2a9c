"""What every host the launcher talks to offers: run a script, stream its output, start a command that
keeps running while bytes flow both ways, reach a port.

`ssh.SSHHost` (a node over one SSH connection) and `local.LocalHost` (this machine, no SSH) both
follow `Host`; `fleet.Fleet` picks one per node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from launcher.plan.types import Node
from launcher.transport.stream import Conn, Running

if TYPE_CHECKING:
    from launcher.transport.forward import Forward

DEFAULT_CONNECT_TIMEOUT = 10.0


@dataclass
class Options:
    parallel: int = 32
    # Given on the command line (None: the node's `ssh:` settings decide, then the defaults).
    connect_timeout: float | None = None
    keepalive: int = 5
    command_timeout: float = 120.0
    host_key_policy: str | None = None  # "strict" or "accept-new"


@dataclass
class Completed:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def why(self) -> str:
        """What went wrong, in one line, for a per-node failure report."""
        return (self.stderr.strip() or self.stdout.strip() or f"exit {self.exit_code}").splitlines()[-1]


class Host(Protocol):
    node: Node

    def connect(self) -> None: ...

    def prepare(self) -> None:
        """Connect and get ready to run scripts (a node's shell session), before the first script."""
        ...

    def close(self) -> None: ...

    def alive(self, timeout: float) -> bool:
        """Does the node still answer? Bounded by `timeout`: a cut link stays silent for minutes."""
        ...

    def run(
        self,
        script: str,
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        out: Callable[[str], None] | None = None,
    ) -> Completed:
        """Run a shell script on the node; `stdin` never appears on a command line (secrets go there).
        With `out`, output is streamed to it chunk by chunk (for `logs -f`)."""
        ...

    def http(
        self,
        method: str,
        url: str,
        body: Any = None,
        timeout: float = 5.0,
        limit: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """An HTTP request to a port on the node (through the SSH connection when remote). `limit`: an
        untrusted answer (see `http.request`): at most that many bytes, the whole exchange within `timeout`.
        `headers`: more request headers (a key: never in argv, only in the request itself)."""
        ...

    def forward(self, host: str, port: int) -> Forward:
        """A local address (`.host`, `.port`) whose connections reach HOST:PORT as the node sees it
        (through the SSH connection when remote: like `ssh -L`). Close it (or use it as a context manager)."""
        ...

    def start(self, script: str) -> Running:
        """Start a script that keeps running: write its stdin as you go (`Running.write`, a stream far
        larger than memory), read its stdout as it comes (`read`, `readline`), end it (`kill`)."""
        ...

    def open_port(self, port: int, address: str | None = None, timeout: float = 10.0) -> Conn:
        """A byte stream to `address:port` as the node sees it (default: the node's own address),
        through the node's SSH connection when remote: the operator needs no route to the port."""
        ...
