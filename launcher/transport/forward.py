"""A local port that reaches a port on a node: every connection to 127.0.0.1:PORT here is carried to
HOST:PORT as the node sees it, through a channel the host opens (an SSH `direct-tcpip` channel of the
node's one connection). Like `ssh -L`: a program on the operator's machine (the benchmark client)
talks to the node's services without a route to them.

One thread accepts; each connection gets one thread that copies bytes both ways until either side
closes. `close()` stops accepting and ends every connection still open.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

BUFFER = 65536


class Forward:
    """Where to connect locally (`host`, `port`), and `close()`. A context manager."""

    def __init__(self, host: str, port: int, target: str):
        self.host = host
        self.port = port
        self.target = target  # what it reaches, for messages: "10.0.0.1:8000 via node 0 (...)"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        """Nothing to close: a direct address."""

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Tunnel(Forward):
    """A listening socket on 127.0.0.1 whose connections are carried by channels from `open_channel`."""

    def __init__(self, open_channel: Callable[[], Any], target: str):
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(512)
        self._server.settimeout(0.5)  # so that close() is noticed
        super().__init__("127.0.0.1", self._server.getsockname()[1], target)
        self._open_channel = open_channel
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[Any] = set()
        self.failures: list[str] = []  # channels the node refused: why (the first few)
        self._thread = threading.Thread(target=self._accept, name=f"forward {target}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            channel = self._open_channel()
        except Exception as exc:  # the node refused (nothing listens there) or the connection is gone
            if len(self.failures) < 5:
                self.failures.append(str(exc))
            conn.close()
            return
        with self._lock:
            self._open.update((conn, channel))
        try:
            _pump(conn, channel, self._closed)
        finally:
            with self._lock:
                self._open.difference_update((conn, channel))
            for end in (conn, channel):
                with contextlib.suppress(Exception):
                    end.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            ends = list(self._open)
        for end in ends:
            with contextlib.suppress(Exception):
                end.close()
        self._thread.join(timeout=2)


def _pump(conn: socket.socket, channel: Any, closed: threading.Event) -> None:
    """Copy bytes both ways until one side ends (a read of nothing) or the tunnel is closed."""
    conn.setblocking(True)
    ends = [conn, channel]
    while not closed.is_set():
        readable, _, _ = select.select(ends, [], [], 0.5)
        for source in readable:
            other = channel if source is conn else conn
            data = source.recv(BUFFER)
            if not data:
                return
            other.sendall(data)
