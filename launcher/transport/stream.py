"""A command that keeps running on a node while the launcher talks to it (`Host.start`), and a byte
stream to a port on a node (`Host.open_port`).

`Running`: stdin written as the caller goes (a stream far larger than memory: an image, weights),
stdout read as it comes (progress lines, or bytes), stderr kept (its last 64 kB). Two reader threads
drain stdout into a bounded queue and stderr into the tail, so the remote side blocks only when the
caller stops reading stdout (back-pressure, never unbounded memory). `ssh.SSHHost` backs it with an SSH
channel, `local.LocalHost` with a subprocess; both give the same `Running`.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

QUEUE_CHUNKS = 64  # stdout chunks held before the remote side is made to wait (each up to 64 kB)
ERR_TAIL = 64 * 1024


class Ended(OSError):
    """The command ended (or its channel closed) while the caller was still writing to it."""


class Conn(Protocol):
    """A byte stream to a port on a node (a forwarded SSH channel or a socket)."""

    def sendall(self, data: bytes) -> None: ...

    def recv(self, n: int) -> bytes: ...

    def settimeout(self, timeout: float | None) -> None: ...

    def shutdown_write(self) -> None: ...

    def close(self) -> None: ...


class SocketConn:
    """A plain socket as a `Conn`."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in send or recv
        except OSError:
            pass
        self.sock.close()


class Running:
    """A started command. Built from the primitives of one kind of host (see `ssh` and `local`)."""

    def __init__(
        self,
        label: str,
        *,
        write: Callable[[bytes], None],
        close_stdin: Callable[[], None],
        read_out: Callable[[], bytes],
        read_err: Callable[[], bytes],
        exit_code: Callable[[float | None], int | None],
        kill: Callable[[], None],
        pid: int | None = None,
    ):
        self.label = label
        self.pid = pid  # the local process (None on a remote node)
        self._write, self._close_stdin, self._exit_code, self._kill = write, close_stdin, exit_code, kill
        self._out: queue.Queue[bytes] = queue.Queue(QUEUE_CHUNKS)
        self._pending = b""  # what `readline` read past the last full line
        self._err = bytearray()
        self._err_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.out_done = threading.Event()
        threading.Thread(target=self._drain, args=(read_out, self._to_queue), daemon=True, name="out").start()
        threading.Thread(target=self._drain, args=(read_err, self._to_tail), daemon=True, name="err").start()

    # -- readers ----------------------------------------------------------------------------
    @staticmethod
    def _drain(read: Callable[[], bytes], put: Callable[[bytes], None]) -> None:
        while True:
            try:
                data = read()
            except Exception:
                data = b""
            put(data)
            if not data:
                return

    def _to_queue(self, data: bytes) -> None:
        self._out.put(data)
        if not data:
            self.out_done.set()

    def _to_tail(self, data: bytes) -> None:
        with self._err_lock:
            self._err += data
            del self._err[:-ERR_TAIL]

    @property
    def stderr(self) -> str:
        with self._err_lock:
            return self._err.decode(errors="replace")

    def read(self, timeout: float | None = None) -> bytes | None:
        """The next piece of stdout; b"" once it ended; None if nothing came within `timeout`."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        try:
            data = self._out.get(timeout=timeout)
        except queue.Empty:
            return None
        if not data:
            self._out.put(b"")  # every later read sees the end too
        return data

    def readline(self, timeout: float | None = None) -> str | None:
        """The next line of stdout, with its newline, like a file's readline: "" once stdout ended;
        None if no whole line came within `timeout` (what arrived is kept for the next call)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                data = self._out.get(timeout=left)
            except queue.Empty:
                return None
            if not data:
                self._out.put(b"")
                line, self._pending = self._pending, b""
                return line.decode(errors="replace")
            self._pending += data
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode(errors="replace") + "\n"

    # -- writers and the end ------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin (blocks while the command does not read). `Ended` once
        the command is gone."""
        with self._write_lock:
            try:
                self._write(data)
            except Exception as exc:
                raise Ended(f"{self.label}: the command ended ({type(exc).__name__}: {exc})") from None

    def close_stdin(self) -> None:
        try:
            self._close_stdin()
        except Exception:
            pass

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code once the command ended, or None if it still runs after `timeout` seconds."""
        return self._exit_code(timeout)

    def kill(self) -> None:
        """End the command (and its channel or process group); the readers then see the end."""
        try:
            self._kill()
        except Exception:
            pass


def socket_conn(address: str, port: int, timeout: float) -> Any:
    return SocketConn(socket.create_connection((address, port), timeout=timeout))
