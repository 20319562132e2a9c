"""Run commands on many nodes at once: one SSH connection per node (fabric), bounded fan-out,
errors gathered per node, HTTP to a node's own ports tunnelled through its SSH connection.

A node whose address is local (127.0.0.1/localhost) runs commands directly, without SSH.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import paramiko

from launcher.errors import LauncherError
from launcher.model import Node

# paramiko logs every refused forwarded channel (a probe before the service listens) at ERROR level;
# the launcher reports what matters itself, per node.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

T = TypeVar("T")
LOCAL_ADDRESSES = {"127.0.0.1", "localhost", "::1"}


class NodeError(LauncherError):
    """A node could not be reached or lost its connection. `kind` tells the cause apart."""

    def __init__(self, node: Node, kind: str, detail: str):
        self.node = node
        self.kind = kind
        self.detail = detail
        super().__init__(f"{node.label}: {kind}: {detail}")


@dataclass
class Options:
    parallel: int = 32
    # Given on the command line (None: the node's `ssh:` settings decide, then the defaults below).
    connect_timeout: float | None = None
    keepalive: int = 5
    command_timeout: float = 120.0
    host_key_policy: str | None = None  # "strict" or "accept-new"


DEFAULT_CONNECT_TIMEOUT = 10.0


@dataclass
class Completed:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


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


def classify(exc: BaseException) -> tuple[str, str]:
    """Tell connection failures apart: what a person must fix differs for each."""
    if isinstance(exc, paramiko.BadHostKeyException):
        return "host key changed", (
            f"the key offered by {exc.hostname} differs from known_hosts (reinstalled node, or a"
            " man in the middle); check, then remove the old entry with ssh-keygen -R"
        )
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return "host key unknown", f"{exc}; add it to known_hosts or use --host-key-policy accept-new"
    if isinstance(exc, paramiko.AuthenticationException):
        return "auth refused", f"{exc} (check user, key and ssh-agent)"
    if isinstance(exc, socket.gaierror):
        return "name not resolved", str(exc)
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) and exc.errors:
        # paramiko wraps each address's own error: a node that is off (no route) is not "sshd down"
        return classify(next(iter(exc.errors.values())))
    if isinstance(exc, ConnectionRefusedError | paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused", "nothing listens on the SSH port (sshd down?)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out", "no answer within the connect timeout (node down or network cut?)"
    if isinstance(exc, OSError) and exc.errno in (113, 101):  # no route to host, network unreachable
        return "unreachable", f"{exc.strerror or exc} (node off, or no route to it?)"
    if isinstance(exc, EOFError | paramiko.SSHException):
        return "connection lost", str(exc) or type(exc).__name__
    return "error", f"{type(exc).__name__}: {exc}"


class Host:
    """One node, one SSH connection, opened on first use and kept for the whole command."""

    def __init__(self, node: Node, options: Options):
        self.node = node
        self.options = options
        self._conn: Any = None
        self._gateway: Any = None  # the jump host's connection, when there is one
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------
    @property
    def connect_timeout(self) -> float:
        return self.options.connect_timeout or self.node.ssh.connect_timeout or DEFAULT_CONNECT_TIMEOUT

    def connect(self) -> None:
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return
            self._conn = self._open()

    def _open(self) -> Any:
        from fabric import Config, Connection

        ssh = self.node.ssh
        timeout = self.connect_timeout
        # fabric truncates connect_timeout to whole seconds (0.5 would become "no timeout"): round up.
        tcp_timeout = max(1, math.ceil(timeout))
        connect_kwargs: dict[str, Any] = {"banner_timeout": timeout, "auth_timeout": timeout}
        if ssh.key:
            connect_kwargs["key_filename"] = os.path.expanduser(ssh.key)
        known = Path(os.path.expanduser(ssh.known_hosts or "~/.ssh/known_hosts"))
        policy = self.options.host_key_policy or ssh.host_key_policy or "strict"

        def check_host_keys(c: Any) -> None:
            """The jump host's key is checked exactly like the node's: same known_hosts, same policy."""
            client: paramiko.SSHClient = c.client
            if known.exists():
                client.load_host_keys(str(known))
            client.set_missing_host_key_policy(_AcceptNew(known) if policy == "accept-new" else paramiko.RejectPolicy())

        conn = Connection(
            self.node.address,
            user=ssh.user,
            port=ssh.port,
            connect_timeout=tcp_timeout,
            connect_kwargs=connect_kwargs,
            config=Config(overrides={"run": {"hide": True, "warn": True, "in_stream": False}}),
        )
        check_host_keys(conn)
        # A jump host from the inventory, or a ProxyJump from ~/.ssh/config: either way it is opened
        # here, its key checked and the hop bounded in time (fabric's own hop would accept any key).
        jump = ssh.jump or conn.ssh_config.get("proxyjump")
        if jump and jump.lower() != "none":
            conn.gateway = None
            hop = self._through(jump, conn, timeout, tcp_timeout, connect_kwargs, check_host_keys)
            conn.connect_kwargs["sock"] = hop
        try:
            conn.open()
        except Exception as exc:  # every failure becomes a per-node error, classified
            kind, detail = classify(exc)
            raise NodeError(self.node, kind, detail) from None
        conn.transport.set_keepalive(self.options.keepalive)
        return conn

    def _through(self, jump: str, conn: Any, timeout: float, tcp_timeout: int, kwargs: dict, check: Callable) -> Any:
        """Open the jump host (host key checked) and a channel through it to the node, both bounded."""
        from fabric import Connection

        if "," in jump:
            raise NodeError(self.node, "error", f"ProxyJump {jump}: only one jump host is supported")
        user, _, rest = jump.rpartition("@")
        host, _, port = rest.partition(":")
        gateway = Connection(
            host,
            user=user or None,  # as OpenSSH: the jump host's own user, not the node's
            port=int(port) if port else None,
            connect_timeout=tcp_timeout,
            connect_kwargs=dict(kwargs),
            gateway=False,  # no hops of its own from ~/.ssh/config
        )
        check(gateway)
        try:
            gateway.open()
            channel = gateway.transport.open_channel(
                "direct-tcpip", (conn.host, int(conn.port or 22)), ("", 0), timeout=timeout
            )
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
        if conn is None or conn.transport is None or not conn.transport.is_active():
            return False
        answered = threading.Event()

        def ask() -> None:
            try:
                conn.transport.global_request("keepalive@openssh.com", wait=True)
                answered.set()
            except Exception:
                pass

        threading.Thread(target=ask, daemon=True).start()
        return answered.wait(timeout)

    def close(self) -> None:
        with self._lock:
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
            return self._exec(script, stdin, timeout or self.options.command_timeout)
        try:
            result = self._conn.run(
                script,
                hide=True,
                warn=True,
                in_stream=False,
                out_stream=_Sink(out),
                err_stream=_Sink(out),
                timeout=timeout,
            )
        except Exception as exc:
            from invoke.exceptions import CommandTimedOut

            if isinstance(exc, CommandTimedOut):
                raise NodeError(self.node, "command timed out", f"after {exc.timeout}s") from None
            kind, detail = classify(exc)
            self.close()
            raise NodeError(self.node, kind, detail) from None
        return Completed(result.exited, result.stdout, result.stderr)

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
        deadline = time.monotonic() + timeout
        try:
            chan.exec_command(script)
            if stdin:
                try:
                    chan.sendall(stdin.encode())
                except OSError:
                    pass  # the command ended first
            chan.shutdown_write()
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                    continue
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    continue
                idle = not chan.recv_ready() and not chan.recv_stderr_ready()
                if chan.exit_status_ready() and idle and (chan.eof_received or chan.closed):
                    break
                if time.monotonic() > deadline:
                    raise NodeError(self.node, "command timed out", f"after {timeout:.0f}s")
                select.select([chan], [], [], 0.05)
            code = chan.recv_exit_status()
        except NodeError:
            raise
        except Exception as exc:
            kind, detail = classify(exc)
            self.close()
            raise NodeError(self.node, kind, detail) from None
        finally:
            chan.close()
        return Completed(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def http(self, method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
        """An HTTP request to a port on the node, through the SSH connection (no route needed)."""
        parts = urlsplit(url)
        host, port = parts.hostname or self.node.address, parts.port or 80
        sock = self._channel(host, port, timeout)
        return _http(sock, method, host, port, parts.path or "/", body, timeout)

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


class LocalHost(Host):
    """The operator's own machine: commands run directly (no SSH), HTTP goes straight to loopback."""

    def connect(self) -> None:
        return None

    def close(self) -> None:
        return None

    def alive(self, timeout: float) -> bool:
        return True

    def run(self, script, *, stdin=None, timeout=None, out=None) -> Completed:
        if out is not None:
            proc = subprocess.Popen(
                ["bash", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    out(line)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(5)
            return Completed(proc.returncode or 0, "", "")
        try:
            proc = subprocess.run(
                ["bash", "-c", script],
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                timeout=timeout or self.options.command_timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise NodeError(self.node, "command timed out", f"after {exc.timeout}s") from None
        return Completed(proc.returncode, proc.stdout, proc.stderr)

    def _channel(self, host, port, timeout):
        return socket.create_connection((host, port), timeout=timeout)


class _Sink(io.TextIOBase):
    def __init__(self, fn: Callable[[str], None]):
        self.fn = fn

    def write(self, text: str) -> int:
        self.fn(text)
        return len(text)


def _http(sock: Any, method: str, host: str, port: int, path: str, body: Any, timeout: float) -> tuple[int, Any]:
    """A minimal HTTP/1.0 client over any socket-like object (an SSH channel or a socket)."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.0\r\nHost: {host}:{port}\r\nAccept: */*\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    try:
        sock.sendall(head.encode() + b"\r\n" + payload)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        sock.close()
    raw = b"".join(chunks)
    header, _, content = raw.partition(b"\r\n\r\n")
    status_line = header.split(b"\r\n", 1)[0].decode(errors="replace")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"no HTTP answer from {host}:{port}{path}") from None
    text = content.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class MapInterrupted(KeyboardInterrupt):
    """Ctrl-C during `Fleet.map`: the outcomes of the nodes that finished, and those that did not."""

    def __init__(self, results: dict[int, Any], pending: list[int]):
        super().__init__()
        self.results = results
        self.pending = pending


class Fleet:
    """All nodes of a plan. `map` runs a function on many nodes at once and gathers every outcome."""

    def __init__(self, nodes: Iterable[Node], options: Options | None = None):
        self.options = options or Options()
        self.hosts: dict[int, Host] = {}
        for node in nodes:
            cls = LocalHost if node.address in LOCAL_ADDRESSES else Host
            self.hosts[node.index] = cls(node, self.options)
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.options.parallel), thread_name_prefix="node")

    def host(self, index: int) -> Host:
        return self.hosts[index]

    def map(
        self, fn: Callable[[Host], T], indices: Iterable[int] | None = None, finish_on_interrupt: float = 0.0
    ) -> dict[int, T | Exception]:
        """fn(host) on each node in parallel (bounded); a failure on one node never hides the others.

        On Ctrl-C, with `finish_on_interrupt`, what was already sent is given that many seconds to
        finish (a second Ctrl-C leaves at once) and `MapInterrupted` carries what did finish: a
        caller that was starting services can then say exactly what now runs."""
        chosen = list(self.hosts) if indices is None else list(dict.fromkeys(indices))

        def guarded(i: int) -> T | Exception:
            try:
                return fn(self.hosts[i])
            except Exception as exc:  # gathered per node, reported together by the caller
                return exc

        futures = {i: self._pool.submit(guarded, i) for i in chosen}
        try:
            return {i: f.result() for i, f in futures.items()}
        except KeyboardInterrupt:
            if not finish_on_interrupt:
                raise
            try:
                for f in futures.values():
                    f.cancel()  # not started yet: never sent
                wait(list(futures.values()), timeout=finish_on_interrupt)
            except KeyboardInterrupt:
                pass  # a second Ctrl-C: stop waiting, but still say what finished and what did not
            done = {i: f.result() for i, f in futures.items() if f.done() and not f.cancelled()}
            raise MapInterrupted(done, pending=[i for i in chosen if i not in done]) from None

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
