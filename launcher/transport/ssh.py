"""A node over SSH: one connection per node (paramiko) for the whole command, opened on first
use; `~/.ssh/config`, the inventory's user/port/key/jump and ssh-agent honoured; host keys checked
(strict, or OpenSSH's accept-new); the jump host's key checked the same way; keepalives every few
seconds; HTTP to the node's ports through forwarded channels.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.plan.types import Node
from launcher.transport import http
from launcher.transport.errors import NodeError, classify
from launcher.transport.forward import Tunnel
from launcher.transport.host import DEFAULT_CONNECT_TIMEOUT, Completed, Options
from launcher.transport.session import Session, SessionError, Timeout
from launcher.transport.ssh_client import Client, host_config, paramiko
from launcher.transport.stream import Conn, Running

# paramiko logs every refused forwarded channel (a probe before the service listens) at ERROR level;
# the launcher reports what matters itself, per node.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """OpenSSH's StrictHostKeyChecking=accept-new: remember unknown hosts, refuse changed keys."""

    lock = threading.Lock()

    def __init__(self, path: Path):
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def tcp_connect(host: str, port: int, timeout: float) -> socket.socket:
    """The TCP connection under an SSH connection, with TCP_NODELAY: without it, each small write that
    follows an unacknowledged one (key exchange, channel open, every framed request) waits for the
    peer's delayed ACK, about 40 ms a time. paramiko would open this socket without the option."""
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SSHHost:
    """One node, one SSH connection, opened on first use and kept for the whole command."""

    def __init__(self, node: Node, options: Options):
        self.node = node
        self.options = options
        self._conn: Client | None = None
        self._gateway: Client | None = None  # the jump host's connection, when there is one
        self._lock = threading.Lock()
        self._session: Session | None = None  # the node's shell for every script (see `session`)
        self._session_lock = threading.Lock()
        self._sessions_work = True

    # -- connection -------------------------------------------------------------------------
    @property
    def connect_timeout(self) -> float:
        return self.options.connect_timeout or self.node.ssh.connect_timeout or DEFAULT_CONNECT_TIMEOUT

    def connect(self) -> None:
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return
            self._conn = self._open()

    def _open(self) -> Client:
        ssh = self.node.ssh
        timeout = self.connect_timeout
        tcp_timeout = max(1, math.ceil(timeout))  # a whole number of seconds, never 0 ("no timeout")
        known = Path(os.path.expanduser(ssh.known_hosts or "~/.ssh/known_hosts"))
        policy = self.options.host_key_policy or ssh.host_key_policy or "strict"

        def client(host: str, user: str | None, port: int | None) -> Client:
            """A client whose host key is checked against the same known_hosts, by the same policy (the jump
            host's too)."""
            try:
                c = Client(host, user, port, ssh.key, host_config(host))
            except Exception as exc:  # a file paramiko cannot read, a bad Port, a Match exec that fails...
                raise NodeError(self.node, "ssh config", str(exc) or type(exc).__name__) from None
            c.load_host_keys(known)
            accept = _AcceptNew(known) if policy == "accept-new" else paramiko.RejectPolicy()
            c.client.set_missing_host_key_policy(accept)
            return c

        conn = client(self.node.address, ssh.user, ssh.port)
        # A jump host from the inventory, or a ProxyJump from ~/.ssh/config: either way it is opened here,
        # its key checked and the hop bounded in time.
        jump = ssh.jump or conn.jump
        try:
            if jump and jump.lower() != "none":
                sock = self._through(jump, conn, timeout, tcp_timeout, client)
            elif conn.proxy_command:  # a ProxyCommand from ~/.ssh/config brings its own pipe
                sock = paramiko.ProxyCommand(conn.proxy_command)
            else:
                sock = tcp_connect(conn.host, conn.port, tcp_timeout)
            conn.open(sock, timeout, tcp_timeout)
        except NodeError:
            raise
        except Exception as exc:  # every failure becomes a per-node error, classified
            conn.close()
            kind, detail = classify(exc)
            raise NodeError(self.node, kind, detail) from None
        conn.transport.set_keepalive(self.options.keepalive)
        return conn

    def _through(self, jump: str, conn: Client, timeout: float, tcp_timeout: int, client: Callable) -> Any:
        """Open the jump host (host key checked) and a channel through it to the node, both bounded. The jump
        host's own SSH config entry gives its address, user, port and keys, never a hop of its own."""
        if "," in jump:
            raise NodeError(self.node, "error", f"ProxyJump {jump}: only one jump host is supported")
        user, _, rest = jump.rpartition("@")
        host, _, port = rest.partition(":")
        if port and not port.isdigit():
            raise NodeError(self.node, "error", f"ProxyJump {jump}: the port is not a number")
        gateway = client(host, user or None, int(port) if port else None)  # its own user, as OpenSSH
        try:
            gateway.open(tcp_connect(gateway.host, gateway.port, tcp_timeout), timeout, tcp_timeout)
            channel = gateway.transport.open_channel("direct-tcpip", (conn.host, conn.port), ("", 0), timeout=timeout)
        except Exception as exc:
            gateway.close()
            if isinstance(exc, paramiko.ChannelException):
                kind, detail = "unreachable", f"the jump host cannot reach {conn.host}:{conn.port} ({exc})"
            elif isinstance(exc, paramiko.SSHException) and "Timeout opening channel" in str(exc):
                kind, detail = "timed out", f"the jump host did not reach {conn.host}:{conn.port} in {timeout}s"
            else:
                kind, detail = classify(exc)
            raise NodeError(self.node, kind, f"via jump host {jump}: {detail}") from None
        self._gateway = gateway
        return channel

    def alive(self, timeout: float) -> bool:
        """Does the node still answer on this connection? (an SSH keepalive request, bounded in time)

        A cut link leaves TCP silent for minutes; this notices within `timeout`."""
        conn = self._conn
        transport = None if conn is None else conn.transport
        if transport is None or not transport.is_active():
            return False
        answered = threading.Event()

        def ask() -> None:
            try:
                transport.global_request("keepalive@openssh.com", wait=True)
                answered.set()
            except Exception:
                pass

        threading.Thread(target=ask, daemon=True).start()
        return answered.wait(timeout)

    def close(self) -> None:
        with self._lock:
            self._end_session()
            for c in (self._conn, self._gateway):
                if c is not None:
                    try:
                        c.close()
                    except Exception:
                        pass
            self._conn = self._gateway = None

    # -- commands ---------------------------------------------------------------------------
    def run(
        self,
        script: str,
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        out: Callable[[str], None] | None = None,
    ) -> Completed:
        """Run a shell script on the node. `stdin` never appears on a command line (secrets go here).

        With `out`, stdout is streamed to it chunk by chunk (for `logs -f`)."""
        self.connect()
        if out is None:
            return self._run_in_session(script, stdin, timeout or self.options.command_timeout)
        return self._stream(script, out, timeout)

    def _stream(self, script: str, out: Callable[[str], None], timeout: float | None) -> Completed:
        """The script on a channel of its own, its stdout and stderr handed to `out` as they come (decoded
        whole characters; nothing kept), until it exits or `timeout` passes. A channel closed under it
        (the connection lost, or closed by a watchdog) is an error, not an exit."""
        conn = self._conn  # (a watchdog may close the connection while this reads)
        if conn is None:
            raise NodeError(self.node, "connection lost", "closed before the command started")
        transport = conn.transport
        try:
            chan = transport.open_session(timeout=2 * self.connect_timeout)
            chan.exec_command(script)
            chan.shutdown_write()
        except Exception as exc:
            kind, detail = classify(exc)
            self.close()
            raise NodeError(self.node, kind, detail) from None
        decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(2)]
        try:
            code = self._pump(chan, lambda b: out(decoders[0].decode(b)), lambda b: out(decoders[1].decode(b)), timeout)
            out("".join(d.decode(b"", final=True) for d in decoders))
            if code == -1:  # (paramiko's value until one arrives; a real one is unsigned)
                raise NodeError(self.node, "connection lost", "the channel closed before the command ended")
            return Completed(code, "", "")
        finally:
            chan.close()

    def _pump(
        self, chan: Any, on_out: Callable[[bytes], None], on_err: Callable[[bytes], None], timeout: float | None
    ) -> int:
        """A running command's stdout and stderr handed over as they come, until its exit status (-1: the
        channel closed without one) or `timeout` (NodeError). Everything sent before the end is read: no data
        follows EOF, so once EOF is seen and both buffers are empty the rest is the exit status, waited for
        without polling (paramiko keeps the channel readable after EOF)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        transport = chan.get_transport()  # (the connection's, even once a watchdog has closed it)
        try:
            while True:
                ended = chan.eof_received or chan.closed  # before reading: no data comes after the end
                if chan.recv_ready():
                    on_out(chan.recv(65536))
                elif chan.recv_stderr_ready():
                    on_err(chan.recv_stderr(65536))
                elif ended and chan.status_event.wait(0.2):  # all read; an exit status, or a close without one
                    return chan.exit_status
                elif not transport.is_active():
                    raise NodeError(self.node, "connection lost", "the connection closed before the command ended")
                elif deadline is not None and time.monotonic() > deadline:
                    raise NodeError(self.node, "command timed out", f"after {timeout:.0f}s")
                elif not ended:
                    _wait_readable(chan, 0.2)
        except NodeError:
            raise
        except Exception as exc:
            kind, detail = classify(exc)
            self.close()
            raise NodeError(self.node, kind, detail) from None

    def _run_in_session(self, script: str, stdin: str | None, timeout: float) -> Completed:
        """Through the node's one shell session (see `session`); on a channel of its own when the
        session is busy with another thread's script or the node cannot keep one."""
        if not self._session_lock.acquire(blocking=False):
            return self._exec(script, stdin, timeout)
        try:
            self._open_session(min(timeout, 2 * self.connect_timeout))
            if self._session is None:
                return self._exec(script, stdin, timeout)
            try:
                return self._session.run(script, stdin, timeout)
            except SessionError:  # no bash or base64 there: the script never ran
                self._sessions_work = False
                self._end_session()
                return self._exec(script, stdin, timeout)
            except Timeout:
                self._end_session()
                raise NodeError(self.node, "command timed out", f"after {timeout:.0f}s") from None
            except Exception as exc:
                self._end_session()
                kind, detail = classify(exc)
                self.close()
                raise NodeError(self.node, kind, detail) from None
        except NodeError:
            raise
        except Exception as exc:  # opening the session
            kind, detail = classify(exc)
            self.close()
            raise NodeError(self.node, kind, detail) from None
        finally:
            self._session_lock.release()

    def _open_session(self, timeout: float) -> None:
        """The node's shell session, unless it is open already or the node cannot keep one (the
        caller holds `_session_lock`)."""
        if self._session is None and self._sessions_work:
            try:
                self._session = Session(self._conn.transport, timeout)
            except SessionError:
                self._sessions_work = False

    def prepare(self) -> None:
        """Connect and open the shell session now (in the background, while the caller does something
        else), so that the first script is sent at once."""
        self.connect()
        with self._session_lock:
            try:
                self._open_session(2 * self.connect_timeout)
            except Exception as exc:
                kind, detail = classify(exc)
                self.close()
                raise NodeError(self.node, kind, detail) from None

    def _end_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _exec(self, script: str, stdin: str | None, timeout: float) -> Completed:
        """One command on a fresh channel of the node's connection; stdin written, then closed.

        A script that exits without reading all of its stdin is fine (the rest is dropped)."""
        try:
            chan = self._conn.transport.open_session(timeout=min(timeout, 2 * self.connect_timeout))
        except Exception as exc:
            kind, detail = classify(exc)
            self.close()
            raise NodeError(self.node, kind, detail) from None
        out, err = bytearray(), bytearray()
        try:
            chan.exec_command(script)
            if stdin:
                try:
                    chan.sendall(stdin.encode())
                except OSError:
                    pass  # the command ended first
            chan.shutdown_write()
        except Exception as exc:
            chan.close()
            kind, detail = classify(exc)
            self.close()
            raise NodeError(self.node, kind, detail) from None
        try:
            code = self._pump(chan, out.extend, err.extend, timeout)
        finally:
            chan.close()
        return Completed(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def start(self, script: str) -> Running:
        """The script on a channel of its own, running while the caller writes its stdin and reads
        its stdout (an image or weights streamed in, progress lines out)."""
        self.connect()
        try:
            chan = self._conn.transport.open_session(timeout=2 * self.connect_timeout)
            chan.exec_command(script)
        except Exception as exc:
            kind, detail = classify(exc)
            self.close()
            raise NodeError(self.node, kind, detail) from None

        def exit_code(timeout: float | None) -> int | None:
            if not chan.status_event.wait(timeout):
                return None
            return chan.recv_exit_status()

        return Running(
            self.node.label,
            write=chan.sendall,
            close_stdin=chan.shutdown_write,
            read_out=lambda: chan.recv(65536),
            read_err=lambda: chan.recv_stderr(65536),
            exit_code=exit_code,
            kill=chan.close,
        )

    def open_port(self, port: int, address: str | None = None, timeout: float = 10.0) -> Conn:
        """A forwarded channel to `address:port` as the node sees it (its own address by default)."""
        chan = self._channel(address or self.node.address, port, timeout)
        chan.settimeout(None)
        return chan

    def http(
        self,
        method: str,
        url: str,
        body: Any = None,
        timeout: float = 5.0,
        limit: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """An HTTP request to a port on the node, through the SSH connection (no route needed)."""
        host, port, path = http.target(url, self.node.address)

        def open_channel() -> Any:
            return self._channel(host, port, timeout)

        return http.request(open_channel, method, host, port, path, body, timeout, limit, headers)

    def forward(self, host: str, port: int) -> Tunnel:
        """A local port whose connections are carried to HOST:PORT over this node's SSH connection."""
        self.connect()
        timeout = 2 * self.connect_timeout

        def open_channel() -> Any:
            chan = self._channel(host, port, timeout)
            chan.settimeout(None)  # a streamed answer may pause longer than any connect timeout
            return chan

        return Tunnel(open_channel, f"{host}:{port} via {self.node.label}")

    def _channel(self, host: str, port: int, timeout: float) -> Any:
        self.connect()
        try:
            chan = self._conn.transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as exc:
            raise ConnectionRefusedError(f"{host}:{port}: {exc}") from None
        except Exception as exc:
            kind, detail = classify(exc)
            self.close()
            raise NodeError(self.node, kind, detail) from None
        chan.settimeout(timeout)
        return chan


def _wait_readable(chan: Any, seconds: float) -> None:
    """Until the channel has something to read, or `seconds`; a channel closed meanwhile (its pipe gone)
    returns at once, for the caller to see it closed."""
    try:
        select.select([chan], [], [], seconds)
    except (OSError, ValueError):  # (a pipe gone, or a descriptor past select's 1024)
        time.sleep(seconds)
