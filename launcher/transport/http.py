"""HTTP to a node's own ports over any socket-like object: an SSH channel (no route from the
operator's machine needed) or a plain socket. The standard library's client, so chunked bodies,
content lengths and keep-alive are handled as HTTP says."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any


class _Connection(http.client.HTTPConnection):
    """An HTTPConnection whose socket comes from `open_socket` (a forwarded SSH channel, or a socket)."""

    def __init__(self, host: str, port: int, open_socket: Callable[[], Any], timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._open_socket = open_socket

    def connect(self) -> None:
        self.sock = self._open_socket()


def request(
    open_socket: Callable[[], Any], method: str, host: str, port: int, path: str, body: Any, timeout: float
) -> tuple[int, Any]:
    """One request; returns (status, body as JSON when it parses, else text). OSError/ConnectionError
    when nothing answers, or the answer is not HTTP."""
    conn = _Connection(host, port, open_socket, timeout)
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "*/*"}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    except http.client.HTTPException as exc:
        raise ConnectionError(f"no HTTP answer from {host}:{port}{path} ({type(exc).__name__})") from None
    finally:
        conn.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text
