"""HTTP to a node's own ports over any socket-like object: an SSH channel (no route from the
operator's machine needed) or a plain socket. The standard library's client, so chunked bodies,
content lengths and keep-alive are handled as HTTP says."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit


class _Connection(http.client.HTTPConnection):
    """An HTTPConnection whose socket comes from `open_socket` (a forwarded SSH channel, or a socket)."""

    def __init__(self, host: str, port: int, open_socket: Callable[[], Any], timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._open_socket = open_socket

    def connect(self) -> None:
        self.sock = self._open_socket()


def target(url: str, default_host: str) -> tuple[str, int, str]:
    """(host, port, path with its query) of URL, as both transports open it (DEFAULT_HOST: the node's own)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "") or "/"
    return parts.hostname or default_host, parts.port or 80, path


def request(
    open_socket: Callable[[], Any],
    method: str,
    host: str,
    port: int,
    path: str,
    body: Any,
    timeout: float,
    limit: int | None = None,
    extra_headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request; returns (status, body as JSON when it parses, else text). OSError/ConnectionError
    when nothing answers, or the answer is not HTTP.

    `limit` (bytes): the answer is not trusted: ValueError when its body is longer, and the whole exchange
    ends within `timeout` (a peer that sends one byte at a time cannot hold the caller longer).
    `extra_headers`: more request headers (their values never in an error: they may hold a key)."""
    conn = _Connection(host, port, open_socket, timeout)
    payload = None if body is None else json.dumps(body).encode()
    if any(not re.fullmatch(r"[ -~]*", v) for v in (extra_headers or {}).values()):
        # http.client would refuse it naming the value, which may be a key: refused here without it
        raise ValueError("a request header's value is not printable ASCII on one line")
    headers = {"Accept": "*/*", **(extra_headers or {})}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    cut = threading.Event()
    timer = threading.Timer(timeout, _cut, (conn, cut)) if limit is not None else None
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        conn.request(method, path, body=payload, headers=headers)
        if cut.is_set():  # the deadline passed while the socket was being opened: `_cut` found none to shut
            raise TimeoutError
        response = conn.getresponse()
        raw = response.read() if limit is None else response.read(limit + 1)
        if cut.is_set():  # cut mid-answer: the read ended at the cut as at an end, with only a part of it
            raise TimeoutError
    except (http.client.HTTPException, OSError) as exc:
        if cut.is_set():
            raise ConnectionError(f"no whole answer from {host}:{port}{path} within {timeout:g}s") from None
        if isinstance(exc, OSError):
            raise
        raise ConnectionError(f"no HTTP answer from {host}:{port}{path} ({type(exc).__name__})") from None
    finally:
        if timer is not None:
            timer.cancel()
        conn.close()
    if limit is not None and len(raw) > limit:
        raise ValueError(f"the answer of {host}:{port}{path} is over {limit} bytes")
    text = raw.decode(errors="replace")
    try:
        return response.status, json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep (`[[[[...`), text as well
        return response.status, text


def _cut(conn: http.client.HTTPConnection, cut: threading.Event) -> None:
    """The deadline passed: shut the connection down under the reader (it wakes with an error or EOF)."""
    cut.set()
    sock = conn.sock
    if sock is None:
        return
    try:
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
        else:  # an SSH channel: its shutdown() only feigns the end of reading; close() wakes the reader
            sock.close()
    except Exception:
        pass
